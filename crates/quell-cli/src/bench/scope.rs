//! The I8 (zero cost when unused) contender: the same workload with every op in a
//! nested group (root → bench → scoped) that has a deadline an hour away, each op
//! carrying its own deadline an hour away too. Reported as the peer
//! `quell-nested-deadline`; its ratio (plain quell over it) should stay within 3% of
//! 1.0 (issue #5), with no allocation and no syscall added per op.

use crate::CliError;
use quell::{GroupId, GroupOptions, Op, Ring};
use std::time::{Duration, Instant};

/// The contender's name in reports.
pub const NAME: &str = "quell-nested-deadline";

/// How far away the deadlines are: never reached during a benchmark.
const FAR: Duration = Duration::from_secs(3600);

/// Where the scoped contender submits its ops.
#[derive(Clone, Copy, Debug)]
pub struct Scope {
    group: GroupId,
    deadline: Instant,
}

impl Scope {
    /// Creates the nested groups on `ring` (the inner one with a far deadline).
    pub fn nested(ring: &mut Ring) -> Result<Scope, CliError> {
        let deadline = Instant::now() + FAR;
        let outer = ring
            .group(GroupId::ROOT, GroupOptions::default().name("bench"))
            .map_err(|e| format!("quell group: {e}"))?;
        let group = ring
            .group(
                outer,
                GroupOptions::default().name("scoped").deadline(deadline),
            )
            .map_err(|e| format!("quell group: {e}"))?;
        Ok(Scope { group, deadline })
    }

    /// Puts `op` in the scope, or leaves it in the root group without deadline.
    #[inline]
    pub fn apply(scope: Option<Scope>, op: Op) -> Op {
        match scope {
            Some(s) => op.group(s.group).deadline(s.deadline),
            None => op,
        }
    }
}
