//! Operation descriptions: what to run, on which descriptor, with which owned memory.
//!
//! An [`Op`] owns everything the kernel may touch while it runs (buffers, paths,
//! addresses). The ring keeps that memory in its op table until the kernel's own
//! completion has been reaped, then hands it back in the [`Completion`](crate::Completion).

use crate::buf::AlignedBuf;
use crate::outcome::CancelClass;
use std::ffi::CString;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// The offset that means "the descriptor's current position" (stream I/O).
pub(crate) const NO_OFFSET: u64 = u64::MAX;

/// `OpDesc::flags` of a read or write (unused by the kernel for those kinds): the
/// transfer is direct I/O (an `O_DIRECT` descriptor, or an aligned buffer meant for
/// one). `RWF_NOWAIT` does not keep a direct read from waiting for the device, so the
/// portable backend never tries one inline on the ring's thread.
pub(crate) const RW_DIRECT: u32 = 1;

/// An offset a caller gave: never the internal "current position" marker. `u64::MAX`
/// becomes `u64::MAX - 1`, which submission refuses like every offset past `i64::MAX`
/// (the kernel's limit), instead of silently reading at the file's position.
fn positioned(offset: u64) -> u64 {
    offset.min(NO_OFFSET - 1)
}

/// The kind of an operation.
///
/// ```
/// assert_eq!(quell::Op::nop().kind(), quell::OpKind::Nop);
/// assert_eq!(quell::OpKind::Read.name(), "read");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
#[non_exhaustive]
pub enum OpKind {
    /// Does nothing; completes with `Done(0)`.
    Nop,
    /// `read`/`pread` into one buffer.
    Read,
    /// `write`/`pwrite` from one buffer.
    Write,
    /// `preadv` into several buffers.
    Readv,
    /// `pwritev` from several buffers.
    Writev,
    /// `openat`; completes with the new descriptor.
    OpenAt,
    /// `close`.
    Close,
    /// `statx`.
    Statx,
    /// `fsync` (or `fdatasync`).
    Fsync,
    /// `fallocate`.
    Fallocate,
    /// Waits for readiness (`poll`); completes with the ready events.
    Poll,
    /// Sleeps for a duration; completes with `Done(0)` when it expires.
    Timeout,
    /// `accept4`; completes with the new connection's descriptor.
    Accept,
    /// `connect`.
    Connect,
    /// `send`.
    Send,
    /// `recv`.
    Recv,
    /// `splice` between two descriptors, one of them a pipe.
    Splice,
    /// `renameat2`.
    RenameAt,
    /// `unlinkat`.
    UnlinkAt,
    /// Any blocking call, run on quell's interruptible thread pool.
    Blocking,
}

impl OpKind {
    /// A short lowercase name.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let err = ring.submit(quell::Op::fsync(-1)).unwrap_err();
    /// // Names make log lines and metrics labels.
    /// assert_eq!(err.into_op().kind().name(), "fsync");
    /// let id = ring.submit(quell::Op::nop())?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(format!("{} {}", c.kind().name(), c.outcome), "nop done(0)");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Nop => "nop",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Readv => "readv",
            OpKind::Writev => "writev",
            OpKind::OpenAt => "openat",
            OpKind::Close => "close",
            OpKind::Statx => "statx",
            OpKind::Fsync => "fsync",
            OpKind::Fallocate => "fallocate",
            OpKind::Poll => "poll",
            OpKind::Timeout => "timeout",
            OpKind::Accept => "accept",
            OpKind::Connect => "connect",
            OpKind::Send => "send",
            OpKind::Recv => "recv",
            OpKind::Splice => "splice",
            OpKind::RenameAt => "renameat",
            OpKind::UnlinkAt => "unlinkat",
            OpKind::Blocking => "blocking",
        }
    }

    /// Whether the op moves bytes between memory and the descriptor (so a partial
    /// result is a partial transfer).
    ///
    /// ```
    /// use quell::{Op, OpKind};
    /// // A transfer's partial result is a byte count; other ops' results are not.
    /// assert!(OpKind::Splice.is_transfer());
    /// assert!(Op::write(1, vec![]).kind().is_transfer());
    /// assert!(!OpKind::Accept.is_transfer()); // its result is a descriptor
    /// assert!(!OpKind::Poll.is_transfer()); // its result is an event mask
    /// ```
    pub fn is_transfer(&self) -> bool {
        matches!(
            self,
            OpKind::Read
                | OpKind::Write
                | OpKind::Readv
                | OpKind::Writev
                | OpKind::Send
                | OpKind::Recv
                | OpKind::Splice
        )
    }

    /// Whether the op reads from its descriptor into memory.
    ///
    /// ```
    /// use quell::OpKind;
    /// assert!(OpKind::Recv.is_read());
    /// assert!(OpKind::Readv.is_read());
    /// assert!(!OpKind::Write.is_read());
    /// assert!(!OpKind::Splice.is_read()); // moves bytes between descriptors, not into memory
    /// ```
    pub fn is_read(&self) -> bool {
        matches!(self, OpKind::Read | OpKind::Readv | OpKind::Recv)
    }

    /// Whether the op takes a descriptor (rather than a path relative to a directory, or nothing).
    pub(crate) fn uses_fd(&self) -> bool {
        !matches!(self, OpKind::Nop | OpKind::Timeout | OpKind::Blocking)
    }

    /// Path-based ops whose `fd` is a directory descriptor (which may be `AT_FDCWD`).
    pub(crate) fn is_path_op(&self) -> bool {
        matches!(
            self,
            OpKind::OpenAt | OpKind::Statx | OpKind::RenameAt | OpKind::UnlinkAt
        )
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Readiness a [`Op::poll`] waits for.
///
/// ```
/// let i = quell::Interest::READABLE | quell::Interest::WRITABLE;
/// assert!(i.is_readable() && i.is_writable());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interest(pub(crate) u32);

impl Interest {
    /// Readable (`POLLIN`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::poll(r.as_raw_fd(), quell::Interest::READABLE))?;
    /// std::io::Write::write_all(&mut &w, b"x")?;
    /// let events = ring.wait_for(id)?.outcome.transferred() as i16;
    /// assert_ne!(events & libc::POLLIN, 0);
    /// # Ok(()) }
    /// ```
    pub const READABLE: Interest = Interest(libc::POLLIN as u32);
    /// Writable (`POLLOUT`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// // An empty socket buffer: writable at once.
    /// let id = ring.submit(quell::Op::poll(a.as_raw_fd(), quell::Interest::WRITABLE))?;
    /// let events = ring.wait_for(id)?.outcome.transferred() as i16;
    /// assert_ne!(events & libc::POLLOUT, 0);
    /// # Ok(()) }
    /// ```
    pub const WRITABLE: Interest = Interest(libc::POLLOUT as u32);

    /// Whether readability is asked for.
    ///
    /// ```
    /// use quell::Interest;
    /// assert!(Interest::READABLE.is_readable());
    /// assert!((Interest::WRITABLE | Interest::READABLE).is_readable());
    /// assert!(!Interest::WRITABLE.is_readable());
    /// ```
    pub fn is_readable(&self) -> bool {
        self.0 & libc::POLLIN as u32 != 0
    }

    /// Whether writability is asked for.
    ///
    /// ```
    /// use quell::Interest;
    /// assert!(Interest::WRITABLE.is_writable());
    /// assert!(!Interest::READABLE.is_writable());
    /// ```
    pub fn is_writable(&self) -> bool {
        self.0 & libc::POLLOUT as u32 != 0
    }

    /// The `poll(2)` event mask.
    ///
    /// ```
    /// use quell::Interest;
    /// // The mask as poll(2) spells it.
    /// let both = Interest::READABLE | Interest::WRITABLE;
    /// assert_eq!(both.bits(), (libc::POLLIN | libc::POLLOUT) as u32);
    /// ```
    pub fn bits(&self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        Interest(self.0 | rhs.0)
    }
}

/// Buffers and iovecs of a vectored transfer. The iovec array points into `bufs`.
pub(crate) struct Vectored {
    pub(crate) bufs: Vec<Vec<u8>>,
    pub(crate) iov: Vec<libc::iovec>,
}

// SAFETY: the iovecs point only into `bufs`, heap memory this value owns; moving it to
// another thread moves that ownership along (what makes a Ring `Send`, DESIGN §1).
unsafe impl Send for Vectored {}

/// Path and result buffer of a statx.
pub(crate) struct StatxBuf {
    pub(crate) path: CString,
    pub(crate) stx: libc::statx,
    /// The path given had an interior NUL byte (refused at submission; an empty path
    /// is legitimate here, with `AT_EMPTY_PATH`).
    pub(crate) nul: bool,
}

/// A socket address in kernel form.
pub(crate) struct SockAddr {
    pub(crate) storage: libc::sockaddr_storage,
    pub(crate) len: libc::socklen_t,
}

/// A job for the blocking pool.
pub(crate) type BlockingFn = Box<dyn FnOnce() -> std::io::Result<usize> + Send + 'static>;

/// The memory an operation owns while it runs. Every variant lives in the op table's
/// slot (whose address is stable) or on the heap, so pointers given to the kernel stay
/// valid until the op's completion is reaped.
#[derive(Default)]
pub(crate) enum Payload {
    #[default]
    None,
    Buf(Vec<u8>),
    Aligned(AlignedBuf),
    Bufs(Box<Vectored>),
    Path(CString),
    Paths(Box<(CString, CString)>),
    Statx(Box<StatxBuf>),
    Addr(Box<SockAddr>),
    Time(io_uring::types::Timespec),
    Blocking(BlockingFn),
    /// The steps of a finished chain (only ever in a completion).
    Chain(Box<crate::ring::chain::ChainSteps>),
    /// A LazyRead staging buffer (an anonymous mapping the chunk read lands in).
    Staging(crate::lazy::StagingBuf),
}

/// Everything about an operation except ring bookkeeping.
pub(crate) struct OpDesc {
    pub(crate) kind: OpKind,
    pub(crate) fd: RawFd,
    pub(crate) fd2: RawFd,
    pub(crate) len: u32,
    pub(crate) flags: u32,
    pub(crate) offset: u64,
    pub(crate) aux: u64,
    pub(crate) payload: Payload,
    /// `fd` is owned by a quell object (a [`Stream`](crate::future::Stream), a
    /// [`Listener`](crate::future::Listener)) that closes it only once its ops are done,
    /// so the number names the op's file for as long as the op lives: the portable
    /// backend skips its descriptor-identity checks for it (I12 at no cost, I8).
    pub(crate) owned: bool,
}

impl OpDesc {
    fn new(kind: OpKind, fd: RawFd) -> OpDesc {
        OpDesc {
            kind,
            fd,
            fd2: -1,
            len: 0,
            flags: 0,
            offset: NO_OFFSET,
            aux: 0,
            payload: Payload::None,
            owned: false,
        }
    }

    /// The plain-data view a backend needs to start the op. Pointers are into memory
    /// owned by `self.payload`, which the ring keeps in place until the completion.
    pub(crate) fn raw(&mut self) -> RawOp {
        let mut r = RawOp {
            kind: self.kind,
            fd: self.fd,
            fd2: self.fd2,
            len: self.len,
            flags: self.flags,
            offset: self.offset,
            aux: self.aux,
            ptr: std::ptr::null_mut(),
            ptr2: std::ptr::null_mut(),
            owned: self.owned,
        };
        match &mut self.payload {
            Payload::None | Payload::Blocking(_) | Payload::Chain(_) => {}
            Payload::Buf(v) => r.ptr = v.as_mut_ptr(),
            Payload::Aligned(a) => r.ptr = a.as_mut_ptr(),
            Payload::Staging(s) => r.ptr = s.as_mut_ptr(),
            Payload::Bufs(v) => {
                r.ptr = v.iov.as_mut_ptr().cast();
                r.len = v.iov.len() as u32;
            }
            Payload::Path(p) => r.ptr = p.as_ptr() as *mut u8,
            Payload::Paths(p) => {
                r.ptr = p.0.as_ptr() as *mut u8;
                r.ptr2 = p.1.as_ptr() as *mut u8;
            }
            Payload::Statx(s) => {
                r.ptr = s.path.as_ptr() as *mut u8;
                r.ptr2 = (&mut s.stx as *mut libc::statx).cast();
            }
            Payload::Addr(a) => {
                r.ptr = (&mut a.storage as *mut libc::sockaddr_storage).cast();
                r.aux = a.len as u64;
            }
            Payload::Time(t) => r.ptr = (t as *mut io_uring::types::Timespec).cast(),
        }
        r
    }

    /// Bytes a transfer asks to move (0 for non-transfers).
    pub(crate) fn request_len(&self) -> u64 {
        match &self.payload {
            Payload::Bufs(v) => v.bufs.iter().map(|b| b.len() as u64).sum(),
            _ if self.kind == OpKind::Fallocate => self.aux,
            _ => self.len as u64,
        }
    }
}

/// A plain-data, `Copy` view of an op for the backends: what an SQE carries.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawOp {
    pub(crate) kind: OpKind,
    pub(crate) fd: RawFd,
    pub(crate) fd2: RawFd,
    /// Buffer length, or iovec count for vectored ops, or splice length.
    pub(crate) len: u32,
    pub(crate) flags: u32,
    pub(crate) offset: u64,
    /// Mode (openat), statx mask, fallocate length, splice out-offset, timeout nanos, address length.
    pub(crate) aux: u64,
    /// Buffer, iovec array, path, socket address or timespec.
    pub(crate) ptr: *mut u8,
    /// Second path (rename) or statx result.
    pub(crate) ptr2: *mut u8,
    /// See [`OpDesc::owned`]: `fd` cannot be closed or reused while the op lives.
    pub(crate) owned: bool,
}

// SAFETY: a RawOp is a description of memory owned by the ring's op table; the ring
// guarantees that memory outlives the op, and only the backend executing the op writes it.
unsafe impl Send for RawOp {}

/// One asynchronous operation, ready to submit to a [`Ring`](crate::Ring).
///
/// Build it with a constructor, optionally set user data, then submit. The op owns
/// its buffer; the buffer comes back in the completion, or inside the error if the
/// submission is refused.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let file = std::fs::File::open("/proc/self/exe")?;
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::read_at(file.as_raw_fd(), 0, vec![0u8; 4]).user_data(42))?;
/// let c = ring.wait_for(id)?;
/// assert_eq!(c.user_data, 42);
/// assert_eq!(c.data(), b"\x7fELF");
/// # Ok(()) }
/// ```
pub struct Op {
    pub(crate) desc: OpDesc,
    pub(crate) user_data: u64,
    pub(crate) class: Option<CancelClass>,
    pub(crate) group: Option<crate::GroupId>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) exact: bool,
    /// Its completion goes to an internal sink (see `ring::sink`), never to the user.
    pub(crate) sink: bool,
}

fn cstring(path: impl AsRef<std::path::Path>) -> CString {
    use std::os::unix::ffi::OsStrExt;
    // An interior NUL is reported at submit time (InvalidArgument), so keep a marker.
    CString::new(path.as_ref().as_os_str().as_bytes()).unwrap_or_default()
}

impl Op {
    fn with(desc: OpDesc) -> Op {
        Op {
            desc,
            user_data: 0,
            class: None,
            group: None,
            deadline: None,
            exact: false,
            sink: false,
        }
    }

    pub(crate) fn buf_op(kind: OpKind, fd: RawFd, offset: u64, buf: Vec<u8>) -> Op {
        let mut d = OpDesc::new(kind, fd);
        d.offset = offset;
        d.len = buf.len().min(u32::MAX as usize) as u32;
        d.aux = buf.len() as u64;
        d.payload = Payload::Buf(buf);
        Op::with(d)
    }

    /// Does nothing; completes with `Done(0)`. Useful to measure the ring itself.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// // A round trip through the ring and nothing else.
    /// let start = std::time::Instant::now();
    /// for _ in 0..1000 {
    ///     let id = ring.submit(quell::Op::nop())?;
    ///     assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(0));
    /// }
    /// println!("{:?} per nop", start.elapsed() / 1000);
    /// # Ok(()) }
    /// ```
    pub fn nop() -> Op {
        Op::with(OpDesc::new(OpKind::Nop, -1))
    }

    /// Reads into `buf` (all of its `len()`) at the descriptor's current position (pipes, sockets, ...).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 1024]))?;
    /// std::io::Write::write_all(&mut &w, b"short")?;
    /// // A read on a stream returns what is there, up to the buffer's length.
    /// assert_eq!(ring.wait_for(id)?.data(), b"short");
    /// # Ok(()) }
    /// ```
    pub fn read(fd: RawFd, buf: Vec<u8>) -> Op {
        Op::buf_op(OpKind::Read, fd, NO_OFFSET, buf)
    }

    /// Reads into `buf` (all of its `len()`) at `offset`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// // Two reads of the same file at once, at their own offsets.
    /// let head = ring.submit(quell::Op::read_at(file.as_raw_fd(), 0, vec![0u8; 4]))?;
    /// let class = ring.submit(quell::Op::read_at(file.as_raw_fd(), 4, vec![0u8; 1]))?;
    /// assert_eq!(ring.wait_for(head)?.data(), b"\x7fELF");
    /// assert_eq!(ring.wait_for(class)?.data(), [2]); // ELFCLASS64
    /// # Ok(()) }
    /// ```
    pub fn read_at(fd: RawFd, offset: u64, buf: Vec<u8>) -> Op {
        Op::buf_op(OpKind::Read, fd, positioned(offset), buf)
    }

    /// Writes all of `buf` at the descriptor's current position.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::write(a.as_raw_fd(), b"GET /\r\n".to_vec()))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(7));
    /// let mut got = [0u8; 7];
    /// std::io::Read::read_exact(&mut &b, &mut got)?;
    /// assert_eq!(&got, b"GET /\r\n");
    /// # Ok(()) }
    /// ```
    pub fn write(fd: RawFd, buf: Vec<u8>) -> Op {
        Op::buf_op(OpKind::Write, fd, NO_OFFSET, buf)
    }

    /// Writes all of `buf` at `offset`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("quell-doc-write-at-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let mut ring = quell::Ring::new()?;
    /// // Two writes at their own offsets, in any order.
    /// ring.submit(quell::Op::write_at(file.as_raw_fd(), 5, b"world".to_vec()))?;
    /// ring.submit(quell::Op::write_at(file.as_raw_fd(), 0, b"hello".to_vec()))?;
    /// ring.wait(2, None)?;
    /// assert!(ring.completions().all(|c| c.outcome == quell::Outcome::Done(5)));
    /// assert_eq!(std::fs::read(&path)?, b"helloworld");
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn write_at(fd: RawFd, offset: u64, buf: Vec<u8>) -> Op {
        Op::buf_op(OpKind::Write, fd, positioned(offset), buf)
    }

    /// Reads at `offset` into an aligned buffer (for `O_DIRECT` descriptors).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::fs::OpenOptionsExt;
    /// let mut ring = quell::Ring::new()?;
    /// let path = std::env::temp_dir().join(format!("quell-doc-direct-{}", std::process::id()));
    /// std::fs::write(&path, vec![9u8; 8192])?;
    /// // O_DIRECT where the file system supports it, the page cache where it does not.
    /// let file = std::fs::OpenOptions::new()
    ///     .read(true)
    ///     .custom_flags(libc::O_DIRECT)
    ///     .open(&path)
    ///     .or_else(|_| std::fs::File::open(&path))?;
    /// let buf = quell::AlignedBuf::new(4096, 4096).unwrap();
    /// let id = ring.submit(quell::Op::read_aligned(file.as_raw_fd(), 4096, buf))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, quell::Outcome::Done(4096));
    /// assert!(c.data().iter().all(|&b| b == 9));
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn read_aligned(fd: RawFd, offset: u64, buf: AlignedBuf) -> Op {
        let mut d = OpDesc::new(OpKind::Read, fd);
        d.offset = positioned(offset);
        d.flags = RW_DIRECT;
        d.len = buf.len().min(u32::MAX as usize) as u32;
        d.aux = buf.len() as u64;
        d.payload = Payload::Aligned(buf);
        Op::with(d)
    }

    /// Reads `len` bytes at `offset` into a LazyRead staging buffer (crate-internal).
    pub(crate) fn read_staging(
        fd: RawFd,
        offset: u64,
        buf: crate::lazy::StagingBuf,
        len: usize,
    ) -> Op {
        debug_assert!(len <= buf.len());
        let mut d = OpDesc::new(OpKind::Read, fd);
        d.offset = offset;
        d.len = len.min(u32::MAX as usize) as u32;
        d.aux = len as u64;
        d.payload = Payload::Staging(buf);
        Op::with(d)
    }

    /// Writes an aligned buffer at `offset` (for `O_DIRECT` descriptors).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("quell-doc-write-aligned-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let mut ring = quell::Ring::new()?;
    /// let mut buf = quell::AlignedBuf::new(4096, 4096).unwrap();
    /// buf.fill(b'q');
    /// let id = ring.submit(quell::Op::write_aligned(file.as_raw_fd(), 0, buf))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, quell::Outcome::Done(4096));
    /// assert_eq!(std::fs::read(&path)?, vec![b'q'; 4096]);
    /// let _reuse = c.into_aligned().unwrap(); // the aligned buffer comes back
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn write_aligned(fd: RawFd, offset: u64, buf: AlignedBuf) -> Op {
        let mut op = Op::read_aligned(fd, offset, buf);
        op.desc.kind = OpKind::Write;
        op
    }

    pub(crate) fn vectored(kind: OpKind, fd: RawFd, offset: u64, mut bufs: Vec<Vec<u8>>) -> Op {
        let iov = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut d = OpDesc::new(kind, fd);
        d.offset = offset;
        d.payload = Payload::Bufs(Box::new(Vectored { bufs, iov }));
        Op::with(d)
    }

    /// Reads into several buffers at `offset` (`preadv`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// // A header and a body in one read, each into its own buffer.
    /// let id = ring.submit(quell::Op::readv_at(file.as_raw_fd(), 0, vec![vec![0u8; 4], vec![0u8; 60]]))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, quell::Outcome::Done(64));
    /// assert_eq!(c.bufs().unwrap()[0], b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn readv_at(fd: RawFd, offset: u64, bufs: Vec<Vec<u8>>) -> Op {
        Op::vectored(OpKind::Readv, fd, positioned(offset), bufs)
    }

    /// Writes several buffers at `offset` (`pwritev`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("quell-doc-writev-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let mut ring = quell::Ring::new()?;
    /// let parts = vec![b"header;".to_vec(), b"body".to_vec()];
    /// let id = ring.submit(quell::Op::writev_at(file.as_raw_fd(), 0, parts))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(11));
    /// assert_eq!(std::fs::read(&path)?, b"header;body");
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn writev_at(fd: RawFd, offset: u64, bufs: Vec<Vec<u8>>) -> Op {
        Op::vectored(OpKind::Writev, fd, positioned(offset), bufs)
    }

    /// Opens `path` relative to `dirfd` (`libc::AT_FDCWD` for the working directory);
    /// completes with the new descriptor, which the caller then owns.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::{FromRawFd, OwnedFd};
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::openat(libc::AT_FDCWD, "/proc/self/exe", libc::O_RDONLY, 0))?;
    /// let fd = ring.wait_for(id)?.outcome.into_result()? as i32;
    /// // SAFETY: the open's result is a new descriptor that nothing else owns.
    /// let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    /// assert!(file.metadata()?.len() > 0);
    /// // A missing file is a failed outcome, not a refused submission.
    /// let id = ring.submit(quell::Op::openat(libc::AT_FDCWD, "/nonexistent", libc::O_RDONLY, 0))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Failed(quell::Errno::NOENT));
    /// # Ok(()) }
    /// ```
    pub fn openat(dirfd: RawFd, path: impl AsRef<std::path::Path>, flags: i32, mode: u32) -> Op {
        let mut d = OpDesc::new(OpKind::OpenAt, dirfd);
        d.flags = (flags | libc::O_CLOEXEC) as u32;
        d.aux = mode as u64;
        d.payload = Payload::Path(cstring(path));
        Op::with(d)
    }

    /// Closes `fd`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::IntoRawFd;
    /// let fd = std::fs::File::open("/proc/self/exe")?.into_raw_fd();
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::close(fd))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(0));
    /// // The descriptor is gone: the next op on it is refused.
    /// assert!(ring.submit(quell::Op::fsync(fd)).is_err());
    /// # Ok(()) }
    /// ```
    pub fn close(fd: RawFd) -> Op {
        Op::with(OpDesc::new(OpKind::Close, fd))
    }

    /// `statx` of `path` relative to `dirfd`; with an empty path and
    /// `libc::AT_EMPTY_PATH`, of `dirfd` itself. The result is read with
    /// [`Completion::statx`](crate::Completion::statx).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// // The size of an open descriptor: empty path and AT_EMPTY_PATH.
    /// let op = quell::Op::statx(file.as_raw_fd(), "", libc::AT_EMPTY_PATH, libc::STATX_SIZE);
    /// let id = ring.submit(op)?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.statx().unwrap().stx_size, file.metadata()?.len());
    /// # Ok(()) }
    /// ```
    pub fn statx(dirfd: RawFd, path: impl AsRef<std::path::Path>, flags: i32, mask: u32) -> Op {
        let mut d = OpDesc::new(OpKind::Statx, dirfd);
        d.flags = flags as u32;
        d.aux = mask as u64;
        // SAFETY: statx is plain old data; all-zero is a valid value.
        let stx: libc::statx = unsafe { std::mem::zeroed() };
        let nul = path.as_ref().as_os_str().as_encoded_bytes().contains(&0);
        d.payload = Payload::Statx(Box::new(StatxBuf {
            path: cstring(path),
            stx,
            nul,
        }));
        Op::with(d)
    }

    /// `fsync(fd)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("quell-doc-fsync-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let mut ring = quell::Ring::new()?;
    /// let w = ring.submit(quell::Op::write_at(file.as_raw_fd(), 0, b"durable".to_vec()))?;
    /// ring.wait_for(w)?;
    /// // Only after the write completed: ops in flight are not ordered among themselves.
    /// let s = ring.submit(quell::Op::fsync(file.as_raw_fd()))?;
    /// assert_eq!(ring.wait_for(s)?.outcome, quell::Outcome::Done(0));
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn fsync(fd: RawFd) -> Op {
        Op::with(OpDesc::new(OpKind::Fsync, fd))
    }

    /// `fdatasync(fd)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("quell-doc-fdatasync-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let mut ring = quell::Ring::new()?;
    /// let w = ring.submit(quell::Op::write_at(file.as_raw_fd(), 0, b"log entry".to_vec()))?;
    /// ring.wait_for(w)?;
    /// let id = ring.submit(quell::Op::fdatasync(file.as_raw_fd()))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, quell::Outcome::Done(0));
    /// assert_eq!(c.kind(), quell::OpKind::Fsync);
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn fdatasync(fd: RawFd) -> Op {
        let mut d = OpDesc::new(OpKind::Fsync, fd);
        d.flags = 1;
        Op::with(d)
    }

    /// `fallocate(fd, mode, offset, len)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let path = std::env::temp_dir().join(format!("quell-doc-fallocate-{}", std::process::id()));
    /// let file = std::fs::File::create(&path)?;
    /// let mut ring = quell::Ring::new()?;
    /// // Reserve 1 MiB up front (mode 0 extends the file).
    /// let id = ring.submit(quell::Op::fallocate(file.as_raw_fd(), 0, 0, 1 << 20))?;
    /// match ring.wait_for(id)?.outcome {
    ///     quell::Outcome::Done(_) => assert_eq!(file.metadata()?.len(), 1 << 20),
    ///     // Some file systems cannot preallocate.
    ///     o => assert_eq!(o, quell::Outcome::Failed(quell::Errno::OPNOTSUPP)),
    /// }
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> Op {
        let mut d = OpDesc::new(OpKind::Fallocate, fd);
        d.flags = mode as u32;
        d.offset = positioned(offset);
        d.aux = len;
        Op::with(d)
    }

    /// Waits until `fd` is ready for `interest`; completes with the `poll(2)` events seen.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// // Wait for data without committing a buffer to the read yet.
    /// let id = ring.submit(quell::Op::poll(r.as_raw_fd(), quell::Interest::READABLE))?;
    /// std::io::Write::write_all(&mut &w, b"ready")?;
    /// let events = ring.wait_for(id)?.outcome.transferred() as i16;
    /// assert_ne!(events & libc::POLLIN, 0);
    /// let mut buf = [0u8; 5];
    /// std::io::Read::read_exact(&mut &r, &mut buf)?; // does not block now
    /// # Ok(()) }
    /// ```
    pub fn poll(fd: RawFd, interest: Interest) -> Op {
        let mut d = OpDesc::new(OpKind::Poll, fd);
        d.flags = interest.bits();
        Op::with(d)
    }

    /// Sleeps for `dur`, then completes with `Done(0)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// // Race a read against a timer: whichever completes first wins, the other is canceled.
    /// let read = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let timer = ring.submit(quell::Op::timeout(Duration::from_millis(10)))?;
    /// assert_eq!(ring.wait_for(timer)?.outcome, quell::Outcome::Done(0));
    /// ring.cancel(read)?;
    /// assert!(ring.wait_for(read)?.outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn timeout(dur: Duration) -> Op {
        let mut d = OpDesc::new(OpKind::Timeout, -1);
        // Both backends wait the same: at most u64::MAX ns (about 584 years; io_uring
        // would refuse a timespec past i64::MAX seconds, the portable backend would not).
        let dur = dur.min(Duration::from_nanos(u64::MAX));
        d.aux = dur.as_nanos() as u64;
        d.payload = Payload::Time(
            io_uring::types::Timespec::new()
                .sec(dur.as_secs())
                .nsec(dur.subsec_nanos()),
        );
        Op::with(d)
    }

    /// Accepts a connection on listening socket `fd`; completes with the new descriptor
    /// (opened with `SOCK_CLOEXEC`), which the caller then owns.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::{AsRawFd, FromRawFd};
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::accept(listener.as_raw_fd()))?;
    /// let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let fd = ring.wait_for(id)?.outcome.into_result()? as i32;
    /// // SAFETY: the accepted descriptor is new and owned by nobody else.
    /// let conn = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    /// assert_eq!(conn.peer_addr()?, client.local_addr()?);
    /// # Ok(()) }
    /// ```
    pub fn accept(fd: RawFd) -> Op {
        let mut d = OpDesc::new(OpKind::Accept, fd);
        d.flags = libc::SOCK_CLOEXEC as u32;
        Op::with(d)
    }

    /// Connects socket `fd` to `addr`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// // SAFETY: plain socket(2); the result is checked before it is owned.
    /// let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    /// assert!(raw >= 0);
    /// // SAFETY: a fresh descriptor nobody else owns.
    /// let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::connect(sock.as_raw_fd(), listener.local_addr()?))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(0));
    /// assert!(listener.accept().is_ok());
    /// # Ok(()) }
    /// ```
    pub fn connect(fd: RawFd, addr: SocketAddr) -> Op {
        let mut d = OpDesc::new(OpKind::Connect, fd);
        d.payload = Payload::Addr(Box::new(sockaddr(addr)));
        Op::with(d)
    }

    /// Sends `buf` on socket `fd` with `MSG_*` `flags` (`MSG_NOSIGNAL` is always added).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// drop(b);
    /// // The peer is gone: EPIPE in the outcome, no SIGPIPE (MSG_NOSIGNAL is always added).
    /// let id = ring.submit(quell::Op::send(a.as_raw_fd(), b"anyone?".to_vec(), 0))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Failed(quell::Errno::PIPE));
    /// # Ok(()) }
    /// ```
    pub fn send(fd: RawFd, buf: Vec<u8>, flags: i32) -> Op {
        let mut op = Op::buf_op(OpKind::Send, fd, NO_OFFSET, buf);
        op.desc.flags = (flags | libc::MSG_NOSIGNAL) as u32;
        op
    }

    /// Receives into `buf` from socket `fd` with `MSG_*` `flags`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// std::io::Write::write_all(&mut &b, b"peek")?;
    /// let mut ring = quell::Ring::new()?;
    /// // Look at the data without taking it, then take it.
    /// let peek = ring.submit(quell::Op::recv(a.as_raw_fd(), vec![0u8; 8], libc::MSG_PEEK))?;
    /// assert_eq!(ring.wait_for(peek)?.data(), b"peek");
    /// let take = ring.submit(quell::Op::recv(a.as_raw_fd(), vec![0u8; 8], 0))?;
    /// assert_eq!(ring.wait_for(take)?.data(), b"peek");
    /// # Ok(()) }
    /// ```
    pub fn recv(fd: RawFd, buf: Vec<u8>, flags: i32) -> Op {
        let mut op = Op::buf_op(OpKind::Recv, fd, NO_OFFSET, buf);
        op.desc.flags = flags as u32;
        op
    }

    /// Moves up to `len` bytes from `fd_in` to `fd_out`, one of which must be a pipe.
    /// `None` offsets use the descriptor's position.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut fds = [0; 2];
    /// // SAFETY: fds is a valid array of two descriptors for pipe(2) to fill.
    /// assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    /// // SAFETY: pipe(2) returned two fresh descriptors nobody else owns.
    /// let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    /// let mut ring = quell::Ring::new()?;
    /// // File → pipe without copying through user memory.
    /// let id = ring.submit(quell::Op::splice(file.as_raw_fd(), Some(0), tx.as_raw_fd(), None, 4))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(4));
    /// let mut got = [0u8; 4];
    /// std::io::Read::read_exact(&mut std::fs::File::from(rx), &mut got)?;
    /// assert_eq!(&got, b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn splice(
        fd_in: RawFd,
        off_in: Option<u64>,
        fd_out: RawFd,
        off_out: Option<u64>,
        len: u32,
    ) -> Op {
        let mut d = OpDesc::new(OpKind::Splice, fd_in);
        d.fd2 = fd_out;
        d.offset = off_in.map_or(NO_OFFSET, positioned);
        d.aux = off_out.map_or(NO_OFFSET, positioned);
        d.len = len;
        Op::with(d)
    }

    /// Renames `old` (relative to `olddir`) to `new` (relative to `newdir`); `flags` as `renameat2`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = std::env::temp_dir();
    /// let tmp = dir.join(format!("quell-doc-rename-{}.tmp", std::process::id()));
    /// let fin = dir.join(format!("quell-doc-rename-{}", std::process::id()));
    /// std::fs::write(&tmp, b"complete")?;
    /// let mut ring = quell::Ring::new()?;
    /// // Publish a finished file atomically under its final name.
    /// let op = quell::Op::renameat(libc::AT_FDCWD, &tmp, libc::AT_FDCWD, &fin, 0);
    /// let id = ring.submit(op)?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(0));
    /// assert!(!tmp.exists());
    /// assert_eq!(std::fs::read(&fin)?, b"complete");
    /// std::fs::remove_file(&fin)?;
    /// # Ok(()) }
    /// ```
    pub fn renameat(
        olddir: RawFd,
        old: impl AsRef<std::path::Path>,
        newdir: RawFd,
        new: impl AsRef<std::path::Path>,
        flags: u32,
    ) -> Op {
        let mut d = OpDesc::new(OpKind::RenameAt, olddir);
        d.fd2 = newdir;
        d.flags = flags;
        d.payload = Payload::Paths(Box::new((cstring(old), cstring(new))));
        Op::with(d)
    }

    /// Removes `path` relative to `dirfd` (`libc::AT_REMOVEDIR` in `flags` for a directory).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = std::env::temp_dir().join(format!("quell-doc-unlink-{}", std::process::id()));
    /// std::fs::create_dir(&dir)?;
    /// std::fs::write(dir.join("f"), b"x")?;
    /// let mut ring = quell::Ring::new()?;
    /// let f = ring.submit(quell::Op::unlinkat(libc::AT_FDCWD, dir.join("f"), 0))?;
    /// assert_eq!(ring.wait_for(f)?.outcome, quell::Outcome::Done(0));
    /// let d = ring.submit(quell::Op::unlinkat(libc::AT_FDCWD, &dir, libc::AT_REMOVEDIR))?;
    /// assert_eq!(ring.wait_for(d)?.outcome, quell::Outcome::Done(0));
    /// assert!(!dir.exists());
    /// # Ok(()) }
    /// ```
    pub fn unlinkat(dirfd: RawFd, path: impl AsRef<std::path::Path>, flags: i32) -> Op {
        let mut d = OpDesc::new(OpKind::UnlinkAt, dirfd);
        d.flags = flags as u32;
        d.payload = Payload::Path(cstring(path));
        Op::with(d)
    }

    /// Runs any blocking call on quell's thread pool, as an op with the same completion
    /// and cancel semantics: canceling interrupts the worker thread with a signal, so a
    /// blocking system call inside `f` returns `EINTR`. `Ok(n)` becomes `Done(n)`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let fd = r.as_raw_fd();
    /// let mut ring = quell::Ring::new()?;
    /// // A blocking call quell has no op for; canceling it interrupts the worker (EINTR).
    /// let id = ring.submit(quell::Op::blocking(move || {
    ///     let mut buf = [0u8; 8];
    ///     // SAFETY: buf is valid for 8 bytes; fd stays open until the op completes.
    ///     let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    ///     if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
    /// }))?;
    /// ring.wait(1, Some(std::time::Duration::from_millis(20)))?; // let the worker block
    /// ring.cancel(id)?;
    /// assert!(ring.wait_for(id)?.outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn blocking<F>(f: F) -> Op
    where
        F: FnOnce() -> std::io::Result<usize> + Send + 'static,
    {
        let mut d = OpDesc::new(OpKind::Blocking, -1);
        d.payload = Payload::Blocking(Box::new(f));
        Op::with(d)
    }

    /// Makes a read or write retry short transfers until its whole buffer has moved
    /// (`read_exact` / `write_all`). The retries are parts of one op: they share its
    /// cancel flag, deadline and group, and the op yields one completion with the total
    /// (I6). It is short only where `read(2)`/`write(2)` would be: a read that meets end
    /// of file completes `Done(n)` with `n` short, and a retry that fails after earlier
    /// ones moved bytes completes `Done(bytes moved)` — the count is never lost — and the
    /// error comes back from the next call on the descriptor. A cancel or deadline that
    /// stops it part-way says `Canceled`/`TimedOut` with the bytes moved.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0; 6]).exact())?;
    /// std::io::Write::write_all(&mut &w, b"abc")?;
    /// ring.poll()?;
    /// std::io::Write::write_all(&mut &w, b"def")?;
    /// assert_eq!(ring.wait_for(id)?.data(), b"abcdef");
    /// # Ok(()) }
    /// ```
    pub fn exact(mut self) -> Op {
        self.exact = matches!(self.desc.kind, OpKind::Read | OpKind::Write);
        self
    }

    /// Marks `fd` as owned by the quell object submitting the op (see
    /// [`OpDesc::owned`]). Only for descriptors that object closes itself, after its
    /// ops are done: an op on a number that may be closed elsewhere must keep the
    /// portable backend's identity checks.
    pub(crate) fn owned(mut self) -> Op {
        self.desc.owned = true;
        self
    }

    /// Sets the user data carried back in the completion.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// // Tag each block read with its block number.
    /// for block in 0..4u64 {
    ///     let op = quell::Op::read_at(file.as_raw_fd(), block * 16, vec![0u8; 16]);
    ///     ring.submit(op.user_data(block))?;
    /// }
    /// let mut seen = Vec::new();
    /// while seen.len() < 4 {
    ///     ring.wait(1, None)?;
    ///     seen.extend(ring.completions().map(|c| c.user_data));
    /// }
    /// seen.sort();
    /// assert_eq!(seen, [0, 1, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn user_data(mut self, user_data: u64) -> Op {
        self.user_data = user_data;
        self
    }

    /// Declares how this op can be canceled, instead of letting the ring classify its
    /// descriptor (useful when the descriptor's kind is known and classification should
    /// cost nothing).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let op = quell::Op::read(r.as_raw_fd(), vec![0u8; 8]).class(quell::CancelClass::Prompt);
    /// let id = ring.submit(op)?;
    /// assert_eq!(ring.ops()[0].class, quell::CancelClass::Prompt); // as declared
    /// ring.cancel(id)?;
    /// assert!(ring.wait_for(id)?.outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn class(mut self, class: CancelClass) -> Op {
        self.class = Some(class);
        self
    }

    /// Submits the op into `group` instead of the ring's root group.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{GroupId, GroupOptions, Op};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let client = ring.group(GroupId::ROOT, GroupOptions::default().name("client-1"))?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(client))?;
    /// assert_eq!(&*ring.ops()[0].group_path, "root/client-1");
    /// ring.cancel_group(client)?; // the client disconnected
    /// assert!(ring.wait_for(id)?.outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn group(mut self, group: crate::GroupId) -> Op {
        self.group = Some(group);
        self
    }

    /// Gives the op an absolute deadline (contract item I7).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::{Duration, Instant};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let at = Instant::now() + Duration::from_millis(20);
    /// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]).deadline(at))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, quell::Outcome::TimedOut { transferred: 0 });
    /// assert_eq!(c.into_buf().unwrap().len(), 8); // the buffer still comes back
    /// # Ok(()) }
    /// ```
    pub fn deadline(mut self, deadline: Instant) -> Op {
        self.deadline = Some(deadline);
        self
    }

    /// The op's kind.
    ///
    /// ```
    /// use quell::{Op, OpKind};
    /// let ops = [Op::nop(), Op::fsync(3), Op::read(0, vec![0u8; 8])];
    /// let reads = ops.iter().filter(|op| op.kind().is_read()).count();
    /// assert_eq!(reads, 1);
    /// assert_eq!(ops[1].kind(), OpKind::Fsync);
    /// ```
    pub fn kind(&self) -> OpKind {
        self.desc.kind
    }

    /// The op's name, for messages.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let op = quell::Op::write(-1, b"x".to_vec());
    /// let name = op.name();
    /// let err = ring.submit(op).unwrap_err();
    /// assert_eq!(name, "write");
    /// assert!(err.to_string().starts_with("write refused"));
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &'static str {
        self.desc.kind.name()
    }

    /// Takes the single buffer back out of an op that was not submitted.
    ///
    /// ```
    /// let op = quell::Op::read(0, vec![0u8; 4096]);
    /// // Not submitted after all: take the buffer back.
    /// let buf = op.into_buf().unwrap();
    /// assert_eq!(buf.len(), 4096);
    /// assert!(quell::Op::nop().into_buf().is_none());
    /// ```
    pub fn into_buf(self) -> Option<Vec<u8>> {
        match self.desc.payload {
            Payload::Buf(v) => Some(v),
            _ => None,
        }
    }

    /// Takes the buffers back out of a vectored op that was not submitted.
    ///
    /// ```
    /// let op = quell::Op::writev_at(3, 0, vec![b"a".to_vec(), b"bc".to_vec()]);
    /// assert_eq!(op.into_bufs().unwrap(), [b"a".to_vec(), b"bc".to_vec()]);
    /// // A single-buffer op has no vector to give.
    /// assert!(quell::Op::read(0, vec![0u8; 4]).into_bufs().is_none());
    /// ```
    pub fn into_bufs(self) -> Option<Vec<Vec<u8>>> {
        match self.desc.payload {
            Payload::Bufs(v) => Some(v.bufs),
            _ => None,
        }
    }

    /// Takes the aligned buffer back out of an op that was not submitted.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let buf = quell::AlignedBuf::new(4096, 4096).unwrap();
    /// let err = ring.submit(quell::Op::read_aligned(-1, 0, buf)).unwrap_err();
    /// // Refused: the aligned buffer comes back with its alignment.
    /// let back = err.into_op().into_aligned().unwrap();
    /// assert_eq!(back.align(), 4096);
    /// # Ok(()) }
    /// ```
    pub fn into_aligned(self) -> Option<AlignedBuf> {
        match self.desc.payload {
            Payload::Aligned(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Op")
            .field("kind", &self.desc.kind)
            .field("fd", &self.desc.fd)
            .field("user_data", &self.user_data)
            .finish_non_exhaustive()
    }
}

pub(crate) fn sockaddr(addr: SocketAddr) -> SockAddr {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    SockAddr {
        storage,
        len: len as libc::socklen_t,
    }
}
