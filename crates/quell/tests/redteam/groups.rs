//! I7: groups, sticky cancel, drain gate, deadlines, shields, signals.
use crate::common::*;
use quell::{Chain, Error, GroupId, GroupOptions, Op, Outcome, SignalAction};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[test]
fn drain_gate_semantics() {
    let _s = serial();
    for b in BACKENDS {
        guard("drain", 30, move || {
            let mut ring = builder(b).max_in_flight(2).build().unwrap();
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let g = ring
                .group(GroupId::ROOT, GroupOptions::default().name("g"))
                .unwrap();
            let c1 = ring.group(g, GroupOptions::default()).unwrap();
            let a = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(g))
                .unwrap();
            let bb = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(c1))
                .unwrap();
            let q1 = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(c1))
                .unwrap();
            let q2 = ring
                .submit(Op::timeout(Duration::from_secs(60)).group(g))
                .unwrap();
            ring.flush().unwrap();
            assert_eq!(
                ring.drain(g).unwrap(),
                2,
                "{b:?} queued ops canceled by drain"
            );
            let e = ring
                .submit(Op::read(r.as_raw_fd(), vec![5u8; 3]).group(c1))
                .unwrap_err();
            assert!(matches!(e.error(), Error::Draining));
            assert_eq!(e.into_op().into_buf().unwrap(), vec![5u8; 3]);
            // a child created under a draining group starts draining
            let c2 = ring.group(g, GroupOptions::default()).unwrap();
            assert!(
                matches!(
                    ring.submit(Op::nop().group(c2)).unwrap_err().error(),
                    Error::Draining
                ),
                "{b:?} new child of draining group accepts ops"
            );
            // chains are refused too
            assert!(ring
                .submit_chain(Chain::new().then(Op::nop()).group(g))
                .is_err());
            assert!(!ring.is_drained(g).unwrap());
            std::io::Write::write_all(&mut &w, b"xy").unwrap();
            assert_eq!(ring.wait_for(a).unwrap().outcome, Outcome::Done(1));
            assert_eq!(ring.wait_for(bb).unwrap().outcome, Outcome::Done(1));
            assert!(ring.wait_for(q1).unwrap().outcome.is_canceled());
            assert!(ring.wait_for(q2).unwrap().outcome.is_canceled());
            assert!(ring.wait_drained(g, Some(Duration::from_secs(5))).unwrap());
            // gate stays closed
            assert!(
                ring.submit(Op::nop().group(g)).is_err(),
                "{b:?} drained group reopened"
            );
            // root not affected
            let n = ring.submit(Op::nop()).unwrap();
            assert!(ring.wait_for(n).unwrap().outcome.is_done());
        });
    }
}

#[test]
fn shield_semantics() {
    let _s = serial();
    for b in BACKENDS {
        guard("shield", 30, move || {
            let mut ring = ring(b);
            let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
            let parent = ring
                .group(
                    GroupId::ROOT,
                    GroupOptions::default().deadline(Instant::now() + Duration::from_millis(150)),
                )
                .unwrap();
            let shield = ring
                .group(
                    parent,
                    GroupOptions::default()
                        .shielded(true)
                        .deadline(Instant::now() + Duration::from_secs(2)),
                )
                .unwrap();
            let under_shield = ring.group(shield, GroupOptions::default()).unwrap();
            let p_op = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(parent))
                .unwrap();
            let s_op = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(under_shield))
                .unwrap();
            // parent's deadline fires at 150ms: only p_op
            assert_eq!(
                ring.wait_for(p_op).unwrap().outcome,
                Outcome::TimedOut { transferred: 0 },
                "{b:?}"
            );
            // parent canceled and drained: shield not reached
            ring.cancel_group(parent).unwrap();
            ring.drain(parent).unwrap();
            let late = ring.submit(Op::nop().group(under_shield));
            assert!(
                late.is_ok(),
                "{b:?} shielded grandchild refused after parent cancel/drain: {:?}",
                late.as_ref().err().map(|e| format!("{:?}", e.error()))
            );
            let late = late.unwrap();
            assert!(ring.wait_for(late).unwrap().outcome.is_done(), "{b:?}");
            std::io::Write::write_all(&mut &w, b"z").unwrap();
            assert_eq!(
                ring.wait_for(s_op).unwrap().outcome,
                Outcome::Done(1),
                "{b:?}"
            );
            // shield's own deadline
            let s2 = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(under_shield))
                .unwrap();
            let t0 = Instant::now();
            assert_eq!(
                ring.wait_for(s2).unwrap().outcome,
                Outcome::TimedOut { transferred: 0 },
                "{b:?}"
            );
            assert!(t0.elapsed() < Duration::from_secs(4));
            // a shield created under an already canceled parent does not inherit it
            let s3 = ring
                .group(
                    parent,
                    GroupOptions::default()
                        .shielded(true)
                        .deadline(Instant::now() + Duration::from_secs(5)),
                )
                .unwrap();
            let ok = ring.submit(Op::nop().group(s3)).unwrap();
            assert!(
                ring.wait_for(ok).unwrap().outcome.is_done(),
                "{b:?} new shield inherited parent's cancel"
            );
        });
    }
}

#[test]
fn sticky_cancel_and_child_inherits() {
    let _s = serial();
    for b in BACKENDS {
        guard("sticky", 30, move || {
            let mut ring = ring(b);
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            ring.cancel_group(g).unwrap();
            let c = ring.group(g, GroupOptions::default()).unwrap();
            let id = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(c))
                .unwrap();
            assert!(
                ring.wait_for(id).unwrap().outcome.is_canceled(),
                "{b:?} child of canceled group not canceled"
            );
            let ch = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::nop())
                        .then(Op::read(r.as_raw_fd(), vec![0u8; 1]))
                        .group(c),
                )
                .unwrap();
            assert!(
                ring.wait_for(ch).unwrap().outcome.is_canceled(),
                "{b:?} chain in canceled group ran"
            );
            assert!(ring.group_stats(g).unwrap().canceled);
        });
    }
}

/// Group deadline inheritance: a child's ops end at the earlier of its own and its parent's deadline.
#[test]
fn deadline_inheritance_and_moves() {
    let _s = serial();
    for b in BACKENDS {
        guard("inherit", 30, move || {
            let mut ring = ring(b);
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let p = ring
                .group(
                    GroupId::ROOT,
                    GroupOptions::default().deadline(Instant::now() + Duration::from_millis(200)),
                )
                .unwrap();
            let c = ring
                .group(
                    p,
                    GroupOptions::default().deadline(Instant::now() + Duration::from_secs(30)),
                )
                .unwrap();
            let t0 = Instant::now();
            let id = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(c))
                .unwrap();
            assert_eq!(
                ring.wait_for(id).unwrap().outcome,
                Outcome::TimedOut { transferred: 0 }
            );
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{b:?} child kept its later deadline"
            );
            // op deadline later than group's: group's wins; op earlier: op's wins
            let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let id = ring
                .submit(
                    Op::read(r.as_raw_fd(), vec![0u8; 1])
                        .group(g)
                        .deadline(Instant::now() + Duration::from_millis(100)),
                )
                .unwrap();
            ring.set_group_deadline(g, Instant::now() + Duration::from_secs(30))
                .unwrap();
            let t0 = Instant::now();
            assert_eq!(
                ring.wait_for(id).unwrap().outcome,
                Outcome::TimedOut { transferred: 0 }
            );
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{b:?} op deadline ignored"
            );
            // moving a group deadline earlier reaches ops already in flight
            let g2 = ring
                .group(
                    GroupId::ROOT,
                    GroupOptions::default().deadline(Instant::now() + Duration::from_secs(60)),
                )
                .unwrap();
            let id = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(g2))
                .unwrap();
            ring.flush().unwrap();
            ring.set_group_deadline(g2, Instant::now() + Duration::from_millis(50))
                .unwrap();
            let t0 = Instant::now();
            assert_eq!(
                ring.wait_for(id).unwrap().outcome,
                Outcome::TimedOut { transferred: 0 }
            );
            assert!(t0.elapsed() < Duration::from_secs(3));
            // a grandchild of a group whose deadline is moved earlier
            let g3 = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let g3c = ring.group(g3, GroupOptions::default()).unwrap();
            let g3cc = ring.group(g3c, GroupOptions::default()).unwrap();
            let id = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(g3cc))
                .unwrap();
            ring.flush().unwrap();
            ring.set_group_deadline(g3, Instant::now() + Duration::from_millis(50))
                .unwrap();
            let t0 = Instant::now();
            let res = loop {
                ring.wait(1, Some(Duration::from_millis(50))).unwrap();
                if let Some(c) = ring.next_completion() {
                    break Some(c.outcome);
                }
                if t0.elapsed() > Duration::from_secs(3) {
                    break None;
                }
            };
            if res.is_none() {
                ring.cancel(id).unwrap();
                ring.wait_for(id).unwrap();
            }
            assert_eq!(
                res,
                Some(Outcome::TimedOut { transferred: 0 }),
                "{b:?} grandchild not reached by ancestor's later-set deadline"
            );
        });
    }
}

#[test]
fn drain_with_grace_blocking_and_chain() {
    let _s = serial();
    for b in BACKENDS {
        guard("grace", 30, move || {
            let mut ring = ring(b);
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let fd = r.as_raw_fd();
            let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let bl = ring
                .submit(
                    Op::blocking(move || {
                        let mut buf = [0u8; 1];
                        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 1) };
                        if n < 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(n as usize)
                        }
                    })
                    .group(g),
                )
                .unwrap();
            let ch = ring
                .submit_chain(
                    Chain::new()
                        .then(Op::timeout(Duration::from_millis(10)))
                        .then(Op::read(fd, vec![0u8; 2]))
                        .group(g),
                )
                .unwrap();
            ring.wait(1, Some(Duration::from_millis(50))).unwrap();
            ring.drain_with_grace(g, Duration::from_millis(100))
                .unwrap();
            assert!(
                ring.wait_drained(g, Some(Duration::from_secs(10))).unwrap(),
                "{b:?} not drained"
            );
            let c = ring.wait_for(bl).unwrap();
            assert!(
                matches!(c.outcome, Outcome::TimedOut { .. }),
                "{b:?} blocking: {:?}",
                c.outcome
            );
            let c = ring.wait_for(ch).unwrap();
            assert!(
                matches!(c.outcome, Outcome::TimedOut { .. }),
                "{b:?} chain: {:?}",
                c.outcome
            );
        });
    }
}

/// Handle::drain from another thread while the owner sleeps in wait_drained.
#[test]
fn handle_drain_while_owner_waits() {
    let _s = serial();
    for b in BACKENDS {
        guard("hdrain", 30, move || {
            let mut ring = ring(b);
            let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let t = ring
                .submit(Op::timeout(Duration::from_millis(200)).group(g))
                .unwrap();
            let h = ring.handle();
            let th = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                h.drain(g).unwrap();
            });
            let t0 = Instant::now();
            assert!(ring.wait_drained(g, Some(Duration::from_secs(10))).unwrap());
            assert!(t0.elapsed() < Duration::from_secs(5));
            assert!(ring.wait_for(t).unwrap().outcome.is_done());
            th.join().unwrap();
            assert!(matches!(
                ring.submit(Op::nop().group(g)).unwrap_err().error(),
                Error::Draining
            ));
        });
    }
}

fn child_signal_two_rings(b: BackendChoice) {
    let mut r1 = ring(b);
    let mut r2 = ring(b);
    let (rs, _w) = std::os::unix::net::UnixStream::pair().unwrap();
    let g1 = r1.group(GroupId::ROOT, GroupOptions::default()).unwrap();
    let g2 = r2.group(GroupId::ROOT, GroupOptions::default()).unwrap();
    r1.bind_signal(libc::SIGUSR2, g1, SignalAction::Cancel)
        .unwrap();
    r2.bind_signal(libc::SIGUSR2, g2, SignalAction::Cancel)
        .unwrap();
    let a = r2
        .submit(Op::read(rs.as_raw_fd(), vec![0u8; 1]).group(g2))
        .unwrap();
    drop(r1);
    unsafe { libc::raise(libc::SIGUSR2) };
    let t0 = Instant::now();
    let c = loop {
        r2.wait(1, Some(Duration::from_millis(50))).unwrap();
        if let Some(c) = r2.next_completion() {
            break Some(c);
        }
        if t0.elapsed() > Duration::from_secs(3) {
            break None;
        }
    };
    let _ = a;
    println!("SIGNAL-RESULT {:?}", c.map(|c| c.outcome));
}

#[test]
fn child_signal_uring() {
    if is_child() {
        child_signal_two_rings(BackendChoice::Uring)
    }
}
#[test]
fn child_signal_portable() {
    if is_child() {
        child_signal_two_rings(BackendChoice::Portable)
    }
}

/// Two rings bind SIGUSR2; one is dropped; the signal then arrives: the remaining ring's group is
/// canceled and the process survives (the default action must not come back while a ring is bound).
#[test]
fn signal_binding_survives_other_ring_drop() {
    if is_child() {
        return;
    }
    for (name, b) in [
        ("child_signal_uring", "Uring"),
        ("child_signal_portable", "Portable"),
    ] {
        let (code, out) = in_child(&format!("groups::{name}"), 30);
        let line = out
            .lines()
            .find(|l| l.contains("SIGNAL-RESULT"))
            .unwrap_or("")
            .to_string();
        assert!(
            code == Some(0) && line.contains("Canceled"),
            "{b}: exit {code:?}, {line:?} {}",
            out.lines()
                .filter(|l| l.contains("panicked"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// bind_signal(SIGINT, DrainThenCancel) then a real SIGINT: the group drains then cancels;
/// the process is not killed.
fn child_sigint(b: BackendChoice) {
    let mut ring = ring(b);
    let (rs, _w) = std::os::unix::net::UnixStream::pair().unwrap();
    let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
    ring.bind_signal(libc::SIGINT, g, SignalAction::DrainThenCancel)
        .unwrap();
    let a = ring
        .submit(Op::read(rs.as_raw_fd(), vec![0u8; 1]).group(g))
        .unwrap();
    ring.flush().unwrap();
    unsafe { libc::raise(libc::SIGINT) };
    ring.wait(1, Some(Duration::from_millis(100))).unwrap();
    let refused = ring.submit(Op::nop().group(g)).is_err();
    unsafe { libc::raise(libc::SIGINT) };
    let t0 = Instant::now();
    let mut out = None;
    while t0.elapsed() < Duration::from_secs(3) {
        ring.wait(1, Some(Duration::from_millis(50))).unwrap();
        if let Some(c) = ring.next_completion() {
            out = Some(c.outcome);
            break;
        }
    }
    let _ = a;
    println!("SIGINT-RESULT refused_after_first={refused} {:?}", out);
}
#[test]
fn child_sigint_uring() {
    if is_child() {
        child_sigint(BackendChoice::Uring)
    }
}
#[test]
fn child_sigint_portable() {
    if is_child() {
        child_sigint(BackendChoice::Portable)
    }
}
#[test]
fn sigint_drain_then_cancel() {
    if is_child() {
        return;
    }
    for (name, b) in [
        ("child_sigint_uring", "Uring"),
        ("child_sigint_portable", "Portable"),
    ] {
        let (code, out) = in_child(&format!("groups::{name}"), 30);
        let line = out
            .lines()
            .find(|l| l.contains("SIGINT-RESULT"))
            .unwrap_or("")
            .to_string();
        assert!(
            code == Some(0)
                && line.contains("refused_after_first=true")
                && line.contains("Canceled"),
            "{b}: exit {code:?}, {line:?}"
        );
    }
}

/// remove_group while it has a detached op / a queued op: refused; group keeps working.
#[test]
fn remove_group_refused_while_busy() {
    let _s = serial();
    for b in BACKENDS {
        guard("rm_busy", 30, move || {
            let mut ring = builder(b).max_in_flight(1).build().unwrap();
            let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
            let g = ring.group(GroupId::ROOT, GroupOptions::default()).unwrap();
            let a = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(g))
                .unwrap();
            let q = ring
                .submit(Op::read(r.as_raw_fd(), vec![0u8; 1]).group(g))
                .unwrap();
            assert!(ring.remove_group(g).is_err());
            ring.cancel_group(g).unwrap();
            ring.wait_for(a).unwrap();
            assert!(
                ring.remove_group(g).is_err(),
                "{b:?} removed with an untaken completion"
            );
            ring.wait_for(q).unwrap();
            ring.remove_group(g).unwrap();
            // the handle's cancel_group on the removed group is ignored
            ring.handle().cancel_group(g).unwrap();
            ring.poll().unwrap();
        });
    }
}
