//! Bad credentials and bad bytes close one connection with the right code,
//! and nothing else.

use std::time::{Duration, SystemTime};

use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::{ErrorCode, PROTOCOL_VERSION, unix_ms, v1};
use roomcast_server::auth::{Role, mint_hs256, mint_hs256_with_exp};
use roomcast_tests::{FrameReader, RawSession, TestServer, WAIT, sequenced, text};

/// Waits for `conn` to be closed by the server and returns its close code.
async fn close_code(conn: &quinn::Connection) -> Option<ErrorCode> {
    match tokio::time::timeout(WAIT, conn.closed()).await.expect("server did not close") {
        quinn::ConnectionError::ApplicationClosed(c) => ErrorCode::from_code(c.error_code.into_inner()),
        other => panic!("closed without an application code: {other}"),
    }
}

/// Reads a refused session's control stream to its end and checks what the
/// contract promises: exactly one `Error` frame, with request id 0 and
/// `code`, then a close of the connection with the same code.
async fn assert_refused(control: &mut FrameReader, conn: &quinn::Connection, code: ErrorCode) {
    let frames = control.server_frames_to_end().await;
    match frames.as_slice() {
        [v1::ServerFrame { request_id: 0, body: Some(v1::server_frame::Body::Error(e)) }] => {
            assert_eq!(e.code, code.to_proto() as i32, "refused with {e:?}, expected {code}");
        }
        other => panic!("expected one Error frame with request_id 0 ({code}), got {other:?}"),
    }
    assert_eq!(close_code(conn).await, Some(code), "close code");
}

fn unix_secs() -> u64 {
    unix_ms(SystemTime::now()) / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_tokens_are_refused_with_their_codes() {
    let server = TestServer::start().await;
    let forged = mint_hs256(b"not-the-secret", "mallory", "", Role::Admin, Duration::from_secs(60));
    let err = roomcast_client::Client::connect(server.client_config(forged)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken), "{err}");

    // Ten minutes past `exp` is well beyond the default leeway of 60 s.
    let expired = mint_hs256_with_exp(server.secret.as_bytes(), "late", "", Role::Viewer, unix_secs() - 600);
    let err = roomcast_client::Client::connect(server.client_config(expired)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TokenExpired), "{err}");

    // A phone whose clock is half a minute fast still gets in.
    let skewed = mint_hs256_with_exp(server.secret.as_bytes(), "skew", "", Role::Viewer, unix_secs() - 30);
    let (client, _events) = roomcast_client::Client::connect(server.client_config(skewed)).await.unwrap();
    client.join("r").await.unwrap();

    let err = roomcast_client::Client::connect(server.client_config("garbage".into())).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_is_one_error_frame_with_request_id_0_then_a_close_with_its_code() {
    let server = TestServer::start_with(|c| c.limits.hello_timeout_ms = 300).await;

    let mut s = server.raw_hello("garbage".into(), PROTOCOL_VERSION).await;
    assert_refused(&mut s.control, &s.conn, ErrorCode::BadToken).await;

    let expired = mint_hs256_with_exp(server.secret.as_bytes(), "late", "", Role::Viewer, unix_secs() - 600);
    let mut s = server.raw_hello(expired, PROTOCOL_VERSION).await;
    assert_refused(&mut s.control, &s.conn, ErrorCode::TokenExpired).await;

    let mut s = server.raw_hello(server.token("v", Role::Viewer), PROTOCOL_VERSION + 1).await;
    assert_refused(&mut s.control, &s.conn, ErrorCode::UnsupportedVersion).await;

    // Something other than hello first.
    let rude = server.raw_connection().await;
    let (mut send, recv) = rude.open_bi().await.unwrap();
    let join = encode_frame(&v1::ClientFrame {
        request_id: 1,
        body: Some(v1::client_frame::Body::Join(v1::Join { room: "r".into(), ..v1::Join::default() })),
    });
    send.write_all(&join).await.unwrap();
    assert_refused(&mut FrameReader::new(recv), &rude, ErrorCode::ProtocolViolation).await;

    // A control stream whose hello never completes: the first byte of a
    // length prefix, then nothing.
    let slow = server.raw_connection().await;
    let (mut send, recv) = slow.open_bi().await.unwrap();
    send.write_all(&[0x05]).await.unwrap();
    assert_refused(&mut FrameReader::new(recv), &slow, ErrorCode::HelloTimeout).await;

    // Connected, but never opens a control stream: there is nowhere to write
    // an Error frame, so only the close says why.
    let silent = server.raw_connection().await;
    assert_eq!(close_code(&silent).await, Some(ErrorCode::HelloTimeout));
    server.stop().await;
}

/// Checks a `Welcome` field by field against what the test node announces.
fn assert_welcome(w: &v1::Welcome, user: &str) {
    assert!(!w.session_id.is_empty(), "a session id");
    let skew = w.server_time_ms.abs_diff(unix_ms(SystemTime::now()));
    assert!(skew < 60_000, "server time {} is {skew} ms off", w.server_time_ms);
    let expected = v1::Welcome {
        session_id: w.session_id.clone(),
        server_time_ms: w.server_time_ms,
        heartbeat_interval_ms: 200,
        limits: Some(v1::Limits {
            max_frame_bytes: 16 * 1024,
            max_message_bytes: 512,
            max_rooms: 16,
            max_room_id_bytes: 128,
        }),
        user: Some(v1::User {
            user_id: user.into(),
            display_name: user.into(),
            role: v1::Role::Viewer as i32,
        }),
        protocol_version: PROTOCOL_VERSION,
    };
    assert_eq!(*w, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_connection_closes_it_while_the_others_carry_on() {
    let server = TestServer::start().await;
    let (a, _a_events) = server.connect("a", Role::Viewer).await;
    let (b, mut b_events) = server.connect("b", Role::Viewer).await;
    a.join("room").await.unwrap();
    b.join("room").await.unwrap();
    a.send_chat("room", "before").await.unwrap();

    // An authenticated raw session (its Welcome checked), that then sends
    // undecodable bytes.
    let open_session = || async {
        let mut session: RawSession =
            server.raw_hello(server.token("evil", Role::Viewer), PROTOCOL_VERSION).await;
        assert_welcome(&session.welcome().await, "evil");
        session
    };

    let mut garbage = open_session().await;
    garbage.send.write_all(&[0x04, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert_refused(&mut garbage.control, &garbage.conn, ErrorCode::ProtocolViolation).await;

    let mut huge = open_session().await;
    // A length prefix announcing 1 MiB, over the 16 KiB control frame limit.
    huge.send.write_all(&[0x80, 0x80, 0x40]).await.unwrap();
    assert_refused(&mut huge.control, &huge.conn, ErrorCode::FrameTooLarge).await;

    let bad_datagram = open_session().await;
    bad_datagram.conn.send_datagram(vec![0xff; 40].into()).unwrap();
    assert_eq!(close_code(&bad_datagram.conn).await, Some(ErrorCode::ProtocolViolation));

    // The room and its members never noticed.
    a.send_chat("room", "after").await.unwrap();
    let got = sequenced(&mut b_events, 2).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["before", "after"]);
    assert_eq!(got[1].seq, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_finishes_its_control_stream_still_gets_every_answer() {
    use roomcast_protocol::codec::FrameDecoder;
    use v1::client_frame::Body as Req;
    let server = TestServer::start().await;
    let conn = server.raw_connection().await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut frames = vec![v1::ClientFrame {
        request_id: 1,
        body: Some(Req::Hello(v1::Hello {
            token: server.token("quitter", Role::Host),
            protocol_version: PROTOCOL_VERSION,
            client_name: "raw".into(),
            client_version: "0".into(),
        })),
    }];
    frames.push(v1::ClientFrame {
        request_id: 2,
        body: Some(Req::Join(v1::Join { room: "r".into(), ..v1::Join::default() })),
    });
    for id in 3..13 {
        let chat =
            v1::SendChat { room: "r".into(), text: format!("last words {id}"), ..v1::SendChat::default() };
        frames.push(v1::ClientFrame { request_id: id, body: Some(Req::SendChat(chat)) });
    }
    // Everything in one write, then the end of the stream: the chats are
    // still in the room's hands when the session sees the stream end.
    let bytes: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).to_vec()).collect();
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();

    let mut decoder = FrameDecoder::new(1 << 20);
    let mut answered = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
            decoder.extend(&chunk.bytes);
            while let Some(frame) = decoder.next_message::<v1::ServerFrame>().unwrap() {
                answered.push(frame.request_id);
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    assert_eq!(answered, (1..13).collect::<Vec<u32>>(), "hello, join and every chat answered, in order");
    server.stop().await;
}
