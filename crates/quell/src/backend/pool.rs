//! quell's interruptible thread pool, used by both backends: by the portable backend for
//! every call that cannot be done without blocking, and by the io_uring backend for
//! [`Op::blocking`](crate::Op::blocking) closures.
//!
//! # Threads
//! At most `pool_threads` workers per ring, spawned lazily (a ring that never blocks
//! never starts a thread). Each worker blocks every asynchronous signal except quell's
//! interrupt signal, so process-directed signals (SIGINT, ...) go to the application's
//! threads, not to a worker in the middle of a system call.
//!
//! # Cancel
//! - A job not yet picked up by a worker is canceled with certainty: it completes with
//!   `-ECANCELED` at once and never runs (the worker that later pops it drops it).
//! - A job a worker runs gets its cancel flag set and the worker is sent quell's
//!   interrupt signal ([`interrupt_signal`]) with `pthread_kill`. The signal's handler
//!   does nothing and is installed without `SA_RESTART`, so the blocking system call
//!   returns `EINTR` (a FUSE request gets FUSE_INTERRUPT), and the worker reports the
//!   honest result: the bytes moved, `-EINTR` (the ring makes it `Canceled`), or the
//!   call's own result if it finished first.
//! - Races: the worker checks the cancel flag right before each system call; a signal
//!   that arrives after that check and before the call blocks is caught by re-sending the
//!   signal (after 1, 2, 4, 8 ms, then every 10 ms, from [`Pool::tick`], which the
//!   backends call from `wait`) until the worker has left the job, for about a second;
//!   a call still blocked after that is not interruptible and is left to finish.
//!   A signal is only ever sent while the target job holds its per-job lock in the
//!   `Running` state, so it never hits the worker's next job, and pending instances
//!   left over are drained (`sigtimedwait`) before the worker takes another job.
//!
//! # Descriptor identity (contract item I12)
//! A job may wait for a worker while its descriptor number is closed and reused by
//! another file. It never acts on that other file. On io_uring an op holds a reference to
//! its file; here each descriptor of a quell op is held as [`Hold`] says: pollable objects
//! (pipes, sockets, eventfds, terminals) through a private duplicate the job acts on and
//! closes when it is done (the op keeps its own file, as on io_uring; this costs one
//! descriptor per such job while it exists); files, directories
//! and block devices through their identity, checked (without blocking) right before each
//! system call — a duplicate of those is never taken, because closing it would drop the
//! process's POSIX record locks on the file. If the number then names another file (or
//! none), the job ends `EBADF` without acting. When the ring itself closes the number
//! ([`Pool::retarget`]) the jobs still queued on it move onto a duplicate, so they keep
//! their file as on io_uring. A descriptor quell owns (`RawOp::owned`: a stream's or a
//! listener's, closed by its owner only after its ops are done) cannot change under a
//! job: its jobs hold nothing and pay nothing, until the ring closes it under them
//! (then they move onto a duplicate like the others).
//!
//! # Drop
//! Dropping the pool never waits for workers: idle ones exit by themselves, one stuck in
//! an uninterruptible call is detached and exits when the call returns. The ring never
//! frees memory a worker may still write (it leaks it at teardown, see `Ring::shutdown`).

use super::sys;
use crate::op::{BlockingFn, OpKind, RawOp};
use crate::outcome::CancelClass;
use crate::wake::Doorbell;
use rustc_hash::FxHashMap as HashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How a queued job keeps to the file one of its descriptors named when it was submitted.
pub(crate) enum Hold {
    /// A private duplicate the job acts on instead of the number, closed when the job is
    /// dropped (pollable objects, and any file the ring closed under a queued job).
    Dup(Arc<OwnedFd>),
    /// The identity the number must still have when the job runs (files, directories,
    /// block devices: see the module docs).
    Same(RawFd, sys::Identity),
}

impl Hold {
    /// Takes hold of what `fd` names now. `stream`: the ring classed it pollable, so a
    /// duplicate is tried without asking what it is first. Where no duplicate can be
    /// taken (`EMFILE`), the identity is checked instead. `None` if `fd` is no descriptor
    /// (`AT_FDCWD`) or names nothing: the job then meets the same error when it runs.
    fn take(fd: RawFd, stream: bool) -> Option<Hold> {
        if fd < 0 {
            return None;
        }
        let dup = || {
            // SAFETY: `fd` is only read by fcntl for the call's duration; a closed number
            // yields an error.
            rustix::io::fcntl_dupfd_cloexec(unsafe { BorrowedFd::borrow_raw(fd) }, sys::DUP_MIN)
                .ok()
                .map(|d| Hold::Dup(Arc::new(d)))
        };
        if stream {
            if let Some(h) = dup() {
                return Some(h);
            }
        }
        let id = sys::identity(fd)?;
        if !stream && id.is_stream() {
            if let Some(h) = dup() {
                return Some(h);
            }
        }
        Some(Hold::Same(fd, id))
    }

    /// Whether the job may still act through this hold.
    fn holds(&self) -> bool {
        match self {
            Hold::Dup(_) => true,
            Hold::Same(fd, id) => sys::identity(*fd) == Some(*id),
        }
    }
}

/// What a worker runs.
pub(crate) enum Work {
    /// A quell op, run with plain blocking system calls. `prefix` bytes of it were already
    /// moved inline; `iov` (if any) describes the rest of a vectored transfer. `holds`
    /// keep `raw.fd` and `raw.fd2` to the files they named at submission.
    Raw {
        raw: RawOp,
        prefix: u64,
        iov: Option<Vec<libc::iovec>>,
        holds: [Option<Hold>; 2],
    },
    /// A user closure ([`Op::blocking`](crate::Op::blocking)).
    Closure(BlockingFn),
}

// SAFETY: the raw pointers inside (RawOp, iovecs) describe memory the ring's op table
// keeps alive and untouched until the job's result is reaped; only the worker running
// the job uses them.
unsafe impl Send for Work {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobState {
    Queued,
    Running,
    Done,
    /// Canceled before a worker took it: never runs.
    Dropped,
}

struct Ctl {
    state: JobState,
    /// The worker running the job (valid while `Running`).
    thread: libc::pthread_t,
    /// Whether an interrupt signal was sent to the worker for this job.
    signaled: bool,
}

/// The shared part of one job.
struct Job {
    key: u64,
    /// Bytes already moved inline before the job was queued.
    prefix: u64,
    cancel: AtomicBool,
    ctl: Mutex<Ctl>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Queue {
    jobs: VecDeque<(Arc<Job>, Work)>,
    idle: usize,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    results: Mutex<Vec<(u64, i64)>>,
    has_results: AtomicBool,
    doorbell: Arc<Doorbell>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn post(&self, key: u64, res: i64) {
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, res));
        if !self.has_results.swap(true, Ordering::AcqRel) {
            self.doorbell.ring();
        }
    }
}

/// A canceled job whose worker may still be blocked: the signal is re-sent until it leaves.
struct Interrupt {
    job: Arc<Job>,
    next: Instant,
    every: Duration,
    sent: u32,
}

/// Longest interval between re-sent interrupt signals.
const RESEND_MAX: Duration = Duration::from_millis(10);
/// After this many signals a still-blocked call is deemed uninterruptible (about 1 s).
const RESEND_LIMIT: u32 = 100;

/// The pool of one ring.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    max_threads: usize,
    threads: usize,
    /// Jobs given to the pool whose result has not been reaped (ring thread only).
    jobs: HashMap<u64, Arc<Job>>,
    /// Results known on the ring's thread (jobs canceled while queued).
    ready: Vec<(u64, i64)>,
    interrupting: Vec<Interrupt>,
}

impl Pool {
    pub(crate) fn new(max_threads: usize, doorbell: Arc<Doorbell>) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    idle: 0,
                    shutdown: false,
                }),
                cv: Condvar::new(),
                results: Mutex::new(Vec::new()),
                has_results: AtomicBool::new(false),
                doorbell,
            }),
            max_threads: max_threads.max(1),
            threads: 0,
            jobs: HashMap::default(),
            ready: Vec::new(),
            interrupting: Vec::new(),
        }
    }

    /// Queues a quell op to run blocking on a worker, holding its descriptors' files
    /// (see the module docs; `class`: how the ring classed the op's descriptor).
    pub(crate) fn submit_raw(
        &mut self,
        key: u64,
        mut raw: RawOp,
        prefix: u64,
        iov: Option<Vec<libc::iovec>>,
        class: CancelClass,
    ) {
        let mut holds = [None, None];
        // A close acts on the number itself; closures and timers have no descriptor.
        if raw.kind.uses_fd() && raw.kind != OpKind::Close {
            // A descriptor quell owns names the job's file until the job is done (its
            // owner closes it after its ops; a close through the ring retargets it).
            if !raw.owned {
                holds[0] = Hold::take(raw.fd, class == CancelClass::Prompt);
            }
            if matches!(raw.kind, OpKind::Splice | OpKind::RenameAt) {
                holds[1] = Hold::take(raw.fd2, false);
            }
            for (h, fd) in holds.iter().zip([&mut raw.fd, &mut raw.fd2]) {
                if let Some(Hold::Dup(d)) = h {
                    *fd = d.as_raw_fd();
                }
            }
        }
        self.submit(
            key,
            prefix,
            Work::Raw {
                raw,
                prefix,
                iov,
                holds,
            },
        );
    }

    /// The ring is closing `fd`: jobs still queued that hold it by identity move onto a
    /// duplicate (taken once, shared), so they keep acting on their file after the number
    /// is gone, as io_uring's ops do. Jobs already running hold the file in the kernel.
    pub(crate) fn retarget(&mut self, fd: RawFd) {
        if self.jobs.is_empty() {
            return; // nothing queued: no lock taken on the close path
        }
        // What the number names as the ring closes it: the file jobs held by identity
        // (or acting on it as its owner's) were submitted on, if theirs matches.
        let Some(now) = sys::identity(fd) else {
            return;
        };
        let mut q = self.shared.queue();
        let mut dup: Option<Arc<OwnedFd>> = None;
        for (job, work) in q.jobs.iter_mut() {
            let Work::Raw { raw, holds, .. } = work else {
                continue;
            };
            if job.lock().state != JobState::Queued {
                continue;
            }
            let owned = raw.owned;
            for (i, (h, num)) in holds
                .iter_mut()
                .zip([&mut raw.fd, &mut raw.fd2])
                .enumerate()
            {
                let ours = match h {
                    Some(Hold::Same(n, id)) => *n == fd && *id == now,
                    // An owned descriptor's job holds nothing: its number is its file.
                    None => i == 0 && owned && *num == fd,
                    Some(Hold::Dup(_)) => false,
                };
                if !ours {
                    continue;
                }
                if dup.is_none() {
                    // SAFETY: `fd` is open (its identity was just read); the duplicate is ours.
                    let d = rustix::io::fcntl_dupfd_cloexec(
                        unsafe { BorrowedFd::borrow_raw(fd) },
                        sys::DUP_MIN,
                    );
                    dup = d.ok().map(Arc::new);
                }
                match &dup {
                    Some(d) => {
                        *num = d.as_raw_fd();
                        *h = Some(Hold::Dup(d.clone()));
                    }
                    // No descriptor left (EMFILE): the job's identity check fails it once
                    // the number names another file or none.
                    None => *h = Some(Hold::Same(fd, now)),
                }
            }
        }
    }

    /// Queues a closure.
    pub(crate) fn submit_fn(&mut self, key: u64, f: BlockingFn) {
        self.submit(key, 0, Work::Closure(f));
    }

    fn submit(&mut self, key: u64, prefix: u64, work: Work) {
        let job = Arc::new(Job {
            key,
            prefix,
            cancel: AtomicBool::new(false),
            ctl: Mutex::new(Ctl {
                state: JobState::Queued,
                // SAFETY: pthread_t is an integer on Linux; 0 is never used while Queued.
                thread: unsafe { std::mem::zeroed() },
                signaled: false,
            }),
        });
        self.jobs.insert(key, job.clone());
        let (spawn, idle) = {
            let mut q = self.shared.queue();
            q.jobs.push_back((job, work));
            (
                q.jobs.len() > q.idle && self.threads < self.max_threads,
                q.idle > 0,
            )
        };
        if idle {
            self.shared.cv.notify_one();
        }
        if spawn {
            self.spawn();
        }
    }

    fn spawn(&mut self) {
        let signo = interrupt_signal();
        let shared = self.shared.clone();
        let res = std::thread::Builder::new()
            .name("quell-pool".into())
            .spawn(move || worker(shared, signo));
        match res {
            Ok(_detached) => self.threads += 1,
            Err(e) if self.threads == 0 => {
                // No worker at all: nothing queued could ever run. Fail it honestly.
                tracing::error!(error = %e, "cannot start a pool worker");
                let jobs: Vec<_> = self.shared.queue().jobs.drain(..).collect();
                let errno = e.raw_os_error().unwrap_or(libc::EAGAIN);
                for (job, _) in jobs {
                    self.jobs.remove(&job.key);
                    self.ready.push((job.key, -(errno as i64)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot start another pool worker"),
        }
    }

    /// Requests cancellation of `key`. Returns `false` if the pool does not know it.
    pub(crate) fn cancel(&mut self, key: u64) -> bool {
        let Some(job) = self.jobs.get(&key) else {
            return false;
        };
        if job.cancel.swap(true, Ordering::SeqCst) {
            // Asked before: its interrupt is already being sent (or it was dropped).
            return true;
        }
        let mut ctl = job.lock();
        match ctl.state {
            JobState::Queued => {
                ctl.state = JobState::Dropped;
                drop(ctl);
                let prefix = job.prefix;
                self.jobs.remove(&key);
                // Bytes moved inline before the job was queued are the honest result.
                let res = if prefix > 0 {
                    prefix as i64
                } else {
                    -(libc::ECANCELED as i64)
                };
                self.ready.push((key, res));
            }
            JobState::Running => {
                signal(ctl.thread);
                ctl.signaled = true;
                drop(ctl);
                let every = Duration::from_millis(1);
                self.interrupting.push(Interrupt {
                    job: job.clone(),
                    next: Instant::now() + every,
                    every,
                    sent: 1,
                });
            }
            JobState::Done | JobState::Dropped => {}
        }
        true
    }

    /// Re-sends interrupt signals that are due. Returns how long until the next one.
    pub(crate) fn tick(&mut self) -> Option<Duration> {
        if self.interrupting.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        self.interrupting.retain_mut(|i| {
            let mut ctl = i.job.lock();
            if ctl.state != JobState::Running || i.sent >= RESEND_LIMIT {
                return false;
            }
            if now >= i.next {
                signal(ctl.thread);
                ctl.signaled = true;
                i.sent += 1;
                i.every = (i.every * 2).min(RESEND_MAX);
                i.next = now + i.every;
            }
            next = Some(next.map_or(i.next, |n| n.min(i.next)));
            true
        });
        next.map(|n| n.saturating_duration_since(now))
    }

    /// Caps a wait's timeout so the next interrupt re-send is not late.
    pub(crate) fn cap(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        match (self.tick(), timeout) {
            (Some(r), Some(t)) => Some(r.min(t)),
            (Some(r), None) => Some(r),
            (None, t) => t,
        }
    }

    /// Whether results are waiting to be reaped.
    pub(crate) fn has_results(&self) -> bool {
        !self.ready.is_empty() || self.shared.has_results.load(Ordering::Acquire)
    }

    /// Moves finished `(key, result)` pairs into `out`.
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i64)>) {
        out.append(&mut self.ready);
        if !self.shared.has_results.swap(false, Ordering::AcqRel) {
            return;
        }
        let start = out.len();
        out.append(
            &mut self
                .shared
                .results
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for &(key, _) in &out[start..] {
            self.jobs.remove(&key);
        }
    }

    /// Jobs given to the pool and not reaped.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.queue().shutdown = true;
        self.shared.cv.notify_all();
        // Workers are detached: idle ones exit now, busy ones when their call returns.
    }
}

fn signal(thread: libc::pthread_t) {
    // SAFETY: `thread` is a live pool worker: it is in the `Running` state of a job, and
    // the caller holds that job's lock, which the worker must take before it leaves the
    // job (so it cannot exit meanwhile).
    let rc = unsafe { libc::pthread_kill(thread, interrupt_signal()) };
    if rc != 0 {
        tracing::debug!(rc, "pthread_kill failed");
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Job>>> = const { RefCell::new(None) };
}

/// Whether the op the calling pool worker runs has been asked to stop.
pub(crate) fn cancel_requested() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|j| j.cancel.load(Ordering::Relaxed))
    })
}

fn worker(shared: Arc<Shared>, signo: i32) {
    set_worker_mask(signo);
    loop {
        let (job, work) = {
            let mut q = shared.queue();
            loop {
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                if q.shutdown {
                    return;
                }
                q.idle += 1;
                q = shared.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                q.idle -= 1;
            }
        };
        {
            let mut ctl = job.lock();
            if ctl.state == JobState::Dropped {
                continue; // canceled while queued: its completion is already out
            }
            ctl.state = JobState::Running;
            // SAFETY: pthread_self has no preconditions.
            ctl.thread = unsafe { libc::pthread_self() };
        }
        CURRENT.with(|c| *c.borrow_mut() = Some(job.clone()));
        let res = run(&job, work);
        CURRENT.with(|c| *c.borrow_mut() = None);
        let signaled = {
            let mut ctl = job.lock();
            ctl.state = JobState::Done;
            ctl.signaled
        };
        if signaled {
            drain_signal(signo);
        }
        shared.post(job.key, res);
    }
}

fn run(job: &Job, work: Work) -> i64 {
    match work {
        Work::Closure(f) => {
            if job.cancel.load(Ordering::SeqCst) {
                return -(libc::ECANCELED as i64);
            }
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(Ok(n)) => n.min(i64::MAX as usize) as i64,
                Ok(Err(e)) => -(e.raw_os_error().unwrap_or(libc::EIO) as i64),
                Err(_) => {
                    tracing::error!(key = job.key, "a blocking closure panicked");
                    -(libc::EIO as i64)
                }
            }
        }
        Work::Raw {
            raw,
            prefix,
            iov,
            holds,
        } => {
            let res = loop {
                if job.cancel.load(Ordering::SeqCst) {
                    break -(libc::ECANCELED as i64);
                }
                if !holds.iter().flatten().all(Hold::holds) {
                    // The number was closed or reused since submission: never act on
                    // whatever it names now.
                    break -(libc::EBADF as i64);
                }
                // SAFETY: the ring keeps the op's memory until this result is reaped.
                let r = unsafe { sys::blocking(&raw, iov.as_deref()) };
                // EINTR from a signal other than a cancel: the call did nothing; retry.
                // (close is never retried: the descriptor is gone either way.)
                if r == -(libc::EINTR as i64)
                    && !job.cancel.load(Ordering::SeqCst)
                    && raw.kind != crate::op::OpKind::Close
                {
                    continue;
                }
                break r;
            };
            if prefix == 0 {
                res
            } else if res < 0 {
                prefix as i64 // the part moved inline is the truth
            } else {
                prefix as i64 + res
            }
        }
    }
}

/// Blocks every asynchronous signal on this worker except the interrupt signal.
fn set_worker_mask(signo: i32) {
    // SAFETY: sigset_t is plain data; the sig* functions initialise and edit it, and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            signo,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Removes interrupt signals still pending on this thread (sent for a job that ended).
fn drain_signal(signo: i32) {
    // SAFETY: a valid sigset and timespec; a zero timeout makes sigtimedwait poll.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signo);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == signo {}
    }
}

extern "C" fn on_interrupt(_: libc::c_int) {}

static REQUESTED: AtomicI32 = AtomicI32::new(0);
static SIGNAL: OnceLock<i32> = OnceLock::new();

/// Chooses the interrupt signal and installs it now (see
/// [`crate::blocking::set_interrupt_signal`]). `false` if another one is already in use.
pub(crate) fn request_signal(signo: i32) -> bool {
    REQUESTED.store(signo, Ordering::SeqCst);
    interrupt_signal() == signo
}

/// The interrupt signal, installing its handler on first use (process-wide, once).
pub(crate) fn interrupt_signal() -> i32 {
    *SIGNAL.get_or_init(install)
}

fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    let s = s.strip_prefix("SIG").unwrap_or(s);
    if let Some(rest) = s.strip_prefix("RTMIN") {
        let n: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')?.parse().ok()?
        };
        return Some(libc::SIGRTMIN() + n);
    }
    if let Some(rest) = s.strip_prefix("RTMAX") {
        let n: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('-')?.parse().ok()?
        };
        return Some(libc::SIGRTMAX() - n);
    }
    s.parse().ok()
}

fn current_action(signo: i32) -> Option<libc::sigaction> {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(signo, std::ptr::null(), &mut old) == 0).then_some(old)
    }
}

fn is_free(a: &libc::sigaction) -> bool {
    a.sa_sigaction == libc::SIG_DFL || a.sa_sigaction == libc::SIG_IGN
}

fn install() -> i32 {
    let explicit = match REQUESTED.load(Ordering::SeqCst) {
        0 => std::env::var("QUELL_SIGNAL")
            .ok()
            .and_then(|v| parse_signal(&v)),
        s => Some(s),
    };
    let valid = |s: i32| (1..=libc::SIGRTMAX()).contains(&s);
    let chosen = match explicit.filter(|&s| valid(s)) {
        Some(s) => s,
        None => {
            // The first real-time signal from SIGRTMIN+7 on that nobody handles.
            let first = libc::SIGRTMIN() + 7;
            (first..=libc::SIGRTMAX())
                .chain(libc::SIGRTMIN()..first)
                .find(|&s| current_action(s).is_some_and(|a| is_free(&a)))
                .unwrap_or(first)
        }
    };
    match current_action(chosen) {
        Some(a) if !is_free(&a) => {
            // Someone else's handler: keep it (never clobber). It must not restart calls.
            if a.sa_flags & libc::SA_RESTART != 0 {
                tracing::warn!(
                    signal = chosen,
                    "the interrupt signal has a handler with SA_RESTART: pool workers cannot be interrupted"
                );
            }
        }
        _ => {
            // SAFETY: installs a handler that does nothing (async-signal-safe), with an
            // empty mask and without SA_RESTART so blocking calls return EINTR.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut act.sa_mask);
                act.sa_flags = 0;
                if libc::sigaction(chosen, &act, std::ptr::null_mut()) != 0 {
                    tracing::error!(
                        signal = chosen,
                        "cannot install the interrupt signal handler"
                    );
                }
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_names() {
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(parse_signal("RTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(parse_signal("40"), Some(40));
        assert_eq!(parse_signal("RTMIN+x"), None);
    }

    fn wait_results(pool: &mut Pool, n: usize) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        let start = Instant::now();
        while out.len() < n && start.elapsed() < Duration::from_secs(10) {
            pool.tick();
            pool.reap(&mut out);
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    #[test]
    fn interrupts_a_blocked_read() {
        let bell = Arc::new(Doorbell::new().unwrap());
        let mut pool = Pool::new(2, bell);
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        pool.submit_fn(
            1,
            Box::new(move || {
                let mut b = [0u8; 8];
                // SAFETY: valid buffer.
                let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }),
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(pool.cancel(1));
        let t = Instant::now();
        let out = wait_results(&mut pool, 1);
        assert_eq!(out, vec![(1, -(libc::EINTR as i64))]);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(pool.len(), 0);
    }

    /// A running job canceled twice (say a deadline, then `cancel_all`) is interrupted by
    /// one series of re-sent signals, not two, and still completes once.
    #[test]
    fn a_second_cancel_adds_no_second_interrupt_series() {
        let bell = Arc::new(Doorbell::new().unwrap());
        let mut pool = Pool::new(1, bell);
        let (r, w) = rustix::pipe::pipe().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
        let (tx, started) = std::sync::mpsc::channel();
        pool.submit_fn(
            1,
            Box::new(move || {
                let _ = tx.send(());
                // An uninterruptible-looking call: keeps blocking through EINTR until
                // data comes.
                let mut b = [0u8; 1];
                loop {
                    // SAFETY: valid buffer.
                    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
                    if n >= 0 {
                        return Ok(n as usize);
                    }
                }
            }),
        );
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        let t = Instant::now();
        while pool.jobs[&1].lock().state != JobState::Running {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(pool.cancel(1));
        assert!(pool.cancel(1));
        assert_eq!(pool.interrupting.len(), 1, "one interrupt series per job");
        rustix::io::write(&w, b"x").unwrap();
        let out = wait_results(&mut pool, 1);
        assert_eq!(out, vec![(1, 1)]);
        assert_eq!(pool.len(), 0);
    }

    /// A job on a descriptor quell owns (`RawOp::owned`) holds nothing (no duplicate, no
    /// identity read) and acts through the number, which its owner keeps open until the
    /// job is done. If the ring itself closes the number under the queued job, the job
    /// moves onto a duplicate and reads its own file after the number is reused.
    #[test]
    fn an_owned_job_holds_nothing_until_the_ring_closes_its_number() {
        use std::os::fd::IntoRawFd;
        let bell = Arc::new(Doorbell::new().unwrap());
        let mut pool = Pool::new(1, bell);
        let (release, rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        pool.submit_fn(
            1,
            Box::new(move || {
                let _ = started_tx.send(());
                let _ = rx.recv_timeout(Duration::from_secs(30));
                Ok(0)
            }),
        );
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let n = r.into_raw_fd();
        let mut buf = vec![0u8; 16];
        let raw = RawOp {
            kind: OpKind::Read,
            fd: n,
            fd2: -1,
            len: 16,
            flags: 0,
            offset: crate::op::NO_OFFSET,
            aux: 16,
            ptr: buf.as_mut_ptr(),
            ptr2: std::ptr::null_mut(),
            owned: true,
        };
        pool.submit_raw(2, raw, 0, None, CancelClass::Prompt);
        {
            let q = pool.shared.queue();
            let (_, work) = q.jobs.iter().find(|(j, _)| j.key == 2).unwrap();
            let Work::Raw { raw, holds, .. } = work else {
                panic!("a raw job")
            };
            assert!(holds[0].is_none(), "an owned descriptor needs no hold");
            assert_eq!(raw.fd, n);
        }
        // The ring closes the number; another pipe takes it.
        pool.retarget(n);
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        // SAFETY: `n` is ours (taken from its owner above); dup2 closes it and makes it a
        // copy of the new pipe's reading end, which `_n2` then owns.
        assert_eq!(
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&r2), n) },
            n
        );
        // SAFETY: `n` names a descriptor nothing else owns.
        let _n2 = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) };
        rustix::io::write(&w, b"old").unwrap();
        rustix::io::write(&w2, b"new").unwrap();
        release.send(()).unwrap();
        let mut out = wait_results(&mut pool, 2);
        out.sort_unstable();
        assert_eq!(out, vec![(1, 0), (2, 3)]);
        assert_eq!(&buf[..3], b"old");
    }
}
