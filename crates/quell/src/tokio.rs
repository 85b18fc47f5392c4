//! tokio integration (feature `tokio`): a [`Driver`]'s ring run by tokio's reactor,
//! and `AsyncRead`/`AsyncWrite` for quell [`Stream`]s.
//!
//! [`attach`] spawns one *reactor task* per driver. It registers the ring's descriptor
//! (the io_uring fd, or the portable backend's epoll fd; both turn wake-ups from pool
//! threads and handles into readiness) with tokio through `AsyncFd`, sleeps on tokio's
//! timer for the ring's own deadlines, and is woken by submissions, so an op runs
//! even if its future is not polled yet. A future polled while no other completion
//! waits to be taken hands the ring's submissions to the kernel itself and often
//! resolves in that first poll (an io_uring socket write, a page-cache read): a lone
//! task's round trip then costs one reactor turn instead of two, and the reactor's
//! wake-up finds nothing to do. While tasks still have completions to take, the
//! handing over waits for them (they are about to submit too), so one
//! `io_uring_enter` carries the whole batch.
//!
//! A driver is `Send + Sync` and its futures are `Send`: on a multi-thread runtime
//! every task may share one driver (a lock around the ring, held for a few
//! microseconds per turn). quell does not hand ops to a ring thread: waking another
//! thread costs ~30 µs on these machines (DESIGN.md §7), more than a whole batch of
//! page-cache reads; sharing the ring keeps submissions and completions on whatever
//! worker runs them. `quell bench read` measures both designs side by side (32 tasks,
//! 4 KiB page-cache reads, 2 workers): `quell-tokio-mt` (this shared driver) ran
//! 1.2–1.8× the rate of `quell-ring-thread-mt` (three runs; one ring thread fed over a channel,
//! replies by oneshot). For runtimes with many busy workers, one driver per group of
//! tasks spreads the lock.
//!
//! The runtime must have its I/O and time drivers enabled (`enable_all`).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let driver = quell::tokio::driver()?;
//!     let (a, b) = std::os::unix::net::UnixStream::pair()?;
//!     let (mut a, mut b) = (quell::future::Stream::new(&driver, a), quell::future::Stream::new(&driver, b));
//!     use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!     a.write_all(b"over tokio").await?;
//!     let mut buf = [0u8; 10];
//!     b.read_exact(&mut buf).await?;
//!     assert_eq!(&buf, b"over tokio");
//!     // A timeout drops the read: the op is canceled, its buffer stays safe.
//!     let r = tokio::time::timeout(std::time::Duration::from_millis(10), b.read(&mut buf)).await;
//!     assert!(r.is_err());
//!     Ok::<_, std::io::Error>(())
//! })?;
//! # Ok(()) }
//! ```

use crate::future::{Driver, Stream};
use crate::ring::Ring;
use std::future::Future;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A driver for a new default ring, attached to the current tokio runtime.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let c = rt.block_on(async {
///     let d = quell::tokio::driver()?;
///     Ok::<_, std::io::Error>(d.submit(quell::Op::nop())?.await)
/// })?;
/// assert!(c.outcome.is_done());
/// # Ok(()) }
/// ```
pub fn driver() -> io::Result<Driver> {
    let d = Driver::new(Ring::new()?);
    attach(&d)?;
    Ok(d)
}

/// Spawns `driver`'s reactor task on the current tokio runtime. The task ends when
/// the last clone of the driver (and of its futures) is gone. Attaching a driver
/// twice is refused (`AlreadyExists`); outside a runtime, `Other`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
/// let d = quell::future::Driver::new(quell::Ring::new()?);
/// rt.block_on(async { quell::tokio::attach(&d) })?;
/// let c = rt.block_on(async { d.submit(quell::Op::nop()).unwrap().await });
/// assert!(c.outcome.is_done());
/// # Ok(()) }
/// ```
pub fn attach(driver: &Driver) -> io::Result<()> {
    let rt = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let fd = {
        let mut st = driver.lock();
        if st.reactor_attached {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this driver already has a reactor",
            ));
        }
        let raw = st.ring.reactor_fd();
        // SAFETY: the ring's descriptor is open while the ring lives, and we hold the
        // ring's lock. The reactor keeps its own duplicate, so tokio never sees a
        // number that was closed and reused.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned()?;
        st.reactor_attached = true;
        fd
    };
    let afd = {
        let _guard = rt.enter();
        // SAFETY: the AsyncFd owns `fd` (our duplicate), so it stays open and refers
        // to the same file for the AsyncFd's whole life.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    };
    let afd = match afd {
        Ok(a) => a,
        Err(e) => {
            driver.lock().reactor_attached = false;
            return Err(e);
        }
    };
    let reactor = Reactor {
        driver: std::sync::Arc::downgrade(&driver.shared),
        fd: afd,
        sleep: None,
        wakers: Vec::new(),
        deferred: false,
    };
    rt.spawn(reactor);
    Ok(())
}

/// The task that runs a driver's ring on tokio.
struct Reactor {
    driver: Weak<crate::future::driver::Shared>,
    fd: AsyncFd<OwnedFd>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Reused between turns: waking a batch allocates nothing.
    wakers: Vec<std::task::Waker>,
    /// This wake-up was put off once already (see `poll`).
    deferred: bool,
}

impl Reactor {
    /// Whether the ring's own timer (tokio's sleep) has fired; if not, it stays
    /// registered with `cx`.
    fn sleep_due(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

impl Future for Reactor {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Take the descriptor's readiness *before* the turn, and leave interest
            // registered (the last `poll_read_ready` returns Pending): the turn then
            // reaps everything that made it readable, and an edge that arrives during
            // the turn wakes this task again. Checking after the turn instead costs
            // a second, empty turn for every wake-up by readiness.
            let mut readable = false;
            loop {
                match self.fd.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        readable = true;
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::warn!(error = %e, "quell reactor: descriptor failed");
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                }
            }
            let Some(shared) = self.driver.upgrade() else {
                return Poll::Ready(());
            };
            let driver = Driver { shared };
            let next = {
                let mut st = driver.lock();
                // Woken to hand submissions over while tasks with completions to take
                // have yet to run: they will submit too, so let them go first (once
                // per wake-up, so a completion nobody takes cannot hold the ring up).
                if !readable && !self.deferred && st.untaken > 0 && st.unflushed {
                    self.deferred = true;
                    drop(st);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                self.deferred = false;
                match &st.reactor {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.reactor = Some(cx.waker().clone()),
                }
                // Woken by a submission whose future has since handed it over itself
                // (the usual case), with the descriptor quiet and no timer due: nothing
                // to do, and a turn would only read the clock and find that out.
                if !readable
                    && !st.unflushed
                    && !st.turn_wanted
                    && !st.recanceled
                    && !st.ring.has_local_work()
                    && !self.sleep_due(cx)
                {
                    st.reactor_idle();
                    return Poll::Pending;
                }
                let mut wakers = std::mem::take(&mut self.wakers);
                let r = st.turn(&mut wakers);
                drop(st);
                for w in wakers.drain(..) {
                    w.wake();
                }
                self.wakers = wakers;
                match r {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(error = %e, "quell reactor: ring failed to run");
                        Some(Duration::from_millis(1))
                    }
                }
            };
            // Drop our strong reference before sleeping, so the driver can go away.
            drop(driver);
            match next {
                // The ring has more to do right now: yield to other tasks, then go on.
                Some(d) if d.is_zero() => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(d) => {
                    let at = tokio::time::Instant::now() + d;
                    match &mut self.sleep {
                        Some(s) => s.as_mut().reset(at),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                    let s = self.sleep.as_mut().expect("set above");
                    if s.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                }
                None => self.sleep = None,
            }
            return Poll::Pending;
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let dst = buf.initialize_unfilled();
        match Stream::poll_read(this, cx, dst) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        Stream::poll_write(self.get_mut(), cx, src)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Stream::poll_write_vectored(self.get_mut(), cx, bufs)
    }

    /// Writes are copied into the stream's write-behind buffer, so several slices cost
    /// one copy each and no extra op: callers (hyper) need not flatten them first.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Stream::poll_flush(self.get_mut(), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Stream::poll_shutdown(self.get_mut(), cx)
    }
}
