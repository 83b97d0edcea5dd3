//! The store's error type: every failure carries the path it concerns and, for I/O, the errno.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a store operation failed. `Clone` because the first error is remembered and reported
/// again by every later call (and by `close`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// An operating-system call failed.
    Io {
        /// What the store was doing, e.g. "write segment" or "fsync checkpoint".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The raw errno, when the OS gave one.
        errno: Option<i32>,
        /// The OS's description of the error.
        message: String,
    },
    /// Another process holds the output directory's lock. The message does not name the
    /// directory: the caller does, as the user gave it.
    Locked {
        /// What the lock file says about its holder (its PID), if readable.
        holder: Option<String>,
    },
    /// The on-disk state is damaged in a way a crash cannot leave: refuse rather than guess.
    Corrupt {
        /// The damaged file or directory.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A configuration value the store cannot work with.
    Config(String),
    /// A store task panicked; the message is the panic payload when it was a string.
    Panic(String),
    /// The client was closed (or is closing) and takes no more writes.
    Closed,
    /// A caller passed an argument the store cannot accept.
    Invalid(String),
}

impl StoreError {
    /// Wraps an `io::Error` with the operation and path it concerns.
    pub fn io(op: &'static str, path: &Path, err: &io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            errno: err.raw_os_error(),
            message: err.to_string(),
        }
    }

    /// A corruption report for `path`.
    pub fn corrupt(path: &Path, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// The symbolic name of the errnos a storage service meets, so messages say "ENOSPC", not "28".
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ELOOP => "ELOOP",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        _ => return None,
    })
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io {
                op,
                path,
                errno,
                message,
            } => {
                write!(f, "{op} failed for {}: {message}", path.display())?;
                if let Some(name) = errno.and_then(errno_name) {
                    write!(f, " [{name}]")?;
                }
                Ok(())
            }
            StoreError::Locked { holder } => {
                write!(f, "in use by another shovel process")?;
                if let Some(holder) = holder {
                    write!(f, " (pid {holder})")?;
                }
                write!(f, "; only one process may write to a directory at a time")
            }
            StoreError::Corrupt { path, detail } => {
                write!(f, "damaged store file {}: {detail}", path.display())
            }
            StoreError::Config(msg) => write!(f, "invalid storage configuration: {msg}"),
            StoreError::Panic(msg) => write!(f, "storage task panicked: {msg}"),
            StoreError::Closed => {
                write!(f, "the storage client is closed and takes no more writes")
            }
            StoreError::Invalid(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_path_and_errno() {
        let err = io::Error::from_raw_os_error(libc::ENOSPC);
        let e = StoreError::io("write segment", Path::new("/data/x.seg"), &err);
        let text = e.to_string();
        assert!(text.contains("/data/x.seg"), "{text}");
        assert!(text.contains("[ENOSPC]"), "{text}");
        assert!(text.starts_with("write segment failed"), "{text}");
    }

    #[test]
    fn locked_error_names_the_holder() {
        let e = StoreError::Locked {
            holder: Some("42".into()),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("in use by another") && text.contains("pid 42"),
            "{text}"
        );
    }
}
