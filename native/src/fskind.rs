//! What a follower needs to know of a file beyond `stat`: whether it lives on a pseudo
//! filesystem, and when it was born.
//!
//! procfs, sysfs and their kin report sizes that are not their content's (0, or a page), make
//! up their content at each read, and never grow the way a log does, so a follower that trusts
//! their sizes spins or stores the same content over and over. The kernel names a file's
//! filesystem by the magic number `fstatfs` returns.
//!
//! A file's birth time orders rotated files by when their content began, which a late write
//! to an old file (a writer that has not reopened yet) cannot change, unlike its modification
//! time. `statx` gives it on most local filesystems (ext4, xfs, btrfs, tmpfs); elsewhere there
//! is none, and the caller falls back to modification times.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// The pseudo filesystems, by magic number (as `linux/magic.h` defines them) and name.
const PSEUDO: &[(u64, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6265_6570, "configfs"),
    (0xcafe_4a11, "bpf"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x1cd1, "devpts"),
    (0x6573_5543, "fusectl"),
    (0x6e73_6673, "nsfs"),
    (0x4249_4e4d, "binfmt_misc"),
];

/// The name of the pseudo filesystem `file` lives on, or None for any other filesystem.
pub fn pseudo_filesystem(file: &File) -> io::Result<Option<&'static str>> {
    let st = rustix::fs::fstatfs(file)?;
    // The kernel's word is signed on some targets; magic numbers are compared as unsigned
    // 32-bit values, as the kernel defines them.
    let magic = (st.f_type as u64) & 0xffff_ffff;
    Ok(PSEUDO
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| *name))
}

/// When the file `meta` describes was born, in nanoseconds since the epoch; None where the
/// filesystem does not say.
pub fn birth_time_ns(meta: &Metadata) -> Option<u64> {
    let born = meta.created().ok()?;
    let since = born.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

/// [`birth_time_ns`] of the file at `path` (a link itself, not what it leads to).
pub fn birth_time_ns_of(path: &Path) -> io::Result<Option<u64>> {
    Ok(birth_time_ns(&std::fs::symlink_metadata(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_is_a_pseudo_filesystem() {
        let file = File::open("/proc/self/status").expect("procfs is mounted");
        assert_eq!(pseudo_filesystem(&file).expect("fstatfs"), Some("proc"));
    }

    #[test]
    fn files_made_one_after_the_other_are_born_in_that_order() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let first = dir.path().join("first");
        std::fs::write(&first, b"1").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = dir.path().join("second");
        std::fs::write(&second, b"2").expect("write");
        // A late write to the first changes its modification time, not its birth.
        std::fs::write(&first, b"11").expect("write");
        let born = |p: &Path| birth_time_ns_of(p).expect("statx");
        if let (Some(a), Some(b)) = (born(&first), born(&second)) {
            assert!(a < b, "{a} !< {b}");
        }
    }

    #[test]
    fn a_file_of_ours_is_not() {
        let file = tempfile::tempfile().expect("a temporary file");
        assert_eq!(pseudo_filesystem(&file).expect("fstatfs"), None);
    }
}
