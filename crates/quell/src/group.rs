//! Cancellation scopes.

use std::fmt;

/// Identifies a group (a cancellation scope) of a ring. Every op belongs to exactly one
/// group; the ring's root group is [`GroupId::ROOT`].
///
/// ```
/// assert_eq!(quell::GroupId::ROOT, quell::GroupId::default());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GroupId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl GroupId {
    /// The ring's root group.
    pub const ROOT: GroupId = GroupId { idx: 0, gen: 0 };
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({}.{})", self.idx, self.gen)
    }
}
