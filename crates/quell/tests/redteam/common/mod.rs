#![allow(dead_code)]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::Duration;

pub use quell::{BackendChoice, BackendKind};

pub const BACKENDS: [BackendChoice; 2] = [BackendChoice::Uring, BackendChoice::Portable];

pub fn ring(b: BackendChoice) -> quell::Ring {
    let r = quell::Ring::builder().backend(b).build().expect("ring");
    match b {
        BackendChoice::Uring => assert_eq!(r.backend(), BackendKind::Uring),
        BackendChoice::Portable => assert_eq!(r.backend(), BackendKind::Portable),
        _ => {}
    }
    r
}

pub fn builder(b: BackendChoice) -> quell::Builder {
    quell::Ring::builder().backend(b)
}

/// Run `f` on its own thread; panic with "HANG" if it does not finish in `secs`.
pub fn guard<T: Send + 'static>(
    what: &str,
    secs: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => {
            let _ = h.join();
            v
        }
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("HANG: {what} did not finish within {secs}s"),
    }
}

pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

pub fn fd_list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                std::fs::read_link(&p)
                    .map(|l| l.display().to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

pub fn write_fd(fd: RawFd, data: &[u8]) -> isize {
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> isize {
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

pub fn set_nonblock(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Read everything currently available (non-blocking) from fd.
pub fn drain_now(fd: RawFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let r = unsafe { libc::poll(&mut pfd, 1, 50) };
        if r <= 0 {
            break;
        }
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        let n = if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTSOCK) {
            read_fd(fd, &mut buf)
        } else {
            n
        };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    out
}

pub fn tmpfile(dir: &str, tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::path::PathBuf::from(format!("{dir}/quell-rt-{tag}-{}-{n}", std::process::id()))
}

pub fn raw<T: AsRawFd>(t: &T) -> RawFd {
    t.as_raw_fd()
}

pub fn rt_current() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
pub fn rt_multi() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn driver_on(b: BackendChoice) -> quell::future::Driver {
    quell::future::Driver::new(ring(b))
}

/// Runs the named test of this binary in a child process with QUELL_RT_CHILD=1.
/// Returns (exit status success, combined output).
pub fn in_child(test_name: &str, secs: u64) -> (Option<i32>, String) {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env("QUELL_RT_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            break;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return (
                None,
                format!(
                    "HANG (killed after {secs}s)\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn is_child() -> bool {
    std::env::var_os("QUELL_RT_CHILD").is_some()
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Tests that count descriptors take this lock so they do not see each other's fds.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn errno_of(o: &quell::Outcome) -> Option<i32> {
    match o {
        quell::Outcome::Failed(_) => (*o).into_result().err().and_then(|e| e.raw_os_error()),
        _ => None,
    }
}
