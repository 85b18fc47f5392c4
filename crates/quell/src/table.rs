//! The op table: one slot per outstanding operation.
//!
//! Slots live in pages of [`PAGE_SLOTS`] that are allocated the first time they are
//! needed and never move afterwards, so memory inside a slot (a timespec, the `Vec`
//! header of a buffer) may be handed to the kernel by address. A slot index is 16 bits
//! wide at most (65,536 live ops); each slot carries a generation so a stale [`OpId`]
//! is detected. Live slots are also kept in a dense array, which makes listing the
//! outstanding ops O(outstanding) and freeing O(1).
//!
//! [`OpId`]: crate::OpId

use crate::op::{OpDesc, OpKind, Payload, NO_OFFSET};
use crate::outcome::CancelClass;

/// Slots per lazily allocated page.
pub(crate) const PAGE_SLOTS: usize = 256;
/// Largest capacity a ring may have (16-bit slot index).
///
/// ```
/// // A builder clamps larger capacities to this bound.
/// let ring = quell::Ring::builder().capacity(1 << 20).build().unwrap();
/// assert_eq!(ring.capacity(), quell::MAX_CAPACITY);
/// ```
pub const MAX_CAPACITY: usize = 1 << 16;
/// Generations wrap inside 31 bits (bit 63 of a backend key is reserved).
const GEN_MASK: u32 = 0x7fff_ffff;
const NONE: u32 = u32::MAX;

/// Where a slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SlotState {
    Free,
    /// In the user-space queue.
    Queued,
    /// Given to the backend.
    InFlight,
    /// The user got a `Detached` completion; the backend still owns the memory.
    Detached,
    /// Finished; the completion waits in the ring's completion queue.
    Completed,
}

/// Slot flag: a cancel was requested while the op was in flight.
pub(crate) const F_CANCEL: u16 = 1;
/// Slot flag: the cancel came from a deadline (outcome `TimedOut`).
pub(crate) const F_TIMEOUT: u16 = 2;
/// Slot flag: the backend has been asked to cancel (ASYNC_CANCEL sent or queued).
pub(crate) const F_CANCEL_SENT: u16 = 8;
/// Slot flag: retry short transfers until the whole buffer moved (`read_exact`/`write_all`).
pub(crate) const F_EXACT: u16 = 4;
/// Slot flag (detached ops): the user has been given the `Detached` completion.
pub(crate) const F_DELIVERED: u16 = 16;
/// Slot flag (detached ops): the kernel's own completion has arrived.
pub(crate) const F_KERNEL_DONE: u16 = 32;
/// Slot flag: the slot runs a chain's steps (state in the ring's `Chains`).
pub(crate) const F_CHAIN: u16 = 64;
/// Slot flag: the completion goes to an internal sink (`ring::sink`), not to the user.
pub(crate) const F_SINK: u16 = 128;
/// Slot flag: the op holds duplicates of its descriptors (`ring::identity`), taken when
/// it had to wait in quell's queue, so it acts on the files it was submitted on.
pub(crate) const F_ANCHORED: u16 = 256;
/// Slot flag: the class was declared by the submitter (`Op::class`), not derived from
/// the descriptor; the ring uses it as given.
pub(crate) const F_DECLARED: u16 = 512;
/// Not stored in a slot: tells `outcome_of` the op is a positioned transfer split into
/// parts (so even its first part's short result after a cancel means it was stopped).
pub(crate) const F_SPLIT: u16 = 1024;
/// Slot bits 11..=13: how many times the op went back to the kernel after a cancel
/// nobody asked for (its submitting thread exited; see `Ring::finish`).
pub(crate) const F_REQUEUES: u16 = 0b111 << 11;
/// One step of [`F_REQUEUES`].
pub(crate) const F_REQUEUE_ONE: u16 = 1 << 11;

/// Bookkeeping for one operation.
pub(crate) struct Slot {
    pub(crate) gen: u32,
    pub(crate) state: SlotState,
    pub(crate) class: CancelClass,
    pub(crate) flags: u16,
    /// Free-list link while free; position in the live array while live.
    pub(crate) link: u32,
    pub(crate) group: u32,
    pub(crate) user_data: u64,
    /// Nanoseconds since the ring's epoch at submission.
    pub(crate) submitted: u64,
    /// Deadline in nanoseconds since the ring's epoch (`u64::MAX`: none).
    pub(crate) deadline: u64,
    /// Bytes moved by earlier parts of a derived op.
    pub(crate) transferred: u64,
    pub(crate) desc: OpDesc,
}

impl Slot {
    /// Stores a new op's description in a freshly allocated slot. The slot's old
    /// payload was taken or dropped when it was freed, so no drop call is needed then.
    #[inline]
    pub(crate) fn set_desc(&mut self, desc: OpDesc) {
        if matches!(self.desc.payload, Payload::None) {
            // Test first, then overwrite: the old value is never read into a temporary.
            std::mem::forget(std::mem::replace(&mut self.desc, desc));
        } else {
            self.desc = desc;
        }
    }
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            gen: 0,
            state: SlotState::Free,
            class: CancelClass::Queued,
            flags: 0,
            link: NONE,
            group: 0,
            user_data: 0,
            submitted: 0,
            deadline: u64::MAX,
            transferred: 0,
            desc: OpDesc {
                kind: OpKind::Nop,
                fd: -1,
                fd2: -1,
                len: 0,
                flags: 0,
                offset: NO_OFFSET,
                aux: 0,
                payload: Payload::None,
                owned: false,
            },
        }
    }
}

/// One page of slots. A fixed-size array, so indexing within it needs no bounds check.
type Page = Box<[Slot; PAGE_SLOTS]>;

/// Fixed-capacity slab of slots with lazily allocated pages.
pub(crate) struct Table {
    /// Pages in index order: slots are handed out fresh in increasing order, so page
    /// `n` exists exactly when some slot of it has been handed out.
    pages: Vec<Page>,
    capacity: u32,
    /// Slots ever handed out: indices below this are initialised.
    fresh: u32,
    free_head: u32,
    /// Slot indices, each live slot at the position its `link` names. Freeing leaves
    /// the entry behind (no move, no second slot touched); an entry counts only while
    /// its slot is live and points back at it. Stale entries are dropped when nothing
    /// is live, or compacted away once they outnumber the live ones by more than 64
    /// (amortised O(1), and iteration stays O(live)).
    live: Vec<u32>,
    /// Live slots.
    count: u32,
}

impl Table {
    /// A table for at most `capacity` live ops (clamped to 1..=65,536). Allocates no slots yet.
    pub(crate) fn new(capacity: usize) -> Table {
        let capacity = capacity.clamp(1, MAX_CAPACITY) as u32;
        let npages = (capacity as usize).div_ceil(PAGE_SLOTS);
        Table {
            pages: Vec::with_capacity(npages),
            capacity,
            fresh: 0,
            free_head: NONE,
            live: Vec::new(),
            count: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Number of live (non-free) slots.
    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    /// Takes a free slot; `None` when the table is full. Returns (index, generation).
    #[inline(always)]
    pub(crate) fn alloc(&mut self) -> Option<(u32, u32)> {
        self.alloc_slot().map(|(idx, s)| (idx, s.gen))
    }

    /// Takes a free slot and returns it, reset (no flags, nothing transferred, no
    /// deadline, root group), for the caller to fill. `None` when the table is full.
    #[inline(always)]
    pub(crate) fn alloc_slot(&mut self) -> Option<(u32, &mut Slot)> {
        let idx = if self.free_head != NONE {
            self.free_head
        } else if self.fresh < self.capacity {
            let idx = self.fresh;
            if idx as usize % PAGE_SLOTS == 0 {
                self.add_page();
            }
            self.fresh += 1;
            idx
        } else {
            return None;
        };
        // No check here: a push adds one entry and one live slot, which keeps
        // `live.len() <= 2 * count + 64` (only frees make entries stale; see `unlist`).
        let pos = self.live.len() as u32;
        self.live.push(idx);
        self.count += 1;
        let s = slot_in(&mut self.pages, idx);
        if self.free_head == idx {
            self.free_head = s.link;
        }
        s.link = pos;
        s.flags = 0;
        s.transferred = 0;
        s.deadline = u64::MAX;
        s.group = 0;
        Some((idx, s))
    }

    /// Allocates the next page (out of line: once per 256 slots ever).
    #[cold]
    fn add_page(&mut self) {
        self.pages.push(new_page());
    }

    /// Returns a slot to the free list, bumping its generation so old ids go stale.
    /// The caller has already taken what it needs out of the payload.
    #[inline(always)]
    pub(crate) fn free(&mut self, idx: u32) {
        let s = self.slot_mut(idx);
        // Usually already taken by the completion; skip the drop call when it was.
        if !matches!(s.desc.payload, Payload::None) {
            s.desc.payload = Payload::None;
        }
        self.unlink(idx);
    }

    /// Frees slot `idx` if it is `Completed`, handing back what its completion carries:
    /// generation, user data, kind and payload. `None` (nothing changed) in any other
    /// state. One slot lookup for the whole hand-over.
    #[inline(always)]
    pub(crate) fn release_completed(&mut self, idx: u32) -> Option<(u32, u64, OpKind, Payload)> {
        let s = slot_in(&mut self.pages, idx);
        if s.state != SlotState::Completed {
            return None;
        }
        let out = (
            s.gen,
            s.user_data,
            s.desc.kind,
            std::mem::take(&mut s.desc.payload),
        );
        s.gen = (s.gen + 1) & GEN_MASK;
        s.state = SlotState::Free;
        s.link = self.free_head;
        self.free_head = idx;
        self.unlist();
        Some(out)
    }

    /// Moves a slot whose payload is gone from the live array to the free list.
    #[inline(always)]
    fn unlink(&mut self, idx: u32) {
        let head = self.free_head;
        let s = self.slot_mut(idx);
        s.gen = (s.gen + 1) & GEN_MASK;
        s.state = SlotState::Free;
        s.link = head;
        self.free_head = idx;
        self.unlist();
    }

    /// Counts a slot out of the live array (its entry goes stale where it is).
    #[inline(always)]
    fn unlist(&mut self) {
        self.count -= 1;
        if self.count == 0 {
            self.live.clear();
        } else if self.live.len() > 2 * self.count as usize + 64 {
            self.compact();
        }
    }

    /// Drops the stale entries of the live array and renumbers the live ones.
    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        let mut kept = 0;
        for pos in 0..self.live.len() {
            let idx = self.live[pos];
            let s = slot_in(&mut self.pages, idx);
            if s.state != SlotState::Free && s.link as usize == pos {
                s.link = kept as u32;
                self.live[kept] = idx;
                kept += 1;
            }
        }
        self.live.truncate(kept);
        debug_assert_eq!(kept, self.count as usize);
    }

    /// The slot at `idx`, whatever its generation. `idx` must have been handed out.
    #[inline]
    pub(crate) fn slot(&self, idx: u32) -> &Slot {
        &self.pages[idx as usize / PAGE_SLOTS][idx as usize % PAGE_SLOTS]
    }

    /// Mutable access to the slot at `idx`, whatever its generation.
    #[inline]
    pub(crate) fn slot_mut(&mut self, idx: u32) -> &mut Slot {
        &mut self.pages[idx as usize / PAGE_SLOTS][idx as usize % PAGE_SLOTS]
    }

    /// The live slot `idx` if its generation is `gen`.
    #[inline]
    pub(crate) fn get(&self, idx: u32, gen: u32) -> Option<&Slot> {
        if idx >= self.fresh {
            return None;
        }
        let s = self.slot(idx);
        (s.gen == gen && s.state != SlotState::Free).then_some(s)
    }

    /// Indices of the live slots, in no particular order. O(live): stale entries
    /// never outnumber live ones by more than a constant.
    pub(crate) fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.live.iter().enumerate().filter_map(|(pos, &idx)| {
            let s = self.slot(idx);
            (s.state != SlotState::Free && s.link as usize == pos).then_some(idx)
        })
    }

    /// Test hook: force a slot's generation (to exercise wrap-around).
    #[cfg(test)]
    pub(crate) fn set_gen(&mut self, idx: u32, gen: u32) {
        self.slot_mut(idx).gen = gen & GEN_MASK;
    }

    /// Bytes of bookkeeping per slot.
    pub(crate) const SLOT_BYTES: usize = std::mem::size_of::<Slot>();
}

/// Slot `idx` of `pages` (a function of the pages alone, so a caller may hold it while
/// touching the table's other fields).
#[inline(always)]
fn slot_in(pages: &mut [Page], idx: u32) -> &mut Slot {
    &mut pages[idx as usize / PAGE_SLOTS][idx as usize % PAGE_SLOTS]
}

/// A page of default slots, built on the heap (32 KiB would be a large stack copy).
fn new_page() -> Page {
    let mut v = Vec::with_capacity(PAGE_SLOTS);
    v.resize_with(PAGE_SLOTS, Slot::default);
    match v.into_boxed_slice().try_into() {
        Ok(page) => page,
        Err(_) => unreachable!("the page has PAGE_SLOTS slots"),
    }
}

// The op table's budget (DESIGN §3): at most 128 bytes of bookkeeping per live op.
const _: () = assert!(std::mem::size_of::<Slot>() <= 128);

impl Table {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_at_most_128_bytes() {
        let bytes = std::hint::black_box(Table::SLOT_BYTES);
        assert!(bytes <= 128, "slot is {bytes} bytes");
    }

    #[test]
    fn pages_are_lazy_and_capacity_is_enforced() {
        let mut t = Table::new(1000);
        assert!(t.pages.is_empty());
        let mut ids = Vec::new();
        for _ in 0..1000 {
            ids.push(t.alloc().expect("room"));
        }
        assert!(t.alloc().is_none());
        assert_eq!(t.len(), 1000);
        for (i, _) in &ids {
            t.slot_mut(*i).state = SlotState::Queued;
        }
        t.free(ids[500].0);
        let (again, gen) = t.alloc().unwrap();
        assert_eq!(again, ids[500].0);
        assert_eq!(gen, ids[500].1 + 1);
        assert!(t.get(ids[500].0, ids[500].1).is_none());
    }

    #[test]
    fn live_list_stays_consistent() {
        // Churn with a varying number of live slots: entries go stale, the array is
        // cleared when nothing is live and compacted when stale entries pile up; the
        // listing always equals the live set, each once.
        let mut t = Table::new(256);
        let mut held: Vec<u32> = Vec::new();
        let mut x = 0x2545_f491u32;
        for round in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Phases that grow, hold steady, and drain to empty.
            let grow = match (round / 500) % 3 {
                0 => x % 4 != 0,
                1 => x % 2 == 0,
                _ => x % 4 == 0,
            };
            if grow {
                if let Some((i, _)) = t.alloc() {
                    t.slot_mut(i).state = SlotState::Queued;
                    held.push(i);
                }
            } else if !held.is_empty() {
                let i = held.swap_remove(x as usize % held.len());
                t.free(i);
            }
            assert_eq!(t.len(), held.len());
            assert!(t.live.len() <= 2 * held.len() + 64, "stale entries bounded");
            if round % 7 == 0 || held.len() < 3 {
                let mut live: Vec<u32> = t.live().collect();
                live.sort();
                let mut want = held.clone();
                want.sort();
                assert_eq!(live, want);
            }
        }
    }

    #[test]
    fn generation_wraps_and_stale_ids_stay_stale() {
        let mut t = Table::new(4);
        let (i, _) = t.alloc().unwrap();
        t.set_gen(i, GEN_MASK);
        t.slot_mut(i).state = SlotState::Queued;
        let old = t.slot(i).gen;
        t.free(i);
        let (j, gen) = t.alloc().unwrap();
        assert_eq!(i, j);
        assert_eq!(gen, 0, "generation wraps to zero");
        t.slot_mut(j).state = SlotState::Queued;
        assert!(t.get(i, old).is_none());
        assert!(t.get(j, 0).is_some());
    }
}
