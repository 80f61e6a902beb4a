//! A node whose data directory fills up: a real, small tmpfs that the test
//! mounts in a mount namespace of its own (`unshare`), filled to the last
//! block while a room is live and gifts are sent, then given room again.
//!
//! The test runs itself again inside the namespace: the outer run mounts
//! the filesystem and waits, the inner run (`FULL_DISK_DIR` set) is the
//! scenario, with nodes in its own process writing to the tmpfs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use roomcast_client::v1;
use roomcast_server::auth::Role;
use roomcast_server::gifts::ledger::JOURNAL_FILE;
use roomcast_tests::{TestServer, metric};

const INNER: &str = "ROOMCAST_FULL_DISK_DIR";
const ACCEPTED: i32 = v1::GiftOutcome::Accepted as i32;
const UNAVAILABLE: i32 = v1::GiftOutcome::LedgerUnavailable as i32;

#[test]
fn a_full_disk_leaves_whole_records_and_a_node_that_starts_again_without_broadcasting_twice() {
    if let Ok(dir) = std::env::var(INNER) {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(scenario(PathBuf::from(dir)));
        return;
    }
    let dir = std::env::temp_dir().join(format!("roomcast-full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=8m roomcast-full-disk "$0" && exec "$@""#)
        .arg(&dir)
        .arg(&exe)
        .args([
            "--exact",
            "a_full_disk_leaves_whole_records_and_a_node_that_starts_again_without_broadcasting_twice",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, &dir)
        .status()
        .expect("running unshare (util-linux) to mount a small tmpfs in a mount namespace");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "the scenario inside the namespace failed: {status}");
}

fn node_config(dir: &Path) -> impl FnOnce(&mut roomcast_server::Config) + use<> {
    let dir = dir.to_path_buf();
    move |c| {
        c.data_dir = dir;
        c.gifts.per_user_per_sec = 0.0;
        c.room.archive_retention_secs = 3_600;
    }
}

/// Fills the filesystem holding `dir` to its last block with one file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    // Whatever is left is smaller than a block.
    while f.write_all(&[7u8]).is_ok() {}
    path
}

/// Every line of the journal reads as one JSON object.
fn assert_whole_records(dir: &Path) {
    let text = std::fs::read_to_string(dir.join(JOURNAL_FILE)).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "the journal ends with a whole record");
    for (n, line) in text.lines().enumerate() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "journal line {} is not a whole record: {line}",
            n + 1
        );
    }
}

async fn credit(node: &TestServer, user: &str, amount: u64) {
    let answer = node
        .admin("POST", &format!("/v1/users/{user}/credit"), Some(&format!(r#"{{"amount":{amount}}}"#)))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

async fn notice(node: &TestServer, room: &str, n: usize) -> u16 {
    let text = format!("notice {n} {}", "x".repeat(150));
    let body = serde_json::json!({ "kind": "system", "text": text }).to_string();
    node.admin("POST", &format!("/v1/rooms/{room}/messages"), Some(&body)).await.status
}

/// Waits until `node`'s counter `name` is above zero.
async fn counted(node: &TestServer, name: &str) -> bool {
    for _ in 0..200 {
        if metric(&node.scrape().await, name).unwrap_or(0.0) > 0.0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

async fn scenario(dir: PathBuf) {
    let room = "show";
    let mut accepted: BTreeMap<String, v1::GiftAck> = BTreeMap::new();

    // 1. A live room with gifts, then the disk fills: the archive's writes
    // fail (counted, not only logged) while the room goes on, and gifts go on
    // while the journal's last block has room; the first refused is refused
    // cleanly.
    let node = TestServer::start_with(node_config(&dir)).await;
    credit(&node, "alice", 1_000_000).await;
    let (alice, _events) = node.connect("alice", Role::Viewer).await;
    alice.join(room).await.unwrap();
    for i in 0..3 {
        let key = format!("before-{i}");
        let ack = alice.send_gift(room, "rose", 1, &key).await.unwrap();
        assert_eq!(ack.outcome, ACCEPTED);
        accepted.insert(key, ack);
    }
    let filler = fill(&dir);
    for n in 0..100 {
        assert_eq!(notice(&node, room, n).await, 200, "live messages go on with the disk full");
    }
    assert!(counted(&node, "roomcast_archive_dropped_total{reason=\"write_failed\"}").await);
    assert!(counted(&node, "roomcast_storage_write_failures_total{file=\"archive\"}").await);
    let mut refused = None;
    for i in 0..2_000 {
        let key = format!("full-{i}");
        let ack = alice.send_gift(room, "rose", 1, &key).await.unwrap();
        if ack.outcome != ACCEPTED {
            refused = Some((key, ack));
            break;
        }
        accepted.insert(key, ack);
    }
    let (refused_key, refused) = refused.expect("a full disk refuses gifts at last");
    assert_eq!(refused.outcome, UNAVAILABLE, "{refused:?}");
    assert!(counted(&node, "roomcast_storage_write_failures_total{file=\"gift_ledger\"}").await);
    alice.close();
    node.stop().await;
    assert_whole_records(&dir);

    // 2. A restart with the disk still full: the node starts, and every
    // accepted gift (the last one before the disk filled too) is answered
    // with its first outcome, not broadcast again.
    let node = TestServer::start_with(node_config(&dir)).await;
    let (alice, _events) = node.connect("alice", Role::Viewer).await;
    alice.join(room).await.unwrap();
    for (key, first) in &accepted {
        let repeat = alice.send_gift(room, "rose", 1, key).await.unwrap();
        assert_eq!(
            (repeat.outcome, repeat.seq, &repeat.message_id),
            (ACCEPTED, first.seq, &first.message_id),
            "{key} is answered with its first outcome"
        );
    }
    // Room for a while: this incarnation's archive starts its file. Then
    // the disk fills again mid-file, and has room again: what follows is
    // written after the writes that failed.
    std::fs::remove_file(&filler).unwrap();
    for n in 0..3 {
        assert_eq!(notice(&node, room, 100 + n).await, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let filler = fill(&dir);
    for n in 0..100 {
        assert_eq!(notice(&node, room, 110 + n).await, 200);
    }
    assert!(counted(&node, "roomcast_archive_dropped_total{reason=\"write_failed\"}").await);
    std::fs::remove_file(&filler).unwrap();
    let retried = alice.send_gift(room, "rose", 1, &refused_key).await.unwrap();
    assert_eq!(retried.outcome, ACCEPTED, "the refused send goes through once there is room");
    accepted.insert(refused_key, retried);
    for i in 0..5 {
        let key = format!("after-{i}");
        let ack = alice.send_gift(room, "rose", 1, &key).await.unwrap();
        assert_eq!(ack.outcome, ACCEPTED);
        accepted.insert(key, ack);
    }
    let mut after_room = Vec::new();
    for n in 0..5 {
        assert_eq!(notice(&node, room, 200 + n).await, 200);
        after_room.push(format!("notice {}", 200 + n));
    }
    alice.close();
    // The archive's writer is a thread of its own: let it catch up.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    node.stop().await;
    assert_whole_records(&dir);

    // 3. A restart after all of it: the journal reads, every key keeps its
    // receipt, the balance is charged once per accepted key, and the room's
    // archive reads past the writes that failed.
    let node = TestServer::start_with(node_config(&dir)).await;
    let history = node.admin("GET", &format!("/v1/rooms/{room}/history?from_seq=1"), None).await;
    assert_eq!(history.status, 200, "{}", history.body);
    for text in &after_room {
        assert!(history.body.contains(text.as_str()), "{text} is in the archive after the failed writes");
    }
    let (alice, _events) = node.connect("alice", Role::Viewer).await;
    alice.join(room).await.unwrap();
    for (key, first) in &accepted {
        let repeat = alice.send_gift(room, "rose", 1, key).await.unwrap();
        assert_eq!((repeat.outcome, repeat.seq), (ACCEPTED, first.seq), "{key}");
    }
    let price = 1_000_000 - accepted["before-0"].balance;
    let last = alice.send_gift(room, "rose", 1, "last").await.unwrap();
    assert_eq!(last.outcome, ACCEPTED);
    assert_eq!(
        last.balance,
        1_000_000 - price * (accepted.len() as u64 + 1),
        "charged once per accepted key"
    );
    alice.close();
    node.stop().await;
}
