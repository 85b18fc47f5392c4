//! Backends: what actually runs an operation.
//!
//! The ring core hands a backend a plain-data [`RawOp`] and a 64-bit key; the backend
//! starts it and later reports `(key, result)` pairs, `result` being the syscall's
//! return value or `-errno`. Memory behind a `RawOp` belongs to the ring's op table and
//! stays valid until the backend has reported the key. A backend never blocks in
//! `start` or `cancel`, and never loses a cancel request.
//!
//! Keys with bit 63 set are the backend's own (cancel requests, the doorbell poll) and
//! never reach the ring.

pub(crate) mod direct;
#[cfg(feature = "fuzzing")]
pub(crate) mod fake;
pub(crate) mod pool;
pub(crate) mod portable;
pub(crate) mod sys;
pub(crate) mod uring;

use crate::op::{BlockingFn, OpKind, RawOp};
use crate::outcome::CancelClass;
use crate::wake::Doorbell;
use std::sync::Arc;
use std::time::Duration;

/// Bit 63 marks backend-internal keys.
pub(crate) const INTERNAL: u64 = 1 << 63;

/// Which backend a ring uses.
///
/// ```
/// let ring = quell::Ring::new().unwrap();
/// println!("running on {}", ring.backend());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BackendKind {
    /// Linux io_uring.
    Uring,
    /// epoll for pollable descriptors plus an interruptible thread pool for the rest.
    Portable,
    /// The fuzzing fake (feature `fuzzing`).
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    Fake,
}

impl BackendKind {
    /// `"uring"` or `"portable"`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{BackendChoice, BackendKind, Ring};
    /// let ring = Ring::builder().backend(BackendChoice::Portable).build()?;
    /// assert_eq!(ring.backend(), BackendKind::Portable);
    /// assert_eq!(ring.backend().name(), "portable");
    /// assert_eq!(BackendKind::Uring.name(), "uring");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            BackendKind::Uring => "uring",
            BackendKind::Portable => "portable",
            #[cfg(feature = "fuzzing")]
            BackendKind::Fake => "fake",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings a backend is built with.
#[derive(Clone, Debug)]
pub(crate) struct BackendConfig {
    /// Submission queue entries (io_uring).
    pub(crate) sq_entries: u32,
    /// Most ops the ring gives the backend at once.
    pub(crate) max_in_flight: u32,
    /// Worker threads of the blocking pool.
    pub(crate) pool_threads: usize,
    /// io_uring direct descriptors for linked chains that open a file.
    pub(crate) direct_slots: u32,
}

/// The backend in use, dispatched statically.
#[cfg_attr(feature = "fuzzing", allow(clippy::large_enum_variant))]
pub(crate) enum Backend {
    Uring(uring::Uring),
    #[cfg(feature = "fuzzing")]
    Fake(fake::Fake),
    Portable(portable::Portable),
}

impl Backend {
    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Backend::Uring(_) => BackendKind::Uring,
            #[cfg(feature = "fuzzing")]
            Backend::Fake(_) => BackendKind::Fake,
            Backend::Portable(_) => BackendKind::Portable,
        }
    }

    /// Starts an op. `false`: no room right now (the ring keeps it queued and retries
    /// after the next reap).
    #[inline]
    pub(crate) fn start(&mut self, key: u64, raw: RawOp, class: CancelClass) -> bool {
        match self {
            Backend::Uring(b) => b.start(key, raw, class),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(b) => b.start(key, raw, class),
            Backend::Portable(b) => b.start(key, raw, class),
        }
    }

    /// Starts a blocking closure on the pool. Never refused: the pool queues it.
    pub(crate) fn start_blocking(&mut self, key: u64, f: BlockingFn) {
        match self {
            Backend::Uring(b) => b.start_blocking(key, f),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(b) => b.start_blocking(key, f),
            Backend::Portable(b) => b.start_blocking(key, f),
        }
    }

    /// Asks the backend to stop an op it was given. Never blocks, never lost.
    #[inline]
    pub(crate) fn cancel(&mut self, key: u64, kind: OpKind, class: CancelClass) {
        match self {
            Backend::Uring(b) => b.cancel(key, kind, class),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(b) => b.cancel(key, kind, class),
            Backend::Portable(b) => b.cancel(key, kind, class),
        }
    }

    /// Whether chains can go to the kernel as linked batches (io_uring only).
    #[inline]
    pub(crate) fn links(&self) -> bool {
        matches!(self, Backend::Uring(_))
    }

    /// io_uring only (see [`links`](Backend::links)): the linked-chain calls.
    pub(crate) fn uring(&mut self) -> &mut uring::Uring {
        match self {
            Backend::Uring(b) => b,
            _ => unreachable!("only io_uring links chains"),
        }
    }

    /// Hands pending work to the kernel without waiting.
    #[inline]
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Backend::Uring(b) => b.flush(),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(b) => b.flush(),
            Backend::Portable(b) => b.flush(),
        }
    }

    /// Futures hook: hands staged work to the kernel without polling any descriptor
    /// (the portable backend starts its ops inline, so it has nothing to hand over).
    #[inline]
    pub(crate) fn submit_staged(&mut self) -> std::io::Result<()> {
        match self {
            Backend::Uring(b) => b.flush(),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(b) => b.flush(),
            Backend::Portable(b) => b.submit_staged(),
        }
    }

    /// Futures hook: whether work is staged or results are held that a flush or reap
    /// would act on now, with no descriptor event to announce them.
    #[inline]
    pub(crate) fn has_local_work(&self) -> bool {
        match self {
            Backend::Uring(b) => b.has_local_work(),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(_) => true,
            Backend::Portable(b) => b.has_local_work(),
        }
    }

    /// Flushes, then sleeps until a completion is ready, the doorbell rings or `timeout` passes.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Backend::Uring(b) => b.wait(timeout),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(b) => b.wait(timeout),
            Backend::Portable(b) => b.wait(timeout),
        }
    }

    /// Reactor hook (futures layer): a descriptor that becomes readable when the
    /// backend has something to reap (the io_uring fd, the epoll fd).
    pub(crate) fn poll_fd(&self) -> std::os::fd::RawFd {
        match self {
            Backend::Uring(b) => b.poll_fd(),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(_) => -1,
            Backend::Portable(b) => b.poll_fd(),
        }
    }

    /// Reactor hook (futures layer): how soon the backend needs to run again even if
    /// its descriptor stays quiet (its own timers, interrupt re-sends).
    pub(crate) fn next_wake(&mut self) -> Option<Duration> {
        match self {
            Backend::Uring(b) => b.next_wake(),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(_) => None,
            Backend::Portable(b) => b.next_wake(),
        }
    }

    /// Moves finished `(key, result)` pairs into `out`.
    #[inline]
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i64)>) {
        match self {
            Backend::Uring(b) => b.reap(out),
            #[cfg(feature = "fuzzing")]
            Backend::Fake(b) => b.reap(out),
            Backend::Portable(b) => b.reap(out),
        }
    }
}

/// Everything a backend constructor needs from the ring.
pub(crate) struct BackendParts {
    pub(crate) config: BackendConfig,
    pub(crate) doorbell: Arc<Doorbell>,
}
