//! Binding a signal to a group: an async-signal-safe path from a handler to the ring.
//!
//! The handler only bumps an atomic counter, sets the ring's "pending" flag and writes
//! its eventfd (all async-signal-safe); the ring's thread does the draining or
//! canceling the next time it runs.

use crate::group::GroupId;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// What a bound signal does to its group.
///
/// ```
/// let a = quell::SignalAction::DrainThenCancel;
/// assert_ne!(a, quell::SignalAction::Cancel);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// Every delivery drains the group.
    Drain,
    /// Every delivery cancels the group.
    Cancel,
    /// The first delivery drains, any further one cancels (the usual Ctrl-C behaviour).
    DrainThenCancel,
}

/// A registered binding, owned by the ring.
pub(crate) struct Binding {
    pub(crate) id: signal_hook::SigId,
    pub(crate) count: Arc<AtomicU32>,
    pub(crate) seen: u32,
    pub(crate) group: GroupId,
    pub(crate) action: SignalAction,
}

impl Binding {
    /// New deliveries since last time, as (first new index, count).
    pub(crate) fn take_new(&mut self) -> Option<(u32, u32)> {
        let n = self.count.load(Ordering::Acquire);
        if n == self.seen {
            return None;
        }
        let first = self.seen;
        self.seen = n;
        Some((first, n - first))
    }
}
