//! Internal sinks: ops whose completions the library consumes itself.
//!
//! Some features are built from ordinary ops whose results the user never sees one by one
//! (LazyRead's chunk reads are published into a region as they land). Such an op is
//! submitted with the slot flag `F_SINK` and a user-data word naming its sink and a token;
//! when it ends, the ring hands its outcome and memory to the sink instead of queueing a
//! [`Completion`]. Everything else about the op is ordinary: it sits in the op table and
//! the dispatch window, is listed by `ops()`, canceled by its group, reaped on shutdown, and
//! its memory is kept until the kernel's own completion (a detached sink op is delivered
//! `Detached` with no memory; the ring frees it when the kernel is done).
//!
//! A sink may ask for follow-up ops (a LazyRead refills its window); they are queued here and
//! submitted at the next dispatch, never from inside a completion, so nothing re-enters the
//! ring. When the ring is dropped, sinks that still expect completions (ops leaked at
//! teardown) are told with [`Sink::closed`].

use super::Ring;
use crate::completion::Completion;
use crate::error::{Error, SubmitError};
use crate::id::OpId;
use crate::op::{Op, Payload};
use crate::outcome::{Errno, Outcome};
use std::sync::Arc;
use std::time::Duration;

/// The receiving end of internal ops. Called on the ring's thread, from inside the ring:
/// it must not block for long, and it cannot touch the ring.
pub(crate) trait Sink: Send + Sync {
    /// The op submitted with `token` ended with `outcome`; `payload` is its memory. Ops to
    /// submit next for this sink go into `next` as `(token, op)`.
    fn complete(&self, token: u32, outcome: Outcome, payload: Payload, next: &mut Vec<(u32, Op)>);
    /// The op for `token` was accepted with this id (for cancellation).
    fn submitted(&self, token: u32, id: OpId);
    /// The ring is gone: no more completions will arrive for this sink.
    fn closed(&self);
}

struct Entry {
    sink: Arc<dyn Sink>,
    /// Ops submitted and not delivered, plus follow-ups waiting in `next`.
    ops: u32,
}

/// The registry of sinks of one ring.
#[derive(Default)]
pub(crate) struct Sinks {
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Follow-ups: (sink, token, op), submitted at the next dispatch.
    next: Vec<(u32, u32, Op)>,
    scratch: Vec<(u32, Op)>,
    /// Completions handed to sinks so far (how `turn` sees progress).
    delivered: u64,
}

fn user_data(sink: u32, token: u32) -> u64 {
    (sink as u64) << 32 | token as u64
}

/// The errno a refused follow-up is reported with.
fn errno_of(e: &Error) -> Errno {
    match e {
        Error::InvalidFd { .. } => Errno::BADF,
        Error::Closed | Error::Draining | Error::NoSuchGroup => Errno::CANCELED,
        Error::TooLong { .. } => Errno::FBIG,
        Error::Io { source, .. } => Errno::from_io_error(source).unwrap_or(Errno::IO),
        _ => Errno::INVAL,
    }
}

impl Sinks {
    #[inline]
    pub(crate) fn has_next(&self) -> bool {
        !self.next.is_empty()
    }

    fn add(&mut self, sink: Arc<dyn Sink>) -> u32 {
        let e = Some(Entry { sink, ops: 0 });
        match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = e;
                i
            }
            None => {
                self.entries.push(e);
                (self.entries.len() - 1) as u32
            }
        }
    }

    fn entry(&mut self, sink: u32) -> &mut Entry {
        self.entries[sink as usize]
            .as_mut()
            .expect("sink ops keep their entry alive")
    }

    /// One op fewer; the entry goes when none is left.
    fn release(&mut self, sink: u32) {
        let e = self.entry(sink);
        e.ops -= 1;
        if e.ops == 0 {
            self.entries[sink as usize] = None;
            self.free.push(sink);
        }
    }

    /// Hands one outcome to its sink and queues the follow-ups it asks for.
    fn hand(&mut self, sink: u32, token: u32, outcome: Outcome, payload: Payload) {
        let s = self.entry(sink).sink.clone();
        let mut scratch = std::mem::take(&mut self.scratch);
        s.complete(token, outcome, payload, &mut scratch);
        self.entry(sink).ops += scratch.len() as u32;
        self.next
            .extend(scratch.drain(..).map(|(t, op)| (sink, t, op)));
        self.scratch = scratch;
        self.delivered += 1;
        self.release(sink);
    }

    /// A sink op's completion (from `Ring::push_completion`).
    pub(crate) fn deliver(&mut self, c: Completion) {
        let (sink, token) = ((c.user_data >> 32) as u32, c.user_data as u32);
        self.hand(sink, token, c.outcome, c.payload.into_inner());
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        for e in self.entries.iter().flatten() {
            e.sink.closed();
        }
    }
}

impl Ring {
    /// Registers a sink. It lives until its last op has been delivered (or, if it never
    /// gets one, until `drop_idle_sink`).
    pub(crate) fn add_sink(&mut self, sink: Arc<dyn Sink>) -> u32 {
        self.sinks.add(sink)
    }

    /// Forgets a sink that has no op (all its submissions were refused).
    pub(crate) fn drop_idle_sink(&mut self, sink: u32) {
        if self.sinks.entry(sink).ops == 0 {
            self.sinks.entries[sink as usize] = None;
            self.sinks.free.push(sink);
        }
    }

    /// Submits `op` on behalf of `sink`: its completion goes to the sink with `token`.
    /// A refused op comes back in the error, as with [`Ring::submit`].
    pub(crate) fn submit_to_sink(
        &mut self,
        sink: u32,
        token: u32,
        mut op: Op,
    ) -> Result<OpId, SubmitError> {
        op.user_data = user_data(sink, token);
        op.sink = true;
        let s = self.sinks.entry(sink).sink.clone();
        // Counted first: a canceled group completes the op inside `submit`.
        self.sinks.entry(sink).ops += 1;
        match self.submit(op) {
            Ok(id) => {
                s.submitted(token, id);
                Ok(id)
            }
            Err(e) => {
                self.sinks.entry(sink).ops -= 1;
                Err(e)
            }
        }
    }

    /// Submits the follow-ups sinks asked for. A refused one is handed back to its sink
    /// as `Failed` with its memory, except for a full op table: then the rest wait here
    /// for the next dispatch (slots free up as ops complete).
    pub(super) fn submit_sink_next(&mut self) {
        // In the order asked for (LazyRead issues chunks by offset); a refusal may queue more.
        while self.sinks.has_next() {
            let mut batch = std::mem::take(&mut self.sinks.next).into_iter();
            while let Some((sink, token, mut op)) = batch.next() {
                op.user_data = user_data(sink, token);
                op.sink = true;
                let s = self.sinks.entry(sink).sink.clone();
                match self.submit(op) {
                    Ok(id) => s.submitted(token, id),
                    Err(e) if matches!(e.error(), Error::TableFull { .. }) && !self.closed => {
                        let mut rest = vec![(sink, token, e.into_op())];
                        rest.extend(batch);
                        rest.append(&mut self.sinks.next);
                        self.sinks.next = rest;
                        return;
                    }
                    Err(e) => {
                        let (err, mut op) = e.into_parts();
                        let payload = std::mem::take(&mut op.desc.payload);
                        self.sinks
                            .hand(sink, token, Outcome::Failed(errno_of(&err)), payload);
                    }
                }
            }
        }
    }

    /// One turn of the event loop for code that waits on sink progress: handles requests
    /// and timers, submits, reaps, and if nothing was delivered to a sink, sleeps once in
    /// the backend (until something completes, a timer is due, a wake, or `timeout`). Ops
    /// queued by this turn are handed to the kernel by the next turn, wait, poll or flush.
    pub(crate) fn turn(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let before = self.sinks.delivered;
        self.take_requests();
        self.fire_timers();
        self.dispatch();
        self.reap();
        self.dispatch();
        if self.outstanding == 0 && self.sinks.has_next() {
            // Follow-ups wait for table slots, and none will free up by itself: every slot
            // holds a completion the user has not taken. Fail them rather than spin.
            for (sink, token, mut op) in std::mem::take(&mut self.sinks.next) {
                let payload = std::mem::take(&mut op.desc.payload);
                self.sinks
                    .hand(sink, token, Outcome::Failed(Errno::AGAIN), payload);
            }
        }
        // A request posted after `take_requests` may have had its doorbell cleared by the
        // reap: return so the next turn takes it instead of sleeping on it.
        if self.sinks.delivered != before
            || self.outstanding == 0
            || self.shared.requests.is_pending()
        {
            return Ok(());
        }
        let remaining = match self.timers.next() {
            Some(at) => {
                let until = Duration::from_nanos(at.saturating_sub(self.now_ns()));
                Some(timeout.map_or(until, |t| t.min(until)))
            }
            None => timeout,
        };
        self.backend
            .wait(remaining)
            .map_err(|e| Error::io("waiting for completions", e))?;
        self.reap();
        self.dispatch();
        Ok(())
    }

    /// Whether no op is outstanding and no sink follow-up is waiting.
    pub(crate) fn sinks_idle(&self) -> bool {
        self.outstanding == 0 && !self.sinks.has_next()
    }

    /// This ring's id (to check that an object belongs to it).
    pub(crate) fn ring_id(&self) -> u32 {
        self.id
    }
}
