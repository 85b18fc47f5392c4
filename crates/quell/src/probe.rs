//! What this system offers quell: is io_uring usable, and which backend would a ring get.

use crate::backend::{uring, BackendConfig, BackendKind, BackendParts};
use crate::wake::Doorbell;
use std::sync::Arc;

/// The result of [`probe`](crate::probe): io_uring availability and why, for `quell info`.
///
/// ```
/// let report = quell::probe();
/// println!("{}", serde_json::to_string(&report).unwrap());
/// assert!(report.io_uring || !report.reason.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProbeReport {
    /// Whether an io_uring could be set up with every opcode quell needs.
    pub io_uring: bool,
    /// Why (for example `"io_uring_setup: EPERM (blocked by seccomp or kernel.io_uring_disabled)"`).
    pub reason: String,
    /// Opcodes quell needs that this kernel's io_uring lacks.
    pub missing_opcodes: Vec<String>,
    /// The backend [`Ring::new`](crate::Ring::new) would choose here (after `QUELL_BACKEND`).
    pub default_backend: BackendKind,
    /// The value of `QUELL_BACKEND`, if set.
    pub env_backend: Option<String>,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
}

/// Probes io_uring (a small ring is set up and dropped at once) and reports what a
/// [`Ring`](crate::Ring) would use.
///
/// ```
/// let report = quell::probe();
/// if !report.io_uring {
///     eprintln!("io_uring unavailable: {}", report.reason);
/// }
/// ```
pub fn probe() -> ProbeReport {
    let env_backend = std::env::var("QUELL_BACKEND").ok();
    let (io_uring, reason, missing) = match Doorbell::new() {
        Err(e) => (false, format!("eventfd failed: {e}"), Vec::new()),
        Ok(bell) => {
            let parts = BackendParts {
                config: BackendConfig {
                    sq_entries: 8,
                    max_in_flight: 16,
                    pool_threads: 1,
                    // A probe links no chain.
                    direct_slots: 0,
                },
                doorbell: Arc::new(bell),
            };
            match uring::Uring::new(&parts) {
                Ok(_) => (true, "io_uring available".to_string(), Vec::new()),
                Err(why) => (false, why.0, why.1),
            }
        }
    };
    let default_backend = match env_backend.as_deref() {
        Some("portable") => BackendKind::Portable,
        Some("uring") => BackendKind::Uring,
        _ if io_uring => BackendKind::Uring,
        _ => BackendKind::Portable,
    };
    ProbeReport {
        io_uring,
        reason,
        missing_opcodes: missing.into_iter().map(String::from).collect(),
        default_backend,
        env_backend,
        kernel: rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned(),
    }
}

/// The io_uring opcodes quell's io_uring backend needs, as `(opcode number, name)`: a
/// kernel missing any of them gets the portable backend.
///
/// ```
/// assert!(quell::REQUIRED_OPCODES.iter().any(|(_, name)| *name == "async_cancel"));
/// ```
pub const REQUIRED_OPCODES: &[(u8, &str)] = crate::backend::uring::REQUIRED;
