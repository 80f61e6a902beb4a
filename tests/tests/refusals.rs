//! Bad credentials and bad bytes close one connection with the right code,
//! and nothing else.

use std::time::{Duration, SystemTime};

use roomcast_protocol::codec::encode_frame;
use roomcast_protocol::{ErrorCode, PROTOCOL_VERSION, v1};
use roomcast_server::auth::{Role, mint_hs256, mint_hs256_with_exp};
use roomcast_tests::{TestServer, WAIT, sequenced, text};

/// Waits for `conn` to be closed by the server and returns its close code.
async fn close_code(conn: &quinn::Connection) -> Option<ErrorCode> {
    match tokio::time::timeout(WAIT, conn.closed()).await.expect("server did not close") {
        quinn::ConnectionError::ApplicationClosed(c) => ErrorCode::from_code(c.error_code.into_inner()),
        other => panic!("closed without an application code: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_tokens_are_refused_with_their_codes() {
    let server = TestServer::start().await;
    let forged = mint_hs256(b"not-the-secret", "mallory", "", Role::Admin, Duration::from_secs(60));
    let err = roomcast_client::Client::connect(server.client_config(forged)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken), "{err}");

    let now = roomcast_protocol::unix_ms(SystemTime::now()) / 1000;
    let expired = mint_hs256_with_exp(server.secret.as_bytes(), "late", "", Role::Viewer, now - 30);
    let err = roomcast_client::Client::connect(server.client_config(expired)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TokenExpired), "{err}");

    let err = roomcast_client::Client::connect(server.client_config("garbage".into())).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadToken), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_version_and_missing_hello_are_refused() {
    let server = TestServer::start_with(|c| c.limits.hello_timeout_ms = 300).await;
    let conn = server.raw_connection().await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let frame = encode_frame(&v1::ClientFrame {
        request_id: 1,
        body: Some(v1::client_frame::Body::Hello(v1::Hello {
            token: server.token("v", Role::Viewer),
            protocol_version: PROTOCOL_VERSION + 1,
            client_name: "raw".into(),
            client_version: "0".into(),
        })),
    });
    send.write_all(&frame).await.unwrap();
    assert_eq!(close_code(&conn).await, Some(ErrorCode::UnsupportedVersion));

    // Connected, but never says hello.
    let silent = server.raw_connection().await;
    assert_eq!(close_code(&silent).await, Some(ErrorCode::HelloTimeout));

    // Something other than hello first.
    let rude = server.raw_connection().await;
    let (mut send, _recv) = rude.open_bi().await.unwrap();
    let join = encode_frame(&v1::ClientFrame {
        request_id: 1,
        body: Some(v1::client_frame::Body::Join(v1::Join { room: "r".into(), ..v1::Join::default() })),
    });
    send.write_all(&join).await.unwrap();
    assert_eq!(close_code(&rude).await, Some(ErrorCode::ProtocolViolation));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_one_connection_closes_it_while_the_others_carry_on() {
    let server = TestServer::start().await;
    let (a, _a_events) = server.connect("a", Role::Viewer).await;
    let (b, mut b_events) = server.connect("b", Role::Viewer).await;
    a.join("room").await.unwrap();
    b.join("room").await.unwrap();
    a.send_chat("room", "before").await.unwrap();

    // An authenticated raw session that then sends undecodable bytes.
    let open_session = || async {
        let conn = server.raw_connection().await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode_frame(&v1::ClientFrame {
            request_id: 1,
            body: Some(v1::client_frame::Body::Hello(v1::Hello {
                token: server.token("evil", Role::Viewer),
                protocol_version: PROTOCOL_VERSION,
                client_name: "raw".into(),
                client_version: "0".into(),
            })),
        }))
        .await
        .unwrap();
        let mut buf = [0u8; 512];
        let n = recv.read(&mut buf).await.unwrap().unwrap();
        assert!(n > 0, "welcome arrives");
        (conn, send)
    };

    let (garbage, mut send) = open_session().await;
    send.write_all(&[0x04, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(close_code(&garbage).await, Some(ErrorCode::ProtocolViolation));

    let (huge, mut send) = open_session().await;
    // A length prefix announcing 1 MiB, over the 16 KiB control frame limit.
    send.write_all(&[0x80, 0x80, 0x40]).await.unwrap();
    assert_eq!(close_code(&huge).await, Some(ErrorCode::FrameTooLarge));

    let (bad_datagram, _send) = open_session().await;
    bad_datagram.send_datagram(vec![0xff; 40].into()).unwrap();
    assert_eq!(close_code(&bad_datagram).await, Some(ErrorCode::ProtocolViolation));

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
