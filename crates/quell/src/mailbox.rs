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
//!
//! When the consumer goes away (the ring shuts down) it *closes* the mailbox: under the
//! same lock it takes what is left (and drops it, so a reply channel inside an item
//! disconnects) and marks the list closed; a post that takes the lock afterwards is
//! refused and gets its item back. Whatever the interleaving, an item is taken,
//! dropped by the close, or refused: never left behind with nobody to take it.

use crate::sync::{AtomicBool, Mutex, Ordering};

/// A multi-producer list drained by one consumer, with a lock-free "anything there?".
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    pending: AtomicBool,
    /// `None` once closed.
    items: Mutex<Option<Vec<T>>>,
}

impl<T> Mailbox<T> {
    pub(crate) fn new() -> Mailbox<T> {
        Mailbox {
            pending: AtomicBool::new(false),
            items: Mutex::new(Some(Vec::new())),
        }
    }

    /// Leaves `item` for the consumer (any thread). The caller then wakes the consumer.
    /// `Err(item)` if the mailbox is closed: nobody will ever take it.
    pub(crate) fn post(&self, item: T) -> Result<(), T> {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let Some(items) = q.as_mut() else {
            return Err(item);
        };
        items.push(item);
        // Under the lock, after the push: a take that lowered the flag before this
        // store either already holds the lock (then it runs after us and takes the
        // item: the lock orders it) or will see the flag raised again.
        self.pending.store(true, Ordering::Release);
        Ok(())
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
        if let Some(items) = q.as_mut() {
            into.append(items);
        }
    }

    /// Closes the mailbox for good (the consumer is going away): later posts are
    /// refused, and what was posted and not taken is returned, for the caller to drop
    /// outside the lock. Any thread; idempotent.
    pub(crate) fn close(&self) -> Vec<T> {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        q.take().unwrap_or_default()
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
                            mb.post(i).unwrap();
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
                m1.post(7).unwrap();
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

    /// Posters race the ring going away (a last take, then the close): each item is
    /// taken, dropped by the close, or refused back to its poster, exactly once, and
    /// nothing is left in the mailbox afterwards (a reply channel stranded there would
    /// keep its asker waiting for a ring that is gone).
    fn close_strands_nothing(posts: Vec<u32>) {
        model(move || {
            let mb = Arc::new(Mailbox::<u32>::new());
            let posters: Vec<_> = posts
                .iter()
                .map(|&i| {
                    let mb = mb.clone();
                    thread::spawn(move || mb.post(i).err())
                })
                .collect();
            let mut got = Vec::new();
            mb.take(&mut got);
            got.extend(mb.close());
            for p in posters {
                got.extend(p.join().unwrap());
            }
            got.sort();
            let mut want = posts.clone();
            want.sort();
            assert_eq!(
                got, want,
                "every item taken, dropped or refused exactly once"
            );
            assert!(
                mb.close().is_empty(),
                "nothing posted after the close stays"
            );
            assert_eq!(mb.post(9), Err(9), "a closed mailbox refuses");
        });
    }

    #[test]
    fn loom_close_racing_a_post_strands_nothing() {
        close_strands_nothing(vec![1]);
    }

    #[test]
    fn loom_close_racing_two_posts_strands_nothing() {
        close_strands_nothing(vec![1, 2]);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Mailbox;

    #[test]
    fn take_moves_everything_once_and_lowers_the_flag() {
        let mb = Mailbox::new();
        assert!(!mb.is_pending());
        mb.post(1).unwrap();
        mb.post(2).unwrap();
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
    fn close_returns_what_is_left_and_refuses_later_posts() {
        let mb = Mailbox::new();
        mb.post(1).unwrap();
        mb.post(2).unwrap();
        let mut got = Vec::new();
        mb.take(&mut got);
        mb.post(3).unwrap();
        assert_eq!(mb.close(), vec![3]);
        assert_eq!(mb.post(4), Err(4));
        mb.take(&mut got);
        assert_eq!(got, vec![1, 2], "a closed mailbox gives nothing more");
        assert!(mb.close().is_empty());
    }

    #[test]
    fn posts_from_many_threads_all_arrive() {
        let mb = std::sync::Arc::new(Mailbox::new());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let mb = mb.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        mb.post(t * 1000 + i).unwrap();
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
