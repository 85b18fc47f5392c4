//! Support for [`Op::blocking`](crate::Op::blocking) closures and quell's thread pool.
//!
//! A blocking op runs on a worker of quell's pool. Canceling it sets the op's cancel
//! flag and interrupts the worker with quell's interrupt signal, so a blocking system
//! call inside the closure returns `EINTR` (the signal's handler does nothing and is
//! installed without `SA_RESTART`). A closure that computes for a long time, or retries
//! on `EINTR`, polls [`cancel_requested`] instead.
//!
//! The interrupt signal is the first real-time signal from `SIGRTMIN+7` on that has no
//! handler when the first worker starts. The environment variable `QUELL_SIGNAL`
//! (`SIGRTMIN+N`, `SIGRTMAX-N` or a number) or [`set_interrupt_signal`] chooses another.
//! quell never replaces a handler someone else installed for its chosen signal.

/// Whether the op the calling thread runs has been asked to stop. `false` outside a
/// quell pool worker.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// let id = ring.submit(quell::Op::blocking(|| {
///     let mut spins = 0usize;
///     while !quell::blocking::cancel_requested() {
///         std::thread::sleep(std::time::Duration::from_millis(1));
///         spins += 1;
///     }
///     Ok(spins)
/// }))?;
/// std::thread::sleep(std::time::Duration::from_millis(5));
/// ring.cancel(id)?;
/// let c = ring.wait_for(id)?;
/// assert!(c.outcome.is_done() || c.outcome.is_canceled());
/// assert!(!quell::blocking::cancel_requested());
/// # Ok(()) }
/// ```
pub fn cancel_requested() -> bool {
    crate::backend::pool::cancel_requested()
}

/// The signal quell sends to interrupt a pool worker (installing its no-op handler on
/// first use, process-wide, once).
///
/// ```
/// let sig = quell::blocking::interrupt_signal();
/// assert!(sig >= libc::SIGRTMIN() && sig <= libc::SIGRTMAX());
/// ```
pub fn interrupt_signal() -> i32 {
    crate::backend::pool::interrupt_signal()
}

/// Chooses the interrupt signal (call it before any ring uses its thread pool).
/// Returns `true` if `signo` is now the interrupt signal, `false` if another one was
/// already in use. If `signo` already has a handler, quell keeps that handler (which must
/// not use `SA_RESTART` for interrupts to work).
///
/// ```
/// let sig = quell::blocking::interrupt_signal();
/// assert!(quell::blocking::set_interrupt_signal(sig));
/// ```
pub fn set_interrupt_signal(signo: i32) -> bool {
    crate::backend::pool::request_signal(signo)
}
