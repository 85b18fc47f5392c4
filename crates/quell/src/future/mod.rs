//! Futures over a ring, runtime-agnostic: owned memory goes in, the completion (with
//! the memory) comes out, and dropping a future is an honest cancel.
//!
//! - A [`Driver`] owns a [`Ring`](crate::Ring) and routes each completion to the
//!   future waiting for it. Run it with [`Driver::block_on`], with
//!   [`Driver::turn`] from an executor of your own, or on tokio (feature `tokio`).
//! - [`Driver::submit`] turns any [`Op`](crate::Op) into an [`OpFuture`]; the
//!   shortcuts ([`Driver::read`], [`Driver::write`], ...) give `(io::Result, buffer)`.
//! - Dropping a pending future requests cancellation; the buffer stays with the ring
//!   until the kernel's completion (I2). [`OpFuture::cancel`] and [`Canceller`] stop
//!   an op and still deliver its honest outcome and buffer.
//! - No byte lost (I11): a dropped stream read that completes with data anyway keeps
//!   it for the next read on that descriptor; a dropped accept keeps its connection.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::fd::AsRawFd;
//! use quell::future::Driver;
//! let driver = Driver::new(quell::Ring::new()?);
//! let (r, w) = std::os::unix::net::UnixStream::pair()?;
//! // A read nobody waits for any more...
//! let dropped = driver.read(r.as_raw_fd(), vec![0u8; 8]);
//! drop(dropped);
//! std::io::Write::write_all(&mut &w, b"kept")?;
//! // ...never loses what arrives: the next read gets it.
//! let (n, buf) = driver.block_on(driver.read(r.as_raw_fd(), vec![0u8; 8]));
//! assert_eq!(&buf[..n?], b"kept");
//! # Ok(()) }
//! ```

pub(crate) mod driver;
mod kept;
mod op;
mod stream;

pub use driver::Driver;
pub use op::{BufFuture, Canceller, OpFuture};
pub use stream::{Listener, Stream};
