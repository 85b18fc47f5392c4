//! Shared test support: run each behavioural test on every backend.
#![allow(dead_code, unused_macros, unused_imports)]

use quell::{BackendChoice, Ring};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

pub mod counting;
pub mod fault;

/// Expands each `fn name(b: BackendChoice) { .. }` into one test per backend:
/// `uring::name` and `portable::name`.
#[macro_export]
macro_rules! both_backends {
    ($( $(#[$m:meta])* fn $name:ident($b:ident : BackendChoice) $body:block )*) => {
        $(
            $(#[$m])*
            fn $name($b: quell::BackendChoice) $body
        )*
        mod uring {
            $(
                #[test]
                $(#[$m])*
                fn $name() { super::$name(quell::BackendChoice::Uring) }
            )*
        }
        mod portable {
            $(
                #[test]
                $(#[$m])*
                fn $name() { super::$name(quell::BackendChoice::Portable) }
            )*
        }
    };
}

/// A ring on backend `b` with room for `cap` ops, all of which may be in flight.
pub fn ring(b: BackendChoice, cap: usize) -> Ring {
    Ring::builder()
        .backend(b)
        .capacity(cap)
        .max_in_flight(cap as u32)
        .build()
        .expect("ring")
}

/// A pipe (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

/// Writes all of `data` to `fd` (blocking).
pub fn write_all(fd: RawFd, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: valid buffer.
        let n = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        assert!(n > 0, "write failed: {}", std::io::Error::last_os_error());
        off += n as usize;
    }
}

/// Reads whatever is in a pipe without blocking.
pub fn drain_nonblocking(fd: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
            return out;
        }
        // SAFETY: valid buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Collects completions until `n` have arrived (panics after `secs` seconds).
pub fn collect(ring: &mut Ring, n: usize, secs: u64) -> Vec<quell::Completion> {
    let start = std::time::Instant::now();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            start.elapsed().as_secs() < secs,
            "only {} of {} completions after {secs}s; outstanding ops: {:?}",
            out.len(),
            n,
            ring.ops().iter().take(5).collect::<Vec<_>>()
        );
        ring.wait(1, Some(std::time::Duration::from_millis(200)))
            .expect("wait");
        out.extend(ring.completions());
    }
    out
}

pub fn raw<T: AsRawFd>(t: &T) -> RawFd {
    t.as_raw_fd()
}
