//! Rings leave no descriptor behind, whatever was in flight when they were dropped.
//! Alone in its binary: counting /proc/self/fd needs no other test running.

mod common;

use common::*;
use quell::{BackendChoice, Op};
use std::os::fd::AsRawFd;

#[test]
fn dropping_rings_with_ops_in_flight_leaks_no_descriptor() {
    let (r, _w) = pipe();
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    // Warm up process-wide state (the pool's signal handler, lazily opened files).
    for b in [BackendChoice::Uring, BackendChoice::Portable] {
        let mut ring = ring(b, 64);
        let id = ring.submit(Op::blocking(|| Ok(1))).unwrap();
        ring.wait_for(id).unwrap();
    }
    // A warm-up worker may still hold its share of the doorbell: count once things settle.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = open_fds();
    for round in 0..20u64 {
        for b in [BackendChoice::Uring, BackendChoice::Portable] {
            let mut ring = ring(b, 2048);
            for i in 0..500u64 {
                let op = match i % 3 {
                    0 => Op::read(r.as_raw_fd(), vec![0; 64]),
                    1 => Op::read_at(file.as_raw_fd(), (i + round) * 4096, vec![0; 4096]),
                    _ => Op::blocking(|| {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        Ok(0)
                    }),
                };
                ring.submit(op).unwrap();
            }
            ring.poll().unwrap();
        }
    }
    // Pool workers finishing their last job drop their share of the doorbell shortly after.
    let start = std::time::Instant::now();
    while open_fds() > before && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let now = fd_names();
    // Fewer is fine: a warm-up worker may have released its share after `before` was taken.
    assert!(
        now.len() <= before,
        "descriptors leaked by dropped rings: {} now, {before} before: {now:?}",
        now.len()
    );
}

fn fd_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| format!("{:?}", std::fs::read_link(e.path()).ok()))
        .collect()
}
