//! The system calls behind descriptor identity (contract item I12): duplicating a
//! descriptor, telling whether a number still names a file quell holds, closing a number
//! only if it does, and closing duplicates of FUSE/NFS files off the ring's thread.
//!
//! Used by the ring's anchors (`ring::identity`) and by chains (`ring::chain`); they
//! decide when to pay these calls (only on rare paths: an op that waits in quell's own
//! queue, a chain's later steps, a close).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

/// `kcmp` type comparing two descriptors' open files (linux/kcmp.h).
const KCMP_FILE: libc::c_int = 0;

/// Duplicates `fd` onto the lowest free number `>= min` (close-on-exec).
/// `Err(errno)`: `EBADF` if `fd` is not open, `EMFILE`/`ENFILE`/`EINVAL` if no
/// number is left.
pub(crate) fn dup_fd(fd: RawFd, min: RawFd) -> Result<OwnedFd, i32> {
    // SAFETY: fcntl accepts any integer; a number that is not open yields EBADF.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if d < 0 {
        return Err(crate::classify::errno());
    }
    // SAFETY: `d` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// 0: not tried yet, 1: `kcmp` works, 2: refused here (seccomp, no
/// `CONFIG_KCMP`): compare what `fstat` and `F_GETFL` say instead.
static KCMP: AtomicU8 = AtomicU8::new(0);

/// Whether number `fd` names the open file `held` (a duplicate the chain holds)
/// names. `false` if `fd` is not open.
pub(crate) fn same_file(fd: RawFd, held: RawFd) -> bool {
    if KCMP.load(Ordering::Relaxed) != 2 {
        match kcmp_same(fd, held) {
            Ok(same) => {
                KCMP.store(1, Ordering::Relaxed);
                return same;
            }
            Err(libc::EBADF) => return false,
            Err(_) => KCMP.store(2, Ordering::Relaxed),
        }
    }
    stat_same(fd, held)
}

/// `kcmp(KCMP_FILE)`: whether the two numbers name the same open file.
/// `Err(errno)`: `EBADF` if one is not open; `EPERM`/`ENOSYS` where kcmp is refused.
pub(crate) fn kcmp_same(fd: RawFd, held: RawFd) -> Result<bool, i32> {
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    // SAFETY: kcmp only compares the kernel objects behind two numbers of this
    // process; numbers that are not open yield EBADF.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            fd as libc::c_ulong,
            held as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(crate::classify::errno());
    }
    Ok(r == 0)
}

/// Without kcmp: the same inode, opened with the same flags and at the same
/// offset. (Another open of the same file with the same flags and offset on the
/// reused number is not told apart.)
pub(crate) fn stat_same(fd: RawFd, held: RawFd) -> bool {
    let stat = |fd: RawFd| {
        // SAFETY: zeroed stat is valid; fstat writes into it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer; a closed number yields EBADF.
        let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
        // SAFETY: F_GETFL only reads the open file's flags.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: lseek with SEEK_CUR moves nothing (ESPIPE on pipes and sockets).
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        (ok && fl >= 0).then_some((st.st_dev, st.st_ino, fl, pos))
    };
    match (stat(fd), stat(held)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Closes `fd`; `Err(errno)` if the close reported an error other than `EINTR`
/// (Linux frees the number in every case but `EBADF`).
pub(crate) fn close(fd: RawFd) -> Result<(), i32> {
    // SAFETY: the caller owns `fd` (a number it checked names the chain's file).
    if unsafe { libc::close(fd) } == 0 {
        return Ok(());
    }
    match crate::classify::errno() {
        libc::EINTR => Ok(()),
        e => Err(e),
    }
}

/// The close the chain runs on quell's pool for a FUSE/NFS file (closing one
/// flushes to its server, which must not stall the ring's thread): checks that
/// `number` still names the file `held` names, closes it if so, then closes
/// `held`. `EBADF` if the number named another file or none.
pub(crate) fn checked_close(number: RawFd, held: OwnedFd) -> std::io::Result<usize> {
    use std::os::fd::IntoRawFd;
    let held = held.into_raw_fd();
    let first = if same_file(number, held) {
        close(number)
    } else {
        Err(libc::EBADF)
    };
    let second = close(held);
    first
        .and(second)
        .map(|()| 0)
        .map_err(std::io::Error::from_raw_os_error)
}

/// Closes descriptors on a thread of its own, started when first needed: dropping
/// the last duplicate of a FUSE/NFS file flushes to its server, which must not
/// stall the ring's thread.
#[derive(Default)]
pub(crate) struct Closer {
    tx: Option<std::sync::mpsc::Sender<OwnedFd>>,
}

impl Closer {
    pub(crate) fn close(&mut self, fd: OwnedFd) {
        if self.tx.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
            let spawned = std::thread::Builder::new()
                .name("quell-closer".into())
                .spawn(move || {
                    block_signals();
                    // Ends when the ring (its sender) is gone and the queue is empty.
                    for fd in rx {
                        drop(fd);
                    }
                });
            if spawned.is_err() {
                drop(fd); // no thread to be had: close here
                return;
            }
            self.tx = Some(tx);
        }
        if let Some(Err(e)) = self.tx.as_ref().map(|tx| tx.send(fd)) {
            drop(e.0);
        }
    }
}

/// Blocks every signal on the calling thread, so process-directed signals go to
/// the application's threads.
fn block_signals() {
    // SAFETY: sigfillset initialises the set; pthread_sigmask changes only this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of telling whether a number still names a held file: `kcmp`, and the
    /// `fstat`/`F_GETFL`/offset comparison used where kcmp is refused.
    #[test]
    fn same_file_tells_a_reused_number_from_the_held_file() {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let held = dup_fd(f.as_raw_fd(), 0).unwrap();
        let (n, h) = (f.as_raw_fd(), held.as_raw_fd());
        assert!(same_file(n, h));
        assert!(stat_same(n, h));
        // Another open of the same file: the same inode, another open file.
        let other = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(kcmp_same(other.as_raw_fd(), h), Ok(false));
        assert!(!same_file(other.as_raw_fd(), h));
        // A pipe.
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(!same_file(r.as_raw_fd(), h));
        assert!(!stat_same(r.as_raw_fd(), h));
        // A number that is not open (beyond any descriptor table here).
        let closed = 1 << 29;
        assert_eq!(kcmp_same(closed, h), Err(libc::EBADF));
        assert!(!stat_same(closed, h));
    }
}
