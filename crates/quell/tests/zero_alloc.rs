//! Steady state: submitting and completing ops allocates nothing (issue 2, DESIGN I8).
//! One test per binary: the counting allocator is process-wide.

use quell::{BackendChoice, Op, Ring};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

#[path = "common/alloc_count.rs"]
mod alloc_count;
use alloc_count::{measured, ALLOCS};

fn rounds(ring: &mut Ring, fd: i32, bufs: &mut Vec<Vec<u8>>, n: usize) {
    for _ in 0..n {
        // 16 nops and 8 page-cache file reads per round.
        for _ in 0..16 {
            ring.submit(Op::nop()).unwrap();
        }
        for i in 0..8u64 {
            let b = bufs.pop().unwrap();
            ring.submit(Op::read_at(fd, i * 512, b)).unwrap();
        }
        let mut got = 0;
        while got < 24 {
            ring.wait(24 - got, None).unwrap();
            while let Some(c) = ring.next_completion() {
                assert!(c.outcome.is_done(), "{c:?}");
                if let Some(b) = c.into_buf() {
                    bufs.push(b);
                }
                got += 1;
            }
        }
    }
}

fn steady_state_allocates_nothing(b: BackendChoice) {
    let Ok(mut ring) = Ring::builder()
        .backend(b)
        .capacity(1024)
        .max_in_flight(64)
        .build()
    else {
        eprintln!("backend {b:?} unavailable here");
        return;
    };
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 512]).collect();
    rounds(&mut ring, file.as_raw_fd(), &mut bufs, 200);
    let before = ALLOCS.load(Ordering::Relaxed);
    rounds(&mut ring, file.as_raw_fd(), &mut bufs, 2000);
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "{b:?}: {} allocations in 48,000 ops",
        after - before
    );
}

#[test]
fn steady_state_allocates_nothing_on_either_backend() {
    measured(|| steady_state_allocates_nothing(BackendChoice::Uring));
    measured(|| steady_state_allocates_nothing(BackendChoice::Portable));
}
