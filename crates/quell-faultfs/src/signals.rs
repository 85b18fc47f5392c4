//! SIGINT/SIGTERM → self-pipe, for [`run_foreground`](crate::run_foreground).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::pipe::{pipe_with, PipeFlags};

use crate::Error;

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Write end of the self-pipe, or -1 when no `StopSignals` is installed.
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WR.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives for the call. A full pipe (EAGAIN,
        // the pipe is non-blocking) only loses a duplicate wake-up.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Installed SIGINT/SIGTERM handlers; restores the previous ones on drop.
pub(crate) struct StopSignals {
    rd: OwnedFd,
    wr: OwnedFd,
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopSignals {
    pub(crate) fn install() -> Result<StopSignals, Error> {
        let (rd, wr) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
            .map_err(|e| Error::Signal(e.into()))?;
        if PIPE_WR
            .compare_exchange(-1, wr.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(Error::Signal(std::io::Error::other(
                "run_foreground is already running in this process",
            )));
        }
        let mut me = StopSignals {
            rd,
            wr,
            old: Vec::new(),
        };
        for sig in SIGNALS {
            // SAFETY: `sa` starts zeroed (a valid sigaction), gets a handler that only does
            // an async-signal-safe write, and an initialised empty mask; `old` is written by
            // the kernel.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) != 0 {
                    return Err(Error::Signal(std::io::Error::last_os_error()));
                }
                me.old.push((sig, old));
            }
        }
        Ok(me)
    }

    /// Wait up to `timeout` for a signal; returns its number.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.rd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => {
                let mut b = [0u8; 1];
                match rustix::io::read(self.rd.as_fd(), &mut b) {
                    Ok(1) => Some(i32::from(b[0])),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        for (sig, old) in self.old.drain(..) {
            // SAFETY: `old` is the disposition the kernel returned for `sig` in `install`.
            unsafe {
                libc::sigaction(sig, &old, std::ptr::null_mut());
            }
        }
        let _ =
            PIPE_WR.compare_exchange(self.wr.as_raw_fd(), -1, Ordering::SeqCst, Ordering::SeqCst);
    }
}
