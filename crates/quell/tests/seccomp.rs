//! Under a seccomp filter that makes io_uring_setup/enter/register fail with EPERM (as
//! Docker's default profile does), `Ring::new()` falls back to the portable backend, says
//! why, and works. The child is this test binary, re-run on one test with an env var.

use quell::{BackendChoice, BackendKind, Op, Outcome, Ring};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

const CHILD_ENV: &str = "QUELL_SECCOMP_CHILD";

/// The body run inside the filtered child (a no-op when run normally).
#[test]
fn seccomp_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // io_uring really is blocked here.
    let probe = quell::probe();
    assert!(!probe.io_uring, "io_uring still works under the filter");
    assert!(
        probe.reason.contains("EPERM"),
        "probe reason: {}",
        probe.reason
    );
    assert_eq!(probe.default_backend, BackendKind::Portable);

    let mut ring = Ring::new().expect("a ring without io_uring");
    assert_eq!(ring.backend(), BackendKind::Portable);
    assert!(
        ring.backend_reason().contains("EPERM"),
        "reason: {}",
        ring.backend_reason()
    );
    println!("backend_reason: {}", ring.backend_reason());

    // Forcing io_uring is a clear error.
    let err = Ring::builder()
        .backend(BackendChoice::Uring)
        .build()
        .unwrap_err();
    assert!(matches!(err, quell::Error::Unsupported { .. }), "{err:?}");

    // A read/cancel scenario.
    let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
    let stuck = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 16])).unwrap();
    ring.wait(1, Some(Duration::from_millis(10))).unwrap();
    ring.cancel(stuck).unwrap();
    assert_eq!(
        ring.wait_for(stuck).unwrap().outcome,
        Outcome::Canceled { transferred: 0 }
    );
    let id = ring.submit(Op::read(r.as_raw_fd(), vec![0u8; 16])).unwrap();
    std::io::Write::write_all(&mut &w, b"ping").unwrap();
    assert_eq!(ring.wait_for(id).unwrap().data(), b"ping");
    // A blocking op interrupted on the pool.
    let fd = r.as_raw_fd();
    let id = ring
        .submit(Op::blocking(move || {
            let mut b = [0u8; 4];
            // SAFETY: valid buffer.
            let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 4) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }))
        .unwrap();
    ring.wait(1, Some(Duration::from_millis(20))).unwrap();
    ring.cancel(id).unwrap();
    assert_eq!(
        ring.wait_for(id).unwrap().outcome,
        Outcome::Canceled { transferred: 0 }
    );
    println!("SECCOMP-CHILD-OK");
}

#[test]
fn seccomp_blocked_io_uring_falls_back_to_portable() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let arch: seccompiler::TargetArch = std::env::consts::ARCH.try_into().expect("arch");
    // io_uring_setup, io_uring_enter, io_uring_register (same numbers on every arch).
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = [425i64, 426, 427]
        .into_iter()
        .map(|n| (n, vec![]))
        .collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .expect("filter");
    let prog: seccompiler::BpfProgram = filter.try_into().expect("bpf");
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "seccomp_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env_remove("QUELL_BACKEND");
    // SAFETY: between fork and exec the closure only makes two system calls (prctl and
    // seccomp) on memory prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&prog).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    let out = cmd.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("SECCOMP-CHILD-OK"),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let reason = stdout
        .lines()
        .find(|l| l.contains("backend_reason"))
        .unwrap_or("");
    eprintln!("{reason}");
}
