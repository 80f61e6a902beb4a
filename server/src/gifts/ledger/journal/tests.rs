//! Unit tests of `journal`.

use std::io::Write;
use std::sync::Arc;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roomcast-ledger-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_debit_never_takes_a_balance_below_zero() {
    let d = dir("negative");
    let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
    l.credit("u", 25, 0).unwrap();
    assert_eq!(l.debit("u", 10, "a", 1).unwrap(), DebitOutcome::Charged { balance: 15 });
    assert_eq!(l.debit("u", 10, "b", 2).unwrap(), DebitOutcome::Charged { balance: 5 });
    assert_eq!(l.debit("u", 10, "c", 3).unwrap(), DebitOutcome::Insufficient { balance: 5 });
    assert_eq!(l.debit("nobody", 1, "a", 3).unwrap(), DebitOutcome::Insufficient { balance: 0 });
    assert_eq!(l.balance("u"), 5);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_same_key_charges_once_and_answers_the_first_outcome() {
    let d = dir("idempotent");
    let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
    l.credit("u", 100, 0).unwrap();
    assert_eq!(l.debit("u", 30, "k", 1).unwrap(), DebitOutcome::Charged { balance: 70 });
    assert_eq!(l.debit("u", 30, "k", 2).unwrap(), DebitOutcome::Repeat { balance: 70, receipt: None });
    let receipt = Receipt { seq: 4, message_id: "m".into(), combo_id: "c".into(), combo_count: 1 };
    l.settle("u", "k", receipt.clone()).unwrap();
    assert_eq!(
        l.debit("u", 30, "k", 3).unwrap(),
        DebitOutcome::Repeat { balance: 70, receipt: Some(receipt) }
    );
    // Keys are per user.
    l.credit("v", 30, 0).unwrap();
    assert_eq!(l.debit("v", 30, "k", 3).unwrap(), DebitOutcome::Charged { balance: 0 });
    assert_eq!(l.balance("u"), 70);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn replay_restores_balances_keys_and_receipts() {
    let d = dir("replay");
    let receipt = Receipt { seq: 9, message_id: "m9".into(), combo_id: "c9".into(), combo_count: 2 };
    {
        let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
        l.credit("u", 100, 0).unwrap();
        l.debit("u", 40, "k1", 1).unwrap();
        l.settle("u", "k1", receipt.clone()).unwrap();
        l.debit("u", 10, "k2", 2).unwrap();
        l.refund("u", "k2", 3).unwrap();
    }
    let l = EmbeddedLedger::open(&d, DAY, 10).unwrap();
    assert_eq!(l.balance("u"), 60);
    assert_eq!(
        l.debit("u", 40, "k1", 11).unwrap(),
        DebitOutcome::Repeat { balance: 60, receipt: Some(receipt) }
    );
    // A refunded key is forgotten: sending it again charges.
    assert_eq!(l.debit("u", 10, "k2", 12).unwrap(), DebitOutcome::Charged { balance: 50 });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn keys_expire_after_their_time_to_live() {
    let d = dir("expiry");
    let ttl = Duration::from_secs(10);
    {
        let l = EmbeddedLedger::open(&d, ttl, 0).unwrap();
        l.credit("u", 100, 0).unwrap();
        l.debit("u", 10, "k", 1_000).unwrap();
        assert!(matches!(l.debit("u", 10, "k", 5_000).unwrap(), DebitOutcome::Repeat { .. }));
    }
    let l = EmbeddedLedger::open(&d, ttl, 11_000).unwrap();
    assert_eq!(l.debit("u", 10, "k", 11_000).unwrap(), DebitOutcome::Charged { balance: 80 });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_torn_last_line_is_cut_and_a_corrupt_one_refuses_the_start() {
    let d = dir("torn");
    {
        let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
        l.credit("u", 100, 0).unwrap();
    }
    let path = d.join(JOURNAL_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"op":"debit","user":"u","ke"#).unwrap();
    drop(f);
    let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
    assert_eq!(l.balance("u"), 100);
    l.debit("u", 1, "k", 1).unwrap();
    drop(l);
    let l = EmbeddedLedger::open(&d, DAY, 2).unwrap();
    assert_eq!(l.balance("u"), 99);
    drop(l);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"not json\n").unwrap();
    drop(f);
    let len = std::fs::metadata(&path).unwrap().len();
    let refused = EmbeddedLedger::open(&d, DAY, 3).unwrap_err();
    assert!(
        matches!(&refused, LedgerError::Corrupt { line: 3, offset, .. } if *offset == len - b"not json\n".len() as u64),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("roomcast-server ledger repair"), "{refused}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn repair_keeps_a_whole_record_appended_after_a_torn_one_and_a_copy_of_the_journal() {
    let d = dir("repair");
    let receipt = Receipt { seq: 5, message_id: "e-5".into(), combo_id: "c".into(), combo_count: 1 };
    {
        let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
        l.credit("alice", 1_000, 0).unwrap();
        l.debit("alice", 1, "k0", 1).unwrap();
    }
    // What an older node wrote when a full disk tore a receipt and the next
    // debit was appended after it on the same line, then its receipt.
    let path = d.join(JOURNAL_FILE);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"op":"settle","user":"alice","key":"k0","#).unwrap();
    f.write_all(br#"{"op":"debit","user":"alice","key":"k1","amount":1,"balance":998,"at":2}"#).unwrap();
    f.write_all(b"\n").unwrap();
    f.write_all(br#"{"op":"settle","user":"alice","key":"k1","seq":5,"message_id":"e-5","combo_id":"c","combo_count":1}"#).unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(EmbeddedLedger::open(&d, DAY, 3), Err(LedgerError::Corrupt { line: 3, .. })));

    let report = repair(&path, 42).unwrap();
    assert_eq!(report.kept, 3, "the credit, k0's debit and k1's receipt");
    assert_eq!(
        report.salvaged.iter().map(|(l, _, op)| (*l, op.as_str())).collect::<Vec<_>>(),
        [(3, "debit")]
    );
    assert_eq!(report.dropped.len(), 1);
    assert!(report.dropped[0].2.starts_with(r#"{"op":"settle","user":"alice","key":"k0""#));
    assert_eq!(report.unsettled, [("alice".to_string(), "k0".to_string())], "k0's receipt was torn");
    let backup = report.backup.unwrap();
    assert_eq!(std::fs::read(&backup).unwrap(), before, "the journal as it was is kept");

    let l = EmbeddedLedger::open(&d, DAY, 3).unwrap();
    assert_eq!(l.balance("alice"), 998, "both acknowledged charges");
    assert_eq!(
        l.debit("alice", 1, "k1", 4).unwrap(),
        DebitOutcome::Repeat { balance: 998, receipt: Some(receipt) },
        "the salvaged charge keeps its receipt"
    );
    drop(l);
    assert!(repair(&path, 43).unwrap().backup.is_none(), "a journal that reads needs no repair");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_journal_keeps_a_reserve_beside_it() {
    let d = dir("reserve");
    let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
    let reserve = file::reserve_path(&d.join(JOURNAL_FILE));
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES as u64);
    // Taken away (as a full disk takes it), it is made again at the next debit.
    std::fs::remove_file(&reserve).unwrap();
    l.credit("u", 10, 0).unwrap();
    l.debit("u", 1, "k", 1).unwrap();
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES as u64);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn concurrent_debits_never_overdraw() {
    let d = dir("concurrent");
    let l = Arc::new(EmbeddedLedger::open(&d, DAY, 0).unwrap());
    l.credit("u", 50, 0).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                (0..5)
                    .filter(|i| {
                        matches!(l.debit("u", 3, &format!("{t}-{i}"), 1), Ok(DebitOutcome::Charged { .. }))
                    })
                    .count()
            })
        })
        .collect();
    let charged: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(charged, 16);
    assert_eq!(l.balance("u"), 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_charge_never_sequenced_is_handed_back_once_to_be_sequenced() {
    let d = dir("unsequenced");
    {
        let l = EmbeddedLedger::open(&d, DAY, 0).unwrap();
        l.credit("u", 100, 0).unwrap();
        assert_eq!(l.debit("u", 30, "k", 1).unwrap(), DebitOutcome::Charged { balance: 70 });
        // The node stops before the room sequenced it.
    }
    let l = EmbeddedLedger::open(&d, DAY, 2).unwrap();
    assert_eq!(l.debit("u", 30, "k", 3).unwrap(), DebitOutcome::Charged { balance: 70 }, "not charged again");
    assert_eq!(l.balance("u"), 70);
    assert_eq!(l.debit("u", 30, "k", 4).unwrap(), DebitOutcome::Repeat { balance: 70, receipt: None });
    // Its session went away before the room answered.
    l.release("u", "k");
    assert_eq!(l.debit("u", 30, "k", 5).unwrap(), DebitOutcome::Charged { balance: 70 });
    let receipt = Receipt { seq: 3, message_id: "m".into(), combo_id: "c".into(), combo_count: 1 };
    l.settle("u", "k", receipt.clone()).unwrap();
    l.release("u", "k");
    assert_eq!(
        l.debit("u", 30, "k", 6).unwrap(),
        DebitOutcome::Repeat { balance: 70, receipt: Some(receipt) }
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn compaction_keeps_balances_keys_and_receipts_in_fewer_lines() {
    let d = dir("compact");
    let ttl = Duration::from_secs(100);
    let receipt = Receipt { seq: 8, message_id: "m8".into(), combo_id: "c8".into(), combo_count: 2 };
    {
        let mut l = EmbeddedLedger::open(&d, ttl, 0).unwrap();
        l.compact_min_lines = 40;
        l.credit("u", 1_000, 0).unwrap();
        l.credit("v", 5, 0).unwrap();
        // Old keys that expire by the time the journal is compacted.
        for i in 0..30 {
            l.debit("u", 1, &format!("old-{i}"), 1_000).unwrap();
        }
        l.debit("u", 10, "live", 150_000).unwrap();
        l.settle("u", "live", receipt.clone()).unwrap();
        l.debit("u", 10, "pending", 150_001).unwrap();
        for _ in 0..10 {
            l.credit("w", 1, 150_002).unwrap();
        }
        let lines = std::fs::read_to_string(l.path()).unwrap().lines().count();
        assert!(lines < 20, "compacted to {lines} lines");
        l.credit("v", 1, 150_003).unwrap();
    }
    let l = EmbeddedLedger::open(&d, ttl, 150_004).unwrap();
    assert_eq!((l.balance("u"), l.balance("v"), l.balance("w")), (950, 6, 10));
    assert_eq!(
        l.debit("u", 10, "live", 150_005).unwrap(),
        DebitOutcome::Repeat { balance: 960, receipt: Some(receipt) }
    );
    assert_eq!(l.debit("u", 10, "pending", 150_006).unwrap(), DebitOutcome::Charged { balance: 950 });
    assert_eq!(l.debit("u", 1, "old-0", 150_007).unwrap(), DebitOutcome::Charged { balance: 949 });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_charge_recorded_for_the_backend_answers_repeats_and_concurrent_records() {
    let d = dir("record");
    let l = EmbeddedLedger::open_file(&d, "keys.jsonl", DAY, 0).unwrap();
    assert_eq!(l.lookup("u", "k", 1), None);
    assert_eq!(l.record("u", "k", 10, 90, 1).unwrap(), DebitOutcome::Charged { balance: 90 });
    assert_eq!(l.record("u", "k", 10, 80, 2).unwrap(), DebitOutcome::Repeat { balance: 90, receipt: None });
    assert_eq!(l.lookup("u", "k", 3), Some(DebitOutcome::Repeat { balance: 90, receipt: None }));
    assert_eq!(l.forget("u", "k", Some(100), 4).unwrap(), Some(100));
    assert_eq!(l.lookup("u", "k", 5), None);
    assert_eq!(l.balance("u"), 100);
    let _ = std::fs::remove_dir_all(&d);
}
