//! The plain lane: the ring's hot path for ops that use none of its optional machinery.
//!
//! Most ops in a busy program are plain: no group, no deadline, no chain, no retry of
//! short transfers, nobody tracing, nothing queued ahead of them. For those, the full
//! path's checks (group state, deadline timers, part splitting, chain and sink flags,
//! span hooks) all come out "not used" one by one. The plain lane asks once, up front,
//! and then does only what every op needs: a slot, an SQE, and the counters that
//! `ops()`, `len()` and the group statistics read. Anything unusual — including a
//! refusal — takes the full path, so the contract does not depend on this module.

use super::Ring;
use crate::backend::{uring, Backend};
use crate::completion::Completion;
use crate::error::SubmitError;
use crate::id::{key_of, OpId};
use crate::op::{Op, OpKind, Payload, RawOp, NO_OFFSET};
use crate::outcome::{CancelClass, Outcome};
use crate::table::{SlotState, F_DECLARED};

impl Ring {
    /// The group index `op` goes to if it may take the plain lane right now; `None`
    /// sends it down the full path. Every condition is one the full path would
    /// otherwise test op by op.
    ///
    /// A scoped op (in a group, with a deadline) is plain too while its group is
    /// neither canceled nor draining, the group's deadline is more than a second away,
    /// and the op's own deadline is no earlier than the group's (the group's timer
    /// reaches it first, so it needs no timer of its own): I8 asks that such scopes
    /// cost no more than the root group.
    #[inline(always)]
    pub(super) fn plain_lane(&mut self, op: &Op) -> Option<u32> {
        let d = &op.desc;
        // Kinds whose memory is on the heap (its address survives moving the op into
        // its slot) and that need no per-kind admission beyond the descriptor's class.
        let kind_ok = match d.kind {
            OpKind::Nop => true,
            OpKind::Read | OpKind::Write => {
                matches!(d.payload, Payload::Buf(_))
                    // A long positioned transfer is split into parts (full path).
                    && (d.offset == NO_OFFSET || d.len <= self.part_size)
            }
            _ => false,
        };
        if !kind_ok
            || op.exact
            || op.sink
            || (self.closed | self.paused | self.trace_ops)
            || !self.queue.is_empty()
            || self.in_flight >= self.max_in_flight
        {
            return None;
        }
        let (gidx, g) = match op.group {
            None => (0, self.groups.v.first()?),
            Some(id) => (id.idx, self.groups.get(id)?),
        };
        let group_deadline = g.deadline;
        if g.canceled | g.draining
            || (group_deadline != u64::MAX
                && group_deadline < self.coarse_now.saturating_add(1_000_000_000))
        {
            return None;
        }
        if let Some(at) = op.deadline {
            if self.deadline_ns(at) < group_deadline {
                return None;
            }
        }
        Some(gidx)
    }

    /// Submits an op [`plain_lane`](Ring::plain_lane) accepted for group `gidx`.
    #[inline(always)]
    pub(super) fn submit_plain(&mut self, op: Op, gidx: u32) -> Result<OpId, SubmitError> {
        let mut op = op;
        let class = match op.desc.kind {
            OpKind::Nop => op.class.unwrap_or(CancelClass::Prompt),
            _ => match self.plain_class(&op) {
                Ok((c, direct)) => {
                    if direct {
                        op.desc.flags |= crate::op::RW_DIRECT;
                    }
                    c
                }
                Err(e) => return Err(SubmitError::new(e, op)),
            },
        };
        let Some((idx, s)) = self.table.alloc_slot() else {
            return Err(self.table_full(op));
        };
        let gen = s.gen;
        let key = key_of(idx, gen);
        s.state = SlotState::InFlight;
        s.class = class;
        if op.class.is_some() {
            s.flags = F_DECLARED;
        }
        s.user_data = op.user_data;
        s.submitted = self.coarse_now;
        s.group = gidx;
        s.set_desc(op.desc);
        // The payload is a heap buffer (or none), in its slot until the completion.
        let d = &mut s.desc;
        let ptr = match &mut d.payload {
            Payload::Buf(v) => v.as_mut_ptr(),
            _ => std::ptr::null_mut(),
        };
        let started = match &mut self.backend {
            Backend::Uring(u) if !uring::on_pool(d.kind, class) => {
                u.push_plain(key, d.kind, d.fd, ptr, d.len, d.offset, class);
                true
            }
            backend => backend.start(
                key,
                RawOp {
                    kind: d.kind,
                    fd: d.fd,
                    fd2: -1,
                    len: d.len,
                    flags: d.flags,
                    offset: d.offset,
                    aux: d.aux,
                    ptr,
                    ptr2: std::ptr::null_mut(),
                    owned: d.owned,
                },
                class,
            ),
        };
        if !started {
            s.state = SlotState::Queued;
        }
        self.outstanding += 1;
        self.stats.submitted += 1;
        let g = &mut self.groups.at(gidx).stats;
        if started {
            g.in_flight += 1;
            self.in_flight += 1;
        } else {
            g.queued += 1;
            self.enqueue(idx, key);
        }
        Ok(OpId {
            ring: self.id,
            gen,
            slot: idx,
        })
    }

    /// The class of a plain read or write, checked as `admit` does: the buffer and
    /// descriptor are validated even when the op declares its class (which only spares
    /// the descriptor's classification).
    #[inline]
    fn plain_class(&mut self, op: &Op) -> Result<(CancelClass, bool), crate::Error> {
        let d = &op.desc;
        // `aux` is the buffer's full length (`len` is capped at u32::MAX).
        if d.aux > i32::MAX as u64 {
            return Err(crate::Error::TooLong { len: d.aux });
        }
        if d.fd < 0 {
            return Err(crate::Error::InvalidFd { fd: d.fd });
        }
        if super::offset_out_of_range(d.offset) {
            return Err(crate::Error::InvalidArgument(
                "offset beyond i64::MAX (the kernel refuses it)",
            ));
        }
        if let Some(c) = op.class {
            return Ok((c, false));
        }
        let info = self.checked_info(op)?;
        let direct = info.direct && info.class == CancelClass::Bounded;
        Ok((info.class, direct))
    }

    #[cold]
    fn table_full(&self, op: Op) -> SubmitError {
        let capacity = self.table.capacity();
        SubmitError::new(crate::Error::TableFull { capacity }, op)
    }

    /// Finishes an in-flight op (slot `idx` of generation `gen`) whose result needs no
    /// interpretation: it succeeded, no cancel, deadline, chain, sink or retry is
    /// attached, and nothing was transferred by earlier parts. Returns `false`
    /// (changing nothing) when the full path is needed.
    #[inline(always)]
    pub(super) fn finish_plain(&mut self, idx: u32, gen: u32, res: i64) -> bool {
        if self.trace_ops {
            return false;
        }
        let part_size = self.part_size;
        let s = self.table.slot_mut(idx);
        let kind = s.desc.kind;
        let plain = s.gen == gen
            && s.state == SlotState::InFlight
            && res >= 0
            && s.flags & !F_DECLARED == 0
            && s.transferred == 0
            && s.deadline == u64::MAX
            && match kind {
                OpKind::Nop | OpKind::Send | OpKind::Recv | OpKind::Poll | OpKind::Fsync => true,
                // A positioned transfer longer than a part continues in the same slot.
                OpKind::Read | OpKind::Write => {
                    s.desc.offset == NO_OFFSET || s.desc.len <= part_size
                }
                _ => false,
            };
        if !plain {
            return false;
        }
        s.state = SlotState::Completed;
        self.groups.at(s.group).stats.in_flight -= 1;
        self.in_flight -= 1;
        self.outstanding -= 1;
        self.stats.completed += 1;
        self.completions
            .push_back((idx, Outcome::Done(res as usize)));
        true
    }

    /// Hands a finished op's completion over and frees its slot. `None` (nothing
    /// changed) for a detached op, which keeps its slot until the kernel is done, or
    /// when spans are being traced.
    #[inline(always)]
    pub(super) fn deliver_plain(&mut self, idx: u32, outcome: Outcome) -> Option<Completion> {
        if self.trace_ops {
            return None;
        }
        let (gen, user_data, kind, payload) = self.table.release_completed(idx)?;
        Some(Completion {
            id: OpId {
                ring: self.id,
                gen,
                slot: idx,
            },
            user_data,
            outcome,
            kind,
            payload: payload.into(),
        })
    }
}
