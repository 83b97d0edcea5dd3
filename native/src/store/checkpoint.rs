//! The checkpoint file: the committed source offset and the durable extent of the segments.
//!
//! It is replaced atomically (write a temp file, fsync it, rename it over the old one, fsync the
//! directory), so a reader sees either the old or the new checkpoint, never a mix. A CRC over the
//! body tells a damaged file from a valid one. Version 2 adds the source descriptor; version 1
//! files (without it) are still read, with an empty descriptor.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{StoreError, StoreResult};
use super::fault::{self, Point};
use super::perm;

/// File name of the checkpoint inside the output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// File name of the checkpoint being written; a leftover one is the trace of a crash.
pub const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
const MAGIC: &str = "shovel-checkpoint 2";
const MAGIC_V1: &str = "shovel-checkpoint 1";
/// The longest source descriptor accepted (bytes): room for three file paths of the longest
/// that can be opened (4095 bytes) escaped as JSON does (up to six bytes a byte), and more.
pub const MAX_SOURCE_BYTES: usize = 128 * 1024;

/// Checks that `source` can be stored as a descriptor: one line of at most
/// [`MAX_SOURCE_BYTES`] bytes, without NUL.
pub fn validate_source(source: &str) -> Result<(), String> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "source descriptor is {} bytes, over the {MAX_SOURCE_BYTES}-byte limit",
            source.len()
        ));
    }
    if source.contains(['\n', '\r', '\0']) {
        return Err("source descriptor must be one line without NUL".into());
    }
    Ok(())
}

/// What has been made durable, as recorded on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Source offset up to which every record is durable (file: byte position; generator: next
    /// sequence number).
    pub committed_offset: u64,
    /// Records stored in all segments, across every run.
    pub records: u64,
    /// Bytes stored in all segments, across every run.
    pub bytes: u64,
    /// Index of the segment being appended to.
    pub segment: u64,
    /// Durable length of that segment; anything past it is discarded on recovery.
    pub segment_len: u64,
    /// What the committed offset belongs to, as the service described it (opaque here; one
    /// line, validated by [`validate_source`]); empty until a write carries one.
    pub source: Arc<str>,
}

impl Checkpoint {
    /// The text form written to disk, ending with a CRC of everything before it.
    pub fn encode(&self) -> String {
        let body = format!(
            "{MAGIC}\ncommitted_offset {}\nrecords {}\nbytes {}\nsegment {}\nsegment_len {}\n\
             source {}\n",
            self.committed_offset,
            self.records,
            self.bytes,
            self.segment,
            self.segment_len,
            self.source
        );
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}crc32 {crc:08x}\n")
    }

    /// Parses the text form; `path` is only used in error messages.
    pub fn decode(raw: &[u8], path: &Path) -> StoreResult<Checkpoint> {
        let bad = |detail: &str| StoreError::corrupt(path, detail.to_string());
        let text = std::str::from_utf8(raw).map_err(|_| bad("not valid UTF-8 text"))?;
        if raw.is_empty() {
            return Err(bad("the file is empty (0 bytes)"));
        }
        let crc_at = text
            .rfind("crc32 ")
            .ok_or_else(|| bad("no crc32 line (truncated?)"))?;
        let (body, crc_line) = text.split_at(crc_at);
        let stored = crc_line
            .trim_end()
            .strip_prefix("crc32 ")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| bad("unreadable crc32 line"))?;
        let actual = crc32fast::hash(body.as_bytes());
        if stored != actual {
            return Err(bad(&format!(
                "crc32 mismatch (stored {stored:08x}, computed {actual:08x})"
            )));
        }
        let mut lines = body.lines();
        let version = match lines.next() {
            Some(MAGIC) => 2,
            Some(MAGIC_V1) => 1,
            _ => return Err(bad("not a shovel checkpoint (unknown header)")),
        };
        let mut field = |name: &str| -> StoreResult<u64> {
            let line = lines
                .next()
                .ok_or_else(|| bad(&format!("missing field {name}")))?;
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad(&format!("bad field {name}: {line:?}")))
        };
        let mut cp = Checkpoint {
            committed_offset: field("committed_offset")?,
            records: field("records")?,
            bytes: field("bytes")?,
            segment: field("segment")?,
            segment_len: field("segment_len")?,
            source: Arc::from(""),
        };
        if version >= 2 {
            let line = lines.next().ok_or_else(|| bad("missing field source"))?;
            let source = line
                .strip_prefix("source")
                .and_then(|rest| {
                    rest.strip_prefix(' ')
                        .or(Some(rest).filter(|r| r.is_empty()))
                })
                .ok_or_else(|| bad(&format!("bad field source: {line:?}")))?;
            cp.source = Arc::from(source);
        }
        if lines.next().is_some() {
            return Err(bad("unexpected text after the last field"));
        }
        Ok(cp)
    }
}

/// Path of the checkpoint file in `dir`.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Reads the checkpoint of `dir`; `Ok(None)` when there is none yet.
pub fn load(dir: &Path) -> StoreResult<Option<Checkpoint>> {
    let path = checkpoint_path(dir);
    match fs::read(&path) {
        Ok(raw) => Checkpoint::decode(&raw, &path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read checkpoint", &path, &e)),
    }
}

/// fsyncs a directory so that a rename or a new file in it survives a power loss.
pub fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, &e))
}

/// Atomically replaces the checkpoint of `dir` with `cp` (blocking).
pub fn persist(dir: &Path, cp: &Checkpoint) -> StoreResult<()> {
    let tmp = dir.join(CHECKPOINT_TMP_FILE);
    let mut file = perm::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| perm::open_error("create checkpoint", &tmp, &e))?;
    file.write_all(cp.encode().as_bytes())
        .map_err(|e| StoreError::io("write checkpoint", &tmp, &e))?;
    file.sync_all()
        .map_err(|e| StoreError::io("fsync checkpoint", &tmp, &e))?;
    drop(file);
    fault::hit(Point::MidCheckpoint).map_err(|e| StoreError::io("rename checkpoint", &tmp, &e))?;
    let path = checkpoint_path(dir);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename checkpoint", &path, &e))?;
    sync_dir(dir)?;
    fault::hit(Point::AfterCheckpoint).map_err(|e| StoreError::io("fsync directory", dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            committed_offset: 123_456,
            records: 789,
            bytes: 100_000,
            segment: 3,
            segment_len: 4096,
            source: Arc::from(r#"{"kind":"file","path":"/a b"}"#),
        }
    }

    #[test]
    fn reads_version_1_without_a_source() {
        let body = "shovel-checkpoint 1\ncommitted_offset 5\nrecords 2\nbytes 5\nsegment 0\n\
                    segment_len 5\n";
        let text = format!("{body}crc32 {:08x}\n", crc32fast::hash(body.as_bytes()));
        let cp = Checkpoint::decode(text.as_bytes(), Path::new("cp")).expect("v1");
        assert_eq!(cp.committed_offset, 5);
        assert_eq!(&*cp.source, "");
    }

    #[test]
    fn round_trips_an_empty_source_and_refuses_a_changed_one() {
        let cp = Checkpoint {
            source: Arc::from(""),
            ..sample()
        };
        let text = cp.encode();
        assert_eq!(Checkpoint::decode(text.as_bytes(), Path::new("cp")), Ok(cp));
        let tampered = sample().encode().replace("/a b", "/a c");
        assert!(matches!(
            Checkpoint::decode(tampered.as_bytes(), Path::new("cp")),
            Err(StoreError::Corrupt { ref detail, .. }) if detail.contains("crc32")
        ));
    }

    #[test]
    fn source_validation() {
        assert!(validate_source(r#"{"a":1}"#).is_ok());
        assert!(validate_source("a\nb").is_err());
        assert!(validate_source("a\0b").is_err());
        assert!(validate_source(&"x".repeat(MAX_SOURCE_BYTES + 1)).is_err());
    }

    #[test]
    fn round_trips() {
        let cp = sample();
        let decoded = Checkpoint::decode(cp.encode().as_bytes(), Path::new("cp"));
        assert_eq!(decoded, Ok(cp));
    }

    #[test]
    fn rejects_flipped_digit() {
        let text = sample().encode().replace("123456", "123457");
        let err = Checkpoint::decode(text.as_bytes(), Path::new("cp"));
        assert!(
            matches!(err, Err(StoreError::Corrupt { ref detail, .. }) if detail.contains("crc32"))
        );
    }

    #[test]
    fn rejects_truncation_and_garbage_and_empty() {
        let text = sample().encode();
        for raw in [&text.as_bytes()[..20], b"\xff\xfe garbage", b""] {
            assert!(matches!(
                Checkpoint::decode(raw, Path::new("cp")),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn persist_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()), Ok(None));
        persist(dir.path(), &sample()).expect("persist");
        assert_eq!(load(dir.path()), Ok(Some(sample())));
        assert!(!dir.path().join(CHECKPOINT_TMP_FILE).exists());
    }
}
