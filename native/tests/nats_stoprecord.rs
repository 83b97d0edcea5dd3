//! The stop record against today's Python source: fixtures/nats-acks.json was written by
//! `write_stop_record` (shovel/sources/nats/ledger.py at 58a79d3) for
//! `StopRecord(Listing("1-3,9,4583,4586-4590", "5-7,4591"), "3,9,4586")`.

use std::fs;

use shovel_native::nats::ledger::Listing;
use shovel_native::nats::stoprecord::{self, StopRecord, STOP_RECORD_FILE};

fn python_record() -> StopRecord {
    StopRecord {
        listing: Listing {
            unconfirmed: "1-3,9,4583,4586-4590".into(),
            confirmed: "5-7,4591".into(),
        },
        not_confirmed: "3,9,4586".into(),
    }
}

#[test]
fn a_record_written_by_the_python_source_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nats-acks.json"),
        dir.path().join(STOP_RECORD_FILE),
    )
    .expect("copy fixture");
    let record = stoprecord::read(dir.path()).expect("read");
    assert_eq!(record, Some(python_record()));
}

#[test]
fn a_record_is_written_byte_for_byte_as_the_python_source_wrote_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    stoprecord::write(dir.path(), &python_record()).expect("write");
    let ours = fs::read(dir.path().join(STOP_RECORD_FILE)).expect("read");
    let theirs = include_bytes!("fixtures/nats-acks.json");
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(theirs)
    );
}
