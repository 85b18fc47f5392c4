//! The `quell bench nop` loop alone, for instruction counting (the benchmark itself is
//! `quell bench nop`). Batches of 32 NOPs: submit, `wait`, take every completion.
//!
//! ```text
//! cargo build --release -p quell --example nop_profile
//! valgrind --tool=callgrind --toggle-collect='nop_profile::run' \
//!     target/release/examples/nop_profile 20000 [plain|nested]
//! valgrind --tool=callgrind --toggle-collect='nop_profile::raw_nop::raw' \
//!     target/release/examples/nop_profile 20000 raw
//! ```
//!
//! Divide the instructions by the ops counted (the batches given plus 1,000 warm-up
//! batches, times 32). `nested` puts every NOP two groups deep with a deadline an hour
//! away (the I8 contender); `raw` is the same loop on the `io-uring` crate directly.

#[path = "support/raw_nop.rs"]
mod raw_nop;

use quell::{GroupId, GroupOptions, Op, Ring};
use raw_nop::{raw, BATCH};
use std::time::{Duration, Instant};

#[inline(never)]
fn run(ring: &mut Ring, batches: u64, scope: Option<(GroupId, Instant)>) -> u64 {
    let mut taken = 0;
    for _ in 0..batches {
        for _ in 0..BATCH {
            let op = match scope {
                Some((g, at)) => Op::nop().group(g).deadline(at),
                None => Op::nop(),
            };
            ring.submit(op).unwrap();
        }
        let mut got = 0;
        while got < BATCH {
            ring.wait(BATCH - got, None).unwrap();
            while let Some(c) = ring.next_completion() {
                assert!(c.outcome.is_done());
                got += 1;
            }
        }
        taken += got as u64;
    }
    taken
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batches: u64 = args.next().map_or(20_000, |s| s.parse().expect("batches"));
    let mode = args.next().unwrap_or_else(|| "plain".into());
    let start = Instant::now();
    let ops = if mode == "raw" {
        raw(batches + 1_000)
    } else {
        let mut ring = Ring::builder()
            .capacity(64)
            .max_in_flight(BATCH as u32)
            .sq_entries(BATCH as u32)
            .build()
            .expect("ring");
        let scope = (mode == "nested").then(|| {
            let far = Instant::now() + Duration::from_secs(3600);
            let outer = ring
                .group(GroupId::ROOT, GroupOptions::default())
                .expect("group");
            let inner = ring
                .group(outer, GroupOptions::default().deadline(far))
                .expect("group");
            (inner, far)
        });
        run(&mut ring, 1_000, scope) + run(&mut ring, batches, scope)
    };
    let secs = start.elapsed().as_secs_f64();
    println!("{mode}: {ops} ops, {:.2} M/s", ops as f64 / secs / 1e6);
}
