//! Finding the holes of a sparse source with `lseek(SEEK_DATA/SEEK_HOLE)`, so chunks
//! that lie wholly in a hole are neither read nor written (the destination keeps the
//! hole). Filesystems without the support report the whole file as data.

use std::os::fd::RawFd;

/// A cursor over the source's data and holes, queried in increasing offsets.
#[derive(Debug)]
pub struct Holes {
    fd: RawFd,
    size: u64,
    /// From `from` to `data` is a hole; from `data` to `hole` is data.
    from: u64,
    data: u64,
    hole: u64,
    known: bool,
}

fn seek(fd: RawFd, off: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on a descriptor we own; it only moves the file position, which
    // quell's positioned reads do not use.
    let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

impl Holes {
    /// A cursor over `fd`, a file of `size` bytes.
    pub fn new(fd: RawFd, size: u64) -> Holes {
        Holes {
            fd,
            size,
            from: 0,
            data: 0,
            hole: 0,
            known: false,
        }
    }

    /// Whether `off..end` lies wholly in a hole.
    pub fn is_hole(&mut self, off: u64, end: u64) -> bool {
        self.locate(off);
        end <= self.data
    }

    /// The data extents of `off..end` (each clipped to it), in order. A fully dense
    /// range costs no system call once the cursor has found its extent: that matters
    /// on tmpfs, where `SEEK_HOLE` walks the page cache up to the next hole.
    pub fn extents(&mut self, off: u64, end: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        let mut pos = off;
        while pos < end {
            self.locate(pos);
            let d = self.data.max(pos);
            if d >= end {
                break;
            }
            let h = self.hole.min(end);
            v.push((d, h));
            pos = h;
        }
        v
    }

    /// Points the cursor at the extent pair holding `off`.
    fn locate(&mut self, off: u64) {
        if self.known && off >= self.from && off < self.hole {
            return;
        }
        self.from = off;
        match seek(self.fd, off, libc::SEEK_DATA) {
            Some(d) => {
                self.data = d;
                self.hole = seek(self.fd, d, libc::SEEK_HOLE)
                    .unwrap_or(u64::MAX)
                    .max(d + 1);
            }
            // ENXIO: no data from `off` to the end.
            None if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => {
                self.data = self.size.max(off);
                self.hole = u64::MAX;
            }
            // Not supported: all data.
            None => {
                self.data = off;
                self.hole = u64::MAX;
            }
        }
        self.known = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn finds_the_hole_between_two_data_blocks() {
        let path = std::env::temp_dir().join(format!("quell-holes-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let mb = 1u64 << 20;
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"y", 8 * mb).unwrap();
        f.set_len(16 * mb).unwrap();
        let mut h = Holes::new(f.as_raw_fd(), 16 * mb);
        assert!(!h.is_hole(0, mb), "data at 0");
        // Where the filesystem tracks holes, the middle is one; either way the data
        // blocks are never called holes.
        let middle = h.is_hole(2 * mb, 3 * mb);
        assert!(!h.is_hole(8 * mb, 9 * mb), "data at 8 MiB");
        let tail = h.is_hole(12 * mb, 13 * mb);
        assert_eq!(middle, tail, "same filesystem answer for both holes");
        let ext = h.extents(0, 16 * mb);
        assert_eq!(ext.first().map(|e| e.0), Some(0), "{ext:?}");
        assert!(
            ext.iter().any(|&(d, e)| d <= 8 * mb && 8 * mb < e),
            "{ext:?}"
        );
        assert!(ext.windows(2).all(|w| w[0].1 <= w[1].0), "{ext:?}");
        if middle {
            assert_eq!(ext.len(), 2, "{ext:?}");
            assert!(ext[0].1 <= 2 * mb && ext[1].1 <= 12 * mb, "{ext:?}");
        } else {
            assert_eq!(ext, vec![(0, 16 * mb)]);
        }
        let _ = std::fs::remove_file(&path);
    }
}
