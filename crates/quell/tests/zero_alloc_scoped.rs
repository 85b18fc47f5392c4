//! I8 for scopes: ops in a nested group with a deadline, and ops carrying deadlines
//! of their own (each its own, so the timer heap is used and compacted), allocate
//! nothing in steady state. One test per binary: the counting allocator is
//! process-wide.

use quell::{BackendChoice, GroupId, GroupOptions, Op, Ring};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "common/alloc_count.rs"]
mod alloc_count;
use alloc_count::{measured, ALLOCS};

struct Scoped {
    group: GroupId,
    far: Instant,
    /// Per-op deadlines: distinct, earlier than the group's, never reached.
    next_own: Instant,
}

fn rounds(ring: &mut Ring, sc: &mut Scoped, fd: i32, bufs: &mut Vec<Vec<u8>>, n: usize) {
    for _ in 0..n {
        // 16 nops and 8 page-cache reads per round; half the ops use the group's
        // deadline, half carry one of their own.
        for i in 0..16 {
            let op = Op::nop().group(sc.group);
            let op = if i % 2 == 0 {
                op.deadline(sc.far)
            } else {
                sc.next_own += Duration::from_nanos(1);
                op.deadline(sc.next_own)
            };
            ring.submit(op).unwrap();
        }
        for i in 0..8u64 {
            let b = bufs.pop().unwrap();
            sc.next_own += Duration::from_nanos(1);
            let op = Op::read_at(fd, i * 512, b)
                .group(sc.group)
                .deadline(sc.next_own);
            ring.submit(op).unwrap();
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

fn scoped_steady_state_allocates_nothing(b: BackendChoice) {
    let Ok(mut ring) = Ring::builder()
        .backend(b)
        .capacity(1024)
        .max_in_flight(64)
        .build()
    else {
        eprintln!("backend {b:?} unavailable here");
        return;
    };
    let far = Instant::now() + Duration::from_secs(3600);
    let outer = ring
        .group(GroupId::ROOT, GroupOptions::default().name("outer"))
        .unwrap();
    let group = ring
        .group(outer, GroupOptions::default().name("inner").deadline(far))
        .unwrap();
    let mut sc = Scoped {
        group,
        far,
        next_own: Instant::now() + Duration::from_secs(1800),
    };
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 512]).collect();
    rounds(&mut ring, &mut sc, file.as_raw_fd(), &mut bufs, 200);
    let before = ALLOCS.load(Ordering::Relaxed);
    rounds(&mut ring, &mut sc, file.as_raw_fd(), &mut bufs, 2000);
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "{b:?}: {} allocations in 48,000 scoped ops",
        after - before
    );
    let st = ring.group_stats(group).unwrap();
    assert_eq!(st.queued + st.in_flight, 0);
}

#[test]
fn scoped_steady_state_allocates_nothing_on_either_backend() {
    measured(|| scoped_steady_state_allocates_nothing(BackendChoice::Uring));
    measured(|| scoped_steady_state_allocates_nothing(BackendChoice::Portable));
}
