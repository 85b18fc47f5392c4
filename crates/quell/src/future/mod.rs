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
//! # Streams: what a caller that gives up sees
//!
//! (Contract item I13.)
//!
//! A poll-style API over completion I/O has one hard case: `poll_write` returned
//! `Pending` with an op in flight carrying the caller's bytes, and the next call (the
//! caller gave up: a `timeout`, a `select!`, a new `write_all`) brings other bytes. The
//! op cannot be un-sent, and answering the new call with the old op's count puts the
//! old bytes on the wire in place of the new ones (the bug [`Stream`] once had).
//!
//! **Writes are written behind**, as `monoio-compat`'s stream and compio's
//! `AsyncStream` do (tokio-uring offers no `AsyncWrite`): `poll_write` copies into the
//! stream's own bounded buffer and answers `Ready(n)` at once; it is `Pending` only
//! when that buffer is full, and then it has accepted nothing. An op in flight only
//! ever carries bytes already acknowledged, so a given-up write puts nothing on the
//! wire, a later write is never answered with an earlier one's count, and nothing but
//! acknowledged bytes reaches the peer, in order. This is exactly `AsyncWrite`'s own
//! contract (`Pending`: nothing written; `Ready(n)`: `n` bytes taken), which the other
//! design (answer a call whose bytes start with the op's, cancel the op for any other
//! bytes and report what it had moved as an error) bends: a caller that honestly gave
//! up would get an error for a write it no longer made. The price is a copy (the old
//! design copied too) and errors that surface late: a write that fails is reported to
//! the next `poll_write`, `poll_flush` or `poll_shutdown`, and the bytes it and the
//! buffer held are lost with it (the error says how many). `poll_flush` waits until
//! everything acknowledged is written; `poll_shutdown` flushes first. Dropping the
//! stream still sends what it acknowledged, for at most [`LINGER`], then closes.
//!
//! **Reads keep one op in flight** across calls, reading into the stream's own buffer:
//! `Pending` leaves it running, and whatever it brings is served to the next call, with
//! whatever buffer that call passes (I11). A read stopped part-way by a cancel (say a
//! `cancel_fd` through the ring) serves the bytes it moved. The end of the stream (end
//! of file, or an error such as a reset) is reported only once the writes acknowledged
//! before it have finished, and one call after they did: a peer usually closes
//! *because* it read the reply, and a caller (hyper) that sees the end before its own
//! flush returned would take the connection for one closed mid-message. Bytes are
//! never held back, only the end.
//!
//! **Moving from tokio's `TcpStream`:** `write` returning `Ok` means the bytes are
//! quell's to send, not yet the kernel's: call `flush` (or `shutdown`) where it
//! matters, as with a `BufWriter`. A peer that reset the connection makes `shutdown`
//! succeed (as tokio does), not fail with `ENOTCONN`. A peer that half-closes (sends
//! its request, then `shutdown(SHUT_WR)`, as `nc -N` does) reads as end of stream
//! while writes go on working, as over tokio's stream: a server that writes its reply
//! after reading that end answers it. hyper does so only with
//! `http1::Builder::half_close(true)`; with its default it drops the connection
//! whenever it reads the end before it wrote the reply, over either stream (tokio's
//! "answers them" only when the reply wins that race), so set it if such clients
//! matter (`tests/hyper_server.rs` checks both streams answer them with it).
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
pub use stream::{Listener, Stream, LINGER};
