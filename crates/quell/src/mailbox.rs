//! The request list other threads leave for the ring's thread.
//!
//! Posting takes a short lock; the ring's thread pays one atomic load per loop when
//! nothing was posted. The protocol, checked under every interleaving by the `loom`
//! tests below (`RUSTFLAGS="--cfg loom" cargo test -p quell --release --lib loom`):
//!
//! - a poster pushes its item and raises `pending` while holding the lock;
//! - the taker lowers `pending` *before* taking the lock, then takes everything.
//!
//! So an item is never lost: either the taker's lock comes after the push (and takes
//! it), or the push comes after the taker lowered the flag (and raises it again, so the
//! next take sees it). An item is taken at most once because it leaves the list under
//! the lock. A flag raised with nothing behind it (a signal handler, or a push the
//! previous take already collected) costs one empty take.

use crate::sync::{AtomicBool, Mutex, Ordering};

/// A multi-producer list drained by one consumer, with a lock-free "anything there?".
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    pending: AtomicBool,
    items: Mutex<Vec<T>>,
}

impl<T> Mailbox<T> {
    pub(crate) fn new() -> Mailbox<T> {
        Mailbox {
            pending: AtomicBool::new(false),
            items: Mutex::new(Vec::new()),
        }
    }

    /// Leaves `item` for the consumer (any thread). The caller then wakes the consumer.
    pub(crate) fn post(&self, item: T) {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        q.push(item);
        // Under the lock, after the push: a take that lowered the flag before this
        // store either already holds the lock (then it runs after us and takes the
        // item: the lock orders it) or will see the flag raised again.
        self.pending.store(true, Ordering::Release);
    }

    /// Raises the flag without an item (async-signal-safe: one atomic store). Used by
    /// signal handlers, whose work the consumer finds elsewhere.
    pub(crate) fn mark_pending(&self) {
        self.pending.store(true, Ordering::Release);
    }

    /// Whether something may have been posted since the last take (consumer only).
    #[inline]
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Moves everything posted so far into `into` (consumer only).
    pub(crate) fn take(&self, into: &mut Vec<T>) {
        if !self.is_pending() {
            return;
        }
        // Lower the flag first: a post that lands after this store raises it again.
        self.pending.store(false, Ordering::Release);
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        into.append(&mut q);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The ring's side is modelled as it runs: take the requests, then sleep on the
    //! doorbell until it is rung, then clear it (the eventfd read in the backend's reap),
    //! and loop. The doorbell is modelled with the eventfd's semantics: ringing adds to a
    //! counter, waiting blocks while it is zero, clearing resets it. A lost request
    //! leaves the ring asleep with nobody left to ring: loom reports the deadlock.
    use super::Mailbox;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// Explores every interleaving with up to three preemptions (loom's recommended bound:
    /// bugs of this kind need one or two; without a bound three threads take minutes).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// The eventfd doorbell's semantics.
    struct Bell {
        count: Mutex<u64>,
        cv: Condvar,
    }

    impl Bell {
        fn new() -> Bell {
            Bell {
                count: Mutex::new(0),
                cv: Condvar::new(),
            }
        }

        fn ring(&self) {
            *self.count.lock().unwrap() += 1;
            self.cv.notify_one();
        }

        fn wait(&self) {
            let mut c = self.count.lock().unwrap();
            while *c == 0 {
                c = self.cv.wait(c).unwrap();
            }
        }

        fn clear(&self) {
            *self.count.lock().unwrap() = 0;
        }
    }

    /// Handles post `posts` (one thread each, each ringing the bell after posting, as
    /// `Handle::push` does); the ring loops until it has every request, and checks each
    /// came exactly once.
    fn ring_sees_every_request(posts: Vec<Vec<u32>>) {
        model(move || {
            let mb = Arc::new(Mailbox::<u32>::new());
            let bell = Arc::new(Bell::new());
            let mut want: Vec<u32> = posts.iter().flatten().copied().collect();
            want.sort();
            let handles: Vec<_> = posts
                .iter()
                .cloned()
                .map(|items| {
                    let (mb, bell) = (mb.clone(), bell.clone());
                    thread::spawn(move || {
                        for i in items {
                            mb.post(i);
                            bell.ring();
                        }
                    })
                })
                .collect();
            let mut got = Vec::new();
            loop {
                mb.take(&mut got);
                if got.len() >= want.len() {
                    break;
                }
                bell.wait();
                bell.clear();
            }
            for h in handles {
                h.join().unwrap();
            }
            // Nothing more arrives late: a take now finds nothing (no duplicates).
            mb.take(&mut got);
            got.sort();
            assert_eq!(got, want, "every request applied exactly once");
        });
    }

    #[test]
    fn loom_cancel_from_another_thread_is_never_lost() {
        ring_sees_every_request(vec![vec![1]]);
    }

    #[test]
    fn loom_two_handles_racing_the_drain() {
        ring_sees_every_request(vec![vec![1], vec![2]]);
    }

    #[test]
    fn loom_one_handle_posting_twice_while_the_ring_drains() {
        ring_sees_every_request(vec![vec![1, 2]]);
    }

    /// A signal handler's bare flag (no item) racing a post: the post is still taken
    /// exactly once and the bare flag costs at most an empty take.
    #[test]
    fn loom_bare_flag_does_not_hide_a_post() {
        model(|| {
            let mb = Arc::new(Mailbox::<u32>::new());
            let bell = Arc::new(Bell::new());
            let (m1, b1) = (mb.clone(), bell.clone());
            let poster = thread::spawn(move || {
                m1.post(7);
                b1.ring();
            });
            let (m2, b2) = (mb.clone(), bell.clone());
            let signal = thread::spawn(move || {
                m2.mark_pending();
                b2.ring();
            });
            let mut got = Vec::new();
            while got.is_empty() {
                mb.take(&mut got);
                if got.is_empty() {
                    bell.wait();
                    bell.clear();
                }
            }
            poster.join().unwrap();
            signal.join().unwrap();
            mb.take(&mut got);
            assert_eq!(got, vec![7]);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Mailbox;

    #[test]
    fn take_moves_everything_once_and_lowers_the_flag() {
        let mb = Mailbox::new();
        assert!(!mb.is_pending());
        mb.post(1);
        mb.post(2);
        assert!(mb.is_pending());
        let mut got = Vec::new();
        mb.take(&mut got);
        assert_eq!(got, vec![1, 2]);
        assert!(!mb.is_pending());
        mb.take(&mut got);
        assert_eq!(got, vec![1, 2], "nothing is taken twice");
        mb.mark_pending();
        assert!(mb.is_pending());
        mb.take(&mut got);
        assert_eq!(got, vec![1, 2]);
        assert!(!mb.is_pending());
    }

    #[test]
    fn posts_from_many_threads_all_arrive() {
        let mb = std::sync::Arc::new(Mailbox::new());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let mb = mb.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        mb.post(t * 1000 + i);
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        while got.len() < 4000 {
            mb.take(&mut got);
            std::thread::yield_now();
        }
        for t in threads {
            t.join().unwrap();
        }
        mb.take(&mut got);
        got.sort();
        assert_eq!(got, (0..4000).collect::<Vec<_>>());
    }
}
