//! The portable backend and quell's interruptible thread pool, checked on both backends:
//! interrupting blocked workers, cancel storms on one pipe, FIFO service, pool
//! exhaustion, timeouts, and the inline fast paths.

#[macro_use]
mod common;

use common::{drain_nonblocking as read_available, pipe, raw, write_all};
use quell::{BackendChoice, CancelClass, Op, OpId, Outcome, Ring};
use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A ring on backend `b` with every op in flight at once (no user-space queueing).
fn ring(b: BackendChoice) -> Ring {
    common::ring(b, 16384)
}

/// A blocking `read(2)` into a fresh buffer, as an `io::Result`.
fn blocking_read(fd: std::os::fd::RawFd, len: usize) -> std::io::Result<usize> {
    let mut buf = vec![0u8; len];
    // SAFETY: valid buffer and length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Collects completions; those not asked for yet are kept for a later call.
#[derive(Default)]
struct Collector {
    got: std::collections::HashMap<OpId, quell::Completion>,
    seen: HashSet<OpId>,
}

impl Collector {
    /// Waits until every id has completed; returns the completions in id order.
    fn wait_all(
        &mut self,
        ring: &mut Ring,
        ids: &[OpId],
        limit: Duration,
    ) -> Vec<quell::Completion> {
        let start = Instant::now();
        while !ids.iter().all(|id| self.got.contains_key(id)) {
            assert!(
                start.elapsed() < limit,
                "only {} of {} completions after {:?}",
                ids.iter().filter(|id| self.got.contains_key(id)).count(),
                ids.len(),
                limit
            );
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            for c in ring.completions() {
                assert!(self.seen.insert(c.id), "two completions for one op");
                self.got.insert(c.id, c);
            }
        }
        ids.iter().map(|id| self.got.remove(id).unwrap()).collect()
    }
}

fn wait_all(ring: &mut Ring, ids: &[OpId], limit: Duration) -> Vec<quell::Completion> {
    let mut c = Collector::default();
    let out = c.wait_all(ring, ids, limit);
    assert!(c.got.is_empty(), "completions for ops not waited for");
    out
}

/// Submits `op`, lets it block, cancels it and returns (completion, cancel latency).
fn cancel_after_block(ring: &mut Ring, op: Op) -> (quell::Completion, Duration) {
    let id = ring.submit(op).unwrap();
    // Let a worker pick it up and block in its system call.
    ring.wait(1, Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    ring.cancel(id).unwrap();
    let c = ring.wait_for(id).unwrap();
    (c, t.elapsed())
}

both_backends! {
    fn interruptible_pipe_read_is_interrupted(b: BackendChoice) {
        let mut ring = ring(b);
        let (r, _w) = pipe();
        let op = Op::read(raw(&r), vec![0u8; 64]).class(CancelClass::Interruptible);
        let (c, took) = cancel_after_block(&mut ring, op);
        eprintln!("{b:?}: interruptible read canceled in {took:?}");
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert!(took < Duration::from_millis(100), "cancel took {took:?}");
        assert_eq!(c.into_buf().unwrap().len(), 64);
    }

    fn blocking_closure_read_is_interrupted(b: BackendChoice) {
        let mut ring = ring(b);
        let (r, _w) = pipe();
        let fd = raw(&r);
        let (c, took) = cancel_after_block(&mut ring, Op::blocking(move || blocking_read(fd, 64)));
        eprintln!("{b:?}: blocking closure canceled in {took:?}");
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
        assert!(took < Duration::from_millis(100), "cancel took {took:?}");
    }

    fn blocking_closure_runs_and_sees_cancel_flag(b: BackendChoice) {
        let mut ring = ring(b);
        let id = ring.submit(Op::blocking(|| Ok(7))).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(7));
        let id = ring.submit(Op::blocking(|| Err(std::io::Error::from_raw_os_error(libc::ENOENT)))).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Failed(quell::Errno::NOENT));
        // A computing closure that polls the flag and ignores signals.
        let id = ring
            .submit(Op::blocking(|| {
                let start = Instant::now();
                while !quell::blocking::cancel_requested() {
                    assert!(start.elapsed() < Duration::from_secs(10), "cancel flag never seen");
                    std::hint::spin_loop();
                }
                Err(std::io::Error::from_raw_os_error(libc::EINTR))
            }))
            .unwrap();
        ring.wait(1, Some(Duration::from_millis(20))).unwrap();
        ring.cancel(id).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Canceled { transferred: 0 });
        assert!(!quell::blocking::cancel_requested());
    }

    fn interrupted_read_loses_no_byte(b: BackendChoice) {
        // Data races in right before the cancel: it is either in the completion or
        // still in the pipe, never lost.
        let mut ring = ring(b);
        let (r, w) = pipe();
        for i in 0..40u32 {
            let op = Op::read(raw(&r), vec![0u8; 64]).class(CancelClass::Interruptible);
            let id = ring.submit(op).unwrap();
            ring.wait(1, Some(Duration::from_micros(200 * (i % 8) as u64))).unwrap();
            write_all(raw(&w), b"abcd");
            if i % 2 == 0 {
                std::thread::yield_now();
            }
            ring.cancel(id).unwrap();
            let c = ring.wait_for(id).unwrap();
            let mut got = c.data().to_vec();
            match c.outcome {
                Outcome::Done(n) | Outcome::Canceled { transferred: n } => assert_eq!(got.len(), n),
                other => panic!("unexpected outcome {other:?}"),
            }
            got.extend(read_available(raw(&r)));
            assert_eq!(got, b"abcd", "iteration {i}: bytes lost or duplicated");
        }
    }

    fn ten_thousand_reads_on_one_pipe_cancel_fd(b: BackendChoice) {
        cancel_storm(b, true);
    }

    fn ten_thousand_reads_on_one_pipe_cancel_all(b: BackendChoice) {
        cancel_storm(b, false);
    }

    fn pending_reads_are_served_in_fifo_order(b: BackendChoice) {
        let mut ring = ring(b);
        let (r, w) = pipe();
        let ids: Vec<OpId> = (0..100)
            .map(|_| ring.submit(Op::read(raw(&r), vec![0u8; 1])).unwrap())
            .collect();
        ring.flush().unwrap();
        ring.wait(1, Some(Duration::from_millis(10))).unwrap();
        assert_eq!(ring.completions().count(), 0, "a read finished without data");
        for i in 0..100u8 {
            write_all(raw(&w), &[i]);
        }
        let cs = wait_all(&mut ring, &ids, Duration::from_secs(10));
        let mut bytes = Vec::new();
        for c in &cs {
            assert_eq!(c.outcome, Outcome::Done(1));
            bytes.push(c.data()[0]);
        }
        if b == BackendChoice::Portable {
            // The portable backend serves the waiters of a descriptor strictly in order.
            assert_eq!(bytes, (0..100).collect::<Vec<u8>>(), "reads served out of order");
        } else {
            // io_uring wakes pending pipe reads in no particular order: each byte once.
            bytes.sort_unstable();
            assert_eq!(bytes, (0..100).collect::<Vec<u8>>(), "bytes lost or duplicated");
        }
    }

    fn pool_exhaustion_queues_and_cancels_with_certainty(b: BackendChoice) {
        let mut ring = Ring::builder()
            .backend(b)
            .pool_threads(2)
            .build()
            .unwrap();
        let (r, w) = pipe();
        let fd = raw(&r);
        let blockers: Vec<OpId> = (0..2)
            .map(|_| ring.submit(Op::blocking(move || blocking_read(fd, 1))).unwrap())
            .collect();
        let ran = Arc::new(AtomicUsize::new(0));
        let queued: Vec<OpId> = (0..20)
            .map(|_| {
                let ran = ran.clone();
                ring.submit(Op::blocking(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                }))
                .unwrap()
            })
            .collect();
        ring.flush().unwrap();
        ring.wait(1, Some(Duration::from_millis(50))).unwrap();
        assert_eq!(ring.completions().count(), 0);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a queued job ran while both workers were busy");
        // Half of the queued jobs are canceled: certainly, at once, while the pool is full.
        let (canceled, kept) = queued.split_at(10);
        for &id in canceled {
            ring.cancel(id).unwrap();
        }
        let mut col = Collector::default();
        let cs = col.wait_all(&mut ring, canceled, Duration::from_secs(5));
        assert!(cs.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 }));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        // Unblock the workers: the rest runs, the canceled jobs never do.
        write_all(raw(&w), b"xy");
        let cs = col.wait_all(&mut ring, &blockers, Duration::from_secs(10));
        assert!(cs.iter().all(|c| c.outcome == Outcome::Done(1)));
        let cs = col.wait_all(&mut ring, kept, Duration::from_secs(10));
        assert!(cs.iter().all(|c| c.outcome == Outcome::Done(1)));
        assert_eq!(ran.load(Ordering::SeqCst), 10, "a canceled job ran");
    }

    fn timeout_completes_and_cancels(b: BackendChoice) {
        let mut ring = ring(b);
        let t = Instant::now();
        let id = ring.submit(Op::timeout(Duration::from_millis(10))).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(0));
        assert!(t.elapsed() >= Duration::from_millis(10));
        let id = ring.submit(Op::timeout(Duration::from_secs(60))).unwrap();
        ring.flush().unwrap();
        ring.cancel(id).unwrap();
        let t = Instant::now();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Canceled { transferred: 0 });
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    fn socket_ping_pong_and_poll(b: BackendChoice) {
        let mut ring = ring(b);
        let (a, bsock) = std::os::unix::net::UnixStream::pair().unwrap();
        for i in 0..50u8 {
            let rid = ring.submit(Op::recv(bsock.as_raw_fd(), vec![0u8; 8], 0)).unwrap();
            let sid = ring.submit(Op::send(a.as_raw_fd(), vec![i; 3], 0)).unwrap();
            assert_eq!(ring.wait_for(sid).unwrap().outcome, Outcome::Done(3));
            let c = ring.wait_for(rid).unwrap();
            assert_eq!(c.data(), &[i; 3]);
            // read/write ops on a socket too
            let rid = ring.submit(Op::read(a.as_raw_fd(), vec![0u8; 8])).unwrap();
            let wid = ring.submit(Op::write(bsock.as_raw_fd(), vec![i; 2])).unwrap();
            assert_eq!(ring.wait_for(wid).unwrap().outcome, Outcome::Done(2));
            assert_eq!(ring.wait_for(rid).unwrap().data(), &[i; 2]);
        }
        let pid = ring.submit(Op::poll(a.as_raw_fd(), quell::Interest::READABLE)).unwrap();
        ring.wait(1, Some(Duration::from_millis(10))).unwrap();
        assert_eq!(ring.completions().count(), 0);
        write_all(bsock.as_raw_fd(), b"!");
        let c = ring.wait_for(pid).unwrap();
        assert!(matches!(c.outcome, Outcome::Done(ev) if ev & libc::POLLIN as usize != 0));
    }

    fn accept_and_connect(b: BackendChoice) {
        let mut ring = ring(b);
        for nonblocking in [true, false] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(nonblocking).unwrap();
            let addr = l.local_addr().unwrap();
            let aid = ring.submit(Op::accept(l.as_raw_fd())).unwrap();
            ring.wait(1, Some(Duration::from_millis(10))).unwrap();
            let flags = if nonblocking {
                rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC
            } else {
                rustix::net::SocketFlags::CLOEXEC
            };
            // A non-blocking socket connects inline (EINPROGRESS, then SO_ERROR once
            // writable); a blocking one on the pool.
            let s = rustix::net::socket_with(
                rustix::net::AddressFamily::INET,
                rustix::net::SocketType::STREAM,
                flags,
                None,
            )
            .unwrap();
            let cid = ring.submit(Op::connect(s.as_raw_fd(), addr)).unwrap();
            assert_eq!(ring.wait_for(cid).unwrap().outcome, Outcome::Done(0));
            let c = ring.wait_for(aid).unwrap();
            let Outcome::Done(fd) = c.outcome else { panic!("accept: {:?}", c.outcome) };
            // SAFETY: accept returned a new descriptor that we own.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
        }
    }

    fn partly_cached_reads_continue_on_the_pool(b: BackendChoice) {
        // The first 64 KiB are cached, the rest evicted: an RWF_NOWAIT read stops short
        // and the portable backend finishes it on the pool.
        let path = std::env::temp_dir().join(format!("quell-partial-{}-{b:?}", std::process::id()));
        let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.sync_all().unwrap();
        let mut ring = ring(b);
        for vectored in [false, true] {
            // SAFETY: plain advice on an open descriptor.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM); // no readahead
            }
            let mut head = vec![0u8; 65536];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
            let id = if vectored {
                ring.submit(Op::readv_at(f.as_raw_fd(), 0, vec![vec![0u8; 100_000], vec![0u8; 162_144]]))
                    .unwrap()
            } else {
                ring.submit(Op::read_at(f.as_raw_fd(), 0, vec![0u8; 262_144])).unwrap()
            };
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Done(262_144));
            let got = if vectored { c.bufs().unwrap().concat() } else { c.data().to_vec() };
            assert!(got == data[..262_144], "wrong bytes (vectored: {vectored})");
        }
    }

    fn file_reads_inline_and_on_the_pool(b: BackendChoice) {
        let dir = std::env::temp_dir().join(format!("quell-portable-{}-{b:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut ring = ring(b);
        // Cached reads, a read crossing end of file, vectored reads.
        let id = ring.submit(Op::read_at(f.as_raw_fd(), 4096, vec![0u8; 8192])).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.data(), &data[4096..4096 + 8192]);
        let id = ring.submit(Op::read_at(f.as_raw_fd(), 999_990, vec![0u8; 100])).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(10));
        assert_eq!(c.data(), &data[999_990..]);
        let id = ring
            .submit(Op::readv_at(f.as_raw_fd(), 10, vec![vec![0u8; 5], vec![0u8; 7]]))
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(12));
        assert_eq!(c.bufs().unwrap().concat(), &data[10..22]);
        // Writes (buffered ext4 cannot do RWF_NOWAIT: the pool), then read back.
        let id = ring.submit(Op::write_at(f.as_raw_fd(), 100, b"hello".to_vec())).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(5));
        let id = ring.submit(Op::read_at(f.as_raw_fd(), 100, vec![0u8; 5])).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().data(), b"hello");
        // Path ops on the pool.
        let id = ring.submit(Op::statx(libc::AT_FDCWD, &path, 0, libc::STATX_SIZE)).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Done(0));
        assert_eq!(c.statx().unwrap().stx_size, 1_000_000);
        let id = ring.submit(Op::openat(libc::AT_FDCWD, &path, libc::O_RDONLY, 0)).unwrap();
        let Outcome::Done(fd) = ring.wait_for(id).unwrap().outcome else { panic!("openat") };
        let id = ring.submit(Op::close(fd as i32)).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(0));
        let id = ring.submit(Op::unlinkat(libc::AT_FDCWD, &path, 0)).unwrap();
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Done(0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn cancel_storm(b: BackendChoice, by_fd: bool) {
    let mut ring = ring(b);
    let (r, _w) = pipe();
    let (r2, w2) = pipe();
    let ids: Vec<OpId> = (0..10_000)
        .map(|i| {
            ring.submit(Op::read(raw(&r), vec![0u8; 16]).user_data(i))
                .unwrap()
        })
        .collect();
    // A bystander on another pipe (only cancel_all reaches it).
    let other = ring.submit(Op::read(raw(&r2), vec![0u8; 16])).unwrap();
    ring.flush().unwrap();
    ring.wait(1, Some(Duration::from_millis(10))).unwrap();
    assert_eq!(ring.completions().count(), 0);
    let t = Instant::now();
    let reached = if by_fd {
        ring.cancel_fd(raw(&r))
    } else {
        ring.cancel_all()
    };
    assert_eq!(reached, if by_fd { 10_000 } else { 10_001 });
    let mut col = Collector::default();
    let cs = col.wait_all(&mut ring, &ids, Duration::from_secs(30));
    let took = t.elapsed();
    eprintln!("{b:?}: 10,000 reads canceled and reaped in {took:?}");
    for (i, c) in cs.iter().enumerate() {
        assert_eq!(c.user_data, i as u64);
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
    }
    if by_fd {
        write_all(raw(&w2), b"still here");
        assert_eq!(ring.wait_for(other).unwrap().data(), b"still here");
    } else {
        let c = col.wait_all(&mut ring, &[other], Duration::from_secs(5));
        assert!(c[0].outcome.is_canceled());
    }
    // The pipe still works after the storm.
    let (r3, w3) = (r, _w);
    let id = ring.submit(Op::read(raw(&r3), vec![0u8; 4])).unwrap();
    write_all(raw(&w3), b"ok");
    assert_eq!(ring.wait_for(id).unwrap().data(), b"ok");
    assert!(ring.is_empty());
}
