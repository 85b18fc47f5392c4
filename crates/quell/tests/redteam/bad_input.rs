//! I10: bad input gets a typed error, never a panic, never a lost buffer.
use crate::common::*;
use quell::{AlignedBuf, Chain, Error, GroupId, GroupOptions, Op, Outcome};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn refused(ring: &mut quell::Ring, op: Op) -> (Error, Op) {
    match ring.submit(op) {
        Ok(id) => {
            let c = ring.wait_for(id).unwrap();
            panic!("accepted, outcome {:?}", c.outcome)
        }
        Err(e) => e.into_parts(),
    }
}

/// Submit; either refused (typed) or accepted and completes Failed. Never a panic / hang.
fn refused_or_failed(ring: &mut quell::Ring, op: Op) -> String {
    match ring.submit(op) {
        Ok(id) => {
            let c = ring.wait_for(id).unwrap();
            format!("accepted:{:?}", c.outcome)
        }
        Err(e) => format!("refused:{:?}", e.error()),
    }
}

#[test]
fn bad_fds_refused_with_buffer() {
    let _s = serial();
    for b in BACKENDS {
        guard("bad_fds", 30, move || {
            let mut ring = ring(b);
            for fd in [
                -1,
                libc::AT_FDCWD,
                1 << 30,
                i32::MAX,
                i32::MIN,
                Chain::OPENED,
            ] {
                let (e, op) = refused(&mut ring, Op::read(fd, vec![7u8; 33]));
                assert!(matches!(e, Error::InvalidFd { .. }), "{b:?} fd {fd}: {e:?}");
                assert_eq!(op.into_buf().unwrap(), vec![7u8; 33]);
                let (e, op) = refused(&mut ring, Op::write_at(fd, 0, vec![1u8; 5]));
                assert!(matches!(e, Error::InvalidFd { .. }), "{b:?} fd {fd}: {e:?}");
                assert_eq!(op.into_buf().unwrap().len(), 5);
                let (e, _) = refused(&mut ring, Op::fsync(fd));
                assert!(
                    matches!(e, Error::InvalidFd { .. }),
                    "{b:?} fsync fd {fd}: {e:?}"
                );
                let (e, _) = refused(&mut ring, Op::poll(fd, quell::Interest::READABLE));
                assert!(
                    matches!(e, Error::InvalidFd { .. }),
                    "{b:?} poll fd {fd}: {e:?}"
                );
                let (e, _) = refused(&mut ring, Op::accept(fd));
                assert!(
                    matches!(e, Error::InvalidFd { .. }),
                    "{b:?} accept fd {fd}: {e:?}"
                );
                let (e, op) = refused(&mut ring, Op::readv_at(fd, 0, vec![vec![0; 3], vec![0; 4]]));
                assert!(
                    matches!(e, Error::InvalidFd { .. }),
                    "{b:?} readv fd {fd}: {e:?}"
                );
                assert_eq!(op.into_bufs().unwrap().len(), 2);
                let (e, op) = refused(
                    &mut ring,
                    Op::read_aligned(fd, 0, AlignedBuf::new(4096, 4096).unwrap()),
                );
                assert!(
                    matches!(e, Error::InvalidFd { .. }),
                    "{b:?} read_aligned fd {fd}: {e:?}"
                );
                assert_eq!(op.into_aligned().unwrap().len(), 4096);
            }
            assert!(ring.is_empty());
            assert_eq!(ring.stats().submitted, 0);
        });
    }
}

#[test]
fn close_of_bad_fds() {
    let _s = serial();
    // close(-1), close(AT_FDCWD), close(1<<30): typed refusal or Failed(EBADF); never closes something else.
    for b in BACKENDS {
        guard("close_bad", 30, move || {
            let mut ring = ring(b);
            let before = fd_count();
            for fd in [-1, libc::AT_FDCWD, 1 << 30, Chain::OPENED] {
                let s = refused_or_failed(&mut ring, Op::close(fd));
                assert!(
                    s.contains("InvalidFd") || s.contains("code: 9"),
                    "{b:?} close({fd}) -> {s}"
                );
            }
            assert_eq!(fd_count(), before);
        });
    }
}

#[test]
fn huge_lengths_refused() {
    let _s = serial();
    for b in BACKENDS {
        guard("huge_len", 60, move || {
            let mut ring = ring(b);
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            // > i32::MAX: typed TooLong, the (lazily allocated) buffer handed back.
            let big = vec![0u8; (i32::MAX as usize) + 1];
            let (e, op) = refused(&mut ring, Op::read(f.as_raw_fd(), big));
            assert!(
                matches!(e, Error::TooLong { .. }),
                "{b:?} stream read: {e:?}"
            );
            let big = op.into_buf().unwrap();
            assert_eq!(big.len(), (i32::MAX as usize) + 1);
            // positioned reads are split into parts (part_size): a 2 GiB positioned read is fine? at least no panic
            let s = refused_or_failed(&mut ring, Op::read_at(f.as_raw_fd(), 0, big));
            eprintln!("{b:?} read_at 2GiB -> {s}");
            // splice len u32::MAX
            let (rx, tx) = pipe();
            let s = refused_or_failed(
                &mut ring,
                Op::splice(f.as_raw_fd(), Some(0), tx.as_raw_fd(), None, u32::MAX),
            );
            eprintln!("{b:?} splice u32::MAX -> {s}");
            drop(rx);
            // fallocate len u64::MAX
            let p = tmpfile("/tmp", "falloc");
            let w = std::fs::File::create(&p).unwrap();
            let s = refused_or_failed(&mut ring, Op::fallocate(w.as_raw_fd(), 0, 0, u64::MAX));
            assert!(!s.contains("Done"), "{b:?} fallocate u64::MAX -> {s}");
            let s = refused_or_failed(&mut ring, Op::fallocate(w.as_raw_fd(), 0, u64::MAX, 10));
            assert!(!s.contains("Done"), "{b:?} fallocate off u64::MAX -> {s}");
            std::fs::remove_file(&p).unwrap();
        });
    }
}

#[test]
fn huge_offsets_typed() {
    let _s = serial();
    for b in BACKENDS {
        guard("huge_off", 30, move || {
            let mut ring = ring(b);
            let p = tmpfile("/tmp", "off");
            let w = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .unwrap();
            for off in [i64::MAX as u64, (i64::MAX as u64) + 1, u64::MAX - 3] {
                let s = refused_or_failed(&mut ring, Op::read_at(w.as_raw_fd(), off, vec![0u8; 8]));
                assert!(!s.contains("Done(8)"), "{b:?} read_at {off} -> {s}");
                let s =
                    refused_or_failed(&mut ring, Op::write_at(w.as_raw_fd(), off, vec![1u8; 8]));
                assert!(!s.contains("Done"), "{b:?} write_at {off} -> {s}");
                let s = refused_or_failed(
                    &mut ring,
                    Op::readv_at(w.as_raw_fd(), off, vec![vec![0; 4]]),
                );
                assert!(!s.contains("Done(4)"), "{b:?} readv_at {off} -> {s}");
            }
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
            std::fs::remove_file(&p).unwrap();
        });
    }
}

#[test]
fn offset_plus_len_overflow_with_parts() {
    let _s = serial();
    // part_size splitting: offset near i64::MAX with a multi-part buffer must not overflow/panic.
    for b in BACKENDS {
        guard("off_parts", 30, move || {
            let mut ring = builder(b).part_size(4096).build().unwrap();
            let p = tmpfile("/tmp", "offp");
            let w = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .unwrap();
            let off = i64::MAX as u64 - 5000;
            let s = refused_or_failed(
                &mut ring,
                Op::write_at(w.as_raw_fd(), off, vec![1u8; 20000]),
            );
            eprintln!("{b:?} write_at near max with parts -> {s}");
            let s = refused_or_failed(
                &mut ring,
                Op::read_at(w.as_raw_fd(), u64::MAX - 100, vec![0u8; 20000]),
            );
            eprintln!("{b:?} read_at u64::MAX-100 with parts -> {s}");
            std::fs::remove_file(&p).unwrap();
        });
    }
}

#[test]
fn bad_paths_typed() {
    let _s = serial();
    for b in BACKENDS {
        guard("bad_paths", 30, move || {
            let mut ring = ring(b);
            use std::os::unix::ffi::OsStrExt;
            let nul = std::ffi::OsStr::from_bytes(b"/tmp/a\0b");
            let (e, _) = refused(
                &mut ring,
                Op::openat(libc::AT_FDCWD, nul, libc::O_RDONLY, 0),
            );
            assert!(
                matches!(e, Error::InvalidArgument(_)),
                "{b:?} nul path: {e:?}"
            );
            let (e, _) = refused(&mut ring, Op::unlinkat(libc::AT_FDCWD, nul, 0));
            assert!(
                matches!(e, Error::InvalidArgument(_)),
                "{b:?} nul unlink: {e:?}"
            );
            let (e, _) = refused(
                &mut ring,
                Op::renameat(libc::AT_FDCWD, "/tmp/x", libc::AT_FDCWD, nul, 0),
            );
            assert!(
                matches!(e, Error::InvalidArgument(_)),
                "{b:?} nul rename: {e:?}"
            );
            // very long path: ENAMETOOLONG as a failure or a typed refusal
            let long = "/tmp/".to_string() + &"a".repeat(70_000);
            let s = refused_or_failed(
                &mut ring,
                Op::openat(libc::AT_FDCWD, &long, libc::O_RDONLY, 0),
            );
            assert!(
                s.contains("code: 36") || s.contains("InvalidArgument"),
                "{b:?} long path -> {s}"
            );
            // empty path
            let s = refused_or_failed(&mut ring, Op::openat(libc::AT_FDCWD, "", libc::O_RDONLY, 0));
            assert!(
                s.contains("code: 2") || s.contains("InvalidArgument"),
                "{b:?} empty path -> {s}"
            );
            // path op with a bad dirfd
            for dfd in [-1, 1 << 30] {
                let s =
                    refused_or_failed(&mut ring, Op::openat(dfd, "relative", libc::O_RDONLY, 0));
                assert!(
                    s.contains("code: 9") || s.contains("InvalidFd"),
                    "{b:?} openat dirfd {dfd} -> {s}"
                );
                let s = refused_or_failed(
                    &mut ring,
                    Op::statx(dfd, "", libc::AT_EMPTY_PATH, libc::STATX_SIZE),
                );
                assert!(
                    s.contains("code: 9") || s.contains("InvalidFd"),
                    "{b:?} statx dirfd {dfd} -> {s}"
                );
            }
            // AT_FDCWD for statx with AT_EMPTY_PATH: stat of cwd, fine
            let s = refused_or_failed(
                &mut ring,
                Op::statx(libc::AT_FDCWD, "", libc::AT_EMPTY_PATH, libc::STATX_SIZE),
            );
            assert!(s.contains("Done"), "{b:?} statx cwd -> {s}");
        });
    }
}

#[test]
fn vectored_edge_cases() {
    let _s = serial();
    for b in BACKENDS {
        guard("iov", 30, move || {
            let mut ring = ring(b);
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let (e, op) = refused(&mut ring, Op::readv_at(f.as_raw_fd(), 0, vec![]));
            assert!(
                matches!(e, Error::InvalidArgument(_)),
                "{b:?} empty iov: {e:?}"
            );
            assert_eq!(op.into_bufs().unwrap().len(), 0);
            // more than IOV_MAX buffers
            let many: Vec<Vec<u8>> = (0..2000).map(|_| vec![0u8; 1]).collect();
            let s = refused_or_failed(&mut ring, Op::readv_at(f.as_raw_fd(), 0, many));
            assert!(!s.contains("Done"), "{b:?} 2000 iovecs -> {s}");
            // iov entries of len 0 mixed
            let id = ring
                .submit(Op::readv_at(
                    f.as_raw_fd(),
                    0,
                    vec![vec![], vec![0u8; 4], vec![]],
                ))
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Done(4), "{b:?}");
            assert_eq!(c.bufs().unwrap()[1], b"\x7fELF");
            // total > i32::MAX across iovecs
            let big: Vec<Vec<u8>> = vec![vec![0u8; 1 << 30], vec![0u8; 1 << 30], vec![0u8; 16]];
            let s = refused_or_failed(&mut ring, Op::readv_at(f.as_raw_fd(), 0, big));
            eprintln!("{b:?} readv > i32::MAX -> {s}");
        });
    }
}

#[test]
fn zero_length_transfers() {
    let _s = serial();
    for b in BACKENDS {
        guard("zero_len", 30, move || {
            let mut ring = ring(b);
            let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
            // zero-length stream read: Done(0) or typed; must not hang
            let s = refused_or_failed(&mut ring, Op::read(x.as_raw_fd(), vec![]));
            eprintln!("{b:?} zero read -> {s}");
            let s = refused_or_failed(&mut ring, Op::read(x.as_raw_fd(), vec![]).exact());
            eprintln!("{b:?} zero read exact -> {s}");
            let s = refused_or_failed(&mut ring, Op::write(x.as_raw_fd(), vec![]).exact());
            eprintln!("{b:?} zero write exact -> {s}");
            let s = refused_or_failed(
                &mut ring,
                Op::splice(x.as_raw_fd(), None, x.as_raw_fd(), None, 0),
            );
            eprintln!("{b:?} splice 0 -> {s}");
        });
    }
}

#[test]
fn builder_bounds_typed() {
    let _s = serial();
    for b in BACKENDS {
        for (name, r) in [
            ("capacity 0", builder(b).capacity(0).build()),
            ("capacity 65537", builder(b).capacity(65537).build()),
            (
                "capacity usize::MAX",
                builder(b).capacity(usize::MAX).build(),
            ),
            ("max_in_flight 0", builder(b).max_in_flight(0).build()),
            ("sq_entries 0", builder(b).sq_entries(0).build()),
            (
                "sq_entries u32::MAX",
                builder(b).sq_entries(u32::MAX).build(),
            ),
            ("pool_threads 0", builder(b).pool_threads(0).build()),
            ("part_size 0", builder(b).part_size(0).build()),
            ("part_size 100", builder(b).part_size(100).build()),
            (
                "direct_descriptors huge",
                builder(b).direct_descriptors(u32::MAX).build(),
            ),
            (
                "teardown 0",
                builder(b).teardown_timeout(Duration::ZERO).build(),
            ),
        ] {
            match r {
                Ok(mut ring) => {
                    // if accepted, it must work
                    let id = ring.submit(Op::nop());
                    match id {
                        Ok(id) => {
                            let c = guard_ring_wait(ring, id);
                            eprintln!("{b:?} {name}: accepted, nop -> {c}");
                        }
                        Err(e) => eprintln!("{b:?} {name}: accepted, nop refused {:?}", e.error()),
                    }
                }
                Err(e) => eprintln!("{b:?} {name}: refused {e:?}"),
            }
        }
    }
}

fn guard_ring_wait(ring: quell::Ring, id: quell::OpId) -> String {
    guard("nop", 10, move || {
        let mut ring = ring;
        format!("{:?}", ring.wait_for(id).map(|c| c.outcome))
    })
}

#[test]
fn max_in_flight_zero_must_not_hang() {
    let _s = serial();
    for b in BACKENDS {
        if let Ok(mut ring) = builder(b).max_in_flight(0).build() {
            let id = ring.submit(Op::nop()).unwrap();
            let s = guard("mif0", 10, move || {
                format!("{:?}", ring.wait_for(id).map(|c| c.outcome))
            });
            assert!(s.contains("Done"), "{b:?}: {s}");
        }
    }
}

#[test]
fn part_size_tiny_must_not_hang() {
    let _s = serial();
    for b in BACKENDS {
        if let Ok(mut ring) = builder(b).part_size(100).build() {
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let id = ring
                .submit(Op::read_at(f.as_raw_fd(), 0, vec![0u8; 10000]))
                .unwrap();
            let s = guard("ps", 10, move || {
                let c = ring.wait_for(id).unwrap();
                drop(f);
                format!("{:?}", c.outcome)
            });
            assert_eq!(s, "Done(10000)", "{b:?}");
        }
    }
}

#[test]
fn foreign_and_stale_ids() {
    let _s = serial();
    for b in BACKENDS {
        guard("ids", 30, move || {
            let mut r1 = ring(b);
            let mut r2 = ring(b);
            let id = r1.submit(Op::timeout(Duration::from_secs(60))).unwrap();
            assert!(matches!(r2.cancel(id), Err(Error::ForeignId)), "{b:?}");
            assert!(
                matches!(r2.wait_for(id), Err(Error::ForeignId)),
                "{b:?} wait_for foreign"
            );
            assert!(
                matches!(r2.handle().cancel(id), Err(Error::ForeignId)),
                "{b:?}"
            );
            r1.cancel(id).unwrap();
            r1.wait_for(id).unwrap();
            // stale id: slot reused by a new op
            let id2 = r1.submit(Op::timeout(Duration::from_secs(60))).unwrap();
            assert_eq!(
                r1.cancel(id).unwrap(),
                quell::CancelStatus::NotFound,
                "{b:?}"
            );
            assert!(matches!(r1.wait_for(id), Err(Error::UnknownOp)), "{b:?}");
            // the new op was not touched by the stale cancel
            assert_eq!(r1.ops().len(), 1);
            assert_eq!(r1.ops()[0].state, quell::OpState::InFlight);
            r1.cancel(id2).unwrap();
            r1.wait_for(id2).unwrap();
            // group of another ring
            let g = r1.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let s = match r2.submit(Op::nop().group(g)) {
                Ok(id) => format!("accepted {:?}", r2.wait_for(id).unwrap().outcome),
                Err(e) => format!("{:?}", e.error()),
            };
            assert!(
                s.contains("NoSuchGroup") || s.contains("Foreign"),
                "{b:?} foreign group: {s}"
            );
            let s = format!("{:?}", r2.cancel_group(g));
            assert!(s.contains("Err"), "{b:?} cancel foreign group: {s}");
        });
    }
}

#[test]
fn root_group_abuse() {
    let _s = serial();
    for b in BACKENDS {
        guard("root", 30, move || {
            let mut ring = ring(b);
            assert!(
                ring.remove_group(GroupId::ROOT).is_err(),
                "{b:?} removing root"
            );
            // shielded without deadline refused
            assert!(ring
                .group(GroupId::ROOT, GroupOptions::default().shielded(true))
                .is_err());
            // cancel root: sticky? then everything canceled; ring should still be droppable
            let n = ring.cancel_group(GroupId::ROOT).unwrap();
            assert_eq!(n, 0);
            let id = ring.submit(Op::nop()).unwrap();
            let c = ring.wait_for(id).unwrap();
            eprintln!("{b:?} nop after cancel_group(ROOT): {:?}", c.outcome);
            // deep nesting
            let mut g = GroupId::ROOT;
            let mut depth = 0;
            for _ in 0..200 {
                match ring.group(g, GroupOptions::default().name("d")) {
                    Ok(ng) => {
                        g = ng;
                        depth += 1
                    }
                    Err(e) => {
                        eprintln!("{b:?} depth {depth} refused {e:?}");
                        break;
                    }
                }
            }
            let _ = ring
                .submit(Op::nop().group(g))
                .map(|id| ring.wait_for(id).unwrap());
            // names with odd characters
            let mut ring = crate::common::ring(b);
            let odd = ring
                .group(GroupId::ROOT, GroupOptions::default().name("a/b\0c\n\"}"))
                .unwrap();
            let id = ring
                .submit(Op::timeout(Duration::from_secs(30)).group(odd))
                .unwrap();
            let mut out = Vec::new();
            ring.dump_ops(quell::DumpFormat::Json, &mut out).unwrap();
            let ck = ring.quiesce(quell::QuiescePolicy::default()).unwrap();
            let json = ck.to_json().unwrap();
            let back = quell::Checkpoint::from_json(&json).unwrap();
            assert_eq!(back, ck);
            let r = ring.resubmit(&ck, quell::Buffers::new());
            assert_eq!(r.len(), 1, "{b:?}");
            assert!(
                r[0].is_ok(),
                "{b:?} resubmit odd group name: {:?}",
                r[0].as_ref().err().map(|e| format!("{:?}", e.error))
            );
            ring.resume();
            ring.cancel_all();
            let _ = id;
            ring.shutdown();
        });
    }
}

#[test]
fn remove_group_with_children_and_reuse() {
    let _s = serial();
    for b in BACKENDS {
        guard("rmgroup", 30, move || {
            let mut ring = ring(b);
            let p = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let c = ring.group(p, GroupOptions::default()).unwrap();
            assert!(
                ring.remove_group(p).is_err(),
                "{b:?} parent with child removed"
            );
            ring.remove_group(c).unwrap();
            ring.remove_group(p).unwrap();
            assert!(
                matches!(ring.remove_group(p), Err(Error::NoSuchGroup)),
                "{b:?}"
            );
            // creating many groups reuses slots: the stale id must stay dead
            for _ in 0..100 {
                let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
                assert_ne!(g, p);
                ring.remove_group(g).unwrap();
            }
            assert!(ring.cancel_group(p).is_err());
            assert!(ring.drain(p).is_err());
            assert!(ring.set_group_deadline(p, Instant::now()).is_err());
            assert!(ring.group_stats(p).is_err());
            assert!(ring.group(p, GroupOptions::default()).is_err());
            // handle requests on a dead group: ignored, no panic
            ring.handle().cancel_group(p).unwrap_or(());
            ring.handle().drain(p).unwrap_or(());
            ring.poll().unwrap();
        });
    }
}

#[test]
fn extreme_deadlines_and_timeouts() {
    let _s = serial();
    for b in BACKENDS {
        guard("deadlines", 30, move || {
            let mut ring = ring(b);
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            // Deadline already in the past
            let past = Instant::now() - Duration::from_secs(1);
            let id = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).deadline(past))
                .unwrap();
            assert_eq!(
                ring.wait_for(id).unwrap().outcome,
                Outcome::TimedOut { transferred: 0 },
                "{b:?}"
            );
            // far future deadline (checked_add may fail on huge durations; use 100 years)
            let far = Instant::now() + Duration::from_secs(100 * 365 * 86400);
            let id = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).deadline(far))
                .unwrap();
            ring.poll().unwrap();
            ring.cancel(id).unwrap();
            assert!(ring.wait_for(id).unwrap().outcome.is_canceled());
            // timeout of Duration::MAX
            match ring.submit(Op::timeout(Duration::MAX)) {
                Ok(id) => {
                    ring.poll().unwrap();
                    ring.cancel(id).unwrap();
                    let c = ring.wait_for(id).unwrap();
                    assert!(
                        c.outcome.is_canceled(),
                        "{b:?} Duration::MAX timeout: {:?}",
                        c.outcome
                    );
                }
                Err(e) => eprintln!("{b:?} Duration::MAX refused {:?}", e.error()),
            }
            // timeout of zero
            let id = ring.submit(Op::timeout(Duration::ZERO)).unwrap();
            assert!(ring.wait_for(id).unwrap().outcome.is_done(), "{b:?}");
            // wait with a huge timeout returns when op is done
            let id = ring.submit(Op::nop()).unwrap();
            ring.wait(1, Some(Duration::MAX)).unwrap();
            ring.wait_for(id).unwrap();
            // group deadline in the past
            let g = ring
                .group(GroupId::ROOT, GroupOptions::default().deadline(past))
                .unwrap();
            let id = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 8]).group(g))
                .unwrap();
            assert!(ring.wait_for(id).unwrap().outcome.is_canceled(), "{b:?}");
        });
    }
}

#[test]
fn aligned_buf_bad_args() {
    let _s = serial();
    assert!(AlignedBuf::new(4096, 3).is_none(), "non power of two align");
    assert!(AlignedBuf::new(4096, 0).is_none(), "zero align");
    let _ = AlignedBuf::new(0, 4096);
    assert!(
        AlignedBuf::new(usize::MAX, 4096).is_none(),
        "usize::MAX len"
    );
}

#[test]
fn child_aligned_buf_huge_align() {
    let _s = serial();
    if !is_child() {
        return;
    }
    let r = AlignedBuf::new(4096, 1 << 40);
    println!("RESULT {}", r.is_none());
}

/// Doc: "Returns None when align is not a power of two or the size overflows." A 1 TiB alignment
/// (a power of two) cannot be allocated: expect None (or a graceful refusal), not a process abort.
#[test]
fn aligned_buf_huge_align_no_abort() {
    let _s = serial();
    if is_child() {
        return;
    }
    let (code, out) = in_child("bad_input::child_aligned_buf_huge_align", 30);
    assert_eq!(
        code,
        Some(0),
        "AlignedBuf::new(4096, 1<<40) killed the process: {}",
        out.lines().take(3).collect::<Vec<_>>().join(" | ")
    );
}

#[test]
fn odirect_misaligned_typed() {
    let _s = serial();
    use std::os::unix::fs::OpenOptionsExt;
    for b in BACKENDS {
        guard("odirect", 30, move || {
            let mut ring = ring(b);
            let p = tmpfile("/tmp", "direct");
            std::fs::write(&p, vec![3u8; 16384]).unwrap();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&p)
                .unwrap();
            // misaligned buffer address via Vec: typed Misaligned, buffer back
            let (e, op) = refused(&mut ring, Op::read_at(f.as_raw_fd(), 0, vec![0u8; 4097]));
            assert!(
                matches!(e, Error::Misaligned { .. }),
                "{b:?} misaligned len: {e:?}"
            );
            assert_eq!(op.into_buf().unwrap().len(), 4097);
            let (e, _) = refused(
                &mut ring,
                Op::read_aligned(f.as_raw_fd(), 100, AlignedBuf::new(4096, 4096).unwrap()),
            );
            assert!(
                matches!(e, Error::Misaligned { .. }),
                "{b:?} misaligned offset: {e:?}"
            );
            let (e, _) = refused(
                &mut ring,
                Op::write_aligned(f.as_raw_fd(), 0, AlignedBuf::new(100, 4096).unwrap()),
            );
            assert!(
                matches!(e, Error::Misaligned { .. }),
                "{b:?} misaligned wlen: {e:?}"
            );
            // a buffer whose address is not 4096-aligned (retry until the allocator gives one)
            let mut keep = Vec::new();
            let buf = loop {
                let x = AlignedBuf::new(4096, 8).unwrap();
                if x.as_ptr() as usize % 512 != 0 {
                    break x;
                }
                keep.push(x);
            };
            let (e, _) = refused(&mut ring, Op::read_aligned(f.as_raw_fd(), 0, buf));
            assert!(
                matches!(e, Error::Misaligned { .. }),
                "{b:?} misaligned addr: {e:?}"
            );
            // aligned read works
            let id = ring
                .submit(Op::read_aligned(
                    f.as_raw_fd(),
                    4096,
                    AlignedBuf::new(4096, 4096).unwrap(),
                ))
                .unwrap();
            assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(4096));
            std::fs::remove_file(&p).unwrap();
        });
    }
}

#[test]
fn closed_ring_and_full_table() {
    let _s = serial();
    for b in BACKENDS {
        guard("closed", 30, move || {
            let mut ring = builder(b).capacity(3).build().unwrap();
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            for _ in 0..3 {
                ring.submit(Op::read(r.as_raw_fd(), vec![0; 4])).unwrap();
            }
            let (e, op) = refused(&mut ring, Op::read(r.as_raw_fd(), vec![9; 4]));
            assert!(matches!(e, Error::TableFull { capacity: 3 }), "{b:?}");
            assert_eq!(op.into_buf().unwrap(), vec![9; 4]);
            // chain refused when full: handed back whole
            let ch = Chain::new()
                .then(Op::read(r.as_raw_fd(), vec![1; 5]))
                .then(Op::nop());
            let err = ring.submit_chain(ch).unwrap_err();
            eprintln!("{b:?} chain on full table: {err:?}");
            let left = ring.shutdown();
            assert_eq!(left.len(), 3);
            let (e, op) = refused(&mut ring, Op::read(r.as_raw_fd(), vec![9; 4]));
            assert!(matches!(e, Error::Closed), "{b:?}: {e:?}");
            assert_eq!(op.into_buf().unwrap(), vec![9; 4]);
            // A closed ring: making a group or waiting must answer (either way), not panic.
            let _ = ring.group(GroupId::ROOT, GroupOptions::default());
            let _ = ring.wait(1, Some(Duration::from_millis(10)));
            // shutdown twice
            let left = ring.shutdown();
            assert!(left.is_empty());
            assert!(ring.handle().is_closed());
        });
    }
}

#[test]
fn chain_bad_steps() {
    let _s = serial();
    for b in BACKENDS {
        guard("chain_bad", 30, move || {
            let mut ring = ring(b);
            // OPENED before any open step
            let r = ring.submit_chain(Chain::new().then(Op::read_at(Chain::OPENED, 0, vec![0; 4])));
            match r {
                Ok(id) => {
                    let c = ring.wait_for(id).unwrap();
                    assert!(
                        !c.outcome.is_done(),
                        "{b:?} OPENED w/o open: {:?}",
                        c.outcome
                    );
                }
                Err(e) => {
                    let ops = e.into_chain().into_ops();
                    assert_eq!(ops.len(), 1);
                }
            }
            // chain whose first step has a bad fd: refused whole
            let err = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::read(-1, vec![0; 4]))
                        .then(Op::write(-1, vec![1; 3])),
                )
                .unwrap_err();
            let ops = err.into_chain().into_ops();
            assert_eq!(ops.len(), 2, "{b:?}");
            // later step invalid: fails chain with errno, first step ran
            let p = tmpfile("/tmp", "chainbad");
            std::fs::write(&p, b"hello").unwrap();
            let before = fd_count();
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &p, libc::O_RDONLY, 0))
                        .then(Op::read_at(Chain::OPENED, 0, vec![0u8; 5]))
                        .then(Op::write(1 << 30, vec![1; 3]))
                        .then(Op::close(Chain::OPENED)),
                )
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert!(
                matches!(c.outcome, Outcome::Failed(_)),
                "{b:?} {:?}",
                c.outcome
            );
            assert!(fd_count() <= before, "{b:?} chain leaked its opened fd");
            std::fs::remove_file(&p).unwrap();
            // A huge chain
            let mut ch = Chain::new();
            for _ in 0..5000 {
                ch = ch.then(Op::nop());
            }
            let id = ring.submit_chain(ch).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.steps().unwrap().len(), 5000);
            assert!(c.outcome.is_done());
            // nested: chain containing a blocking op
            let id = ring
                .submit_chain(Chain::new().then(Op::blocking(|| Ok(3))).then(Op::nop()))
                .map(|id| ring.wait_for(id).unwrap().outcome);
            eprintln!("{b:?} chain with blocking: {id:?}");
        });
    }
}

#[test]
fn blocking_closure_that_panics() {
    let _s = serial();
    for b in BACKENDS {
        guard("blocking_panic", 30, move || {
            let mut ring = builder(b).pool_threads(2).build().unwrap();
            let id = ring
                .submit(Op::blocking(|| panic!("user closure panics")))
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            eprintln!("{b:?} panicking closure -> {:?}", c.outcome);
            assert!(!c.outcome.is_done());
            // pool still usable afterwards (workers not lost)
            for i in 0..4 {
                ring.submit(Op::blocking(move || Ok(i)).user_data(i as u64))
                    .unwrap();
            }
            ring.wait(4, None).unwrap();
            let n = ring.completions().filter(|c| c.outcome.is_done()).count();
            assert_eq!(n, 4, "{b:?} pool lost workers after panic");
            // a closure returning Ok(usize::MAX)
            let id = ring.submit(Op::blocking(|| Ok(usize::MAX))).unwrap();
            eprintln!(
                "{b:?} Ok(usize::MAX) -> {:?}",
                ring.wait_for(id).unwrap().outcome
            );
        });
    }
}

#[test]
fn errno_failures_are_failed_not_panics() {
    let _s = serial();
    for b in BACKENDS {
        guard("errno", 30, move || {
            let mut ring = ring(b);
            // read on a write-only fd
            let (rx, tx) = pipe();
            let id = ring
                .submit(Op::read(tx.as_raw_fd(), vec![0; 4]))
                .map(|id| ring.wait_for(id).unwrap().outcome);
            let s = format!("{id:?}");
            assert!(
                s.contains("code: 9") || s.contains("InvalidFd") || s.contains("Err"),
                "{b:?} read on write end: {s}"
            );
            // recv on a pipe (not a socket)
            let s = format!(
                "{:?}",
                ring.submit(Op::recv(rx.as_raw_fd(), vec![0; 4], 0))
                    .map(|id| ring.wait_for(id).unwrap().outcome)
            );
            assert!(
                s.contains("code: 88") || s.contains("Err"),
                "{b:?} recv on pipe: {s}"
            );
            // accept on a non-listening socket
            let (a, _bb) = std::os::unix::net::UnixStream::pair().unwrap();
            let s = format!(
                "{:?}",
                ring.submit(Op::accept(a.as_raw_fd()))
                    .map(|id| ring.wait_for(id).unwrap().outcome)
            );
            assert!(
                s.contains("code: 22") || s.contains("code: 95") || s.contains("Err"),
                "{b:?} accept on stream: {s}"
            );
            // connect on a pipe
            let s = format!(
                "{:?}",
                ring.submit(Op::connect(rx.as_raw_fd(), "127.0.0.1:1".parse().unwrap()))
                    .map(|id| ring.wait_for(id).unwrap().outcome)
            );
            assert!(
                s.contains("code: 88") || s.contains("Err"),
                "{b:?} connect on pipe: {s}"
            );
            // fsync on a pipe
            let s = format!(
                "{:?}",
                ring.submit(Op::fsync(rx.as_raw_fd()))
                    .map(|id| ring.wait_for(id).unwrap().outcome)
            );
            assert!(
                s.contains("code: 22") || s.contains("Err") || s.contains("Done"),
                "{b:?} fsync pipe: {s}"
            );
            // read_at on a directory: EISDIR
            let d = std::fs::File::open("/tmp").unwrap();
            let s = format!(
                "{:?}",
                ring.submit(Op::read_at(d.as_raw_fd(), 0, vec![0; 4]))
                    .map(|id| ring.wait_for(id).unwrap().outcome)
            );
            assert!(
                s.contains("code: 21") || s.contains("Err"),
                "{b:?} read dir: {s}"
            );
            // splice without pipes
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let s = format!(
                "{:?}",
                ring.submit(Op::splice(f.as_raw_fd(), Some(0), d.as_raw_fd(), None, 4))
                    .map(|id| ring.wait_for(id).unwrap().outcome)
            );
            assert!(!s.contains("Done(4)"), "{b:?} splice no pipe: {s}");
        });
    }
}

/// Error::InvalidArgument doc: "An argument is malformed (a path with an interior NUL byte, ...)".
/// openat/unlinkat/renameat refuse such a path; statx accepts it and completes Failed(ENOENT).
#[test]
fn statx_nul_path_typed() {
    let _s = serial();
    use std::os::unix::ffi::OsStrExt;
    for b in BACKENDS {
        let mut ring = ring(b);
        let nul = std::ffi::OsStr::from_bytes(b"/proc/self/exe\0x");
        match ring.submit(Op::statx(libc::AT_FDCWD, nul, 0, libc::STATX_SIZE)) {
            Err(e) => assert!(
                matches!(e.error(), Error::InvalidArgument(_)),
                "{b:?}: {:?}",
                e.error()
            ),
            Ok(id) => panic!(
                "{b:?}: statx with an interior NUL accepted, completed {:?}",
                ring.wait_for(id).unwrap().outcome
            ),
        }
    }
}

/// Op::read_at/write_at "at `offset`": offsets beyond i64::MAX are refused ("offset beyond i64::MAX
/// (the kernel refuses it)") -- except u64::MAX, which is accepted and silently means "the file's
/// current position" (the kernel's -1), so a positioned write lands in the middle of the file and
/// moves the file position.
#[test]
fn positioned_offset_u64_max_not_current_position() {
    let _s = serial();
    use std::io::{Seek, SeekFrom};
    let mut bad = Vec::new();
    for b in BACKENDS {
        let mut ring = ring(b);
        let p = tmpfile("/tmp", "offmax");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.seek(SeekFrom::Start(3)).unwrap();
        let check = |what: &str,
                     r: Result<quell::Outcome, quell::SubmitError>,
                     bad: &mut Vec<String>| match r {
            Err(e) => assert!(
                matches!(e.error(), Error::InvalidArgument(_)),
                "{b:?} {what}: {:?}",
                e.error()
            ),
            Ok(o) => bad.push(format!("{b:?} {what}(offset u64::MAX) accepted -> {o:?}")),
        };
        let r = ring
            .submit(Op::write_at(f.as_raw_fd(), u64::MAX, b"XY".to_vec()))
            .map(|id| ring.wait_for(id).unwrap().outcome);
        check("write_at", r, &mut bad);
        let r = ring
            .submit(Op::read_at(f.as_raw_fd(), u64::MAX, vec![0u8; 3]))
            .map(|id| ring.wait_for(id).unwrap().outcome);
        check("read_at", r, &mut bad);
        let r = ring
            .submit(Op::writev_at(f.as_raw_fd(), u64::MAX, vec![b"Q".to_vec()]))
            .map(|id| ring.wait_for(id).unwrap().outcome);
        check("writev_at", r, &mut bad);
        let r = ring
            .submit(Op::readv_at(f.as_raw_fd(), u64::MAX, vec![vec![0u8; 2]]))
            .map(|id| ring.wait_for(id).unwrap().outcome);
        check("readv_at", r, &mut bad);
        let content = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).to_string();
        if content != "0123456789" {
            bad.push(format!(
                "{b:?} file now {content:?}, position {}",
                f.stream_position().unwrap()
            ));
        }
        std::fs::remove_file(&p).unwrap();
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Backends must agree on what a user observes. A positioned read/write on a pipe: the portable
/// backend answers ESPIPE (as pread/pwrite do); io_uring ignores the offset and transfers.
#[test]
fn positioned_io_on_pipe_backends_agree() {
    let _s = serial();
    let mut seen = Vec::new();
    for b in BACKENDS {
        let mut ring = ring(b);
        let (rx, tx) = pipe();
        // Both refuse at submission with a typed error (pread(2) would say ESPIPE).
        let show = |r: Result<quell::Outcome, quell::SubmitError>| match r {
            Ok(o) => format!("{o:?}"),
            Err(e) => format!("refused: {}", e.error()),
        };
        let w = show(
            ring.submit(Op::write_at(tx.as_raw_fd(), 77, b"abc".to_vec()))
                .map(|id| ring.wait_for(id).unwrap().outcome),
        );
        assert!(w.starts_with("refused"), "{b:?}: {w}");
        let on_wire = drain_now(rx.as_raw_fd());
        write_fd(tx.as_raw_fd(), b"xyz");
        let r = show(
            ring.submit(Op::read_at(rx.as_raw_fd(), 5, vec![0u8; 3]))
                .map(|id| ring.wait_for(id).unwrap().outcome),
        );
        let left = drain_now(rx.as_raw_fd());
        seen.push(format!(
            "write_at(pipe,77)={w:?} wire={on_wire:?} read_at(pipe,5)={r:?} left={left:?}"
        ));
    }
    assert_eq!(seen[0], seen[1], "Uring vs Portable disagree");
}
