//! I2: no buffer handed back before the kernel lets go. Canary buffers: once a completion hands a
//! buffer back, it is filled with a pattern; the kernel must never write into it afterwards.
use crate::common::*;
use quell::{Op, Outcome};
use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn canary_ok(buf: &[u8]) -> bool {
    buf.iter().all(|&x| x == 0xAA)
}

/// Hung FUSE reads canceled (and timed out): the buffers handed back are canaried; the daemon then
/// answers every parked request with real data. No canary may change.
#[test]
fn fuse_cancel_canary() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_canary", 60, move || {
            let fs = FaultFs::mount_temp(Spec::new().file(
                FileSpec::pattern("h.bin", 1 << 20).rule(Rule::read(0..1 << 20, Behavior::Hang)),
            ))
            .unwrap();
            let f = std::fs::File::open(fs.path("h.bin")).unwrap();
            let mut ring = builder(b).pool_threads(4).build().unwrap();
            let mut ids = Vec::new();
            for i in 0..8u64 {
                let op = Op::read_at(f.as_raw_fd(), i * 4096, vec![0u8; 4096]);
                let op = if i % 2 == 0 {
                    op.deadline(Instant::now() + Duration::from_millis(100))
                } else {
                    op
                };
                ids.push(ring.submit(op).unwrap());
            }
            let t0 = Instant::now();
            while fs.stats().parked < 4 && t0.elapsed() < Duration::from_secs(5) {
                ring.wait(1, Some(Duration::from_millis(20))).unwrap();
            }
            for (i, id) in ids.iter().enumerate() {
                if i % 2 == 1 {
                    ring.cancel(*id).unwrap();
                }
            }
            let mut bufs = Vec::new();
            for id in ids {
                let c = ring.wait_for(id).unwrap();
                assert!(c.outcome.is_canceled(), "{b:?}: {:?}", c.outcome);
                if let Some(mut buf) = c.into_buf() {
                    buf.fill(0xAA);
                    bufs.push(buf);
                }
            }
            fs.release_all();
            for _ in 0..20 {
                fs.release_all();
                ring.wait(1, Some(Duration::from_millis(20))).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
            for (i, bf) in bufs.iter().enumerate() {
                assert!(
                    canary_ok(bf),
                    "{b:?}: buffer {i} written after it was handed back"
                );
            }
        });
    }
}

/// Detached (I4/I7): a Bounded O_DIRECT read past its deadline: "The caller is released now; the ring
/// keeps the buffer until the kernel finishes". A Detached completion that hands back a buffer the
/// kernel already filled completely was not released early at all -- and its outcome hides a read
/// that finished (should be Done). Backends must agree.
#[test]
fn detached_releases_caller_and_keeps_buffer() {
    let _s = serial();
    use std::os::unix::fs::OpenOptionsExt;
    let p = tmpfile("/tmp", "detach");
    {
        let f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5Au8; 1 << 20];
        for i in 0..256u64 {
            std::os::unix::fs::FileExt::write_at(&f, &chunk, i << 20).unwrap();
        }
        f.sync_all().unwrap();
    }
    let mut report = Vec::new();
    for b in BACKENDS {
        let p = p.clone();
        let r = guard("detach", 60, move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&p)
                .unwrap();
            let mut ring = builder(b).part_size(256 << 20).build().unwrap();
            let mut lines = Vec::new();
            let mut bad = 0;
            for round in 0..4u64 {
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                let buf = quell::AlignedBuf::new(64 << 20, 4096).unwrap();
                let t_sub = Instant::now();
                let id = ring
                    .submit(
                        Op::read_aligned(f.as_raw_fd(), (round % 4) * (64 << 20), buf)
                            .deadline(Instant::now() + Duration::from_micros(200)),
                    )
                    .unwrap();
                let c = ring.wait_for(id).unwrap();
                let waited = t_sub.elapsed();
                let o = c.outcome;
                let back = c
                    .into_aligned()
                    .map(|x| x.iter().filter(|&&v| v == 0x5A).count());
                if o == Outcome::Detached && back.is_some() {
                    bad += 1;
                }
                lines.push(format!("{o:?} after {waited:?}, buffer back: {back:?}"));
                let t0 = Instant::now();
                while ring.stats().detached_finished < ring.stats().detached
                    && t0.elapsed() < Duration::from_secs(20)
                {
                    ring.wait(1, Some(Duration::from_millis(5))).unwrap();
                }
            }
            (bad, lines.join("; "))
        });
        eprintln!("{b:?}: {}", r.1);
        if r.0 > 0 {
            report.push(format!(
                "{b:?}: Detached with the buffer handed back (already filled): {}",
                r.1
            ));
        }
    }
    std::fs::remove_file(&p).unwrap();
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// Socket reads canceled, buffers canaried, then data arrives: canaries intact, and the data is
/// still in the socket for the next reader (nothing consumed into a handed-back buffer).
#[test]
fn socket_cancel_canary() {
    let _s = serial();
    for b in BACKENDS {
        guard("sock_canary", 30, move || {
            let mut ring = ring(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut bufs = Vec::new();
            for _ in 0..50 {
                let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 64])).unwrap();
                ring.poll().unwrap();
                ring.cancel(id).unwrap();
                let c = ring.wait_for(id).unwrap();
                assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
                let mut buf = c.into_buf().unwrap();
                buf.fill(0xAA);
                bufs.push(buf);
            }
            std::io::Write::write_all(&mut &w, &[1u8; 200]).unwrap();
            ring.wait(1, Some(Duration::from_millis(50))).unwrap();
            assert!(bufs.iter().all(|b| canary_ok(b)), "{b:?}");
            assert_eq!(drain_now(r.as_raw_fd()).len(), 200, "{b:?}");
        });
    }
}

/// Futures: a dropped read's buffer is never returned to anyone; the memory is recycled by the
/// allocator only after the kernel is done. We check the observable half: bytes arriving after a
/// drop end up as kept bytes, not in some other future's buffer.
#[test]
fn dropped_future_bytes_go_to_next_read_only() {
    let _s = serial();
    for b in BACKENDS {
        guard("fut_canary", 30, move || {
            let d = driver_on(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let (r2, _w2) = std::os::unix::net::UnixStream::pair().unwrap();
            for _ in 0..20 {
                let f = d.read(r.as_raw_fd(), vec![0u8; 32]);
                d.turn().unwrap();
                drop(f);
            }
            // another fd's pending read: must get nothing from r's data
            let other = d.read(r2.as_raw_fd(), vec![0u8; 32]);
            std::io::Write::write_all(&mut &w, b"payload").unwrap();
            for _ in 0..20 {
                d.turn().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            let (n, buf) = d.block_on(d.read(r.as_raw_fd(), vec![0u8; 32]));
            assert_eq!(&buf[..n.unwrap()], b"payload", "{b:?}");
            drop(other);
        });
    }
}
