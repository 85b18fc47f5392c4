//! Owned stream descriptors (sockets, pipes) and listening sockets over a [`Driver`]:
//! owned-buffer async methods, plus poll-style read/write state machines that the
//! tokio feature exposes as `AsyncRead`/`AsyncWrite`.

use super::driver::Driver;
use super::op::{BufFuture, OpFuture};
use crate::op::Op;
use crate::outcome::Outcome;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};

/// Size of the buffer a poll-style read hands the kernel.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes one poll-style write hands the kernel.
const WRITE_CHUNK: usize = 64 * 1024;

/// A connected stream (TCP or Unix socket, pipe end) whose I/O runs on a quell ring.
///
/// Its owned-buffer methods return futures: dropping one cancels its op, and bytes a
/// dropped read brought in anyway are served first to the next read (I11). Its
/// poll-style [`poll_read`](Stream::poll_read) / [`poll_write`](Stream::poll_write)
/// keep one op in flight across calls, so a caller that gives up (a timeout around
/// `read`) loses nothing either: the next call continues the same op.
///
/// Dropping the stream cancels what it has in flight and closes the descriptor once
/// the kernel is done with it (so the number is not reused under a running op).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let driver = quell::future::Driver::new(quell::Ring::new()?);
/// let (a, b) = std::os::unix::net::UnixStream::pair()?;
/// let (a, b) = (quell::future::Stream::new(&driver, a), quell::future::Stream::new(&driver, b));
/// driver.block_on(async {
///     let (r, _) = a.write_all_owned(b"ping".to_vec()).await;
///     r?;
///     let (n, buf) = b.read_owned(vec![0u8; 16]).await;
///     assert_eq!(&buf[..n?], b"ping");
///     Ok::<_, std::io::Error>(())
/// })?;
/// # Ok(()) }
/// ```
pub struct Stream {
    driver: Driver,
    fd: Option<OwnedFd>,
    raw: RawFd,
    reading: Option<OpFuture>,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    writing: Option<OpFuture>,
    wbuf: Vec<u8>,
}

impl Stream {
    /// Wraps a connected descriptor (a `std` or `tokio`-free socket, a pipe end).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// // The stream takes ownership of the descriptor and closes it when dropped.
    /// let s = quell::future::Stream::new(&driver, mine);
    /// std::io::Write::write_all(&mut &peer, b"hello")?;
    /// let (n, buf) = driver.block_on(s.read_owned(vec![0u8; 16]));
    /// assert_eq!(&buf[..n?], b"hello");
    /// # Ok(()) }
    /// ```
    pub fn new(driver: &Driver, fd: impl Into<OwnedFd>) -> Stream {
        let fd: OwnedFd = fd.into();
        Stream {
            driver: driver.clone(),
            raw: fd.as_raw_fd(),
            fd: Some(fd),
            reading: None,
            rbuf: Vec::new(),
            rpos: 0,
            rlen: 0,
            writing: None,
            wbuf: Vec::new(),
        }
    }

    /// Connects a TCP stream to `addr` (the connect runs on the ring; dropping the
    /// future cancels it and closes the socket).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let s = driver.block_on(quell::future::Stream::connect(&driver, l.local_addr()?))?;
    /// assert!(l.accept().is_ok());
    /// drop(s);
    /// # Ok(()) }
    /// ```
    pub async fn connect(driver: &Driver, addr: SocketAddr) -> io::Result<Stream> {
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let stream = Stream::new(driver, fd);
        let c = driver.submit(Op::connect(raw, addr))?.await;
        match c.outcome {
            Outcome::Done(_) => Ok(stream),
            o => Err(o.into_result().unwrap_err()),
        }
    }

    /// The descriptor.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, _peer) = std::os::unix::net::UnixStream::pair()?;
    /// let raw = mine.as_raw_fd();
    /// let s = quell::future::Stream::new(&driver, mine);
    /// assert_eq!(s.fd(), raw);
    /// // E.g. to cancel everything the stream has in flight through the ring.
    /// let reached = driver.with_ring(|ring| ring.cancel_fd(s.fd()));
    /// assert_eq!(reached, 0);
    /// # Ok(()) }
    /// ```
    pub fn fd(&self) -> RawFd {
        self.raw
    }

    /// Reads into `buf` (kept bytes from dropped reads first). Do not mix with
    /// [`poll_read`](Stream::poll_read), which buffers ahead. (Named `_owned` so
    /// tokio's `AsyncReadExt::read` keeps working on a `Stream`.)
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let s = quell::future::Stream::new(&driver, mine);
    /// std::io::Write::write_all(&mut &peer, b"line 1\n")?;
    /// drop(peer);
    /// let mut got = Vec::new();
    /// let mut buf = vec![0u8; 4];
    /// loop {
    ///     let (n, b) = driver.block_on(s.read_owned(buf));
    ///     let n = n?;
    ///     if n == 0 {
    ///         break; // end of stream
    ///     }
    ///     got.extend_from_slice(&b[..n]);
    ///     buf = b; // the same buffer goes round again
    /// }
    /// assert_eq!(got, b"line 1\n");
    /// # Ok(()) }
    /// ```
    pub fn read_owned(&self, buf: Vec<u8>) -> BufFuture {
        self.driver.read(self.raw, buf)
    }

    /// Writes `buf`; `Ok(n)` is how much was written.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let s = quell::future::Stream::new(&driver, mine);
    /// let (n, buf) = driver.block_on(s.write_owned(b"status: ok".to_vec()));
    /// let n = n?;
    /// let mut got = vec![0u8; n];
    /// std::io::Read::read_exact(&mut &peer, &mut got)?;
    /// assert_eq!(got, &buf[..n]);
    /// # Ok(()) }
    /// ```
    pub fn write_owned(&self, buf: Vec<u8>) -> BufFuture {
        self.driver.write(self.raw, buf)
    }

    /// Writes all of `buf` (one op whose short writes are retried inside, I6).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let s = quell::future::Stream::new(&driver, mine);
    /// // More than a socket buffer holds: short writes are retried inside the one op.
    /// let reader = std::thread::spawn(move || {
    ///     let mut all = Vec::new();
    ///     std::io::Read::read_to_end(&mut &peer, &mut all).map(|_| all.len())
    /// });
    /// let (res, buf) = driver.block_on(s.write_all_owned(vec![7u8; 1 << 20]));
    /// res?;
    /// assert_eq!(buf.len(), 1 << 20);
    /// drop(s); // closes our end: the reader sees end of stream
    /// assert_eq!(reader.join().unwrap()?, 1 << 20);
    /// # Ok(()) }
    /// ```
    pub async fn write_all_owned(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let len = buf.len();
        let (r, buf) = match self.driver.submit(Op::write(self.raw, buf).exact()) {
            Ok(f) => f.buf().await,
            Err(e) => {
                let (e, op) = e.into_parts();
                (Err(e.into()), op.into_buf().unwrap_or_default())
            }
        };
        let r = match r {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {n} of {len} bytes"),
            )),
            Err(e) => Err(e),
        };
        (r, buf)
    }

    /// Reads into `dst`, keeping one read op in flight across calls: `Pending` leaves
    /// the op running, and its bytes go to the next call. Bytes beyond `dst.len()`
    /// wait in the stream's buffer.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::future::poll_fn;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let mut s = quell::future::Stream::new(&driver, mine);
    /// std::io::Write::write_all(&mut &peer, b"abcdef")?;
    /// let mut dst = [0u8; 4];
    /// let n = driver.block_on(poll_fn(|cx| s.poll_read(cx, &mut dst)))?;
    /// assert_eq!(&dst[..n], b"abcd");
    /// // The rest waited in the stream's buffer.
    /// let n = driver.block_on(poll_fn(|cx| s.poll_read(cx, &mut dst)))?;
    /// assert_eq!(&dst[..n], b"ef");
    /// # Ok(()) }
    /// ```
    pub fn poll_read(&mut self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.rpos < self.rlen {
            return Poll::Ready(Ok(self.copy_out(dst)));
        }
        if dst.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.reading.is_none() {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.resize(READ_CHUNK.max(buf.len()), 0);
            match self.driver.submit(Op::read(self.raw, buf)) {
                Ok(f) => self.reading = Some(f),
                Err(e) => {
                    let (e, op) = e.into_parts();
                    self.rbuf = op.into_buf().unwrap_or_default();
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
        let f = self.reading.as_mut().expect("set above");
        let c = match std::pin::Pin::new(f).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(c) => c,
        };
        self.reading = None;
        let outcome = c.outcome;
        self.rbuf = c.into_buf().unwrap_or_default();
        match outcome {
            Outcome::Done(n) => {
                self.rpos = 0;
                self.rlen = n.min(self.rbuf.len());
                Poll::Ready(Ok(self.copy_out(dst)))
            }
            o => Poll::Ready(Err(o.into_result().unwrap_err())),
        }
    }

    fn copy_out(&mut self, dst: &mut [u8]) -> usize {
        let n = (self.rlen - self.rpos).min(dst.len());
        dst[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        self.rpos += n;
        n
    }

    /// Writes from `src`, keeping one write op in flight across calls. As with every
    /// completion-based writer, a call after `Pending` must pass the same bytes: the
    /// op started with the first call's bytes and reports how many of those it wrote.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::future::poll_fn;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let mut s = quell::future::Stream::new(&driver, mine);
    /// let n = driver.block_on(poll_fn(|cx| s.poll_write(cx, b"xyz")))?;
    /// assert_eq!(n, 3);
    /// let mut got = [0u8; 3];
    /// std::io::Read::read_exact(&mut &peer, &mut got)?;
    /// assert_eq!(&got, b"xyz");
    /// # Ok(()) }
    /// ```
    pub fn poll_write(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        if self.writing.is_none() {
            if src.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let mut buf = std::mem::take(&mut self.wbuf);
            buf.clear();
            buf.extend_from_slice(&src[..src.len().min(WRITE_CHUNK)]);
            match self.driver.submit(Op::write(self.raw, buf)) {
                Ok(f) => self.writing = Some(f),
                Err(e) => {
                    let (e, op) = e.into_parts();
                    self.wbuf = op.into_buf().unwrap_or_default();
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
        self.poll_write_done(cx)
    }

    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(f) = self.writing.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let c = match std::pin::Pin::new(f).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(c) => c,
        };
        self.writing = None;
        let outcome = c.outcome;
        self.wbuf = c.into_buf().unwrap_or_default();
        Poll::Ready(outcome.into_result())
    }

    /// Waits for a write in flight, then shuts the write side down (`SHUT_WR`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::future::poll_fn;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let mut s = quell::future::Stream::new(&driver, mine);
    /// driver.block_on(poll_fn(|cx| s.poll_write(cx, b"bye")))?;
    /// driver.block_on(poll_fn(|cx| s.poll_shutdown(cx)))?;
    /// // The peer gets the bytes, then end of stream, while our end is still open.
    /// let mut got = Vec::new();
    /// std::io::Read::read_to_end(&mut &peer, &mut got)?;
    /// assert_eq!(got, b"bye");
    /// # Ok(()) }
    /// ```
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_write_done(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(_)) => {}
        }
        // SAFETY: shutdown(2) on our own descriptor; it does not block.
        let rc = unsafe { libc::shutdown(self.raw, libc::SHUT_WR) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // A pipe end is no socket: nothing to shut down but the writes.
            if e.raw_os_error() != Some(libc::ENOTSOCK) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Waits for a write in flight (there is no user-space write buffer to flush).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::future::poll_fn;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let mut s = quell::future::Stream::new(&driver, mine);
    /// driver.block_on(poll_fn(|cx| s.poll_write(cx, b"data")))?;
    /// driver.block_on(poll_fn(|cx| s.poll_flush(cx)))?;
    /// // Flushed: nothing of ours is in flight any more.
    /// assert_eq!(driver.outstanding(), 0);
    /// let mut got = [0u8; 4];
    /// std::io::Read::read_exact(&mut &peer, &mut got)?;
    /// assert_eq!(&got, b"data");
    /// # Ok(()) }
    /// ```
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_done(cx).map(|r| r.map(|_| ()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Cancel first, then retire: the descriptor stays open until the canceled ops'
        // completions are in.
        self.reading = None;
        self.writing = None;
        if let Some(fd) = self.fd.take() {
            self.driver.retire(fd);
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.raw
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("fd", &self.raw).finish()
    }
}

/// A listening socket whose accepts run on a quell ring. Dropping an accept's future
/// cancels it; a connection it accepted anyway is kept for the next accept, never
/// leaked or silently closed (I11).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let driver = quell::future::Driver::new(quell::Ring::new()?);
/// let l = quell::future::Listener::bind(&driver, "127.0.0.1:0".parse()?)?;
/// let _c = std::net::TcpStream::connect(l.local_addr()?)?;
/// let s = driver.block_on(l.accept())?;
/// assert!(s.fd() >= 0);
/// # Ok(()) }
/// ```
pub struct Listener {
    driver: Driver,
    fd: Option<OwnedFd>,
    raw: RawFd,
    addr: Option<SocketAddr>,
}

impl Listener {
    /// Binds a TCP listener (`SO_REUSEADDR`, as `std` does).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let l = quell::future::Listener::bind(&driver, "127.0.0.1:0".parse()?)?;
    /// let addr = l.local_addr()?;
    /// assert_ne!(addr.port(), 0); // the port the system picked
    /// // A second bind of the same address fails while the first listens.
    /// assert!(quell::future::Listener::bind(&driver, addr).is_err());
    /// # Ok(()) }
    /// ```
    pub fn bind(driver: &Driver, addr: SocketAddr) -> io::Result<Listener> {
        let l = std::net::TcpListener::bind(addr)?;
        let addr = l.local_addr().ok();
        let mut me = Listener::new(driver, l);
        me.addr = addr;
        Ok(me)
    }

    /// Wraps a listening descriptor.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let path = std::env::temp_dir().join(format!("quell-doc-listener-{}", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// // Any listening socket: here a Unix one.
    /// let l = quell::future::Listener::new(&driver, std::os::unix::net::UnixListener::bind(&path)?);
    /// let client = std::os::unix::net::UnixStream::connect(&path)?;
    /// let s = driver.block_on(l.accept())?;
    /// std::io::Write::write_all(&mut &client, b"hi")?;
    /// let (n, buf) = driver.block_on(s.read_owned(vec![0u8; 8]));
    /// assert_eq!(&buf[..n?], b"hi");
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    pub fn new(driver: &Driver, fd: impl Into<OwnedFd>) -> Listener {
        let fd: OwnedFd = fd.into();
        Listener {
            driver: driver.clone(),
            raw: fd.as_raw_fd(),
            fd: Some(fd),
            addr: None,
        }
    }

    /// The bound address (TCP listeners made with [`bind`](Listener::bind)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let l = quell::future::Listener::bind(&driver, "127.0.0.1:0".parse()?)?;
    /// let client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// assert_eq!(client.peer_addr()?, l.local_addr()?);
    /// // A listener wrapped with `new` does not know its address.
    /// let std_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let wrapped = quell::future::Listener::new(&driver, std_l);
    /// assert_eq!(wrapped.local_addr().unwrap_err().kind(), std::io::ErrorKind::Unsupported);
    /// # Ok(()) }
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.addr
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "not a bound TCP listener"))
    }

    /// The descriptor.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let std_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let raw = std_l.as_raw_fd();
    /// let l = quell::future::Listener::new(&driver, std_l);
    /// assert_eq!(l.fd(), raw);
    /// # Ok(()) }
    /// ```
    pub fn fd(&self) -> RawFd {
        self.raw
    }

    /// Accepts one connection (a kept one first).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io::{Read, Write};
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let l = quell::future::Listener::bind(&driver, "127.0.0.1:0".parse()?)?;
    /// let mut client = std::net::TcpStream::connect(l.local_addr()?)?;
    /// client.write_all(b"echo")?;
    /// // An echo of one message.
    /// driver.block_on(async {
    ///     let s = l.accept().await?;
    ///     let (n, buf) = s.read_owned(vec![0u8; 64]).await;
    ///     let n = n?;
    ///     let (r, _) = s.write_all_owned(buf[..n].to_vec()).await;
    ///     r
    /// })?;
    /// let mut got = [0u8; 4];
    /// client.read_exact(&mut got)?;
    /// assert_eq!(&got, b"echo");
    /// # Ok(()) }
    /// ```
    pub async fn accept(&self) -> io::Result<Stream> {
        let c = self.driver.submit(Op::accept(self.raw))?.await;
        match c.outcome {
            // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
            Outcome::Done(fd) => Ok(Stream::new(&self.driver, unsafe {
                OwnedFd::from_raw_fd(fd as RawFd)
            })),
            o => Err(o.into_result().unwrap_err()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            self.driver.retire(fd);
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("fd", &self.raw).finish()
    }
}

use std::future::Future;
