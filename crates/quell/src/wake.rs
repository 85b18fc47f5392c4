//! The ring's wake-up: an eventfd other threads (a [`Handle`](crate::Handle), a pool
//! worker, a signal handler) write to, and the backend watches.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// An eventfd used as a doorbell. Writing is async-signal-safe.
#[derive(Debug)]
pub(crate) struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    pub(crate) fn new() -> std::io::Result<Doorbell> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Doorbell { fd })
    }

    /// Rings the bell. Never blocks (the counter saturating means a wake is already pending).
    #[inline]
    pub(crate) fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a valid buffer to an eventfd; async-signal-safe.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Resets the bell after a wake was seen.
    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a valid buffer from a non-blocking eventfd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
