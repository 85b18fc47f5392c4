//! How long a cancel takes to resolve, per op class (contract I5): for each class an op
//! of that class is made outstanding, then `Ring::cancel` is called and the time until
//! its completion is taken is recorded.
//!
//! * `Queued`: a pipe read waiting in quell's queue behind another (`max_in_flight` 1);
//! * `Prompt`: a pipe read in flight (no data ever comes);
//! * `Interruptible`: a blocking pool op parked in a blocking `read` of a pipe (the
//!   cancel interrupts the worker with a signal);
//! * `Bounded`: a 1 MiB read of a regular file (it cannot be stopped: the time is what
//!   is left of the read). `O_DIRECT` where the filesystem allows it, so the read is
//!   with the device; buffered otherwise (`bounded_file` says which).

use super::{new_histogram, record};
use crate::CliError;
use hdrhistogram::Histogram;
use quell::{AlignedBuf, BackendChoice, CancelClass, Op, Ring};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One class's measured cancel-to-completion times.
pub struct ClassLatency {
    /// The class.
    pub class: CancelClass,
    /// Nanoseconds from `cancel` to the completion taken.
    pub hist: Histogram<u64>,
}

fn pipe() -> Result<(std::fs::File, std::fs::File), CliError> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

fn submit(ring: &mut Ring, op: Op) -> Result<quell::OpId, CliError> {
    ring.submit(op)
        .map_err(|e| format!("quell submit: {e}").into())
}

fn timed_cancel(
    ring: &mut Ring,
    id: quell::OpId,
    hist: &mut Histogram<u64>,
) -> Result<(), CliError> {
    let t0 = Instant::now();
    ring.cancel(id)?;
    ring.wait_for(id)?;
    record(hist, t0.elapsed().as_nanos() as u64);
    Ok(())
}

/// Measures `iters` cancels of each class on `backend`; `file` is a regular file of at
/// least 1 MiB for the Bounded class. Returns the histograms and how the file was read.
pub fn measure(
    backend: BackendChoice,
    iters: u32,
    file: &Path,
) -> Result<(Vec<ClassLatency>, &'static str), CliError> {
    let mut out = Vec::new();
    let (r, _w) = pipe()?;
    let rfd = r.as_raw_fd();

    let mut h = new_histogram();
    let mut ring = Ring::builder().backend(backend).max_in_flight(1).build()?;
    let blocker = submit(&mut ring, Op::read(rfd, vec![0u8; 1]))?;
    for _ in 0..iters {
        let id = submit(&mut ring, Op::read(rfd, vec![0u8; 1]))?;
        ring.poll()?;
        timed_cancel(&mut ring, id, &mut h)?;
    }
    ring.cancel(blocker)?;
    ring.wait_for(blocker)?;
    out.push(ClassLatency {
        class: CancelClass::Queued,
        hist: h,
    });

    let mut ring = Ring::builder().backend(backend).build()?;
    let mut h = new_histogram();
    for _ in 0..iters {
        let id = submit(&mut ring, Op::read(rfd, vec![0u8; 1]))?;
        ring.poll()?;
        timed_cancel(&mut ring, id, &mut h)?;
    }
    out.push(ClassLatency {
        class: CancelClass::Prompt,
        hist: h,
    });

    let mut h = new_histogram();
    for _ in 0..iters {
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        // The deadline is a safety net only: a cancel that raced the worker's entry into
        // read(2) still ends the op, and shows up as a 2 s outlier.
        let safety = Instant::now() + std::time::Duration::from_secs(2);
        let id = submit(
            &mut ring,
            Op::blocking(move || {
                s.store(true, Ordering::Release);
                let mut b = [0u8; 1];
                // SAFETY: b is a live 1-byte buffer; rfd stays open until the op completes.
                let n = unsafe { libc::read(rfd, b.as_mut_ptr().cast(), 1) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .deadline(safety),
        )?;
        ring.poll()?;
        let t = Instant::now();
        while !started.load(Ordering::Acquire) {
            if t.elapsed().as_secs() > 5 {
                return Err("a pool worker never started the blocking op".into());
            }
            std::thread::yield_now();
        }
        // Let the worker enter read(2); the cancel then interrupts it.
        std::thread::sleep(std::time::Duration::from_micros(200));
        timed_cancel(&mut ring, id, &mut h)?;
    }
    out.push(ClassLatency {
        class: CancelClass::Interruptible,
        hist: h,
    });

    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(file);
    let (f, how) = match direct {
        Ok(f) => (f, "O_DIRECT"),
        Err(_) => (std::fs::File::open(file)?, "buffered (O_DIRECT refused)"),
    };
    let mut h = new_histogram();
    let mut buf = Some(AlignedBuf::new(1 << 20, 4096).expect("power of two"));
    for _ in 0..iters {
        let id = submit(
            &mut ring,
            Op::read_aligned(f.as_raw_fd(), 0, buf.take().expect("buffer")),
        )?;
        ring.flush()?;
        let t0 = Instant::now();
        ring.cancel(id)?;
        let c = ring.wait_for(id)?;
        record(&mut h, t0.elapsed().as_nanos() as u64);
        buf = c.into_aligned();
        if buf.is_none() {
            return Err("the Bounded read's buffer did not come back".into());
        }
    }
    out.push(ClassLatency {
        class: CancelClass::Bounded,
        hist: h,
    });
    Ok((out, how))
}
