//! Operation identifiers.

use std::fmt;

/// Identifies one operation accepted by a [`Ring`](crate::Ring).
///
/// An `OpId` packs the ring it belongs to, the slot of the op table that holds the
/// operation and the slot's generation. The generation changes every time a slot is
/// reused, so an id kept after its operation completed can never reach a newer
/// operation: it is simply not found. An id from another ring is recognised as such.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::nop())?;
/// let done = ring.wait_for(id)?;
/// assert_eq!(done.id, id);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId {
    pub(crate) ring: u32,
    pub(crate) gen: u32,
    pub(crate) slot: u32,
}

impl OpId {
    /// The slot index inside the ring's op table (useful in logs only).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let a = ring.submit(quell::Op::nop())?;
    /// let b = ring.submit(quell::Op::nop())?;
    /// // Two live ops never share a slot.
    /// assert_ne!(a.slot(), b.slot());
    /// assert!((a.slot() as usize) < ring.capacity());
    /// # Ok(()) }
    /// ```
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The slot generation (useful in logs only).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// let first = ring.submit(quell::Op::nop())?;
    /// ring.wait_for(first)?;
    /// let second = ring.submit(quell::Op::nop())?;
    /// // A reused slot gets a new generation, so the old id cannot reach the new op.
    /// if second.slot() == first.slot() {
    ///     assert_ne!(second.generation(), first.generation());
    /// }
    /// assert_ne!(first, second);
    /// # Ok(()) }
    /// ```
    pub fn generation(&self) -> u32 {
        self.gen
    }
}

/// Backend key of a slot/generation pair. Bit 63 is reserved for backend-internal tags.
#[inline]
pub(crate) fn key_of(slot: u32, gen: u32) -> u64 {
    ((gen as u64 & 0x7fff_ffff) << 32) | slot as u64
}

/// Splits a backend key into slot index and (31-bit) generation.
#[inline]
pub(crate) fn split_key(key: u64) -> (u32, u32) {
    (key as u32, ((key >> 32) & 0x7fff_ffff) as u32)
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({}:{}.{})", self.ring, self.slot, self.gen)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slot, self.gen)
    }
}
