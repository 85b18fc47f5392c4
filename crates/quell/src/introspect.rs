//! Dumping a ring's op table on demand: directly, or when a signal arrives.
//!
//! A child module of `ring`. The signal handler only bumps a counter and rings the
//! doorbell (async-signal-safe); the dump is written by the ring's thread the next time
//! it runs, so no lock or allocation happens in the handler.

use super::*;
use crate::dump::DumpFormat;
use std::io::Write;

/// A signal bound to a dump, owned by the ring.
pub(crate) struct DumpBinding {
    id: signal_hook::SigId,
    count: Arc<AtomicU32>,
    seen: u32,
    writer: Box<dyn Write + Send>,
    format: DumpFormat,
}

impl Ring {
    /// Writes the op table (see [`ops`](Ring::ops)) to `w` in `format`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// ring.submit(quell::Op::timeout(std::time::Duration::from_secs(5)).user_data(77))?;
    /// let mut out = Vec::new();
    /// ring.dump_ops(quell::DumpFormat::Table, &mut out)?;
    /// assert!(String::from_utf8(out)?.contains("77"));
    /// # Ok(()) }
    /// ```
    pub fn dump_ops(&self, format: DumpFormat, w: &mut dyn Write) -> std::io::Result<()> {
        crate::dump::write(&self.ops(), format, w)
    }

    /// Opt-in: every delivery of `signal` (for example `libc::SIGUSR1`) makes the ring
    /// write its op table to `writer` the next time it runs (a wait, poll or flush).
    /// The binding lasts as long as the ring; while bound, the signal's default action
    /// does not run.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// ring.dump_on_signal(libc::SIGUSR1, Box::new(std::io::stderr()), quell::DumpFormat::Table)?;
    /// // `kill -USR1 <pid>` now prints the ops in flight.
    /// # Ok(()) }
    /// ```
    pub fn dump_on_signal(
        &mut self,
        signal: i32,
        writer: Box<dyn Write + Send>,
        format: DumpFormat,
    ) -> Result<(), Error> {
        let count = Arc::new(AtomicU32::new(0));
        let shared = self.shared.clone();
        let c = count.clone();
        let handler = move || {
            c.fetch_add(1, Ordering::AcqRel);
            shared.requests.mark_pending();
            shared.doorbell.ring();
        };
        // SAFETY: the handler only touches atomics and write(2)s an eventfd, all
        // async-signal-safe; it allocates nothing and takes no lock.
        let id = unsafe { signal_hook::low_level::register(signal, handler) }
            .map_err(|e| Error::io("installing a signal handler", e))?;
        self.dumps.push(DumpBinding {
            id,
            count,
            seen: 0,
            writer,
            format,
        });
        Ok(())
    }

    /// Writes the dumps asked for by signals since last time (ring thread).
    pub(super) fn take_dumps(&mut self) {
        if self.dumps.is_empty() {
            return;
        }
        let mut dumps = std::mem::take(&mut self.dumps);
        for d in &mut dumps {
            let n = d.count.load(Ordering::Acquire);
            if n == d.seen {
                continue;
            }
            d.seen = n;
            if let Err(e) = crate::dump::write(&self.ops(), d.format, &mut d.writer) {
                tracing::warn!(error = %e, "writing an op-table dump failed");
            }
        }
        self.dumps = dumps;
    }

    /// Unregisters the dump signal handlers (the ring is going away).
    pub(super) fn unbind_dumps(&mut self) {
        for d in self.dumps.drain(..) {
            signal_hook::low_level::unregister(d.id);
        }
    }
}
