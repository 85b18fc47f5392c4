//! Contract item I11 for futures: what a stream read or an accept brought in after its
//! future was dropped is kept here, per descriptor, and served first to the next read
//! (or accept) on that descriptor.
//!
//! Contract item I12: the queues are keyed by descriptor number, so each remembers the
//! identity of the file it was filled from (`st_dev`, `st_ino`, taken with `fstat` when
//! a dropped future's op is abandoned: a cancel, the rare path). Before anything kept is
//! served, the number's file is checked again; a number closed outside quell and reused
//! by another file finds its stale queue dropped, never served. Nothing is checked on
//! the hot path: the check runs only when something is kept for the number.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{OwnedFd, RawFd};

/// Which queue of a descriptor an op feeds from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StreamKey {
    pub(crate) fd: RawFd,
    pub(crate) accept: bool,
}

/// The identity of the file behind a descriptor number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ident {
    dev: u64,
    ino: u64,
}

impl Ident {
    /// The file `fd` refers to now, or `None` if the number is not open.
    pub(crate) fn of(fd: RawFd) -> Option<Ident> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes one `stat` into valid memory; on a number that is not
        // open it fails with EBADF and touches nothing. A raw call (not rustix's
        // `BorrowedFd`-based one) because the number may have been closed by its owner.
        let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: fstat succeeded and filled the struct.
        let st = unsafe { st.assume_init() };
        Some(Ident {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

/// One descriptor's queue, with the file it was filled from.
#[derive(Debug)]
struct Queue<T> {
    ident: Ident,
    items: VecDeque<T>,
}

/// Bytes and accepted connections nobody was waiting for any more.
#[derive(Default, Debug)]
pub(crate) struct Kept {
    bytes: HashMap<RawFd, Queue<u8>>,
    conns: HashMap<RawFd, Queue<OwnedFd>>,
}

/// Finds `fd`'s queue for file `ident`, replacing a queue of another file (stale: the
/// number was closed and reused).
fn queue_for<T>(map: &mut HashMap<RawFd, Queue<T>>, fd: RawFd, ident: Ident) -> &mut Queue<T> {
    let q = map.entry(fd).or_insert_with(|| Queue {
        ident,
        items: VecDeque::new(),
    });
    if q.ident != ident {
        tracing::debug!(
            fd,
            "kept data of a file that no longer has this number dropped"
        );
        q.ident = ident;
        q.items.clear();
    }
    q
}

impl Kept {
    /// Whether something may wait to be served for `key` (before the identity check of
    /// [`check`](Kept::check)).
    #[inline]
    pub(crate) fn has(&self, key: StreamKey) -> bool {
        // Nothing kept is the common case: no hashing on the hot path.
        if self.bytes.is_empty() && self.conns.is_empty() {
            return false;
        }
        if key.accept {
            self.conns.get(&key.fd).is_some_and(|q| !q.items.is_empty())
        } else {
            self.bytes.get(&key.fd).is_some_and(|q| !q.items.is_empty())
        }
    }

    /// [`has`](Kept::has), then checks that the number still names the file the data
    /// came from; data of another file is dropped (I12). The rare path: only runs when
    /// something is kept for the number.
    pub(crate) fn has_checked(&mut self, key: StreamKey) -> bool {
        if !self.has(key) {
            return false;
        }
        let now = Ident::of(key.fd);
        let kept = if key.accept {
            self.conns.get(&key.fd).map(|q| q.ident)
        } else {
            self.bytes.get(&key.fd).map(|q| q.ident)
        };
        if now.is_some() && now == kept {
            return true;
        }
        tracing::debug!(
            fd = key.fd,
            "descriptor number reused by another file: its kept data is dropped"
        );
        if key.accept {
            self.conns.remove(&key.fd);
        } else {
            self.bytes.remove(&key.fd);
        }
        false
    }

    /// The identity of the file `fd`'s kept bytes came from.
    pub(crate) fn bytes_ident(&self, fd: RawFd) -> Option<Ident> {
        self.bytes.get(&fd).map(|q| q.ident)
    }

    /// Bytes kept for `fd`.
    pub(crate) fn bytes_len(&self, fd: RawFd) -> usize {
        self.bytes.get(&fd).map_or(0, |q| q.items.len())
    }

    /// Connections kept for listening socket `fd`.
    pub(crate) fn conns_len(&self, fd: RawFd) -> usize {
        self.conns.get(&fd).map_or(0, |q| q.items.len())
    }

    /// Appends bytes read from file `ident` through `fd`.
    pub(crate) fn push_bytes(&mut self, fd: RawFd, ident: Ident, data: &[u8]) {
        if !data.is_empty() {
            queue_for(&mut self.bytes, fd, ident).items.extend(data);
        }
    }

    /// Puts bytes back in front (a served read whose future was dropped unread, the
    /// part of an exact read that waited for the rest).
    pub(crate) fn unshift_bytes(&mut self, fd: RawFd, ident: Ident, data: &[u8]) {
        if !data.is_empty() {
            let q = &mut queue_for(&mut self.bytes, fd, ident).items;
            for &b in data.iter().rev() {
                q.push_front(b);
            }
        }
    }

    /// Puts a connection back in front (a served accept whose future was dropped).
    pub(crate) fn unshift_conn(&mut self, fd: RawFd, ident: Ident, conn: OwnedFd) {
        queue_for(&mut self.conns, fd, ident).items.push_front(conn);
    }

    pub(crate) fn push_conn(&mut self, fd: RawFd, ident: Ident, conn: OwnedFd) {
        queue_for(&mut self.conns, fd, ident).items.push_back(conn);
    }

    /// Moves up to `dst.len()` kept bytes of `fd` into `dst`; returns how many.
    pub(crate) fn take_bytes(&mut self, fd: RawFd, dst: &mut [u8]) -> usize {
        let Some(q) = self.bytes.get_mut(&fd) else {
            return 0;
        };
        let n = q.items.len().min(dst.len());
        for (d, s) in dst.iter_mut().zip(q.items.drain(..n)) {
            *d = s;
        }
        if q.items.is_empty() {
            self.bytes.remove(&fd);
        }
        n
    }

    /// The first kept connection of `fd`, with the identity of its listener.
    pub(crate) fn take_conn(&mut self, fd: RawFd) -> Option<(OwnedFd, Ident)> {
        let q = self.conns.get_mut(&fd)?;
        let ident = q.ident;
        let c = q.items.pop_front();
        if q.items.is_empty() {
            self.conns.remove(&fd);
        }
        c.map(|c| (c, ident))
    }

    /// Drops what was kept for `fd` (closing kept connections): the descriptor is
    /// being closed, and its number may come back for another file.
    pub(crate) fn forget(&mut self, fd: RawFd) {
        self.bytes.remove(&fd);
        self.conns.remove(&fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    const A: Ident = Ident { dev: 1, ino: 1 };
    const B: Ident = Ident { dev: 1, ino: 2 };

    #[test]
    fn bytes_come_back_in_order_and_in_pieces() {
        let mut k = Kept::default();
        let key = StreamKey {
            fd: 3,
            accept: false,
        };
        assert!(!k.has(key));
        k.push_bytes(3, A, b"hello ");
        k.push_bytes(3, A, b"world");
        assert!(k.has(key));
        let mut a = [0u8; 4];
        assert_eq!(k.take_bytes(3, &mut a), 4);
        assert_eq!(&a, b"hell");
        let mut b = [0u8; 64];
        assert_eq!(k.take_bytes(3, &mut b), 7);
        assert_eq!(&b[..7], b"o world");
        assert!(!k.has(key));
        assert_eq!(k.take_bytes(3, &mut b), 0);
    }

    #[test]
    fn bytes_of_another_file_replace_stale_ones() {
        let mut k = Kept::default();
        k.push_bytes(3, A, b"old");
        k.push_bytes(3, B, b"new");
        let mut b = [0u8; 8];
        assert_eq!(k.take_bytes(3, &mut b), 3);
        assert_eq!(&b[..3], b"new");
    }

    #[test]
    fn a_checked_queue_of_a_reused_number_is_dropped() {
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = r.as_raw_fd();
        let key = StreamKey { fd, accept: false };
        let mut k = Kept::default();
        k.push_bytes(fd, Ident::of(fd).unwrap(), b"mine");
        assert!(k.has_checked(key));
        k.forget(fd);
        k.push_bytes(fd, A, b"not this file's");
        assert!(k.has(key));
        assert!(!k.has_checked(key));
        assert_eq!(k.bytes_len(fd), 0);
    }

    #[test]
    fn forget_closes_kept_connections() {
        let mut k = Kept::default();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        k.push_conn(7, A, a.into());
        assert_eq!(k.conns_len(7), 1);
        k.forget(7);
        assert_eq!(k.conns_len(7), 0);
        assert!(k.take_conn(7).is_none());
    }
}
