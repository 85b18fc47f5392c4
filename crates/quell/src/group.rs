//! Cancellation scopes: a tree of groups under the ring's root group.
//!
//! Each group carries its *effective* state (canceled, draining, deadline), already
//! combined with its ancestors' up to the nearest shield, so checking a submission is
//! O(1). Canceling or draining a group pushes the state down its subtree once.

use std::fmt;

/// Identifies a group (a cancellation scope) of a ring. Every op belongs to exactly one
/// group; the ring's root group is [`GroupId::ROOT`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// let g = ring.group(quell::GroupId::ROOT, quell::GroupOptions::default())?;
/// assert_ne!(g, quell::GroupId::ROOT);
/// assert_eq!(quell::GroupId::ROOT, quell::GroupId::default());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct GroupId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl GroupId {
    /// The ring's root group.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut ring = quell::Ring::new()?;
    /// // Ops submitted without a group belong to the root group.
    /// let id = ring.submit(quell::Op::nop())?;
    /// let info = ring.ops().into_iter().find(|o| o.id == id).unwrap();
    /// assert_eq!(info.group, quell::GroupId::ROOT);
    /// assert_eq!(ring.group_path(quell::GroupId::ROOT).as_deref(), Some("root"));
    /// # ring.wait_for(id)?;
    /// # Ok(()) }
    /// ```
    pub const ROOT: GroupId = GroupId { idx: 0, gen: 0 };
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({}.{})", self.idx, self.gen)
    }
}

/// How to create a group.
///
/// ```
/// use std::time::{Duration, Instant};
/// let opts = quell::GroupOptions::default()
///     .name("cleanup")
///     .shielded(true)
///     .deadline(Instant::now() + Duration::from_secs(5));
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, Default)]
pub struct GroupOptions {
    pub(crate) name: Option<String>,
    pub(crate) deadline: Option<std::time::Instant>,
    pub(crate) shielded: bool,
}

impl GroupOptions {
    /// A name, shown in group paths (`ops()`, dumps).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use quell::{GroupId, GroupOptions};
    /// let mut ring = quell::Ring::new()?;
    /// let conn = ring.group(GroupId::ROOT, GroupOptions::default().name("conn-7"))?;
    /// let reads = ring.group(conn, GroupOptions::default().name("reads"))?;
    /// assert_eq!(ring.group_path(reads).as_deref(), Some("root/conn-7/reads"));
    /// # Ok(()) }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// An absolute deadline: at it, the group's ops are canceled (`TimedOut`) or, for
    /// device I/O that cannot be canceled, detached. A child group inherits the earlier
    /// of its own and its parent's deadline (unless shielded).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::{Duration, Instant};
    /// use quell::{GroupId, GroupOptions, Op, Outcome};
    /// let (r, _w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let at = Instant::now() + Duration::from_millis(20);
    /// let g = ring.group(GroupId::ROOT, GroupOptions::default().deadline(at))?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).group(g))?;
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::TimedOut { transferred: 0 });
    /// # Ok(()) }
    /// ```
    pub fn deadline(mut self, at: std::time::Instant) -> Self {
        self.deadline = Some(at);
        self
    }

    /// A shielded group is not reached by its ancestors' cancel, drain or deadline (for
    /// cleanup: the last write, the fsync, the close). It must carry a deadline of its own.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use std::time::{Duration, Instant};
    /// use quell::{GroupId, GroupOptions, Op, Outcome};
    /// let (r, w) = std::os::unix::net::UnixStream::pair()?;
    /// let mut ring = quell::Ring::new()?;
    /// let work = ring.group(GroupId::ROOT, GroupOptions::default())?;
    /// let soon = Instant::now() + Duration::from_secs(10);
    /// let cleanup = ring.group(work, GroupOptions::default().shielded(true).deadline(soon))?;
    /// let id = ring.submit(Op::read(r.as_raw_fd(), vec![0; 8]).group(cleanup))?;
    /// // Canceling the parent does not reach the shielded child.
    /// assert_eq!(ring.cancel_group(work)?, 0);
    /// std::io::Write::write_all(&mut &w, b"last")?;
    /// assert_eq!(ring.wait_for(id)?.outcome, Outcome::Done(4));
    /// // A shield without a deadline of its own is refused.
    /// assert!(ring.group(work, GroupOptions::default().shielded(true)).is_err());
    /// # Ok(()) }
    /// ```
    pub fn shielded(mut self, yes: bool) -> Self {
        self.shielded = yes;
        self
    }
}

/// Per-group counters, as returned by [`Ring::group_stats`](crate::Ring::group_stats).
///
/// ```
/// let s = quell::GroupStats::default();
/// assert_eq!(s.queued + s.in_flight, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    /// Ops waiting in quell's queue.
    pub queued: u32,
    /// Ops with the backend (including those with a cancel requested).
    pub in_flight: u32,
    /// In-flight ops with a cancel requested.
    pub cancel_requested: u32,
    /// Ops delivered as `Detached` whose kernel completion is still to come.
    pub detached: u32,
    /// Whether the group is canceled (sticky).
    pub canceled: bool,
    /// Whether the group is draining.
    pub draining: bool,
}

/// One group.
pub(crate) struct Group {
    pub(crate) gen: u32,
    pub(crate) live: bool,
    pub(crate) parent: u32,
    pub(crate) children: Vec<u32>,
    pub(crate) name: Option<Box<str>>,
    pub(crate) shielded: bool,
    /// Own deadline (ns since the ring's epoch; `u64::MAX` none).
    pub(crate) own_deadline: u64,
    /// Effective deadline: min(own, parent's effective) unless shielded.
    pub(crate) deadline: u64,
    /// Effective: canceled (self or an unshielded ancestor). Sticky.
    pub(crate) canceled: bool,
    /// Effective: canceled because a deadline fired.
    pub(crate) timed_out: bool,
    /// Effective: draining.
    pub(crate) draining: bool,
    pub(crate) stats: GroupStats,
}

impl Group {
    fn new(gen: u32, parent: u32) -> Group {
        Group {
            gen,
            live: true,
            parent,
            children: Vec::new(),
            name: None,
            shielded: false,
            own_deadline: u64::MAX,
            deadline: u64::MAX,
            canceled: false,
            timed_out: false,
            draining: false,
            stats: GroupStats::default(),
        }
    }

    /// Ops that still owe the user a completion (queued or in flight).
    pub(crate) fn busy(&self) -> u32 {
        self.stats.queued + self.stats.in_flight
    }
}

/// All groups of a ring. Index 0 is the root.
pub(crate) struct Groups {
    pub(crate) v: Vec<Group>,
    free: Vec<u32>,
}

impl Groups {
    pub(crate) fn new() -> Groups {
        Groups {
            v: vec![Group::new(0, u32::MAX)],
            free: Vec::new(),
        }
    }

    /// The group `id` if it is live.
    #[inline]
    pub(crate) fn get(&self, id: GroupId) -> Option<&Group> {
        self.v
            .get(id.idx as usize)
            .filter(|g| g.live && g.gen == id.gen)
    }

    #[inline]
    pub(crate) fn at(&mut self, idx: u32) -> &mut Group {
        &mut self.v[idx as usize]
    }

    pub(crate) fn id_of(&self, idx: u32) -> GroupId {
        GroupId {
            idx,
            gen: self.v[idx as usize].gen,
        }
    }

    /// Creates a child of `parent`, inheriting its effective state unless shielded.
    pub(crate) fn create(
        &mut self,
        parent: u32,
        name: Option<String>,
        shielded: bool,
        deadline: u64,
    ) -> GroupId {
        let idx = match self.free.pop() {
            Some(i) => {
                let gen = self.v[i as usize].gen.wrapping_add(1);
                self.v[i as usize] = Group::new(gen, parent);
                i
            }
            None => {
                self.v.push(Group::new(0, parent));
                (self.v.len() - 1) as u32
            }
        };
        let (p_canceled, p_timed, p_draining, p_deadline) = {
            let p = &self.v[parent as usize];
            (p.canceled, p.timed_out, p.draining, p.deadline)
        };
        let g = &mut self.v[idx as usize];
        g.name = name.map(String::into_boxed_str);
        g.shielded = shielded;
        g.own_deadline = deadline;
        if shielded {
            g.deadline = deadline;
        } else {
            g.deadline = deadline.min(p_deadline);
            g.canceled = p_canceled;
            g.timed_out = p_timed;
            g.draining = p_draining;
        }
        self.v[parent as usize].children.push(idx);
        self.id_of(idx)
    }

    /// `idx` and its descendants not behind a shield (the shielded child itself excluded).
    pub(crate) fn reach(&self, idx: u32, out: &mut Vec<u32>) {
        out.clear();
        out.push(idx);
        let mut i = 0;
        while i < out.len() {
            let g = &self.v[out[i] as usize];
            for &c in &g.children {
                if !self.v[c as usize].shielded {
                    out.push(c);
                }
            }
            i += 1;
        }
    }

    /// `idx` and all its descendants, shields included (for `drained`).
    pub(crate) fn subtree(&self, idx: u32, out: &mut Vec<u32>) {
        out.clear();
        out.push(idx);
        let mut i = 0;
        while i < out.len() {
            out.extend_from_slice(&self.v[out[i] as usize].children);
            i += 1;
        }
    }

    /// Recomputes effective deadlines below `idx` after its deadline changed.
    pub(crate) fn push_deadline(&mut self, idx: u32) {
        let mut stack = vec![idx];
        while let Some(i) = stack.pop() {
            let d = self.v[i as usize].deadline;
            let children = self.v[i as usize].children.clone();
            for c in children {
                let g = &mut self.v[c as usize];
                if g.shielded {
                    continue;
                }
                g.deadline = g.own_deadline.min(d);
                stack.push(c);
            }
        }
    }

    /// Removes an empty, childless group.
    pub(crate) fn remove(&mut self, idx: u32) {
        let parent = self.v[idx as usize].parent;
        self.v[parent as usize].children.retain(|&c| c != idx);
        let g = &mut self.v[idx as usize];
        g.live = false;
        g.children = Vec::new();
        self.free.push(idx);
    }

    /// "root/parent/child" names for display.
    pub(crate) fn path(&self, idx: u32) -> String {
        let mut parts = Vec::new();
        let mut i = idx;
        loop {
            let g = &self.v[i as usize];
            if i == 0 {
                parts.push("root".to_string());
                break;
            }
            parts.push(match &g.name {
                Some(n) => n.to_string(),
                None => format!("g{i}"),
            });
            i = g.parent;
        }
        parts.reverse();
        parts.join("/")
    }
}
