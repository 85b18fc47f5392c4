//! `tracing` for each op's life: one span per op, its lifecycle events inside it.
//!
//! A child module of `ring`. When a subscriber wants target `quell::op` (checked when
//! the ring is built and once per poll or wait, see `Ring::refresh_trace`), each op
//! submitted gets a span `quell.op` (level DEBUG) carrying what it is — id, kind, fd, group path, class,
//! user data — and its lifecycle events (level TRACE): `submitted`, `dispatched`
//! (`part dispatched` for the later parts and exact retries of a derived op, which
//! share the slot), `chain step queued`, `cancel requested`, `completed`. The span
//! records `outcome` and `transferred` when the op completes and closes when its
//! completion is delivered — taken by the user, or handed to an internal sink. A
//! detached op's span outlives its `Detached` delivery: it closes when the kernel's
//! own completion arrives, after a `kernel done` event.
//!
//! The span does not fit in the op table's slot budget, so spans live in a side table
//! indexed by slot. With no subscriber the table is never touched: every hook in the
//! ring is behind one `trace_ops` branch, and that flag stays on while any span is
//! open (so a subscriber that goes away still sees its spans recorded and closed).

use super::*;
use tracing::field::Empty;
use tracing::Span;

/// Open spans by slot index.
#[derive(Default)]
pub(crate) struct Spans {
    by_slot: Vec<Option<Span>>,
    open: u32,
}

impl Spans {
    fn get(&self, idx: u32) -> Option<&Span> {
        self.by_slot.get(idx as usize)?.as_ref()
    }

    fn insert(&mut self, idx: u32, span: Span) {
        let i = idx as usize;
        if i >= self.by_slot.len() {
            self.by_slot.resize_with(i + 1, || None);
        }
        // A slot's span is always removed when the slot is freed, so this one is new.
        debug_assert!(self.by_slot[i].is_none(), "slot {idx} already has a span");
        if self.by_slot[i].replace(span).is_none() {
            self.open += 1;
        }
    }

    fn remove(&mut self, idx: u32) -> Option<Span> {
        let span = self.by_slot.get_mut(idx as usize)?.take();
        if span.is_some() {
            self.open -= 1;
        }
        span
    }

    /// Whether some span is open.
    pub(super) fn any_open(&self) -> bool {
        self.open != 0
    }
}

/// A group's "root/parent/child" path (as `Groups::path`), written straight into the
/// subscriber's formatter: no string is built per op.
struct GroupPath<'a>(&'a crate::group::Groups, u32);

impl std::fmt::Display for GroupPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1 == 0 {
            return f.write_str("root");
        }
        let g = &self.0.v[self.1 as usize];
        write!(f, "{}/", GroupPath(self.0, g.parent))?;
        match &g.name {
            Some(n) => f.write_str(n),
            None => write!(f, "g{}", self.1),
        }
    }
}

/// Whether a subscriber wants the per-op spans and events.
pub(super) fn wanted() -> bool {
    tracing::enabled!(target: "quell::op", tracing::Level::DEBUG)
}

/// A lifecycle event inside slot `idx`'s span, or wherever the caller is when the op
/// has none (it was submitted before a subscriber appeared).
macro_rules! op_event {
    ($spans:expr, $idx:expr, $($t:tt)*) => {
        match $spans.get($idx) {
            Some(span) => tracing::trace!(target: "quell::op", parent: span, $($t)*),
            None => tracing::trace!(target: "quell::op", $($t)*),
        }
    };
}

impl Ring {
    /// Reads whether per-op tracing is on. Called where the ring refreshes its clock.
    #[inline]
    pub(super) fn refresh_trace(&mut self) {
        self.trace_ops = wanted() || self.spans.any_open();
    }

    /// Op `idx` was accepted: open its span and say so inside it.
    #[cold]
    pub(super) fn trace_submitted(&mut self, idx: u32, gen: u32) {
        let s = self.table.slot(idx);
        let d = &s.desc;
        let id = OpId {
            ring: self.id,
            gen,
            slot: idx,
        };
        let groups = &self.groups;
        let span = tracing::debug_span!(
            target: "quell::op",
            "quell.op",
            ring = self.id,
            id = %id,
            kind = %d.kind,
            fd = d.kind.uses_fd().then_some(d.fd),
            group = %GroupPath(groups, s.group),
            class = %s.class,
            user_data = s.user_data,
            outcome = Empty,
            transferred = Empty,
            kernel_result = Empty,
        );
        if !span.is_disabled() {
            self.spans.insert(idx, span);
        }
        let chain = s.flags & F_CHAIN != 0;
        op_event!(self.spans, idx, slot = idx, gen, kind = %d.kind, user_data = s.user_data, chain, "submitted");
    }

    /// Slot `idx` was given to the backend: its first dispatch, or the next part (or
    /// exact retry) of a derived op, which shares the slot.
    #[cold]
    pub(super) fn trace_dispatched(&self, idx: u32) {
        let s = self.table.slot(idx);
        if s.transferred > 0 {
            op_event!(self.spans, idx, slot = idx, gen = s.gen, class = %s.class, transferred = s.transferred, "part dispatched");
        } else {
            op_event!(self.spans, idx, slot = idx, gen = s.gen, class = %s.class, kind = %s.desc.kind, "dispatched");
        }
    }

    /// A chain loaded its next step into slot `idx` (it runs inside the chain's span).
    #[cold]
    pub(super) fn trace_chain_step(&self, idx: u32, step: usize, cleanup: bool) {
        let s = self.table.slot(idx);
        op_event!(self.spans, idx, slot = idx, gen = s.gen, step, kind = %s.desc.kind, cleanup, "chain step queued");
    }

    /// A linked chain in slot `idx` gave steps `from..from + steps` to the kernel as
    /// one batch (see `chain_link.rs`).
    #[cold]
    pub(super) fn trace_linked_batch(&self, idx: u32, from: usize, steps: usize) {
        let s = self.table.slot(idx);
        op_event!(
            self.spans,
            idx,
            slot = idx,
            gen = s.gen,
            from,
            steps,
            "linked batch"
        );
    }

    /// Step `step` of the linked chain in slot `idx` reported `res` (its own result,
    /// or `-ECANCELED` when the kernel skipped it).
    #[cold]
    pub(super) fn trace_linked_step(&self, idx: u32, step: usize, res: i64) {
        let s = self.table.slot(idx);
        op_event!(
            self.spans,
            idx,
            slot = idx,
            gen = s.gen,
            step,
            res,
            "linked step ended"
        );
    }

    /// A cancel was asked for slot `idx` (by the user, a group, a deadline or a fd).
    #[cold]
    pub(super) fn trace_cancel(&self, idx: u32, timed_out: bool) {
        let s = self.table.slot(idx);
        op_event!(self.spans, idx, slot = idx, gen = s.gen, state = ?s.state, timed_out, "cancel requested");
    }

    /// Slot `idx` ended with `outcome` (its completion is now queued, or handed to a
    /// sink): record it on the span.
    #[cold]
    pub(super) fn trace_completed(&self, idx: u32, outcome: &Outcome) {
        let s = self.table.slot(idx);
        if let Some(span) = self.spans.get(idx) {
            span.record("outcome", tracing::field::display(outcome));
            if s.desc.kind.is_transfer() {
                span.record("transferred", outcome.transferred() as u64);
            }
        }
        op_event!(self.spans, idx, slot = idx, gen = s.gen, %outcome, "completed");
    }

    /// The kernel's own completion of detached slot `idx` arrived (`res`, as the
    /// backend reported it).
    #[cold]
    pub(super) fn trace_kernel_done(&mut self, idx: u32, res: i64) {
        let s = self.table.slot(idx);
        if let Some(span) = self.spans.get(idx) {
            span.record("kernel_result", res);
        }
        let delivered = s.flags & F_DELIVERED != 0;
        op_event!(
            self.spans,
            idx,
            slot = idx,
            gen = s.gen,
            res,
            delivered,
            "kernel done"
        );
        if delivered {
            // The slot is freed now: the op's life is over.
            self.spans.remove(idx);
        }
    }

    /// Slot `idx`'s completion went to its taker. The span closes, unless the op is
    /// detached and the kernel still owns its memory (then `trace_kernel_done` closes
    /// it).
    #[cold]
    pub(super) fn trace_delivered(&mut self, idx: u32, kernel_pending: bool) {
        if kernel_pending {
            op_event!(
                self.spans,
                idx,
                slot = idx,
                "detached delivered; kernel still owns the memory"
            );
        } else {
            self.spans.remove(idx);
        }
    }
}
