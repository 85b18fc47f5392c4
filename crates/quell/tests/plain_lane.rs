//! The ring's plain lane (`ring/lane.rs`) takes ops that use none of the optional
//! machinery on a shorter path. These tests hold it to the same contract as the full
//! path at the points where the two could differ: validation, ordering behind queued
//! ops, scopes reaching lane ops, cancel after completion, and the state between
//! finishing and taking a completion.

mod common;

use common::*;
use quell::{
    BackendChoice, CancelClass, CancelStatus, Error, GroupId, GroupOptions, Op, OpState, Outcome,
    Ring,
};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn windowed(b: BackendChoice, window: u32) -> Ring {
    Ring::builder()
        .backend(b)
        .capacity(64)
        .max_in_flight(window)
        .build()
        .expect("ring")
}

both_backends! {
    /// A declared class spares the descriptor's classification, never its validation.
    fn declared_class_does_not_skip_validation(b: BackendChoice) {
        let mut ring = ring(b, 16);
        for class in [CancelClass::Prompt, CancelClass::Bounded] {
            let e = ring
                .submit(Op::read(-5, vec![7; 10]).class(class))
                .unwrap_err();
            assert!(matches!(e.error(), Error::InvalidFd { fd: -5 }), "{e}");
            assert_eq!(e.into_op().into_buf().unwrap(), vec![7; 10]);
            let e = ring
                .submit(Op::write(-1, vec![8; 3]).class(class).user_data(9))
                .unwrap_err();
            assert!(matches!(e.error(), Error::InvalidFd { fd: -1 }), "{e}");
            assert_eq!(e.into_op().into_buf().unwrap(), vec![8; 3]);
        }
        assert!(ring.is_empty());
        // The ring is unharmed: a plain op still runs.
        let id = ring.submit(Op::nop().user_data(1)).unwrap();
        let c = ring.wait_for(id).unwrap();
        assert_eq!((c.outcome, c.user_data), (Outcome::Done(0), 1));
    }

    /// With the dispatch window full, plain ops queue behind the ops already waiting
    /// (FIFO), and canceling them while queued is immediate.
    fn plain_ops_queue_behind_a_full_window(b: BackendChoice) {
        let mut ring = windowed(b, 1);
        let (r, w) = pipe();
        let blocker = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4])).unwrap();
        ring.flush().unwrap();
        let nops: Vec<_> = (0..5u64)
            .map(|i| ring.submit(Op::nop().user_data(i)).unwrap())
            .collect();
        let queued = ring
            .ops()
            .iter()
            .filter(|o| o.state == OpState::Queued)
            .count();
        assert_eq!(queued, 5, "nops must wait behind the blocker");
        assert_eq!(ring.cancel(nops[4]).unwrap(), CancelStatus::Requested);
        write_all(w.as_raw_fd(), b"ping");
        let mut order = Vec::new();
        while order.len() < 6 {
            ring.wait(1, Some(Duration::from_secs(10))).unwrap();
            while let Some(c) = ring.next_completion() {
                order.push((c.id, c.outcome));
            }
        }
        // The canceled nop completed at once; the blocker next; then nops 0..4 in order.
        assert_eq!(order[0], (nops[4], Outcome::Canceled { transferred: 0 }));
        assert_eq!(order[1], (blocker, Outcome::Done(4)));
        let rest: Vec<_> = order[2..].iter().map(|&(id, _)| id).collect();
        assert_eq!(rest, nops[..4]);
        assert!(order[2..].iter().all(|&(_, o)| o == Outcome::Done(0)));
        assert!(ring.is_empty());
    }

    /// A finished plain op whose completion was not taken yet: `cancel` says
    /// `AlreadyDone`, `ops()` no longer lists it, `len()` still counts it, and the
    /// completion is taken exactly once with the buffer back.
    fn finished_but_not_taken(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        write_all(w.as_raw_fd(), b"abc");
        let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).user_data(5)).unwrap();
        let nop = ring.submit(Op::nop()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ring.poll().unwrap() < 2 {
            assert!(Instant::now() < deadline, "ops did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::AlreadyDone);
        assert_eq!(ring.cancel(nop).unwrap(), CancelStatus::AlreadyDone);
        assert!(ring.ops().is_empty());
        assert_eq!(ring.len(), 2);
        let c = ring.wait_for(id).unwrap();
        assert_eq!((c.outcome, c.user_data), (Outcome::Done(3), 5));
        assert_eq!(c.data(), b"abc");
        assert_eq!(c.into_buf().unwrap().len(), 8);
        assert_eq!(ring.cancel(id).unwrap(), CancelStatus::NotFound);
        assert!(matches!(ring.wait_for(id), Err(Error::UnknownOp)));
        assert_eq!(ring.next_completion().map(|c| c.id), Some(nop));
        assert!(ring.next_completion().is_none());
        assert!(ring.is_empty());
    }

    /// Ops in a live group with a far deadline take the plain lane; the group's cancel
    /// and its deadline, moved near later, still reach them (their own, later deadline
    /// was dropped in favour of the group's timer).
    fn scopes_reach_plain_ops(b: BackendChoice) {
        let mut ring = ring(b, 64);
        let far = Instant::now() + Duration::from_secs(3600);
        let outer = ring
            .group(GroupId::ROOT, GroupOptions::default().deadline(far))
            .unwrap();
        let inner = ring.group(outer, GroupOptions::default()).unwrap();
        let (r, _w) = pipe();
        let read = |g| Op::read(r.as_raw_fd(), vec![0; 4]).group(g).deadline(far);
        let canceled: Vec<_> = (0..4).map(|_| ring.submit(read(inner)).unwrap()).collect();
        let timed: Vec<_> = (0..4).map(|_| ring.submit(read(outer)).unwrap()).collect();
        ring.flush().unwrap();
        assert_eq!(ring.group_stats(inner).unwrap().in_flight, 4);
        assert_eq!(ring.group_stats(outer).unwrap().in_flight, 4);
        assert_eq!(ring.cancel_group(inner).unwrap(), 4);
        for id in canceled {
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
            assert_eq!(c.into_buf().unwrap().len(), 4);
        }
        ring.set_group_deadline(outer, Instant::now() + Duration::from_millis(20))
            .unwrap();
        for id in timed {
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::TimedOut { transferred: 0 });
        }
        assert_eq!(ring.group_stats(outer).unwrap().in_flight, 0);
        assert!(ring.is_empty());
        // An own deadline earlier than the group's still fires by itself.
        let g = ring
            .group(GroupId::ROOT, GroupOptions::default().deadline(far))
            .unwrap();
        let (r2, _w2) = pipe();
        let soon = Instant::now() + Duration::from_millis(20);
        let id = ring
            .submit(Op::read(r2.as_raw_fd(), vec![0; 4]).group(g).deadline(soon))
            .unwrap();
        assert_eq!(
            ring.wait_for(id).unwrap().outcome,
            Outcome::TimedOut { transferred: 0 }
        );
    }

    /// A cancel that arrives after a plain read moved bytes but before it was reaped
    /// gets the honest outcome from the full path, and no byte is lost (I11).
    fn cancel_racing_a_plain_read_loses_nothing(b: BackendChoice) {
        let mut ring = ring(b, 16);
        let (r, w) = pipe();
        let mut got = Vec::new();
        for round in 0..300u32 {
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 16])).unwrap();
            ring.flush().unwrap();
            write_all(w.as_raw_fd(), &round.to_le_bytes());
            if round % 3 != 0 {
                ring.cancel(id).unwrap();
            }
            let c = ring.wait_for(id).unwrap();
            match c.outcome {
                Outcome::Done(n) | Outcome::Canceled { transferred: n } => {
                    got.extend_from_slice(&c.data()[..n]);
                }
                o => panic!("unexpected {o}"),
            }
        }
        got.extend(drain_nonblocking(r.as_raw_fd()));
        let want: Vec<u8> = (0..300u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(got, want);
    }
}
