//! The contiguous prefix of the copy that is known to be written.
//!
//! Chunks finish out of order (up to the queue depth apart); the frontier only moves
//! past a chunk once every chunk before it is written, so the offset it reports is
//! safe to truncate to and to resume from.

use std::collections::BTreeSet;

/// Tracks finished chunks `start + i * block` and the prefix they complete.
#[derive(Debug)]
pub struct Frontier {
    start: u64,
    block: u64,
    size: u64,
    next: u64,
    ahead: BTreeSet<u64>,
}

impl Frontier {
    /// Chunks of `block` bytes from `start` to `size`, none finished yet.
    pub fn new(start: u64, block: u64, size: u64) -> Frontier {
        Frontier {
            start,
            block,
            size,
            next: 0,
            ahead: BTreeSet::new(),
        }
    }

    /// The offset of chunk `i`.
    pub fn offset(&self, i: u64) -> u64 {
        self.start + i * self.block
    }

    /// Marks chunk `i` written.
    pub fn finish(&mut self, i: u64) {
        if i < self.next {
            return;
        }
        self.ahead.insert(i);
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
    }

    /// Every byte below this offset is written.
    pub fn done(&self) -> u64 {
        self.offset(self.next).min(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_over_a_contiguous_prefix() {
        let mut f = Frontier::new(100, 10, 135);
        assert_eq!(f.done(), 100);
        f.finish(1);
        assert_eq!(f.done(), 100, "chunk 0 is missing");
        f.finish(0);
        assert_eq!(f.done(), 120);
        f.finish(3);
        f.finish(2);
        assert_eq!(f.done(), 135, "capped at the size");
        f.finish(0);
        assert_eq!(f.done(), 135);
    }
}
