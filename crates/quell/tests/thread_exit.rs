//! A ring is `Send`: its owner may change threads, and the thread that submitted an op
//! may exit before the op completes (a thread pool retiring a worker, a `block_on` on a
//! short-lived thread). On io_uring the kernel cancels the requests of an exiting task
//! (measured on 6.18: a pending socket read completes -ECANCELED). Nobody asked for that
//! cancel, so it must not reach the user: the op completes as if the thread had lived.

#[macro_use]
mod common;

use common::write_all;
use quell::{Op, Outcome, Ring};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

both_backends! {
    fn an_op_outlives_the_thread_that_submitted_it(b: BackendChoice) {
        for round in 0..20 {
            let mut ring = Ring::builder().backend(b).build().unwrap();
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 4])).unwrap();
            // Hand the op to the kernel from a thread that then exits.
            let mut ring = std::thread::spawn(move || {
                ring.poll().unwrap();
                ring
            })
            .join()
            .unwrap();
            std::thread::sleep(Duration::from_millis(5));
            write_all(w.as_raw_fd(), b"data");
            let start = Instant::now();
            let c = loop {
                ring.wait(1, Some(Duration::from_millis(100))).unwrap();
                if let Some(c) = ring.next_completion() {
                    break c;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "round {round}: no completion");
            };
            assert_eq!(c.id, id);
            assert_eq!(c.outcome, Outcome::Done(4), "round {round}: nobody canceled this read");
            assert_eq!(c.data(), b"data");
            assert_eq!(ring.stats().cancel_requests, 0);
        }
    }

    /// The same through the futures layer: `block_on` on threads that come and go.
    fn futures_driven_from_short_lived_threads_are_not_canceled(b: BackendChoice) {
        let ring = Ring::builder().backend(b).build().unwrap();
        let d = quell::future::Driver::new(ring);
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = r.as_raw_fd();
        let fut = d.submit(Op::read(fd, vec![0u8; 4])).unwrap();
        let d2 = d.clone();
        std::thread::spawn(move || d2.turn().unwrap()).join().unwrap();
        write_all(w.as_raw_fd(), b"late");
        let c = d.block_on(fut);
        assert_eq!(c.outcome, Outcome::Done(4));
        assert_eq!(c.data(), b"late");
    }
}
