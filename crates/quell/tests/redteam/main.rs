//! The red team's suite, kept: attacks on quell's promise written by reviewers who saw only
//! the README, the API docs and DESIGN.md, never the code or the other tests (issue 15).
//! Each file is one theme; every test runs on both backends. Tests that count descriptors
//! take `crate::common::serial()`; tests that may abort the process or raise signals run in a
//! child process (`crate::common::in_child`).

mod common;

mod bad_input;
mod buffers;
mod checkpoint;
mod driver_threads;
mod exactly_once;
mod faultfs;
mod fd_identity;
mod groups;
mod lazy;
mod lifecycle;
mod misc;
mod stream_tokio;
