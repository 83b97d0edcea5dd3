//! Segment files: `OUTPUT/segments/<20-digit index>.seg`, whose concatenation in name order is the
//! exact byte stream of stored records.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::checkpoint::sync_dir;
use super::error::{StoreError, StoreResult};
use super::perm;

/// Sub-directory of the output directory holding the segments.
pub const SEGMENTS_DIR: &str = "segments";
const SUFFIX: &str = ".seg";

/// A segment found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its index (the number in its name).
    pub index: u64,
    /// Its full path.
    pub path: PathBuf,
    /// Its length in bytes when listed.
    pub len: u64,
}

/// File name of segment `index`; zero-padded so name order is index order.
pub fn segment_name(index: u64) -> String {
    format!("{index:020}{SUFFIX}")
}

/// Path of segment `index` under the segments directory `seg_dir`.
pub fn segment_path(seg_dir: &Path, index: u64) -> PathBuf {
    seg_dir.join(segment_name(index))
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Lists the segments in `seg_dir` in index order, and the names of anything else found there.
pub fn list(seg_dir: &Path) -> StoreResult<(Vec<SegmentInfo>, Vec<String>)> {
    let mut segments = Vec::new();
    let mut strangers = Vec::new();
    let entries =
        fs::read_dir(seg_dir).map_err(|e| StoreError::io("list segments", seg_dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list segments", seg_dir, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match parse_name(&name) {
            Some(index) => {
                let path = entry.path();
                let len = entry
                    .metadata()
                    .map_err(|e| StoreError::io("stat segment", &path, &e))?
                    .len();
                segments.push(SegmentInfo { index, path, len });
            }
            None => strangers.push(name),
        }
    }
    segments.sort_by_key(|s| s.index);
    Ok((segments, strangers))
}

/// Creates segment `index` (it must not exist) and makes its directory entry durable.
pub fn create(seg_dir: &Path, index: u64) -> StoreResult<File> {
    let path = segment_path(seg_dir, index);
    let file = perm::options()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| perm::open_error("create segment", &path, &e))?;
    sync_dir(seg_dir)?;
    Ok(file)
}

/// Opens an existing segment for appending.
pub fn open_append(path: &Path) -> StoreResult<File> {
    perm::options()
        .append(true)
        .open(path)
        .map_err(|e| perm::open_error("open segment", path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_indexes() {
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_name(&segment_name(42)), Some(42));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn create_refuses_existing_and_list_orders() {
        let dir = tempfile::tempdir().expect("tempdir");
        create(dir.path(), 2).expect("create 2");
        create(dir.path(), 1).expect("create 1");
        assert!(create(dir.path(), 1).is_err());
        fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        let (segs, strangers) = list(dir.path()).expect("list");
        assert_eq!(segs.iter().map(|s| s.index).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(strangers, vec!["notes.txt".to_string()]);
    }
}
