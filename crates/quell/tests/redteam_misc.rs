//! Regression tests from an independent red team that saw only the docs (issue 15): bad
//! input gets a typed answer, never an abort (I10).
//!
//! Outcomes that could kill the process (an allocation failure aborts it) run in a child:
//! this test binary re-executed with `QUELL_REDTEAM_CHILD` naming what to do.

mod common;

use quell::AlignedBuf;

const CHILD_ENV: &str = "QUELL_REDTEAM_CHILD";

/// Runs `which` in a child process (this binary, `child` test); returns its exit code and
/// output (a signal or abort shows as no code).
fn run_child(which: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, which)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The child half: only does something when re-executed by a test.
#[test]
fn child() {
    let Ok(which) = std::env::var(CHILD_ENV) else {
        return;
    };
    match which.as_str() {
        "aligned" => {
            // Beyond any address space (47 or 56 bits): refused with None.
            for (len, align) in [
                (4096, 1usize << 62),
                (4096, 1 << 63),
                (1 << 60, 4096),
                (usize::MAX, 4096),
                (isize::MAX as usize - 4095, 4096),
            ] {
                let b = AlignedBuf::new(len, align);
                println!(
                    "RESULT new({len}, {align}) = {:?}",
                    b.as_ref().map(|b| b.len())
                );
                assert!(
                    b.is_none(),
                    "AlignedBuf::new({len}, {align}) returned a buffer"
                );
            }
            // What the red team tried (it aborted): None where the system will not reserve
            // a terabyte of address space, else a buffer as asked (vm.overcommit_memory=1).
            for (len, align) in [(4096, 1usize << 40), (1 << 46, 4096)] {
                let b = AlignedBuf::new(len, align);
                println!(
                    "RESULT new({len}, {align}) = {:?}",
                    b.as_ref().map(|b| b.len())
                );
                if let Some(b) = b {
                    assert_eq!((b.len(), b.as_ptr() as usize % align), (len, 0));
                }
            }
            println!("RESULT no abort");
            std::process::exit(0);
        }
        other => panic!("unknown child {other}"),
    }
}

/// `AlignedBuf::new` returns `None` when the buffer cannot be had: an alignment or a
/// length no allocator can serve (a 1 TiB alignment aborted the process with "memory
/// allocation of 4096 bytes failed"). A buffer that can be had still comes, aligned.
#[test]
fn aligned_buf_that_cannot_be_allocated_is_none_not_an_abort() {
    let (code, out) = run_child("aligned");
    assert_eq!(
        code,
        Some(0),
        "the child died: {}",
        out.lines()
            .filter(|l| l.contains("RESULT") || l.contains("memory") || l.contains("panicked"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(out.contains("RESULT no abort"), "{out}");
    let b = AlignedBuf::new(1 << 20, 1 << 21).expect("2 MiB aligned to 2 MiB");
    assert_eq!((b.len(), b.as_ptr() as usize % (1 << 21)), (1 << 20, 0));
    assert!(b.iter().all(|&x| x == 0));
    assert!(AlignedBuf::new(0, 4096).is_some_and(|b| b.is_empty()));
    assert!(AlignedBuf::new(4096, 3).is_none());
    assert!(AlignedBuf::new(4096, 0).is_none());
}
