//! The output directory's exclusive lock: one writing process per directory.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::error::{StoreError, StoreResult};
use super::perm;

/// File name of the lock inside the output directory.
pub const LOCK_FILE: &str = "lock";

/// Takes the exclusive lock of `dir` without waiting. The lock lives as long as the returned
/// file is open and is released by the kernel if the process dies.
pub fn acquire(dir: &Path) -> StoreResult<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = perm::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| perm::open_error("open lock file", &path, &e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let holder = file
                .read_to_string(&mut holder)
                .ok()
                .map(|_| holder.trim().to_string())
                .filter(|h| !h.is_empty());
            return Err(StoreError::Locked { holder });
        }
        Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, &e)),
    }
    // Informational only: the PID helps a person find the other process.
    let pid = std::process::id().to_string();
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()));
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire(dir.path()).expect("first");
        match acquire(dir.path()) {
            Err(StoreError::Locked { holder }) => {
                assert_eq!(holder, Some(std::process::id().to_string()))
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        acquire(dir.path()).expect("after release");
    }
}
