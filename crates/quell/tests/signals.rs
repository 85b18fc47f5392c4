//! A signal bound to a group: the first SIGINT drains it, the second cancels it (I7).
//! In its own binary: it raises SIGINT in the test process.

mod common;

use common::*;
use quell::{GroupId, GroupOptions, Op, Outcome, Ring, SignalAction};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// SIGINT is process-wide: the two backends' tests take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

both_backends! {
    fn first_sigint_drains_second_cancels(b: BackendChoice) {
        let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let mut ring = Ring::builder().backend(b).capacity(256).max_in_flight(10).build().unwrap();
        let g = ring.group(GroupId::ROOT, GroupOptions::default().name("work")).unwrap();
        ring.bind_signal(libc::SIGINT, g, SignalAction::DrainThenCancel).unwrap();
        let (r, _w) = pipe();
        for i in 0..30u64 {
            ring.submit(Op::read(r.as_raw_fd(), vec![0; 1]).group(g).user_data(i)).unwrap();
        }
        ring.poll().unwrap();
        assert_eq!(ring.group_stats(g).unwrap().in_flight, 10);
        // SAFETY: raising a signal this ring has a handler for.
        unsafe { libc::raise(libc::SIGINT) };
        let c = collect(&mut ring, 20, 10);
        assert!(c.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 } && c.user_data >= 10));
        assert!(ring.group_stats(g).unwrap().draining);
        let e = ring.submit(Op::read(r.as_raw_fd(), vec![0; 1]).group(g)).unwrap_err();
        assert!(matches!(e.error(), quell::Error::Draining));
        assert!(!ring.wait_drained(g, Some(Duration::from_millis(50))).unwrap());
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGINT) };
        let c = collect(&mut ring, 10, 10);
        assert!(c.iter().all(|c| c.outcome == Outcome::Canceled { transferred: 0 } && c.user_data < 10));
        assert!(ring.wait_drained(g, Some(Duration::from_secs(5))).unwrap());
    }
}
