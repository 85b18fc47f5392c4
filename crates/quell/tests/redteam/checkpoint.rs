//! I9 quiesce -> checkpoint -> resubmit, also with corrupt and hostile checkpoints.
use crate::common::*;
use quell::{Buffers, Checkpoint, Error, Op, OpKind, Outcome, QuiescePolicy};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

/// write_all of 4 MiB over a socket with a slow reader, quiesced mid-way, resumed on a fresh
/// ring (same and other backend): the peer receives exactly the 4 MiB, once, in order.
#[test]
fn exact_write_continues_across_checkpoint_no_dup() {
    let _s = serial();
    for from in BACKENDS {
        for to in BACKENDS {
            guard("ckpt_write", 60, move || {
                let (a, peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let data = pattern(4 << 20);
                let reader = std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let mut buf = vec![0u8; 8192];
                    loop {
                        let n = std::io::Read::read(&mut &peer, &mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        all.extend_from_slice(&buf[..n]);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    all
                });
                let mut r1 = ring(from);
                let id = r1
                    .submit(Op::write(a.as_raw_fd(), data.clone()).exact().user_data(9))
                    .unwrap();
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_millis(60) {
                    r1.wait(1, Some(Duration::from_millis(10))).unwrap();
                }
                let ck = r1.quiesce(QuiescePolicy::default()).unwrap();
                assert_eq!(ck.ops.len(), 1, "{from:?}: {:?}", ck.unfinished);
                let c = r1.wait_for(id).unwrap();
                let moved = match c.outcome {
                    Outcome::Canceled { transferred } => transferred,
                    o => panic!("{from:?} {o:?}"),
                };
                assert_eq!(ck.ops[0].transferred as usize, moved);
                assert!(moved > 0 && moved < data.len(), "{from:?} moved {moved}");
                let bytes = ck.to_bytes().unwrap();
                drop(r1);
                let ck = Checkpoint::from_bytes(&bytes).unwrap();
                let mut r2 = ring(to);
                let ids = r2.resubmit(&ck, Buffers::new());
                let nid = *ids[0].as_ref().unwrap();
                let c = r2.wait_for(nid).unwrap();
                assert_eq!(c.outcome, Outcome::Done(4 << 20), "{from:?}->{to:?} total");
                assert_eq!(c.user_data, 9);
                drop(a);
                let wire = reader.join().unwrap();
                assert_eq!(wire.len(), data.len(), "{from:?}->{to:?} wire length");
                assert!(wire == data, "{from:?}->{to:?} wire differs");
            });
        }
    }
}

/// exact read across a checkpoint: bytes received before it are carried; the total is whole.
#[test]
fn exact_read_continues_across_checkpoint() {
    let _s = serial();
    for from in BACKENDS {
        for to in BACKENDS {
            guard("ckpt_read", 30, move || {
                let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
                let mut r1 = ring(from);
                r1.submit(Op::read(r.as_raw_fd(), vec![0u8; 10]).exact())
                    .unwrap();
                std::io::Write::write_all(&mut &w, b"0123").unwrap();
                for _ in 0..5 {
                    r1.wait(1, Some(Duration::from_millis(10))).unwrap();
                }
                let ck = r1.quiesce(QuiescePolicy::default()).unwrap();
                let json = ck.to_json().unwrap();
                drop(r1);
                let ck = Checkpoint::from_json(&json).unwrap();
                let mut r2 = ring(to);
                let id = r2.resubmit(&ck, Buffers::new()).remove(0).unwrap();
                std::io::Write::write_all(&mut &w, b"456789extra").unwrap();
                let c = r2.wait_for(id).unwrap();
                assert_eq!(c.data(), b"0123456789", "{from:?}->{to:?}");
                assert_eq!(drain_now(r.as_raw_fd()), b"extra");
            });
        }
    }
}

fn base_checkpoint(b: BackendChoice) -> (Checkpoint, Vec<Box<dyn std::any::Any + Send>>) {
    // a checkpoint with one socket read, one file write (queued), one timeout
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let p = tmpfile("/tmp", "ckbase");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let mut ring = builder(b).max_in_flight(2).build().unwrap();
    ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 16]).user_data(1))
        .unwrap();
    ring.submit(Op::timeout(Duration::from_secs(60)).user_data(3))
        .unwrap();
    ring.submit(Op::write_at(f.as_raw_fd(), 0, b"payload".to_vec()).user_data(2))
        .unwrap();
    ring.flush().unwrap();
    let ck = ring.quiesce(QuiescePolicy::default()).unwrap();
    assert_eq!(ck.ops.len(), 3);
    drop(ring);
    (ck, vec![Box::new(r), Box::new(w), Box::new(f), Box::new(p)])
}

/// Hostile checkpoints: every corrupted descriptor yields a per-op error (never a panic, never a
/// silent drop, never an op acting on a wrong file or offset).
#[test]
fn hostile_checkpoint_descriptors() {
    let _s = serial();
    for b in BACKENDS {
        guard("hostile", 60, move || {
            let (ck, keep) = base_checkpoint(b);
            let ri = ck.ops.iter().position(|d| d.kind == OpKind::Read).unwrap();
            let wi = ck.ops.iter().position(|d| d.kind == OpKind::Write).unwrap();
            let ti = ck
                .ops
                .iter()
                .position(|d| d.kind == OpKind::Timeout)
                .unwrap();
            type Mutation = Box<dyn Fn(&mut quell::OpDescriptor)>;
            let mut cases: Vec<(&str, usize, Mutation)> = vec![
                ("len u64::MAX", ri, Box::new(|d| d.len = u64::MAX)),
                (
                    "len i32::MAX+1",
                    ri,
                    Box::new(|d| d.len = i32::MAX as u64 + 1),
                ),
                (
                    "transferred > len",
                    ri,
                    Box::new(|d| d.transferred = d.len + 1),
                ),
                (
                    "transferred u64::MAX",
                    ri,
                    Box::new(|d| d.transferred = u64::MAX),
                ),
                (
                    "data too long",
                    ri,
                    Box::new(|d| d.data = Some(vec![1u8; 100])),
                ),
                (
                    "read data without transfer",
                    ri,
                    Box::new(|d| d.data = Some(vec![1u8; 3])),
                ),
                (
                    "iov_lens on a plain read",
                    ri,
                    Box::new(|d| d.iov_lens = vec![1, 2, 3]),
                ),
                ("fd -1", ri, Box::new(|d| d.fd = -1)),
                ("fd 1<<30", ri, Box::new(|d| d.fd = 1 << 30)),
                ("fd AT_FDCWD", ri, Box::new(|d| d.fd = libc::AT_FDCWD)),
                ("fd OPENED", ri, Box::new(|d| d.fd = quell::Chain::OPENED)),
                (
                    "file identity changed",
                    ri,
                    Box::new(|d| {
                        if let Some(f) = d.file.as_mut() {
                            f.ino ^= 0x5555
                        }
                    }),
                ),
                (
                    "path on a read",
                    ri,
                    Box::new(|d| d.path = Some(b"/etc/passwd".to_vec())),
                ),
                (
                    "group path too deep",
                    ri,
                    Box::new(|d| d.group_path = format!("root{}", "/x".repeat(100))),
                ),
                (
                    "group path not under root",
                    ri,
                    Box::new(|d| d.group_path = "evil/x".into()),
                ),
                (
                    "group path empty",
                    ri,
                    Box::new(|d| d.group_path = String::new()),
                ),
                (
                    "group path with empty segments",
                    ri,
                    Box::new(|d| d.group_path = "root//..//".into()),
                ),
                (
                    "deadline_left MAX",
                    ri,
                    Box::new(|d| d.deadline_left = Some(Duration::MAX)),
                ),
                (
                    "write offset u64::MAX",
                    wi,
                    Box::new(|d| d.offset = Some(u64::MAX)),
                ),
                (
                    "write offset i64::MAX",
                    wi,
                    Box::new(|d| d.offset = Some(i64::MAX as u64)),
                ),
                (
                    "write data shorter than remaining",
                    wi,
                    Box::new(|d| d.data = Some(b"pay".to_vec())),
                ),
                ("write data None", wi, Box::new(|d| d.data = None)),
                ("write len 0 with data", wi, Box::new(|d| d.len = 0)),
                (
                    "timeout sleep MAX",
                    ti,
                    Box::new(|d| d.sleep = Some(Duration::MAX)),
                ),
                ("timeout sleep None", ti, Box::new(|d| d.sleep = None)),
                (
                    "timeout with data",
                    ti,
                    Box::new(|d| d.data = Some(vec![0; 4])),
                ),
                (
                    "kind flipped to Readv",
                    ri,
                    Box::new(|d| d.kind = OpKind::Readv),
                ),
                (
                    "kind flipped to Write",
                    ri,
                    Box::new(|d| d.kind = OpKind::Write),
                ),
                (
                    "kind flipped to OpenAt w/o path",
                    ri,
                    Box::new(|d| d.kind = OpKind::OpenAt),
                ),
                (
                    "kind flipped to Connect w/o addr",
                    ri,
                    Box::new(|d| d.kind = OpKind::Connect),
                ),
                (
                    "kind Splice w/o fd2",
                    ri,
                    Box::new(|d| d.kind = OpKind::Splice),
                ),
                ("kind Close", ri, Box::new(|d| d.kind = OpKind::Close)),
                ("kind Blocking", ri, Box::new(|d| d.kind = OpKind::Blocking)),
                (
                    "iov_lens huge count",
                    ri,
                    Box::new(|d| {
                        d.kind = OpKind::Readv;
                        d.iov_lens = vec![1; 100_000];
                        d.len = 100_000
                    }),
                ),
                (
                    "iov_lens sum overflow",
                    ri,
                    Box::new(|d| {
                        d.kind = OpKind::Readv;
                        d.iov_lens = vec![u64::MAX, 2];
                        d.len = 1
                    }),
                ),
            ];
            let _ = &mut cases;
            let mut report = Vec::new();
            for (name, idx, mutate) in &cases {
                let mut c = ck.clone();
                mutate(&mut c.ops[*idx]);
                let checked = c.ops[*idx].check();
                let mut ring = ring(b);
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ring.resubmit(&c, Buffers::new())
                }));
                let res = match res {
                    Ok(r) => r,
                    Err(_) => {
                        report.push(format!("{name}: resubmit PANICKED"));
                        continue;
                    }
                };
                assert_eq!(res.len(), c.ops.len());
                match &res[*idx] {
                    Ok(id) => {
                        ring.resume();
                        ring.cancel(*id).ok();
                        let comp = ring.wait_for(*id).unwrap();
                        report.push(format!(
                            "{name}: ACCEPTED (check {:?}) -> {:?}",
                            checked.map_err(|e| format!("{e:?}")),
                            comp.outcome
                        ));
                    }
                    Err(e) => {
                        if checked.is_ok()
                            && !matches!(
                                e.error,
                                Error::FdChanged { .. }
                                    | Error::InvalidFd { .. }
                                    | Error::MissingData { .. }
                            )
                        {
                            report.push(format!(
                                "{name}: check() Ok but resubmit refused {:?}",
                                e.error
                            ));
                        }
                    }
                }
                ring.resume();
                ring.cancel_all();
                let _ = ring.shutdown();
            }
            drop(keep);
            let accepted: Vec<_> = report
                .iter()
                .filter(|r| r.contains("ACCEPTED") || r.contains("PANICKED"))
                .cloned()
                .collect();
            for r in &report {
                eprintln!("{b:?} {r}");
            }
            assert!(
                accepted.is_empty(),
                "{b:?}: hostile descriptors accepted:\n{}",
                accepted.join("\n")
            );
        });
    }
}

/// Two descriptors with one id are both refused (doc); other ops unaffected.
#[test]
fn duplicate_ids_refused() {
    let _s = serial();
    for b in BACKENDS {
        guard("dup_ids", 30, move || {
            let (mut ck, keep) = base_checkpoint(b);
            let d = ck.ops[0].clone();
            ck.ops.push(d);
            let mut ring = ring(b);
            let res = ring.resubmit(&ck, Buffers::new());
            assert!(
                res[0].is_err() && res[3].is_err(),
                "{b:?}: duplicate ids accepted"
            );
            assert!(res[1].is_ok() || res[2].is_ok());
            ring.resume();
            ring.cancel_all();
            drop(ring);
            drop(keep);
        });
    }
}

fn child_fuzz(seed: u64) {
    let (ck, keep) = base_checkpoint(BackendChoice::Portable);
    let good = ck.to_bytes().unwrap();
    let good_json = ck.to_json().unwrap();
    let mut x = seed;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ring = crate::common::ring(BackendChoice::Portable);
    for i in 0..20000 {
        let mut bytes = good.clone();
        let flips = 1 + next() % 4;
        for _ in 0..flips {
            let pos = (next() as usize) % bytes.len();
            bytes[pos] = next() as u8;
        }
        if i % 10 == 0 {
            bytes.truncate((next() as usize) % bytes.len());
        }
        if let Ok(c) = Checkpoint::from_bytes(&bytes) {
            let r = ring.resubmit(&c, Buffers::new());
            assert_eq!(r.len(), c.ops.len());
            ring.resume();
            ring.cancel_all();
            while !ring.is_empty() {
                ring.wait(1, Some(Duration::from_millis(10))).unwrap();
                ring.completions().for_each(drop);
            }
        }
    }
    for _ in 0..5000 {
        let mut s: Vec<u8> = good_json.clone().into_bytes();
        let pos = (next() as usize) % s.len();
        let digits = b"0123456789-";
        s[pos] = digits[(next() % 11) as usize];
        if let Ok(t) = std::str::from_utf8(&s) {
            if let Ok(c) = Checkpoint::from_json(t) {
                let r = ring.resubmit(&c, Buffers::new());
                assert_eq!(r.len(), c.ops.len());
                ring.resume();
                ring.cancel_all();
                while !ring.is_empty() {
                    ring.wait(1, Some(Duration::from_millis(10))).unwrap();
                    ring.completions().for_each(drop);
                }
            }
        }
    }
    // a length prefix claiming a huge vec
    let mut evil = vec![2u8, 1];
    evil.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let _ = Checkpoint::from_bytes(&evil);
    drop(keep);
    println!("FUZZ-OK");
}

#[test]
fn child_checkpoint_fuzz() {
    let _s = serial();
    if !is_child() {
        return;
    }
    child_fuzz(0x9e3779b97f4a7c15);
}

/// Bit-flipped / truncated postcard and JSON checkpoints: decode errors or per-op errors only.
/// Run in a child process so an abort (OOM) or a hang is seen as such.
#[test]
fn corrupt_checkpoint_bytes_fuzz() {
    let _s = serial();
    if is_child() {
        return;
    }
    let (code, out) = in_child("checkpoint::child_checkpoint_fuzz", 240);
    assert!(
        code == Some(0) && out.contains("FUZZ-OK"),
        "fuzz child failed: {}",
        out.lines()
            .filter(|l| l.contains("panicked")
                || l.contains("HANG")
                || l.contains("memory")
                || l.contains("error"))
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// A checkpointed file's path now names a FIFO: reopen_files must not open (and so not block on) it.
#[test]
fn reopen_files_path_replaced_by_fifo() {
    let _s = serial();
    guard("reopen_fifo", 30, || {
        let p = tmpfile("/tmp", "fifo");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut ring = builder(BackendChoice::Portable)
            .max_in_flight(1)
            .build()
            .unwrap();
        ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 4])).unwrap();
        ring.submit(Op::write_at(f.as_raw_fd(), 0, b"x".to_vec()))
            .unwrap();
        let mut ck = ring.quiesce(QuiescePolicy::default()).unwrap();
        drop(ring);
        drop(f);
        std::fs::remove_file(&p).unwrap();
        let cp = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(cp.as_ptr(), 0o600) }, 0);
        let re = ck.reopen_files();
        eprintln!("reopen: fds {} failed {:?}", re.fds.len(), re.failed);
        assert_eq!(re.failed.len(), 1);
        let mut ring = crate::common::ring(BackendChoice::Portable);
        let res = ring.resubmit(&ck, Buffers::new());
        let wi = ck.ops.iter().position(|d| d.kind == OpKind::Write).unwrap();
        assert!(res[wi].is_err());
        std::fs::remove_file(&p).unwrap();
    });
}

/// The file was deleted and a new one created at the same path (ext4 reuses the inode number).
/// reopen_files must not point the write at the new file.
#[test]
fn reopen_files_path_replaced_by_new_file_same_inode() {
    let _s = serial();
    for dir in ["/tmp", "/dev/shm"] {
        guard("reopen_inode", 30, move || {
            use std::os::unix::fs::MetadataExt;
            let p = tmpfile(dir, "inode");
            std::fs::write(&p, b"original").unwrap();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let ino = f.metadata().unwrap().ino();
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut ring = builder(BackendChoice::Portable)
                .max_in_flight(1)
                .build()
                .unwrap();
            ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 4])).unwrap();
            ring.submit(Op::write_at(f.as_raw_fd(), 0, b"OVERWRITE".to_vec()))
                .unwrap();
            let mut ck = ring.quiesce(QuiescePolicy::default()).unwrap();
            drop(ring);
            drop(f);
            std::fs::remove_file(&p).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(&p, b"new file").unwrap();
            let ino2 = std::fs::metadata(&p).unwrap().ino();
            let re = ck.reopen_files();
            let mut ring = crate::common::ring(BackendChoice::Portable);
            let res = ring.resubmit(&ck, Buffers::new());
            for (i, r) in res.iter().enumerate() {
                if ck.ops[i].kind != OpKind::Write {
                    continue;
                }
                if let Ok(id) = r {
                    let c = ring.wait_for(*id).unwrap();
                    eprintln!("{dir}: op {i} {:?} -> {:?}", ck.ops[i].kind, c.outcome);
                }
            }
            let now = std::fs::read(&p).unwrap();
            eprintln!(
                "{dir}: inode {ino} -> {ino2}; reopened {} failed {:?}; file now {:?}",
                re.fds.len(),
                re.failed,
                String::from_utf8_lossy(&now)
            );
            std::fs::remove_file(&p).unwrap();
            assert_eq!(
                now, b"new file",
                "{dir}: the checkpointed write hit a different file"
            );
            ring.cancel_all();
        });
    }
}

/// resubmit into a quiesced ring, then drop the ring without resuming: ops canceled, no hang.
#[test]
fn resubmit_into_quiesced_ring_then_drop() {
    let _s = serial();
    for b in BACKENDS {
        guard("quiesced_drop", 30, move || {
            let (ck, keep) = base_checkpoint(b);
            let mut ring = ring(b);
            ring.quiesce(QuiescePolicy::default()).unwrap();
            let res = ring.resubmit(&ck, Buffers::new());
            assert!(res.iter().filter(|r| r.is_ok()).count() >= 2);
            let left = ring.shutdown();
            assert_eq!(
                left.len(),
                res.iter().filter(|r| r.is_ok()).count(),
                "{b:?}"
            );
            assert!(left.iter().all(|c| c.outcome.is_canceled()), "{b:?}");
            drop(keep);
        });
    }
}

/// Quiesce a ring with a Bounded op in flight and an Interruptible FUSE op: bounded is waited for
/// within the bound; checkpoint lists the FUSE read; every op completes exactly once.
#[test]
fn quiesce_with_fuse_and_file_ops() {
    let _s = serial();
    use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
    for b in BACKENDS {
        guard("quiesce_fuse", 60, move || {
            let fs = FaultFs::mount_temp(Spec::new().file(
                FileSpec::pattern("h.bin", 1 << 20).rule(Rule::read(0..4096, Behavior::Hang)),
            ))
            .unwrap();
            let hf = std::fs::File::open(fs.path("h.bin")).unwrap();
            let ff = std::fs::File::open("/proc/self/exe").unwrap();
            let mut ring = ring(b);
            let h = ring
                .submit(Op::read_at(hf.as_raw_fd(), 0, vec![0u8; 100]).user_data(1))
                .unwrap();
            let f = ring
                .submit(Op::read_at(ff.as_raw_fd(), 0, vec![0u8; 4]).user_data(2))
                .unwrap();
            ring.flush().unwrap();
            assert!(fs.wait_parked(1, Duration::from_secs(5)));
            let ck = ring
                .quiesce(
                    QuiescePolicy::default()
                        .bound(Duration::from_secs(2))
                        .cancel_wait(Duration::from_secs(5)),
                )
                .unwrap();
            assert_eq!(
                ck.ops.len(),
                1,
                "{b:?} ops {:?} unfinished {:?}",
                ck.ops.iter().map(|d| d.user_data).collect::<Vec<_>>(),
                ck.unfinished
            );
            assert_eq!(ck.ops[0].user_data, 1);
            assert!(ring.wait_for(f).unwrap().outcome.is_done());
            assert!(ring.wait_for(h).unwrap().outcome.is_canceled());
            let mut r2 = crate::common::ring(b);
            let _id = r2.resubmit(&ck, Buffers::new()).remove(0).unwrap();
            fs.release_all();
            let t0 = Instant::now();
            let mut c = None;
            while t0.elapsed() < Duration::from_secs(5) {
                fs.release_all();
                r2.wait(1, Some(Duration::from_millis(50))).unwrap();
                if let Some(x) = r2.next_completion() {
                    c = Some(x);
                    break;
                }
            }
            let c = c.expect("resubmitted FUSE read never completed");
            assert_eq!(c.outcome, Outcome::Done(100), "{b:?}");
        });
    }
}

/// OpDescriptor::check doc: "... and only the fields its kind uses". A timeout descriptor carrying
/// a descriptor number or `exact` passes check() and is re-issued.
#[test]
fn check_rejects_fields_kind_does_not_use() {
    let _s = serial();
    let (ck, keep) = base_checkpoint(BackendChoice::Portable);
    let ti = ck
        .ops
        .iter()
        .position(|d| d.kind == OpKind::Timeout)
        .unwrap();
    let mut bad = Vec::new();
    for (name, f) in [
        (
            "fd 0",
            Box::new(|d: &mut quell::OpDescriptor| d.fd = 0)
                as Box<dyn Fn(&mut quell::OpDescriptor)>,
        ),
        (
            "exact",
            Box::new(|d: &mut quell::OpDescriptor| d.exact = true),
        ),
        (
            "offset",
            Box::new(|d: &mut quell::OpDescriptor| d.offset = Some(7)),
        ),
    ] {
        let mut d = ck.ops[ti].clone();
        f(&mut d);
        if d.check().is_ok() {
            bad.push(name);
        }
    }
    drop(keep);
    assert!(
        bad.is_empty(),
        "timeout descriptor with unused fields passes check(): {bad:?}"
    );
}
