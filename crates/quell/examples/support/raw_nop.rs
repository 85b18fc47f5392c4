//! The raw `io-uring` NOP loop the nop examples measure against: the same ring flags
//! and batch as `quell bench nop`'s raw contender. Shared by `nop_profile` and
//! `nop_floor` (included with `#[path]`; not an example of its own).

use io_uring::{opcode, IoUring};

/// NOPs per batch, as in `quell bench nop`.
pub const BATCH: usize = 32;

/// A ring with the flags quell's backend and the bench's raw loop use.
pub fn setup() -> IoUring {
    IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(BATCH as u32)
        .expect("io_uring")
}

/// Runs `batches` batches of NOPs straight on the ring; returns the NOPs completed.
#[inline(never)]
pub fn raw(batches: u64) -> u64 {
    let mut ring = setup();
    let nop = opcode::Nop::new().build();
    let (sub, mut sq, mut cq) = ring.split();
    let mut taken = 0;
    for _ in 0..batches {
        sq.sync();
        for i in 0..BATCH as u64 {
            // SAFETY: a NOP points to no memory.
            unsafe { sq.push(&nop.clone().user_data(i)) }.expect("room for a batch");
        }
        sq.sync();
        sub.submit_and_wait(BATCH).expect("enter");
        cq.sync();
        for c in &mut cq {
            assert!(c.result() >= 0);
            taken += 1;
        }
    }
    taken
}
