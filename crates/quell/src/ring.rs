//! The ring: accepts ops, keeps them in its op table and user-space queue, gives them
//! to the backend within the dispatch window, and turns backend results into honest
//! completions.

#[path = "chain.rs"]
pub(crate) mod chain;

use crate::backend::{portable, uring, Backend, BackendConfig, BackendKind, BackendParts};
use crate::classify::FdCache;
use crate::completion::Completion;
use crate::error::{Error, SubmitError};
use crate::group::{GroupId, GroupOptions, GroupStats, Groups};
use crate::handle::{Handle, Request, Shared};
use crate::id::{key_of, split_key, OpId};
use crate::info::{OpInfo, Stats};
use crate::mailbox::Mailbox;
use crate::op::{Op, OpKind, Payload, NO_OFFSET};
use crate::outcome::{CancelClass, CancelStatus, OpState, Outcome};
use crate::signal::{Binding, SignalAction};
use crate::table::{
    SlotState, Table, F_ANCHORED, F_CANCEL, F_CANCEL_SENT, F_CHAIN, F_DECLARED, F_DELIVERED,
    F_EXACT, F_KERNEL_DONE, F_REQUEUES, F_REQUEUE_ONE, F_SINK, F_SPLIT, F_TIMEOUT,
};
use crate::timer::{Timers, GRACE_TARGET, GROUP_TARGET};
use crate::wake::Doorbell;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod identity;
mod inline;
mod lane;
mod ready;
mod sink;
pub(crate) use sink::Sink;
mod spans;
// Checkpoint/restore and introspection (DESIGN I9) live in their own files, as child
// modules so they can read the op table.
#[path = "introspect.rs"]
mod introspect;
#[path = "quiesce.rs"]
pub(crate) mod quiesce;
#[path = "resubmit.rs"]
pub(crate) mod resubmit;

static NEXT_RING_ID: AtomicU32 = AtomicU32::new(1);

/// Which backend to use.
///
/// ```
/// let ring = quell::Ring::builder().backend(quell::BackendChoice::Auto).build().unwrap();
/// # drop(ring);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring where it works, the portable backend otherwise. The environment
    /// variable `QUELL_BACKEND=uring|portable` overrides this choice.
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// The portable backend (epoll + interruptible thread pool).
    Portable,
}

/// Configures and builds a [`Ring`].
///
/// ```
/// let ring = quell::Ring::builder()
///     .capacity(4096)
///     .max_in_flight(256)
///     .build()
///     .unwrap();
/// assert_eq!(ring.capacity(), 4096);
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    capacity: usize,
    max_in_flight: u32,
    sq_entries: u32,
    backend: BackendChoice,
    pool_threads: usize,
    teardown_timeout: Duration,
    part_size: u32,
    link_chains: bool,
    direct_slots: u32,
    interrupt_grace: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            capacity: 16384,
            max_in_flight: 4096,
            sq_entries: 256,
            backend: BackendChoice::Auto,
            pool_threads: 16,
            teardown_timeout: Duration::from_secs(30),
            part_size: 8 << 20,
            link_chains: true,
            direct_slots: 1024,
            interrupt_grace: Duration::from_millis(500),
        }
    }
}

impl Builder {
    /// Most live ops (1..=65,536; default 16,384). Slots are allocated lazily in pages.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().capacity(2).build()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// // A third live op is refused (back-pressure), its buffer handed back.
    /// let err = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8])).unwrap_err();
    /// assert!(matches!(err.error(), quell::Error::TableFull { capacity: 2 }));
    /// assert_eq!(err.into_op().into_buf().unwrap().len(), 8);
    /// # ring.cancel_all();
    /// # Ok(()) }
    /// ```
    pub fn capacity(mut self, n: usize) -> Builder {
        self.capacity = n.clamp(1, crate::table::MAX_CAPACITY);
        self
    }

    /// Most ops given to the backend at once (the dispatch window; default 4,096).
    /// The rest wait in quell's own queue, where canceling them is certain.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{Op, OpState, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
    /// let first = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let second = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.poll()?;
    /// let state = |ring: &quell::Ring, id| ring.ops().into_iter().find(|o| o.id == id).unwrap().state;
    /// assert_eq!(state(&ring, first), OpState::InFlight);
    /// assert_eq!(state(&ring, second), OpState::Queued); // waits for room in the window
    /// // Canceling a queued op is certain: no kernel involved.
    /// ring.cancel(second)?;
    /// assert_eq!(ring.wait_for(second)?.outcome, Outcome::Canceled { transferred: 0 });
    /// # ring.cancel(first)?;
    /// # ring.wait_for(first)?;
    /// # Ok(()) }
    /// ```
    pub fn max_in_flight(mut self, n: u32) -> Builder {
        self.max_in_flight = n.max(1);
        self
    }

    /// Submission queue size for io_uring (default 256).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A small submission queue still takes any number of ops: they are fed in batches.
    /// let mut ring = quell::Ring::builder().sq_entries(8).build()?;
    /// for i in 0..100 {
    ///     ring.submit(quell::Op::nop().user_data(i))?;
    /// }
    /// let mut done = 0;
    /// while done < 100 {
    ///     ring.wait(1, None)?;
    ///     done += ring.completions().filter(|c| c.outcome.is_done()).count();
    /// }
    /// assert!(ring.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn sq_entries(mut self, n: u32) -> Builder {
        self.sq_entries = n.max(1);
        self
    }

    /// Chooses the backend.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{BackendChoice, BackendKind, Ring};
    /// // E.g. to test the fallback path on a machine that has io_uring.
    /// let ring = Ring::builder().backend(BackendChoice::Portable).build()?;
    /// assert_eq!(ring.backend(), BackendKind::Portable);
    /// assert!(ring.backend_reason().contains("forced"));
    /// # Ok(()) }
    /// ```
    pub fn backend(mut self, choice: BackendChoice) -> Builder {
        self.backend = choice;
        self
    }

    /// Worker threads of the blocking pool (default 16).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut ring = quell::Ring::builder().pool_threads(2).build()?;
    /// // Four blocking calls on two workers: two wait for a free worker, all finish.
    /// for i in 0..4 {
    ///     ring.submit(quell::Op::blocking(|| {
    ///         std::thread::sleep(Duration::from_millis(5));
    ///         Ok(1)
    ///     }).user_data(i))?;
    /// }
    /// ring.wait(4, None)?;
    /// assert_eq!(ring.completions().filter(|c| c.outcome == quell::Outcome::Done(1)).count(), 4);
    /// # Ok(()) }
    /// ```
    pub fn pool_threads(mut self, n: usize) -> Builder {
        self.pool_threads = n.max(1);
        self
    }

    /// How long dropping the ring waits for ops that cannot be canceled before it
    /// leaks their memory rather than free it under the kernel (default 30 s).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().teardown_timeout(Duration::from_secs(2)).build()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// // A socket read can be canceled: shutdown needs none of the timeout, leaks nothing.
    /// let left = ring.shutdown();
    /// assert!(left[0].outcome.is_canceled());
    /// assert_eq!(ring.stats().leaked_at_teardown, 0);
    /// # Ok(()) }
    /// ```
    pub fn teardown_timeout(mut self, d: Duration) -> Builder {
        self.teardown_timeout = d;
        self
    }

    /// How long an Interruptible op (FUSE, NFS, a pool job) whose deadline fired may take
    /// to stop before the ring releases its caller with `Detached` (default 500 ms).
    ///
    /// The deadline interrupts the op at once, and that usually ends it within a
    /// millisecond (`TimedOut`). Some waits no interrupt reaches: a read of a *cached*
    /// FUSE file waiting on the page lock, a closure that ignores `EINTR`. A deadline
    /// still releases the caller: after this grace the op is `Detached`, its memory kept
    /// by the ring until the kernel (or worker) is done.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::{Duration, Instant};
    /// let mut ring = quell::Ring::builder().interrupt_grace(Duration::from_millis(50)).build()?;
    /// let stubborn = quell::Op::blocking(|| {
    ///     std::thread::sleep(Duration::from_millis(300)); // resumes after EINTR
    ///     Ok(0)
    /// });
    /// let id = ring.submit(stubborn.deadline(Instant::now() + Duration::from_millis(20)))?;
    /// let t = Instant::now();
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Detached);
    /// assert!(t.elapsed() < Duration::from_millis(250)); // released before the sleep ends
    /// # Ok(()) }
    /// ```
    pub fn interrupt_grace(mut self, d: Duration) -> Builder {
        self.interrupt_grace = d;
        self
    }

    /// Positioned reads and writes longer than this are issued in parts of this size
    /// (default 8 MiB), one after the other, all sharing the op's cancel flag: a cancel
    /// or deadline stops the parts not yet dispatched (I6). A part that fails after
    /// earlier ones moved bytes ends the op `Done(bytes moved)`, as `read(2)`/`write(2)`
    /// report a partial transfer (the error comes back from the next call). Rounded down
    /// to 4 KiB.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// let mut ring = quell::Ring::builder().part_size(4096).build()?;
    /// // Issued as three parts of at most 4 KiB, completed as one op.
    /// let id = ring.submit(quell::Op::read_at(file.as_raw_fd(), 0, vec![0u8; 10_000]))?;
    /// let c = ring.wait_for(id)?;
    /// assert_eq!(c.outcome, quell::Outcome::Done(10_000));
    /// assert_eq!(c.data(), &std::fs::read("/proc/self/exe")?[..10_000]);
    /// # Ok(()) }
    /// ```
    pub fn part_size(mut self, bytes: u32) -> Builder {
        self.part_size = (bytes & !4095).max(4096);
        self
    }

    /// Whether chains the kernel can sequence go to io_uring as linked SQEs (default
    /// `true`; see [`Ring::submit_chain`]). `false` sequences every chain in user space,
    /// as the portable backend does.
    ///
    /// ```
    /// let ring = quell::Ring::builder().link_chains(false).build().unwrap();
    /// assert_eq!(ring.stats().linked_chains, 0);
    /// ```
    pub fn link_chains(mut self, on: bool) -> Builder {
        self.link_chains = on;
        self
    }

    /// How many chains that open a file may be linked at once on io_uring (default
    /// 1,024, at most the `RLIMIT_NOFILE` soft limit): each holds one io_uring direct
    /// descriptor from its open to its close. A chain that finds none free is
    /// sequenced in user space (and opens a normal descriptor). 0 links no such chain.
    ///
    /// ```
    /// let ring = quell::Ring::builder().direct_descriptors(64).build().unwrap();
    /// assert_eq!(ring.stats().direct_descriptors, 0); // none held yet
    /// ```
    pub fn direct_descriptors(mut self, n: u32) -> Builder {
        self.direct_slots = n;
        self
    }

    /// Builds the ring.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{BackendChoice, BackendKind, Ring};
    /// // Insisting on io_uring fails with a reason where it is unavailable.
    /// match Ring::builder().backend(BackendChoice::Uring).build() {
    ///     Ok(ring) => assert_eq!(ring.backend(), BackendKind::Uring),
    ///     Err(e) => assert!(matches!(e, quell::Error::Unsupported { .. })),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<Ring, Error> {
        Ring::with_builder(self)
    }
}

/// One submission/completion context, owned by one thread (`Send`, not `Sync`).
///
/// Ops are submitted with [`submit`](Ring::submit), wait in quell's own queue until the
/// backend has room, and each yields exactly one [`Completion`], taken with
/// [`wait`](Ring::wait) + [`next_completion`](Ring::next_completion) or
/// [`wait_for`](Ring::wait_for). Cancels return at once; the truth comes in the
/// completion. Dropping the ring cancels what can be canceled and waits for the rest
/// before any buffer is freed.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsRawFd;
/// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 4096]))?;
/// assert_eq!(ring.cancel(id)?, quell::CancelStatus::Requested);
/// let c = ring.wait_for(id)?;
/// assert_eq!(c.outcome, quell::Outcome::Canceled { transferred: 0 });
/// assert_eq!(c.into_buf().unwrap().len(), 4096); // the buffer comes back
/// # Ok(()) }
/// ```
pub struct Ring {
    id: u32,
    epoch: Instant,
    table: Table,
    queue: VecDeque<u64>,
    completions: ready::Ready,
    backend: Backend,
    backend_reason: String,
    fds: FdCache,
    /// Ops given to the backend and not yet reaped (including detached ones).
    in_flight: u32,
    /// User ops queued or in flight whose completion is still to come.
    outstanding: u32,
    max_in_flight: u32,
    reaped: Vec<(u64, i64)>,
    requests: Vec<Request>,
    shared: Arc<Shared>,
    closed: bool,
    teardown_timeout: Duration,
    stats: Stats,
    groups: Groups,
    timers: Timers,
    scratch: Vec<u32>,
    signals: Vec<Binding>,
    part_size: u32,
    coarse_now: u64,
    /// A subscriber wants `quell::op` spans, or some are open (refreshed with
    /// `coarse_now`). Every per-op tracing hook sits behind this one branch.
    trace_ops: bool,
    spans: spans::Spans,
    chains: chain::Chains,
    /// Chains the kernel can sequence go to it linked (io_uring).
    link_chains: bool,
    deadline_memo: (Instant, u64),
    sinks: sink::Sinks,
    /// Quiesced: nothing is dispatched until `resume`.
    paused: bool,
    /// Ops a quiesce canceled and no checkpoint has described yet (see `quiesce`).
    quiesce_marked: Vec<u64>,
    dumps: Vec<introspect::DumpBinding>,
    /// Duplicates held by ops that waited in quell's queue (I12, `identity`).
    anchors: identity::Anchors,
    /// See `Builder::interrupt_grace`, in ns.
    interrupt_grace: u64,
    /// Closes duplicates of FUSE/NFS files off the ring's thread (a close flushes to
    /// the server, which may not answer).
    closer: crate::descriptor::Closer,
}

impl Ring {
    /// A ring with default settings on the best available backend.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// println!("quell on {} ({})", ring.backend(), ring.backend_reason());
    /// let id = ring.submit(quell::Op::nop())?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(0));
    /// # Ok(()) }
    /// ```
    pub fn new() -> Result<Ring, Error> {
        Builder::default().build()
    }

    /// A builder to configure a ring.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ring = quell::Ring::builder().capacity(64).max_in_flight(16).build()?;
    /// assert_eq!(ring.capacity(), 64);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn with_builder(b: Builder) -> Result<Ring, Error> {
        let doorbell = Arc::new(Doorbell::new().map_err(|e| Error::io("eventfd", e))?);
        let parts = BackendParts {
            config: BackendConfig {
                sq_entries: b.sq_entries,
                max_in_flight: b.max_in_flight,
                pool_threads: b.pool_threads,
                direct_slots: b.direct_slots,
            },
            doorbell: doorbell.clone(),
        };
        let (backend, reason) = choose_backend(b.backend, &parts)?;
        let id = NEXT_RING_ID.fetch_add(1, Ordering::Relaxed);
        let epoch = Instant::now();
        Ok(Ring {
            id,
            epoch,
            table: Table::new(b.capacity),
            queue: VecDeque::new(),
            completions: ready::Ready::default(),
            backend,
            backend_reason: reason,
            fds: FdCache::default(),
            in_flight: 0,
            outstanding: 0,
            max_in_flight: b.max_in_flight,
            reaped: Vec::new(),
            requests: Vec::new(),
            shared: Arc::new(Shared {
                ring_id: id,
                requests: Mailbox::new(),
                doorbell,
                closed: crate::sync::AtomicBool::new(false),
            }),
            closed: false,
            teardown_timeout: b.teardown_timeout,
            stats: Stats::default(),
            groups: Groups::new(),
            timers: Timers::default(),
            scratch: Vec::new(),
            signals: Vec::new(),
            part_size: b.part_size,
            coarse_now: 0,
            trace_ops: spans::wanted(),
            spans: spans::Spans::default(),
            chains: chain::Chains::default(),
            link_chains: b.link_chains,
            deadline_memo: (epoch, 0),
            sinks: sink::Sinks::default(),
            paused: false,
            quiesce_marked: Vec::new(),
            dumps: Vec::new(),
            anchors: identity::Anchors::default(),
            interrupt_grace: b.interrupt_grace.as_nanos().min(u64::MAX as u128 / 2) as u64,
            closer: crate::descriptor::Closer::default(),
        })
    }

    /// The backend in use.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ring = quell::Ring::new()?;
    /// match ring.backend() {
    ///     quell::BackendKind::Uring => println!("io_uring: file reads are submitted to the kernel"),
    ///     _ => println!("portable: file reads run on the thread pool"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Why this backend was chosen (for example why io_uring could not be used).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ring = quell::Ring::new()?;
    /// // Worth logging at start-up: it says why io_uring was not used, if it was not.
    /// assert!(!ring.backend_reason().is_empty());
    /// if ring.backend() == quell::BackendKind::Uring {
    ///     assert!(ring.backend_reason().contains("io_uring"));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn backend_reason(&self) -> &str {
        &self.backend_reason
    }

    /// Most live ops.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ring = quell::Ring::new()?;
    /// assert_eq!(ring.capacity(), 16_384); // the default
    /// assert_eq!(quell::Ring::builder().capacity(10).build()?.capacity(), 10);
    /// # Ok(()) }
    /// ```
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Ops whose completion has not been taken yet (queued, in flight, or completed
    /// and waiting in the completion queue).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::nop())?;
    /// ring.submit(quell::Op::nop())?;
    /// assert_eq!(ring.len(), 2);
    /// ring.wait(2, None)?;
    /// assert_eq!(ring.len(), 2); // finished, but the completions are not taken yet
    /// ring.completions().for_each(drop);
    /// assert_eq!(ring.len(), 0);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.outstanding as usize + self.completions.len()
    }

    /// Whether no op is outstanding and no completion is waiting.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::timeout(std::time::Duration::from_millis(1)))?;
    /// // A simple event loop: run until every op's completion has been handled.
    /// while !ring.is_empty() {
    ///     ring.wait(1, None)?;
    ///     for c in ring.completions() {
    ///         assert!(c.outcome.is_done());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters since the ring was created.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
    /// let running = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// let queued = ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.cancel(queued)?; // never given to the kernel: canceled in user space
    /// ring.wait_for(queued)?;
    /// ring.cancel(running)?;
    /// ring.wait_for(running)?;
    /// let s = ring.stats();
    /// assert_eq!((s.submitted, s.completed), (2, 2));
    /// assert_eq!(s.canceled_queued, 1);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A cross-thread handle to this ring.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// // Handles are cheap to clone and may be shared by any number of threads.
    /// let handle = ring.handle();
    /// let threads: Vec<_> = (0..2)
    ///     .map(|_| {
    ///         let h = handle.clone();
    ///         std::thread::spawn(move || h.cancel_all())
    ///     })
    ///     .collect();
    /// for t in threads {
    ///     t.join().unwrap()?;
    /// }
    /// ring.wait(1, None)?;
    /// assert!(ring.next_completion().unwrap().outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The clock as of the last time the ring ran (refreshed by every wait, poll and
    /// flush): submission timestamps need no clock read per op.
    #[inline]
    fn coarse_now(&self) -> u64 {
        self.coarse_now
    }

    /// Checks an op and classifies it. Nothing is allocated or changed on error.
    #[inline]
    fn admit(&mut self, op: &Op) -> Result<CancelClass, Error> {
        let d = &op.desc;
        match &d.payload {
            Payload::Buf(v) if v.len() > i32::MAX as usize => {
                return Err(Error::TooLong {
                    len: v.len() as u64,
                })
            }
            Payload::Bufs(v) => {
                if v.bufs.is_empty() {
                    return Err(Error::InvalidArgument("vectored op with no buffers"));
                }
                if v.bufs.len() > 1024 {
                    return Err(Error::InvalidArgument("more than 1024 (IOV_MAX) buffers"));
                }
                let total: u64 = v.bufs.iter().map(|b| b.len() as u64).sum();
                if total > i32::MAX as u64 {
                    return Err(Error::TooLong { len: total });
                }
            }
            Payload::Path(p) if p.as_bytes().is_empty() => {
                return Err(Error::InvalidArgument(
                    "path is empty or contains a NUL byte",
                ))
            }
            Payload::Statx(x) if x.nul => {
                return Err(Error::InvalidArgument(
                    "path is empty or contains a NUL byte",
                ))
            }
            Payload::Paths(p) if p.0.as_bytes().is_empty() || p.1.as_bytes().is_empty() => {
                return Err(Error::InvalidArgument(
                    "path is empty or contains a NUL byte",
                ))
            }
            _ => {}
        }
        if d.kind == OpKind::Fallocate && d.aux > i64::MAX as u64 {
            return Err(Error::TooLong { len: d.aux });
        }
        if (offset_out_of_range(d.offset) && (d.kind.is_transfer() || d.kind == OpKind::Fallocate))
            || (d.kind == OpKind::Splice && offset_out_of_range(d.aux))
        {
            return Err(Error::InvalidArgument(
                "offset beyond i64::MAX (the kernel refuses it)",
            ));
        }
        if d.kind.is_path_op() {
            if d.fd < 0 && d.fd != libc::AT_FDCWD {
                return Err(Error::InvalidFd { fd: d.fd });
            }
            if d.kind == OpKind::RenameAt && d.fd2 < 0 && d.fd2 != libc::AT_FDCWD {
                return Err(Error::InvalidFd { fd: d.fd2 });
            }
        } else if d.kind.uses_fd() {
            if d.fd < 0 {
                return Err(Error::InvalidFd { fd: d.fd });
            }
            if d.kind == OpKind::Splice && d.fd2 < 0 {
                return Err(Error::InvalidFd { fd: d.fd2 });
            }
        }
        if let Some(c) = op.class {
            return Ok(c);
        }
        Ok(match d.kind {
            OpKind::Nop | OpKind::Timeout => CancelClass::Prompt,
            OpKind::Blocking => CancelClass::Interruptible,
            // A path op can block for as long as its partner likes (opening a FIFO waits
            // for the other end; network and FUSE lookups wait for a server), so it is
            // interruptible whatever its directory is: a deadline cancels it rather than
            // detaching it and leaking the descriptor it opens later.
            k if k.is_path_op() => {
                if d.fd != libc::AT_FDCWD {
                    self.fd_class(d.fd)?;
                }
                CancelClass::Interruptible
            }
            OpKind::Splice => {
                let a = self.fd_class(d.fd)?;
                let b = self.fd_class(d.fd2)?;
                CancelClass::weakest(a, b)
            }
            OpKind::Close => {
                let c = self.fd_class(d.fd)?;
                self.fds.forget(d.fd);
                c
            }
            _ => self.checked_info(op)?.class,
        })
    }

    /// The cached facts about `op`'s descriptor, checked against what `op` asks (O_DIRECT
    /// alignment, a position on a pipe or socket). A refusal is the rare path, so it is
    /// made only after asking the kernel again: a number closed outside quell and reused
    /// must not have the old file's rules applied to it (I12).
    #[inline]
    pub(super) fn checked_info(&mut self, op: &Op) -> Result<crate::classify::FdInfo, Error> {
        let fd = op.desc.fd;
        let info = self.fds.info(fd).map_err(|_| Error::InvalidFd { fd })?;
        match fd_rules(op, &info) {
            Ok(()) => Ok(info),
            Err(_) => {
                let fresh = self.fds.refresh(fd).map_err(|_| Error::InvalidFd { fd })?;
                fd_rules(op, &fresh)?;
                Ok(fresh)
            }
        }
    }

    fn fd_class(&mut self, fd: RawFd) -> Result<CancelClass, Error> {
        self.fds
            .info(fd)
            .map(|i| i.class)
            .map_err(|_| Error::InvalidFd { fd })
    }

    /// Accepts an op. When the dispatch window (`max_in_flight`) has room and nothing is
    /// queued ahead of it, it goes to the backend at once ([`ops`](Ring::ops) lists it
    /// as in flight; on io_uring its SQE is staged and the kernel sees it at the next
    /// [`flush`](Ring::flush), [`poll`](Ring::poll) or [`wait`](Ring::wait)); otherwise
    /// it waits in quell's queue, where a cancel completes it at once. A refused op
    /// comes back whole inside the error (contract items I1, I10).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::write(a.as_raw_fd(), b"hello".to_vec()))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(5));
    /// let mut got = [0u8; 5];
    /// std::io::Read::read_exact(&mut &b, &mut got)?;
    /// assert_eq!(&got, b"hello");
    /// // A bad descriptor is refused at once, the buffer handed back.
    /// let err = ring.submit(quell::Op::write(-1, b"hello".to_vec())).unwrap_err();
    /// assert_eq!(err.into_op().into_buf().unwrap(), b"hello");
    /// # Ok(()) }
    /// ```
    #[inline(never)]
    pub fn submit(&mut self, op: Op) -> Result<OpId, SubmitError> {
        if let Some(group) = self.plain_lane(&op) {
            return self.submit_plain(op, group);
        }
        self.submit_full(op)
    }

    /// [`submit`](Ring::submit) for an op the plain lane does not take.
    #[inline(never)]
    fn submit_full(&mut self, op: Op) -> Result<OpId, SubmitError> {
        self.submit_inner(op, &mut None)
    }

    /// [`submit`](Ring::submit), for a plain op (`chain` is `None`) or the first step of
    /// a chain, whose state the slot takes on success.
    #[inline(always)]
    fn submit_inner(
        &mut self,
        op: Op,
        chain: &mut Option<Box<chain::ChainState>>,
    ) -> Result<OpId, SubmitError> {
        if self.closed {
            return Err(SubmitError::new(Error::Closed, op));
        }
        let gidx = match op.group {
            None => 0,
            Some(g) => match self.groups.get(g) {
                Some(_) => g.idx,
                None => return Err(SubmitError::new(Error::NoSuchGroup, op)),
            },
        };
        let (g_canceled, g_timed_out, g_draining, g_deadline) = {
            let g = &self.groups.v[gidx as usize];
            (g.canceled, g.timed_out, g.draining, g.deadline)
        };
        if g_draining && !g_canceled {
            return Err(SubmitError::new(Error::Draining, op));
        }
        let class = match self.admit(&op) {
            Ok(c) => c,
            Err(e) => return Err(SubmitError::new(e, op)),
        };
        let mut op = op;
        if class == CancelClass::Bounded
            && matches!(
                op.desc.kind,
                OpKind::Read | OpKind::Write | OpKind::Readv | OpKind::Writev
            )
            && self.fds.cached(op.desc.fd).is_some_and(|i| i.direct)
        {
            op.desc.flags |= crate::op::RW_DIRECT;
        }
        let Some((idx, gen)) = self.table.alloc() else {
            let capacity = self.table.capacity();
            return Err(SubmitError::new(Error::TableFull { capacity }, op));
        };
        let now = self.coarse_now();
        // An own deadline no earlier than the group's adds nothing: the group's timer
        // reaches the op first (group deadlines only ever move earlier). Skipping it
        // keeps a scoped op as cheap as a plain one (I8).
        let deadline = match op.deadline {
            Some(d) => Some(self.deadline_ns(d)).filter(|&ns| ns < g_deadline),
            None => None,
        }
        .unwrap_or(u64::MAX);
        let s = self.table.slot_mut(idx);
        s.state = SlotState::Queued;
        s.class = class;
        s.user_data = op.user_data;
        s.submitted = now;
        s.deadline = deadline;
        s.group = gidx;
        if op.exact {
            s.flags |= F_EXACT;
        }
        if op.sink {
            s.flags |= F_SINK;
        }
        if op.class.is_some() {
            s.flags |= F_DECLARED;
        }
        s.set_desc(op.desc);
        if let Some(c) = chain.take() {
            s.flags |= F_CHAIN;
            self.chains.insert(idx, c);
        }
        self.outstanding += 1;
        self.stats.submitted += 1;
        let id = OpId {
            ring: self.id,
            gen,
            slot: idx,
        };
        if self.trace_ops {
            self.trace_submitted(idx, gen);
        }
        self.groups.at(gidx).stats.queued += 1;
        // A canceled scope stays canceled; a deadline already past fires at once.
        if g_canceled {
            self.cancel_slot(idx, g_timed_out);
        } else if deadline.min(g_deadline) != u64::MAX && self.past(deadline.min(g_deadline)) {
            self.cancel_slot(idx, true);
        } else {
            let key = key_of(idx, gen);
            if deadline != u64::MAX {
                self.timers.push(deadline, key);
            }
            // With room in the dispatch window and nobody ahead, go straight to the
            // backend (for io_uring: into the SQ; the kernel sees it at the next enter).
            if !(self.queue.is_empty()
                && self.in_flight < self.max_in_flight
                && !self.paused
                && self.start_slot(idx, key))
            {
                self.enqueue(idx, key);
            }
        }
        Ok(id)
    }

    /// Whether deadline `at` has passed. Deadlines more than a second past the ring's
    /// last run are judged without reading the clock (I8: scoped ops with far
    /// deadlines cost no clock read); should one have passed anyway because the ring
    /// sat idle, it fires at the next wait or poll.
    #[inline]
    fn past(&self, at: u64) -> bool {
        at <= self.coarse_now
            || (at < self.coarse_now.saturating_add(1_000_000_000) && at <= self.now_ns())
    }

    /// [`instant_ns`](Ring::instant_ns) remembering the last answer: the ops of one
    /// request or scope usually share one deadline.
    #[inline]
    fn deadline_ns(&mut self, t: Instant) -> u64 {
        if self.deadline_memo.0 != t {
            self.deadline_memo = (t, self.instant_ns(t));
        }
        self.deadline_memo.1
    }

    fn instant_ns(&self, t: Instant) -> u64 {
        // Saturates (u64::MAX - 1 ns is 584 years away; u64::MAX means "none"): a
        // far-future deadline must not wrap round to a near one.
        let ns = t.saturating_duration_since(self.epoch).as_nanos();
        ns.min(u64::MAX as u128 - 1) as u64
    }

    /// Gives queued ops to the backend while the dispatch window has room.
    fn dispatch(&mut self) {
        if self.sinks.has_next() {
            self.submit_sink_next();
        }
        while self.in_flight < self.max_in_flight && !self.paused {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            let (idx, gen) = split_key(key);
            let s = self.table.slot(idx);
            if s.gen != gen || s.state != SlotState::Queued {
                continue; // canceled while queued
            }
            if !self.start_slot(idx, key) {
                self.queue.push_front(key);
                break;
            }
        }
    }

    /// Gives one queued slot to the backend. `false`: the backend has no room now.
    #[inline]
    fn start_slot(&mut self, idx: u32, key: u64) -> bool {
        if self.table.slot(idx).flags & F_CHAIN != 0 {
            if let Some(started) = self.linked_start(idx, key) {
                return started;
            }
        }
        let s = self.table.slot_mut(idx);
        let class = s.class;
        if s.desc.kind == OpKind::Blocking {
            let Payload::Blocking(f) = std::mem::take(&mut s.desc.payload) else {
                unreachable!("blocking ops carry a closure")
            };
            s.state = SlotState::InFlight;
            let g = s.group;
            self.in_flight += 1;
            self.groups.at(g).stats.queued -= 1;
            self.groups.at(g).stats.in_flight += 1;
            self.backend.start_blocking(key, f);
            if self.trace_ops {
                self.trace_dispatched(idx);
            }
            return true;
        }
        let mut raw = s.desc.raw();
        if s.flags & (F_ANCHORED | F_CHAIN) != 0 {
            if s.flags & F_ANCHORED != 0 {
                let per_number = !matches!(self.backend, Backend::Uring(_));
                if !self.anchors.apply(idx, &mut raw, per_number) {
                    // A close whose number now names another file (I12): that file is
                    // not this op's to close.
                    let badf =
                        Outcome::Failed(crate::outcome::Errno::from_raw_os_error(libc::EBADF));
                    self.complete_queued(idx, badf);
                    return true;
                }
            } else {
                // A chain's step acts on the duplicates the chain holds (I12).
                self.chains.apply(idx, &mut raw);
            }
        }
        // Resubmitted stream transfers (Send/Recv) continue after what moved before.
        if (matches!(raw.kind, OpKind::Read | OpKind::Write)
            && (s.transferred > 0 || (raw.len > self.part_size && raw.offset != NO_OFFSET)))
            || (matches!(raw.kind, OpKind::Send | OpKind::Recv) && s.transferred > 0)
        {
            continue_part(&mut raw, s.transferred, self.part_size);
        }
        if !self.backend.start(key, raw, class) {
            return false;
        }
        s.state = SlotState::InFlight;
        let g = self.groups.at(s.group);
        g.stats.queued -= 1;
        g.stats.in_flight += 1;
        self.in_flight += 1;
        if self.trace_ops {
            self.trace_dispatched(idx);
        }
        true
    }

    /// Turns backend results into completions.
    #[inline]
    fn reap(&mut self) {
        self.backend.reap(&mut self.reaped);
        if self.reaped.is_empty() {
            return;
        }
        let mut reaped = std::mem::take(&mut self.reaped);
        for &(key, res) in &reaped {
            self.finish(key, res);
        }
        reaped.clear();
        self.reaped = reaped;
    }

    #[inline(always)]
    fn finish(&mut self, key: u64, res: i64) {
        if key & crate::backend::direct::LINK_BITS != 0 {
            return self.linked_result(key, res);
        }
        let (idx, gen) = split_key(key);
        if self.finish_plain(idx, gen, res) {
            return;
        }
        let s = self.table.slot_mut(idx);
        if s.gen != gen || s.state != SlotState::InFlight {
            return self.finish_unusual(idx, key, res);
        }
        if res == -(libc::ECANCELED as i64)
            && s.flags & F_CANCEL == 0
            && s.flags & F_REQUEUES != F_REQUEUES
            && s.desc.kind != OpKind::Blocking
            && !self.closed
        {
            // Canceled, but not by quell: the kernel cancels the requests of a task that
            // exits (a ring is `Send`; the thread that submitted this op is gone). The op
            // did not happen; it goes to the kernel again from this thread (I4: no
            // outcome says "canceled" when nobody canceled). Bounded, in case something
            // else keeps answering ECANCELED: then the op fails with it.
            s.flags += F_REQUEUE_ONE;
            return self.requeue_in_flight(idx, key);
        }
        // Only transfers have a requested length (and it costs a payload match).
        let asked = if s.desc.kind.is_transfer() {
            s.desc.request_len()
        } else {
            0
        };
        if res > 0 && s.flags & F_CANCEL == 0 && matches!(s.desc.kind, OpKind::Read | OpKind::Write)
        {
            let done = s.transferred + res as u64;
            let part = (asked - s.transferred).min(self.part_size as u64);
            let split = s.desc.offset != NO_OFFSET && asked > self.part_size as u64;
            // Derived op: the next part, or the retry of a short transfer, shares this
            // slot and so its cancel flag and deadline (I6).
            if done < asked && ((split && res as u64 == part) || s.flags & F_EXACT != 0) {
                s.transferred = done;
                // The next part may wait for room: it must find the same file (I12).
                return self.requeue_in_flight(idx, key);
            }
        }
        if s.flags & F_ANCHORED != 0 {
            self.release_anchor(idx);
        }
        let s = self.table.slot_mut(idx);
        let outcome = if s.flags & F_CHAIN == 0 {
            // A positioned transfer split into parts is derived even in its first part.
            let split = s.desc.offset != NO_OFFSET
                && asked > self.part_size as u64
                && matches!(s.desc.kind, OpKind::Read | OpKind::Write);
            let flags = if split { s.flags | F_SPLIT } else { s.flags };
            outcome_of(s.desc.kind, flags, s.transferred, asked, res)
        } else {
            match self.chain_step_ended(idx, res) {
                Some(o) => o,
                None => return, // the next step is queued in the same slot
            }
        };
        let s = self.table.slot_mut(idx);
        let kind = s.desc.kind;
        s.state = SlotState::Completed;
        let (gidx, flags, had_deadline) = (s.group, s.flags, s.deadline != u64::MAX);
        let g = self.groups.at(gidx);
        g.stats.in_flight -= 1;
        if flags & F_CANCEL != 0 {
            g.stats.cancel_requested -= 1;
        }
        if had_deadline {
            self.note_timer_stale();
        }
        self.in_flight -= 1;
        self.outstanding -= 1;
        if matches!(kind, OpKind::OpenAt | OpKind::Accept) && res >= 0 {
            self.fds.forget(res as RawFd);
        }
        if self.trace_ops {
            self.trace_completed(idx, &outcome);
        }
        self.push_completion(idx, outcome);
        self.stats.completed += 1;
    }

    /// Gives in-flight slot `idx` to the backend again (the next part of a transfer, a
    /// retry): at once where the window has room — the common case, costing nothing more —
    /// or else at the front of quell's queue, anchored to its files like any op that
    /// waits there (I12).
    fn requeue_in_flight(&mut self, idx: u32, key: u64) {
        let s = self.table.slot_mut(idx);
        s.state = SlotState::Queued;
        let g = self.groups.at(s.group);
        g.stats.in_flight -= 1;
        g.stats.queued += 1;
        self.in_flight -= 1;
        if self.in_flight < self.max_in_flight && !self.paused && self.start_slot(idx, key) {
            return;
        }
        if let Err(errno) = self.anchor(idx) {
            tracing::debug!(errno, "could not anchor a requeued op");
        }
        self.queue.push_front(key);
    }

    /// A result for a slot that is not simply in flight: the kernel's late completion of
    /// a detached op, or (never expected) a stale key.
    #[cold]
    fn finish_unusual(&mut self, idx: u32, key: u64, res: i64) {
        let s = self.table.slot_mut(idx);
        if s.gen != split_key(key).1 {
            tracing::error!(key, "completion for a slot that moved on; ignored");
            return;
        }
        if s.state != SlotState::Detached {
            let state = s.state;
            tracing::error!(key, ?state, "completion for an op not in flight; ignored");
            return;
        }
        if s.flags & F_KERNEL_DONE != 0 {
            // Given up on at teardown (`leak_in_flight`): already accounted for.
            return;
        }
        if matches!(s.desc.kind, OpKind::OpenAt | OpKind::Accept) && res >= 0 {
            // The user was released with `Detached` and will never see this
            // descriptor: close it rather than leak it.
            // SAFETY: the kernel just created this descriptor for this op; nobody else
            // has its number.
            unsafe { libc::close(res as RawFd) };
        }
        let gidx = s.group;
        self.release_anchor(idx);
        self.in_flight -= 1;
        self.stats.detached_finished += 1;
        self.groups.at(gidx).stats.detached -= 1;
        if self.trace_ops {
            self.trace_kernel_done(idx, res);
        }
        let s = self.table.slot_mut(idx);
        if s.flags & F_DELIVERED != 0 {
            self.table.free(idx);
        } else {
            // The user has not taken the Detached completion yet; it frees the slot.
            s.flags |= F_KERNEL_DONE;
        }
    }

    /// Queues a finished op's completion for the user, or hands it at once to the
    /// internal sink that owns the op (see `ring::sink`).
    #[inline(always)]
    fn push_completion(&mut self, idx: u32, outcome: Outcome) {
        if self.table.slot(idx).flags & F_SINK != 0 {
            let c = self.deliver(idx, outcome);
            self.sinks.deliver(c);
            return;
        }
        self.completions.push_back((idx, outcome));
    }

    /// Handles requests left by handles. Returns whether a wake-up was asked for.
    fn take_requests(&mut self) -> bool {
        if !self.shared.requests.is_pending() {
            return false;
        }
        self.take_signals();
        self.take_dumps();
        let mut reqs = std::mem::take(&mut self.requests);
        self.shared.requests.take(&mut reqs);
        let mut woken = false;
        for r in reqs.drain(..) {
            match r {
                Request::Cancel(id) => {
                    let _ = self.cancel(id);
                }
                Request::CancelFd(fd) => {
                    self.cancel_fd(fd);
                }
                Request::CancelAll => {
                    self.cancel_all();
                }
                // A group removed meanwhile has nothing left to cancel or drain.
                Request::CancelGroup(g) => {
                    let _ = self.cancel_group(g);
                }
                Request::Drain(g) => {
                    let _ = self.drain(g);
                }
                Request::Wake => woken = true,
                Request::Ops(tx) => {
                    // The asker may have given up waiting; nothing to do then.
                    let _ = tx.send(self.ops());
                }
            }
        }
        self.requests = reqs;
        woken
    }

    fn take_signals(&mut self) {
        for i in 0..self.signals.len() {
            let Some((first, n)) = self.signals[i].take_new() else {
                continue;
            };
            let (group, action) = (self.signals[i].group, self.signals[i].action);
            for k in first..first + n {
                let cancel = match action {
                    SignalAction::Drain => false,
                    SignalAction::Cancel => true,
                    SignalAction::DrainThenCancel => k > 0,
                };
                let r = if cancel {
                    self.cancel_group(group).map(|_| ())
                } else {
                    self.drain(group).map(|_| ())
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "signal binding for a group that is gone");
                }
            }
        }
    }

    /// Binds `signal` (e.g. `libc::SIGINT`) to `group`: each delivery drains or cancels
    /// it, as `action` says. The handler is async-signal-safe (an atomic counter and an
    /// eventfd write); the work happens on the ring's thread, which a delivery wakes.
    /// The binding lasts as long as the ring. While bound, the signal's default action
    /// (terminating the process, for SIGINT) does not run.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let work = ring.group(quell::GroupId::ROOT, quell::GroupOptions::default())?;
    /// ring.bind_signal(libc::SIGINT, work, quell::SignalAction::DrainThenCancel)?;
    /// # Ok(()) }
    /// ```
    pub fn bind_signal(
        &mut self,
        signal: i32,
        group: GroupId,
        action: SignalAction,
    ) -> Result<(), Error> {
        self.group_idx(group)?;
        let count = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shared = self.shared.clone();
        let c = count.clone();
        let handler = move || {
            c.fetch_add(1, Ordering::AcqRel);
            shared.requests.mark_pending();
            shared.doorbell.ring();
        };
        // SAFETY: the handler only touches atomics and write(2)s an eventfd, all
        // async-signal-safe; it allocates nothing and takes no lock.
        let id = unsafe { signal_hook::low_level::register(signal, handler) }
            .map_err(|e| Error::io("installing a signal handler", e))?;
        self.signals.push(Binding {
            id,
            count,
            seen: 0,
            group,
            action,
        });
        Ok(())
    }

    /// Dispatches queued ops and hands them to the kernel, without waiting.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (a, b) = std::os::unix::net::UnixStream::pair()?;
    /// b.set_read_timeout(Some(Duration::from_secs(10)))?;
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::write(a.as_raw_fd(), b"hi".to_vec()))?;
    /// ring.flush()?;
    /// // The kernel has the write: the peer gets the bytes while this thread does other work.
    /// let mut got = [0u8; 2];
    /// std::io::Read::read_exact(&mut &b, &mut got)?;
    /// assert_eq!(&got, b"hi");
    /// assert_eq!(ring.wait_for(id)?.outcome, quell::Outcome::Done(2));
    /// # Ok(()) }
    /// ```
    pub fn flush(&mut self) -> Result<(), Error> {
        self.take_requests();
        self.dispatch();
        self.backend
            .flush()
            .map_err(|e| Error::io("submitting to the backend", e))
    }

    /// Makes progress without blocking: dispatches, submits, and collects finished ops.
    /// Returns the number of completions ready to take.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// assert_eq!(ring.poll()?, 0); // nothing to read yet, and poll does not wait
    /// std::io::Write::write_all(&mut &w, b"x")?;
    /// // E.g. from another event loop's idle hook.
    /// while ring.poll()? == 0 {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(ring.next_completion().unwrap().data(), b"x");
    /// # Ok(()) }
    /// ```
    pub fn poll(&mut self) -> Result<usize, Error> {
        self.fire_timers();
        self.flush()?;
        self.reap();
        self.dispatch();
        Ok(self.completions.len())
    }

    /// Dispatches, submits and waits until at least `min` completions are ready, the
    /// `timeout` passes, a [`Handle::wake`] arrives, or nothing outstanding could add
    /// more. Returns the number of completions ready to take.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.submit(quell::Op::nop())?;
    /// // The nop is ready; the read is not, so waiting for two times out with one.
    /// assert_eq!(ring.wait(2, Some(Duration::from_millis(10)))?, 1);
    /// std::io::Write::write_all(&mut &w, b"x")?;
    /// assert_eq!(ring.wait(2, None)?, 2);
    /// # Ok(()) }
    /// ```
    pub fn wait(&mut self, min: usize, timeout: Option<Duration>) -> Result<usize, Error> {
        // The clock is read only when a timeout or a deadline needs it.
        let start = timeout.map(|_| Instant::now());
        loop {
            let woken = self.take_requests();
            self.fire_timers();
            self.dispatch();
            self.reap();
            self.dispatch();
            if self.completions.len() >= min || self.outstanding == 0 || woken {
                self.backend
                    .flush()
                    .map_err(|e| Error::io("submitting to the backend", e))?;
                return Ok(self.completions.len());
            }
            let remaining = match (timeout, start) {
                (Some(t), Some(start)) => match t.checked_sub(start.elapsed()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        self.backend
                            .flush()
                            .map_err(|e| Error::io("submitting to the backend", e))?;
                        return Ok(self.completions.len());
                    }
                },
                _ => None,
            };
            let remaining = match self.timers.next() {
                Some(at) => {
                    // fire_timers read the clock at the top of this pass.
                    let until = Duration::from_nanos(at.saturating_sub(self.coarse_now));
                    Some(remaining.map_or(until, |r| r.min(until)))
                }
                None => remaining,
            };
            if remaining.is_some_and(|r| r.is_zero()) {
                continue;
            }
            // `reap` cleared the doorbell after this pass took the requests: one posted
            // in between rang a bell that is gone, so look before sleeping.
            if self.shared.requests.is_pending() {
                continue;
            }
            self.backend
                .wait(remaining)
                .map_err(|e| Error::io("waiting for completions", e))?;
        }
    }

    /// Futures-layer hook: polls until a pass reaps nothing from the backend, so a ring
    /// run by an external reactor is left with no op dispatched but unsubmitted and no
    /// backend result unseen (a backend may complete ops inline while flushing).
    /// `false` if still busy after `passes` passes.
    pub(crate) fn poll_settled(&mut self, passes: usize) -> Result<bool, Error> {
        for pass in 0..passes {
            // One clock read per call: a deadline due between two passes microseconds
            // apart is the next call's (the caller sleeps until `next_wake`).
            if pass == 0 {
                self.fire_timers();
            }
            self.flush()?;
            self.backend.reap(&mut self.reaped);
            // A request posted after `flush` took them may have had its doorbell cleared
            // by this reap: not settled until it is taken.
            if self.reaped.is_empty() && !self.shared.requests.is_pending() {
                return Ok(true);
            }
            let mut reaped = std::mem::take(&mut self.reaped);
            for &(key, res) in &reaped {
                self.finish(key, res);
            }
            reaped.clear();
            self.reaped = reaped;
            self.dispatch();
            // Nothing staged by what this pass finished and nothing held back: settled
            // without another pass (a result landing meanwhile makes the reactor's
            // descriptor readable again, and that wakes it).
            if !self.has_local_work() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Futures-layer hook: this ring's id (stamped into its [`OpId`]s).
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Futures-layer hook: the descriptor a reactor watches (readable when there is
    /// something to reap), and how soon the ring must run even if it stays quiet.
    pub(crate) fn reactor_fd(&self) -> RawFd {
        self.backend.poll_fd()
    }

    /// See [`reactor_fd`](Ring::reactor_fd).
    pub(crate) fn next_wake(&mut self) -> Option<Duration> {
        let backend = self.backend.next_wake();
        let timer = self
            .timers
            .next()
            .map(|at| Duration::from_nanos(at.saturating_sub(self.now_ns())));
        match (backend, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the next ready completion, if any (it does not wait: see [`wait`](Ring::wait)).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::nop().user_data(3))?;
    /// assert!(ring.next_completion().is_none()); // it does not wait
    /// ring.wait(1, None)?;
    /// assert_eq!(ring.next_completion().unwrap().user_data, 3);
    /// assert!(ring.next_completion().is_none());
    /// # Ok(()) }
    /// ```
    #[inline(always)]
    pub fn next_completion(&mut self) -> Option<Completion> {
        let (idx, outcome) = self.completions.pop_front()?;
        match self.deliver_plain(idx, outcome) {
            Some(c) => Some(c),
            None => Some(self.deliver(idx, outcome)),
        }
    }

    /// Takes every ready completion.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// for i in 0..3 {
    ///     ring.submit(quell::Op::nop().user_data(i))?;
    /// }
    /// let mut seen = Vec::new();
    /// while seen.len() < 3 {
    ///     ring.wait(1, None)?;
    ///     seen.extend(ring.completions().map(|c| c.user_data));
    /// }
    /// seen.sort();
    /// assert_eq!(seen, [0, 1, 2]);
    /// # Ok(()) }
    /// ```
    pub fn completions(&mut self) -> impl Iterator<Item = Completion> + '_ {
        std::iter::from_fn(move || self.next_completion())
    }

    #[inline(always)]
    fn deliver(&mut self, idx: u32, outcome: Outcome) -> Completion {
        let s = self.table.slot_mut(idx);
        // A detached op whose kernel completion is still to come: release the user,
        // keep the buffer (and the slot) until the kernel is done.
        let keep = s.state == SlotState::Detached && s.flags & F_KERNEL_DONE == 0;
        let payload = if keep {
            s.flags |= F_DELIVERED;
            Payload::None
        } else {
            std::mem::take(&mut s.desc.payload)
        };
        let c = Completion {
            id: OpId {
                ring: self.id,
                gen: s.gen,
                slot: idx,
            },
            user_data: s.user_data,
            outcome,
            kind: s.desc.kind,
            payload: payload.into(),
        };
        if !keep {
            self.table.free(idx);
        }
        if self.trace_ops {
            self.trace_delivered(idx, keep);
        }
        c
    }

    /// Waits for the completion of one op and takes it; other completions stay queued.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut ring = quell::Ring::new()?;
    /// let nop = ring.submit(quell::Op::nop())?;
    /// let sleep = ring.submit(quell::Op::timeout(Duration::from_millis(5)))?;
    /// assert!(ring.wait_for(sleep)?.outcome.is_done());
    /// // The nop's completion stayed queued for whoever takes it.
    /// assert_eq!(ring.next_completion().unwrap().id, nop);
    /// // A taken completion cannot be waited for twice.
    /// assert!(matches!(ring.wait_for(nop), Err(quell::Error::UnknownOp)));
    /// # Ok(()) }
    /// ```
    pub fn wait_for(&mut self, id: OpId) -> Result<Completion, Error> {
        if id.ring != self.id {
            return Err(Error::ForeignId);
        }
        loop {
            match self.table.get(id.slot, id.gen) {
                None => return Err(Error::UnknownOp),
                Some(s) if s.state == SlotState::Completed || s.state == SlotState::Detached => {
                    if let Some(pos) = self.completions.iter().position(|&(i, _)| i == id.slot) {
                        let (idx, outcome) =
                            self.completions.remove(pos).expect("position is valid");
                        return Ok(self.deliver(idx, outcome));
                    }
                    if s.state == SlotState::Detached {
                        return Err(Error::UnknownOp);
                    }
                }
                Some(_) => {}
            }
            let need = self.completions.len() + 1;
            self.wait(need, None)?;
        }
    }

    /// Requests cancellation of `id`; returns at once with what is known now (I3).
    ///
    /// A queued op is canceled on the spot and its `Canceled` completion is ready
    /// immediately. An op in flight gets a cancel request; its completion will say
    /// whether it stopped (`Canceled`) or finished anyway (`Done`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{CancelStatus, Outcome};
    /// let mut ring = quell::Ring::new()?;
    /// let id = ring.submit(quell::Op::nop())?;
    /// ring.wait(1, None)?;
    /// // Too late: it finished; its completion keeps the original outcome.
    /// assert_eq!(ring.cancel(id)?, CancelStatus::AlreadyDone);
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::Done(0));
    /// assert_eq!(ring.cancel(id)?, CancelStatus::NotFound);
    /// # Ok(()) }
    /// ```
    pub fn cancel(&mut self, id: OpId) -> Result<CancelStatus, Error> {
        if id.ring != self.id {
            return Err(Error::ForeignId);
        }
        let Some(s) = self.table.get(id.slot, id.gen) else {
            return Ok(CancelStatus::NotFound);
        };
        Ok(match s.state {
            SlotState::Completed => CancelStatus::AlreadyDone,
            SlotState::Detached if s.flags & F_DELIVERED == 0 => CancelStatus::AlreadyDone,
            SlotState::Detached | SlotState::Free => CancelStatus::NotFound,
            SlotState::Queued | SlotState::InFlight => {
                self.cancel_slot(id.slot, false);
                CancelStatus::Requested
            }
        })
    }

    /// Cancels the live slot `idx` (queued or in flight).
    fn cancel_slot(&mut self, idx: u32, timed_out: bool) {
        if self.trace_ops {
            self.trace_cancel(idx, timed_out);
        }
        let s = self.table.slot_mut(idx);
        match s.state {
            SlotState::Queued => {
                let transferred = s.transferred as usize;
                let mut outcome = if timed_out {
                    Outcome::TimedOut { transferred }
                } else {
                    Outcome::Canceled { transferred }
                };
                if s.flags & F_CHAIN != 0 {
                    match self.chain_cancel_queued(idx, timed_out) {
                        Some(o) => outcome = o,
                        None => return, // a cleanup close runs first
                    }
                }
                self.complete_queued(idx, outcome);
                self.stats.canceled_queued += 1;
                self.stats.cancel_requests += 1;
            }
            SlotState::InFlight => {
                if s.flags & F_CHAIN != 0 && self.chains.get(idx).is_linked() {
                    return self.linked_cancel(idx, timed_out);
                }
                if s.flags & F_CHAIN != 0 && self.chains.get(idx).shielded() {
                    // A chain's close is shielded from its cancel; no step runs after it.
                    self.chains.get(idx).stop(timed_out);
                    return;
                }
                // A chain is never detached: it waits for the step, then closes what it
                // opened. Device I/O cannot be stopped: release the user now, keep the
                // memory until the kernel's own completion (I2, I4) — once the kernel
                // confirms the descriptor really is device I/O (I12).
                if timed_out
                    && s.class == CancelClass::Bounded
                    && s.flags & F_CHAIN == 0
                    && self.still_bounded(idx)
                {
                    self.detach_slot(idx);
                    return;
                }
                let s = self.table.slot_mut(idx);
                if s.flags & F_CANCEL_SENT != 0 {
                    return;
                }
                s.flags |= F_CANCEL | F_CANCEL_SENT;
                if timed_out {
                    s.flags |= F_TIMEOUT;
                }
                let key = key_of(idx, s.gen);
                let (kind, class, gidx) = (s.desc.kind, s.class, s.group);
                let chain = s.flags & F_CHAIN != 0;
                self.groups.at(gidx).stats.cancel_requested += 1;
                self.backend.cancel(key, kind, class);
                self.stats.cancel_requests += 1;
                if timed_out && class == CancelClass::Interruptible && !chain {
                    // Some waits no interrupt reaches (a cached FUSE read on the page
                    // lock): the deadline still releases the caller, after the grace.
                    let at = self.coarse_now.saturating_add(self.interrupt_grace);
                    self.timers.push(at, key | GRACE_TARGET);
                }
            }
            _ => {}
        }
    }

    /// Ends the queued slot `idx` with `outcome` (canceled in user space, or refused
    /// at the last moment): it never reached the backend.
    fn complete_queued(&mut self, idx: u32, outcome: Outcome) {
        self.release_anchor(idx);
        let s = self.table.slot_mut(idx);
        s.state = SlotState::Completed;
        let had_deadline = s.deadline != u64::MAX;
        self.groups.at(s.group).stats.queued -= 1;
        if had_deadline {
            self.note_timer_stale();
        }
        self.outstanding -= 1;
        if self.trace_ops {
            self.trace_completed(idx, &outcome);
        }
        self.push_completion(idx, outcome);
        self.stats.completed += 1;
    }

    /// Releases the user of the in-flight slot `idx` with `Detached`; the slot (and the
    /// op's memory) stays with the ring until the kernel's own completion.
    fn detach_slot(&mut self, idx: u32) {
        let s = self.table.slot_mut(idx);
        let gidx = s.group;
        let was_canceled = s.flags & F_CANCEL != 0;
        s.state = SlotState::Detached;
        s.flags |= F_TIMEOUT;
        let g = self.groups.at(gidx);
        g.stats.in_flight -= 1;
        if was_canceled {
            g.stats.cancel_requested -= 1;
        }
        g.stats.detached += 1;
        self.outstanding -= 1;
        if self.trace_ops {
            self.trace_completed(idx, &Outcome::Detached);
        }
        self.push_completion(idx, Outcome::Detached);
        self.stats.completed += 1;
        self.stats.detached += 1;
    }

    /// Requests cancellation of every outstanding op on `fd` (as either descriptor of a
    /// splice). Returns how many ops were reached. Uses quell's own table, one cancel
    /// per op: the kernel's match-by-fd is quadratic.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]))?;
    /// ring.submit(quell::Op::poll(r.as_raw_fd(), quell::Interest::READABLE))?;
    /// ring.submit(quell::Op::nop())?;
    /// // The connection is going away: stop everything on it before closing it.
    /// assert_eq!(ring.cancel_fd(r.as_raw_fd()), 2);
    /// ring.wait(3, None)?;
    /// let canceled = ring.completions().filter(|c| c.outcome.is_canceled()).count();
    /// assert_eq!(canceled, 2);
    /// drop(r);
    /// # Ok(()) }
    /// ```
    pub fn cancel_fd(&mut self, fd: RawFd) -> usize {
        // Negative numbers name no descriptor (-1 fills unused slots, AT_FDCWD is the
        // working directory): they reach nothing.
        if fd < 0 {
            return 0;
        }
        self.cancel_where(|kind, f1, f2| {
            kind.uses_fd()
                && (f1 == fd || (matches!(kind, OpKind::Splice | OpKind::RenameAt) && f2 == fd))
        })
    }

    /// Requests cancellation of every outstanding op. Returns how many were reached.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut ring = quell::Ring::new()?;
    /// for _ in 0..3 {
    ///     ring.submit(quell::Op::timeout(Duration::from_secs(60)))?;
    /// }
    /// assert_eq!(ring.cancel_all(), 3);
    /// ring.wait(3, None)?;
    /// assert!(ring.completions().all(|c| c.outcome.is_canceled()));
    /// # Ok(()) }
    /// ```
    pub fn cancel_all(&mut self) -> usize {
        self.cancel_where(|_, _, _| true)
    }

    fn cancel_where(&mut self, pred: impl Fn(OpKind, RawFd, RawFd) -> bool) -> usize {
        let table = &self.table;
        let hits: Vec<u32> = table
            .live()
            .filter(|&i| {
                let d = &table.slot(i).desc;
                pred(d.kind, d.fd, d.fd2)
            })
            .collect();
        self.cancel_slots(hits, false)
    }

    /// Cancels the given slots that are still queued or in flight; returns how many.
    fn cancel_slots(&mut self, mut slots: Vec<u32>, timed_out: bool) -> usize {
        slots.retain(|&i| {
            matches!(
                self.table.slot(i).state,
                SlotState::Queued | SlotState::InFlight
            )
        });
        for &idx in &slots {
            self.cancel_slot(idx, timed_out);
        }
        slots.len()
    }

    /// Forgets what the ring knows about descriptor `fd`, so the next op on it is
    /// classified afresh.
    ///
    /// The ring caches each number's class and cannot see a number closed behind its
    /// back (an ordinary `drop(File)`) and reused. Correctness does not depend on this
    /// call: before a deadline detaches an op as device I/O, the ring asks the kernel
    /// again what the descriptor is, and an op never acts on a file other than the
    /// one it was submitted on (contract item I12). What a stale entry can still cost
    /// is speed and placement: on io_uring, a FUSE or NFS file reusing a pipe's number
    /// would be submitted without `IOSQE_ASYNC` and could block the ring's thread in
    /// the kernel until its server answers. Call `forget_fd` after closing a raw
    /// descriptor outside quell if its number may come back as a different kind of file.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::{AsRawFd, IntoRawFd};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let n = r.as_raw_fd();
    /// let id = ring.submit(quell::Op::poll(n, quell::Interest::WRITABLE))?;
    /// ring.wait_for(id)?;
    /// // The socket is closed and its number now names a file, behind the ring's back.
    /// let file = std::fs::File::open("/proc/self/exe")?;
    /// // SAFETY: both descriptors are open; dup2 closes the socket and reuses its number.
    /// assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), n) }, n);
    /// drop(r.into_raw_fd()); // the number now belongs to the dup
    /// ring.forget_fd(n); // so the ring classifies it afresh: a file, not a socket
    /// let id = ring.submit(quell::Op::read_at(n, 0, vec![0u8; 4]))?;
    /// assert_ne!(ring.ops()[0].class, quell::CancelClass::Prompt);
    /// assert_eq!(ring.wait_for(id)?.data(), b"\x7fELF");
    /// // SAFETY: n is the dup made above, owned by nobody else.
    /// unsafe { libc::close(n) };
    /// # Ok(()) }
    /// ```
    pub fn forget_fd(&mut self, fd: RawFd) {
        self.fds.forget(fd);
    }

    /// Every outstanding op (queued, in flight, detached), in O(outstanding).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 512]).user_data(1))?;
    /// ring.submit(quell::Op::timeout(Duration::from_secs(60)).user_data(2))?;
    /// ring.flush()?;
    /// // What is this ring waiting on?
    /// let mut ops = ring.ops();
    /// ops.sort_by_key(|o| o.user_data);
    /// assert_eq!((ops[0].kind, ops[0].fd, ops[0].len), (quell::OpKind::Read, r.as_raw_fd(), 512));
    /// assert_eq!(ops[1].kind, quell::OpKind::Timeout);
    /// assert!(ops.iter().all(|o| o.state == quell::OpState::InFlight));
    /// # ring.cancel_all();
    /// # Ok(()) }
    /// ```
    pub fn ops(&self) -> Vec<OpInfo> {
        let now = self.now_ns();
        let mut v = Vec::with_capacity(self.table.len());
        let mut paths: Vec<Option<Arc<str>>> = vec![None; self.groups.v.len()];
        for idx in self.table.live() {
            let s = self.table.slot(idx);
            let state = match s.state {
                SlotState::Queued => OpState::Queued,
                SlotState::InFlight if s.flags & F_CANCEL != 0 => OpState::CancelRequested,
                SlotState::InFlight => OpState::InFlight,
                SlotState::Detached => OpState::Detached,
                SlotState::Completed | SlotState::Free => continue,
            };
            v.push(OpInfo {
                id: OpId {
                    ring: self.id,
                    gen: s.gen,
                    slot: idx,
                },
                user_data: s.user_data,
                group: self.groups.id_of(s.group),
                group_path: paths[s.group as usize]
                    .get_or_insert_with(|| self.groups.path(s.group).into())
                    .clone(),
                kind: s.desc.kind,
                fd: s.desc.fd,
                offset: (s.desc.kind.is_transfer() || s.desc.kind == OpKind::Fallocate)
                    .then_some(s.desc.offset)
                    .filter(|&o| o != NO_OFFSET),
                len: s.desc.request_len(),
                class: if state == OpState::Queued {
                    CancelClass::Queued
                } else {
                    s.class
                },
                dispatch_class: s.class,
                state,
                age: Duration::from_nanos(now.saturating_sub(s.submitted)),
                deadline: {
                    let d = s.deadline.min(self.groups.v[s.group as usize].deadline);
                    (d != u64::MAX).then(|| self.epoch + Duration::from_nanos(d))
                },
                transferred: s.transferred,
            });
        }
        v
    }

    fn note_timer_stale(&mut self) {
        let table = &self.table;
        let groups = &self.groups;
        self.timers
            .note_stale(|at, target| timer_live(table, groups, at, target));
    }

    /// Fires every deadline that has passed.
    fn fire_timers(&mut self) {
        let now = self.now_ns();
        self.coarse_now = now;
        self.refresh_trace();
        let Some(next) = self.timers.next() else {
            return;
        };
        if next > now {
            return;
        }
        while let Some((at, target)) = self.timers.pop_due(now) {
            if !timer_live(&self.table, &self.groups, at, target) {
                self.timers.popped_stale();
                continue;
            }
            if target & GRACE_TARGET != 0 {
                // An interrupted op that did not stop within the grace: release its caller.
                let (idx, _) = split_key(target & !GRACE_TARGET);
                self.detach_slot(idx);
                continue;
            }
            if target & GROUP_TARGET != 0 {
                self.cancel_group_idx(target as u32, true);
            } else {
                let (idx, _) = split_key(target);
                self.cancel_slot(idx, true);
            }
        }
    }

    fn group_idx(&self, g: GroupId) -> Result<u32, Error> {
        self.groups.get(g).map(|_| g.idx).ok_or(Error::NoSuchGroup)
    }

    /// Creates a group (a cancellation scope) under `parent`.
    ///
    /// A child of a canceled or draining group starts canceled or draining; a shielded
    /// group does not inherit its parent's state and must have its own deadline.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{GroupId, GroupOptions, Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let parent = ring.group(GroupId::ROOT, GroupOptions::default().name("requests"))?;
    /// let child = ring.group(parent, GroupOptions::default())?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).group(child))?;
    /// ring.cancel_group(parent)?; // reaches the grandchild op
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::Canceled { transferred: 0 });
    /// # Ok(()) }
    /// ```
    pub fn group(&mut self, parent: GroupId, opts: GroupOptions) -> Result<GroupId, Error> {
        let p = self.group_idx(parent)?;
        if opts.shielded && opts.deadline.is_none() {
            return Err(Error::InvalidArgument(
                "a shielded group needs a deadline of its own",
            ));
        }
        let deadline = opts
            .deadline
            .map(|d| self.instant_ns(d))
            .unwrap_or(u64::MAX);
        let id = self.groups.create(p, opts.name, opts.shielded, deadline);
        if deadline != u64::MAX {
            self.timers.push(deadline, group_target(id));
        }
        Ok(id)
    }

    /// Sets (or moves earlier) a group's own deadline. Its unshielded descendants inherit it.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::{Duration, Instant};
    /// use quell::{GroupId, GroupOptions, Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let request = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(request))?;
    /// // The request turned out to be slow: give it 20 ms more, no longer.
    /// ring.set_group_deadline(request, Instant::now() + Duration::from_millis(20))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::TimedOut { transferred: 0 });
    /// # Ok(()) }
    /// ```
    pub fn set_group_deadline(&mut self, g: GroupId, at: Instant) -> Result<(), Error> {
        let idx = self.group_idx(g)?;
        let ns = self.instant_ns(at);
        let grp = self.groups.at(idx);
        grp.own_deadline = grp.own_deadline.min(ns);
        let parent_deadline = if grp.shielded || idx == 0 {
            u64::MAX
        } else {
            let p = grp.parent;
            self.groups.v[p as usize].deadline
        };
        let grp = self.groups.at(idx);
        grp.deadline = grp.own_deadline.min(parent_deadline);
        let own = grp.own_deadline;
        self.groups.push_deadline(idx);
        self.timers.push(own, group_target(g));
        Ok(())
    }

    /// Cancels every op of group `g` and of its descendants (shielded ones excepted);
    /// ops submitted to it later complete at once as `Canceled`. Returns how many
    /// outstanding ops were reached. Never blocks (I3, I7).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{GroupId, GroupOptions, Op};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// assert_eq!(ring.cancel_group(g)?, 2);
    /// // Sticky: a late op in the canceled group completes canceled at once.
    /// let late = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// assert!(ring.wait_for(late)?.outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn cancel_group(&mut self, g: GroupId) -> Result<usize, Error> {
        let idx = self.group_idx(g)?;
        Ok(self.cancel_group_idx(idx, false))
    }

    fn cancel_group_idx(&mut self, idx: u32, timed_out: bool) -> usize {
        let mut reach = std::mem::take(&mut self.scratch);
        self.groups.reach(idx, &mut reach);
        let mut hit = vec![false; self.groups.v.len()];
        for &i in &reach {
            let g = self.groups.at(i);
            if !g.canceled {
                g.canceled = true;
                g.timed_out = timed_out;
            }
            hit[i as usize] = true;
        }
        self.scratch = reach;
        self.cancel_where_slot(|s| hit[s as usize], timed_out)
    }

    /// Drains group `g` and its descendants (shielded ones excepted): new submissions
    /// are refused with [`Error::Draining`] (the op handed back), ops still in quell's
    /// queue are canceled, ops in flight run to their end. Returns how many queued ops
    /// were canceled. Resolve with [`is_drained`](Ring::is_drained) /
    /// [`wait_drained`](Ring::wait_drained).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{GroupId, GroupOptions, Op, Outcome};
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// let running = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// let queued = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// ring.flush()?;
    /// assert_eq!(ring.drain(g)?, 1); // the queued read is canceled
    /// let refused = ring.submit(Op::nop().group(g)).unwrap_err();
    /// assert!(matches!(refused.error(), quell::Error::Draining));
    /// // The running read is left to finish.
    /// std::io::Write::write_all(&mut &w, b"last")?;
    /// assert_eq!(ring.wait_for(running)?.outcome, Outcome::Done(4));
    /// assert!(ring.wait_for(queued)?.outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn drain(&mut self, g: GroupId) -> Result<usize, Error> {
        let idx = self.group_idx(g)?;
        let mut reach = std::mem::take(&mut self.scratch);
        self.groups.reach(idx, &mut reach);
        let mut hit = vec![false; self.groups.v.len()];
        for &i in &reach {
            self.groups.at(i).draining = true;
            hit[i as usize] = true;
        }
        self.scratch = reach;
        let mut queued = Vec::new();
        for slot in self.table.live() {
            let s = self.table.slot(slot);
            // A chain past its first step is in flight as a whole: drain lets it finish.
            let started = s.flags & F_CHAIN != 0
                && self.chains.peek(slot).is_some_and(|c| !c.at_first_step());
            if s.state == SlotState::Queued && hit[s.group as usize] && !started {
                queued.push(slot);
            }
        }
        for &slot in &queued {
            self.cancel_slot(slot, false);
        }
        Ok(queued.len())
    }

    /// [`drain`](Ring::drain), then after `grace` cancel whatever is still running
    /// (it completes `TimedOut`, or `Detached` for device I/O).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// use quell::{GroupId, GroupOptions, Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// ring.flush()?;
    /// // Graceful shutdown: 20 ms to finish, then it is stopped.
    /// ring.drain_with_grace(g, Duration::from_millis(20))?;
    /// assert!(ring.wait_drained(g, None)?);
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::TimedOut { transferred: 0 });
    /// # Ok(()) }
    /// ```
    pub fn drain_with_grace(&mut self, g: GroupId, grace: Duration) -> Result<usize, Error> {
        let n = self.drain(g)?;
        self.set_group_deadline(g, Instant::now() + grace)?;
        Ok(n)
    }

    /// Whether group `g` and all its descendants have no op queued or in flight.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{GroupId, GroupOptions, Op};
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// ring.flush()?;
    /// ring.drain(g)?;
    /// assert!(!ring.is_drained(g)?); // the read is still in flight
    /// std::io::Write::write_all(&mut &w, b"x")?;
    /// ring.wait_for(id)?;
    /// assert!(ring.is_drained(g)?);
    /// # Ok(()) }
    /// ```
    pub fn is_drained(&self, g: GroupId) -> Result<bool, Error> {
        let idx = self.group_idx(g)?;
        let mut sub = Vec::new();
        self.groups.subtree(idx, &mut sub);
        Ok(sub.iter().all(|&i| self.groups.v[i as usize].busy() == 0))
    }

    /// Drives the ring until group `g` is drained or `timeout` passes; returns whether it
    /// is drained. Completions accumulate in the ring for the caller to take.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    /// use quell::{GroupId, GroupOptions, Op};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// ring.drain(g)?;
    /// // The read never gets data: not drained in time, so escalate to a cancel.
    /// if !ring.wait_drained(g, Some(Duration::from_millis(10)))? {
    ///     ring.cancel_group(g)?;
    /// }
    /// assert!(ring.wait_drained(g, None)?);
    /// assert!(ring.next_completion().unwrap().outcome.is_canceled());
    /// # Ok(()) }
    /// ```
    pub fn wait_drained(&mut self, g: GroupId, timeout: Option<Duration>) -> Result<bool, Error> {
        let start = Instant::now();
        loop {
            if self.is_drained(g)? {
                return Ok(true);
            }
            let left = match timeout {
                Some(t) => match t.checked_sub(start.elapsed()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return Ok(false),
                },
                None => None,
            };
            let want = self.completions.len() + 1;
            self.wait(want, left)?;
        }
    }

    /// Counters of group `g` alone (not its descendants).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use quell::{GroupId, GroupOptions, Op};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::builder().max_in_flight(1).build()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))?;
    /// ring.flush()?;
    /// let s = ring.group_stats(g)?;
    /// assert_eq!((s.in_flight, s.queued), (1, 1));
    /// assert!(!s.canceled);
    /// # ring.cancel_all();
    /// # Ok(()) }
    /// ```
    pub fn group_stats(&self, g: GroupId) -> Result<GroupStats, Error> {
        let grp = self.groups.get(g).ok_or(Error::NoSuchGroup)?;
        let mut st = grp.stats;
        st.canceled = grp.canceled;
        st.draining = grp.draining;
        Ok(st)
    }

    /// The group's path of names, such as `"root/requests/g3"`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{GroupId, GroupOptions};
    /// let mut ring = quell::Ring::new()?;
    /// let api = ring.group(GroupId::ROOT, GroupOptions::default().name("api"))?;
    /// let anon = ring.group(api, GroupOptions::default())?;
    /// let path = ring.group_path(anon).unwrap();
    /// assert!(path.starts_with("root/api/g")); // unnamed groups get a number
    /// ring.remove_group(anon)?;
    /// assert_eq!(ring.group_path(anon), None);
    /// # Ok(()) }
    /// ```
    pub fn group_path(&self, g: GroupId) -> Option<String> {
        self.groups.get(g).map(|_| self.groups.path(g.idx))
    }

    /// Removes a group that has no children and no op queued, in flight or detached.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{GroupId, GroupOptions, Op};
    /// let mut ring = quell::Ring::new()?;
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// let id = ring.submit(Op::nop().group(g))?;
    /// assert!(ring.remove_group(g).is_err()); // its op's completion is not taken yet
    /// ring.wait_for(id)?;
    /// ring.remove_group(g)?;
    /// // The id is dead now, and stays so even if the slot is reused.
    /// assert!(matches!(ring.submit(Op::nop().group(g)).unwrap_err().error(), quell::Error::NoSuchGroup));
    /// # Ok(()) }
    /// ```
    pub fn remove_group(&mut self, g: GroupId) -> Result<(), Error> {
        let idx = self.group_idx(g)?;
        if idx == 0 {
            return Err(Error::InvalidArgument("the root group cannot be removed"));
        }
        let grp = &self.groups.v[idx as usize];
        if !grp.children.is_empty() || grp.busy() > 0 || grp.stats.detached > 0 {
            return Err(Error::InvalidArgument("group still has children or ops"));
        }
        if self.table.live().any(|s| self.table.slot(s).group == idx) {
            return Err(Error::InvalidArgument(
                "group still has completions not taken",
            ));
        }
        self.groups.remove(idx);
        Ok(())
    }

    /// Cancels every outstanding slot for which `pred(group index)` holds.
    fn cancel_where_slot(&mut self, pred: impl Fn(u32) -> bool, timed_out: bool) -> usize {
        let table = &self.table;
        let hits: Vec<u32> = table
            .live()
            .filter(|&i| pred(table.slot(i).group))
            .collect();
        self.cancel_slots(hits, timed_out)
    }

    /// Cancels everything, waits for every op to end, and refuses further submissions.
    /// Returns the completions that were not taken yet. Ops that cannot be canceled are
    /// waited for up to the teardown timeout; past it their memory is leaked rather
    /// than freed under the kernel (counted in [`Stats::leaked_at_teardown`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::read(r.as_raw_fd(), vec![0u8; 8]).user_data(1))?;
    /// ring.submit(quell::Op::nop().user_data(2))?;
    /// let left = ring.shutdown();
    /// assert_eq!(left.len(), 2); // every op's one completion, nothing lost
    /// assert!(left.iter().any(|c| c.user_data == 1 && c.outcome.is_canceled()));
    /// assert!(matches!(ring.submit(quell::Op::nop()).unwrap_err().error(), quell::Error::Closed));
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&mut self) -> Vec<Completion> {
        self.closed = true;
        self.shared.closed.store(true, Ordering::Release);
        // Requests left for the ring are refused from now on; those still waiting are
        // dropped, so an `OpsRequest` ends `Closed` at once instead of at its timeout.
        drop(self.shared.requests.close());
        self.cancel_all();
        self.cancel_detached();
        let start = Instant::now();
        // Canceled chains may still have a close to run (queued): dispatch it.
        while self.in_flight > 0 || self.chains.len() > 0 {
            self.dispatch();
            self.take_requests();
            self.reap();
            if self.in_flight == 0 {
                if self.chains.len() == 0 {
                    break;
                }
                continue; // a chain's close was queued by the reap
            }
            let Some(left) = self.teardown_timeout.checked_sub(start.elapsed()) else {
                self.leak_in_flight();
                break;
            };
            // Keep re-asking: a cancel can find a worker op before its syscall started.
            if let Err(e) = self
                .backend
                .wait(Some(left.min(Duration::from_millis(100))))
            {
                tracing::error!(error = %e, "waiting during teardown failed; leaking in-flight memory");
                self.leak_in_flight();
                break;
            }
        }
        self.completions().collect()
    }

    /// Asks the backend to stop detached ops too: an op detached as device I/O is
    /// waited for at teardown, and if it was not device I/O after all (a descriptor
    /// whose number was reused under it), the cancel ends it instead of the teardown
    /// timeout. For real device I/O the request is harmless.
    fn cancel_detached(&mut self) {
        let live: Vec<u32> = self.table.live().collect();
        for idx in live {
            let s = self.table.slot_mut(idx);
            if s.state == SlotState::Detached && s.flags & (F_KERNEL_DONE | F_CANCEL_SENT) == 0 {
                s.flags |= F_CANCEL_SENT;
                let (key, kind, class) = (key_of(idx, s.gen), s.desc.kind, s.class);
                self.backend.cancel(key, kind, class);
            }
        }
    }

    /// Gives up on ops the kernel still runs after the teardown timeout: each in-flight
    /// op still yields its one completion (`Detached`: the caller is released), and its
    /// memory is leaked, never freed under the kernel. A late kernel completion for any
    /// of them is ignored.
    fn leak_in_flight(&mut self) {
        let live: Vec<u32> = self.table.live().collect();
        for idx in live {
            let state = self.table.slot(idx).state;
            if !matches!(state, SlotState::InFlight | SlotState::Detached) {
                continue;
            }
            if state == SlotState::InFlight {
                self.detach_slot(idx);
            }
            let s = self.table.slot_mut(idx);
            if s.state == SlotState::Detached && s.flags & F_KERNEL_DONE == 0 {
                std::mem::forget(std::mem::take(&mut s.desc.payload));
                // Accounted for: the completion, when taken, frees the slot.
                s.flags |= F_KERNEL_DONE;
                self.stats.leaked_at_teardown += 1;
                tracing::warn!(slot = idx, kind = %s.desc.kind, "op still in flight at teardown; its memory is leaked");
            }
        }
        self.chains.leak_linked();
        self.clear_anchors();
        self.in_flight = 0;
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        for b in self.signals.drain(..) {
            signal_hook::low_level::unregister(b.id);
        }
        self.unbind_dumps();
        if !self.closed || self.in_flight > 0 {
            drop(self.shutdown());
        }
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("id", &self.id)
            .field("backend", &self.backend.kind())
            .field("outstanding", &self.outstanding)
            .field("in_flight", &self.in_flight)
            .field("ready", &self.completions.len())
            .finish()
    }
}

/// Narrows a RawOp to the next part of a derived transfer: skip what is done, cap at
/// the part size.
#[inline]
fn continue_part(raw: &mut crate::op::RawOp, done: u64, part: u32) {
    // SAFETY: `done` < the buffer's length, so the pointer stays inside the buffer.
    raw.ptr = unsafe { raw.ptr.add(done as usize) };
    raw.len = (raw.len - done as u32).min(part);
    if raw.offset != NO_OFFSET {
        raw.offset += done;
    }
}

fn group_target(g: GroupId) -> u64 {
    GROUP_TARGET | ((g.gen as u64 & 0x7fff_ffff) << 32) | g.idx as u64
}

/// Whether a timer entry still refers to a live deadline.
fn timer_live(table: &Table, groups: &Groups, at: u64, target: u64) -> bool {
    if target & GROUP_TARGET != 0 {
        let idx = target as u32;
        let gen = ((target >> 32) & 0x7fff_ffff) as u32;
        return groups
            .v
            .get(idx as usize)
            .is_some_and(|g| g.live && (g.gen & 0x7fff_ffff) == gen && g.own_deadline == at);
    }
    if target & GRACE_TARGET != 0 {
        // Live while the interrupted op is still running.
        let (idx, gen) = split_key(target & !GRACE_TARGET);
        return table
            .get(idx, gen)
            .is_some_and(|s| s.state == SlotState::InFlight);
    }
    let (idx, gen) = split_key(target);
    table.get(idx, gen).is_some_and(|s| {
        s.deadline == at && matches!(s.state, SlotState::Queued | SlotState::InFlight)
    })
}

/// Picks the backend (see [`BackendChoice`]) and says why.
fn choose_backend(choice: BackendChoice, parts: &BackendParts) -> Result<(Backend, String), Error> {
    #[cfg(feature = "fuzzing")]
    if let Some(f) = crate::backend::fake::take_armed() {
        return Ok((Backend::Fake(f), "fake (fuzzing)".to_string()));
    }
    let mut choice = choice;
    let mut forced_by = "BackendChoice";
    if choice == BackendChoice::Auto {
        match std::env::var("QUELL_BACKEND").as_deref() {
            Ok("uring") => choice = BackendChoice::Uring,
            Ok("portable") => choice = BackendChoice::Portable,
            _ => {}
        }
        forced_by = "QUELL_BACKEND";
    }
    let portable = |reason: String| match portable::Portable::new(parts) {
        Ok(p) => Ok((Backend::Portable(p), reason)),
        Err(e) => Err(Error::io("setting up the portable backend", e)),
    };
    match choice {
        BackendChoice::Uring => match uring::Uring::new(parts) {
            Ok(u) => Ok((
                Backend::Uring(u),
                format!("io_uring available (forced by {forced_by})"),
            )),
            Err(why) => Err(Error::Unsupported {
                op: "ring",
                backend: "uring",
                why: Box::leak(why.0.into_boxed_str()),
            }),
        },
        BackendChoice::Portable => portable(format!("portable forced by {forced_by}")),
        BackendChoice::Auto => match uring::Uring::new(parts) {
            Ok(u) => Ok((Backend::Uring(u), "io_uring available".to_string())),
            // EPERM (seccomp, io_uring_disabled), ENOSYS, EOPNOTSUPP, missing opcodes, and
            // any other setup failure: the portable backend keeps the same contract.
            Err(why) => portable(format!("{} → portable", why.0)),
        },
    }
}

/// The honest outcome of a finished op (contract item I4).
#[inline]
fn outcome_of(kind: OpKind, flags: u16, prior: u64, asked: u64, res: i64) -> Outcome {
    let canceled = flags & F_CANCEL != 0;
    let stopped = |t: u64| {
        if flags & F_TIMEOUT != 0 {
            Outcome::TimedOut {
                transferred: t as usize,
            }
        } else {
            Outcome::Canceled {
                transferred: t as usize,
            }
        }
    };
    if res >= 0 {
        let n = res as u64;
        // A short result after a cancel: for a write, send or splice (which the kernel
        // retries until all is moved), or a derived op (an exact transfer, a later part),
        // the cancel stopped it part-way. A single read is short whenever less was
        // there: it completed, whether or not a cancel came too late (and the portable
        // backend, which cancels a waiting read before it moves anything, agrees).
        let single_read = kind.is_read() && prior == 0 && flags & (F_EXACT | F_SPLIT) == 0;
        if canceled && kind.is_transfer() && prior + n < asked && !single_read {
            return stopped(prior + n);
        }
        return Outcome::Done((prior + n) as usize);
    }
    let errno = (-res) as i32;
    if kind == OpKind::Timeout && errno == libc::ETIME {
        return Outcome::Done(0);
    }
    // A canceled io-wq worker's blocking syscall (a FIFO open waiting for a partner)
    // can report the kernel-internal ERESTARTSYS family (512..=516) instead of EINTR.
    if canceled
        && (errno == libc::ECANCELED || errno == libc::EINTR || (512..=516).contains(&errno))
    {
        return stopped(prior);
    }
    if prior > 0 {
        // An earlier part (or retry) moved `prior` bytes before this one failed: report
        // the partial transfer, as read(2)/write(2) do; the error comes back from the
        // next call on the descriptor (I4, I6: the parent's total is never lost).
        return Outcome::Done(prior as usize);
    }
    Outcome::Failed(crate::outcome::Errno::from_raw_os_error(errno))
}

/// What a descriptor's facts forbid `op` to ask: a misaligned transfer on an `O_DIRECT`
/// descriptor, a position on a pipe, FIFO or socket.
fn fd_rules(op: &Op, info: &crate::classify::FdInfo) -> Result<(), Error> {
    let d = &op.desc;
    if info.direct && matches!(d.kind, OpKind::Read | OpKind::Write) {
        check_direct(op, info.dio_mem_align, info.dio_offset_align)?;
    }
    if info.stream && d.offset != NO_OFFSET && d.kind.is_transfer() {
        return Err(Error::InvalidArgument(NO_POSITION));
    }
    Ok(())
}

/// Why a positioned transfer on a pipe, FIFO or socket is refused (`pread(2)` answers
/// `ESPIPE`; io_uring would ignore the offset: the backends must agree).
pub(crate) const NO_POSITION: &str =
    "positioned transfer on a pipe, FIFO or socket, which has no file position (ESPIPE)";

/// Whether a file offset is one the kernel refuses (`EINVAL`): above `i64::MAX`, other
/// than [`NO_OFFSET`] ("the current position"). One add and one compare.
#[inline(always)]
pub(crate) fn offset_out_of_range(offset: u64) -> bool {
    offset.wrapping_add(1) > (i64::MAX as u64) + 1
}

/// O_DIRECT alignment rules for one buffer.
fn check_direct(op: &Op, mem_align: u32, off_align: u32) -> Result<(), Error> {
    let fd = op.desc.fd;
    let (ptr, len) = match &op.desc.payload {
        Payload::Buf(v) => (v.as_ptr() as usize, v.len()),
        Payload::Aligned(a) => (a.as_ptr() as usize, a.len()),
        _ => return Ok(()),
    };
    let m = mem_align.max(1) as usize;
    let o = off_align.max(1) as u64;
    if ptr % m != 0 {
        return Err(Error::Misaligned {
            fd,
            what: "buffer address",
            align: mem_align,
        });
    }
    if op.desc.offset != NO_OFFSET && op.desc.offset % o != 0 {
        return Err(Error::Misaligned {
            fd,
            what: "offset",
            align: off_align,
        });
    }
    if len as u64 % o != 0 {
        return Err(Error::Misaligned {
            fd,
            what: "length",
            align: off_align,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_honest() {
        assert_eq!(outcome_of(OpKind::Read, 0, 0, 10, 10), Outcome::Done(10));
        assert_eq!(outcome_of(OpKind::Read, 0, 0, 10, 3), Outcome::Done(3));
        // A single read that completed short completed, cancel or not; a write, an
        // exact read or a later part stopped short by a cancel was stopped.
        assert_eq!(
            outcome_of(OpKind::Read, F_CANCEL, 0, 10, 3),
            Outcome::Done(3)
        );
        assert_eq!(
            outcome_of(OpKind::Read, F_CANCEL | F_EXACT, 0, 10, 3),
            Outcome::Canceled { transferred: 3 }
        );
        assert_eq!(
            outcome_of(OpKind::Read, F_CANCEL, 4, 10, 3),
            Outcome::Canceled { transferred: 7 }
        );
        assert_eq!(
            outcome_of(OpKind::Read, F_CANCEL | F_SPLIT, 0, 10, 3),
            Outcome::Canceled { transferred: 3 }
        );
        assert_eq!(
            outcome_of(OpKind::Write, F_CANCEL, 0, 10, 3),
            Outcome::Canceled { transferred: 3 }
        );
        // An error after earlier parts moved bytes reports the bytes (read(2)/write(2)).
        assert_eq!(
            outcome_of(OpKind::Write, 0, 8192, 12288, -(libc::ENOSPC as i64)),
            Outcome::Done(8192)
        );
        assert_eq!(
            outcome_of(OpKind::Write, 0, 0, 12288, -(libc::ENOSPC as i64)),
            Outcome::Failed(crate::outcome::Errno::NOSPC)
        );
        assert_eq!(
            outcome_of(OpKind::Read, F_CANCEL, 0, 10, 10),
            Outcome::Done(10)
        );
        assert_eq!(
            outcome_of(OpKind::Read, F_CANCEL, 0, 10, -(libc::EINTR as i64)),
            Outcome::Canceled { transferred: 0 }
        );
        assert_eq!(
            outcome_of(OpKind::Read, 0, 0, 10, -(libc::EINTR as i64)),
            Outcome::Failed(crate::outcome::Errno::INTR)
        );
        assert_eq!(
            outcome_of(
                OpKind::Write,
                F_CANCEL | F_TIMEOUT,
                0,
                10,
                -(libc::ECANCELED as i64)
            ),
            Outcome::TimedOut { transferred: 0 }
        );
        assert_eq!(
            outcome_of(OpKind::OpenAt, F_CANCEL, 0, 0, -512),
            Outcome::Canceled { transferred: 0 },
            "ERESTARTSYS from a canceled io-wq open"
        );
        assert_eq!(
            outcome_of(OpKind::Timeout, 0, 0, 0, -(libc::ETIME as i64)),
            Outcome::Done(0)
        );
        assert_eq!(
            outcome_of(OpKind::Poll, F_CANCEL, 0, 0, 1),
            Outcome::Done(1),
            "a poll that fired is done even if canceled late"
        );
    }
}
