//! FUSE files that hang, are slow or fail (quell-faultfs), on both backends.
use crate::common::*;
use quell::{CancelClass, Chain, GroupId, GroupOptions, Op, Outcome};
use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn hangfs() -> FaultFs {
    FaultFs::mount_temp(
        Spec::new()
            .file(
                FileSpec::pattern("hang.bin", 1 << 20)
                    .rule(Rule::read(4096..8192, Behavior::Hang))
                    .rule(Rule::write(0..4096, Behavior::Hang)),
            )
            .file(
                FileSpec::pattern("eio.bin", 1 << 20)
                    .rule(Rule::read(65536..65537, Behavior::Eio))
                    .rule(Rule::write(8192..8193, Behavior::Enospc)),
            )
            .file(
                FileSpec::pattern("short.bin", 1 << 20)
                    .rule(Rule::read(0..1 << 20, Behavior::Short { n: 100 })),
            )
            .file(
                FileSpec::pattern("slow.bin", 1 << 20)
                    .rule(Rule::read(0..1 << 20, Behavior::Delay { ms: 300 })),
            )
            .file(
                FileSpec::pattern("cached.bin", 1 << 20)
                    .cached(true)
                    .rule(Rule::read(0..1 << 20, Behavior::Hang)),
            ),
    )
    .expect("mount faultfs")
}

/// Drives the ring until `n` requests are parked in the daemon.
fn drive_parked(ring: &mut quell::Ring, fs: &FaultFs, n: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if fs.stats().parked as u64 >= n {
            return true;
        }
        ring.wait(1, Some(Duration::from_millis(20))).unwrap();
    }
    false
}

fn pat(off: usize, n: usize) -> Vec<u8> {
    (off..off + n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn hung_read_cancel_and_deadline() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_cancel", 60, move || {
            let fs = hangfs();
            let f = std::fs::File::open(fs.path("hang.bin")).unwrap();
            let mut ring = ring(b);
            let id = ring
                .submit(Op::read_at(f.as_raw_fd(), 4096, vec![0u8; 4096]))
                .unwrap();
            ring.flush().unwrap();
            assert!(
                fs.wait_parked(1, Duration::from_secs(5)),
                "{b:?} not parked"
            );
            let info = ring.ops().into_iter().find(|o| o.id == id).unwrap();
            assert_eq!(info.dispatch_class, CancelClass::Interruptible, "{b:?}");
            // the ring is not stalled by the hung read
            let nop = ring.submit(Op::nop()).unwrap();
            let t0 = Instant::now();
            ring.wait_for(nop).unwrap();
            assert!(t0.elapsed() < Duration::from_secs(2), "{b:?} ring stalled");
            ring.cancel(id).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 }, "{b:?}");
            assert_eq!(c.into_buf().unwrap().len(), 4096);
            // deadline
            let t0 = Instant::now();
            let id = ring
                .submit(
                    Op::read_at(f.as_raw_fd(), 4096, vec![0u8; 100])
                        .deadline(Instant::now() + Duration::from_millis(200)),
                )
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 }, "{b:?}");
            assert!(t0.elapsed() < Duration::from_secs(5));
            // a part-split read that hangs on its 2nd part: canceled with the first part counted
            let mut ring2 = builder(b).part_size(4096).build().unwrap();
            let id = ring2
                .submit(Op::read_at(f.as_raw_fd(), 0, vec![0u8; 12288]))
                .unwrap();
            assert!(
                drive_parked(&mut ring2, &fs, 1),
                "{b:?} 2nd part never parked"
            );
            std::thread::sleep(Duration::from_millis(50));
            ring2.cancel(id).unwrap();
            let c = ring2.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 4096 }, "{b:?}");
            assert_eq!(&c.data()[..4096], &pat(0, 4096)[..]);
            assert!(fs.stats().interrupts >= 1, "{b:?}");
        });
    }
}

/// Ring dropped with a hung (interruptible) read and a hung write in flight: drop returns
/// promptly (they are canceled), nothing leaked.
#[test]
fn ring_drop_with_hung_fuse_io() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_drop", 60, move || {
            let fs = hangfs();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(fs.path("hang.bin"))
                .unwrap();
            let mut ring = ring(b);
            ring.submit(Op::read_at(f.as_raw_fd(), 4096, vec![0u8; 4096]))
                .unwrap();
            ring.submit(Op::write_at(f.as_raw_fd(), 0, vec![9u8; 4096]))
                .unwrap();
            ring.flush().unwrap();
            assert!(fs.wait_parked(2, Duration::from_secs(5)), "{b:?}");
            let left = ring.shutdown();
            assert_eq!(left.len(), 2);
            for c in &left {
                assert!(
                    c.outcome.is_canceled(),
                    "{b:?}: {:?} {:?}",
                    c.kind(),
                    c.outcome
                );
            }
            assert_eq!(ring.stats().leaked_at_teardown, 0);
            let t0 = Instant::now();
            let mut ring = crate::common::ring(b);
            ring.submit(Op::read_at(f.as_raw_fd(), 4096, vec![0u8; 4096]))
                .unwrap();
            ring.flush().unwrap();
            assert!(fs.wait_parked(1, Duration::from_secs(5)));
            drop(ring);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{b:?} drop took {:?}",
                t0.elapsed()
            );
            // the canceled write stored nothing (I4/I11: Canceled{0} means 0 written)
            let contents = fs.file_contents("hang.bin").unwrap();
            assert_eq!(
                &contents[..4096],
                &pat(0, 4096)[..],
                "{b:?}: canceled write stored bytes"
            );
        });
    }
}

/// EIO / ENOSPC / short: failures are Failed(errno), short reads with exact() complete.
#[test]
fn eio_enospc_short() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_errors", 60, move || {
            let fs = hangfs();
            let mut ring = ring(b);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(fs.path("eio.bin"))
                .unwrap();
            let id = ring
                .submit(Op::read_at(f.as_raw_fd(), 65000, vec![0u8; 1000]))
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(
                errno_of(&c.outcome),
                Some(libc::EIO),
                "{b:?}: {:?}",
                c.outcome
            );
            let id = ring
                .submit(Op::write_at(f.as_raw_fd(), 8000, vec![1u8; 1000]))
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(
                errno_of(&c.outcome),
                Some(libc::ENOSPC),
                "{b:?}: {:?}",
                c.outcome
            );
            let s = std::fs::File::open(fs.path("short.bin")).unwrap();
            let id = ring
                .submit(Op::read_at(s.as_raw_fd(), 10, vec![0u8; 1000]))
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Done(100), "{b:?}");
            let id = ring
                .submit(Op::read_at(s.as_raw_fd(), 10, vec![0u8; 1000]).exact())
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Done(1000), "{b:?}");
            assert_eq!(c.data(), &pat(10, 1000)[..]);
            // stream read with exact on a short file: continues at the position
            let id = ring
                .submit(Op::read(s.as_raw_fd(), vec![0u8; 450]).exact())
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Done(450), "{b:?}");
            assert_eq!(c.data(), &pat(0, 450)[..]);
        });
    }
}

/// A multi-part write whose 3rd part fails with ENOSPC after two parts were stored: the outcome
/// must not hide that 8 KiB were written (I4 honest outcomes).
#[test]
fn multipart_write_failing_late_reports_written_bytes() {
    let _s = serial();
    let mut bad = Vec::new();
    for b in BACKENDS {
        let r = guard("fuse_partwrite", 60, move || {
            let fs = hangfs();
            let mut ring = builder(b).part_size(4096).build().unwrap();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(fs.path("eio.bin"))
                .unwrap();
            let id = ring
                .submit(Op::write_at(f.as_raw_fd(), 0, vec![0xEEu8; 12288]))
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            let fc = fs.file_contents("eio.bin").unwrap();
            let stored = fc[..12288].iter().take_while(|&&x| x == 0xEE).count();
            assert_eq!(&fc[8192..12288], &pat(8192, 4096)[..]);
            assert_eq!(stored, 8192);
            if c.outcome.transferred() == 8192 {
                None
            } else {
                Some(format!(
                    "{b:?}: {stored} bytes were written but the outcome is {:?} (transferred {})",
                    c.outcome,
                    c.outcome.transferred()
                ))
            }
        });
        bad.extend(r);
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Same with an exact() stream write (write_all) over a socket whose peer goes away part-way.
#[test]
fn exact_write_failing_late_reports_written_bytes() {
    let _s = serial();
    let mut bad = Vec::new();
    for b in BACKENDS {
        let r = guard("exact_epipe", 60, move || {
            let mut ring = ring(b);
            let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
            let id = ring
                .submit(Op::write(a.as_raw_fd(), vec![1u8; 8 << 20]).exact())
                .unwrap();
            // read a bit, then go away
            let mut got = 0usize;
            let mut buf = vec![0u8; 65536];
            while got < 300_000 {
                ring.wait(1, Some(Duration::from_millis(1))).unwrap();
                let n = std::io::Read::read(&mut &peer, &mut buf).unwrap();
                got += n;
            }
            got += drain_now(peer.as_raw_fd()).len();
            std::thread::sleep(Duration::from_millis(50));
            ring.wait(1, Some(Duration::from_millis(50))).unwrap();
            got += drain_now(peer.as_raw_fd()).len();
            drop(peer);
            let c = ring.wait_for(id).unwrap();
            eprintln!(
                "{b:?}: write_all to a peer that left after {got} bytes -> {:?}",
                c.outcome
            );
            if c.outcome.transferred() >= got.min(300_000) && c.outcome.transferred() > 0 {
                None
            } else {
                Some(format!(
                    "{b:?}: peer received >= {got} bytes, outcome {:?} says transferred {}",
                    c.outcome,
                    c.outcome.transferred()
                ))
            }
        });
        bad.extend(r);
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Chain open→read(hang)→close on FUSE, canceled: completes Canceled and still closes the file.
#[test]
fn chain_on_fuse_canceled_still_closes() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_chain", 60, move || {
            let fs = hangfs();
            let mut ring = ring(b);
            let before_fds = fd_count();
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(
                            libc::AT_FDCWD,
                            fs.path("hang.bin"),
                            libc::O_RDONLY,
                            0,
                        ))
                        .then(Op::read_at(Chain::OPENED, 4096, vec![0u8; 512]))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            assert!(drive_parked(&mut ring, &fs, 1), "{b:?}");
            ring.cancel(id).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert!(c.outcome.is_canceled(), "{b:?} {:?}", c.outcome);
            let steps = c.steps().unwrap();
            assert!(
                steps
                    .iter()
                    .any(|s| s.kind() == quell::OpKind::Close
                        && s.outcome() == Some(Outcome::Done(0))),
                "{b:?} close did not run: {:?}",
                steps
                    .iter()
                    .map(|s| (s.kind(), s.outcome()))
                    .collect::<Vec<_>>()
            );
            assert_eq!(fd_count(), before_fds, "{b:?}");
        });
    }
}

/// tokio: timeouts around reads of a slow/hung FUSE file; futures dropped; driver dropped at the end.
#[test]
fn tokio_timeouts_on_hung_fuse() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_tokio", 60, move || {
            let fs = hangfs();
            let rt = rt_current();
            let path = fs.path("hang.bin");
            let slow = fs.path("slow.bin");
            rt.block_on(async move {
                let d = quell::future::Driver::new(ring(b));
                quell::tokio::attach(&d).unwrap();
                let f = std::fs::File::open(&path).unwrap();
                let sf = std::fs::File::open(&slow).unwrap();
                for _ in 0..5 {
                    let r = tokio::time::timeout(
                        Duration::from_millis(50),
                        d.read_at(f.as_raw_fd(), 4096, vec![0u8; 100]),
                    )
                    .await;
                    assert!(r.is_err());
                }
                // slow file: dropped mid-delay, then a read that waits long enough works
                for _ in 0..3 {
                    let r = tokio::time::timeout(
                        Duration::from_millis(30),
                        d.read_at(sf.as_raw_fd(), 0, vec![0u8; 100]),
                    )
                    .await;
                    assert!(r.is_err());
                }
                let (n, buf) = tokio::time::timeout(
                    Duration::from_secs(10),
                    d.read_at(sf.as_raw_fd(), 1000, vec![0u8; 100]),
                )
                .await
                .expect("slow read hang");
                assert_eq!(n.unwrap(), 100);
                assert_eq!(buf, pat(1000, 100));
                // drain: outstanding goes to 0 (all dropped ops ended)
                let t0 = Instant::now();
                while d.outstanding() > 0 && t0.elapsed() < Duration::from_secs(10) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(d.outstanding(), 0, "{b:?} dropped FUSE reads never ended");
                // one more hung read left in flight while the driver is dropped
                let fut = d.read_at(f.as_raw_fd(), 4096, vec![0u8; 100]);
                let _ = tokio::time::timeout(Duration::from_millis(20), fut).await;
                drop(d);
            });
            drop(rt);
        });
    }
}

/// Cached FUSE file (page lock, uninterruptible). A deadline must release the caller (TimedOut or
/// Detached), not leave wait_for hanging until the daemon answers.
#[test]
fn cached_fuse_hang_deadline_releases_caller() {
    let _s = serial();
    let mut outs = Vec::new();
    for b in BACKENDS {
        let out = guard("fuse_cached", 60, move || {
            let fs = hangfs();
            let f = std::fs::File::open(fs.path("cached.bin")).unwrap();
            let mut ring = builder(b)
                .teardown_timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let t0 = Instant::now();
            let _id = ring
                .submit(
                    Op::read_at(f.as_raw_fd(), 0, vec![0u8; 4096])
                        .deadline(Instant::now() + Duration::from_millis(300)),
                )
                .unwrap();
            let mut got = None;
            while t0.elapsed() < Duration::from_secs(5) {
                ring.wait(1, Some(Duration::from_millis(100))).unwrap();
                if let Some(c) = ring.next_completion() {
                    got = Some((c.outcome, t0.elapsed()));
                    break;
                }
            }
            let class = ring.ops().first().map(|o| (o.dispatch_class, o.state));
            fs.release_all();
            let res = match got {
                Some(g) => format!("completed {:?} after {:?}", g.0, g.1),
                None => format!("no completion 5s after a 300ms deadline (op {class:?})"),
            };
            let _ = ring.shutdown();
            res
        });
        eprintln!("{b:?}: {out}");
        outs.push(format!("{b:?}: {out}"));
    }
    assert!(outs.iter().all(|o| o.contains("completed")), "{outs:?}");
}

/// Many hung reads, more than the pool has threads (portable) -- cancel_all ends all of them,
/// and a group deadline reaches them too.
#[test]
fn many_hung_reads_group_deadline_and_cancel_all() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_many", 90, move || {
            let fs = hangfs();
            let f = std::fs::File::open(fs.path("hang.bin")).unwrap();
            let mut ring = builder(b).pool_threads(4).build().unwrap();
            let g = ring
                .group(
                    GroupId::ROOT,
                    GroupOptions::default().deadline(Instant::now() + Duration::from_millis(500)),
                )
                .unwrap();
            let mut ids = Vec::new();
            for i in 0..12 {
                ids.push(
                    ring.submit(Op::read_at(f.as_raw_fd(), 4096 + i, vec![0u8; 64]).group(g))
                        .unwrap(),
                );
            }
            let mut others = Vec::new();
            for i in 0..12 {
                others.push(
                    ring.submit(Op::read_at(f.as_raw_fd(), 4096 + i, vec![0u8; 64]))
                        .unwrap(),
                );
            }
            for id in ids {
                let c = ring.wait_for(id).unwrap();
                assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 }, "{b:?}");
            }
            assert_eq!(ring.cancel_all(), 12);
            for id in others {
                let c = ring.wait_for(id).unwrap();
                assert!(c.outcome.is_canceled(), "{b:?}: {:?}", c.outcome);
            }
            assert!(ring.is_empty());
        });
    }
}

/// The FUSE connection is aborted with reads in flight: they fail (ECONNABORTED/ENOTCONN), the ring
/// goes on.
#[test]
fn fuse_abort_with_reads_in_flight() {
    let _s = serial();
    for b in BACKENDS {
        guard("fuse_abort", 60, move || {
            let fs = hangfs();
            let f = std::fs::File::open(fs.path("hang.bin")).unwrap();
            let mut ring = ring(b);
            let ids: Vec<_> = (0..3)
                .map(|_| {
                    ring.submit(Op::read_at(f.as_raw_fd(), 4096, vec![0u8; 64]))
                        .unwrap()
                })
                .collect();
            ring.flush().unwrap();
            assert!(fs.wait_parked(3, Duration::from_secs(5)));
            let _ = fs.abort();
            for id in ids {
                let c = ring.wait_for(id).unwrap();
                assert!(
                    matches!(c.outcome, Outcome::Failed(_)),
                    "{b:?}: {:?}",
                    c.outcome
                );
            }
            let id = ring.submit(Op::nop()).unwrap();
            ring.wait_for(id).unwrap();
            drop(f);
        });
    }
}
