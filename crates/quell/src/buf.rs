//! Owned buffers with an alignment, for `O_DIRECT` transfers.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A zero-initialised heap buffer whose address is a multiple of `align`, as
/// `O_DIRECT` transfers need.
///
/// ```
/// let mut b = quell::AlignedBuf::new(8192, 4096).unwrap();
/// assert_eq!(b.as_ptr() as usize % 4096, 0);
/// b[0] = 7;
/// assert_eq!(b.len(), 8192);
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two). Returns `None`
    /// when the buffer cannot be had: `align` is not a power of two, `len` rounded up to
    /// `align` overflows `isize`, or the allocator has no such memory (a length beyond
    /// what the system can give, an alignment it cannot honour). It never aborts the
    /// process, whatever the arguments.
    ///
    /// ```
    /// let buf = quell::AlignedBuf::new(4096, 512).unwrap();
    /// assert!(buf.iter().all(|&b| b == 0));
    /// assert_eq!(buf.as_ptr() as usize % 512, 0);
    /// // An alignment that is not a power of two is refused, not rounded.
    /// assert!(quell::AlignedBuf::new(4096, 3000).is_none());
    /// // So is what no allocator can serve: an alignment or a length beyond any
    /// // address space.
    /// assert!(quell::AlignedBuf::new(4096, 1 << 62).is_none());
    /// assert!(quell::AlignedBuf::new(1 << 60, 4096).is_none());
    /// ```
    pub fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        // A failed allocation is an answer, not an abort (`handle_alloc_error` would end
        // the process): the caller asked for memory and may do without.
        let ptr = NonNull::new(raw)?;
        Some(AlignedBuf { ptr, len, align })
    }

    /// The alignment the buffer was allocated with.
    ///
    /// ```
    /// // O_DIRECT wants offsets and lengths in multiples of the alignment too.
    /// let buf = quell::AlignedBuf::new(8192, 4096).unwrap();
    /// assert_eq!(buf.align(), 4096);
    /// assert_eq!(buf.len() % buf.align(), 0);
    /// ```
    pub fn align(&self) -> usize {
        self.align
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len initialised bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            Layout::from_size_align(self.len.max(1), self.align).expect("layout was valid");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.align)
            .finish()
    }
}
