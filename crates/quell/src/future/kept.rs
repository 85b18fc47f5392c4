//! Contract item I11 for futures: what a stream read or an accept brought in after its
//! future was dropped is kept here, per descriptor, and served first to the next read
//! (or accept) on that descriptor.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{OwnedFd, RawFd};

/// Which queue of a descriptor an op feeds from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StreamKey {
    pub(crate) fd: RawFd,
    pub(crate) accept: bool,
}

/// Bytes and accepted connections nobody was waiting for any more.
#[derive(Default, Debug)]
pub(crate) struct Kept {
    bytes: HashMap<RawFd, VecDeque<u8>>,
    conns: HashMap<RawFd, VecDeque<OwnedFd>>,
}

impl Kept {
    /// Whether something waits to be served for `key`.
    #[inline]
    pub(crate) fn has(&self, key: StreamKey) -> bool {
        // Nothing kept is the common case: no hashing on the hot path.
        if self.bytes.is_empty() && self.conns.is_empty() {
            return false;
        }
        if key.accept {
            self.conns.get(&key.fd).is_some_and(|q| !q.is_empty())
        } else {
            self.bytes.get(&key.fd).is_some_and(|q| !q.is_empty())
        }
    }

    /// Bytes kept for `fd`.
    pub(crate) fn bytes_len(&self, fd: RawFd) -> usize {
        self.bytes.get(&fd).map_or(0, |q| q.len())
    }

    /// Connections kept for listening socket `fd`.
    pub(crate) fn conns_len(&self, fd: RawFd) -> usize {
        self.conns.get(&fd).map_or(0, |q| q.len())
    }

    pub(crate) fn push_bytes(&mut self, fd: RawFd, data: &[u8]) {
        if !data.is_empty() {
            self.bytes.entry(fd).or_default().extend(data);
        }
    }

    /// Puts bytes back in front (a served read whose future was dropped unread).
    pub(crate) fn unshift_bytes(&mut self, fd: RawFd, data: &[u8]) {
        if !data.is_empty() {
            let q = self.bytes.entry(fd).or_default();
            for &b in data.iter().rev() {
                q.push_front(b);
            }
        }
    }

    /// Puts a connection back in front (a served accept whose future was dropped).
    pub(crate) fn unshift_conn(&mut self, fd: RawFd, conn: OwnedFd) {
        self.conns.entry(fd).or_default().push_front(conn);
    }

    pub(crate) fn push_conn(&mut self, fd: RawFd, conn: OwnedFd) {
        self.conns.entry(fd).or_default().push_back(conn);
    }

    /// Moves up to `dst.len()` kept bytes of `fd` into `dst`; returns how many.
    pub(crate) fn take_bytes(&mut self, fd: RawFd, dst: &mut [u8]) -> usize {
        let Some(q) = self.bytes.get_mut(&fd) else {
            return 0;
        };
        let n = q.len().min(dst.len());
        for (d, s) in dst.iter_mut().zip(q.drain(..n)) {
            *d = s;
        }
        if q.is_empty() {
            self.bytes.remove(&fd);
        }
        n
    }

    pub(crate) fn take_conn(&mut self, fd: RawFd) -> Option<OwnedFd> {
        let q = self.conns.get_mut(&fd)?;
        let c = q.pop_front();
        if q.is_empty() {
            self.conns.remove(&fd);
        }
        c
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

    #[test]
    fn bytes_come_back_in_order_and_in_pieces() {
        let mut k = Kept::default();
        let key = StreamKey {
            fd: 3,
            accept: false,
        };
        assert!(!k.has(key));
        k.push_bytes(3, b"hello ");
        k.push_bytes(3, b"world");
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
    fn forget_closes_kept_connections() {
        let mut k = Kept::default();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        k.push_conn(7, a.into());
        assert_eq!(k.conns_len(7), 1);
        k.forget(7);
        assert_eq!(k.conns_len(7), 0);
        assert!(k.take_conn(7).is_none());
    }
}
