//! Which files live on a pseudo filesystem: procfs, sysfs and their kin report sizes that are
//! not their content's (0, or a page), make up their content at each read, and never grow the
//! way a log does, so a follower that trusts their sizes spins or stores the same content over
//! and over. The kernel names a file's filesystem by the magic number `fstatfs` returns.

use std::fs::File;
use std::io;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_is_a_pseudo_filesystem() {
        let file = File::open("/proc/self/status").expect("procfs is mounted");
        assert_eq!(pseudo_filesystem(&file).expect("fstatfs"), Some("proc"));
    }

    #[test]
    fn a_file_of_ours_is_not() {
        let file = tempfile::tempfile().expect("a temporary file");
        assert_eq!(pseudo_filesystem(&file).expect("fstatfs"), None);
    }
}
