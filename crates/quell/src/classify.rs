//! Classifies descriptors by how operations on them can be canceled (contract item I5).
//!
//! Classification costs an `fstat` + `fstatfs` (+ `fcntl`), so results are cached per
//! descriptor number. quell's own `close`, `openat` and `accept` invalidate the entry
//! for their descriptor. A number closed behind the ring's back and reused for a
//! different kind of file leaves a stale entry; the one decision a stale entry could
//! make wrongly for good — detaching an op at its deadline as if it were device I/O —
//! asks the kernel again first (`ring::identity`, I12). [`Ring::forget_fd`] drops an
//! entry at once.
//!
//! [`Ring::forget_fd`]: crate::Ring::forget_fd

use crate::outcome::CancelClass;
use std::os::fd::RawFd;

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const NFS_SUPER_MAGIC: i64 = 0x6969;
const SMB2_MAGIC_NUMBER: i64 = 0xfe53_4d42;
const CIFS_MAGIC_NUMBER: i64 = 0xff53_4d42;
const CEPH_SUPER_MAGIC: i64 = 0x00c3_6400;
/// 9P (virtio-9p and WSL2's host shares, QEMU's virtfs).
const V9FS_MAGIC: i64 = 0x0102_1997;
const LUSTRE_SUPER_MAGIC: i64 = 0x0bd0_0bd0;
/// IBM Spectrum Scale (GPFS).
const GPFS_SUPER_MAGIC: i64 = 0x4750_4653;
/// OpenAFS.
const AFS_SUPER_MAGIC: i64 = 0x5346_414f;
/// The kernel's own AFS client (kAFS).
const KAFS_MAGIC: i64 = 0x6b41_4653;
const CODA_SUPER_MAGIC: i64 = 0x7375_7245;
const ORANGEFS_SUPER_MAGIC: i64 = 0x2003_0528;

/// What quell knows about a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdInfo {
    pub(crate) class: CancelClass,
    /// Opened with `O_DIRECT`: transfers must be aligned.
    pub(crate) direct: bool,
    /// Required memory alignment for direct I/O (0: unknown or not direct).
    pub(crate) dio_mem_align: u32,
    /// Required offset/length alignment for direct I/O.
    pub(crate) dio_offset_align: u32,
    /// A pipe, FIFO or socket: no file position, so a positioned transfer is an error
    /// (`ESPIPE` from `pread(2)`; io_uring would silently ignore the offset).
    pub(crate) stream: bool,
}

/// Looks a descriptor up in the kernel. `Err(errno)` when it is not open.
pub(crate) fn probe_fd(fd: RawFd) -> Result<FdInfo, i32> {
    if fd < 0 {
        return Err(libc::EBADF);
    }
    // SAFETY: zeroed stat is valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(errno());
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let class = match fmt {
        libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR => CancelClass::Prompt,
        // Anonymous inodes (eventfd, timerfd, signalfd, userfaultfd) have no type bits.
        0 => CancelClass::Prompt,
        libc::S_IFBLK => CancelClass::Bounded,
        _ => {
            // SAFETY: zeroed statfs is valid; fstatfs writes into it.
            let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: sf is a valid out-pointer.
            if unsafe { libc::fstatfs(fd, &mut sf) } == 0 {
                class_of_fs(sf.f_type as i64)
            } else {
                CancelClass::Bounded
            }
        }
    };
    // SAFETY: F_GETFL takes no pointer.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let direct = fl >= 0 && fl & libc::O_DIRECT != 0;
    let (mut mem, mut off) = (0u32, 0u32);
    if direct {
        let (m, o) = dio_alignment(fd);
        mem = m;
        off = o;
    }
    Ok(FdInfo {
        class,
        direct,
        dio_mem_align: mem,
        dio_offset_align: off,
        stream: matches!(fmt, libc::S_IFIFO | libc::S_IFSOCK),
    })
}

/// The class of a regular file on the file system with magic number `magic`
/// (`statfs`'s `f_type`): network, cluster and FUSE file systems, whose I/O waits for a
/// server that may never answer, are Interruptible.
pub(crate) fn class_of_fs(magic: i64) -> CancelClass {
    match magic {
        FUSE_SUPER_MAGIC | NFS_SUPER_MAGIC | SMB2_MAGIC_NUMBER | CIFS_MAGIC_NUMBER
        | CEPH_SUPER_MAGIC | V9FS_MAGIC | LUSTRE_SUPER_MAGIC | GPFS_SUPER_MAGIC
        | AFS_SUPER_MAGIC | KAFS_MAGIC | CODA_SUPER_MAGIC | ORANGEFS_SUPER_MAGIC => {
            CancelClass::Interruptible
        }
        _ => CancelClass::Bounded,
    }
}

/// Direct-I/O alignment from `statx(STATX_DIOALIGN)`, 512 bytes where the kernel does not say.
fn dio_alignment(fd: RawFd) -> (u32, u32) {
    // SAFETY: zeroed statx is valid; statx writes into it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: valid path and out-pointer; AT_EMPTY_PATH stats fd itself.
    let rc = unsafe {
        libc::statx(
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_mem_align != 0 {
        (stx.stx_dio_mem_align, stx.stx_dio_offset_align)
    } else {
        (512, 512)
    }
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Per-ring cache of descriptor classifications, indexed by descriptor number.
#[derive(Default)]
pub(crate) struct FdCache {
    entries: Vec<Option<FdInfo>>,
}

/// Descriptors above this are classified every time rather than cached.
const CACHE_LIMIT: usize = 1 << 20;

impl FdCache {
    /// Classifies `fd`, from the cache when possible.
    #[inline]
    pub(crate) fn info(&mut self, fd: RawFd) -> Result<FdInfo, i32> {
        if fd < 0 {
            return Err(libc::EBADF);
        }
        let i = fd as usize;
        if let Some(Some(info)) = self.entries.get(i) {
            return Ok(*info);
        }
        let info = probe_fd(fd)?;
        if i < CACHE_LIMIT {
            if self.entries.len() <= i {
                self.entries.resize(i + 1, None);
            }
            self.entries[i] = Some(info);
        }
        Ok(info)
    }

    /// Asks the kernel again what `fd` is, and remembers it.
    pub(crate) fn refresh(&mut self, fd: RawFd) -> Result<FdInfo, i32> {
        let info = probe_fd(fd)?;
        self.store(fd, info);
        Ok(info)
    }

    /// What is cached for `fd`, without asking the kernel.
    #[inline]
    pub(crate) fn cached(&self, fd: RawFd) -> Option<FdInfo> {
        self.entries.get(fd.max(0) as usize).copied().flatten()
    }

    /// Records what the kernel just said `fd` is (a re-validation found the cache stale).
    pub(crate) fn store(&mut self, fd: RawFd, info: FdInfo) {
        if fd >= 0 && (fd as usize) < CACHE_LIMIT {
            let i = fd as usize;
            if self.entries.len() <= i {
                self.entries.resize(i + 1, None);
            }
            self.entries[i] = Some(info);
        }
    }

    /// Forgets what is known about `fd` (it was closed, or reused).
    #[inline]
    pub(crate) fn forget(&mut self, fd: RawFd) {
        if let Some(e) = self.entries.get_mut(fd.max(0) as usize) {
            *e = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn classifies_common_descriptors() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(probe_fd(r.as_raw_fd()).unwrap().class, CancelClass::Prompt);
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(probe_fd(f.as_raw_fd()).unwrap().class, CancelClass::Bounded);
        let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        assert_eq!(probe_fd(ev.as_raw_fd()).unwrap().class, CancelClass::Prompt);
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(probe_fd(s.as_raw_fd()).unwrap().class, CancelClass::Prompt);
        assert_eq!(probe_fd(-1), Err(libc::EBADF));
        // Network and cluster file systems wait on servers: interruptible.
        for magic in [
            FUSE_SUPER_MAGIC,
            NFS_SUPER_MAGIC,
            V9FS_MAGIC,
            LUSTRE_SUPER_MAGIC,
            GPFS_SUPER_MAGIC,
            AFS_SUPER_MAGIC,
            KAFS_MAGIC,
        ] {
            assert_eq!(class_of_fs(magic), CancelClass::Interruptible, "{magic:#x}");
        }
        assert_eq!(class_of_fs(0xef53), CancelClass::Bounded); // ext4
        assert_eq!(class_of_fs(0x0102_1994), CancelClass::Bounded); // tmpfs
        assert_eq!(probe_fd(1_000_000), Err(libc::EBADF));
    }
}
