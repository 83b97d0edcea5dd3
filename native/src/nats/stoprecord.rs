//! The record of a stop, `nats-acks.json` beside the checkpoint: the format the Python
//! source wrote and read (nats/ledger.py, `write_stop_record`/`read_stop_record`, gone with
//! step 7 of issue 17), so a directory stopped by either starts with the other.
//!
//! Why it exists: the last acknowledgements are sent once storage is closed, after the last
//! checkpoint was written, so the checkpoint lists as unconfirmed what the stop then saw
//! confirmed. This file says which of them were not; the next start believes it only when
//! the checkpoint on disk holds the very listing it was written about (one written late,
//! after another run took the directory and checkpointed, is then ignored: it costs the next
//! start its count, never a message, since only a checkpoint's listing says what is stored).
//!
//! ```text
//! {"v":1,"unconfirmed":"1-3,9","confirmed":"5-7","not_confirmed":"3,9"}
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value;

use super::ledger::Listing;
use super::ranges;
use super::text::push_json_string;
use crate::store::perm;

/// The file's name in the output directory (as `STOP_RECORD_FILE` was in the Python
/// source's nats/ledger.py).
pub const STOP_RECORD_FILE: &str = "nats-acks.json";
/// The format's version.
const VERSION: u64 = 1;
/// The longest listing a stop record may hold: above what a checkpoint's listing may be.
/// A reader reads at most four times this, as Python did.
pub const MAX_RECORD_CHARS: usize = 4096;

/// At a stop: the listing of the checkpoint on disk, and those of its sequences whose
/// acknowledgement was still not confirmed (a [`ranges`] text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopRecord {
    /// The listing of the checkpoint on disk when the stop was recorded.
    pub listing: Listing,
    /// Those of its sequences whose acknowledgement was not confirmed.
    pub not_confirmed: String,
}

/// A stop record that cannot be used.
#[derive(Debug)]
pub enum StopRecordError {
    /// It could not be read (or written).
    Io(io::Error),
    /// It is not one shovel wrote (the reason).
    Damaged(String),
}

impl fmt::Display for StopRecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopRecordError::Io(e) => write!(f, "{e}"),
            StopRecordError::Damaged(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StopRecordError {}

impl From<io::Error> for StopRecordError {
    fn from(e: io::Error) -> Self {
        StopRecordError::Io(e)
    }
}

impl StopRecord {
    /// The file's body, byte for byte as Python's `json.dumps(body, separators=(",", ":"))`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.listing.len() + self.not_confirmed.len());
        out.extend_from_slice(format!(r#"{{"v":{VERSION}"#).as_bytes());
        for (key, value) in [
            ("unconfirmed", &self.listing.unconfirmed),
            ("confirmed", &self.listing.confirmed),
            ("not_confirmed", &self.not_confirmed),
        ] {
            out.push(b',');
            push_json_string(&mut out, key);
            out.push(b':');
            push_json_string(&mut out, value);
        }
        out.push(b'}');
        out
    }

    /// Reads a body: a JSON object of version 1 with the three texts, `not_confirmed` a
    /// listing (as the checkpoint's is checked). Refuses what Python refused; a version given
    /// as anything but the whole number 1 too (Python's `==` also took `1.0` and `true`,
    /// which no shovel writes).
    pub fn decode(raw: &[u8]) -> Result<StopRecord, StopRecordError> {
        let damaged = |why: String| StopRecordError::Damaged(why);
        let body: Value =
            serde_json::from_slice(raw).map_err(|e| damaged(format!("not JSON: {e}")))?;
        let Some(body) = body.as_object() else {
            return Err(damaged("not a stop record of this shovel".into()));
        };
        if body.get("v").and_then(Value::as_u64) != Some(VERSION) {
            return Err(damaged("not a stop record of this shovel".into()));
        }
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
        let (Some(unconfirmed), Some(confirmed), Some(not_confirmed)) = (
            text("unconfirmed"),
            text("confirmed"),
            text("not_confirmed"),
        ) else {
            return Err(damaged("a listing is not text".into()));
        };
        // Checked as the checkpoint's listing is: ranges, and no more of them than it holds.
        ranges::decode(&not_confirmed).map_err(|e| damaged(e.to_string()))?;
        Ok(StopRecord {
            listing: Listing {
                unconfirmed,
                confirmed,
            },
            not_confirmed,
        })
    }
}

/// Replaces the stop record in `out` atomically and durably (blocking), as the checkpoint is
/// replaced: a temporary file of this process's own, fsynced, renamed over the record, the
/// directory fsynced. Created with the store's file mode, never through a symbolic link.
pub fn write(out: &Path, record: &StopRecord) -> io::Result<()> {
    let tmp = out.join(format!("{STOP_RECORD_FILE}.{}.tmp", std::process::id()));
    // One left by an earlier process of this pid, which cannot be writing it now.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = perm::options().write(true).create_new(true).open(&tmp)?;
    file.write_all(&record.encode())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, out.join(STOP_RECORD_FILE))?;
    File::open(out)?.sync_all()
}

/// The stop record in `out`; `None` when there is none. Never follows a symbolic link.
/// Blocking.
pub fn read(out: &Path) -> Result<Option<StopRecord>, StopRecordError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(out.join(STOP_RECORD_FILE));
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut raw = Vec::new();
    file.take(4 * MAX_RECORD_CHARS as u64)
        .read_to_end(&mut raw)?;
    StopRecord::decode(&raw).map(Some)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn record() -> StopRecord {
        StopRecord {
            listing: Listing {
                unconfirmed: "1-3,9".into(),
                confirmed: "5-7".into(),
            },
            not_confirmed: "3,9".into(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &record()).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(record()));
        assert_eq!(read(&dir.path().join("nowhere")).expect("read"), None);
        let mode = std::fs::metadata(dir.path().join(STOP_RECORD_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o037, 0, "mode {mode:o}");
        // Written again over the first, with no temporary file left behind.
        write(dir.path(), &StopRecord::default()).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(StopRecord::default()));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [STOP_RECORD_FILE]);
    }

    /// The damaged bodies of test_stop_record_round_trip (test_nats.py), and more.
    #[test]
    fn damaged_records_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (body, why) in [
            ("{", "not JSON"),
            ("[]", "not a stop record of this shovel"),
            (r#"{"v":2}"#, "not a stop record of this shovel"),
            (r#"{"v":1,"unconfirmed":1}"#, "a listing is not text"),
            (
                r#"{"v":1,"unconfirmed":"","confirmed":"","not_confirmed":"x"}"#,
                "bad sequence range 'x'",
            ),
            (
                r#"{"v":1,"unconfirmed":"","confirmed":""}"#,
                "a listing is not text",
            ),
            ("", "not JSON"),
        ] {
            std::fs::write(dir.path().join(STOP_RECORD_FILE), body).expect("write");
            match read(dir.path()) {
                Err(StopRecordError::Damaged(got)) => assert!(got.contains(why), "{body}: {got}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_symbolic_link_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, record().encode()).expect("write");
        symlink(&elsewhere, dir.path().join(STOP_RECORD_FILE)).expect("symlink");
        match read(dir.path()) {
            Err(StopRecordError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::ELOOP)),
            other => panic!("{other:?}"),
        }
    }
}
