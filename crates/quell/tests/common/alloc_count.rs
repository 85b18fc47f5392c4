//! A global allocator that counts allocations, for the steady-state zero-allocation
//! tests (DESIGN I8). Included with `#[path]` by those test binaries only: it is
//! process-wide, so each binary holds one test.
//!
//! The test harness's main thread is not counted. After starting the test's thread it
//! still books it (a few allocations), and on a loaded machine that can happen while
//! the test is already measuring (seen in CI: 4 allocations in the measured window, and
//! reproduced with the CPUs kept busy). Every other thread is counted: the test's own,
//! and any the library starts. [`measured`] runs a test body on a thread of its own, so
//! the body is counted even when the harness runs tests on its main thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Forwards to the system allocator, counting `alloc` and `realloc` calls made off the
/// process's main thread.
pub struct Counting;

/// Counts one allocation unless the main thread (the harness's) makes it.
fn count() {
    // SAFETY: getpid and gettid take no arguments and cannot fail; neither allocates.
    let main = unsafe { libc::gettid() == libc::getpid() };
    if !main {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Allocations (and reallocations) so far.
pub static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Runs `f` on a fresh thread (never the main one, which is not counted), after checking
/// that an allocation on that thread is counted, and hands back its result; a panic in
/// `f` is the caller's panic.
pub fn measured<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let before = ALLOCS.load(Ordering::Relaxed);
            drop(std::hint::black_box(Box::new(before)));
            let after = ALLOCS.load(Ordering::Relaxed);
            assert!(
                after > before,
                "the counting allocator missed an allocation"
            );
            f()
        });
        t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}
