//! LazyRead's engine: the chunk reads go through an internal sink of the ring, which
//! publishes (or poisons) each chunk as its read ends and refills the window.

use super::region::{ChunkError, LazyMode, LazyRegion, Options, PublishStats, StagingBuf};
use super::wait::WaitRange;
use super::{env_mode, LazyError, LazyOptions};
use crate::id::OpId;
use crate::op::{Op, Payload};
use crate::outcome::{Errno, Outcome};
use crate::ring::Sink;
use crate::{GroupId, Handle, Ring};
use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

/// How many new chunk reads one completion may start while the window opens.
const RAMP: usize = 2;

/// Which chunks are issued, and the staging buffers between reads. Its size follows the
/// chunks in flight, never the length of the region.
struct Issue {
    /// The next chunk to issue (chunks are issued in offset order).
    next: usize,
    in_flight: usize,
    canceled: bool,
    /// The op id of each chunk whose read is in flight.
    ids: HashMap<usize, OpId>,
    spare: Vec<StagingBuf>,
}

/// Everything a LazyRead, its views and its sink share.
pub(crate) struct State {
    pub(super) region: LazyRegion,
    fd: RawFd,
    offset: u64,
    ring_id: u32,
    handle: Handle,
    group: Option<GroupId>,
    window: usize,
    issue: Mutex<Issue>,
    /// Bytes the file gave (smaller than the region when it ended early).
    data_len: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
    has_wakers: AtomicBool,
    /// LazyRead + views alive; the last one to go cancels what is left.
    owners: AtomicUsize,
}

impl State {
    fn issue(&self) -> MutexGuard<'_, Issue> {
        self.issue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of a staging buffer: a chunk, or the whole region when it is shorter.
    fn staging_len(&self) -> usize {
        self.region.chunk_range(0).len()
    }

    fn chunk_op(&self, chunk: usize, staging: StagingBuf) -> Op {
        let r = self.region.chunk_range(chunk);
        // `exact`: a short read is retried until the chunk is full or the file ends.
        let op = Op::read_staging(self.fd, self.offset + r.start as u64, staging, r.len()).exact();
        match self.group {
            Some(g) => op.group(g),
            None => op,
        }
    }

    /// Poisons `chunk` with `errno` (the checked API reports it; a raw touch gets SIGBUS).
    fn fail(&self, chunk: usize, errno: Errno) {
        self.fail_range(chunk..chunk + 1, errno);
    }

    /// Poisons the chunks of `chunks` still pending, in one pass.
    fn fail_range(&self, chunks: Range<usize>, errno: Errno) {
        if chunks.is_empty() {
            return;
        }
        if let Err(e) = self.region.poison_range(chunks.clone(), errno) {
            tracing::warn!(?chunks, error = %e, "LazyRead: poisoning chunks failed");
        }
    }

    /// Takes every chunk not issued yet (on cancel); returns them and the ids in flight.
    fn stop(&self) -> (Range<usize>, Vec<OpId>) {
        let mut is = self.issue();
        is.canceled = true;
        let n = self.region.chunk_count();
        let rest = is.next..n;
        is.next = n;
        is.spare.clear();
        let ids = is.ids.values().copied().collect();
        (rest, ids)
    }

    /// Cancels what is left: chunks not issued are poisoned now; reads in flight are asked
    /// to stop (through the ring's handle: processed when the ring is next driven) and are
    /// poisoned when their completions arrive. Returns how many chunks were reached.
    pub(super) fn cancel(&self) -> usize {
        let (rest, ids) = self.stop();
        let reached = rest.len() + ids.len();
        self.fail_range(rest, Errno::CANCELED);
        for id in ids {
            // Err(Closed): the ring is gone and has ended every op already.
            let _ = self.handle.cancel(id);
        }
        self.wake();
        reached
    }

    /// Wakes the async waiters (the futex waiters are woken by the region itself).
    pub(super) fn wake(&self) {
        if self.has_wakers.swap(false, Ordering::AcqRel) {
            let ws = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
            for w in ws {
                w.wake();
            }
        }
    }

    /// Registers `w` to be woken at the next chunk resolution.
    pub(super) fn register(&self, w: &Waker) {
        let mut ws = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !ws.iter().any(|x| x.will_wake(w)) {
            ws.push(w.clone());
        }
        self.has_wakers.store(true, Ordering::Release);
    }

    pub(super) fn check<'a>(
        &self,
        r: Option<Result<&'a [u8], ChunkError>>,
    ) -> Option<Result<&'a [u8], LazyError>> {
        r.map(|r| {
            r.map_err(|e| match e {
                ChunkError::Failed { chunk, errno } => LazyError::Chunk {
                    chunk,
                    offset: self.offset + self.region.chunk_range(chunk).start as u64,
                    errno,
                },
                ChunkError::OutOfBounds { start, end, len } => {
                    LazyError::OutOfBounds { start, end, len }
                }
            })
        })
    }

    fn progress(&self) -> LazyProgress {
        let (published, failed, chunks) = self.region.progress();
        LazyProgress {
            published,
            failed,
            chunks,
            in_flight: self.issue().in_flight,
        }
    }
}

impl Sink for State {
    fn complete(&self, token: u32, outcome: Outcome, payload: Payload, next: &mut Vec<(u32, Op)>) {
        let chunk = token as usize;
        let staging = match payload {
            Payload::Staging(s) => Some(s),
            _ => None,
        };
        let mut stop = false;
        let mut eof = false;
        let spare = match outcome {
            Outcome::Done(n) => {
                let r = self.region.chunk_range(chunk);
                if n < r.len() {
                    // End of file (the read is `exact`: only the end makes it short): the
                    // rest of the chunk, and of the region, reads as zeros.
                    self.data_len.fetch_min(r.start + n, Ordering::AcqRel);
                    eof = true;
                }
                match staging {
                    Some(st) => match self.region.publish(chunk, st, n) {
                        Ok(st) => Some(st),
                        Err(e) => {
                            tracing::warn!(chunk, error = %e, "LazyRead: publishing failed");
                            let errno = match &e.error {
                                super::region::RegionError::Uffd(u) => u.errno(),
                                _ => None,
                            };
                            self.fail(chunk, errno.unwrap_or(Errno::IO));
                            Some(e.staging)
                        }
                    },
                    None => {
                        self.fail(chunk, Errno::IO);
                        None
                    }
                }
            }
            Outcome::Failed(errno) => {
                self.fail(chunk, errno);
                staging
            }
            Outcome::Canceled { .. } => {
                stop = true;
                self.fail(chunk, Errno::CANCELED);
                staging
            }
            Outcome::TimedOut { .. } | Outcome::Detached => {
                stop = true;
                self.fail(chunk, Errno::TIMEDOUT);
                staging
            }
        };
        let n = self.region.chunk_count();
        let mut is = self.issue();
        is.ids.remove(&chunk);
        is.in_flight -= 1;
        let mut rest = 0..0;
        let mut past_end = None;
        if stop || is.canceled {
            // One chunk canceled (by its group, a deadline, the LazyRead): stop them all.
            is.canceled = true;
            rest = is.next..n;
            is.next = n;
            is.spare.clear();
        } else if eof {
            // The chunks not issued yet lie past the end of the file: nothing to read
            // there. They are resolved as zeros at once, whatever the region's length.
            past_end = Some(is.next);
            is.next = n;
            is.spare.clear();
        } else {
            if let Some(st) = spare {
                is.spare.push(st);
            }
            let mut started = 0;
            while started < RAMP && is.in_flight < self.window && is.next < n {
                let c = is.next;
                is.next += 1;
                let st = match is.spare.pop() {
                    Some(st) => st,
                    None => match StagingBuf::new(self.staging_len()) {
                        Ok(st) => st,
                        Err(e) => {
                            tracing::warn!(chunk = c, error = %e, "LazyRead: no staging memory");
                            self.fail(c, Errno::from_io_error(&e).unwrap_or(Errno::NOMEM));
                            continue;
                        }
                    },
                };
                is.in_flight += 1;
                next.push((c as u32, self.chunk_op(c, st)));
                started += 1;
            }
            if is.next == n {
                is.spare.clear();
            }
        }
        drop(is);
        self.fail_range(rest, Errno::CANCELED);
        if let Some(first) = past_end {
            self.region.publish_zeros_to_end(first);
        }
        self.wake();
    }

    fn submitted(&self, token: u32, id: OpId) {
        let chunk = token as usize;
        let mut is = self.issue();
        // A read already resolved (completed inside submit, canceled group) keeps no id.
        if self.region.chunk_state(chunk) == Some(super::region::ChunkState::Pending) {
            is.ids.insert(chunk, id);
            if is.canceled {
                drop(is);
                let _ = self.handle.cancel(id);
            }
        }
    }

    fn closed(&self) {
        // Reads leaked at teardown never complete: fail what is left so nobody waits forever.
        let _ = self.stop();
        self.fail_range(0..self.region.chunk_count(), Errno::CANCELED);
        self.wake();
    }
}

/// Chunk counts of a LazyRead.
///
/// ```
/// let p = quell::lazy::LazyProgress { published: 3, failed: 1, chunks: 4, in_flight: 0 };
/// assert!(p.is_complete());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LazyProgress {
    /// Chunks published (readable).
    pub published: usize,
    /// Chunks failed or canceled (poisoned).
    pub failed: usize,
    /// All chunks.
    pub chunks: usize,
    /// Chunk reads in flight now.
    pub in_flight: usize,
}

impl LazyProgress {
    /// Whether every chunk is published or failed.
    ///
    /// ```
    /// let p = quell::lazy::LazyProgress { published: 1, failed: 0, chunks: 2, in_flight: 1 };
    /// assert!(!p.is_complete());
    /// ```
    pub fn is_complete(&self) -> bool {
        self.published + self.failed == self.chunks
    }
}

impl Ring {
    /// Reads `len` bytes of `fd` at `offset` into a fresh region and returns at once; each
    /// page of the region becomes readable as soon as its chunk has landed (see
    /// [`crate::lazy`]). The chunk reads are ordinary ops of this ring (listed by
    /// [`ops`](Ring::ops), canceled with their group), consumed internally: they yield no
    /// user completions. They make progress whenever this ring is driven.
    ///
    /// Errors, all before anything is allocated or read: a zero length, a length beyond
    /// this system's memory ([`LazyError::TooLong`], see [`max_len`](crate::lazy::max_len)),
    /// an offset + length beyond `i64::MAX`, a bad chunk size, a descriptor that is not
    /// open or has no offsets (a pipe, a socket), [`LazyMode::Uffd`] without userfaultfd,
    /// memory that cannot be mapped, or a closed ring. A length beyond the end of the file
    /// is not an error: reading stops there, and the rest reads as zeros.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::new()?;
    /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
    /// assert_eq!(lazy.wait_range(&mut ring, 0..4)?, b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn read_lazy(
        &mut self,
        fd: RawFd,
        offset: u64,
        len: usize,
        opts: LazyOptions,
    ) -> Result<LazyRead, LazyError> {
        if len == 0 {
            return Err(LazyError::InvalidArgument("length is zero"));
        }
        // Before anything is allocated or mapped: what no memory here could hold.
        let max = super::max_len();
        if len > max {
            return Err(LazyError::TooLong { len, max });
        }
        if offset
            .checked_add(len as u64)
            .map_or(true, |e| e > i64::MAX as u64)
        {
            return Err(LazyError::InvalidArgument("offset + length overflows"));
        }
        if opts.chunk_size > 0 && len.div_ceil(opts.chunk_size) as u64 > 1 << 32 {
            // A chunk's index travels as a 32-bit token of the ring's sink.
            return Err(LazyError::InvalidArgument(
                "more than 2^32 chunks: use a larger chunk size",
            ));
        }
        if fd < 0 {
            return Err(LazyError::Ring(crate::Error::InvalidFd { fd }));
        }
        check_seekable(fd)?;
        let mode = match (opts.mode, env_mode()) {
            (LazyMode::Auto, Some(m)) => m,
            (m, _) => m,
        };
        let region = LazyRegion::with_options(
            len,
            Options {
                chunk_size: opts.chunk_size,
                mode,
                force_copy: opts.force_copy,
                ..Options::default()
            },
        )?;
        let first = StagingBuf::new(region.chunk_range(0).len()).map_err(LazyError::Map)?;
        let state = Arc::new(State {
            region,
            fd,
            offset,
            ring_id: self.ring_id(),
            handle: self.handle(),
            group: opts.group,
            window: opts.window.max(1),
            issue: Mutex::new(Issue {
                next: 1,
                in_flight: 1,
                canceled: false,
                ids: HashMap::new(),
                spare: Vec::new(),
            }),
            data_len: AtomicUsize::new(len),
            wakers: Mutex::new(Vec::new()),
            has_wakers: AtomicBool::new(false),
            owners: AtomicUsize::new(1),
        });
        let sink = self.add_sink(state.clone());
        // The window opens from one read so the first chunk lands as early as possible;
        // each completion starts up to RAMP more.
        let op = state.chunk_op(0, first);
        if let Err(e) = self.submit_to_sink(sink, 0, op) {
            self.drop_idle_sink(sink);
            return Err(LazyError::Ring(e.into_parts().0));
        }
        Ok(LazyRead { state })
    }
}

/// LazyRead reads at offsets: a pipe or a socket has none (io_uring would ignore the
/// offset and the portable backend answer `ESPIPE`), so it is refused here, on both
/// backends alike. A number that is not open is refused as the ring would refuse it.
fn check_seekable(fd: RawFd) -> Result<(), LazyError> {
    // SAFETY: borrowed for this one call; fstat of a number that is not open fails EBADF.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match rustix::fs::fstat(borrowed) {
        Ok(st) => {
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFIFO || kind == libc::S_IFSOCK {
                return Err(LazyError::InvalidArgument(
                    "not a seekable file (a pipe or a socket): LazyRead reads at offsets",
                ));
            }
            Ok(())
        }
        Err(rustix::io::Errno::BADF) => Err(LazyError::Ring(crate::Error::InvalidFd { fd })),
        // Anything else: let the chunk reads say what is wrong.
        Err(_) => Ok(()),
    }
}

/// A region being filled by chunk reads: see [`crate::lazy`] and
/// [`Ring::read_lazy`](crate::Ring::read_lazy).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let file = std::fs::File::open("/proc/self/exe")?;
/// let mut ring = quell::Ring::new()?;
/// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 64, Default::default())?;
/// let bytes = lazy.finish(&mut ring)?;
/// assert_eq!(&bytes[..4], b"\x7fELF");
/// # Ok(()) }
/// ```
pub struct LazyRead {
    state: Arc<State>,
}

/// A `Send + Sync` clonable view of a [`LazyRead`] for other threads: raw access and
/// checked waits that sleep until the ring's owner publishes (they do not drive the ring).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let file = std::fs::File::open("/proc/self/exe")?;
/// let mut ring = quell::Ring::new()?;
/// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
/// let view = lazy.view();
/// let t = std::thread::spawn(move || view.wait_range(0..4).map(|b| b.to_vec()));
/// lazy.finish(&mut ring)?; // the owner drives the ring
/// assert_eq!(t.join().unwrap()?, b"\x7fELF");
/// # Ok(()) }
/// ```
pub struct LazyView {
    state: Arc<State>,
}

macro_rules! shared_api {
    () => {
        /// Length of the region in bytes.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 100, Default::default())?;
        /// assert_eq!(lazy.len(), 100);
        /// # Ok(()) }
        /// ```
        pub fn len(&self) -> usize {
            self.state.region.len()
        }

        /// Always false (empty LazyReads are refused).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 1, Default::default())?;
        /// assert!(!lazy.is_empty());
        /// # Ok(()) }
        /// ```
        pub fn is_empty(&self) -> bool {
            false
        }

        /// The effective mode: [`LazyMode::Uffd`] (raw access works) or
        /// [`LazyMode::Checked`].
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let opts = quell::lazy::LazyOptions::default().mode(quell::lazy::LazyMode::Checked);
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 1, opts)?;
        /// assert_eq!(lazy.mode(), quell::lazy::LazyMode::Checked);
        /// # Ok(()) }
        /// ```
        pub fn mode(&self) -> LazyMode {
            self.state.region.mode()
        }

        /// Chunk size in bytes.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 1, Default::default())?;
        /// assert_eq!(lazy.chunk_size(), quell::lazy::DEFAULT_CHUNK_SIZE);
        /// # Ok(()) }
        /// ```
        pub fn chunk_size(&self) -> usize {
            self.state.region.chunk_size()
        }

        /// The whole region, raw. Pages not yet published block the reading thread in the
        /// kernel until the ring's owner publishes them; pages of failed or canceled chunks
        /// raise `SIGBUS`. Never touch an unpublished page from the ring's own thread.
        /// In checked mode this is refused ([`LazyError::RawViewUnavailable`]) until every
        /// chunk is published.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
        /// lazy.finish(&mut ring)?;
        /// assert_eq!(lazy.raw()?, b"\x7fELF");
        /// # Ok(()) }
        /// ```
        pub fn raw(&self) -> Result<&[u8], LazyError> {
            Ok(self.state.region.as_slice()?)
        }

        /// The bytes of `range` if every chunk covering it is published, its error if one
        /// failed, `None` if some are still pending. Never blocks, does not drive the ring.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
        /// assert!(lazy.try_range(0..4).is_none()); // not driven yet
        /// lazy.finish(&mut ring)?;
        /// assert_eq!(lazy.try_range(0..4).unwrap()?, b"\x7fELF");
        /// # Ok(()) }
        /// ```
        pub fn try_range(&self, range: Range<usize>) -> Option<Result<&[u8], LazyError>> {
            self.state.check(self.state.region.try_range(range))
        }

        /// Waits, without driving the ring, until `range` is published or fails: a future
        /// that any executor can poll. The ring's owner must be driving the ring (its loop,
        /// or the futures layer) for it to resolve.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
        /// use std::future::Future;
        /// let fut = lazy.wait_range_async(0..4);
        /// lazy.finish(&mut ring)?;
        /// // Already published: the first poll is ready.
        /// struct Noop;
        /// impl std::task::Wake for Noop { fn wake(self: std::sync::Arc<Self>) {} }
        /// let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
        /// let mut cx = std::task::Context::from_waker(&waker);
        /// let mut fut = std::pin::pin!(fut);
        /// assert!(matches!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(b"\x7fELF"))));
        /// # Ok(()) }
        /// ```
        pub fn wait_range_async(&self, range: Range<usize>) -> WaitRange<'_> {
            WaitRange::new(&self.state, range)
        }

        /// Chunk counts so far.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
        /// lazy.finish(&mut ring)?;
        /// assert!(lazy.progress().is_complete());
        /// # Ok(()) }
        /// ```
        pub fn progress(&self) -> LazyProgress {
            self.state.progress()
        }

        /// Bytes the file gave: the region's length unless a read met end of file (the
        /// rest of the region then reads as zeros). Final once every chunk is resolved.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// let file = std::fs::File::open("/proc/self/comm")?; // a few bytes
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4096, Default::default())?;
        /// lazy.finish(&mut ring)?;
        /// assert!(lazy.data_len() < 4096);
        /// # Ok(()) }
        /// ```
        pub fn data_len(&self) -> usize {
            self.state.data_len.load(Ordering::Acquire)
        }

        /// Bytes published by each path (`UFFDIO_MOVE`, `UFFDIO_COPY` or `memcpy`,
        /// `UFFDIO_ZEROPAGE`).
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4096, Default::default())?;
        /// lazy.finish(&mut ring)?;
        /// let s = lazy.stats();
        /// assert_eq!(s.moved + s.copied, 4096);
        /// # Ok(()) }
        /// ```
        pub fn stats(&self) -> PublishStats {
            self.state.region.stats()
        }

        /// Cancels the chunks not yet published: those not issued are poisoned at once,
        /// reads in flight are asked to stop (the request reaches the ring when it is next
        /// driven) and poisoned when they end. Published pages keep their data. Returns how
        /// many chunks were reached. Callable from any thread.
        ///
        /// ```
        /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # use std::os::fd::AsRawFd;
        /// # let file = std::fs::File::open("/proc/self/exe")?;
        /// # let mut ring = quell::Ring::new()?;
        /// let opts = quell::lazy::LazyOptions::default().chunk_size(4096);
        /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 64 << 10, opts)?;
        /// lazy.cancel();
        /// let e = lazy.finish(&mut ring).unwrap_err();
        /// assert_eq!(e.errno(), Some(quell::Errno::CANCELED));
        /// # Ok(()) }
        /// ```
        pub fn cancel(&self) -> usize {
            self.state.cancel()
        }
    };
}

impl LazyRead {
    shared_api!();

    fn check_ring(&self, ring: &Ring) -> Result<(), LazyError> {
        if ring.ring_id() != self.state.ring_id {
            return Err(LazyError::ForeignRing);
        }
        Ok(())
    }

    /// Drives `ring` until every chunk covering `range` is published (then its bytes) or
    /// one of them failed (then its error, without waiting for the others).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::fd::AsRawFd;
    /// # let file = std::fs::File::open("/proc/self/exe")?;
    /// # let mut ring = quell::Ring::new()?;
    /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
    /// assert_eq!(lazy.wait_range(&mut ring, 1..4)?, b"ELF");
    /// # Ok(()) }
    /// ```
    pub fn wait_range(&self, ring: &mut Ring, range: Range<usize>) -> Result<&[u8], LazyError> {
        self.check_ring(ring)?;
        loop {
            if let Some(r) = self.try_range(range.clone()) {
                return r;
            }
            self.drive(ring)?;
        }
    }

    /// Drives `ring` until every chunk is resolved; returns the file's bytes (the first
    /// [`data_len`](LazyRead::data_len) bytes of the region) or the first failed chunk's
    /// error.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::fd::AsRawFd;
    /// # let file = std::fs::File::open("/proc/self/exe")?;
    /// # let mut ring = quell::Ring::new()?;
    /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
    /// assert_eq!(lazy.finish(&mut ring)?, b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn finish(&self, ring: &mut Ring) -> Result<&[u8], LazyError> {
        self.check_ring(ring)?;
        while !self.state.region.is_complete() {
            self.drive(ring)?;
        }
        let all = self
            .try_range(0..self.len())
            .expect("every chunk is resolved")?;
        Ok(&all[..self.data_len()])
    }

    fn drive(&self, ring: &mut Ring) -> Result<(), LazyError> {
        ring.turn(None)?;
        if ring.sinks_idle() && !self.state.region.is_complete() {
            // Nothing of this ring can publish (should not happen: every issued chunk is
            // an op of this ring, and a closed ring fails what is left); do not spin.
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// A `Send + Sync` view for other threads.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::fd::AsRawFd;
    /// # let file = std::fs::File::open("/proc/self/exe")?;
    /// # let mut ring = quell::Ring::new()?;
    /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
    /// let view = lazy.view();
    /// assert_eq!(view.len(), 4);
    /// # Ok(()) }
    /// ```
    pub fn view(&self) -> LazyView {
        self.state.owners.fetch_add(1, Ordering::AcqRel);
        LazyView {
            state: self.state.clone(),
        }
    }
}

impl LazyView {
    shared_api!();

    /// Sleeps until every chunk covering `range` is published (then its bytes) or one of
    /// them failed. Does not drive the ring: the owner's loop must.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::fd::AsRawFd;
    /// # let file = std::fs::File::open("/proc/self/exe")?;
    /// # let mut ring = quell::Ring::new()?;
    /// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
    /// lazy.finish(&mut ring)?;
    /// assert_eq!(lazy.view().wait_range(0..4)?, b"\x7fELF");
    /// # Ok(()) }
    /// ```
    pub fn wait_range(&self, range: Range<usize>) -> Result<&[u8], LazyError> {
        self.state
            .check(Some(self.state.region.wait_range(range)))
            .expect("wait_range always resolves")
    }
}

impl Clone for LazyView {
    fn clone(&self) -> Self {
        self.state.owners.fetch_add(1, Ordering::AcqRel);
        LazyView {
            state: self.state.clone(),
        }
    }
}

fn release(state: &State) {
    if state.owners.fetch_sub(1, Ordering::AcqRel) == 1 && !state.region.is_complete() {
        // The last LazyRead/LazyView is gone, and every reference into the region was
        // borrowed from one of them: nobody can read it, so skip poisoning its pages.
        state.region.abandon();
        state.cancel();
    }
}

impl Drop for LazyRead {
    fn drop(&mut self) {
        release(&self.state);
    }
}

impl Drop for LazyView {
    fn drop(&mut self) {
        release(&self.state);
    }
}

impl std::fmt::Debug for LazyRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRead")
            .field("region", &self.state.region)
            .field("fd", &self.state.fd)
            .field("offset", &self.state.offset)
            .finish()
    }
}

impl std::fmt::Debug for LazyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyView")
            .field("region", &self.state.region)
            .finish()
    }
}
