//! How the store creates what it writes: readable by the owner and the group only (files
//! 0640, directories 0750, before the umask), and never through a symbolic link, so that a
//! link planted in the output directory cannot redirect a write to another file.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::error::StoreError;

/// Mode of every file the store creates (the umask may remove more).
pub const FILE_MODE: u32 = 0o640;
/// Mode of every directory the store creates (the umask may remove more).
pub const DIR_MODE: u32 = 0o750;

/// Open options that create files with `FILE_MODE` and refuse a symbolic link as the last
/// path component (O_NOFOLLOW: the open fails with ELOOP instead of following it).
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    options
}

/// Creates `dir` and its missing ancestors with `DIR_MODE`.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates `dir` (its parent must exist) with `DIR_MODE`.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(dir)
}

/// The error for a failed open of `path`: a refused symbolic link says so and what to do.
pub fn open_error(op: &'static str, path: &Path, err: &io::Error) -> StoreError {
    if err.raw_os_error() == Some(libc::ELOOP) {
        return StoreError::Io {
            op,
            path: path.to_path_buf(),
            errno: Some(libc::ELOOP),
            message: format!(
                "{} is a symbolic link, which shovel never follows; remove it, or use another \
                 output directory",
                path.display()
            ),
        };
    }
    StoreError::io(op, path, err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").expect("write");
        let link = dir.path().join("lock");
        symlink(&target, &link).expect("symlink");
        let err = options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&link)
            .expect_err("a symlink must not be opened");
        let msg = open_error("open lock file", &link, &err).to_string();
        assert!(msg.contains("is a symbolic link"), "{msg}");
        assert!(msg.contains("[ELOOP]"), "{msg}");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep me");
    }

    #[test]
    fn created_files_and_directories_are_not_world_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("a/b");
        create_dir_all(&sub).expect("mkdir");
        let file = sub.join("f");
        options()
            .write(true)
            .create_new(true)
            .open(&file)
            .expect("create");
        for (path, forbidden) in [
            (&sub, 0o007),
            (&dir.path().join("a"), 0o007),
            (&file, 0o037),
        ] {
            let mode = std::fs::metadata(path).expect("stat").permissions().mode();
            assert_eq!(mode & forbidden, 0, "{} has mode {mode:o}", path.display());
        }
    }
}
