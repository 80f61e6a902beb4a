//! The control stream: the hello, reading requests' bytes, queueing answers
//! and writing them as QUIC takes them, and closing with a reason.

use super::*;

impl Node {
    /// Waits for `Hello`, checks version and token, answers `Welcome`.
    pub(super) fn hello(&mut self, link: &mut Link<'_, Conn>) {
        let Some(control) = link.state.control else { return };
        let frame = loop {
            match link.state.decoder.next_message::<v1::ClientFrame>() {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => return self.refuse(link, e.code(), &e.to_string()),
            }
            if !link.state.control_unread {
                return;
            }
            match read_chunk(link.quic, control) {
                Read::Data(bytes) => link.state.decoder.extend(&bytes),
                Read::Nothing => {
                    link.state.control_unread = false;
                    return;
                }
                Read::Ended => {
                    return self.refuse(
                        link,
                        ErrorCode::ProtocolViolation,
                        "control stream ended before hello",
                    );
                }
            }
        };
        let (request_id, hello) = match frame {
            v1::ClientFrame { body: Some(Req::Hello(h)), request_id } => (request_id, h),
            _ => return self.refuse(link, ErrorCode::ProtocolViolation, "first frame must be hello"),
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            let why = format!(
                "protocol version {} not supported (server speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            );
            return self.refuse(link, ErrorCode::UnsupportedVersion, &why);
        }
        let identity = match self.shared.verifier.verify(&hello.token) {
            Ok(i) => i,
            Err(code) => return self.refuse(link, code, "token refused"),
        };
        let (shared, id) = (&self.shared, link.state.id);
        info!(conn = id, user = %identity.user_id, remote = %link.state.remote, role = identity.role.as_str(), client = %hello.client_name, version = %hello.client_version, "session started");
        let presence = &shared.config.presence;
        let limits = &shared.config.limits;
        let welcome = v1::Welcome {
            session_id: format!("{:x}-{id}", shared.node_epoch),
            server_time_ms: unix_ms(SystemTime::now()),
            heartbeat_interval_ms: presence.heartbeat_interval_ms.min(u64::from(u32::MAX)) as u32,
            limits: Some(v1::Limits {
                max_frame_bytes: limits.max_frame_bytes,
                max_message_bytes: limits.max_message_bytes,
                max_rooms: limits.max_rooms_per_conn,
                max_room_id_bytes: roomcast_protocol::MAX_ROOM_ID_BYTES as u32,
            }),
            user: Some(identity.to_proto()),
            protocol_version: PROTOCOL_VERSION,
        };
        link.state
            .out
            .push_back(encode_frame(&v1::ServerFrame { request_id, body: Some(Resp::Welcome(welcome)) }));
        shared.metrics.connections.inc();
        let draining = self.draining.is_some();
        link.state.phase = Phase::Live(Box::new(Session {
            identity,
            rooms: HashMap::new(),
            streams: Vec::new(),
            last_heartbeat: link.now,
            present: true,
            next_presence_check: link.now + presence.heartbeat_interval(),
            pending: VecDeque::new(),
            quiz: None,
            draining,
        }));
        self.serve(link);
    }

    /// A session refused before it started.
    pub(super) fn refuse(&mut self, link: &mut Link<'_, Conn>, code: ErrorCode, why: &str) {
        self.shared.metrics.sessions_refused.inc();
        self.shared.metrics.session_refused(code);
        close(link, code, why);
    }
}

pub(super) fn error_frame(request_id: u32, code: ErrorCode, why: &str) -> Bytes {
    encode_frame(&v1::ServerFrame {
        request_id,
        body: Some(Resp::Error(v1::Error { code: code.to_proto() as i32, message: why.to_string() })),
    })
}

/// What one read of a stream gave.
pub(super) enum Read {
    Data(Bytes),
    Nothing,
    /// Finished, reset or gone.
    Ended,
}

pub(super) fn read_chunk(quic: &mut proto::Connection, id: StreamId) -> Read {
    let mut stream = quic.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else { return Read::Ended };
    let read = match chunks.next(CONTROL_CHUNK) {
        Ok(Some(chunk)) => Read::Data(chunk.bytes),
        Ok(None) => Read::Ended,
        Err(proto::ReadError::Blocked) => Read::Nothing,
        Err(_) => Read::Ended,
    };
    let _ = chunks.finalize();
    read
}

/// Queues the answer to request `rid`.
pub(super) fn answer(
    link: &mut Link<'_, Conn>,
    rid: u32,
    result: Answered,
) -> Result<(), (ErrorCode, String)> {
    let bytes = match result {
        Ok(body) => encode_frame(&v1::ServerFrame { request_id: rid, body: Some(body) }),
        Err((code, why)) => {
            debug!(conn = link.state.id, code = code.name(), reason = %why, "request refused");
            error_frame(rid, code, &why)
        }
    };
    link.state.out.push_back(bytes);
    Ok(())
}

/// Hands QUIC what it takes of the control stream's queued bytes.
pub(super) fn flush_control(link: &mut Link<'_, Conn>) {
    let Some(id) = link.state.control else {
        link.state.out.clear();
        return;
    };
    if write_all(link.quic, id, &mut link.state.out).is_err() {
        link.state.out.clear();
    }
}

/// Hands QUIC as much of `queue` as it takes; true once all of it is
/// taken, `Err` if the stream is stopped or gone. When QUIC takes only part,
/// it is asked again, so that it notes the stream as blocked and reports it
/// `Writable` once the peer gives credit.
pub(super) fn write_all(
    quic: &mut proto::Connection,
    id: StreamId,
    queue: &mut VecDeque<Bytes>,
) -> Result<bool, ()> {
    while !queue.is_empty() {
        match quic.send_stream(id).write_chunks(queue.make_contiguous()) {
            Ok(written) => {
                queue.drain(..written.chunks);
            }
            Err(proto::WriteError::Blocked) => return Ok(false),
            Err(_) => return Err(()),
        }
    }
    Ok(true)
}

/// Finishes the control stream once its queued bytes are in QUIC's hands;
/// `control_acked` turns true when the client has them all.
pub(super) fn finish_control(link: &mut Link<'_, Conn>) {
    flush_control(link);
    match link.state.control {
        Some(id) if link.state.out.is_empty() => {
            if link.quic.send_stream(id).finish().is_err() {
                link.state.control_acked = true;
            }
        }
        Some(_) => {}
        None => link.state.control_acked = true,
    }
}

/// Closes the connection with `code`, after trying to say why on the
/// control stream: the close waits (at most `CLOSE_LINGER`) for the client
/// to acknowledge it.
pub(super) fn close(link: &mut Link<'_, Conn>, code: ErrorCode, why: &str) {
    info!(conn = link.state.id, code = code.name(), reason = why, "closing connection");
    if link.state.control.is_some() {
        link.state.out.push_back(error_frame(0, code, why));
    }
    finish_control(link);
    let (code, reason) = (code.to_code().into(), Bytes::from(why.to_string()));
    link.state.closing = Some(Closing { code, reason, by: link.now + CLOSE_LINGER });
}
