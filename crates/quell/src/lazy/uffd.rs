//! A thin wrapper of our own over the Linux `userfaultfd(2)` ioctls.
//!
//! Only what LazyRead needs: the `UFFDIO_API` handshake, `REGISTER` (MISSING mode),
//! `UNREGISTER`, `COPY`, `ZEROPAGE`, `MOVE` (Linux 6.8+), `POISON` (Linux 6.6+) and `WAKE`.
//! The ioctl numbers and structures are defined here from the kernel UAPI header
//! `include/uapi/linux/userfaultfd.h` (the `userfaultfd` crate lacks MOVE and POISON and
//! needs libclang).
//!
//! The range ioctls report progress in their last field (bytes done, or a negated errno).
//! Every wrapper here loops on partial progress and on `EAGAIN`/`EINTR` without progress (a
//! bounded number of times), and reports any other failure as [`UffdError::Op`] with the
//! number of bytes done before it, so that callers can skip a page (`EEXIST`) or fall back to
//! another ioctl (`EBUSY` from `MOVE`) from the exact point of failure.
//!
//! The file descriptor is created with `userfaultfd(2)` first (without `UFFD_USER_MODE_ONLY`,
//! so that kernel accesses such as `write(2)` from the registered range block too), and if
//! that fails (`EPERM` when `vm.unprivileged_userfaultfd = 0` and the caller lacks
//! `CAP_SYS_PTRACE`, `ENOSYS`, seccomp) through `/dev/userfaultfd` and
//! `USERFAULTFD_IOC_NEW`.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use rustix::io::Errno;

// ---------------------------------------------------------------------------------------------
// ioctl number encoding (asm-generic/ioctl.h, and the variants of powerpc, mips and sparc).

#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips32r6",
    target_arch = "mips64",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod ioc {
    pub const NONE: u32 = 1;
    pub const READ: u32 = 2;
    pub const WRITE: u32 = 4;
    pub const SIZEBITS: u32 = 13;
}
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips32r6",
    target_arch = "mips64",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod ioc {
    pub const NONE: u32 = 0;
    pub const READ: u32 = 2;
    pub const WRITE: u32 = 1;
    pub const SIZEBITS: u32 = 14;
}

const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << (16 + ioc::SIZEBITS)) | ((size as u32) << 16) | (ty << 8) | nr
}
const fn iowr<T>(nr: u32) -> u32 {
    ioc(ioc::READ | ioc::WRITE, UFFDIO, nr, std::mem::size_of::<T>())
}
const fn ior<T>(nr: u32) -> u32 {
    ioc(ioc::READ, UFFDIO, nr, std::mem::size_of::<T>())
}

/// The ioctl type byte of userfaultfd (`UFFDIO`, also `USERFAULTFD_IOC`).
const UFFDIO: u32 = 0xAA;
/// `UFFD_API`: the only API version.
pub const UFFD_API: u64 = 0xAA;

const NR_REGISTER: u32 = 0x00;
const NR_UNREGISTER: u32 = 0x01;
const NR_WAKE: u32 = 0x02;
const NR_COPY: u32 = 0x03;
const NR_ZEROPAGE: u32 = 0x04;
const NR_MOVE: u32 = 0x05;
const NR_POISON: u32 = 0x08;
const NR_API: u32 = 0x3F;

/// `USERFAULTFD_IOC_NEW`: `_IO(0xAA, 0x00)` on `/dev/userfaultfd`.
pub const USERFAULTFD_IOC_NEW: u32 = ioc(ioc::NONE, UFFDIO, 0x00, 0);
/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u32 = iowr::<UffdioApi>(NR_API);
/// `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u32 = iowr::<UffdioRegister>(NR_REGISTER);
/// `UFFDIO_UNREGISTER`: `_IOR(0xAA, 0x01, struct uffdio_range)` (sic: `_IOR`).
pub const UFFDIO_UNREGISTER: u32 = ior::<UffdioRange>(NR_UNREGISTER);
/// `UFFDIO_WAKE`: `_IOR(0xAA, 0x02, struct uffdio_range)` (sic: `_IOR`).
pub const UFFDIO_WAKE: u32 = ior::<UffdioRange>(NR_WAKE);
/// `UFFDIO_COPY`: `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
pub const UFFDIO_COPY: u32 = iowr::<UffdioCopy>(NR_COPY);
/// `UFFDIO_ZEROPAGE`: `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
pub const UFFDIO_ZEROPAGE: u32 = iowr::<UffdioZeropage>(NR_ZEROPAGE);
/// `UFFDIO_MOVE`: `_IOWR(0xAA, 0x05, struct uffdio_move)` (Linux 6.8+).
pub const UFFDIO_MOVE: u32 = iowr::<UffdioMove>(NR_MOVE);
/// `UFFDIO_POISON`: `_IOWR(0xAA, 0x08, struct uffdio_poison)` (Linux 6.6+).
pub const UFFDIO_POISON: u32 = iowr::<UffdioPoison>(NR_POISON);

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const REGISTER_MODE_MISSING: u64 = 1 << 0;

/// Bit of `uffdio_register.ioctls` saying `UFFDIO_MOVE` works on the registered range.
pub const RANGE_IOCTL_MOVE: u64 = 1 << NR_MOVE;
/// Bit of `uffdio_register.ioctls` saying `UFFDIO_POISON` works on the registered range.
pub const RANGE_IOCTL_POISON: u64 = 1 << NR_POISON;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    /// Requested API (`UFFD_API`).
    pub api: u64,
    /// In: features to enable. Out: every feature the kernel supports.
    pub features: u64,
    /// Out: the non-range ioctls available.
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    /// Start address (page aligned).
    pub start: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    /// Range to register.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Out: range ioctls available on the range (bit `1 << _UFFDIO_*`).
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    /// Destination (registered, page aligned).
    pub dst: u64,
    /// Source (any readable address, page aligned).
    pub src: u64,
    /// Length (page multiple).
    pub len: u64,
    /// `UFFDIO_COPY_MODE_*`.
    pub mode: u64,
    /// Out: bytes copied, or a negated errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    /// Range to map the zero page into.
    pub range: UffdioRange,
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    pub mode: u64,
    /// Out: bytes mapped, or a negated errno.
    pub zeropage: i64,
}

/// `struct uffdio_move`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioMove {
    /// Destination (registered, page aligned).
    pub dst: u64,
    /// Source (private anonymous, page aligned; its pages leave it).
    pub src: u64,
    /// Length (page multiple).
    pub len: u64,
    /// `UFFDIO_MOVE_MODE_*`.
    pub mode: u64,
    /// Out: bytes moved, or a negated errno.
    pub move_: i64,
}

/// `struct uffdio_poison`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioPoison {
    /// Range to poison.
    pub range: UffdioRange,
    /// `UFFDIO_POISON_MODE_*`.
    pub mode: u64,
    /// Out: bytes poisoned, or a negated errno.
    pub updated: i64,
}

// ---------------------------------------------------------------------------------------------
// Features.

/// A set of `UFFD_FEATURE_*` bits.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Features(pub u64);

impl Features {
    /// `UFFD_FEATURE_MISSING_HUGETLBFS` (reported only; not needed here).
    pub const MISSING_HUGETLBFS: Features = Features(1 << 4);
    /// `UFFD_FEATURE_SIGBUS`.
    pub const SIGBUS: Features = Features(1 << 7);
    /// `UFFD_FEATURE_POISON` (Linux 6.6+): `UFFDIO_POISON`.
    pub const POISON: Features = Features(1 << 14);
    /// `UFFD_FEATURE_MOVE` (Linux 6.8+): `UFFDIO_MOVE`.
    pub const MOVE: Features = Features(1 << 16);

    /// The empty set.
    pub const fn empty() -> Features {
        Features(0)
    }
    /// Whether every bit of `other` is in `self`.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    pub const fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
    /// Intersection.
    pub const fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features({:#x}", self.0)?;
        if self.contains(Features::POISON) {
            f.write_str(" POISON")?;
        }
        if self.contains(Features::MOVE) {
            f.write_str(" MOVE")?;
        }
        f.write_str(")")
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Which userfaultfd operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `UFFDIO_API`.
    Api,
    /// `UFFDIO_REGISTER`.
    Register,
    /// `UFFDIO_UNREGISTER`.
    Unregister,
    /// `UFFDIO_WAKE`.
    Wake,
    /// `UFFDIO_COPY`.
    Copy,
    /// `UFFDIO_ZEROPAGE`.
    ZeroPage,
    /// `UFFDIO_MOVE`.
    Move,
    /// `UFFDIO_POISON`.
    Poison,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Api => "UFFDIO_API",
            Op::Register => "UFFDIO_REGISTER",
            Op::Unregister => "UFFDIO_UNREGISTER",
            Op::Wake => "UFFDIO_WAKE",
            Op::Copy => "UFFDIO_COPY",
            Op::ZeroPage => "UFFDIO_ZEROPAGE",
            Op::Move => "UFFDIO_MOVE",
            Op::Poison => "UFFDIO_POISON",
        })
    }
}

/// How the userfaultfd file descriptor was obtained.
///
/// ```
/// if let Some(src) = quell::lazy::availability().source {
///     println!("userfaultfd via {src:?}");
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdSource {
    /// The `userfaultfd(2)` system call.
    Syscall,
    /// `open("/dev/userfaultfd")` + `USERFAULTFD_IOC_NEW`.
    DevNode,
}

/// An error of the userfaultfd layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UffdError {
    /// Neither `userfaultfd(2)` nor `/dev/userfaultfd` gave a file descriptor.
    #[error("userfaultfd unavailable: userfaultfd(2): {syscall}; /dev/userfaultfd: {dev}")]
    Unavailable {
        /// Why the system call failed.
        syscall: Errno,
        /// Why `/dev/userfaultfd` failed.
        dev: Errno,
    },
    /// A requested feature is not supported by this kernel.
    #[error("userfaultfd features {missing:?} not supported by this kernel")]
    MissingFeatures {
        /// The features asked for that the kernel does not offer.
        missing: Features,
    },
    /// An ioctl failed. `done` bytes of `len` were processed before the failure.
    #[error("{op} failed after {done} of {len} bytes: {errno}")]
    Op {
        /// The ioctl.
        op: Op,
        /// Bytes processed (copied, moved, ...) before the failure.
        done: usize,
        /// Bytes asked for.
        len: usize,
        /// The error.
        errno: Errno,
    },
}

impl UffdError {
    /// The errno of an [`UffdError::Op`] failure.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            UffdError::Op { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probing.

/// What this kernel and process offer, from a throw-away userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeInfo {
    /// How a descriptor could be obtained.
    pub source: UffdSource,
    /// Every feature the kernel reported in the `UFFDIO_API` answer.
    pub available: Features,
}

fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn open_raw() -> Result<(OwnedFd, UffdSource), UffdError> {
    use rustix::mm::UserfaultfdFlags;
    // SAFETY: userfaultfd(2) creates a new descriptor; no memory is touched. Without
    // UFFD_USER_MODE_ONLY kernel-mode faults on registered ranges block as user ones do,
    // which is what LazyRead wants (and what makes the syscall need CAP_SYS_PTRACE when
    // vm.unprivileged_userfaultfd is 0).
    let syscall =
        unsafe { rustix::mm::userfaultfd(UserfaultfdFlags::CLOEXEC | UserfaultfdFlags::NONBLOCK) };
    let syscall_err = match syscall {
        Ok(fd) => return Ok((fd, UffdSource::Syscall)),
        Err(e) => e,
    };
    match open_dev_node() {
        Ok(fd) => Ok((fd, UffdSource::DevNode)),
        Err(dev) => Err(UffdError::Unavailable {
            syscall: syscall_err,
            dev,
        }),
    }
}

/// Open a userfaultfd through `/dev/userfaultfd` and `USERFAULTFD_IOC_NEW` (close-on-exec,
/// non-blocking, kernel faults included). The handshake is left to the caller.
pub fn open_dev_node() -> Result<OwnedFd, Errno> {
    let dev = rustix::fs::open(
        "/dev/userfaultfd",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let dev = dev?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_ulong;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new descriptor
    // (or -1); `dev` is a valid open descriptor for the duration of the call.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn api(fd: BorrowedFd<'_>, want: Features) -> Result<UffdioApi, Errno> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features: want.0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes exactly one `struct uffdio_api`, which `a` is
    // (repr(C), three u64), alive and exclusively borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut a as *mut UffdioApi) };
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(a)
    }
}

/// Probe once per process: can a userfaultfd be created, and which features does the kernel
/// offer? The result is cached.
pub fn probe() -> Result<ProbeInfo, UffdError> {
    static PROBE: OnceLock<Result<ProbeInfo, UffdError>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let (fd, source) = open_raw()?;
            let a = api(fd.as_fd(), Features::empty()).map_err(|errno| UffdError::Op {
                op: Op::Api,
                done: 0,
                len: 0,
                errno,
            })?;
            Ok(ProbeInfo {
                source,
                available: Features(a.features),
            })
        })
        .clone()
}

// ---------------------------------------------------------------------------------------------
// The descriptor.

/// How many times an ioctl that made no progress and answered `EAGAIN`/`EINTR` is retried
/// before giving up.
const MAX_NO_PROGRESS_RETRIES: u32 = 10_000;

/// An open userfaultfd with a completed `UFFDIO_API` handshake.
///
/// The range operations are `unsafe`: they map pages into (or out of) the address space, so
/// the caller must own the ranges it names.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    source: UffdSource,
    enabled: Features,
}

impl Uffd {
    /// Open a userfaultfd (system call first, then `/dev/userfaultfd`) and enable the
    /// features of `want` that the kernel offers. `require` must be a subset of `want`:
    /// if the kernel lacks any of `require`, this fails with [`UffdError::MissingFeatures`].
    pub fn open(want: Features, require: Features) -> Result<Uffd, UffdError> {
        let info = probe()?;
        let missing = Features(require.0 & !info.available.0);
        if missing.0 != 0 {
            return Err(UffdError::MissingFeatures { missing });
        }
        let enable = want.union(require).intersection(info.available);
        let (fd, source) = open_raw()?;
        api(fd.as_fd(), enable).map_err(|errno| UffdError::Op {
            op: Op::Api,
            done: 0,
            len: 0,
            errno,
        })?;
        Ok(Uffd {
            fd,
            source,
            enabled: enable,
        })
    }

    /// The features enabled on this descriptor.
    pub fn enabled(&self) -> Features {
        self.enabled
    }

    /// How the descriptor was obtained.
    pub fn source(&self) -> UffdSource {
        self.source
    }

    fn ioctl<T>(&self, req: u32, arg: &mut T) -> Result<(), Errno> {
        // SAFETY: every request number used with this helper is paired (by the callers in this
        // module) with the `repr(C)` structure the kernel expects for it; `arg` is alive and
        // exclusively borrowed for the duration of the call. Effects on the address space
        // are the callers' responsibility (their own `unsafe` contracts).
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut T) };
        if rc < 0 {
            Err(last_errno())
        } else {
            Ok(())
        }
    }

    /// Register `[start, start + len)` in MISSING mode. Returns the range ioctls the kernel
    /// allows on it (`RANGE_IOCTL_*` bits).
    ///
    /// # Safety
    /// The range must be page aligned, mapped anonymous memory owned by the caller. After
    /// this, touching a page of it that is not populated blocks the toucher until a range
    /// ioctl populates it (or the range is unregistered, or this descriptor is closed).
    pub unsafe fn register_missing(&self, start: *mut u8, len: usize) -> Result<u64, UffdError> {
        let mut r = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_REGISTER, &mut r)
            .map_err(|errno| UffdError::Op {
                op: Op::Register,
                done: 0,
                len,
                errno,
            })?;
        Ok(r.ioctls)
    }

    /// Unregister `[start, start + len)`. Threads blocked on it are woken and fault normally.
    ///
    /// # Safety
    /// The range must be owned by the caller (its pages will now fault in as zero pages).
    pub unsafe fn unregister(&self, start: *mut u8, len: usize) -> Result<(), UffdError> {
        let mut r = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        self.ioctl(UFFDIO_UNREGISTER, &mut r)
            .map_err(|errno| UffdError::Op {
                op: Op::Unregister,
                done: 0,
                len,
                errno,
            })
    }

    /// Wake the threads blocked on faults in `[start, start + len)` (they retry the fault).
    pub fn wake(&self, start: *mut u8, len: usize) -> Result<(), UffdError> {
        let mut r = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // Waking has no effect on memory contents; it only makes faulting threads retry.
        self.ioctl(UFFDIO_WAKE, &mut r)
            .map_err(|errno| UffdError::Op {
                op: Op::Wake,
                done: 0,
                len,
                errno,
            })
    }

    /// Drive one range ioctl to completion: `step(done)` issues the ioctl for the remaining
    /// bytes starting at offset `done` and returns (its result, the progress field).
    fn drive(
        op: Op,
        len: usize,
        mut step: impl FnMut(usize) -> (Result<(), Errno>, i64),
    ) -> Result<(), UffdError> {
        let mut done = 0usize;
        let mut idle = 0u32;
        while done < len {
            let (rc, progress) = step(done);
            match rc {
                Ok(()) => {
                    // Full success: the progress field equals the remaining length.
                    done = len;
                }
                Err(errno) => {
                    if progress > 0 {
                        // Partial progress (the kernel answers EAGAIN): continue after it.
                        done += progress as usize;
                        idle = 0;
                        continue;
                    }
                    if (errno == Errno::AGAIN || errno == Errno::INTR)
                        && idle < MAX_NO_PROGRESS_RETRIES
                    {
                        // mmap_changing (a concurrent fork/mremap/... on a context with
                        // events enabled) or a fatal-signal check: retry.
                        idle += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    return Err(UffdError::Op {
                        op,
                        done,
                        len,
                        errno,
                    });
                }
            }
        }
        Ok(())
    }

    /// `UFFDIO_COPY` `len` bytes from `src` to `dst`, waking the threads blocked there.
    ///
    /// # Safety
    /// `dst..dst+len` must lie in a range registered on this descriptor and owned by the caller;
    /// `src..src+len` must be readable. Both page aligned, `len` a page multiple.
    pub unsafe fn copy(&self, dst: *mut u8, src: *const u8, len: usize) -> Result<(), UffdError> {
        Self::drive(Op::Copy, len, |done| {
            let mut c = UffdioCopy {
                dst: dst as u64 + done as u64,
                src: src as u64 + done as u64,
                len: (len - done) as u64,
                mode: 0,
                copy: 0,
            };
            let rc = self.ioctl(UFFDIO_COPY, &mut c);
            (rc, c.copy)
        })
    }

    /// `UFFDIO_ZEROPAGE` over `[dst, dst + len)`, waking the threads blocked there.
    ///
    /// # Safety
    /// As for [`Uffd::copy`] (destination side).
    pub unsafe fn zeropage(&self, dst: *mut u8, len: usize) -> Result<(), UffdError> {
        Self::drive(Op::ZeroPage, len, |done| {
            let mut z = UffdioZeropage {
                range: UffdioRange {
                    start: dst as u64 + done as u64,
                    len: (len - done) as u64,
                },
                mode: 0,
                zeropage: 0,
            };
            let rc = self.ioctl(UFFDIO_ZEROPAGE, &mut z);
            (rc, z.zeropage)
        })
    }

    /// `UFFDIO_MOVE` `len` bytes of pages from `src` to `dst` (zero copy), waking the threads
    /// blocked there. The source range is left unpopulated (still mapped).
    ///
    /// Fails with `EBUSY` when a source page is not exclusively owned (shared after fork,
    /// pinned by DMA or a registered io_uring buffer, in swap cache), `ENOENT` on a source
    /// hole, `EEXIST` when a destination page is populated, `EINVAL` when the VMAs are not
    /// compatible. `done` in the error says how far it got.
    ///
    /// # Safety
    /// As for [`Uffd::copy`], and `src..src+len` must be private anonymous memory owned by the
    /// caller with no live references into it (its pages vanish).
    pub unsafe fn move_pages(
        &self,
        dst: *mut u8,
        src: *mut u8,
        len: usize,
    ) -> Result<(), UffdError> {
        Self::drive(Op::Move, len, |done| {
            let mut m = UffdioMove {
                dst: dst as u64 + done as u64,
                src: src as u64 + done as u64,
                len: (len - done) as u64,
                mode: 0,
                move_: 0,
            };
            let rc = self.ioctl(UFFDIO_MOVE, &mut m);
            (rc, m.move_)
        })
    }

    /// `UFFDIO_POISON` over `[dst, dst + len)`: touching those pages raises `SIGBUS`. Wakes
    /// the threads blocked there (they retry and get the `SIGBUS`).
    ///
    /// # Safety
    /// As for [`Uffd::copy`] (destination side).
    pub unsafe fn poison(&self, dst: *mut u8, len: usize) -> Result<(), UffdError> {
        Self::drive(Op::Poison, len, |done| {
            let mut p = UffdioPoison {
                range: UffdioRange {
                    start: dst as u64 + done as u64,
                    len: (len - done) as u64,
                },
                mode: 0,
                updated: 0,
            };
            let rc = self.ioctl(UFFDIO_POISON, &mut p);
            (rc, p.updated)
        })
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn ioctl_numbers_match_the_kernel_header() {
        // Values computed by the C preprocessor from include/uapi/linux/userfaultfd.h.
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(UFFDIO_MOVE, 0xc028_aa05);
        assert_eq!(UFFDIO_POISON, 0xc020_aa08);
    }

    #[test]
    fn dev_node_path_works() {
        match open_dev_node() {
            Ok(fd) => {
                let a = api(fd.as_fd(), Features::MOVE.union(Features::POISON));
                // Kernels without MOVE/POISON answer EINVAL; anything else is a bug here.
                match a {
                    Ok(a) => assert!(Features(a.features).contains(Features::MOVE)),
                    Err(e) => assert_eq!(e, Errno::INVAL),
                }
            }
            Err(e) => eprintln!("/dev/userfaultfd unavailable here: {e}"),
        }
    }

    #[test]
    fn probe_and_open() {
        match probe() {
            Ok(info) => {
                eprintln!("userfaultfd: {info:?}");
                let u = Uffd::open(Features::MOVE.union(Features::POISON), Features::empty())
                    .expect("open after a successful probe");
                assert!(info.available.contains(u.enabled()));
            }
            Err(e) => eprintln!("userfaultfd unavailable here: {e}"),
        }
    }
}
