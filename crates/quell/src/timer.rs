//! Deadlines: one binary heap per ring, O(log n) per deadline, no thread per deadline.
//!
//! Entries are never removed eagerly: an op that finishes before its deadline leaves a
//! stale entry, recognised when it surfaces (its slot moved on or no longer carries that
//! deadline). When stale entries outnumber live ones the heap is rebuilt in place, so
//! memory stays proportional to the live deadlines and steady state allocates nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A heap target: an op key (bit 63 clear: op keys use 63 bits), or a group (bit 63 set).
pub(crate) const GROUP_TARGET: u64 = 1 << 63;

/// An op key with this bit is the end of an interrupted op's grace (`Builder::
/// interrupt_grace`), not its deadline. Slot indices stay below 2^16, so the bit is free.
pub(crate) const GRACE_TARGET: u64 = 1 << 30;

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    stale: usize,
}

impl Timers {
    /// Adds a deadline (ns since the ring's epoch) for `target`.
    #[inline]
    pub(crate) fn push(&mut self, at: u64, target: u64) {
        self.heap.push(Reverse((at, target)));
    }

    /// Notes that one entry went stale (its op finished first).
    #[inline]
    pub(crate) fn note_stale(&mut self, live: impl FnMut(u64, u64) -> bool) {
        self.stale += 1;
        if self.stale > 64 && self.stale * 2 > self.heap.len() {
            self.compact(live);
        }
    }

    fn compact(&mut self, mut live: impl FnMut(u64, u64) -> bool) {
        let mut v = std::mem::take(&mut self.heap).into_vec();
        v.retain(|Reverse((at, t))| live(*at, *t));
        self.heap = BinaryHeap::from(v);
        self.stale = 0;
    }

    /// The earliest deadline, if any (it may be stale).
    #[inline]
    pub(crate) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the earliest entry if it is due at `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Records that a popped entry was stale (keeps the stale count honest).
    #[inline]
    pub(crate) fn popped_stale(&mut self) {
        self.stale = self.stale.saturating_sub(1);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_compacts() {
        let mut t = Timers::default();
        for i in (0..1000u64).rev() {
            t.push(i * 10, i);
        }
        assert_eq!(t.pop_due(5), Some((0, 0)));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.next(), Some(10));
        // Mark 900 stale: the heap shrinks to the live ones.
        for _ in 0..900 {
            t.note_stale(|_, target| target >= 900);
        }
        assert!(t.len() <= 200, "heap has {} entries", t.len());
        assert_eq!(t.pop_due(u64::MAX).map(|e| e.1), Some(900));
    }
}
