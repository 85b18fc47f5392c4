//! Linked chains on io_uring: the SQEs of one chain, and the direct descriptors its
//! open step opens into.
//!
//! A chain's steps go to the kernel as one linked batch. Every step's user data is
//! the chain slot's key with the step's number in spare key bits ([`step_key`]), so
//! each CQE finds its chain and step, and a cancel can aim at the step now running.
//! A chain that opens a file opens it into a *direct descriptor* (a slot of a sparse
//! fixed-file table registered at ring setup): the steps after it must name the file
//! before the open has run, so the slot is chosen here, from a free list, and the
//! later steps use `Fixed(slot)`. A direct descriptor never appears in the process's
//! descriptor table.

use crate::op::{OpKind, RawOp, NO_OFFSET};
use io_uring::{opcode, squeue, types};

/// First key bit of the step number (slot indexes are 16 bits wide).
const STEP_SHIFT: u32 = 16;
/// Key bits holding `step + 1` (0: not a step of a linked chain).
pub(crate) const STEP_BITS: u64 = 0xff << STEP_SHIFT;
/// Key bit of a result that is a step's cancel request's own, not the step's.
pub(crate) const CANCEL_RESULT: u64 = 1 << 24;
/// Every key bit the linked-chain machinery adds to a slot's key.
pub(crate) const LINK_BITS: u64 = STEP_BITS | CANCEL_RESULT;
/// Longest linked chain: a batch must fit an empty submission queue (8 entries at
/// least), so that it is never split across two submissions.
pub(crate) const MAX_LINKED: usize = 8;

/// The user data of step `step` of the chain whose slot key is `key`.
#[inline]
pub(crate) fn step_key(key: u64, step: usize) -> u64 {
    debug_assert!(step < MAX_LINKED);
    key | ((step as u64 + 1) << STEP_SHIFT)
}

/// Splits a linked step's user data into the slot key and the step number.
#[inline]
pub(crate) fn split_step(user_data: u64) -> (u64, usize) {
    let step = ((user_data & STEP_BITS) >> STEP_SHIFT) as usize;
    (user_data & !LINK_BITS, step.wrapping_sub(1))
}

/// How a step is tied to the one after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// The last step of the batch.
    End,
    /// `IOSQE_IO_LINK`: the next step runs only if this one succeeds in full.
    Soft,
    /// `IOSQE_IO_HARDLINK`: the next step (the chain's close) runs whatever this one did.
    Hard,
}

/// One step of a linked batch.
pub(crate) struct LinkStep {
    pub(crate) user_data: u64,
    pub(crate) raw: RawOp,
    /// The step's descriptor is this direct descriptor (its `raw.fd` is a placeholder).
    pub(crate) fixed: Option<u32>,
    /// An open step: open into this direct descriptor.
    pub(crate) open_into: Option<u32>,
    /// Issued to an io_uring worker at once (`IOSQE_ASYNC`), with no inline
    /// non-blocking attempt: an open that must wait as open(2) does.
    pub(crate) force_async: bool,
    pub(crate) link: Link,
}

/// The SQE of one step. `None` for a kind quell does not link (the chain module only
/// links the kinds below).
pub(crate) fn build_step(s: &LinkStep) -> Option<squeue::Entry> {
    let r = &s.raw;
    let off = if r.offset == NO_OFFSET {
        u64::MAX
    } else {
        r.offset
    };
    macro_rules! on_file {
        ($make:expr) => {
            match s.fixed {
                Some(slot) => $make(types::Fixed(slot)),
                None => $make(types::Fd(r.fd)),
            }
        };
    }
    let sqe = match r.kind {
        OpKind::Nop => opcode::Nop::new().build(),
        OpKind::Read => on_file!(|f| opcode::Read::new(f, r.ptr, r.len).offset(off).build()),
        OpKind::Write => on_file!(|f| opcode::Write::new(f, r.ptr, r.len).offset(off).build()),
        OpKind::Readv => {
            on_file!(|f| opcode::Readv::new(f, r.ptr.cast(), r.len)
                .offset(off)
                .build())
        }
        OpKind::Writev => {
            on_file!(|f| opcode::Writev::new(f, r.ptr.cast(), r.len)
                .offset(off)
                .build())
        }
        OpKind::Fsync => {
            let flags = if r.flags & 1 != 0 {
                types::FsyncFlags::DATASYNC
            } else {
                types::FsyncFlags::empty()
            };
            on_file!(|f| opcode::Fsync::new(f).flags(flags).build())
        }
        OpKind::Fallocate => on_file!(|f| opcode::Fallocate::new(f, r.aux)
            .offset(r.offset)
            .mode(r.flags as i32)
            .build()),
        OpKind::Close => on_file!(|f| opcode::Close::new(f).build()),
        OpKind::OpenAt => {
            let mut o = opcode::OpenAt::new(types::Fd(r.fd), r.ptr.cast()).mode(r.aux as _);
            match s.open_into {
                Some(slot) => {
                    // The kernel refuses O_CLOEXEC for a direct descriptor (which no
                    // exec can inherit anyway).
                    o = o
                        .flags(r.flags as i32 & !libc::O_CLOEXEC)
                        .file_index(types::DestinationSlot::try_from_slot_target(slot).ok());
                }
                None => o = o.flags(r.flags as i32),
            }
            o.build()
        }
        _ => return None,
    };
    let mut flags = match s.link {
        Link::End => squeue::Flags::empty(),
        Link::Soft => squeue::Flags::IO_LINK,
        Link::Hard => squeue::Flags::IO_HARDLINK,
    };
    if s.force_async {
        flags |= squeue::Flags::ASYNC;
    }
    Some(sqe.flags(flags).user_data(s.user_data))
}

/// The close of a direct descriptor, outside any link (the chain's close step again,
/// when the kernel canceled it with the rest of a broken link).
pub(crate) fn close_direct(user_data: u64, slot: u32) -> squeue::Entry {
    opcode::Close::new(types::Fixed(slot))
        .build()
        .user_data(user_data)
}

/// The free direct descriptors of one ring.
#[derive(Default)]
pub(crate) struct DirectTable {
    free: Vec<u32>,
}

impl DirectTable {
    /// Registers a sparse table of `want` slots (fewer under a low `RLIMIT_NOFILE`) on
    /// `ring`; an empty table (no chain opens into one) when the kernel refuses.
    pub(crate) fn register(ring: &io_uring::IoUring, want: u32) -> DirectTable {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid out-pointer.
        let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.min(u32::MAX as u64) as u32
        } else {
            0
        };
        let n = want.min(nofile);
        if n == 0 || ring.submitter().register_files_sparse(n).is_err() {
            return DirectTable::default();
        }
        DirectTable {
            free: (0..n).rev().collect(),
        }
    }

    pub(crate) fn alloc(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub(crate) fn free(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

/// Where the linked batches are inside the staged SQEs, so a flush never splits one
/// (the kernel would end the link at the cut and run the rest unordered).
#[derive(Default)]
pub(crate) struct LinkRanges {
    /// `(start, len)` of each staged batch, in order.
    v: Vec<(usize, usize)>,
}

impl LinkRanges {
    pub(crate) fn push(&mut self, start: usize, len: usize) {
        self.v.push((start, len));
    }

    /// The largest count `<= n` of staged SQEs that ends on no batch's inside.
    #[inline]
    pub(crate) fn cut(&self, n: usize) -> usize {
        for &(start, len) in &self.v {
            if start < n && n < start + len {
                return start;
            }
        }
        n
    }

    /// `n` staged SQEs were published.
    #[inline]
    pub(crate) fn published(&mut self, n: usize) {
        if self.v.is_empty() {
            return;
        }
        self.v.retain_mut(|(start, _)| {
            if *start < n {
                return false;
            }
            *start -= n;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_keys_round_trip_and_keep_the_slot_key() {
        let key = crate::id::key_of(65535, 0x7fff_ffff);
        for step in 0..MAX_LINKED {
            let ud = step_key(key, step);
            assert_eq!(ud & (1 << 63), 0, "never an internal key");
            assert_eq!(split_step(ud), (key, step));
            assert_eq!(split_step(ud | CANCEL_RESULT), (key, step));
        }
    }

    #[test]
    fn a_flush_never_splits_a_batch() {
        let mut r = LinkRanges::default();
        r.push(2, 3); // staged[2..5]
        assert_eq!(r.cut(1), 1);
        assert_eq!(r.cut(3), 2);
        assert_eq!(r.cut(5), 5);
        r.published(2);
        assert_eq!(r.cut(2), 0);
        r.published(3);
        assert_eq!(r.cut(1), 1);
    }
}
