//! A checkpoint is input from disk (issue 15, break 9; DESIGN I1, I9, I10): whatever it
//! says, `Checkpoint::from_json` / `from_bytes` and `Ring::resubmit` answer with typed
//! errors — per op for what `resubmit` refuses — never panic, never allocate what a
//! hostile length asks for, and never leave the ring paused or half-changed. Every
//! accepted op still yields exactly one completion, with the bytes it carried counted.

mod common;

use common::*;
use quell::{
    Buffers, CancelClass, Checkpoint, CheckpointId, Error, FileRef, GroupId, GroupOptions, Op,
    OpDescriptor, OpKind, OpState, Outcome, QuiescePolicy, ResubmitError, Ring, CHECKPOINT_VERSION,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

// ---- the largest allocation made by this thread (hostile lengths must not reach the allocator) ----

struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator may run while this thread's locals are torn down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards to the system allocator; only records sizes in a const-initialized
// thread-local that never allocates.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Largest = Largest;

/// Nothing a hostile checkpoint asks for comes near this; every honest op below is tiny.
const ALLOC_CEILING: usize = 64 << 20;

/// Runs `f` and returns its result and the largest single allocation it made on this thread.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(|l| l.get()))
}

// ---- building hand-made checkpoints ----

fn file_of(fd: RawFd) -> FileRef {
    let st = rustix::fs::fstat(unsafe_borrow(fd)).expect("fstat");
    FileRef {
        dev: st.st_dev,
        ino: st.st_ino,
        kind: st.st_mode & libc::S_IFMT,
        born: 0,
        path: None,
        status_flags: libc::O_RDWR,
    }
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: every fd passed here is owned by the calling test for its whole duration.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// A valid 4-byte read of the pipe read end `fd`, id `slot`.
fn read_desc(fd: RawFd, slot: u32) -> OpDescriptor {
    OpDescriptor {
        id: CheckpointId {
            slot,
            generation: 1,
        },
        user_data: slot as u64,
        kind: OpKind::Read,
        fd,
        file: Some(file_of(fd)),
        fd2: -1,
        file2: None,
        offset: None,
        offset2: None,
        len: 4,
        transferred: 0,
        iov_lens: Vec::new(),
        flags: 0,
        mode: 0,
        exact: false,
        path: None,
        path2: None,
        addr: None,
        sleep: None,
        group_path: "root".into(),
        deadline_left: None,
        class: CancelClass::Prompt,
        data: Some(Vec::new()),
    }
}

fn checkpoint(ops: Vec<OpDescriptor>) -> Checkpoint {
    Checkpoint {
        version: CHECKPOINT_VERSION,
        pid: std::process::id(),
        ops,
        unfinished: Vec::new(),
    }
}

/// Resubmits `ckpt` and checks what holds whatever the checkpoint says: one result per
/// descriptor, no large allocation, the ring as paused as before, and the ring holding
/// exactly the ops it accepted.
fn resubmit_checked(
    ring: &mut Ring,
    ckpt: &Checkpoint,
    bufs: Buffers,
) -> Vec<Result<quell::OpId, ResubmitError>> {
    let paused = ring.is_quiesced();
    let before = ring.len();
    let (res, largest) = largest_alloc(|| ring.resubmit(ckpt, bufs));
    assert!(
        largest < ALLOC_CEILING,
        "resubmit allocated {largest} bytes at once"
    );
    assert_eq!(res.len(), ckpt.ops.len(), "one result per descriptor");
    assert_eq!(
        ring.is_quiesced(),
        paused,
        "resubmit changed the pause state"
    );
    let accepted = res.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ring.len(),
        before + accepted,
        "the ring holds exactly the accepted ops"
    );
    for (i, r) in res.iter().enumerate() {
        if let Err(e) = r {
            assert_eq!((e.index, e.user_data), (i, ckpt.ops[i].user_data), "{e}");
        }
    }
    res
}

/// Cancels everything and checks every accepted op yields exactly one completion.
fn settle(ring: &mut Ring, ids: &[quell::OpId]) -> HashMap<quell::OpId, quell::Completion> {
    ring.cancel_all();
    let mut got = HashMap::new();
    for c in collect(ring, ids.len(), 30) {
        assert!(
            ids.contains(&c.id),
            "completion for an op never accepted: {c:?}"
        );
        let id = c.id;
        assert!(got.insert(id, c).is_none(), "two completions for {id:?}");
    }
    ring.wait(0, Some(Duration::from_millis(50))).unwrap();
    assert!(
        ring.next_completion().is_none(),
        "a completion beyond one per op"
    );
    assert!(ring.is_empty());
    got
}

fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::TooLong { .. }
            | Error::InvalidArgument(_)
            | Error::InvalidFd { .. }
            | Error::FdChanged { .. }
            | Error::MissingData { .. }
            | Error::Unsupported { .. }
    )
}

both_backends! {
    /// `OpDescriptor::check` accepts "only the fields its kind uses" (the red team: a
    /// timeout with a descriptor number or `exact` passed, and `resubmit` re-issued it).
    /// One op of every kind is checkpointed by a real quiesce (so the descriptors are the
    /// ones the ring writes, and they pass); then each field its kind does not use is set,
    /// one at a time: `check` refuses it and so does `resubmit`, per op.
    fn every_kind_refuses_the_fields_it_does_not_use(b: BackendChoice) {
        let (path, f) = temp_file(&format!("fields-{b:?}"));
        let fd = f.as_raw_fd();
        let (sa, sb) = std::os::unix::net::UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None).unwrap();
        let (pr, pw) = pipe();
        let spare = rustix::io::dup(&pr).unwrap();
        let other = path.with_extension("other");
        let mut ring = Ring::builder().backend(b).capacity(64).max_in_flight(1).build().unwrap();
        // Holds the one dispatch slot: every op below waits in quell's queue.
        ring.submit(Op::read(sb.as_raw_fd(), vec![0u8; 4]).user_data(999)).unwrap();
        let ops = vec![
            Op::nop(),
            Op::read_at(fd, 0, vec![0u8; 4]).exact(),
            Op::write_at(fd, 0, b"abcd".to_vec()),
            Op::readv_at(fd, 0, vec![vec![0u8; 2], vec![0u8; 2]]),
            Op::writev_at(fd, 0, vec![b"ab".to_vec()]),
            Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0),
            Op::close(spare.as_raw_fd()),
            Op::statx(libc::AT_FDCWD, &path, 0, libc::STATX_SIZE),
            Op::fsync(fd),
            Op::fallocate(fd, 0, 0, 4096),
            Op::poll(sa.as_raw_fd(), quell::Interest::READABLE),
            Op::timeout(Duration::from_secs(60)),
            Op::accept(listener.as_raw_fd()),
            Op::connect(tcp.as_raw_fd(), listener.local_addr().unwrap()),
            Op::send(sa.as_raw_fd(), b"x".to_vec(), 0),
            Op::recv(sa.as_raw_fd(), vec![0u8; 4], 0),
            Op::splice(fd, Some(0), pw.as_raw_fd(), None, 4),
            Op::renameat(libc::AT_FDCWD, &path, libc::AT_FDCWD, &other, 0),
            Op::unlinkat(libc::AT_FDCWD, &other, 0),
        ];
        let kinds: Vec<OpKind> = ops.iter().map(|o| o.kind()).collect();
        for (i, op) in ops.into_iter().enumerate() {
            ring.submit(op.user_data(i as u64)).unwrap();
        }
        let ckpt = ring.quiesce(QuiescePolicy::default()).unwrap();
        let mut descs: Vec<OpDescriptor> = ckpt.ops.iter().filter(|d| d.user_data != 999).cloned().collect();
        descs.sort_by_key(|d| d.user_data);
        assert_eq!(descs.iter().map(|d| d.kind).collect::<Vec<_>>(), kinds, "one descriptor per kind");
        let mut hostile = Vec::new();
        let mut passed = Vec::new();
        for d in &descs {
            assert!(d.check().is_ok(), "{:?} as the ring wrote it: {:?}", d.kind, d.check());
            for f in FIELDS.iter().filter(|f| !fields_of(d.kind).contains(f)) {
                let mut bad = d.clone();
                stray(&mut bad, *f, pr.as_raw_fd());
                if bad.check().is_ok() {
                    passed.push(format!("{:?} with {f:?}", d.kind));
                }
                bad.id.slot = 1000 + hostile.len() as u32;
                hostile.push(bad);
            }
            if !fields_of(d.kind).contains(&Field::Fd) {
                // A bare number, no identity (the red team's `fd = 0`).
                let bad = OpDescriptor { fd: 0, id: CheckpointId { slot: 1000 + hostile.len() as u32, generation: 1 }, ..d.clone() };
                if bad.check().is_ok() {
                    passed.push(format!("{:?} with descriptor 0", d.kind));
                }
                hostile.push(bad);
            }
        }
        assert!(passed.is_empty(), "{b:?}: check() accepts fields the kind does not use: {passed:?}");
        let n = hostile.len();
        let mut fresh = common::ring(b, 256);
        let res = resubmit_checked(&mut fresh, &checkpoint(hostile), Buffers::new());
        for (i, r) in res.iter().enumerate() {
            let e = r.as_ref().expect_err("a descriptor with a stray field was re-issued");
            assert!(is_refusal(&e.error), "op {i}: {e}");
        }
        assert_eq!(res.len(), n);
        assert!(fresh.is_empty());
        ring.resume();
        ring.cancel_all();
        drop(ring.shutdown());
        drop((sa, sb, pw));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&other);
    }

    /// Lengths no op could have had: `u64::MAX` (capacity overflow before the fix),
    /// 1 TiB (the allocation aborted the process), 2 GiB (allocated, then refused),
    /// vectored lengths that overflow or break IOV_MAX, a splice longer than `u32::MAX`,
    /// bytes already moved beyond the length. Each is refused with a typed error before
    /// any allocation; the valid read between them is re-issued and reads its bytes.
    fn hostile_lengths_are_refused_before_any_allocation(b: BackendChoice) {
        let (r, w) = pipe();
        let (r2, _w2) = pipe();
        let fd = r.as_raw_fd();
        let valid = read_desc(fd, 100);
        let huge = |slot: u32, len: u64| OpDescriptor { len, ..read_desc(fd, slot) };
        let readv = |slot: u32, iov_lens: Vec<u64>| OpDescriptor {
            kind: OpKind::Readv,
            len: iov_lens.iter().fold(0u64, |a, &l| a.wrapping_add(l)),
            iov_lens,
            ..read_desc(fd, slot)
        };
        let ops = vec![
            huge(1, u64::MAX),
            huge(2, 1 << 40),
            huge(3, i32::MAX as u64 + 1),
            valid.clone(),
            OpDescriptor {
                kind: OpKind::Write,
                len: 3 << 30,
                transferred: (3 << 30) - 1,
                data: Some(b"x".to_vec()),
                ..read_desc(w.as_raw_fd(), 4)
            },
            OpDescriptor { kind: OpKind::Recv, ..huge(5, u64::MAX - 1) },
            readv(6, vec![u64::MAX]),
            readv(7, vec![1; 2000]),
            readv(8, vec![i32::MAX as u64, i32::MAX as u64]),
            readv(9, vec![u64::MAX, 2]), // the lengths wrap around to a small total
            OpDescriptor { len: 1, ..readv(10, vec![4, 4]) },
            readv(11, Vec::new()),
            OpDescriptor {
                kind: OpKind::Splice,
                fd2: r2.as_raw_fd(),
                file2: Some(file_of(r2.as_raw_fd())),
                data: None,
                ..huge(12, u64::MAX)
            },
            OpDescriptor { transferred: 5, data: Some(vec![b'x'; 5]), ..read_desc(fd, 13) },
        ];
        let ckpt = checkpoint(ops);
        let mut ring = ring(b, 64);
        let res = resubmit_checked(&mut ring, &ckpt, Buffers::new());
        for (i, r) in res.iter().enumerate() {
            if ckpt.ops[i].user_data == 100 {
                continue;
            }
            let e = r.as_ref().expect_err("a hostile length was accepted");
            assert!(is_refusal(&e.error), "op {i}: {e}");
        }
        let id = *res[3].as_ref().expect("the valid read is re-issued");
        write_all(w.as_raw_fd(), b"good");
        let c = ring.wait_for(id).unwrap();
        assert_eq!((c.user_data, c.outcome, c.data()), (100, Outcome::Done(4), &b"good"[..]));
        assert!(ring.is_empty());
    }

    /// Values that do not fit the op they describe: offsets beyond `i64::MAX` (and
    /// `u64::MAX`, which must not turn a positioned read into a stream read), paths with
    /// NUL bytes, empty or longer than PATH_MAX, deadlines and sleeps beyond what a clock
    /// can hold (a panic before the fix), a sleep-less timeout, an address-less connect,
    /// carried bytes that do not match the bytes moved, a descriptor op without the
    /// file's identity, modes wider than 32 bits, a closure op. Each is a typed per-op
    /// error; the valid op beside them runs.
    fn hostile_values_get_per_op_errors(b: BackendChoice) {
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        let dir = std::env::temp_dir();
        let dir = std::fs::File::open(&dir).unwrap();
        let dirfd = dir.as_raw_fd();
        let (path_file, f) = temp_file(&format!("values-{b:?}"));
        let rd = |slot| read_desc(fd, slot);
        let file = |slot| OpDescriptor { offset: Some(0), ..read_desc(f.as_raw_fd(), slot) };
        let path_op = |slot, kind, path: &[u8]| OpDescriptor {
            kind,
            fd: dirfd,
            file: Some(file_of(dirfd)),
            len: 0,
            data: None,
            path: Some(path.to_vec()),
            path2: Some(b"y".to_vec()),
            fd2: dirfd,
            file2: Some(file_of(dirfd)),
            ..rd(slot)
        };
        let ops = vec![
            OpDescriptor { offset: Some(u64::MAX), ..file(1) },
            OpDescriptor { offset: Some(i64::MAX as u64 + 1), ..file(2) },
            OpDescriptor { offset: Some(i64::MAX as u64 - 1), ..file(3) },
            OpDescriptor { kind: OpKind::Recv, offset: Some(0), ..rd(4) }, // a stream op takes no offset
            path_op(5, OpKind::OpenAt, b"a\0b"),
            path_op(6, OpKind::UnlinkAt, b""),
            path_op(7, OpKind::Statx, &[b'a'; 5000]),
            OpDescriptor { path: None, ..path_op(8, OpKind::OpenAt, b"x") },
            OpDescriptor { path2: Some(b"b\0".to_vec()), ..path_op(9, OpKind::RenameAt, b"a") },
            OpDescriptor { mode: 1 << 40, ..path_op(10, OpKind::OpenAt, b"x") },
            OpDescriptor { deadline_left: Some(Duration::MAX), ..rd(11) },
            OpDescriptor { kind: OpKind::Timeout, fd: -1, file: None, len: 0, data: None, sleep: Some(Duration::MAX), ..rd(12) },
            OpDescriptor { kind: OpKind::Timeout, fd: -1, file: None, len: 0, data: None, sleep: None, ..rd(13) },
            OpDescriptor { kind: OpKind::Connect, len: 0, data: None, addr: None, ..rd(14) },
            OpDescriptor { transferred: 2, data: Some(b"abc".to_vec()), ..rd(15) },
            OpDescriptor { transferred: 2, data: Some(b"a".to_vec()), ..rd(16) },
            OpDescriptor { kind: OpKind::Write, fd: w.as_raw_fd(), file: Some(file_of(w.as_raw_fd())), transferred: 1, data: Some(b"toolong".to_vec()), ..rd(17) },
            OpDescriptor { file: None, ..rd(18) },
            OpDescriptor { fd: -5, ..rd(19) },
            OpDescriptor { kind: OpKind::Blocking, fd: -1, file: None, len: 0, data: None, ..rd(20) },
            OpDescriptor { kind: OpKind::Fallocate, offset: Some(0), len: i64::MAX as u64 + 1, data: None, ..file(21) },
            OpDescriptor { kind: OpKind::Fallocate, offset: Some(4096), len: i64::MAX as u64, data: None, ..file(25) },
            OpDescriptor { kind: OpKind::Fallocate, offset: None, len: 4096, data: None, ..file(22) },
            OpDescriptor { kind: OpKind::Nop, fd: -1, file: None, len: 0, data: Some(b"stray".to_vec()), ..rd(23) },
            OpDescriptor { iov_lens: vec![4], ..rd(24) },
            rd(100),
        ];
        let ckpt = checkpoint(ops);
        let mut ring = ring(b, 64);
        let res = resubmit_checked(&mut ring, &ckpt, Buffers::new());
        let mut ok = Vec::new();
        for (i, r) in res.iter().enumerate() {
            match r {
                Ok(id) => ok.push((ckpt.ops[i].user_data, *id)),
                Err(e) => assert!(is_refusal(&e.error), "op {i}: {e}"),
            }
        }
        assert_eq!(ok.iter().map(|(u, _)| *u).collect::<Vec<_>>(), [100], "only the valid op is accepted");
        write_all(w.as_raw_fd(), b"fine");
        let c = ring.wait_for(ok[0].1).unwrap();
        assert_eq!(c.data(), b"fine");
        let _ = std::fs::remove_file(path_file);
    }

    /// Group paths that no ring writes (empty, not under "root", empty names, absurdly
    /// deep) are refused per op. An op refused after its group path was resolved leaves
    /// no group behind: the next op with that path lands in the group the user made.
    fn bogus_group_paths_are_refused_and_leave_no_groups(b: BackendChoice) {
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        let deep = format!("root{}", "/a".repeat(10_000));
        let mut ops = Vec::new();
        for (i, p) in ["", "evil/x", "root//x", "root/", "/root", &deep].into_iter().enumerate() {
            ops.push(OpDescriptor { group_path: p.to_string(), ..read_desc(fd, i as u32) });
        }
        // A write with neither carried bytes nor a buffer: refused after its group path.
        ops.push(OpDescriptor {
            kind: OpKind::Write,
            fd: w.as_raw_fd(),
            file: Some(file_of(w.as_raw_fd())),
            data: None,
            group_path: "root/api".into(),
            ..read_desc(fd, 50)
        });
        let mut ring = ring(b, 64);
        let res = resubmit_checked(&mut ring, &checkpoint(ops), Buffers::new());
        for (i, r) in res.iter().enumerate() {
            let e = r.as_ref().expect_err("a bogus group path was accepted");
            assert!(is_refusal(&e.error), "op {i}: {e}");
        }
        assert!(matches!(res[6].as_ref().unwrap_err().error, Error::MissingData { .. }));
        let api = ring.group(GroupId::ROOT, GroupOptions::default().name("api")).unwrap();
        let ckpt = checkpoint(vec![OpDescriptor { group_path: "root/api".into(), ..read_desc(fd, 60) }]);
        let id = *resubmit_checked(&mut ring, &ckpt, Buffers::new())[0].as_ref().unwrap();
        let info = ring.ops();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].group, api, "the op went to a group left behind by a refused op");
        assert_eq!(ring.cancel_group(api).unwrap(), 1);
        assert!(ring.wait_for(id).unwrap().outcome.is_canceled());
        // Refused by the ring itself after the groups on its path were made (a draining
        // parent's new child drains too): the groups made for it are removed again.
        let gate = ring.group(GroupId::ROOT, GroupOptions::default().name("gate")).unwrap();
        ring.drain(gate).unwrap();
        let ckpt = checkpoint(vec![OpDescriptor { group_path: "root/gate/new/deeper".into(), ..read_desc(fd, 70) }]);
        let e = resubmit_checked(&mut ring, &ckpt, Buffers::new()).remove(0).unwrap_err();
        assert!(matches!(e.error, Error::Draining), "{e}");
        ring.remove_group(gate).expect("no group left behind under the draining one");
    }

    /// A splice stopped part-way (no buffer, no carried bytes: none are needed)
    /// continues for the bytes it had left, from where it stopped (the MissingData
    /// refusal meant for writes must not reach it).
    fn a_splice_stopped_part_way_continues(b: BackendChoice) {
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        let d = OpDescriptor {
            kind: OpKind::Splice,
            fd2: w2.as_raw_fd(),
            file2: Some(file_of(w2.as_raw_fd())),
            len: 6,
            transferred: 2,
            data: None,
            ..read_desc(r1.as_raw_fd(), 1)
        };
        let mut ring = ring(b, 8);
        let id = *resubmit_checked(&mut ring, &checkpoint(vec![d]), Buffers::new())[0].as_ref().unwrap();
        write_all(w1.as_raw_fd(), b"cdef");
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(4));
        assert_eq!(drain_nonblocking(r2.as_raw_fd()), b"cdef");
    }

    /// Two descriptors with one id (no ring writes that): both are refused, since
    /// neither can be told to be the op the buffers given for that id belong to; the
    /// given buffer comes back in the error, not dropped.
    fn duplicate_ids_are_refused_and_the_buffer_handed_back(b: BackendChoice) {
        let (r, _w) = pipe();
        let fd = r.as_raw_fd();
        let a = read_desc(fd, 7);
        let ckpt = checkpoint(vec![a.clone(), read_desc(fd, 8), a.clone()]);
        let mut bufs = Buffers::new();
        bufs.insert(a.id, b"mine".to_vec());
        let mut ring = ring(b, 16);
        let res = resubmit_checked(&mut ring, &ckpt, bufs);
        let mut back = Vec::new();
        for i in [0, 2] {
            let e = res[i].as_ref().unwrap_err();
            assert!(matches!(e.error, Error::InvalidArgument(_)), "{e}");
        }
        for r in res {
            if let Err(e) = r {
                back.extend(e.into_buffer().and_then(|m| m.into_plain()));
            }
        }
        assert_eq!(back, [b"mine".to_vec()], "the caller's buffer is handed back once");
        assert_eq!(ring.len(), 1);
        ring.cancel_all();
        collect(&mut ring, 1, 30);
    }

    /// A caller's buffer for an op that cannot be re-issued (its descriptor now names
    /// another file) holds the only copy of the bytes the op had received (carry_data
    /// off): it comes back in the error, bytes intact.
    fn a_refused_op_hands_back_the_callers_buffer(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).exact().user_data(1)).unwrap();
        write_all(w.as_raw_fd(), b"kept");
        let start = Instant::now();
        while ring.ops()[0].transferred < 4 {
            assert!(start.elapsed() < Duration::from_secs(10));
            ring.wait(1, Some(Duration::from_millis(10))).unwrap();
        }
        let ckpt = ring.quiesce(QuiescePolicy::default().carry_data(false)).unwrap();
        assert_eq!(ckpt.ops[0].transferred, 4);
        let bufs = Buffers::from_completions(ring.completions());
        drop(ring);
        drop(r);
        let (_other, _) = pipe(); // probably reuses the number: another file now
        let mut fresh = common::ring(b, 16);
        let e = resubmit_checked(&mut fresh, &ckpt, bufs).remove(0).unwrap_err();
        assert!(matches!(e.error, Error::InvalidFd { .. } | Error::FdChanged { .. }), "{e}");
        let buf = e.into_buffer().and_then(|m| m.into_plain()).expect("the buffer comes back");
        assert_eq!(&buf[..4], b"kept", "no byte lost");
        let _ = id;
    }

    /// Resubmitting into a group that is already canceled (or with no time left before
    /// its deadline) completes the op at once; its completion counts the bytes the op
    /// had moved before the checkpoint and hands them back (`Canceled { 0 }` before the fix).
    fn resubmit_into_a_canceled_group_counts_the_carried_bytes(b: BackendChoice) {
        let (r, _w) = pipe();
        let fd = r.as_raw_fd();
        let mut ring = ring(b, 16);
        let g = ring.group(GroupId::ROOT, GroupOptions::default().name("gone")).unwrap();
        ring.cancel_group(g).unwrap();
        let moved = OpDescriptor {
            len: 8,
            transferred: 3,
            exact: true,
            data: Some(b"abc".to_vec()),
            group_path: "root/gone".into(),
            ..read_desc(fd, 1)
        };
        let late = OpDescriptor {
            group_path: "root".into(),
            deadline_left: Some(Duration::ZERO),
            user_data: 2,
            id: CheckpointId { slot: 2, generation: 1 },
            ..moved.clone()
        };
        let res = resubmit_checked(&mut ring, &checkpoint(vec![moved, late]), Buffers::new());
        let a = ring.wait_for(*res[0].as_ref().unwrap()).unwrap();
        assert_eq!(a.outcome, Outcome::Canceled { transferred: 3 });
        assert_eq!(&a.data()[..3], b"abc");
        let t = ring.wait_for(*res[1].as_ref().unwrap()).unwrap();
        assert_eq!(t.outcome, Outcome::TimedOut { transferred: 3 });
        assert_eq!(&t.data()[..3], b"abc");
    }

    /// The same, with the old ring's buffers instead of carried bytes.
    fn resubmit_with_old_buffers_into_a_canceled_group_counts_them(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        let g = ring.group(GroupId::ROOT, GroupOptions::default().name("req")).unwrap();
        ring.submit(Op::read(r.as_raw_fd(), vec![0; 6]).exact().group(g).user_data(1)).unwrap();
        write_all(w.as_raw_fd(), b"ab");
        let start = Instant::now();
        while ring.ops()[0].transferred < 2 {
            assert!(start.elapsed() < Duration::from_secs(10));
            ring.wait(1, Some(Duration::from_millis(10))).unwrap();
        }
        let ckpt = ring.quiesce(QuiescePolicy::default().carry_data(false)).unwrap();
        let bufs = Buffers::from_completions(ring.completions());
        ring.cancel_group(g).unwrap();
        let id = *resubmit_checked(&mut ring, &ckpt, bufs)[0].as_ref().unwrap();
        ring.resume();
        let c = ring.wait_for(id).unwrap();
        assert_eq!((c.outcome, &c.data()[..2]), (Outcome::Canceled { transferred: 2 }, &b"ab"[..]));
    }

    /// Hostile JSON and postcard: negative or out-of-range numbers, unknown op kinds,
    /// another format version, durations whose nanoseconds overflow, bad hex, truncated
    /// and garbage bytes, a sequence length of 2^64 - 1. Decoding refuses each with
    /// `Error::Encoding` without a large allocation; what decodes is resubmitted
    /// with per-op answers only.
    fn hostile_encodings_are_refused_or_answered_per_op(b: BackendChoice) {
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        let base = checkpoint(vec![read_desc(fd, 1)]);
        let json = base.to_json().unwrap();
        let refused = [
            json.replace("\"len\": 4", "\"len\": -1"),
            json.replace("\"len\": 4", "\"len\": 18446744073709551616"),
            json.replace("\"len\": 4", "\"len\": 1e30"),
            json.replace("\"kind\": \"Read\"", "\"kind\": \"Frobnicate\""),
            json.replace(&format!("\"version\": {CHECKPOINT_VERSION}"), "\"version\": 1"),
            json.replace(&format!("\"version\": {CHECKPOINT_VERSION}"), "\"version\": 4294967296"),
            json.replace("\"sleep\": null", "\"sleep\": {\"secs\": 18446744073709551615, \"nanos\": 4000000000}"),
            json.replace("\"data\": \"\"", "\"data\": \"hex:zz\""),
            json.replace("\"data\": \"\"", "\"data\": \"hex:abc\""),
            json.replace("\"fd\": ", "\"fd\": 99999999999, \"x\": "),
            json[..json.len() / 2].to_string(),
            "\u{0}\u{1}garbage".to_string(),
            String::new(),
        ];
        for (i, text) in refused.iter().enumerate() {
            assert_ne!(text, &json, "case {i} did not change the text");
            let (res, largest) = largest_alloc(|| Checkpoint::from_json(text));
            assert!(matches!(res, Err(Error::Encoding(_))), "case {i}: {res:?}");
            assert!(largest < ALLOC_CEILING, "case {i}: {largest} bytes");
        }
        // Values that decode but no op can have: answered per op by resubmit.
        let per_op = [
            json.replace("\"len\": 4", "\"len\": 18446744073709551615"),
            json.replace("\"offset\": null", "\"offset\": 18446744073709551615"),
            json.replace("\"group_path\": \"root\"", "\"group_path\": \"nowhere/x\""),
            json.replace("\"kind\": \"Read\"", "\"kind\": \"Blocking\""),
            json.replace("\"data\": \"\"", "\"data\": \"a\\u0000b\""),
            json.replace("\"transferred\": 0", "\"transferred\": 9"),
        ];
        let mut ring = ring(b, 16);
        for (i, text) in per_op.iter().enumerate() {
            assert_ne!(text, &json, "case {i} did not change the text");
            let c = Checkpoint::from_json(text).unwrap_or_else(|e| panic!("case {i}: {e}"));
            let e = resubmit_checked(&mut ring, &c, Buffers::new()).remove(0).unwrap_err();
            assert!(is_refusal(&e.error), "case {i}: {e}");
        }
        // Postcard: every prefix and every single-byte change of a valid checkpoint
        // decodes to an error or to a checkpoint whose resubmit answers op by op.
        let bytes = base.to_bytes().unwrap();
        for n in 0..bytes.len() {
            assert!(matches!(Checkpoint::from_bytes(&bytes[..n]), Err(Error::Encoding(_))), "prefix {n}");
        }
        let mut ids = Vec::new();
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = bytes.clone();
                m[i] = v;
                let (dec, largest) = largest_alloc(|| Checkpoint::from_bytes(&m));
                assert!(largest < ALLOC_CEILING, "byte {i} = {v}: {largest} bytes");
                if let Ok(c) = dec {
                    for r in resubmit_checked(&mut ring, &c, Buffers::new()) {
                        match r {
                            Ok(id) => ids.push(id),
                            Err(e) => assert!(is_refusal(&e.error) || matches!(e.error, Error::TableFull { .. }), "byte {i} = {v}: {e}"),
                        }
                    }
                    // Keep room in the table: settle what was accepted so far.
                    if ring.len() > 8 {
                        settle(&mut ring, &ids);
                        ids.clear();
                    }
                }
            }
        }
        // A sequence claiming 2^64 - 1 ops: refused without reserving room for them.
        let mut lie = Vec::new();
        lie.push(CHECKPOINT_VERSION as u8);
        lie.push(1); // pid
        lie.extend([0xff; 9]);
        lie.push(0x01);
        let (res, largest) = largest_alloc(|| Checkpoint::from_bytes(&lie));
        assert!(matches!(res, Err(Error::Encoding(_))), "{res:?}");
        assert!(largest < ALLOC_CEILING, "{largest} bytes");
        settle(&mut ring, &ids);
        drop(w);
    }

    /// DESIGN I12: a descriptor number closed, its file deleted, and the number taken by
    /// a new file — which often gets the deleted file's inode number back: the op is
    /// refused (`FdChanged`), never run on the new file (the file's type and birth time
    /// tell them apart; before, an equal inode number let it through).
    fn a_number_reused_by_a_new_file_with_the_old_inode_is_refused(b: BackendChoice) {
        let mut reused = 0;
        for round in 0..8 {
            let (path, f) = temp_file(&format!("reuse-{b:?}-{round}"));
            let mut ring = Ring::builder().backend(b).capacity(8).max_in_flight(1).build().unwrap();
            let (r, _w) = pipe();
            ring.submit(Op::read(r.as_raw_fd(), vec![0; 4])).unwrap(); // takes the window
            ring.submit(Op::write_at(f.as_raw_fd(), 0, b"old!".to_vec()).user_data(9)).unwrap();
            let ckpt = ring.quiesce(QuiescePolicy::default()).unwrap();
            drop(ring);
            let d = ckpt.ops.iter().find(|d| d.user_data == 9).unwrap();
            let fd = f.as_raw_fd();
            let old_ino = d.file.as_ref().unwrap().ino;
            // The number stays taken throughout (other tests run in this process):
            // /dev/null holds it while the deleted file is closed and its inode freed.
            std::fs::remove_file(&path).unwrap();
            let null = std::fs::File::open("/dev/null").unwrap();
            // SAFETY: both descriptors are open; `f` owns `fd` and keeps owning it.
            assert_eq!(unsafe { libc::dup2(null.as_raw_fd(), fd) }, fd);
            // A FIFO where the file was (opened read-write: no partner needed), at the old number.
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let fifo = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            // SAFETY: as above.
            assert_eq!(unsafe { libc::dup2(fifo.as_raw_fd(), fd) }, fd);
            if rustix::fs::fstat(&f).unwrap().st_ino == old_ino {
                reused += 1;
            }
            let mut fresh = common::ring(b, 8);
            let i = ckpt.ops.iter().position(|d| d.user_data == 9).unwrap();
            let e = fresh.resubmit(&ckpt, Buffers::new()).remove(i).unwrap_err();
            assert!(matches!(e.error, Error::FdChanged { fd: n } if n == fd), "{e}");
            assert!(drain_nonblocking(fifo.as_raw_fd()).is_empty(), "the write reached the FIFO");
            drop(f);
            let _ = std::fs::remove_file(&path);
        }
        eprintln!("[{b:?}] the new file had the old inode number in {reused} of 8 rounds");
    }

    /// Ops whose deadline passes while a quiesce waits (a Bounded op detached, a
    /// group's deadline, an op queued behind a full window) are each accounted for:
    /// described (and `Canceled`), listed as unfinished (and in `ops()`), or finished
    /// with their own completion — and every one yields exactly one completion.
    fn ops_that_time_out_during_quiesce_are_accounted_for(b: BackendChoice) {
        let mut ring = Ring::builder().backend(b).capacity(16).max_in_flight(3).build().unwrap();
        let pipes: Vec<_> = (0..5).map(|_| pipe()).collect();
        let soon = Instant::now() + Duration::from_millis(300);
        let g = ring.group(GroupId::ROOT, GroupOptions::default().name("g").deadline(soon)).unwrap();
        let rd = |i: usize| Op::read(pipes[i].0.as_raw_fd(), vec![0; 4]).user_data(i as u64);
        let submitted: Vec<_> = [
            // Bounded by declaration (as device I/O would be): a deadline can only detach it.
            rd(0).class(CancelClass::Bounded).deadline(soon),
            rd(1).class(CancelClass::Bounded).group(g),
            rd(2).deadline(soon),
            // Behind the full window: still queued when the quiesce starts.
            rd(3).deadline(soon),
            rd(4).group(g),
        ]
        .into_iter()
        .map(|op| ring.submit(op).unwrap())
        .collect();
        ring.flush().unwrap();
        let ckpt = ring.quiesce(QuiescePolicy::default().bound(Duration::from_secs(3))).unwrap();
        let listed: HashMap<_, _> = ring.ops().into_iter().map(|o| (o.id, o)).collect();
        let described: HashSet<CheckpointId> = ckpt.ops.iter().map(|d| d.id).collect();
        let unfinished: HashMap<CheckpointId, OpState> = ckpt.unfinished.iter().map(|u| (u.id, u.state)).collect();
        let mut done: HashMap<_, _> = ring.completions().map(|c| (c.id, c)).collect();
        for id in &submitted {
            let cid = CheckpointId::from(*id);
            let c = done.get(id);
            match (described.contains(&cid), unfinished.get(&cid), c) {
                (true, None, Some(c)) => assert!(matches!(c.outcome, Outcome::Canceled { .. }), "{id:?}: {c:?}"),
                (false, Some(state), _) => {
                    let o = listed.get(id).unwrap_or_else(|| panic!("{id:?} unfinished but not in ops()"));
                    assert_eq!(o.state, *state);
                    if *state == OpState::Detached {
                        assert_eq!(c.map(|c| c.outcome), Some(Outcome::Detached));
                    }
                }
                (false, None, Some(c)) => assert!(!matches!(c.outcome, Outcome::Canceled { .. }), "{id:?} canceled but not described: {c:?}"),
                other => panic!("{id:?} not accounted for: {other:?}"),
            }
        }
        // Release the detached reads; nothing more is delivered for them.
        for (_, w) in &pipes {
            write_all(w.as_raw_fd(), b"done");
        }
        ring.resume();
        let start = Instant::now();
        while !ring.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(20), "{:?}", ring.ops());
            ring.wait(1, Some(Duration::from_millis(20))).unwrap();
            for c in ring.completions() {
                assert!(done.insert(c.id, c).is_none(), "two completions");
            }
        }
        assert_eq!(done.len(), submitted.len(), "exactly one completion per op");
    }

    /// An op whose cancel the kernel confirms only after the quiesce returned (here: a
    /// cancel wait of zero) is listed as unfinished; once its `Canceled` completion has
    /// arrived, the next quiesce describes it, so it can still be re-issued (before
    /// the fix no checkpoint ever described it).
    fn an_op_canceled_after_the_quiesce_returned_is_described_by_the_next(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).user_data(5)).unwrap();
        ring.flush().unwrap();
        let first = ring.quiesce(QuiescePolicy::default().cancel_wait(Duration::ZERO)).unwrap();
        let in_first = first.ops.iter().any(|d| d.user_data == 5);
        if !in_first {
            assert_eq!(first.unfinished.len(), 1, "{first:?}");
            assert_eq!(first.unfinished[0].state, OpState::CancelRequested);
            // Wait for the kernel's answer without taking the completion.
            let start = Instant::now();
            while !ring.ops().is_empty() {
                assert!(start.elapsed() < Duration::from_secs(10));
                ring.wait(1, Some(Duration::from_millis(20))).unwrap();
            }
        }
        let second = ring.quiesce(QuiescePolicy::default()).unwrap();
        let described = first.ops.iter().chain(&second.ops).filter(|d| d.user_data == 5).count();
        assert_eq!(described, 1, "described exactly once: {first:?} {second:?}");
        assert!(second.unfinished.is_empty());
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Canceled { transferred: 0 });
        let ckpt = if in_first { first } else { second };
        let mut fresh = common::ring(b, 16);
        let nid = *resubmit_checked(&mut fresh, &ckpt, Buffers::new())[0].as_ref().unwrap();
        write_all(w.as_raw_fd(), b"late");
        assert_eq!(fresh.wait_for(nid).unwrap().data(), b"late");
    }
}

/// A field of an [`OpDescriptor`] that some kinds use and others must leave empty.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Field {
    Fd,
    Fd2,
    Offset,
    Offset2,
    Len,
    Transferred,
    IovLens,
    Flags,
    Mode,
    Exact,
    Path,
    Path2,
    Addr,
    Sleep,
    Data,
}

const FIELDS: [Field; 15] = [
    Field::Fd,
    Field::Fd2,
    Field::Offset,
    Field::Offset2,
    Field::Len,
    Field::Transferred,
    Field::IovLens,
    Field::Flags,
    Field::Mode,
    Field::Exact,
    Field::Path,
    Field::Path2,
    Field::Addr,
    Field::Sleep,
    Field::Data,
];

/// The fields each kind uses (the contract `OpDescriptor::check` keeps: "only the fields
/// its kind uses"), from what each `Op` constructor takes.
fn fields_of(k: OpKind) -> &'static [Field] {
    use Field::*;
    match k {
        OpKind::Nop | OpKind::Blocking => &[],
        OpKind::Timeout => &[Sleep],
        OpKind::Read | OpKind::Write => &[Fd, Offset, Len, Transferred, Exact, Data],
        OpKind::Readv | OpKind::Writev => &[Fd, Offset, Len, Transferred, IovLens, Data],
        OpKind::Send | OpKind::Recv => &[Fd, Len, Transferred, Flags, Data],
        OpKind::OpenAt | OpKind::Statx => &[Fd, Flags, Mode, Path],
        OpKind::UnlinkAt => &[Fd, Flags, Path],
        OpKind::RenameAt => &[Fd, Fd2, Flags, Path, Path2],
        OpKind::Close => &[Fd],
        OpKind::Fsync | OpKind::Poll | OpKind::Accept => &[Fd, Flags],
        OpKind::Fallocate => &[Fd, Offset, Len, Flags],
        OpKind::Connect => &[Fd, Addr],
        OpKind::Splice => &[Fd, Fd2, Offset, Offset2, Len, Transferred],
        other => panic!("no field table for {other:?}"),
    }
}

/// Sets `f` to a value a descriptor of a kind that does not use it would never carry.
/// `open` is an open descriptor (with its identity, so only the kind can refuse it).
fn stray(d: &mut OpDescriptor, f: Field, open: RawFd) {
    match f {
        Field::Fd => {
            d.fd = open;
            d.file = Some(file_of(open));
        }
        Field::Fd2 => {
            d.fd2 = open;
            d.file2 = Some(file_of(open));
        }
        Field::Offset => d.offset = Some(0),
        Field::Offset2 => d.offset2 = Some(0),
        Field::Len => d.len = 4,
        Field::Transferred => d.transferred = 1,
        Field::IovLens => d.iov_lens = vec![4],
        Field::Flags => d.flags = 1,
        Field::Mode => d.mode = 1,
        Field::Exact => d.exact = true,
        Field::Path => d.path = Some(b"x".to_vec()),
        Field::Path2 => d.path2 = Some(b"y".to_vec()),
        Field::Addr => d.addr = Some("127.0.0.1:9".parse().unwrap()),
        Field::Sleep => d.sleep = Some(Duration::from_secs(1)),
        Field::Data => d.data = Some(Vec::new()),
    }
}

fn temp_file(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let p = std::env::temp_dir().join(format!("quell-hostile-{}-{name}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    (p, f)
}
