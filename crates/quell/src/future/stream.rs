//! Owned stream descriptors (sockets, pipes) and listening sockets over a [`Driver`]:
//! owned-buffer async methods, plus poll-style read/write state machines that the
//! tokio feature exposes as `AsyncRead`/`AsyncWrite`.
//!
//! What a caller that gives up on a read or write sees is in the [module docs of
//! `future`](crate::future#streams-what-a-caller-that-gives-up-sees).

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
/// Most acknowledged bytes a stream holds that no op carries yet (and most bytes one op
/// carries): `poll_write` is `Pending` while this much waits.
const WRITE_CHUNK: usize = 64 * 1024;

/// How long a dropped [`Stream`] goes on sending bytes it acknowledged before giving
/// up (a peer that never reads cannot hold the descriptor open for ever).
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// A connected stream (TCP or Unix socket, pipe end) whose I/O runs on a quell ring.
///
/// Its owned-buffer methods return futures: dropping one cancels its op, and bytes a
/// dropped read brought in anyway are served first to the next read (I11). Its
/// poll-style [`poll_read`](Stream::poll_read) keeps one read in flight across calls
/// and [`poll_write`](Stream::poll_write) writes behind, so a caller that gives up (a
/// timeout around `read` or `write_all`) loses nothing and sends nothing it did not
/// have acknowledged (see the [rules](crate::future#streams-what-a-caller-that-gives-up-sees)).
///
/// Dropping the stream cancels its read, lets acknowledged writes finish (for at most
/// [`LINGER`]), and closes the descriptor once the kernel is done with it (so the
/// number is not reused under a running op).
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
    /// The write op in flight: acknowledged bytes only.
    writing: Option<OpFuture>,
    /// Acknowledged bytes no op carries yet.
    wbuf: Vec<u8>,
    /// The last write op's buffer, for the next op.
    wspare: Vec<u8>,
    /// A write failure not yet reported (the next write, flush or shutdown gets it).
    werr: Option<io::Error>,
    /// The end the read op met while writes were in flight (see `poll_end`).
    end_held: Option<io::Result<()>>,
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
            wspare: Vec::new(),
            werr: None,
            end_held: None,
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
        let c = driver.submit(Op::connect(raw, addr).owned())?.await;
        match c.outcome {
            Outcome::Done(_) => Ok(stream),
            o => Err(failure(o)),
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

    /// Submits an op on the stream's own descriptor (marked owned: the stream closes it
    /// only after its ops are done, so the portable backend needs no identity check).
    fn buf_op(&self, op: Op) -> BufFuture {
        match self.driver.submit(op.owned()) {
            Ok(f) => f.buf(),
            Err(e) => BufFuture::refused(e),
        }
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
        self.buf_op(Op::read(self.raw, buf))
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
        self.buf_op(Op::write(self.raw, buf))
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
        let (r, buf) = match self.driver.submit(Op::write(self.raw, buf).exact().owned()) {
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
        if let Some(end) = self.end_held.take() {
            return self.poll_end(cx, end);
        }
        if self.reading.is_none() {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.resize(READ_CHUNK.max(buf.len()), 0);
            match self.driver.submit(Op::read(self.raw, buf).owned()) {
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
            // A read stopped part-way (a cancel through the ring) serves what it moved.
            Outcome::Done(n)
            | Outcome::Canceled { transferred: n }
            | Outcome::TimedOut { transferred: n }
                if n > 0 || outcome.is_done() =>
            {
                self.rpos = 0;
                self.rlen = n.min(self.rbuf.len());
                if self.rlen == 0 && n == 0 {
                    return self.poll_end(cx, Ok(()));
                }
                Poll::Ready(Ok(self.copy_out(dst)))
            }
            o => self.poll_end(cx, Err(failure(o))),
        }
    }

    /// The end of the stream (end of file, or an error such as a reset) is reported
    /// once the writes acknowledged before it are done, and one call later than that
    /// if writes were in flight when it came: a peer usually closes (or resets)
    /// *because* it read our reply, and over tokio's stream (whose writes are the
    /// kernel's at once, whose flush does nothing) a caller has seen its write and
    /// flush finish before it sees that end. hyper depends on it: an end it reads
    /// before its flush returned counts as a connection closed mid-message. The extra
    /// `Pending` (with a wake-up) lets a caller that polls read, write and flush in turn
    /// see its flush done first. Bytes are never held back, only the end.
    fn poll_end(&mut self, cx: &mut Context<'_>, end: io::Result<()>) -> Poll<io::Result<usize>> {
        let busy = self.writing.is_some() || !self.wbuf.is_empty();
        if let Err(e) = self.drive_writes(cx) {
            // The write side's failure is its next call's to report.
            self.werr = Some(e);
        }
        if busy || self.writing.is_some() {
            if self.writing.is_none() {
                cx.waker().wake_by_ref();
            }
            self.end_held = Some(end);
            return Poll::Pending;
        }
        Poll::Ready(end.map(|()| 0))
    }

    fn copy_out(&mut self, dst: &mut [u8]) -> usize {
        let n = (self.rlen - self.rpos).min(dst.len());
        dst[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        self.rpos += n;
        n
    }

    /// Writes from `src` behind: copies what fits in the stream's buffer and answers
    /// `Ready(n)` at once; `Pending` only while the buffer is full, having taken
    /// nothing. An op in flight carries acknowledged bytes only, so a call given up
    /// after `Pending` sends nothing, and the next call, whatever its bytes, is never
    /// answered with another call's count (I13). A failed write is reported by the next
    /// call (see the [rules](crate::future#streams-what-a-caller-that-gives-up-sees)); [`poll_flush`](Stream::poll_flush) waits
    /// until everything acknowledged is written.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::future::poll_fn;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let mut s = quell::future::Stream::new(&driver, mine);
    /// let n = driver.block_on(poll_fn(|cx| s.poll_write(cx, b"xyz")))?;
    /// assert_eq!(n, 3);
    /// driver.block_on(poll_fn(|cx| s.poll_flush(cx)))?;
    /// let mut got = [0u8; 3];
    /// std::io::Read::read_exact(&mut &peer, &mut got)?;
    /// assert_eq!(&got, b"xyz");
    /// # Ok(()) }
    /// ```
    pub fn poll_write(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(src)])
    }

    /// [`poll_write`](Stream::poll_write) from several buffers at once (taken in order,
    /// as much as fits).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::future::poll_fn;
    /// use std::io::IoSlice;
    /// let driver = quell::future::Driver::new(quell::Ring::new()?);
    /// let (mine, peer) = std::os::unix::net::UnixStream::pair()?;
    /// let mut s = quell::future::Stream::new(&driver, mine);
    /// let bufs = [IoSlice::new(b"head "), IoSlice::new(b"body")];
    /// let n = driver.block_on(poll_fn(|cx| s.poll_write_vectored(cx, &bufs)))?;
    /// assert_eq!(n, 9);
    /// driver.block_on(poll_fn(|cx| s.poll_shutdown(cx)))?;
    /// let mut got = Vec::new();
    /// std::io::Read::read_to_end(&mut &peer, &mut got)?;
    /// assert_eq!(got, b"head body");
    /// # Ok(()) }
    /// ```
    pub fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.drive_writes(cx) {
            return Poll::Ready(Err(e));
        }
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        let room = WRITE_CHUNK.saturating_sub(self.wbuf.len());
        if room == 0 {
            // Full: the op in flight (polled above) wakes this task when it is done.
            return Poll::Pending;
        }
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(room - taken);
            self.wbuf.extend_from_slice(&b[..n]);
            taken += n;
            if taken == room {
                break;
            }
        }
        // Hand the bytes to an op now if none is in flight (its first poll gives it to
        // the kernel). A failure now is the next call's: these bytes are acknowledged.
        if let Err(e) = self.drive_writes(cx) {
            self.werr = Some(e);
        }
        Poll::Ready(Ok(taken))
    }

    /// Takes a finished write op's result and starts the next op from the buffer; the
    /// op in flight, if any, is polled (so this task is woken when it finishes). An
    /// error not yet reported is returned (once).
    fn drive_writes(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if let Some(f) = self.writing.as_mut() {
                let c = match std::pin::Pin::new(f).poll(cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(c) => c,
                };
                self.writing = None;
                let outcome = c.outcome;
                let mut buf = c.into_buf().unwrap_or_default();
                let len = buf.len();
                if outcome != Outcome::Done(len) && self.werr.is_none() {
                    // What this op did not write and what waits behind it are lost: a
                    // stream with a hole in it is worse than a stream that stopped.
                    let lost = len - outcome.transferred().min(len) + self.wbuf.len();
                    self.wbuf.clear();
                    self.werr = Some(write_error(outcome, lost));
                }
                buf.clear();
                self.wspare = buf;
            }
            if let Some(e) = self.werr.take() {
                return Err(e);
            }
            if self.wbuf.is_empty() {
                return Ok(());
            }
            let mut buf = std::mem::take(&mut self.wspare);
            std::mem::swap(&mut buf, &mut self.wbuf);
            match self.driver.submit(Op::write(self.raw, buf).exact().owned()) {
                Ok(f) => self.writing = Some(f),
                Err(e) => {
                    let (e, op) = e.into_parts();
                    let lost = op.into_buf().map_or(0, |b| b.len());
                    return Err(io::Error::other(format!(
                        "{e} ({lost} acknowledged bytes not written)"
                    )));
                }
            }
        }
    }

    /// Waits for everything acknowledged to be written, then shuts the write side down
    /// (`SHUT_WR`). A connection the peer already reset (`ENOTCONN`) counts as shut
    /// down, as tokio's `TcpStream` answers.
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
        match self.poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        // SAFETY: shutdown(2) on our own descriptor; it does not block.
        let rc = unsafe { libc::shutdown(self.raw, libc::SHUT_WR) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // A pipe end is no socket: nothing to shut down but the writes. A reset
            // connection is shut already.
            if !matches!(e.raw_os_error(), Some(libc::ENOTSOCK | libc::ENOTCONN)) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until every acknowledged byte is written (the write-behind buffer is empty
    /// and no write op is in flight); reports a write failure not reported yet.
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
        if let Err(e) = self.drive_writes(cx) {
            return Poll::Ready(Err(e));
        }
        if self.writing.is_some() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// The error a failed write-behind op is reported with: a failure keeps its errno (so
/// `EPIPE`, `ECONNRESET` match what tokio's stream reports); a cancel or a deadline
/// says so, with the count of acknowledged bytes that were not written.
fn write_error(outcome: Outcome, lost: usize) -> io::Error {
    match outcome {
        Outcome::Failed(e) => io::Error::from_raw_os_error(e.raw_os_error()),
        Outcome::Canceled { .. } => io::Error::new(
            io::ErrorKind::Interrupted,
            format!("write canceled: {lost} acknowledged bytes not written"),
        ),
        Outcome::TimedOut { .. } | Outcome::Detached => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("write timed out: {lost} acknowledged bytes not written"),
        ),
        Outcome::Done(_) => io::Error::new(
            io::ErrorKind::WriteZero,
            format!("write stopped short: {lost} acknowledged bytes not written"),
        ),
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Cancel the read, let acknowledged writes finish (bounded by LINGER), then
        // retire: the descriptor stays open until those ops' completions are in.
        self.reading = None;
        let tail = std::mem::take(&mut self.wbuf);
        let until = std::time::Instant::now() + LINGER;
        match self.writing.take() {
            Some(f) => f.linger(tail, until),
            None if !tail.is_empty() => self.driver.lock().write_detached(self.raw, tail, until),
            None => {}
        }
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
        let c = self.driver.submit(Op::accept(self.raw).owned())?.await;
        match c.outcome {
            // SAFETY: the kernel returned a fresh descriptor that nobody else owns.
            Outcome::Done(fd) => Ok(Stream::new(&self.driver, unsafe {
                OwnedFd::from_raw_fd(fd as RawFd)
            })),
            o => Err(failure(o)),
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

/// The error an op that did not end `Done` (and moved nothing) stands for.
fn failure(o: Outcome) -> io::Error {
    match o.into_result() {
        Err(e) => e,
        // Only a transfer that moved bytes converts to `Ok`; callers serve those first.
        Ok(_) => io::Error::from_raw_os_error(libc::ECANCELED),
    }
}
