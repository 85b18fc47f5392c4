//! Checkpoint/restore and introspection (issue 8, DESIGN I9), on every backend:
//! quiesce a mixed workload (pipes, page cache, hung FUSE reads, queued writes) and
//! resubmit it on a fresh ring with the same end result as an uninterrupted run; a
//! checkpoint serialized and completed by a child process; a write interrupted mid-way
//! finished for its remaining bytes only; `ops()` listing 10,000 ops exactly once; a
//! Bounded op that never finishes reported and kept, not lost or freed.
//!
//! FUSE parts need root (or /dev/fuse + fusermount); `QUELL_SKIP_FUSE_TESTS=1` skips them.

mod common;

use common::fault::{mount, Watchdog};
use common::*;
use quell::{
    BackendChoice, Buffers, CancelClass, Checkpoint, CheckpointId, Completion, DumpFormat, Error,
    GroupId, GroupOptions, Op, OpKind, OpState, Outcome, QuiescePolicy, Ring,
};
use quell_faultfs::{fill_pattern, Behavior, FileSpec, Rule, Spec};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const PIPES: u64 = 1000;
const CACHED: u64 = 100;
const HUNG: u64 = 10;
const WRITES: u64 = 5;
const MSG: usize = 64;
const BLOCK: usize = 4096;

// user_data ranges of the mixed workload
const U_PIPE: u64 = 0;
const U_CACHED: u64 = 10_000;
const U_HUNG: u64 = 20_000;
const U_WRITE: u64 = 30_000;

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(offset, &mut v);
    v
}

/// What pipe `i` carries: 64 bytes that differ from every other pipe's.
fn pipe_msg(i: u64) -> Vec<u8> {
    (0..MSG as u64)
        .map(|k| (i.wrapping_mul(131) + k * 7 + i / 256) as u8)
        .collect()
}

fn write_block(i: u64) -> Vec<u8> {
    vec![b'A' + i as u8; BLOCK]
}

fn temp_file(name: &str, contents: &[u8]) -> (std::path::PathBuf, std::fs::File) {
    let dir = std::env::temp_dir().join(format!("quell-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    std::fs::write(&dir, contents).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dir)
        .unwrap();
    (dir, f)
}

/// The mixed workload's descriptors.
struct Mixed {
    pipes: Vec<(OwnedFd, OwnedFd)>,
    cached: std::fs::File,
    hung: std::fs::File,
    out: std::fs::File,
    out_path: std::path::PathBuf,
}

/// What each op of a run ended with: user data → (outcome, bytes), and the output file.
type Results = (BTreeMap<u64, (Outcome, Vec<u8>)>, Vec<u8>);

fn record(res: &mut BTreeMap<u64, (Outcome, Vec<u8>)>, c: Completion) {
    let data = if c.user_data >= U_WRITE {
        Vec::new()
    } else {
        c.data().to_vec()
    };
    assert!(
        res.insert(c.user_data, (c.outcome, data)).is_none(),
        "two completions for user data {}",
        c.user_data
    );
}

/// Submits the mixed workload: 1,000 exact pipe reads (every tenth pipe already holds
/// half its message), 10 FUSE reads (hung unless released), 100 page-cache reads, and 5
/// writes that find the dispatch window full.
fn submit_mixed(ring: &mut Ring, m: &Mixed, fs: &quell_faultfs::FaultFs, hang: bool) {
    for (i, (r, w)) in m.pipes.iter().enumerate() {
        let i = i as u64;
        ring.submit(
            Op::read(r.as_raw_fd(), vec![0; MSG])
                .exact()
                .user_data(U_PIPE + i),
        )
        .unwrap();
        if i % 10 == 0 {
            write_all(w.as_raw_fd(), &pipe_msg(i)[..MSG / 2]);
        }
    }
    ring.poll().unwrap();
    for k in 0..HUNG {
        let off = k * BLOCK as u64 * 3;
        ring.submit(Op::read_at(m.hung.as_raw_fd(), off, vec![0; BLOCK]).user_data(U_HUNG + k))
            .unwrap();
    }
    ring.poll().unwrap();
    if hang {
        assert!(
            fs.wait_parked(HUNG as usize, Duration::from_secs(10)),
            "the FUSE reads never hung: {:?}",
            fs.stats()
        );
    }
    for k in 0..CACHED {
        let off = k * BLOCK as u64;
        ring.submit(Op::read_at(m.cached.as_raw_fd(), off, vec![0; BLOCK]).user_data(U_CACHED + k))
            .unwrap();
    }
    for k in 0..WRITES {
        let off = k * BLOCK as u64;
        ring.submit(Op::write_at(m.out.as_raw_fd(), off, write_block(k)).user_data(U_WRITE + k))
            .unwrap();
    }
}

/// Provides the pipe data that is still missing.
fn feed_pipes(m: &Mixed) {
    for (i, (_, w)) in m.pipes.iter().enumerate() {
        let i = i as u64;
        let msg = pipe_msg(i);
        let from = if i % 10 == 0 { MSG / 2 } else { 0 };
        write_all(w.as_raw_fd(), &msg[from..]);
    }
}

fn mixed_fixture(
    tag: &str,
) -> (
    Mixed,
    std::sync::Arc<quell_faultfs::FaultFs>,
    Watchdog,
    std::path::PathBuf,
) {
    let fs = mount(Spec::new().file(
        FileSpec::pattern("hang.bin", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang)),
    ))
    .expect("FUSE is needed for this test (QUELL_SKIP_FUSE_TESTS=1 is honoured by the caller)");
    let wd = Watchdog::new(&fs, 120);
    let (cached_path, cached) = temp_file(
        &format!("{tag}-cached"),
        &pattern(0, CACHED as usize * BLOCK),
    );
    let (out_path, out) = temp_file(&format!("{tag}-out"), &[]);
    let m = Mixed {
        pipes: (0..PIPES).map(|_| pipe()).collect(),
        cached,
        hung: std::fs::File::open(fs.path("hang.bin")).unwrap(),
        out,
        out_path,
    };
    (m, fs, wd, cached_path)
}

fn skip_fuse() -> bool {
    std::env::var_os("QUELL_SKIP_FUSE_TESTS").is_some_and(|v| v == "1")
}

fn mixed_ring(b: BackendChoice) -> Ring {
    // The window holds the reads exactly: the writes stay in quell's queue.
    Ring::builder()
        .backend(b)
        .capacity(2048)
        .max_in_flight((PIPES + HUNG + CACHED) as u32)
        .build()
        .unwrap()
}

fn uninterrupted(b: BackendChoice) -> Results {
    let (m, fs, wd, cached_path) = mixed_fixture("plain");
    fs.set_rules("hang.bin", vec![]).unwrap();
    let mut ring = mixed_ring(b);
    submit_mixed(&mut ring, &m, &fs, false);
    feed_pipes(&m);
    let mut res = BTreeMap::new();
    for c in collect(&mut ring, (PIPES + HUNG + CACHED + WRITES) as usize, 60) {
        record(&mut res, c);
    }
    assert!(!wd.fired());
    let out = std::fs::read(&m.out_path).unwrap();
    let _ = std::fs::remove_file(&m.out_path);
    let _ = std::fs::remove_file(cached_path);
    (res, out)
}

both_backends! {
    /// Quiesce 1,000 pending pipe reads (100 of them part-way), 100 in-flight page-cache
    /// reads, 10 hung FUSE reads and 5 queued writes: the page-cache reads finish, the
    /// rest come back as descriptors; resubmitted on a new ring (after a round trip
    /// through JSON and postcard) and given their data, every op ends exactly as in an
    /// uninterrupted run of the same workload.
    fn quiesce_mixed_workload_then_resubmit_matches_uninterrupted_run(b: BackendChoice) {
        if skip_fuse() {
            return;
        }
        let want = uninterrupted(b);
        let (m, fs, wd, cached_path) = mixed_fixture("ckpt");
        let mut old = mixed_ring(b);
        submit_mixed(&mut old, &m, &fs, true);
        let listed = old.ops();
        let bounded_in_flight = listed
            .iter()
            .filter(|o| o.class == CancelClass::Bounded && o.state == OpState::InFlight)
            .count();
        assert_eq!(bounded_in_flight as u64, CACHED, "the page-cache reads are in flight at quiesce time");
        let queued = listed.iter().filter(|o| o.state == OpState::Queued).count();
        assert!(queued >= WRITES as usize, "the writes should wait in quell's queue ({queued} queued)");

        let t = Instant::now();
        let ckpt = old.quiesce(QuiescePolicy::default().bound(Duration::from_secs(10))).unwrap();
        eprintln!("[{b:?}] quiesce of {} ops took {:?}", PIPES + HUNG + CACHED + WRITES, t.elapsed());
        assert!(ckpt.unfinished.is_empty(), "{:?}", ckpt.unfinished);
        assert_eq!(ckpt.ops.len() as u64, PIPES + HUNG + WRITES, "every canceled op is described");

        // The old ring delivers one completion per op: the page-cache reads done, the
        // rest canceled (their buffers are not needed: the checkpoint carries the bytes).
        let mut old_res = BTreeMap::new();
        for c in old.completions() {
            record(&mut old_res, c);
        }
        assert_eq!(old_res.len() as u64, PIPES + HUNG + CACHED + WRITES);
        let mut res = BTreeMap::new();
        for (&u, (o, data)) in &old_res {
            if (U_CACHED..U_CACHED + CACHED).contains(&u) {
                assert_eq!(*o, Outcome::Done(BLOCK), "page-cache read {u} is Bounded: it finishes");
                res.insert(u, (*o, data.clone()));
            } else {
                assert!(matches!(o, Outcome::Canceled { .. }), "{u}: {o}");
            }
        }
        for d in &ckpt.ops {
            match d.user_data {
                u if u < U_CACHED => {
                    assert_eq!(d.kind, OpKind::Read);
                    assert!(d.exact);
                    let half = if u % 10 == 0 { MSG as u64 / 2 } else { 0 };
                    assert_eq!((d.len, d.transferred), (MSG as u64, half), "pipe read {u}");
                    assert_eq!(d.data.as_deref(), Some(&pipe_msg(u)[..half as usize]));
                }
                u if u >= U_WRITE => {
                    assert_eq!((d.kind, d.transferred), (OpKind::Write, 0));
                    assert_eq!(d.data.as_deref(), Some(&write_block(u - U_WRITE)[..]));
                    assert!(d.file.as_ref().unwrap().reopenable());
                }
                u => {
                    assert!((U_HUNG..U_HUNG + HUNG).contains(&u), "{u}");
                    assert_eq!(d.class, CancelClass::Interruptible);
                    assert_eq!(d.offset, Some((u - U_HUNG) * BLOCK as u64 * 3));
                }
            }
        }
        // The checkpoint travels as JSON and as postcard bytes.
        let json = ckpt.to_json().unwrap();
        let bytes = ckpt.to_bytes().unwrap();
        eprintln!("[{b:?}] checkpoint: {} bytes JSON, {} bytes postcard", json.len(), bytes.len());
        assert_eq!(Checkpoint::from_json(&json).unwrap(), ckpt);
        let back = Checkpoint::from_bytes(&bytes).unwrap();
        assert_eq!(back, ckpt);
        drop(old);

        fs.set_rules("hang.bin", vec![]).unwrap();
        let mut fresh = mixed_ring(b);
        let ids = fresh.resubmit(&back, Buffers::new());
        assert_eq!(ids.len(), ckpt.ops.len());
        for r in &ids {
            assert!(r.is_ok(), "{}", r.as_ref().unwrap_err());
        }
        feed_pipes(&m);
        for c in collect(&mut fresh, ids.len(), 60) {
            record(&mut res, c);
        }
        let out = std::fs::read(&m.out_path).unwrap();
        assert!(!wd.fired());
        let _ = std::fs::remove_file(&m.out_path);
        let _ = std::fs::remove_file(cached_path);
        assert_eq!(res.len(), want.0.len());
        for (u, w) in &want.0 {
            assert_eq!(res.get(u), Some(w), "op {u} differs from the uninterrupted run");
        }
        assert_eq!(out, want.1, "output file differs from the uninterrupted run");
        let expected: Vec<u8> = (0..WRITES).flat_map(write_block).collect();
        assert_eq!(out, expected);
    }

    /// A positioned write split in parts, quiesced after its first part: the descriptor
    /// says how far it got; re-issued (with the old buffer, whose already-written part is
    /// overwritten with garbage to prove it is not written again), it writes only the
    /// rest and the file ends byte-identical to an uninterrupted write.
    fn write_interrupted_midway_resumes_for_the_remaining_bytes_only(b: BackendChoice) {
        let data = pattern(7, 1 << 20);
        let (path, f) = temp_file(&format!("midway-{b:?}"), &[]);
        let mut ring = Ring::builder().backend(b).part_size(64 * 1024).build().unwrap();
        let id = ring.submit(Op::write_at(f.as_raw_fd(), 0, data.clone()).user_data(5)).unwrap();
        let ckpt = ring.quiesce(QuiescePolicy::default().carry_data(false)).unwrap();
        assert_eq!(ckpt.ops.len(), 1);
        let d = &ckpt.ops[0];
        eprintln!("[{b:?}] write quiesced after {} of {} bytes", d.transferred, d.len);
        assert!(d.transferred > 0 && d.transferred < d.len, "mid-way: {} of {}", d.transferred, d.len);
        assert_eq!(d.transferred % (64 * 1024), 0);
        assert_eq!(d.offset, Some(0));
        assert_eq!(d.remaining(), data.len() as u64 - d.transferred);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), d.transferred, "only the finished parts hit the file");
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: d.transferred as usize });
        let mut buf = c.into_buf().unwrap();
        buf[..d.transferred as usize].fill(0xEE);
        let mut bufs = Buffers::new();
        bufs.insert(d.id, buf);
        drop(ring);

        let mut fresh = Ring::builder().backend(b).part_size(64 * 1024).build().unwrap();
        let id = fresh.resubmit(&ckpt, bufs).remove(0).unwrap();
        let ops = fresh.ops();
        assert_eq!(ops[0].transferred, d.transferred, "ops() shows the bytes already moved");
        let c = fresh.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(data.len()), "the completion reports the whole op");
        assert_eq!(c.user_data, 5);
        let got = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(got == data, "file differs from an uninterrupted write");

        // Without the buffer and without carried data, a write cannot be re-issued.
        let mut ring = Ring::builder().backend(b).build().unwrap();
        let err = ring.resubmit(&ckpt, Buffers::new()).remove(0).unwrap_err();
        assert!(matches!(err.error, Error::MissingData { user_data: 5 }), "{err}");
    }

    /// `ops()` with 10,000 ops outstanding (8,000 in flight, 2,000 queued) lists each
    /// exactly once, and so does a snapshot asked for by a Handle from another thread.
    fn ops_lists_ten_thousand_ops_exactly_once(b: BackendChoice) {
        let mut ring = Ring::builder().backend(b).capacity(16384).max_in_flight(8000).build().unwrap();
        let g = ring.group(GroupId::ROOT, GroupOptions::default().name("readers")).unwrap();
        let pipes: Vec<_> = (0..100).map(|_| pipe()).collect();
        let mut ids = HashSet::new();
        for i in 0..10_000u64 {
            let fd = pipes[(i % 100) as usize].0.as_raw_fd();
            ids.insert(ring.submit(Op::read(fd, vec![0; 8]).user_data(i).group(g)).unwrap());
        }
        ring.poll().unwrap();
        let check = |ops: &[quell::OpInfo]| {
            assert_eq!(ops.len(), 10_000);
            let seen: HashSet<_> = ops.iter().map(|o| o.id).collect();
            assert_eq!(seen.len(), 10_000, "an op is listed twice");
            assert_eq!(seen, ids);
            let users: HashSet<u64> = ops.iter().map(|o| o.user_data).collect();
            assert_eq!(users.len(), 10_000);
            assert_eq!(ops.iter().filter(|o| o.state == OpState::Queued).count(), 2000);
            assert!(ops.iter().all(|o| &*o.group_path == "root/readers" && o.kind == OpKind::Read));
        };
        check(&ring.ops());
        let h = ring.handle();
        let asker = std::thread::spawn(move || h.request_ops().unwrap().wait(Duration::from_secs(30)).unwrap());
        let start = Instant::now();
        while !asker.is_finished() {
            assert!(start.elapsed() < Duration::from_secs(30));
            ring.wait(1, Some(Duration::from_millis(20))).unwrap();
        }
        check(&asker.join().unwrap());
        let mut dump = Vec::new();
        ring.dump_ops(DumpFormat::Json, &mut dump).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&dump).unwrap();
        assert_eq!(doc["ops"].as_array().unwrap().len(), 10_000);
        assert_eq!(ring.cancel_all(), 10_000);
        let done = collect(&mut ring, 10_000, 60);
        assert!(done.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 }));
    }

    /// A Bounded op that never finishes within the bound (a hung page-cache fill of a
    /// FUSE file, declared Bounded like device I/O): the quiesce returns after the bound
    /// and reports it; the ring keeps owning it and its buffer; when the hang is
    /// released it completes with the file's bytes. A pipe read in the same quiesce
    /// becomes a descriptor.
    fn quiesce_reports_a_bounded_op_that_never_finishes(b: BackendChoice) {
        let Some(fs) = mount(Spec::new().file(
            FileSpec::pattern("cached.bin", 1 << 20)
                .cached(true)
                .rule(Rule::read(0..u64::MAX, Behavior::Hang)),
        )) else {
            return;
        };
        let wd = Watchdog::new(&fs, 60);
        let mut ring = ring(b, 16);
        let file = std::fs::File::open(fs.path("cached.bin")).unwrap();
        let (r, _w) = pipe();
        let stuck = ring
            .submit(Op::read_at(file.as_raw_fd(), 8192, vec![0; BLOCK]).class(CancelClass::Bounded).user_data(1))
            .unwrap();
        let pipe_read = ring.submit(Op::read(r.as_raw_fd(), vec![0; 16]).user_data(2)).unwrap();
        ring.poll().unwrap();
        assert!(fs.wait_parked(1, Duration::from_secs(10)), "the read never reached the daemon");

        let t = Instant::now();
        let ckpt = ring.quiesce(QuiescePolicy::default().bound(Duration::from_millis(300))).unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "quiesce took {took:?}");
        assert_eq!(ckpt.unfinished.len(), 1, "{:?}", ckpt.unfinished);
        let u = &ckpt.unfinished[0];
        assert_eq!((u.user_data, u.class, u.state), (1, CancelClass::Bounded, OpState::InFlight));
        assert_eq!(u.id, CheckpointId::from(stuck));
        assert_eq!(ckpt.ops.len(), 1);
        assert_eq!(ckpt.ops[0].user_data, 2);
        assert_eq!(ring.wait_for(pipe_read).unwrap().outcome, Outcome::Canceled { transferred: 0 });
        // Not lost: still listed, still in flight.
        let ops = ring.ops();
        assert_eq!(ops.len(), 1);
        assert_eq!((ops[0].id, ops[0].state), (stuck, OpState::InFlight));
        assert!(ring.next_completion().is_none());

        // Not freed: once the kernel is done the buffer comes back with the file's bytes.
        fs.set_rules("cached.bin", vec![]).unwrap();
        let start = Instant::now();
        let c = loop {
            fs.release_all();
            ring.wait(1, Some(Duration::from_millis(20))).unwrap();
            if let Some(c) = ring.next_completion() {
                break c;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the released read never completed");
        };
        assert_eq!((c.id, c.outcome), (stuck, Outcome::Done(BLOCK)));
        assert_eq!(c.data(), &pattern(8192, BLOCK)[..]);
        assert!(!wd.fired());
        assert!(ring.is_empty());
    }

    /// A descriptor whose fd is gone, or now names another file, yields a per-op error
    /// (with the op handed back when it was built); the others are re-issued.
    fn resubmit_reports_each_op_it_cannot_reissue(b: BackendChoice) {
        // A window of three: the blocking op waits in quell's queue.
        let mut ring = Ring::builder().backend(b).capacity(16).max_in_flight(3).build().unwrap();
        let (r1, w1) = pipe();
        let (r2, _w2) = pipe();
        let (r3, _w3) = pipe();
        ring.submit(Op::read(r1.as_raw_fd(), vec![0; 4]).user_data(1)).unwrap();
        ring.submit(Op::read(r2.as_raw_fd(), vec![0; 4]).user_data(2)).unwrap();
        ring.submit(Op::read(r3.as_raw_fd(), vec![0; 4]).user_data(3)).unwrap();
        ring.submit(Op::blocking(|| Ok(0)).user_data(4)).unwrap();
        let ckpt = ring.quiesce(QuiescePolicy::default()).unwrap();
        drop(ring);
        let by_user: HashMap<u64, usize> = ckpt.ops.iter().enumerate().map(|(i, d)| (d.user_data, i)).collect();
        assert_eq!(by_user.len(), 4);
        let fd2 = r2.as_raw_fd();
        drop(r2); // gone
        let fd3 = r3.as_raw_fd();
        drop(r3);
        let (other, _) = pipe(); // may take fd3's number: another file then
        let mut fresh = common::ring(b, 16);
        let res = fresh.resubmit(&ckpt, Buffers::new());
        assert_eq!(res.len(), 4);
        let e2 = res[by_user[&2]].as_ref().unwrap_err();
        assert!(matches!(e2.error, Error::InvalidFd { fd } | Error::FdChanged { fd } if fd == fd2), "{e2}");
        let e3 = res[by_user[&3]].as_ref().unwrap_err();
        assert!(matches!(e3.error, Error::InvalidFd { fd } | Error::FdChanged { fd } if fd == fd3), "{e3}");
        if other.as_raw_fd() == fd3 {
            assert!(matches!(e3.error, Error::FdChanged { .. }), "a reused number is detected: {e3}");
        }
        let e4 = res[by_user[&4]].as_ref().unwrap_err();
        assert!(matches!(e4.error, Error::Unsupported { .. }), "{e4}");
        let id1 = *res[by_user[&1]].as_ref().unwrap();
        write_all(w1.as_raw_fd(), b"abcd");
        let c = fresh.wait_for(id1).unwrap();
        assert_eq!((c.user_data, c.data()), (1, &b"abcd"[..]));
    }

    /// Transfers other than read/write continue too: a readv and a writev on a file,
    /// and a recv on a socket, each described as stopped part-way (hand-made
    /// descriptors, as another program could write them) are re-issued for the rest.
    fn resubmit_continues_vectored_and_socket_transfers(b: BackendChoice) {
        use std::os::unix::fs::MetadataExt;
        let (path, f) = temp_file(&format!("vec-{b:?}"), b"0123456789");
        let meta = f.metadata().unwrap();
        let file = quell::FileRef { dev: meta.dev(), ino: meta.ino(), kind: 0, born: 0, path: None, status_flags: libc::O_RDWR };
        let (sa, sb) = std::os::unix::net::UnixStream::pair().unwrap();
        let sm = rustix::fs::fstat(&sa).unwrap();
        let sock = quell::FileRef { dev: sm.st_dev, ino: sm.st_ino, kind: 0, born: 0, path: None, status_flags: libc::O_RDWR };
        let base = quell::OpDescriptor {
            id: CheckpointId { slot: 0, generation: 0 },
            user_data: 0,
            kind: OpKind::Readv,
            fd: f.as_raw_fd(),
            file: Some(file),
            fd2: -1,
            file2: None,
            offset: Some(0),
            offset2: None,
            len: 8,
            transferred: 6,
            iov_lens: vec![4, 4],
            flags: 0,
            mode: 0,
            exact: false,
            path: None,
            path2: None,
            addr: None,
            sleep: None,
            group_path: "root".into(),
            deadline_left: None,
            class: CancelClass::Bounded,
            data: Some(b"012345".to_vec()),
        };
        let readv = quell::OpDescriptor { user_data: 1, ..base.clone() };
        let writev = quell::OpDescriptor {
            id: CheckpointId { slot: 1, generation: 0 },
            user_data: 2,
            kind: OpKind::Writev,
            offset: Some(2),
            transferred: 5,
            // "ABCDEFGH" at 2, of which "ABCDE" landed before: only "FGH" remains.
            data: Some(b"FGH".to_vec()),
            ..base.clone()
        };
        let recv = quell::OpDescriptor {
            id: CheckpointId { slot: 2, generation: 0 },
            user_data: 3,
            kind: OpKind::Recv,
            fd: sa.as_raw_fd(),
            file: Some(sock),
            offset: None,
            len: 8,
            transferred: 3,
            iov_lens: Vec::new(),
            class: CancelClass::Prompt,
            data: Some(b"abc".to_vec()),
            ..base.clone()
        };
        let mut ring = common::ring(b, 8);
        let ckpt = Checkpoint { version: quell::CHECKPOINT_VERSION, pid: 0, ops: vec![readv], unfinished: Vec::new() };
        let id = ring.resubmit(&ckpt, Buffers::new()).remove(0).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(8), "the total, as if never interrupted");
        assert_eq!(c.bufs().unwrap(), &[b"0123".to_vec(), b"4567".to_vec()]);

        let ckpt = Checkpoint { ops: vec![writev, recv], ..ckpt };
        let ids = ring.resubmit(&ckpt, Buffers::new());
        (&sb).write_all(b"defgh").unwrap();
        let w = ring.wait_for(*ids[0].as_ref().unwrap()).unwrap();
        assert_eq!(w.outcome, Outcome::Done(8));
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456FGH", "only the remaining bytes were written");
        let r = ring.wait_for(*ids[1].as_ref().unwrap()).unwrap();
        assert_eq!((r.outcome, r.data()), (Outcome::Done(8), &b"abcdefgh"[..]));
        let _ = std::fs::remove_file(&path);
    }

    /// Without carried data, the old ring's canceled completions hand their buffers to
    /// the re-issue: a read stopped part-way keeps the bytes it had (no byte lost) and
    /// continues into the same buffer; finished ops' completions are handed back.
    fn resubmit_with_the_old_buffers(b: BackendChoice) {
        let mut ring = common::ring(b, 16);
        let (r, w) = pipe();
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 10]).exact().user_data(1)).unwrap();
        let nop = ring.submit(Op::nop().user_data(2)).unwrap();
        write_all(w.as_raw_fd(), b"hello");
        let start = Instant::now();
        while ring.ops().iter().find(|o| o.id == id).unwrap().transferred < 5 {
            assert!(start.elapsed() < Duration::from_secs(10));
            ring.wait(1, Some(Duration::from_millis(10))).unwrap();
        }
        let ckpt = ring.quiesce(QuiescePolicy::default().carry_data(false)).unwrap();
        assert_eq!(ckpt.ops.len(), 1);
        assert_eq!((ckpt.ops[0].transferred, ckpt.ops[0].data.as_ref()), (5, None));
        let mut bufs = Buffers::new();
        let mut back = Vec::new();
        for c in ring.completions() {
            back.extend(bufs.keep(c));
        }
        assert_eq!(bufs.len(), 1);
        assert_eq!(back.len(), 1, "the nop's completion is handed back");
        assert_eq!((back[0].id, back[0].outcome), (nop, Outcome::Done(0)));
        drop(ring);
        let mut fresh = common::ring(b, 16);
        let id = fresh.resubmit(&ckpt, bufs).remove(0).unwrap();
        write_all(w.as_raw_fd(), b"world");
        let c = fresh.wait_for(id).unwrap();
        assert_eq!((c.outcome, c.data()), (Outcome::Done(10), &b"helloworld"[..]));
    }

    /// DESIGN I12 on restore: a file's path that now names another file — a FIFO (whose
    /// read-only open would block forever), a directory, a new regular file — is not
    /// opened by `reopen_files` (reported failed, promptly), and the op on it is refused
    /// by `resubmit` with a per-op error rather than acting on the other file.
    fn reopen_files_refuses_a_path_that_now_names_another_file(b: BackendChoice) {
        for replacement in ["fifo", "dir", "file"] {
            let (path, f) = temp_file(&format!("swap-{replacement}-{b:?}"), b"0123");
            let ro = std::fs::File::open(&path).unwrap();
            drop(f);
            let mut ring = Ring::builder().backend(b).capacity(8).max_in_flight(1).build().unwrap();
            let (r, _w) = pipe();
            ring.submit(Op::read(r.as_raw_fd(), vec![0; 4])).unwrap(); // takes the window
            ring.submit(Op::read_at(ro.as_raw_fd(), 0, vec![0; 4]).user_data(7)).unwrap(); // queued
            let mut ckpt = ring.quiesce(QuiescePolicy::default()).unwrap();
            drop(ring);
            drop(ro);
            std::fs::remove_file(&path).unwrap();
            match replacement {
                "fifo" => {
                    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
                    // SAFETY: valid C string.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
                }
                "dir" => std::fs::create_dir(&path).unwrap(),
                _ => std::fs::write(&path, b"new!").unwrap(),
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let reopener = std::thread::spawn(move || {
                let reopened = ckpt.reopen_files();
                tx.send(()).unwrap();
                (ckpt, reopened)
            });
            let done = rx.recv_timeout(Duration::from_secs(10));
            if done.is_err() {
                // Unblock the open stuck on the FIFO before failing.
                let _ = std::fs::OpenOptions::new().write(true).open(&path);
            }
            let (ckpt, reopened) = reopener.join().unwrap();
            assert!(done.is_ok(), "[{replacement}] reopen_files blocked on the path");
            assert!(reopened.fds.is_empty(), "[{replacement}] reopened another file: {reopened:?}");
            assert_eq!(reopened.failed.len(), 1, "[{replacement}] {reopened:?}");
            let i = ckpt.ops.iter().position(|d| d.user_data == 7).unwrap();
            let mut fresh = common::ring(b, 8);
            let e = fresh.resubmit(&ckpt, Buffers::new()).remove(i).unwrap_err();
            assert!(matches!(e.error, Error::InvalidFd { .. } | Error::FdChanged { .. }), "[{replacement}] {e}");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir(&path);
        }
    }

    /// Groups and deadlines survive: the op lands in a group of the same path and its
    /// deadline counts on from the time that was left.
    fn resubmit_restores_group_paths_and_remaining_deadlines(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let api = ring.group(GroupId::ROOT, GroupOptions::default().name("api")).unwrap();
        let req = ring.group(api, GroupOptions::default().name("req")).unwrap();
        let (r, _w) = pipe();
        ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).group(req).deadline(Instant::now() + Duration::from_millis(400)).user_data(9)).unwrap();
        ring.submit(Op::timeout(Duration::from_secs(3)).user_data(10)).unwrap();
        let ckpt = ring.quiesce(QuiescePolicy::default()).unwrap();
        let d = ckpt.ops.iter().find(|d| d.user_data == 9).unwrap();
        assert_eq!(d.group_path, "root/api/req");
        let left = d.deadline_left.unwrap();
        assert!(left > Duration::ZERO && left <= Duration::from_millis(400), "{left:?}");
        let t = ckpt.ops.iter().find(|d| d.user_data == 10).unwrap();
        assert!(t.sleep.unwrap() <= Duration::from_secs(3) && t.sleep.unwrap() > Duration::from_secs(2));

        let mut fresh = common::ring(b, 16);
        let res = fresh.resubmit(&ckpt, Buffers::new());
        let ops = fresh.ops();
        let o = ops.iter().find(|o| o.user_data == 9).unwrap();
        assert_eq!(&*o.group_path, "root/api/req");
        assert!(o.deadline.is_some());
        let id = *res.iter().flatten().find(|id| **id == o.id).unwrap();
        let start = Instant::now();
        let c = fresh.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 });
        assert!(start.elapsed() < Duration::from_secs(2));
        let timer = ops.iter().find(|o| o.user_data == 10).unwrap().id;
        fresh.cancel(timer).unwrap();
        fresh.wait_for(timer).unwrap();
    }
}

// ---- the child-process restore ----

const CHILD_ENV: &str = "QUELL_CKPT_CHILD_DIR";

fn send_fds(sock: RawFd, fds: &[RawFd]) {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::BorrowedFd;
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        // SAFETY: the caller keeps these descriptors open for the call.
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    assert!(anc.push(SendAncillaryMessage::ScmRights(&borrowed)));
    // SAFETY: the socket is open for the call.
    let s = unsafe { BorrowedFd::borrow_raw(sock) };
    sendmsg(
        s,
        &[std::io::IoSlice::new(b"F")],
        &mut anc,
        SendFlags::empty(),
    )
    .unwrap();
}

fn recv_fds(sock: RawFd) -> Vec<OwnedFd> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::os::fd::BorrowedFd;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    // SAFETY: the socket is open for the call.
    let s = unsafe { BorrowedFd::borrow_raw(sock) };
    recvmsg(
        s,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap();
    let mut out = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            out.extend(fds);
        }
    }
    out
}

mod restore_in_child {
    use super::*;

    both_backends! {
        /// A checkpoint written as JSON and postcard, read back by a child process: the pipes
        /// come over SCM_RIGHTS, the files (a queued write, a hung FUSE read) are reopened by
        /// path; the child resubmits and completes the work with the right bytes.
        fn checkpoint_completed_by_a_child_process(b: BackendChoice) {
            if skip_fuse() {
                return;
            }
            let fs = mount(Spec::new().file(
                FileSpec::pattern("hang.bin", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang)),
            ))
            .unwrap();
            let wd = Watchdog::new(&fs, 120);
            let dir = std::env::temp_dir().join(format!("quell-ckpt-child-{}-{b:?}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let (out_path, out) = temp_file(&format!("child-out-{b:?}"), &[]);
            let pipes: Vec<_> = (0..8).map(|_| pipe()).collect();
            let hung = std::fs::File::open(fs.path("hang.bin")).unwrap();

            // Window of 9: the 8 pipe reads and the hung read; the write waits in the queue.
            let mut ring = Ring::builder().backend(b).capacity(64).max_in_flight(9).build().unwrap();
            for (i, (r, w)) in pipes.iter().enumerate() {
                ring.submit(Op::read(r.as_raw_fd(), vec![0; MSG]).exact().user_data(i as u64)).unwrap();
                if i % 2 == 0 {
                    write_all(w.as_raw_fd(), &pipe_msg(i as u64)[..10]);
                }
            }
            ring.submit(Op::read_at(hung.as_raw_fd(), 3 * BLOCK as u64, vec![0; BLOCK]).user_data(100)).unwrap();
            ring.poll().unwrap();
            assert!(fs.wait_parked(1, Duration::from_secs(10)));
            ring.submit(Op::write_at(out.as_raw_fd(), 0, write_block(1)).user_data(200)).unwrap();
            let ckpt = ring.quiesce(QuiescePolicy::default()).unwrap();
            assert_eq!(ckpt.ops.len(), 10);
            assert!(ckpt.unfinished.is_empty());
            drop(ring);
            std::fs::write(dir.join("ckpt.json"), ckpt.to_json().unwrap()).unwrap();
            std::fs::write(dir.join("ckpt.bin"), ckpt.to_bytes().unwrap()).unwrap();
            // The parent lets go of the files: the child must reopen them by path.
            drop(hung);
            drop(out);
            fs.set_rules("hang.bin", vec![]).unwrap();

            let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            // SAFETY: clearing FD_CLOEXEC on a descriptor we own, so the child inherits it.
            assert_eq!(unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) }, 0);
            let old_fds: Vec<RawFd> = pipes.iter().map(|(r, _)| r.as_raw_fd()).collect();
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["checkpoint_child_entry", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &dir)
                .env("QUELL_CKPT_CHILD_SOCK", theirs.as_raw_fd().to_string())
                .env("QUELL_CKPT_CHILD_OLD_FDS", old_fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(","))
                .env("QUELL_BACKEND", if b == BackendChoice::Uring { "uring" } else { "portable" })
                .spawn()
                .unwrap();
            drop(theirs);
            send_fds(mine.as_raw_fd(), &old_fds);
            // The parent's read ends are no longer needed: the child holds its own copies.
            let writers: Vec<OwnedFd> = pipes.into_iter().map(|(_, w)| w).collect();
            // Wait for "resubmitted", then provide the data.
            let mut ready = [0u8; 1];
            std::io::Read::read_exact(&mut &mine, &mut ready).unwrap();
            assert_eq!(&ready, b"R");
            for (i, w) in writers.iter().enumerate() {
                let from = if i % 2 == 0 { 10 } else { 0 };
                write_all(w.as_raw_fd(), &pipe_msg(i as u64)[from..]);
            }
            let status = child.wait().unwrap();
            assert!(!wd.fired());
            assert!(status.success(), "child failed: {status}");
            assert_eq!(std::fs::read(dir.join("done")).unwrap(), b"10 ops completed");
            assert_eq!(std::fs::read(&out_path).unwrap(), write_block(1), "the child's write landed");
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(&out_path);
        }
    }
}

/// The child side of `checkpoint_completed_by_a_child_process` (run by it, not alone).
#[test]
#[ignore = "run by checkpoint_completed_by_a_child_process in a child process"]
fn checkpoint_child_entry() {
    let dir =
        std::path::PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent test"));
    let sock: RawFd = std::env::var("QUELL_CKPT_CHILD_SOCK")
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: the parent passed us this descriptor and nobody else owns it here.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let old: Vec<RawFd> = std::env::var("QUELL_CKPT_CHILD_OLD_FDS")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let json =
        Checkpoint::from_json(&std::fs::read_to_string(dir.join("ckpt.json")).unwrap()).unwrap();
    let mut ckpt = Checkpoint::from_bytes(&std::fs::read(dir.join("ckpt.bin")).unwrap()).unwrap();
    assert_eq!(json, ckpt, "JSON and postcard carry the same checkpoint");
    assert_ne!(ckpt.pid, std::process::id());
    let fds = recv_fds(sock.as_fd().as_raw_fd());
    assert_eq!(fds.len(), old.len());
    let pairs: Vec<(RawFd, RawFd)> = old
        .iter()
        .copied()
        .zip(fds.iter().map(|f| f.as_raw_fd()))
        .collect();
    assert_eq!(
        ckpt.remap_fds(&pairs),
        old.len(),
        "one pipe read per received descriptor"
    );
    let reopened = ckpt.reopen_files();
    assert!(reopened.failed.is_empty(), "{:?}", reopened.failed);
    assert_eq!(reopened.fds.len(), 2, "the output file and the FUSE file");
    let mut ring = Ring::new().unwrap();
    let ids = ring.resubmit(&ckpt, Buffers::new());
    for r in &ids {
        assert!(r.is_ok(), "{}", r.as_ref().unwrap_err());
    }
    (&sock_file(&sock)).write_all(b"R").unwrap();
    let mut n = 0;
    for c in collect(&mut ring, ids.len(), 60) {
        match c.user_data {
            u if u < 100 => assert_eq!(c.data(), &pipe_msg(u)[..], "pipe read {u}"),
            100 => assert_eq!(c.data(), &pattern(3 * BLOCK as u64, BLOCK)[..]),
            200 => assert_eq!(c.outcome, Outcome::Done(BLOCK)),
            u => panic!("unexpected op {u}"),
        }
        n += 1;
    }
    std::fs::write(dir.join("done"), format!("{n} ops completed")).unwrap();
}

fn sock_file(fd: &OwnedFd) -> std::fs::File {
    std::fs::File::from(fd.try_clone().unwrap())
}

/// A writer the test can read back while the ring owns it.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

mod introspection {
    use super::*;

    /// A signal reaches every ring in the process that asked for it, so the two backends'
    /// runs of the SIGUSR1 test take turns: one's `raise` would otherwise dump the other's
    /// table before that test's "nothing written yet" check.
    static SIGUSR1_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    both_backends! {
        /// Opt-in SIGUSR1: each delivery makes the ring write its op table (table, then
        /// JSON) the next time it runs; nothing is written before a delivery.
        fn sigusr1_dumps_the_op_table(b: BackendChoice) {
            let _turn = SIGUSR1_TURN.lock().unwrap_or_else(|e| e.into_inner());
            let mut ring = common::ring(b, 16);
            let out = Shared::default();
            ring.dump_on_signal(libc::SIGUSR1, Box::new(out.clone()), DumpFormat::Both).unwrap();
            let (r, _w) = pipe();
            let tag = if b == BackendChoice::Uring { 7001 } else { 7002 };
            ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).user_data(tag)).unwrap();
            ring.poll().unwrap();
            assert!(out.0.lock().unwrap().is_empty());
            // SAFETY: raising a signal this ring has a handler for.
            assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
            let start = Instant::now();
            while out.0.lock().unwrap().is_empty() {
                assert!(start.elapsed() < Duration::from_secs(10), "no dump after SIGUSR1");
                ring.wait(1, Some(Duration::from_millis(20))).unwrap();
            }
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let mut lines = text.lines();
            assert!(lines.next().unwrap().starts_with("ID"), "{text}");
            let row = lines.next().unwrap();
            assert!(row.contains(&tag.to_string()) && row.contains("pipe:[") && row.contains("in-flight"), "{row}");
            assert_eq!(lines.next().unwrap(), "1 ops outstanding");
            let doc: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
            assert_eq!(doc["ops"][0]["user_data"], tag);
            assert_eq!(doc["ops"][0]["state"], "in-flight");
            ring.cancel_all();
            collect(&mut ring, 1, 10);
        }
    }
}
