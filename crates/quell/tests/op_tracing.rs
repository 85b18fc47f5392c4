//! Each op's life shows up as `tracing` events under the target `quell::op`:
//! submitted, dispatched, cancel requested, completed — in that order.

mod common;

use common::*;
use quell::{Op, Outcome};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the message of every `quell::op` event.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<String>>>,
}

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target() == "quell::op"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut s = String::new();
        e.record(&mut Message(&mut s));
        self.events.lock().unwrap().push(s);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

both_backends! {
    fn an_ops_life_is_traced(b: BackendChoice) {
        let rec = Recorder::default();
        let events = rec.events.clone();
        tracing::subscriber::with_default(rec, || {
            let mut ring = ring(b, 8);
            let (r, _w) = pipe();
            let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).user_data(42)).unwrap();
            ring.poll().unwrap();
            ring.cancel(id).unwrap();
            assert_eq!(ring.wait_for(id).unwrap().outcome, Outcome::Canceled { transferred: 0 });
        });
        let ev = events.lock().unwrap().clone();
        let pos = |what: &str| {
            ev.iter()
                .position(|e| e.starts_with(what))
                .unwrap_or_else(|| panic!("no {what:?} event in {ev:?}"))
        };
        let (s, d, c, f) = (pos("submitted"), pos("dispatched"), pos("cancel requested"), pos("completed"));
        assert!(s < d && d < c && c < f, "{ev:?}");
        assert!(ev[s].contains("user_data=42"), "{}", ev[s]);
        assert!(ev[f].contains("canceled"), "{}", ev[f]);
    }

    /// A subscriber that appears after the ring was built is noticed at the next poll
    /// or wait; before that, and with none, nothing is recorded.
    fn a_later_subscriber_is_noticed_at_the_next_poll(b: BackendChoice) {
        let mut ring = ring(b, 8);
        let id = ring.submit(Op::nop().user_data(1)).unwrap();
        ring.wait_for(id).unwrap();
        let rec = Recorder::default();
        let events = rec.events.clone();
        tracing::subscriber::with_default(rec, || {
            ring.poll().unwrap();
            let id = ring.submit(Op::nop().user_data(2)).unwrap();
            ring.wait_for(id).unwrap();
        });
        let ev = events.lock().unwrap().clone();
        assert!(ev.iter().any(|e| e.starts_with("submitted") && e.contains("user_data=2")), "{ev:?}");
        assert!(!ev.iter().any(|e| e.contains("user_data=1")), "{ev:?}");
        assert!(ev.iter().any(|e| e.starts_with("completed")), "{ev:?}");
    }
}
