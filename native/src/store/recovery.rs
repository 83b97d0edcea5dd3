//! Opening an output directory: take its lock, then bring the segments back to exactly what the
//! checkpoint says is durable.
//!
//! A crash can leave bytes past the checkpoint in the current segment, segments created after
//! it, and a temp checkpoint: those are repaired (the source will supply that data again). Any
//! other mismatch (a segment shorter than its checkpointed length, a missing segment, a
//! checkpoint that does not parse) is damage no crash leaves, and recovery refuses.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::checkpoint::{self, sync_dir, Checkpoint, CHECKPOINT_TMP_FILE};
use super::error::{StoreError, StoreResult};
use super::lock;
use super::perm;
use super::segment::{self, SegmentInfo, SEGMENTS_DIR};

/// An output directory ready for appending.
#[derive(Debug)]
pub struct Recovered {
    /// The held directory lock; dropping it releases the directory.
    pub lock: File,
    /// The checkpoint the directory now matches exactly.
    pub checkpoint: Checkpoint,
    /// The current segment, open for appending, its length equal to `checkpoint.segment_len`.
    pub segment: File,
    /// One sentence per repair made, for the service's log.
    pub notes: Vec<String>,
}

fn truncate_to(path: &Path, len: u64) -> StoreResult<()> {
    let file = perm::options()
        .write(true)
        .open(path)
        .map_err(|e| perm::open_error("open segment", path, &e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("truncate segment", path, &e))
}

fn remove_segment(seg: &SegmentInfo) -> StoreResult<()> {
    fs::remove_file(&seg.path).map_err(|e| StoreError::io("remove segment", &seg.path, &e))
}

/// `dir` and those of its ancestors that do not exist yet, innermost first.
fn missing_ancestors(dir: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        next = d.parent();
    }
    missing
}

/// Locks `dir` (creating it if needed) and recovers it to its last checkpoint.
pub fn recover(dir: &Path) -> StoreResult<Recovered> {
    let missing = missing_ancestors(dir);
    perm::create_dir_all(dir).map_err(|e| StoreError::io("create output directory", dir, &e))?;
    // Each new directory's entry must survive a power loss too: fsync every parent that got one,
    // outermost first.
    for created in missing.iter().rev() {
        let parent = created
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    let lock = lock::acquire(dir)?;
    let seg_dir = dir.join(SEGMENTS_DIR);
    if fs::symlink_metadata(&seg_dir).is_ok_and(|m| m.file_type().is_symlink()) {
        let refused = io::Error::from_raw_os_error(libc::ELOOP);
        return Err(perm::open_error(
            "open segments directory",
            &seg_dir,
            &refused,
        ));
    }
    if !seg_dir.is_dir() {
        perm::create_dir(&seg_dir)
            .map_err(|e| StoreError::io("create segments directory", &seg_dir, &e))?;
        sync_dir(dir)?;
    }
    let mut notes = Vec::new();

    let tmp = dir.join(CHECKPOINT_TMP_FILE);
    match fs::remove_file(&tmp) {
        Ok(()) => notes.push(format!(
            "removed {} left by an interrupted checkpoint",
            tmp.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("remove temp checkpoint", &tmp, &e)),
    }

    let (segments, strangers) = segment::list(&seg_dir)?;
    if !strangers.is_empty() {
        notes.push(format!(
            "ignoring files in {} that are not segments: {}",
            seg_dir.display(),
            strangers.join(", ")
        ));
    }

    let (cp, segment) = match checkpoint::load(dir)? {
        None => fresh(dir, &seg_dir, &segments, &mut notes)?,
        Some(cp) => resume(&seg_dir, cp, &segments, &mut notes)?,
    };
    Ok(Recovered {
        lock,
        checkpoint: cp,
        segment,
        notes,
    })
}

/// No checkpoint yet: only a crash during the very first start can have left (empty) segments.
fn fresh(
    dir: &Path,
    seg_dir: &Path,
    segments: &[SegmentInfo],
    notes: &mut Vec<String>,
) -> StoreResult<(Checkpoint, File)> {
    if let Some(seg) = segments.iter().find(|s| s.len > 0) {
        return Err(StoreError::corrupt(
            &checkpoint::checkpoint_path(dir),
            format!(
                "the checkpoint is missing but {} holds {} bytes; refusing to guess what was committed",
                seg.path.display(),
                seg.len
            ),
        ));
    }
    for seg in segments {
        remove_segment(seg)?;
        notes.push(format!(
            "removed empty segment {} left by an interrupted first start",
            seg.path.display()
        ));
    }
    let file = segment::create(seg_dir, 0)?;
    let cp = Checkpoint::default();
    checkpoint::persist(dir, &cp)?;
    Ok((cp, file))
}

fn resume(
    seg_dir: &Path,
    cp: Checkpoint,
    segments: &[SegmentInfo],
    notes: &mut Vec<String>,
) -> StoreResult<(Checkpoint, File)> {
    let mut sealed_bytes: u64 = 0;
    for (expected, seg) in segments.iter().filter(|s| s.index < cp.segment).enumerate() {
        if seg.index != expected as u64 {
            return Err(StoreError::corrupt(
                &segment::segment_path(seg_dir, expected as u64),
                "segment is missing (the checkpoint covers it)",
            ));
        }
        sealed_bytes += seg.len;
    }
    let sealed_count = segments.iter().filter(|s| s.index < cp.segment).count() as u64;
    if sealed_count != cp.segment {
        return Err(StoreError::corrupt(
            &segment::segment_path(seg_dir, sealed_count),
            "segment is missing (the checkpoint covers it)",
        ));
    }
    if sealed_bytes + cp.segment_len != cp.bytes {
        return Err(StoreError::corrupt(
            seg_dir,
            format!(
                "sealed segments hold {sealed_bytes} bytes and the current one {} by the checkpoint, \
                 but the checkpoint says {} bytes were stored",
                cp.segment_len, cp.bytes
            ),
        ));
    }

    let current_path = segment::segment_path(seg_dir, cp.segment);
    match segments.iter().find(|s| s.index == cp.segment) {
        None if cp.segment_len == 0 => {
            notes.push(format!(
                "recreated empty current segment {}",
                current_path.display()
            ));
            let file = segment::create(seg_dir, cp.segment)?;
            drop(file);
        }
        None => {
            return Err(StoreError::corrupt(
                &current_path,
                format!(
                    "segment is missing; the checkpoint says it holds {} durable bytes",
                    cp.segment_len
                ),
            ))
        }
        Some(seg) if seg.len < cp.segment_len => {
            return Err(StoreError::corrupt(
                &seg.path,
                format!(
                    "segment holds {} bytes but the checkpoint says {} were made durable",
                    seg.len, cp.segment_len
                ),
            ))
        }
        Some(seg) if seg.len > cp.segment_len => {
            truncate_to(&seg.path, cp.segment_len)?;
            notes.push(format!(
                "discarded {} bytes written past the checkpoint at the end of {} (they will be read again)",
                seg.len - cp.segment_len,
                seg.path.display()
            ));
        }
        Some(_) => {}
    }

    let later: Vec<&SegmentInfo> = segments.iter().filter(|s| s.index > cp.segment).collect();
    for seg in &later {
        remove_segment(seg)?;
        notes.push(format!(
            "removed {} ({} bytes) created after the checkpoint (they will be read again)",
            seg.path.display(),
            seg.len
        ));
    }
    if !later.is_empty() {
        sync_dir(seg_dir)?;
    }
    Ok((cp, segment::open_append(&current_path)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn seg(dir: &Path, index: u64) -> std::path::PathBuf {
        dir.join(SEGMENTS_DIR).join(segment::segment_name(index))
    }

    #[test]
    fn nested_new_directories_are_all_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("a").join("b").join("c");
        let missing = missing_ancestors(&out);
        assert_eq!(
            missing,
            vec![out.clone(), dir.path().join("a/b"), dir.path().join("a")]
        );
        drop(recover(&out).expect("recover"));
        assert!(seg(&out, 0).exists());
        assert!(missing_ancestors(&out).is_empty());
    }

    #[test]
    fn fresh_directory_gets_segment_zero_and_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let rec = recover(&out).expect("recover");
        assert_eq!(rec.checkpoint, Checkpoint::default());
        assert!(seg(&out, 0).exists());
        assert_eq!(checkpoint::load(&out), Ok(Some(Checkpoint::default())));
    }

    #[test]
    fn torn_tail_and_later_segments_are_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        drop(recover(out).expect("first"));
        fs::write(seg(out, 0), b"a\nb\nc").expect("write");
        let cp = Checkpoint {
            committed_offset: 4,
            records: 2,
            bytes: 4,
            segment: 0,
            segment_len: 4,
            ..Checkpoint::default()
        };
        checkpoint::persist(out, &cp).expect("persist");
        fs::write(seg(out, 1), b"zzz").expect("write later");
        fs::write(out.join(CHECKPOINT_TMP_FILE), b"half").expect("tmp");
        let rec = recover(out).expect("recover");
        assert_eq!(rec.checkpoint, cp);
        assert_eq!(fs::read(seg(out, 0)).expect("read"), b"a\nb\n");
        assert!(!seg(out, 1).exists());
        assert_eq!(rec.notes.len(), 3, "{:?}", rec.notes);
    }

    #[test]
    fn short_segment_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        drop(recover(out).expect("first"));
        let cp = Checkpoint {
            committed_offset: 10,
            records: 1,
            bytes: 10,
            segment: 0,
            segment_len: 10,
            ..Checkpoint::default()
        };
        checkpoint::persist(out, &cp).expect("persist");
        let err = recover(out).expect_err("must refuse");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn missing_checkpoint_with_data_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        drop(recover(out).expect("first"));
        let mut f = segment::open_append(&seg(out, 0)).expect("open");
        f.write_all(b"x\n").expect("write");
        fs::remove_file(checkpoint::checkpoint_path(out)).expect("rm");
        assert!(matches!(recover(out), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn garbage_checkpoint_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        drop(recover(out).expect("first"));
        fs::write(checkpoint::checkpoint_path(out), b"\0\0garbage").expect("write");
        assert!(matches!(recover(out), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn missing_sealed_segment_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        drop(recover(out).expect("first"));
        fs::write(seg(out, 0), b"a\n").expect("write");
        segment::create(&out.join(SEGMENTS_DIR), 1).expect("create");
        let cp = Checkpoint {
            committed_offset: 2,
            records: 1,
            bytes: 2,
            segment: 1,
            segment_len: 0,
            ..Checkpoint::default()
        };
        checkpoint::persist(out, &cp).expect("persist");
        drop(recover(out).expect("consistent"));
        fs::remove_file(seg(out, 0)).expect("rm");
        assert!(matches!(recover(out), Err(StoreError::Corrupt { .. })));
    }
}
