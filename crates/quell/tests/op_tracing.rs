//! Each op's life shows up in `tracing` under the target `quell::op`: one span
//! `quell.op` per op, opened at submission and closed when its completion is taken,
//! with the lifecycle events (submitted, dispatched, cancel requested, completed)
//! inside it and the outcome recorded on it.

mod common;

use common::fault::{mount, wait_id, Watchdog};
use common::*;
use quell::{CancelClass, Chain, GroupId, GroupOptions, Op, OpState, Outcome, Ring};
use quell_faultfs::{Behavior, FileSpec, Rule, Spec};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span as the subscriber saw it.
#[derive(Clone, Debug, Default)]
struct SpanRec {
    name: &'static str,
    fields: BTreeMap<String, String>,
    /// Handles alive (new_span + clone_span − try_close).
    refs: usize,
    closes: usize,
}

/// An event: its message and other fields, and the span it was given as parent.
#[derive(Clone, Debug)]
struct EventRec {
    message: String,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
}

#[derive(Default)]
struct Log {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
}

/// Records every `quell::op` span (creation, recorded fields, close) and event.
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Log>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target() == "quell::op"
    }
    fn new_span(&self, a: &Attributes<'_>) -> Id {
        let mut rec = SpanRec {
            name: a.metadata().name(),
            refs: 1,
            ..SpanRec::default()
        };
        a.record(&mut Fields(&mut rec.fields));
        let mut log = self.log.lock().unwrap();
        log.spans.push(rec);
        Id::from_u64(log.spans.len() as u64)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut log = self.log.lock().unwrap();
        let s = &mut log.spans[id.into_u64() as usize - 1];
        values.record(&mut Fields(&mut s.fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut fields = BTreeMap::new();
        e.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        let parent = e.parent().map(Id::into_u64);
        self.log.lock().unwrap().events.push(EventRec {
            message,
            fields,
            parent,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
    fn clone_span(&self, id: &Id) -> Id {
        self.log.lock().unwrap().spans[id.into_u64() as usize - 1].refs += 1;
        id.clone()
    }
    fn try_close(&self, id: Id) -> bool {
        let mut log = self.log.lock().unwrap();
        let s = &mut log.spans[id.into_u64() as usize - 1];
        s.refs -= 1;
        if s.refs == 0 {
            s.closes += 1;
            return true;
        }
        false
    }
}

impl Recorder {
    /// The span (1-based id, record) of the op with `user_data`; exactly one must exist.
    fn span_of(&self, user_data: u64) -> (u64, SpanRec) {
        let log = self.log.lock().unwrap();
        let hits: Vec<_> = log
            .spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.fields.get("user_data") == Some(&user_data.to_string()))
            .map(|(i, s)| (i as u64 + 1, s.clone()))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "spans for user_data {user_data}: {:?}",
            log.spans
        );
        hits.into_iter().next().unwrap()
    }

    /// The messages of the events whose parent is span `id`, in order.
    fn events_in(&self, id: u64) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.events
            .iter()
            .filter(|e| e.parent == Some(id))
            .map(|e| e.message.clone())
            .collect()
    }

    fn event(&self, id: u64, message: &str) -> EventRec {
        let log = self.log.lock().unwrap();
        log.events
            .iter()
            .find(|e| e.parent == Some(id) && e.message == message)
            .unwrap_or_else(|| panic!("no {message:?} event in span {id}: {:?}", log.events))
            .clone()
    }

    fn span_count(&self) -> usize {
        self.log.lock().unwrap().spans.len()
    }

    fn all_events(&self) -> Vec<EventRec> {
        self.log.lock().unwrap().events.clone()
    }
}

/// Asserts that `got` holds `want` as a subsequence (in that order).
fn in_order(got: &[String], want: &[&str]) {
    let mut it = got.iter();
    for w in want {
        assert!(
            it.any(|g| g == w),
            "expected {want:?} in order, got {got:?}"
        );
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A regular file of `len` pattern bytes in the temp directory, removed on drop.
struct TempFile(std::path::PathBuf, Vec<u8>);

impl TempFile {
    fn new(tag: &str, len: usize) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("quell-op-tracing-{tag}-{}", std::process::id()));
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        TempFile(path, data)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

both_backends! {
    /// A canceled pipe read: one span, its life inside it in order, closed exactly once
    /// — when the completion is taken, not when it is ready.
    fn an_ops_life_is_one_span(b: BackendChoice) {
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let mut ring = ring(b, 8);
            let (r, _w) = pipe();
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).user_data(42)).unwrap();
            ring.poll().unwrap();
            ring.cancel(id).unwrap();
            let start = Instant::now();
            while ring.wait(1, Some(ms(50))).unwrap() == 0 {
                assert!(start.elapsed() < Duration::from_secs(10), "the cancel never completed");
            }
            let (span, s) = rec.span_of(42);
            assert_eq!(s.name, "quell.op");
            assert_eq!(s.fields["kind"], "read");
            assert_eq!(s.fields["fd"], r.as_raw_fd().to_string());
            assert_eq!(s.fields["group"], "root");
            assert_eq!(s.fields["id"], id.to_string());
            assert_eq!(s.fields["class"], CancelClass::Prompt.to_string());
            assert_eq!(s.closes, 0, "ready but not taken: the span is still open");
            let c = ring.next_completion().unwrap();
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
            let (_, s) = rec.span_of(42);
            assert_eq!(s.closes, 1, "taken: the span closed");
            assert_eq!(s.fields["outcome"], "canceled(transferred=0)");
            assert_eq!(s.fields["transferred"], "0");
            in_order(&rec.events_in(span), &["submitted", "dispatched", "cancel requested", "completed"]);
            assert_eq!(rec.event(span, "completed").fields["outcome"], "canceled(transferred=0)");
            assert_eq!(rec.event(span, "submitted").fields["user_data"], "42");
            drop(ring);
            assert_eq!(rec.span_of(42).1.closes, 1, "closed exactly once");
        });
    }

    /// Each op gets its own span, with its own outcome: Done (with the bytes moved),
    /// Canceled, TimedOut (queued and in flight); every span closes once.
    fn each_op_has_its_span_and_outcome(b: BackendChoice) {
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let mut ring = Ring::builder().backend(b).capacity(16).max_in_flight(2).build().unwrap();
            let (r, w) = pipe();
            let (r2, _w2) = pipe();
            write_all(w.as_raw_fd(), b"hello");
            let read = ring.submit(Op::read(r.as_raw_fd(), vec![0; 5]).user_data(1)).unwrap();
            let nop = ring.submit(Op::nop().user_data(2)).unwrap();
            // Beyond the dispatch window of 2: canceled while queued.
            let queued = ring.submit(Op::read(r2.as_raw_fd(), vec![0; 4]).user_data(3)).unwrap();
            ring.cancel(queued).unwrap();
            let late = ring
                .submit(Op::read(r2.as_raw_fd(), vec![0; 4]).user_data(4).deadline(Instant::now() + ms(30)))
                .unwrap();
            assert_eq!(ring.wait_for(read).unwrap().outcome, Outcome::Done(5));
            assert_eq!(ring.wait_for(nop).unwrap().outcome, Outcome::Done(0));
            assert_eq!(ring.wait_for(queued).unwrap().outcome, Outcome::Canceled { transferred: 0 });
            assert_eq!(ring.wait_for(late).unwrap().outcome, Outcome::TimedOut { transferred: 0 });
            assert_eq!(rec.span_count(), 4, "one span per op");
            let outcomes: Vec<_> = (1..=4).map(|u| rec.span_of(u).1.fields["outcome"].clone()).collect();
            assert_eq!(outcomes, ["done(5)", "done(0)", "canceled(transferred=0)", "timed-out(transferred=0)"]);
            assert_eq!(rec.span_of(1).1.fields["transferred"], "5");
            assert!(!rec.span_of(2).1.fields.contains_key("transferred"), "a nop moves no bytes");
            for u in 1..=4 {
                let (span, s) = rec.span_of(u);
                assert_eq!(s.closes, 1, "span of op {u}: {s:?}");
                let ev = rec.events_in(span);
                assert_eq!(ev.first().map(String::as_str), Some("submitted"), "op {u}: {ev:?}");
                assert_eq!(ev.last().map(String::as_str), Some("completed"), "op {u}: {ev:?}");
            }
            // The queued op never reached the backend; the timed-out one did.
            assert!(!rec.events_in(rec.span_of(3).0).contains(&"dispatched".to_string()));
            in_order(&rec.events_in(rec.span_of(4).0), &["submitted", "cancel requested", "completed"]);
            assert_eq!(rec.event(rec.span_of(4).0, "cancel requested").fields["timed_out"], "true");
            // No lifecycle event escaped its span.
            assert!(rec.all_events().iter().all(|e| e.parent.is_some()), "{:?}", rec.all_events());
        });
    }

    /// The span names the op's group by path, matching `ops()`; canceling the group
    /// shows up as a cancel request inside each member's span.
    fn the_span_names_the_group_and_sees_its_cancel(b: BackendChoice) {
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let mut ring = ring(b, 8);
            let (r, _w) = pipe();
            let job = ring.group(GroupId::ROOT, GroupOptions::default().name("job")).unwrap();
            let inner = ring.group(job, GroupOptions::default()).unwrap();
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 4]).group(inner).user_data(11)).unwrap();
            ring.poll().unwrap();
            let info = ring.ops().into_iter().find(|o| o.id == id).unwrap();
            assert_eq!(info.state, OpState::InFlight);
            let (span, s) = rec.span_of(11);
            assert_eq!(s.fields["group"], &*info.group_path);
            assert!(s.fields["group"].starts_with("root/job/"), "{}", s.fields["group"]);
            ring.cancel_group(job).unwrap();
            assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Canceled { transferred: 0 });
            in_order(&rec.events_in(span), &["submitted", "dispatched", "cancel requested", "completed"]);
            assert_eq!(rec.span_of(11).1.closes, 1);
        });
    }

    /// The headline case: a read hung in a FUSE daemon, canceled. Its span shows
    /// submitted → dispatched → cancel requested → completed(Canceled).
    fn a_canceled_hung_fuse_read_is_traced_in_its_span(b: BackendChoice) {
        let Some(fs) = mount(
            Spec::new().file(FileSpec::pattern("hang.bin", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang))),
        ) else {
            return;
        };
        let wd = Watchdog::new(&fs, 30);
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let mut ring = ring(b, 8);
            let file = std::fs::File::open(fs.path("hang.bin")).unwrap();
            let id = ring.submit(Op::read_at(file.as_raw_fd(), 0, vec![0; 4096]).user_data(9)).unwrap();
            ring.poll().unwrap();
            assert!(fs.wait_parked(1, Duration::from_secs(5)), "the read never reached the daemon");
            ring.cancel(id).unwrap();
            let (c, _) = wait_id(&mut ring, id, 10);
            assert_eq!(c.outcome, Outcome::Canceled { transferred: 0 });
            let (span, s) = rec.span_of(9);
            assert_eq!(s.fields["class"], CancelClass::Interruptible.to_string());
            assert_eq!(s.fields["outcome"], "canceled(transferred=0)");
            assert_eq!(s.closes, 1);
            assert_eq!(
                rec.events_in(span),
                ["submitted", "dispatched", "cancel requested", "completed"],
                "one of each, in order"
            );
            assert_eq!(rec.event(span, "completed").fields["outcome"], "canceled(transferred=0)");
        });
        assert!(!wd.fired());
    }

    /// A Bounded op past its deadline is detached: its span records `detached`, stays
    /// open after the Detached completion is taken, and closes when the kernel's own
    /// completion arrives.
    fn a_detached_ops_span_ends_at_the_kernels_completion(b: BackendChoice) {
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let mut ring = ring(b, 8);
            let (r, w) = pipe();
            let id = ring
                .submit(
                    Op::read(r.as_raw_fd(), vec![0; 8])
                        .class(CancelClass::Bounded)
                        .deadline(Instant::now() + ms(30))
                        .user_data(5),
                )
                .unwrap();
            assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Detached);
            let (span, s) = rec.span_of(5);
            assert_eq!(s.fields["outcome"], "detached");
            assert_eq!(s.closes, 0, "the kernel still owns the memory: the op is not over");
            write_all(w.as_raw_fd(), b"late");
            let start = Instant::now();
            while ring.stats().detached_finished == 0 {
                ring.wait(1, Some(ms(50))).unwrap();
                assert!(start.elapsed() < Duration::from_secs(10));
            }
            let (_, s) = rec.span_of(5);
            assert_eq!(s.closes, 1, "closed at the kernel's completion");
            assert_eq!(s.fields["kernel_result"], "4");
            in_order(
                &rec.events_in(span),
                &["submitted", "dispatched", "cancel requested", "completed", "detached delivered; kernel still owns the memory", "kernel done"],
            );

            // The other order: the kernel finishes before the Detached completion is
            // taken. The span stays open until it is taken.
            let id = ring
                .submit(
                    Op::read(r.as_raw_fd(), vec![0; 8])
                        .class(CancelClass::Bounded)
                        .deadline(Instant::now() + ms(30))
                        .user_data(15),
                )
                .unwrap();
            let start = Instant::now();
            while ring.wait(1, Some(ms(50))).unwrap() == 0 {
                assert!(start.elapsed() < Duration::from_secs(10));
            }
            write_all(w.as_raw_fd(), b"later");
            while ring.stats().detached_finished < 2 {
                std::thread::sleep(ms(5));
                ring.poll().unwrap();
                assert!(start.elapsed() < Duration::from_secs(10));
            }
            let (span, s) = rec.span_of(15);
            assert_eq!(s.closes, 0, "the Detached completion is not taken yet");
            assert_eq!(s.fields["kernel_result"], "5");
            let c = ring.next_completion().unwrap();
            assert_eq!((c.id, c.outcome), (id, Outcome::Detached));
            assert_eq!(rec.span_of(15).1.closes, 1, "closed when taken");
            in_order(&rec.events_in(span), &["submitted", "dispatched", "cancel requested", "completed", "kernel done"]);
        });
    }

    /// A positioned read split into parts is one op: its parts are dispatched inside
    /// the same span, which records the total.
    fn a_split_reads_parts_share_its_span(b: BackendChoice) {
        let f = TempFile::new(&format!("parts-{b:?}"), 256 * 1024);
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let mut ring = Ring::builder().backend(b).part_size(64 * 1024).build().unwrap();
            let file = std::fs::File::open(&f.0).unwrap();
            let id = ring.submit(Op::read_at(file.as_raw_fd(), 0, vec![0; 256 * 1024]).user_data(6)).unwrap();
            let c = ring.wait_for(id).unwrap();
            assert_eq!(c.outcome, Outcome::Done(256 * 1024));
            assert_eq!(c.into_buf().unwrap(), f.1);
            assert_eq!(rec.span_count(), 1, "parts are not ops of their own");
            let (span, s) = rec.span_of(6);
            assert_eq!(s.fields["transferred"], (256 * 1024).to_string());
            assert_eq!(s.closes, 1);
            assert_eq!(
                rec.events_in(span),
                ["submitted", "dispatched", "part dispatched", "part dispatched", "part dispatched", "completed"]
            );
        });
    }

    /// A chain is one op: its steps are queued and dispatched inside its span.
    fn a_chains_steps_share_its_span(b: BackendChoice) {
        let f = TempFile::new(&format!("chain-{b:?}"), 8192);
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let mut ring = ring(b, 8);
            let id = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::openat(libc::AT_FDCWD, &f.0, libc::O_RDONLY, 0))
                        .then(Op::read_at(Chain::OPENED, 0, vec![0; 4096]))
                        .then(Op::close(Chain::OPENED))
                        .user_data(8),
                )
                .unwrap();
            let c = ring.wait_for(id).unwrap();
            assert!(c.outcome.is_done(), "{}", c.outcome);
            assert_eq!(rec.span_count(), 1, "a chain is one op");
            let (span, s) = rec.span_of(8);
            assert_eq!(s.closes, 1);
            assert_eq!(s.fields["kind"], "openat");
            if b == quell::BackendChoice::Uring {
                // The kernel runs the steps as one linked batch (see chain_link.rs).
                assert_eq!(
                    rec.events_in(span),
                    ["submitted", "dispatched", "linked batch", "linked step ended", "linked step ended", "linked step ended", "completed"]
                );
                return;
            }
            assert_eq!(
                rec.events_in(span),
                ["submitted", "dispatched", "chain step queued", "dispatched", "chain step queued", "dispatched", "completed"]
            );
            let log = rec.log.lock().unwrap();
            let steps: Vec<_> = log
                .events
                .iter()
                .filter(|e| e.message == "chain step queued")
                .map(|e| (e.fields["step"].clone(), e.fields["kind"].clone()))
                .collect();
            assert_eq!(steps, [("1".to_string(), "read".to_string()), ("2".to_string(), "close".to_string())]);
        });
    }

    /// A subscriber that appears after the ring was built is noticed at the next poll
    /// or wait: ops submitted before that have no span and no events.
    fn a_later_subscriber_is_noticed_at_the_next_poll(b: BackendChoice) {
        let mut ring = ring(b, 8);
        let id = ring.submit(Op::nop().user_data(1)).unwrap();
        ring.wait_for(id).unwrap();
        let rec = Recorder::default();
        tracing::subscriber::with_default(rec.clone(), || {
            let early = ring.submit(Op::nop().user_data(3)).unwrap();
            ring.poll().unwrap();
            let id = ring.submit(Op::nop().user_data(2)).unwrap();
            ring.wait_for(id).unwrap();
            ring.wait_for(early).unwrap();
        });
        assert_eq!(rec.span_count(), 1, "only the op submitted after the poll");
        let (span, s) = rec.span_of(2);
        assert_eq!(s.closes, 1);
        in_order(&rec.events_in(span), &["submitted", "dispatched", "completed"]);
        // The early nop was already dispatched (straight to the backend) before the poll.
        let stray: Vec<_> = rec.all_events().into_iter().filter(|e| e.parent.is_none()).collect();
        assert!(stray.iter().all(|e| e.message == "completed"), "{stray:?}");
    }
}
