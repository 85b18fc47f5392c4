//! Futures-layer hook: the part of a reactor turn a future can run from its own poll.
//!
//! A future polled right after its op was submitted would otherwise return `Pending`,
//! wake the reactor task only so that it enters the ring, and be polled again when the
//! reactor routes the completion: two extra task switches for an op the kernel may
//! finish inline (an io_uring write to a socket, a page-cache read). Handing the staged
//! work over from the poll itself lets such an op resolve in its first poll.

use super::Ring;
use crate::error::Error;

impl Ring {
    /// Hands what is staged to the kernel and collects what has finished, without
    /// reading the clock (timers are the reactor's) or polling descriptors (the
    /// reactor does that when the ring's descriptor is readable).
    ///
    /// Returns `true` when a full turn still has work: ops this pass started (a short
    /// transfer's next part, a sink's follow-up) are staged but not handed over, or a
    /// handle request is pending (its doorbell may just have been cleared by this reap).
    pub(crate) fn submit_and_reap(&mut self) -> Result<bool, Error> {
        self.dispatch();
        self.backend
            .submit_staged()
            .map_err(|e| Error::io("submitting to the backend", e))?;
        self.reap();
        self.dispatch();
        Ok(self.has_local_work())
    }

    /// Whether a reactor woken with its descriptor quiet and no timer due has anything
    /// to do: work staged or results held back (see [`submit_and_reap`]), or a handle
    /// request.
    ///
    /// [`submit_and_reap`]: Ring::submit_and_reap
    #[inline]
    pub(crate) fn has_local_work(&self) -> bool {
        self.backend.has_local_work() || self.shared.requests.is_pending()
    }
}
