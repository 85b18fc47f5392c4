//! The synchronisation primitives shared with other threads, swapped for `loom`'s
//! model-checked versions under `--cfg loom` so the cross-thread protocols built on them
//! (see [`mailbox`](crate::mailbox), and `block_on`'s sleep in the futures driver) can be
//! checked under every interleaving.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
