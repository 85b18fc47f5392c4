//! A counting global allocator for leak checks of test buffers.
//!
//! Test buffers are made with [`tagged_buf`]: their size is `4096 * k + tag` (tag 1..16),
//! a size nothing else allocates, so the allocator can count how many buffers of each tag
//! are alive, whoever frees them (a completion handed back and dropped by the test, or the
//! ring dropping them at teardown). A binary opts in with
//! `#[global_allocator] static A: common::counting::Counting = common::counting::Counting;`.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

pub const TAGS: usize = 16;
static LIVE: [AtomicI64; TAGS] = [const { AtomicI64::new(0) }; TAGS];
static ALLOCATED: [AtomicI64; TAGS] = [const { AtomicI64::new(0) }; TAGS];

pub struct Counting;

#[inline]
fn tag_of(size: usize) -> Option<usize> {
    let t = size % 4096;
    (size >= 4096 && t > 0 && t < TAGS).then_some(t)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            if let Some(t) = tag_of(layout.size()) {
                LIVE[t].fetch_add(1, Ordering::Relaxed);
                ALLOCATED[t].fetch_add(1, Ordering::Relaxed);
            }
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            if let Some(t) = tag_of(layout.size()) {
                LIVE[t].fetch_add(1, Ordering::Relaxed);
                ALLOCATED[t].fetch_add(1, Ordering::Relaxed);
            }
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(t) = tag_of(layout.size()) {
            LIVE[t].fetch_sub(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if let Some(t) = tag_of(layout.size()) {
                LIVE[t].fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(t) = tag_of(new_size) {
                LIVE[t].fetch_add(1, Ordering::Relaxed);
                ALLOCATED[t].fetch_add(1, Ordering::Relaxed);
            }
        }
        p
    }
}

/// A zeroed buffer of `4096 * pages + tag` bytes, counted under `tag` (1..16).
pub fn tagged_buf(tag: usize, pages: usize) -> Vec<u8> {
    assert!((1..TAGS).contains(&tag) && pages >= 1);
    let v = vec![0u8; 4096 * pages + tag];
    debug_assert_eq!(v.capacity(), v.len());
    v
}

/// Buffers of `tag` alive now.
pub fn live(tag: usize) -> i64 {
    LIVE[tag].load(Ordering::Relaxed)
}

/// Buffers of `tag` ever allocated.
pub fn allocated(tag: usize) -> i64 {
    ALLOCATED[tag].load(Ordering::Relaxed)
}
