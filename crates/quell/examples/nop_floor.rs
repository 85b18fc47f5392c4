//! How cheap can a NOP be once an I/O library keeps *any* per-op bookkeeping?
//!
//! Issue #2 asks `quell bench nop` for 0.90× a raw `io-uring` loop (batches of 32). This
//! program measures the floor under that goal: a stripped-down op table with none of
//! quell's contract beyond the bare minimum every owned-buffer ring has to keep — a slot
//! per op with a generation (so a stale id is caught), the buffer held in the slot until
//! the kernel is done, SQEs staged and published once per batch, a ready queue, and a
//! completion that hands back id, user data, result and buffer. No groups, deadlines,
//! classes, op listing, user-space queue, cancellation or statistics.
//!
//! ```text
//! cargo build --release -p quell --example nop_floor
//! taskset -c 1 target/release/examples/nop_floor 300000        # ops/s, alternating
//! valgrind --tool=callgrind --toggle-collect='nop_floor::floor_loop' \
//!     target/release/examples/nop_floor 20000 floor             # instructions
//! ```
//!
//! Measured here (Linux 6.18, callgrind, user-space instructions per NOP): raw loop 45,
//! this floor 200 with `submit` called out of line as a library call is, 137 with it
//! inlined into the loop; quell 419. See README ("Where quell is short of its goals").

#[path = "support/raw_nop.rs"]
mod raw_nop;

use io_uring::{opcode, squeue, types, IoUring};
use raw_nop::{raw, setup, BATCH};
use std::time::Instant;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    InFlight,
    Done,
}

struct Slot {
    gen: u32,
    state: State,
    link: u32,
    res: i32,
    user_data: u64,
    buf: Option<Vec<u8>>,
}

/// A NOP, or a read into an owned buffer.
struct Op {
    read: bool,
    fd: i32,
    offset: u64,
    user_data: u64,
    buf: Option<Vec<u8>>,
}

/// Slot and generation: a stale id names a slot whose generation moved on.
#[derive(Clone, Copy, Debug)]
struct OpId {
    gen: u32,
    slot: u32,
}

struct Completion {
    id: OpId,
    user_data: u64,
    res: i32,
    buf: Option<Vec<u8>>,
}

struct Floor {
    ring: IoUring,
    slots: Vec<Slot>,
    free: u32,
    staged: Vec<squeue::Entry>,
    ready: Vec<u32>,
    next_ready: usize,
}

impl Floor {
    fn new(capacity: u32) -> Floor {
        let slots = (0..capacity)
            .map(|i| Slot {
                gen: 0,
                state: State::Free,
                link: if i + 1 == capacity { NONE } else { i + 1 },
                res: 0,
                user_data: 0,
                buf: None,
            })
            .collect();
        Floor {
            ring: setup(),
            slots,
            free: 0,
            staged: Vec::with_capacity(BATCH),
            ready: Vec::with_capacity(capacity as usize),
            next_ready: 0,
        }
    }

    #[inline(always)]
    fn submit_inline(&mut self, op: Op) -> Result<OpId, Op> {
        if self.free == NONE {
            return Err(op);
        }
        let idx = self.free;
        let s = &mut self.slots[idx as usize];
        self.free = s.link;
        s.state = State::InFlight;
        s.user_data = op.user_data;
        s.buf = op.buf;
        let key = u64::from(idx) | (u64::from(s.gen) << 16);
        let sqe = match (&mut s.buf, op.read) {
            (Some(b), true) => opcode::Read::new(types::Fd(op.fd), b.as_mut_ptr(), b.len() as u32)
                .offset(op.offset)
                .build(),
            _ => opcode::Nop::new().build(),
        };
        self.staged.push(sqe.user_data(key));
        Ok(OpId {
            gen: s.gen,
            slot: idx,
        })
    }

    /// What a library call costs: the same body, not inlined into the caller.
    #[inline(never)]
    fn submit(&mut self, op: Op) -> Result<OpId, Op> {
        self.submit_inline(op)
    }

    #[inline(never)]
    fn wait(&mut self, want: usize) {
        {
            let mut sq = self.ring.submission();
            // SAFETY: every staged SQE points at a buffer held in its slot until its CQE
            // is reaped below.
            unsafe { sq.push_multiple(&self.staged) }.expect("the SQ has room for a batch");
        }
        self.staged.clear();
        self.ring.submit_and_wait(want).expect("io_uring_enter");
        for cqe in self.ring.completion() {
            let key = cqe.user_data();
            let (idx, gen) = ((key & 0xffff) as u32, (key >> 16) as u32);
            let s = &mut self.slots[idx as usize];
            if s.gen != gen || s.state != State::InFlight {
                continue;
            }
            s.state = State::Done;
            s.res = cqe.result();
            if self.next_ready == self.ready.len() {
                self.ready.clear();
                self.next_ready = 0;
            }
            self.ready.push(idx);
        }
    }

    #[inline(always)]
    fn next_completion(&mut self) -> Option<Completion> {
        let idx = *self.ready.get(self.next_ready)?;
        self.next_ready += 1;
        let s = &mut self.slots[idx as usize];
        let c = Completion {
            id: OpId {
                gen: s.gen,
                slot: idx,
            },
            user_data: s.user_data,
            res: s.res,
            buf: s.buf.take(),
        };
        s.gen = s.gen.wrapping_add(1) & 0x7fff_ffff;
        s.state = State::Free;
        s.link = self.free;
        self.free = idx;
        Some(c)
    }
}

fn nop(user_data: u64) -> Op {
    Op {
        read: false,
        fd: -1,
        offset: 0,
        user_data,
        buf: None,
    }
}

#[inline(never)]
fn floor_loop(f: &mut Floor, batches: u64, inline: bool) -> u64 {
    let mut taken = 0;
    for _ in 0..batches {
        for i in 0..BATCH as u64 {
            let r = if inline {
                f.submit_inline(nop(i))
            } else {
                f.submit(nop(i))
            };
            assert!(r.is_ok(), "the table has room for a batch");
        }
        let mut got = 0;
        while got < BATCH {
            f.wait(BATCH - got);
            while let Some(c) = f.next_completion() {
                assert!(c.res >= 0 && c.buf.is_none() && c.user_data < BATCH as u64);
                std::hint::black_box((c.id.gen, c.id.slot));
                got += 1;
            }
        }
        taken += got as u64;
    }
    taken
}

/// Ops per second of one contender over `batches` batches.
fn rate(mode: &str, batches: u64) -> f64 {
    let start = Instant::now();
    let ops = match mode {
        "raw" => raw(batches),
        "floor" => floor_loop(&mut Floor::new(64), batches, false),
        "floor-inline" => floor_loop(&mut Floor::new(64), batches, true),
        other => panic!("unknown mode {other} (raw, floor, floor-inline)"),
    };
    ops as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batches: u64 = args.next().map_or(300_000, |s| s.parse().expect("batches"));
    if let Some(mode) = args.next() {
        println!("{mode}: {:.2} M/s", rate(&mode, batches) / 1e6);
        return;
    }
    // Alternate the contenders so drift in the machine's speed hits all of them.
    for round in 1..=5 {
        let raw = rate("raw", batches);
        let out = rate("floor", batches);
        let inl = rate("floor-inline", batches);
        println!(
            "round {round}: raw {:.2} M/s, floor {:.2} M/s ({:.3}x), floor-inline {:.2} M/s ({:.3}x)",
            raw / 1e6,
            out / 1e6,
            out / raw,
            inl / 1e6,
            inl / raw
        );
    }
}
