//! Quick rates of the portable backend against io_uring (not the benchmark suite: that
//! is `quell bench`). `cargo run --release -p quell --example portable_rates`
//!
//! - `read`: 4 KiB reads at pseudo-random offsets of a page-cached 64 MiB file, 32 in
//!   flight, per backend; `pool` forces every read through the thread pool (a
//!   spawn_blocking-like hand-off) to show what the inline `RWF_NOWAIT` path saves.
//! - `ping-pong`: one byte through a pipe to an echo thread and back, round trips/s.

use quell::{BackendChoice, CancelClass, Op, Ring};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_millis(1500);

fn reads(b: BackendChoice, pool: bool, file: &std::fs::File, blocks: u64) -> f64 {
    let mut ring = Ring::builder().backend(b).build().unwrap();
    let fd = file.as_raw_fd();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * 4096
    };
    let op = |off: u64, buf: Vec<u8>| {
        let o = Op::read_at(fd, off, buf);
        if pool {
            o.class(CancelClass::Interruptible)
        } else {
            o
        }
    };
    for _ in 0..32 {
        ring.submit(op(next(), vec![0u8; 4096])).unwrap();
    }
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < RUN {
        ring.wait(1, None).unwrap();
        while let Some(c) = ring.next_completion() {
            assert_eq!(c.outcome, quell::Outcome::Done(4096));
            done += 1;
            ring.submit(op(next(), c.into_buf().unwrap())).unwrap();
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn pread_loop(file: &std::fs::File, blocks: u64) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    let mut done = 0u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while start.elapsed() < RUN {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            file.read_at(&mut buf, (x % blocks) * 4096).unwrap();
            done += 1;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn ping_pong(b: BackendChoice) -> f64 {
    let (r1, w1) = rustix::pipe::pipe().unwrap();
    let (r2, w2) = rustix::pipe::pipe().unwrap();
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        loop {
            match rustix::io::read(&r1, &mut byte) {
                Ok(1) => {}
                _ => return,
            }
            if byte[0] == 0xff || rustix::io::write(&w2, &byte).is_err() {
                return;
            }
        }
    });
    let mut ring = Ring::builder().backend(b).build().unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    let mut rbuf = vec![0u8; 1];
    while start.elapsed() < RUN {
        let w = ring.submit(Op::write(w1.as_raw_fd(), vec![1u8])).unwrap();
        let r = ring.submit(Op::read(r2.as_raw_fd(), rbuf)).unwrap();
        ring.wait_for(w).unwrap();
        rbuf = ring.wait_for(r).unwrap().into_buf().unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    rustix::io::write(&w1, &[0xff]).unwrap();
    echo.join().unwrap();
    rate
}

fn main() {
    let path = std::env::temp_dir().join(format!("quell-rates-{}", std::process::id()));
    let blocks = 16384u64; // 64 MiB
    std::fs::write(&path, vec![7u8; (blocks * 4096) as usize]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    // Warm the page cache (and keep it: the file is small and was just written).
    pread_loop(&file, blocks);
    let uring = quell::probe().io_uring;
    println!("read 4 KiB, page cache, 32 in flight (ops/s):");
    println!(
        "  pread loop (1 thread)   {:>10.0}",
        pread_loop(&file, blocks)
    );
    println!(
        "  portable (inline)       {:>10.0}",
        reads(BackendChoice::Portable, false, &file, blocks)
    );
    println!(
        "  portable (pool only)    {:>10.0}",
        reads(BackendChoice::Portable, true, &file, blocks)
    );
    if uring {
        println!(
            "  uring                   {:>10.0}",
            reads(BackendChoice::Uring, false, &file, blocks)
        );
    }
    println!("pipe ping-pong with an echo thread (round trips/s):");
    let p = ping_pong(BackendChoice::Portable);
    println!(
        "  portable                {:>10.0}  ({:.1} us/rt)",
        p,
        1e6 / p
    );
    if uring {
        let u = ping_pong(BackendChoice::Uring);
        println!(
            "  uring                   {:>10.0}  ({:.1} us/rt)",
            u,
            1e6 / u
        );
        println!("  portable rt / uring rt  {:>10.2}", u / p);
    }
}
