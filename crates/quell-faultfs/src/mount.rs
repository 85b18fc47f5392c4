//! Mount plumbing: finding `fusermount`, reading `/proc/self/mountinfo`, fusectl, unmounting.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// Where fusectl lives.
pub(crate) const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

const FUSERMOUNT_CANDIDATES: &[&str] = &[
    "/usr/bin/fusermount",
    "/bin/fusermount",
    "/usr/bin/fusermount3",
    "/bin/fusermount3",
    "/usr/local/bin/fusermount",
    "/usr/local/bin/fusermount3",
];

/// Find a `fusermount` helper. polyfuse defaults to `/usr/bin/fusermount`; Debian's `fuse3`
/// ships `/usr/bin/fusermount3` plus a `fusermount` symlink, other distributions only the `3`.
pub(crate) fn find_fusermount() -> Result<PathBuf, Error> {
    for c in FUSERMOUNT_CANDIDATES {
        let p = Path::new(c);
        if p.is_file() {
            return Ok(p.to_owned());
        }
    }
    Err(Error::FusermountMissing {
        looked: FUSERMOUNT_CANDIDATES.iter().map(PathBuf::from).collect(),
    })
}

/// Check that `/dev/fuse` can be opened, so the user gets a clear error instead of
/// polyfuse's "too short control message length".
pub(crate) fn check_dev_fuse() -> Result<(), Error> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(Error::DevFuse)
}

/// One line of `/proc/self/mountinfo`, the parts we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) mountpoint: PathBuf,
    pub(crate) fstype: String,
}

impl MountEntry {
    /// The fusectl directory name: the superblock's kernel `dev_t` (`MKDEV(major, minor)`).
    pub(crate) fn fuse_conn_id(&self) -> u64 {
        (u64::from(self.major) << 20) | u64::from(self.minor)
    }
}

fn unescape_mountinfo(s: &str) -> String {
    // The kernel escapes ' ', '\t', '\n' and '\\' as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut v = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(_id), Some(_parent), Some(devno), Some(_root), Some(mp)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        // Optional fields end with a lone "-", then fstype.
        let mut rest = parts.skip_while(|p| *p != "-");
        rest.next();
        let Some(fstype) = rest.next() else { continue };
        let Some((maj, min)) = devno.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        v.push(MountEntry {
            major,
            minor,
            mountpoint: PathBuf::from(unescape_mountinfo(mp)),
            fstype: fstype.to_owned(),
        });
    }
    v
}

fn mountinfo() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// The topmost FUSE mount at `mountpoint` (canonical path), if any.
pub(crate) fn find_fuse_mount(mountpoint: &Path) -> Option<MountEntry> {
    mountinfo()
        .into_iter()
        .rev()
        .find(|e| e.mountpoint == mountpoint && e.fstype.starts_with("fuse"))
}

/// Whether anything at all is mounted at `mountpoint` (canonical path).
pub(crate) fn is_mounted(mountpoint: &Path) -> bool {
    mountinfo().iter().any(|e| e.mountpoint == mountpoint)
}

/// Make sure fusectl is mounted; mount it if we can (root). Returns a description of the
/// problem if it is not available.
pub(crate) fn ensure_fusectl() -> Result<(), String> {
    let dir = Path::new(FUSECTL_DIR);
    if mountinfo()
        .iter()
        .any(|e| e.fstype == "fusectl" && e.mountpoint == dir)
    {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(format!(
            "{FUSECTL_DIR} does not exist (sysfs not mounted or fuse module not loaded)"
        ));
    }
    match rustix::mount::mount(
        "none",
        dir,
        "fusectl",
        rustix::mount::MountFlags::empty(),
        None,
    ) {
        Ok(()) => Ok(()),
        // Someone else mounted it concurrently.
        Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(format!(
            "fusectl is not mounted at {FUSECTL_DIR} and mounting it failed ({e}); \
             run `mount -t fusectl none {FUSECTL_DIR}` as root"
        )),
    }
}

/// Abort a FUSE connection through fusectl: every pending and future request fails
/// (`ECONNABORTED` / `ENOTCONN`), and the daemon's reads of `/dev/fuse` return `ENODEV`.
pub(crate) fn abort_connection(conn_id: u64) -> Result<(), String> {
    let path = Path::new(FUSECTL_DIR)
        .join(conn_id.to_string())
        .join("abort");
    let res = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"1"));
    match res {
        Ok(()) => Ok(()),
        // The connection is already gone: nothing left to abort.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("writing {}: {e}", path.display())),
    }
}

/// Detach the mount at `mountpoint`; falls back to `fusermount -u -z` when not privileged.
pub(crate) fn unmount_lazy(mountpoint: &Path, fusermount: &Path) -> Result<(), String> {
    match rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()), // not mounted
        Err(e) => {
            let st = Command::new(fusermount)
                .args(["-u", "-z", "-q", "--"])
                .arg(mountpoint)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match st {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("umount2 failed ({e}); fusermount -u -z exited {s}")),
                Err(e2) => Err(format!("umount2 failed ({e}); running fusermount: {e2}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let text = "36 35 98:36 /mnt1 /mnt/with\\040space rw,noatime master:1 - fuse.faultfs quell-faultfs rw\n\
                    37 35 0:61 / /tmp/x rw - fuse quell-faultfs rw,user_id=0\n\
                    garbage\n";
        let v = parse_mountinfo(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(v[0].fstype, "fuse.faultfs");
        assert_eq!(v[0].fuse_conn_id(), (98 << 20) | 36);
        assert_eq!(v[1].fuse_conn_id(), 61);
    }
}
