//! The socket half of a driver: quinn-udp's state for it, its buffers, and
//! the transmit it could not send yet.

use std::io;

use quinn::udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;

use super::{ConnId, proto};

/// The socket half of a driver: quinn-udp's state for it and the buffers.
pub(super) struct Io {
    pub(super) socket: tokio::net::UdpSocket,
    pub(super) udp: UdpSocketState,
    pub(super) recv_buf: Vec<u8>,
    pub(super) metas: Vec<RecvMeta>,
    /// The transmit being sent; reused by every connection in turn.
    pub(super) send_buf: Vec<u8>,
    /// A transmit the socket would not take yet, in `send_buf`.
    pub(super) blocked: Option<proto::Transmit>,
    /// Connections that may have more to send once the socket takes it.
    pub(super) backlog: std::collections::VecDeque<ConnId>,
    /// Endpoint responses (version negotiation, resets, refusals).
    pub(super) scratch: Vec<u8>,
}

impl Io {
    /// Sends the transmit in `send_buf`; false (and kept) if the socket is full.
    pub(super) fn send(&mut self, t: proto::Transmit) -> bool {
        let transmit = udp_transmit(&t, &self.send_buf[..t.size]);
        let (socket, udp) = (&self.socket, &self.udp);
        match socket.try_io(Interest::WRITABLE, || udp.send(socket.into(), &transmit)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.blocked = Some(t);
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP send failed");
                true
            }
        }
    }
}

pub(super) fn udp_transmit<'a>(t: &proto::Transmit, contents: &'a [u8]) -> quinn::udp::Transmit<'a> {
    quinn::udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.and_then(|e| quinn::udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    }
}
