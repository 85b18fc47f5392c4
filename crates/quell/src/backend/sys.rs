//! Plain system calls for the portable backend and the thread pool: the blocking form of
//! every op (run on a pool worker) and the non-blocking attempts the portable backend
//! makes on the ring's own thread.
//!
//! Every function returns what the kernel returned: a non-negative result or `-errno`,
//! exactly as an io_uring CQE would carry it.

use crate::op::{OpKind, RawOp, NO_OFFSET};
use std::os::fd::RawFd;

/// `-errno` of the last failed call.
#[inline]
pub(crate) fn neg_errno() -> i64 {
    -(std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO) as i64)
}

#[inline]
fn ret(r: isize) -> i64 {
    if r < 0 {
        neg_errno()
    } else {
        r as i64
    }
}

#[inline]
fn ret32(r: libc::c_int) -> i64 {
    ret(r as isize)
}

const EINVAL: i64 = -(libc::EINVAL as i64);

/// The lowest number quell's private duplicates of a descriptor take: never a standard
/// stream's (a program that closes stdin and opens `/dev/null` expects to get 0 back).
pub(crate) const DUP_MIN: RawFd = 3;

/// The offset argument of `preadv2`/`pwritev2`: -1 means "the current position".
/// `None` for an offset a file cannot have (above `i64::MAX`): the call is answered
/// `EINVAL`, as the kernel answers io_uring, never clamped onto another position.
#[inline]
fn off(o: u64) -> Option<libc::off_t> {
    if o == NO_OFFSET {
        Some(-1)
    } else {
        libc::off_t::try_from(o).ok()
    }
}

/// A file offset or length argument (`fallocate`, `splice`): `None` above `i64::MAX`.
#[inline]
fn loff(o: u64) -> Option<libc::loff_t> {
    libc::loff_t::try_from(o).ok()
}

/// The iovec array a transfer op describes: one entry built on the stack for
/// `Read`/`Write`, the op's own array for `Readv`/`Writev`, or `over` when given (the
/// rest of a transfer that was partly done inline).
#[inline]
fn iovecs<'a>(
    r: &RawOp,
    one: &'a mut libc::iovec,
    over: Option<&'a [libc::iovec]>,
) -> (*const libc::iovec, libc::c_int) {
    if let Some(v) = over {
        return (v.as_ptr(), v.len() as libc::c_int);
    }
    match r.kind {
        OpKind::Readv | OpKind::Writev => (r.ptr as *const libc::iovec, r.len as libc::c_int),
        _ => {
            *one = libc::iovec {
                iov_base: r.ptr.cast(),
                iov_len: r.len as usize,
            };
            (one as *const libc::iovec, 1)
        }
    }
}

/// `preadv2`/`pwritev2` of a transfer op (`Read`, `Write`, `Readv`, `Writev`) with `flags`.
///
/// # Safety
/// `r`'s pointers (and `over`'s) must describe memory that stays valid and unaliased
/// for the duration of the call (the ring's op table guarantees it for a live op).
pub(crate) unsafe fn rw(r: &RawOp, over: Option<&[libc::iovec]>, flags: libc::c_int) -> i64 {
    let mut one = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let (iov, n) = iovecs(r, &mut one, over);
    let write = matches!(r.kind, OpKind::Write | OpKind::Writev);
    let Some(pos) = off(r.offset) else {
        return EINVAL;
    };
    // SAFETY: iov points to `n` valid iovecs describing live memory (caller's contract).
    ret(unsafe {
        if write {
            libc::pwritev2(r.fd, iov, n, pos, flags)
        } else {
            libc::preadv2(r.fd, iov, n, pos, flags)
        }
    })
}

/// `recvmsg`/`sendmsg` of a transfer op on a socket, with `flags` (e.g. `MSG_DONTWAIT`).
///
/// # Safety
/// As [`rw`].
pub(crate) unsafe fn sockmsg(r: &RawOp, flags: libc::c_int) -> i64 {
    let mut one = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let (iov, n) = iovecs(r, &mut one, None);
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov as *mut libc::iovec;
    msg.msg_iovlen = n as _;
    let write = matches!(r.kind, OpKind::Write | OpKind::Writev | OpKind::Send);
    // SAFETY: msg describes valid iovecs (caller's contract).
    ret(unsafe {
        if write {
            libc::sendmsg(r.fd, &msg, flags | libc::MSG_NOSIGNAL)
        } else {
            libc::recvmsg(r.fd, &mut msg, flags)
        }
    })
}

/// `send`/`recv` of a `Send`/`Recv` op with extra `flags`.
///
/// # Safety
/// As [`rw`].
pub(crate) unsafe fn sendrecv(r: &RawOp, extra: libc::c_int) -> i64 {
    let flags = r.flags as libc::c_int | extra;
    // SAFETY: ptr/len describe the op's live buffer (caller's contract).
    ret(unsafe {
        if r.kind == OpKind::Send {
            libc::send(r.fd, r.ptr.cast(), r.len as usize, flags)
        } else {
            libc::recv(r.fd, r.ptr.cast(), r.len as usize, flags)
        }
    })
}

/// `poll(2)` of one descriptor for the op's interest; returns the events seen (0: none).
pub(crate) fn poll_once(fd: RawFd, events: u32, timeout_ms: libc::c_int) -> i64 {
    let mut p = libc::pollfd {
        fd,
        events: events as libc::c_short,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        neg_errno()
    } else if r == 0 {
        0
    } else if p.revents & libc::POLLNVAL != 0 {
        -(libc::EBADF as i64)
    } else {
        p.revents as u16 as i64
    }
}

/// Whether `fd` has `O_NONBLOCK` set (so a plain call on it never blocks).
pub(crate) fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL takes no pointer.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// The pending error of a socket whose non-blocking `connect` finished (`SO_ERROR`).
pub(crate) fn connect_result(fd: RawFd) -> i64 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err/len are valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        neg_errno()
    } else {
        -(err as i64)
    }
}

/// What file a descriptor number names, read without blocking (cached attributes only:
/// `AT_STATX_DONT_SYNC`, so a hung FUSE daemon or NFS server is never asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `S_IFMT` bits of the mode (0 for anonymous inodes: eventfd, timerfd, ...).
    pub(crate) kind: u32,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl Identity {
    /// Whether the file is an object a duplicate descriptor can safely keep open: a
    /// pipe, socket, character device or anonymous inode. Files, directories and block
    /// devices are not, because closing any descriptor of a file drops the process's
    /// POSIX record locks on it.
    pub(crate) fn is_stream(&self) -> bool {
        !matches!(
            self.kind,
            libc::S_IFREG | libc::S_IFDIR | libc::S_IFBLK | libc::S_IFLNK
        )
    }
}

/// The identity of the file `fd` names now; `None` if it names none (or `statx` is
/// unavailable).
pub(crate) fn identity(fd: RawFd) -> Option<Identity> {
    use rustix::fs::{AtFlags, StatxFlags};
    if fd < 0 {
        return None;
    }
    // SAFETY: the number is only read by statx for the call's duration; a closed or
    // reused number yields an error or another file's identity, never memory unsafety.
    let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
    let st = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE | StatxFlags::INO,
    )
    .ok()?;
    Some(Identity {
        kind: st.stx_mode as u32 & libc::S_IFMT,
        dev: (st.stx_dev_major as u64) << 32 | st.stx_dev_minor as u64,
        ino: st.stx_ino,
    })
}

/// Whether `pos` is at or past the end of regular file `fd`.
pub(crate) fn at_eof(fd: RawFd, pos: u64) -> bool {
    // SAFETY: zeroed stat is valid; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    unsafe { libc::fstat(fd, &mut st) == 0 && st.st_size >= 0 && pos >= st.st_size as u64 }
}

/// Runs `r` to its end with plain blocking system calls (on a pool worker).
///
/// # Safety
/// Every pointer in `r` (and `over`) must stay valid for the whole call: the ring keeps
/// an op's memory until its result is reaped.
pub(crate) unsafe fn blocking(r: &RawOp, over: Option<&[libc::iovec]>) -> i64 {
    let fd = r.fd;
    // SAFETY (for every call below): the pointers come from the op's payload, which the
    // ring keeps alive and unaliased until this op's result is reaped (caller's contract).
    unsafe {
        match r.kind {
            OpKind::Nop => 0,
            OpKind::Read | OpKind::Write | OpKind::Readv | OpKind::Writev => rw(r, over, 0),
            OpKind::OpenAt => ret32(libc::openat(
                fd,
                r.ptr as *const libc::c_char,
                r.flags as libc::c_int,
                r.aux as libc::c_uint,
            )),
            OpKind::Close => ret32(libc::close(fd)),
            OpKind::Statx => ret32(libc::statx(
                fd,
                r.ptr as *const libc::c_char,
                r.flags as libc::c_int,
                r.aux as libc::c_uint,
                r.ptr2.cast(),
            )),
            OpKind::Fsync => {
                if r.flags & 1 != 0 {
                    ret32(libc::fdatasync(fd))
                } else {
                    ret32(libc::fsync(fd))
                }
            }
            OpKind::Fallocate => match (loff(r.offset), loff(r.aux)) {
                (Some(o), Some(len)) => ret32(libc::fallocate(fd, r.flags as libc::c_int, o, len)),
                _ => EINVAL,
            },
            OpKind::Poll => poll_once(fd, r.flags, -1),
            OpKind::Timeout => {
                let d = std::time::Duration::from_nanos(r.aux);
                let ts = libc::timespec {
                    tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                };
                let rc = libc::nanosleep(&ts, std::ptr::null_mut());
                if rc == 0 {
                    -(libc::ETIME as i64)
                } else {
                    neg_errno()
                }
            }
            OpKind::Accept => ret32(libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                r.flags as libc::c_int,
            )),
            OpKind::Connect => ret32(libc::connect(
                fd,
                r.ptr as *const libc::sockaddr,
                r.aux as libc::socklen_t,
            )),
            OpKind::Send | OpKind::Recv => sendrecv(r, 0),
            OpKind::Splice => {
                let (Some(mut oi), Some(mut oo)) = (
                    if r.offset == NO_OFFSET {
                        Some(0)
                    } else {
                        loff(r.offset)
                    },
                    if r.aux == NO_OFFSET {
                        Some(0)
                    } else {
                        loff(r.aux)
                    },
                ) else {
                    return EINVAL;
                };
                let pi: *mut libc::loff_t = if r.offset == NO_OFFSET {
                    std::ptr::null_mut()
                } else {
                    &mut oi
                };
                let po: *mut libc::loff_t = if r.aux == NO_OFFSET {
                    std::ptr::null_mut()
                } else {
                    &mut oo
                };
                ret(libc::splice(
                    fd,
                    pi,
                    r.fd2,
                    po,
                    r.len as usize,
                    r.flags as libc::c_uint,
                ))
            }
            OpKind::RenameAt => ret(libc::syscall(
                libc::SYS_renameat2,
                fd as libc::c_long,
                r.ptr as *const libc::c_char,
                r.fd2 as libc::c_long,
                r.ptr2 as *const libc::c_char,
                r.flags as libc::c_long,
            ) as isize),
            OpKind::UnlinkAt => ret32(libc::unlinkat(
                fd,
                r.ptr as *const libc::c_char,
                r.flags as libc::c_int,
            )),
            OpKind::Blocking => -(libc::EOPNOTSUPP as i64),
        }
    }
}
