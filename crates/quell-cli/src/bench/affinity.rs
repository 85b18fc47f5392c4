//! CPU placement for latency workloads. A round trip between two threads costs ~5 µs
//! when both share a CPU and ~30 µs more when the wake crosses CPUs on this kind of
//! VM (DESIGN.md §7); left to the scheduler, each contender's echo thread lands on
//! either, and the contenders' ratios swing by 1.5× between runs. Pinning makes every
//! contender pay the same placement.

use std::sync::atomic::{AtomicUsize, Ordering};

const NONE: usize = usize::MAX;

/// The CPU echo threads pin themselves to (`NONE` = leave them to the scheduler).
static ECHO_CPU: AtomicUsize = AtomicUsize::new(NONE);

/// Pins the calling thread to `cpu`; returns the mask it had, to restore later.
pub fn pin_current(cpu: usize) -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; zeroed is an empty set.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `old` is a valid cpu_set_t of `size` bytes; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut old) } != 0 {
        return None;
    }
    // SAFETY: cpu_set_t is plain data; zeroed is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return None;
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_setaffinity(0, size, &set) } != 0 {
        return None;
    }
    Some(old)
}

/// Restores a mask [`pin_current`] returned.
pub fn restore(old: &libc::cpu_set_t) {
    // SAFETY: `old` is a valid cpu_set_t obtained from sched_getaffinity.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old) };
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only reads this thread's state.
    let c = unsafe { libc::sched_getcpu() };
    (c >= 0).then_some(c as usize)
}

/// Sets (or clears) the CPU echo threads created from now on pin themselves to.
pub fn set_echo_cpu(cpu: Option<usize>) {
    ECHO_CPU.store(cpu.unwrap_or(NONE), Ordering::Relaxed);
}

/// Pins the calling (echo) thread where [`set_echo_cpu`] said, if anywhere.
pub fn pin_echo() {
    let cpu = ECHO_CPU.load(Ordering::Relaxed);
    if cpu != NONE {
        let _ = pin_current(cpu);
    }
}

/// Where a latency workload's client and peer threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Client and peer on two CPUs (falls back to `same` on a one-CPU machine).
    Split,
    /// Both on the CPU the client runs on.
    Same,
    /// Not pinned.
    Free,
}

/// A [`Placement`] resolved to CPUs; restores the client's mask when dropped.
pub struct Pinned {
    old: Option<libc::cpu_set_t>,
    desc: String,
}

impl Placement {
    /// Pins the calling (client) thread and sets the CPU echo threads will take.
    pub fn apply(self) -> Pinned {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let here = current_cpu().unwrap_or(0);
        let (client, peer) = match self {
            Placement::Split if ncpu > 1 => (here, (here + 1) % ncpu),
            Placement::Split | Placement::Same => (here, here),
            Placement::Free => {
                return Pinned {
                    old: None,
                    desc: "not pinned".into(),
                }
            }
        };
        let Some(old) = pin_current(client) else {
            return Pinned {
                old: None,
                desc: "not pinned (affinity unavailable)".into(),
            };
        };
        set_echo_cpu(Some(peer));
        let desc = if client == peer {
            format!("client and echo threads pinned to CPU {client}")
        } else {
            format!("client pinned to CPU {client}, echo threads to CPU {peer}")
        };
        Pinned {
            old: Some(old),
            desc,
        }
    }
}

impl Pinned {
    /// Where the threads run, for the report.
    pub fn describe(&self) -> &str {
        &self.desc
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        set_echo_cpu(None);
        if let Some(old) = &self.old {
            restore(old);
        }
    }
}
