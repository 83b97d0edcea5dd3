//! End-to-end tests of `Store` without Python: ordering, durability, close protocol, recovery.
// Helpers here are test code too: a failed setup should panic loudly.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use shovel_native::store::{
    CloseError, Store, StoreConfig, StoreError, Submitted, CHECKPOINT_FILE, SEGMENTS_DIR,
};

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        segment_max_bytes: 1 << 20,
        fsync_interval: Duration::from_millis(5),
        fsync_max_bytes: 64 << 10,
        max_inflight_bytes: 8 << 20,
    }
}

fn stored_bytes(dir: &Path) -> Vec<u8> {
    let mut names: Vec<_> = fs::read_dir(dir.join(SEGMENTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.iter().flat_map(|p| fs::read(p).unwrap()).collect()
}

fn record(i: u64) -> Vec<u8> {
    format!("record {i:08} {}\n", "x".repeat((i % 50) as usize)).into_bytes()
}

/// Submits, retrying while full (waiting on durable progress, as the Python side does).
fn submit_all(store: &Store, batches: &[Batch]) {
    for (data, records, end) in batches {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match store.submit(data, *records, *end, None).unwrap() {
                Submitted::Accepted(_) => break,
                Submitted::Full => {
                    assert!(Instant::now() < deadline, "stayed full");
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// (data, records, end offset) of one submitted batch.
type Batch = (Vec<u8>, u64, u64);

fn batches(n: u64, per_batch: u64) -> (Vec<Batch>, Vec<u8>) {
    let mut all = Vec::new();
    let mut out = Vec::new();
    let mut offset = 0;
    let mut i = 0;
    while i < n {
        let mut data = Vec::new();
        let start = i;
        while i < n && i - start < per_batch {
            data.extend(record(i));
            i += 1;
        }
        offset += data.len() as u64;
        all.extend_from_slice(&data);
        out.push((data, i - start, offset));
    }
    (out, all)
}

#[test]
fn close_with_a_thousand_writes_in_flight_keeps_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let (batches, expected) = batches(20_000, 20);
    assert_eq!(batches.len(), 1000);
    submit_all(&store, &batches);
    let report = store.close(Duration::from_secs(30)).unwrap();
    assert_eq!(report.records_durable, 20_000);
    assert_eq!(report.bytes_durable, expected.len() as u64);
    assert_eq!(report.checkpoint.committed_offset, expected.len() as u64);
    assert_eq!(stored_bytes(dir.path()), expected);
    let stats = store.stats();
    assert_eq!(
        (
            stats.inflight_writes,
            stats.inflight_bytes,
            stats.inflight_records
        ),
        (0, 0, 0)
    );
    assert_eq!(stats.durable_seq, 1000);
    // Reopen: the checkpoint says exactly what is there.
    let again = Store::open(config(dir.path())).unwrap();
    assert_eq!(again.initial_checkpoint(), &report.checkpoint);
    assert!(
        again.recovery_notes().is_empty(),
        "{:?}",
        again.recovery_notes()
    );
}

#[test]
fn segments_roll_over_and_concatenate_to_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_max_bytes = 10_000;
    let store = Store::open(cfg.clone()).unwrap();
    let (batches, expected) = batches(5_000, 37);
    submit_all(&store, &batches);
    store.close(Duration::from_secs(30)).unwrap();
    let count = fs::read_dir(dir.path().join(SEGMENTS_DIR)).unwrap().count();
    assert!(count > 10, "only {count} segments");
    assert_eq!(stored_bytes(dir.path()), expected);
    drop(Store::open(cfg).unwrap());
}

#[test]
fn close_is_idempotent_and_concurrent_closers_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(config(dir.path())).unwrap());
    submit_all(&store, &batches(100, 10).0);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = std::sync::Arc::clone(&store);
            std::thread::spawn(move || s.close(Duration::from_secs(30)))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().all(|r| r == &results[0]));
    assert_eq!(store.close(Duration::from_secs(1)), results[0]);
    assert_eq!(results[0].as_ref().unwrap().records_durable, 100);
}

#[test]
fn write_after_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.close(Duration::from_secs(5)).unwrap();
    assert_eq!(store.submit(b"a\n", 1, 2, None), Err(StoreError::Closed));
    assert!(store.is_closed());
}

#[test]
fn offsets_may_not_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    store.submit(b"a\n", 1, 10, None).unwrap();
    assert!(matches!(
        store.submit(b"b\n", 1, 5, None),
        Err(StoreError::Invalid(_))
    ));
    store.close(Duration::from_secs(5)).unwrap();
}

#[test]
fn backpressure_reports_full_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_inflight_bytes = 1000;
    cfg.fsync_interval = Duration::from_secs(3600);
    cfg.fsync_max_bytes = 1 << 30;
    let store = Store::open(cfg).unwrap();
    let big = vec![b'x'; 999];
    assert_eq!(
        store.submit(&big, 0, 1, None).unwrap(),
        Submitted::Accepted(1)
    );
    // Nothing becomes durable (no fsync is due), so the client stays full.
    assert_eq!(store.submit(b"y\n", 1, 2, None).unwrap(), Submitted::Full);
    assert_eq!(store.stats().inflight_bytes, 999);
    store.close(Duration::from_secs(5)).unwrap();
    assert_eq!(store.stats().inflight_bytes, 0);
}

#[test]
fn second_open_of_a_directory_is_refused_until_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    match Store::open(config(dir.path())) {
        Err(StoreError::Locked { holder }) => {
            assert_eq!(holder, Some(std::process::id().to_string()))
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    store.close(Duration::from_secs(5)).unwrap();
    Store::open(config(dir.path())).unwrap();
}

#[test]
fn dropped_unclosed_store_still_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, expected) = batches(2_000, 100);
    {
        let store = Store::open(config(dir.path())).unwrap();
        submit_all(&store, &batches);
    }
    // The writer drains in the background and releases the lock when done.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reopened = loop {
        match Store::open(config(dir.path())) {
            Ok(s) => break s,
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        reopened.initial_checkpoint().committed_offset,
        expected.len() as u64
    );
    assert_eq!(stored_bytes(dir.path()), expected);
}

#[test]
fn failing_checkpoint_surfaces_from_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    // A directory where the checkpoint's temp file must go makes every checkpoint fail.
    fs::create_dir(dir.path().join("checkpoint.tmp")).unwrap();
    let _ = store.submit(b"a\n", 1, 2, None).unwrap();
    match store.close(Duration::from_secs(10)) {
        Err(CloseError::Failed(StoreError::Io { op, .. })) => assert_eq!(op, "create checkpoint"),
        other => panic!("expected a checkpoint failure, got {other:?}"),
    }
    assert!(store.stats().errors >= 1);
    assert_eq!(store.stats().committed_offset, 0);
    assert!(matches!(
        store.submit(b"b\n", 1, 4, None),
        Err(StoreError::Io { .. })
    ));
    let cp = fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
    assert!(cp.contains("committed_offset 0\n"), "{cp}");
}

#[test]
fn the_source_descriptor_of_the_last_durable_write_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(&*store.initial_checkpoint().source, "");
    store.submit(b"a\n", 1, 2, Some("first")).unwrap();
    store.submit(b"b\n", 1, 4, None).unwrap();
    assert!(matches!(
        store.submit(b"c\n", 1, 6, Some("two\nlines")),
        Err(StoreError::Invalid(_))
    ));
    let report = store.close(Duration::from_secs(30)).unwrap();
    assert_eq!(&*report.checkpoint.source, "first");

    let again = Store::open(config(dir.path())).unwrap();
    assert_eq!(&*again.initial_checkpoint().source, "first");
    again.submit(b"c\n", 1, 6, Some("second")).unwrap();
    again.close(Duration::from_secs(30)).unwrap();
    let last = Store::open(config(dir.path())).unwrap();
    assert_eq!(&*last.initial_checkpoint().source, "second");
    assert_eq!(last.initial_checkpoint().committed_offset, 6);
    last.close(Duration::from_secs(30)).unwrap();
}
