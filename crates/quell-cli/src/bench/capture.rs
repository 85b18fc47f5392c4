//! Collects every contender's latency histogram while the suite runs, for `--plot`.
//!
//! Workloads report through [`Summary::result`](super::Summary::result), which hands its
//! histogram here; the suite turns capturing on around each workload and takes what was
//! collected. Workloads need no plotting code of their own, and outside the suite
//! (capturing off) nothing is kept.

use hdrhistogram::Histogram;
use std::cell::RefCell;

/// Named latency histograms, in the order they were reported.
pub type Curves = Vec<(String, Histogram<u64>)>;

thread_local! {
    static CAPTURED: RefCell<Option<Curves>> = const { RefCell::new(None) };
}

/// Starts collecting (dropping anything collected before).
pub fn start() {
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
}

/// Stops collecting and returns what was collected, in report order.
pub fn take() -> Curves {
    CAPTURED.with(|c| c.borrow_mut().take().unwrap_or_default())
}

/// Keeps a copy of `hist` under `name` if collecting.
pub fn note(name: &str, hist: &Histogram<u64>) {
    CAPTURED.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            if !hist.is_empty() {
                v.push((name.to_string(), hist.clone()));
            }
        }
    });
}
