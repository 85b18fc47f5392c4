//! The async form of `wait_range`: a runtime-agnostic future woken by the sink.

use super::engine::State;
use super::LazyError;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Future of [`LazyRead::wait_range_async`](super::LazyRead::wait_range_async): resolves to
/// the bytes of the range once its chunks are published, or to the error of the first
/// failed one. It does not drive the ring; the chunk publisher (the ring's owner) wakes it.
/// Dropping it is always fine.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::os::fd::AsRawFd;
/// use std::future::Future;
/// use std::task::{Context, Poll, Wake, Waker};
/// struct Noop;
/// impl Wake for Noop { fn wake(self: std::sync::Arc<Self>) {} }
/// # let file = std::fs::File::open("/proc/self/exe")?;
/// let mut ring = quell::Ring::new()?;
/// let lazy = ring.read_lazy(file.as_raw_fd(), 0, 4, Default::default())?;
/// let mut fut = std::pin::pin!(lazy.wait_range_async(0..4));
/// let waker = Waker::from(std::sync::Arc::new(Noop));
/// let mut cx = Context::from_waker(&waker);
/// assert!(fut.as_mut().poll(&mut cx).is_pending()); // nobody drove the ring yet
/// lazy.wait_range(&mut ring, 0..4)?; // the owner drives the ring, which publishes
/// assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(b"\x7fELF"))));
/// # Ok(()) }
/// ```
pub struct WaitRange<'a> {
    state: &'a State,
    range: Range<usize>,
}

impl<'a> WaitRange<'a> {
    pub(super) fn new(state: &'a State, range: Range<usize>) -> Self {
        WaitRange { state, range }
    }
}

impl<'a> Future for WaitRange<'a> {
    type Output = Result<&'a [u8], LazyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = self.state;
        if let Some(r) = state.check(state.region.try_range(self.range.clone())) {
            return Poll::Ready(r);
        }
        state.register(cx.waker());
        // Re-check after registering: a chunk resolved in between would not wake us.
        match state.check(state.region.try_range(self.range.clone())) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for WaitRange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitRange")
            .field("range", &self.range)
            .finish()
    }
}
