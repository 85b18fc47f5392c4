//! Prototype of quell's LazyRead mechanism: a userfaultfd wrapper and `LazyRegion`.
//!
//! The two modules are self-contained and meant to move verbatim into
//! `crates/quell/src/lazy/` (they refer to each other through `super::`).

pub mod region;
pub mod uffd;
