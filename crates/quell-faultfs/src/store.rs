//! In-memory file content: the initial [`Content`] (computed on demand, so a 1 GiB pattern file
//! costs nothing) plus an overlay of written chunks.

use std::collections::BTreeMap;

use crate::spec::Content;

const CHUNK: u64 = 64 * 1024;

/// The bytes of one file.
///
/// Invariants: `base_limit <= size`; the base content is visible only below `base_limit`
/// (above it, never-written bytes read as zero); overlay bytes at offsets `>= size` are zero.
#[derive(Debug)]
pub(crate) struct FileData {
    base: Content,
    base_limit: u64,
    size: u64,
    chunks: BTreeMap<u64, Box<[u8]>>,
}

impl FileData {
    pub(crate) fn new(base: Content, size: u64) -> FileData {
        FileData {
            base,
            base_limit: size,
            size,
            chunks: BTreeMap::new(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Fill `dst` with the never-written content starting at `offset`.
    fn fill_base(&self, offset: u64, dst: &mut [u8]) {
        if offset >= self.base_limit {
            dst.fill(0);
            return;
        }
        let visible = usize::try_from(self.base_limit - offset)
            .unwrap_or(usize::MAX)
            .min(dst.len());
        self.base.fill(offset, &mut dst[..visible]);
        dst[visible..].fill(0);
    }

    /// The bytes `[offset, offset + len)` clamped to the file size.
    pub(crate) fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        if offset >= self.size {
            return Vec::new();
        }
        let end = offset.saturating_add(len).min(self.size);
        // Requests are at most max_write (128 KiB); callers never ask for more than a request.
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let ci = pos / CHUNK;
            let cstart = ci * CHUNK;
            let in_chunk = pos - cstart;
            let n = (CHUNK - in_chunk).min(end - pos) as usize;
            let dst_off = (pos - offset) as usize;
            let dst = &mut out[dst_off..dst_off + n];
            match self.chunks.get(&ci) {
                Some(c) => dst.copy_from_slice(&c[in_chunk as usize..in_chunk as usize + n]),
                None => self.fill_base(pos, dst),
            }
            pos += n as u64;
        }
        out
    }

    /// Store `data` at `offset`, growing the file. Returns the number of bytes stored.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> usize {
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return 0;
        };
        let mut pos = offset;
        while pos < end {
            let ci = pos / CHUNK;
            let cstart = ci * CHUNK;
            let in_chunk = (pos - cstart) as usize;
            let n = ((CHUNK as usize) - in_chunk).min((end - pos) as usize);
            if !self.chunks.contains_key(&ci) {
                let mut c = vec![0u8; CHUNK as usize].into_boxed_slice();
                self.fill_base(cstart, &mut c);
                self.chunks.insert(ci, c);
            }
            if let Some(c) = self.chunks.get_mut(&ci) {
                let src = (pos - offset) as usize;
                c[in_chunk..in_chunk + n].copy_from_slice(&data[src..src + n]);
            }
            pos += n as u64;
        }
        self.size = self.size.max(end);
        data.len()
    }

    /// Set the size (truncate or extend with zeros).
    pub(crate) fn set_size(&mut self, new: u64) {
        if new < self.size {
            self.base_limit = self.base_limit.min(new);
            let first_dead = new.div_ceil(CHUNK);
            self.chunks.retain(|&ci, _| ci < first_dead);
            let ci = new / CHUNK;
            let in_chunk = (new - ci * CHUNK) as usize;
            if in_chunk > 0 {
                if let Some(c) = self.chunks.get_mut(&ci) {
                    c[in_chunk..].fill(0);
                }
            }
        }
        self.size = new;
    }

    /// Blocks of 512 bytes actually held in memory (for `st_blocks`).
    pub(crate) fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::pattern_byte;

    #[test]
    fn pattern_read_write_truncate() {
        let mut f = FileData::new(Content::Pattern, 200_000);
        let r = f.read(65_530, 20);
        for (i, b) in r.iter().enumerate() {
            assert_eq!(*b, pattern_byte(65_530 + i as u64));
        }
        assert_eq!(f.read(199_990, 100).len(), 10);
        assert!(f.read(300_000, 10).is_empty());

        f.write(65_534, &[7; 4]);
        let r = f.read(65_533, 6);
        assert_eq!(
            r,
            vec![pattern_byte(65_533), 7, 7, 7, 7, pattern_byte(65_538)]
        );

        f.set_size(65_535);
        f.set_size(70_000);
        let r = f.read(65_533, 4);
        assert_eq!(r, vec![pattern_byte(65_533), 7, 0, 0]);
        assert_eq!(f.read(69_999, 1), vec![0]);

        f.write(300_000, &[1, 2]);
        assert_eq!(f.size(), 300_002);
        assert_eq!(f.read(299_999, 5), vec![0, 1, 2]);
    }
}
