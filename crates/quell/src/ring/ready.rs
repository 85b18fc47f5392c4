//! The ready queue: finished ops whose completion the user has not taken yet.
//!
//! A vector with a read cursor rather than a `VecDeque`: completions are produced in
//! bursts (one reap) and taken in bursts (one drain loop), so the queue empties often,
//! and an empty queue resets to the start of its buffer. Push and pop are then a
//! store and a load with no wrap-around arithmetic, on the hottest path of the ring.

use crate::outcome::Outcome;

/// FIFO of `(slot index, outcome)`.
#[derive(Default)]
pub(crate) struct Ready {
    v: Vec<(u32, Outcome)>,
    head: usize,
}

impl Ready {
    /// Entries waiting.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.v.len() - self.head
    }

    /// Queues one completion behind the others.
    #[inline]
    pub(crate) fn push_back(&mut self, e: (u32, Outcome)) {
        self.v.push(e);
    }

    /// Takes the oldest completion.
    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<(u32, Outcome)> {
        let e = *self.v.get(self.head)?;
        self.head += 1;
        if self.head == self.v.len() {
            // Drained: start over at the front, keeping the allocation.
            self.v.clear();
            self.head = 0;
        }
        Some(e)
    }

    /// The waiting entries, oldest first.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, (u32, Outcome)> {
        self.v[self.head..].iter()
    }

    /// Removes the entry at `pos` (counted from the oldest), keeping the order of the rest.
    pub(crate) fn remove(&mut self, pos: usize) -> Option<(u32, Outcome)> {
        let i = self.head.checked_add(pos).filter(|&i| i < self.v.len())?;
        let e = self.v.remove(i);
        if self.head == self.v.len() {
            self.v.clear();
            self.head = 0;
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_survives_interleaving_and_removal() {
        let mut q = Ready::default();
        let mut model = std::collections::VecDeque::new();
        for round in 0..500u32 {
            match round % 7 {
                0..=3 => {
                    q.push_back((round, Outcome::Done(round as usize)));
                    model.push_back((round, Outcome::Done(round as usize)));
                }
                4 | 5 => assert_eq!(q.pop_front(), model.pop_front()),
                _ => {
                    if !model.is_empty() {
                        let pos = round as usize % model.len();
                        assert_eq!(q.remove(pos), model.remove(pos));
                    }
                    assert_eq!(q.remove(model.len()), None);
                }
            }
            assert_eq!(q.len(), model.len());
            assert!(q.iter().eq(model.iter()));
        }
        while let Some(e) = model.pop_front() {
            assert_eq!(q.pop_front(), Some(e));
        }
        assert_eq!(q.pop_front(), None);
        assert_eq!(q.len(), 0);
    }
}
