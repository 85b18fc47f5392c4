//! Hidden (feature `fuzzing`): a model-checking driver over a ring on the fake backend.
//!
//! [`run`] interprets bytes as actions (submit, cancel by id / fd / all / through a
//! handle, end an op in the fake kernel with a chosen result, answer a cancel with one of
//! the races io_uring allows, let time pass, poll, take completions, shut the ring down)
//! and checks after each step:
//! - exactly once: every accepted op yields one completion, never two, never zero (the
//!   final shutdown must deliver all the rest);
//! - honest outcomes: the outcome is what the fake kernel's result means (a `Canceled`
//!   only after a cancel request; `transferred` ≤ requested); an op that never reached the
//!   kernel can only end `Canceled { 0 }` after a cancel;
//! - `len()`, `stats()` and `ops()` agree with the model (state `Queued` only for ops the
//!   kernel never saw, `CancelRequested` only after a cancel, ids/fd/len/user data match);
//! - buffers come back whole; no panic.

use crate::backend::fake;
use crate::id::key_of;
use crate::{
    CancelClass, CancelStatus, Completion, Interest, Op, OpId, OpKind, OpState, Outcome, Ring,
};
use std::collections::HashMap;
use std::time::Duration;

pub use crate::backend::fake::{FakeControl, FakeOp, FakeState};

/// Builds a ring on the fake backend.
pub fn fake_ring(capacity: usize, max_in_flight: u32) -> (Ring, FakeControl) {
    let ctl = FakeControl::default();
    fake::arm(ctl.clone());
    let ring = Ring::builder()
        .capacity(capacity)
        .max_in_flight(max_in_flight)
        .teardown_timeout(Duration::from_secs(10))
        .build()
        .expect("fake ring");
    (ring, ctl)
}

struct ModelOp {
    id: OpId,
    kind: OpKind,
    fd: i32,
    len: usize,
    cancel_requested: bool,
}

struct Model {
    ring: Ring,
    ctl: FakeControl,
    ops: HashMap<u64, ModelOp>,
    next_ud: u64,
    accepted: u64,
    taken: u64,
}

const FDS: i32 = 4;
const FD_BASE: i32 = 1000;

/// The outcome the contract gives a kernel result (DESIGN.md I4), written from the spec.
fn expected(kind: OpKind, len: usize, canceled: bool, res: i64) -> Outcome {
    if res >= 0 {
        let n = res as usize;
        // A write stopped short by a cancel was stopped; a read that came back short
        // completed (a single read is short whenever less was there).
        if canceled && kind == OpKind::Write && n < len {
            return Outcome::Canceled { transferred: n };
        }
        return Outcome::Done(n);
    }
    let e = (-res) as i32;
    if kind == OpKind::Timeout && e == libc::ETIME {
        return Outcome::Done(0);
    }
    if canceled && (e == libc::ECANCELED || e == libc::EINTR) {
        return Outcome::Canceled { transferred: 0 };
    }
    Outcome::Failed(crate::Errno::from_raw_os_error(e))
}

impl Model {
    fn new(cap_byte: u8, window_byte: u8) -> Model {
        let cap = 1 + (cap_byte as usize % 32);
        let window = 1 + (window_byte as u32 % 8);
        let (ring, ctl) = fake_ring(cap, window);
        Model {
            ring,
            ctl,
            ops: HashMap::new(),
            next_ud: 1,
            accepted: 0,
            taken: 0,
        }
    }

    fn take(&mut self, c: Completion) {
        let m = self.ops.remove(&c.user_data).unwrap_or_else(|| {
            panic!(
                "completion for unknown or already completed op {}: {}",
                c.user_data, c.outcome
            )
        });
        self.taken += 1;
        assert_eq!(m.id, c.id);
        assert_eq!(m.kind, c.kind());
        let key = key_of(m.id.slot, m.id.gen);
        let st = self.ctl.state();
        let o = c.outcome;
        if st.started.contains(&key) {
            let res = *st
                .results
                .get(&key)
                .expect("the ring completed an op the kernel never finished");
            let want = expected(m.kind, m.len, st.cancel_calls.contains(&key), res);
            assert_eq!(
                o, want,
                "op {} ({:?}) kernel result {res}",
                c.user_data, m.kind
            );
        } else {
            assert_eq!(
                o,
                Outcome::Canceled { transferred: 0 },
                "an op the kernel never saw"
            );
        }
        if o.is_canceled() {
            assert!(
                m.cancel_requested,
                "op {} canceled without a cancel request",
                c.user_data
            );
        }
        if matches!(m.kind, OpKind::Read | OpKind::Write) {
            assert!(o.transferred() <= m.len);
            assert_eq!(
                c.buf().map(|b| b.len()),
                Some(m.len),
                "the buffer comes back whole"
            );
        }
    }

    fn check(&mut self) {
        assert_eq!(self.ring.len() as u64, self.accepted - self.taken);
        assert_eq!(self.ring.len(), self.ops.len());
        let s = self.ring.stats();
        assert_eq!(s.submitted, self.accepted);
        assert!(s.completed >= self.taken && s.completed <= self.accepted);
        let infos = self.ring.ops();
        assert!(infos.len() <= self.ops.len());
        let st = self.ctl.state();
        for i in &infos {
            let m = self
                .ops
                .get(&i.user_data)
                .expect("ops() lists an op the model does not know");
            assert_eq!((i.id, i.kind, i.fd), (m.id, m.kind, m.fd));
            if matches!(m.kind, OpKind::Read | OpKind::Write) {
                assert_eq!(i.len, m.len as u64);
            }
            let key = key_of(m.id.slot, m.id.gen);
            match i.state {
                OpState::Queued => {
                    assert!(!st.started.contains(&key), "Queued but the kernel has it");
                    assert_eq!(i.class, CancelClass::Queued);
                }
                OpState::InFlight => assert!(st.started.contains(&key)),
                OpState::CancelRequested => {
                    assert!(st.started.contains(&key));
                    assert!(m.cancel_requested);
                    assert!(st.cancel_calls.contains(&key));
                }
                s => panic!("unexpected state {s}"),
            }
        }
    }

    fn drain(&mut self) {
        let cs: Vec<Completion> = self.ring.completions().collect();
        for c in cs {
            self.take(c);
        }
    }

    fn pick(&self, b: u8) -> Option<u64> {
        if self.ops.is_empty() {
            return None;
        }
        let mut keys: Vec<u64> = self.ops.keys().copied().collect();
        keys.sort_unstable();
        Some(keys[b as usize % keys.len()])
    }

    fn shutdown(&mut self) {
        for m in self.ops.values_mut() {
            m.cancel_requested = true;
        }
        let rest = self.ring.shutdown();
        for c in rest {
            self.take(c);
        }
        assert!(
            self.ops.is_empty(),
            "{} ops lost at shutdown",
            self.ops.len()
        );
        assert_eq!(
            self.ring.stats().leaked_at_teardown,
            0,
            "ops never ended at teardown"
        );
        assert!(self.ctl.state().in_flight.is_empty());
    }
}

/// Runs one fuzz input. Panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut it = data.iter().copied();
    let mut next = move || it.next();
    let (Some(a), Some(b)) = (next(), next()) else {
        return;
    };
    let mut m = Model::new(a, b);
    let mut steps = 0;
    while let Some(op) = next() {
        steps += 1;
        if steps > 4096 {
            break;
        }
        let arg = next().unwrap_or(0);
        let arg2 = next().unwrap_or(0);
        match op % 16 {
            0..=3 => {
                let fd = FD_BASE + (arg % FDS as u8) as i32;
                let class = [
                    CancelClass::Prompt,
                    CancelClass::Interruptible,
                    CancelClass::Bounded,
                ][(arg / 4 % 3) as usize];
                let len = (arg2 as usize % 8) * 16;
                let ud = m.next_ud;
                m.next_ud += 1;
                let o = match arg2 / 8 % 6 {
                    0 | 1 => Op::read_at(fd, ud, vec![0; len]),
                    2 => Op::write_at(fd, ud, vec![1; len]),
                    3 => Op::nop(),
                    4 => Op::poll(fd, Interest::READABLE),
                    _ => Op::timeout(Duration::from_millis(1)),
                };
                let kind = o.kind();
                let fd = if matches!(kind, OpKind::Nop | OpKind::Timeout) {
                    -1
                } else {
                    fd
                };
                match m.ring.submit(o.class(class).user_data(ud)) {
                    Ok(id) => {
                        m.accepted += 1;
                        let len = if matches!(kind, OpKind::Read | OpKind::Write) {
                            len
                        } else {
                            0
                        };
                        m.ops.insert(
                            ud,
                            ModelOp {
                                id,
                                kind,
                                fd,
                                len,
                                cancel_requested: false,
                            },
                        );
                    }
                    Err(e) => {
                        assert!(
                            matches!(e.error(), crate::Error::TableFull { .. }),
                            "{}",
                            e.error()
                        );
                        assert_eq!(m.ring.len(), m.ring.capacity(), "refused with room left");
                        let op = e.into_op();
                        if matches!(kind, OpKind::Read | OpKind::Write) {
                            assert_eq!(op.into_buf().map(|v| v.len()), Some(len));
                        }
                    }
                }
            }
            4 | 5 => {
                if let Some(ud) = m.pick(arg) {
                    let id = m.ops[&ud].id;
                    match m.ring.cancel(id).unwrap() {
                        CancelStatus::Requested => {
                            m.ops.get_mut(&ud).unwrap().cancel_requested = true
                        }
                        CancelStatus::AlreadyDone => {}
                        CancelStatus::NotFound => panic!("NotFound for an outstanding op"),
                    }
                }
            }
            6 => {
                let fd = FD_BASE + (arg % FDS as u8) as i32;
                for o in m.ops.values_mut() {
                    if o.fd == fd {
                        o.cancel_requested = true;
                    }
                }
                m.ring.cancel_fd(fd);
            }
            7 => {
                if arg % 4 == 0 {
                    for o in m.ops.values_mut() {
                        o.cancel_requested = true;
                    }
                    m.ring.cancel_all();
                }
            }
            8 => {
                // Through a handle: applied at the next poll.
                if let Some(ud) = m.pick(arg) {
                    m.ops.get_mut(&ud).unwrap().cancel_requested = true;
                    m.ring.handle().cancel(m.ops[&ud].id).unwrap();
                }
            }
            9 | 10 => {
                let len = {
                    let st = m.ctl.state();
                    let n = st.in_flight.len().max(1);
                    st.in_flight.get(arg as usize % n).map(|o| o.len as i64)
                };
                if let Some(len) = len {
                    let res = match arg2 % 6 {
                        0 | 1 => len,
                        2 => len / 2,
                        3 => -(libc::EIO as i64),
                        4 => -(libc::EINTR as i64),
                        _ => 0,
                    };
                    m.ctl.complete(arg as usize, res);
                }
            }
            11 => {
                m.ctl.answer_cancel(arg as usize, arg2);
            }
            12 => m.ctl.settle(),
            13 => {
                m.ring.poll().unwrap();
                if arg % 2 == 0 {
                    m.drain();
                } else if let Some(c) = m.ring.next_completion() {
                    m.take(c);
                }
            }
            14 => {
                m.ctl.state().room = arg as usize % 4;
                m.ring.wait(1, Some(Duration::ZERO)).unwrap();
            }
            _ => {
                if arg % 8 == 0 {
                    m.shutdown();
                    m = Model::new(arg, arg2);
                }
            }
        }
        m.check();
    }
    m.shutdown();
}

#[cfg(test)]
mod tests {
    /// A few seconds of random inputs (the fuzz target explores more; this keeps the
    /// driver itself honest in `cargo test --features fuzzing`).
    #[test]
    fn random_inputs() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let start = std::time::Instant::now();
        let mut runs = 0;
        while start.elapsed() < std::time::Duration::from_secs(3) {
            let len = (x % 2000) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            super::run(&data);
            runs += 1;
        }
        assert!(runs > 10);
    }
}
