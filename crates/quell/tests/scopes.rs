//! Cancel scopes (DESIGN I6, I7): groups, drain, deadlines, shields, derived ops.

mod common;

use common::*;
use quell::{CancelClass, Error, GroupId, GroupOptions, Op, OpState, Outcome, Ring};
use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

both_backends! {
    fn drain_cancels_queued_refuses_new_and_waits_for_in_flight(b: BackendChoice) {
        let mut ring = Ring::builder().backend(b).capacity(2048).max_in_flight(100).build().unwrap();
        let g = ring.group(GroupId::ROOT, GroupOptions::default().name("work")).unwrap();
        let (r, w) = pipe();
        for i in 0..1100u64 {
            ring.submit(Op::read(r.as_raw_fd(), vec![0; 1]).group(g).user_data(i)).unwrap();
        }
        ring.poll().unwrap();
        let st = ring.group_stats(g).unwrap();
        assert_eq!((st.in_flight, st.queued), (100, 1000));
        assert_eq!(ring.drain(g).unwrap(), 1000);
        // Queued ones complete at once, without waiting.
        let mut canceled = 0;
        while let Some(c) = ring.next_completion() {
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
            assert!(c.user_data >= 100, "an in-flight op was canceled by drain");
            canceled += 1;
        }
        assert_eq!(canceled, 1000);
        // The gate is closed to newcomers, and the buffer comes back.
        let e = ring.submit(Op::read(r.as_raw_fd(), vec![9; 5]).group(g)).unwrap_err();
        assert!(matches!(e.error(), Error::Draining));
        assert_eq!(e.into_op().into_buf().unwrap(), vec![9; 5]);
        assert!(!ring.is_drained(g).unwrap());
        assert!(!ring.wait_drained(g, Some(ms(50))).unwrap(), "drained before in-flight ops ended");
        // The root group is not draining (the nop waits for room in the dispatch window).
        let other = ring.submit(Op::nop()).unwrap();
        write_all(w.as_raw_fd(), &[7u8; 100]);
        let ok = ring.wait_drained(g, Some(Duration::from_secs(10))).unwrap();
        assert!(ok, "not drained: {:?} {:?} {:?}", ring.group_stats(g), ring.stats(), ring.ops().len());
        assert_eq!(ring.wait_for(other).unwrap().outcome, Outcome::Done(0));
        let done: Vec<_> = ring.completions().collect();
        assert_eq!(done.len(), 100);
        assert!(done.iter().all(|c| c.outcome == Outcome::Done(1) && c.data() == [7]));
    }

    fn cancel_reaches_grandchildren_but_not_a_shield(b: BackendChoice) {
        let mut ring = ring(b, 64);
        let parent = ring.group(GroupId::ROOT, GroupOptions::default().name("parent")).unwrap();
        let child = ring.group(parent, GroupOptions::default().name("child")).unwrap();
        let grandchild = ring.group(child, GroupOptions::default()).unwrap();
        assert!(matches!(
            ring.group(parent, GroupOptions::default().shielded(true)),
            Err(Error::InvalidArgument(_))
        ), "a shield needs its own deadline");
        let shield_deadline = Instant::now() + ms(300);
        let shield = ring
            .group(parent, GroupOptions::default().name("cleanup").shielded(true).deadline(shield_deadline))
            .unwrap();
        assert_eq!(ring.group_path(grandchild).unwrap(), format!("root/parent/child/g{}", 3));
        let (r, _w) = pipe();
        let a = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).group(grandchild)).unwrap();
        let s = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).group(shield)).unwrap();
        ring.poll().unwrap();
        assert_eq!(ring.cancel_group(parent).unwrap(), 1, "the shielded op is not reached");
        assert_eq!(ring.wait_for(a).unwrap().outcome, Outcome::Canceled { transferred: 0 });
        let info = ring.ops();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].id, s);
        assert_eq!(info[0].state, OpState::InFlight);
        assert_eq!(info[0].group, shield);
        assert!(!ring.group_stats(shield).unwrap().canceled);
        // A canceled scope stays canceled: new ops complete at once.
        let late = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).group(grandchild)).unwrap();
        let c = ring.next_completion().expect("completes at once");
        assert_eq!((c.id, c.outcome), (late, Outcome::Canceled { transferred: 0 }));
        // The shield still meets its own deadline.
        let c = ring.wait_for(s).unwrap();
        assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 });
        assert!(Instant::now() >= shield_deadline);
        assert!(ring.group_stats(parent).unwrap().canceled);
    }

    fn op_and_group_deadlines_time_out(b: BackendChoice) {
        let mut ring = ring(b, 64);
        let (r, _w) = pipe();
        let at = Instant::now() + ms(40);
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).deadline(at)).unwrap();
        assert_eq!(ring.ops()[0].deadline, Some(at));
        assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::TimedOut { transferred: 0 });
        assert!(Instant::now() >= at);
        // Group deadline, inherited by a child group created later.
        let g_at = Instant::now() + ms(40);
        let g = ring.group(GroupId::ROOT, GroupOptions::default().deadline(g_at)).unwrap();
        let child = ring.group(g, GroupOptions::default()).unwrap();
        let x = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).group(child)).unwrap();
        let y = ring.submit(Op::timeout(ms(1)).group(g)).unwrap();
        assert_eq!(ring.ops().iter().find(|o| o.id == x).unwrap().deadline, Some(g_at));
        assert_eq!(ring.wait_for(y).unwrap().outcome, Outcome::Done(0), "finished before the deadline");
        assert_eq!(ring.wait_for(x).unwrap().outcome, Outcome::TimedOut { transferred: 0 });
        assert!(Instant::now() >= g_at);
        // A deadline already past completes at once.
        let z = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).deadline(Instant::now())).unwrap();
        assert_eq!(ring.next_completion().map(|c| (c.id, c.outcome)), Some((z, Outcome::TimedOut { transferred: 0 })));
    }

    fn bounded_op_past_its_deadline_is_detached_and_memory_kept(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        // A pipe read declared Bounded stands in for device I/O that cannot be canceled.
        let id = ring
            .submit(Op::read(r.as_raw_fd(), vec![0; 8]).class(CancelClass::Bounded).deadline(Instant::now() + ms(30)))
            .unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Detached);
        assert!(c.buf().is_none(), "the ring keeps the buffer until the kernel is done");
        assert_eq!(ring.stats().detached, 1);
        assert_eq!(ring.ops()[0].state, OpState::Detached);
        assert_eq!(ring.cancel(id).unwrap(), quell::CancelStatus::NotFound);
        write_all(w.as_raw_fd(), b"late");
        let start = Instant::now();
        while ring.stats().detached_finished == 0 {
            ring.wait(1, Some(ms(50))).unwrap();
            assert!(start.elapsed() < Duration::from_secs(10));
        }
        assert!(ring.ops().is_empty(), "memory released after the kernel's completion");
        assert!(ring.next_completion().is_none(), "no second completion");
    }

    fn hundred_thousand_random_deadlines_each_complete_once(b: BackendChoice) {
        let mut ring = Ring::builder().backend(b).capacity(65_536).max_in_flight(65_536).build().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..2u64 {
            let n = 50_000u64;
            let start = Instant::now();
            let mut deadlines = Vec::with_capacity(n as usize);
            for i in 0..n {
                let sleep = ms(1 + rnd(200));
                let at = start + ms(1 + rnd(200));
                deadlines.push((at, sleep));
                ring.submit(Op::timeout(sleep).deadline(at).user_data(round * n + i)).unwrap();
            }
            let mut seen = vec![false; n as usize];
            let mut got = 0;
            while got < n {
                ring.wait(1, Some(Duration::from_secs(5))).unwrap();
                let now = Instant::now();
                for c in ring.completions() {
                    let i = (c.user_data - round * n) as usize;
                    assert!(!seen[i], "two completions for op {i}");
                    seen[i] = true;
                    got += 1;
                    let (at, _) = deadlines[i];
                    match c.outcome {
                        Outcome::Done(0) => {}
                        Outcome::TimedOut { transferred: 0 } => assert!(now >= at, "timed out before its deadline"),
                        o => panic!("unexpected {o}"),
                    }
                }
                assert!(start.elapsed() < Duration::from_secs(60), "stuck at {got}");
            }
        }
        assert!(ring.is_empty());
    }

    fn exact_read_retries_and_shares_the_cancel(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 10]).exact()).unwrap();
        ring.poll().unwrap();
        write_all(w.as_raw_fd(), b"abc");
        ring.wait(0, Some(ms(20))).unwrap();
        write_all(w.as_raw_fd(), b"defghij");
        let c = ring.wait_for(id).unwrap();
        assert_eq!((c.outcome, c.data()), (Outcome::Done(10), &b"abcdefghij"[..]));
        // Canceled part-way: the completion reports the bytes moved so far.
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 10]).exact()).unwrap();
        ring.poll().unwrap();
        write_all(w.as_raw_fd(), b"xyz");
        let start = Instant::now();
        while ring.ops()[0].transferred == 0 {
            ring.wait(0, Some(ms(10))).unwrap();
            assert!(start.elapsed() < Duration::from_secs(10));
        }
        ring.cancel(id).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::Canceled { transferred: 3 });
        assert_eq!(c.data(), b"xyz");
    }

    fn split_read_with_deadline_never_dispatches_later_parts(b: BackendChoice) {
        let size = 8u64 << 20;
        let fs = FaultFs::mount_temp(
            Spec::new().file(FileSpec::pattern("slow", size).rule(Rule::read(0..size, Behavior::Delay { ms: 20 }))),
        )
        .expect("mount faultfs");
        let file = std::fs::File::open(fs.path("slow")).unwrap();
        let mut ring = Ring::builder().backend(b).part_size(1 << 20).build().unwrap();
        let at = Instant::now() + ms(400);
        let id = ring.submit(Op::read_at(file.as_raw_fd(), 0, vec![0; size as usize]).deadline(at)).unwrap();
        let c = ring.wait_for(id).unwrap();
        let Outcome::TimedOut { transferred } = c.outcome else { panic!("{}", c.outcome) };
        assert!(transferred < size as usize, "the whole read ran");
        let read = fs.stats().bytes_read;
        assert!(read <= transferred as u64 + (1 << 20), "daemon served {read} bytes, op moved {transferred}: later parts were dispatched");
        for (i, byte) in c.data().iter().enumerate() {
            assert_eq!(*byte, quell_faultfs::pattern_byte(i as u64));
        }
        // Nothing more arrives later.
        std::thread::sleep(ms(200));
        assert!(fs.stats().bytes_read <= read + (1 << 20));
    }

    fn deadline_on_a_hung_fuse_read_times_out(b: BackendChoice) {
        let fs = FaultFs::mount_temp(Spec::new().file(FileSpec::pattern("hang", 1 << 20).rule(Rule::read(0..1 << 20, Behavior::Hang))))
            .expect("mount faultfs");
        let file = std::fs::File::open(fs.path("hang")).unwrap();
        let mut ring = ring(b, 16);
        let id = ring.submit(Op::read_at(file.as_raw_fd(), 0, vec![0; 4096]).deadline(Instant::now() + ms(100))).unwrap();
        ring.poll().unwrap();
        assert_eq!(ring.ops()[0].dispatch_class, CancelClass::Interruptible);
        let c = ring.wait_for(id).unwrap();
        assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 });
        assert!(fs.wait_interrupts(1, Duration::from_secs(5)));
    }
}
