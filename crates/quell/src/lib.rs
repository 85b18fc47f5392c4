//! # quell
//!
//! Asynchronous I/O on Linux in which cancellation is a first-class operation.
//!
//! quell runs system calls asynchronously (natively on io_uring; on a portable
//! epoll + interruptible thread-pool backend where io_uring is unavailable) and makes
//! canceling them honest and asynchronous:
//!
//! - every accepted op yields exactly one [`Completion`], whose [`Outcome`] says
//!   truthfully what happened (done, failed, canceled with the bytes moved, timed out,
//!   detached);
//! - [`Ring::cancel`] never blocks; the truth arrives in the completion;
//! - memory the kernel may still write is never freed or handed back before the
//!   kernel's own completion, whatever is dropped or canceled;
//! - every op is classified by how it can be stopped ([`CancelClass`]).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::fd::AsRawFd;
//! use quell::{Op, Outcome, Ring};
//!
//! let (r, w) = std::os::unix::net::UnixStream::pair()?;
//! let mut ring = Ring::new()?;
//!
//! // A read that will never get data, and one that will.
//! let stuck = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 4096]).user_data(1))?;
//! ring.cancel(stuck)?;
//! let c = ring.wait_for(stuck)?;
//! assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
//!
//! let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 4096]))?;
//! std::io::Write::write_all(&mut &w, b"ping")?;
//! assert_eq!(ring.wait_for(id)?.data(), b"ping");
//! # Ok(()) }
//! ```
//!
//! ## Tracing
//!
//! Each op's life can be followed with [`tracing`](https://docs.rs/tracing): when a
//! subscriber enables target `quell::op` at DEBUG, every op submitted gets a span
//! `quell.op` (fields `ring`, `id`, `kind`, `fd`, `group` path, `class`, `user_data`;
//! `outcome` and `transferred` recorded when it completes, `kernel_result` when a
//! detached op's kernel completion arrives). At TRACE the span also holds the events
//! `submitted`, `dispatched`, `part dispatched` (later parts and exact retries),
//! `chain step queued`, `cancel requested`, `completed` and, for detached ops,
//! `kernel done`. The span closes when the completion is taken (a detached op's when
//! the kernel is done with its memory).
//!
//! The ring asks whether such a subscriber exists when it is built and then once per
//! [`poll`](Ring::poll) or [`wait`](Ring::wait) (including [`wait_for`](Ring::wait_for)),
//! not per op: an op submitted before the first poll or wait after a subscriber
//! appeared has no span (its later events, if any, are emitted where the ring is). With
//! no subscriber, tracing costs one predictable branch per lifecycle step and no
//! allocation.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod backend;
pub mod blocking;
mod buf;
mod checkpoint;
mod classify;
mod completion;
mod descriptor;
pub mod dump;
mod error;
pub mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod handle;
mod id;
mod info;
pub mod lazy;
mod mailbox;
mod op;
mod outcome;
mod probe;
mod ring;
mod signal;
mod sync;
mod table;
mod timer;
#[cfg(feature = "tokio")]
pub mod tokio;
mod wake;

pub use backend::BackendKind;
pub use buf::AlignedBuf;
pub use checkpoint::{
    Checkpoint, CheckpointId, FileRef, OpDescriptor, Reopened, Unfinished, CHECKPOINT_VERSION,
};
pub use completion::Completion;
pub use dump::{DumpFormat, OpRecord};
pub use error::{Error, SubmitError};
pub use group::{GroupId, GroupOptions, GroupStats};
pub use handle::{Handle, OpsRequest};
pub use id::OpId;
pub use info::{OpInfo, Stats};
pub use op::{Interest, Op, OpKind};
pub use outcome::{CancelClass, CancelStatus, Errno, OpState, Outcome};
pub use probe::{probe, ProbeReport, REQUIRED_OPCODES};
pub use ring::chain::{Chain, ChainError, StepResult};
pub use ring::quiesce::QuiescePolicy;
pub use ring::resubmit::{Buffers, ResubmitBuffer, ResubmitError};
pub use ring::{BackendChoice, Builder, Ring};
pub use signal::SignalAction;
pub use table::MAX_CAPACITY;

/// Bytes of bookkeeping the op table keeps per live operation.
///
/// ```
/// assert!(quell::SLOT_BYTES <= 128);
/// ```
pub const SLOT_BYTES: usize = table::Table::SLOT_BYTES;
