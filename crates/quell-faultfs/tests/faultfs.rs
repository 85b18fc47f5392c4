//! End-to-end tests: real mounts, real system calls. Need root (or a working fusermount),
//! /dev/fuse and the fuse3 package.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quell_faultfs::{pattern_byte, Behavior, Error, FaultFs, FileSpec, Rule, Spec};

const WAIT: Duration = Duration::from_secs(10);

extern "C" fn noop_handler(_: libc::c_int) {}

/// Install a no-op SIGUSR2 handler WITHOUT SA_RESTART, so a blocked read returns EINTR.
fn install_sigusr2() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; we set a handler that does
        // nothing (async-signal-safe) and an empty mask, then install it for SIGUSR2.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop_handler as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = 0; // no SA_RESTART
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        }
    });
}

fn kill_thread<T>(h: &JoinHandle<T>) {
    // SAFETY: the thread is still running (we join it later), so its pthread_t is valid.
    let rc = unsafe { libc::pthread_kill(h.as_pthread_t(), libc::SIGUSR2) };
    assert_eq!(rc, 0);
}

/// Join a thread, failing (instead of hanging) if it does not finish within `WAIT`. On failure
/// the panic drops the FaultFs guard, which answers the parked request, so nothing stays hung.
fn join<T>(h: JoinHandle<T>) -> T {
    let deadline = Instant::now() + WAIT;
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "thread still blocked after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    h.join().unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// pread(2) straight, so the test sees -1/EINTR and not a retried call.
fn raw_pread(f: &File, buf: &mut [u8], off: u64) -> (isize, i32) {
    // SAFETY: buf is a valid writable buffer of buf.len() bytes; fd is open.
    let r = unsafe {
        libc::pread(
            f.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    };
    (r, if r < 0 { errno() } else { 0 })
}

fn raw_pwrite(f: &File, buf: &[u8], off: u64) -> (isize, i32) {
    // SAFETY: buf is a valid readable buffer of buf.len() bytes; fd is open.
    let r = unsafe {
        libc::pwrite(
            f.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    };
    (r, if r < 0 { errno() } else { 0 })
}

fn is_mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = p.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

fn check_pattern(data: &[u8], offset: u64) {
    for (i, b) in data.iter().enumerate() {
        assert_eq!(
            *b,
            pattern_byte(offset + i as u64),
            "byte at {}",
            offset + i as u64
        );
    }
}

fn mount(spec: Spec) -> FaultFs {
    FaultFs::mount_temp(spec).expect("mount faultfs (needs root, /dev/fuse and fuse3)")
}

#[test]
fn guard_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<FaultFs>();
    check::<Spec>();
}

#[test]
fn read_pattern_and_list_directory() {
    let fs = mount(
        Spec::new()
            .file(FileSpec::pattern("pattern.bin", 300_000))
            .file(FileSpec::bytes("hello.txt", b"hello\n".to_vec()))
            .file(FileSpec::new("empty", 0)),
    );
    let data = std::fs::read(fs.path("pattern.bin")).unwrap();
    assert_eq!(data.len(), 300_000);
    check_pattern(&data, 0);
    assert_eq!(std::fs::read(fs.path("hello.txt")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::metadata(fs.path("pattern.bin")).unwrap().len(),
        300_000
    );

    let mut names: Vec<String> = std::fs::read_dir(fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "hello.txt", "pattern.bin"]);

    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(fs.mountpoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "ls failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pattern.bin") && text.contains("300000"),
        "{text}"
    );

    // Writes land in memory; truncate works.
    std::fs::write(fs.path("empty"), b"written").unwrap();
    assert_eq!(fs.file_contents("empty").unwrap(), b"written");
    assert_eq!(std::fs::read(fs.path("empty")).unwrap(), b"written");
    OpenOptions::new()
        .write(true)
        .open(fs.path("empty"))
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(fs.file_contents("empty").unwrap(), b"wri");
    assert!(matches!(
        fs.file_contents("nope"),
        Err(Error::NoSuchFile(_))
    ));
    let s = fs.stats();
    assert!(s.reads >= 3);
    assert_eq!(s.bytes_written, 7);
    assert_eq!(s.files["pattern.bin"].bytes_read, 300_000);
}

#[test]
fn eio_short_and_delay() {
    let fs = mount(
        Spec::new()
            .file(
                FileSpec::pattern("eio", 1 << 20).rule(Rule::read(65_536..131_072, Behavior::Eio)),
            )
            .file(
                FileSpec::pattern("short", 1 << 20)
                    .rule(Rule::read(0..u64::MAX, Behavior::Short { n: 100 })),
            )
            .file(
                FileSpec::pattern("slow", 1 << 20)
                    .rule(Rule::read(0..u64::MAX, Behavior::Delay { ms: 150 })),
            ),
    );
    let mut buf = vec![0u8; 4096];

    let f = File::open(fs.path("eio")).unwrap();
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
    check_pattern(&buf, 0);
    let e = f.read_at(&mut buf, 65_536 + 4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // A read spanning the good prefix and the bad range fails as a whole.
    let e = f.read_at(&mut buf, 65_536 - 100).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));

    let f = File::open(fs.path("short")).unwrap();
    assert_eq!(f.read_at(&mut buf, 1000).unwrap(), 100);
    check_pattern(&buf[..100], 1000);

    let f = File::open(fs.path("slow")).unwrap();
    let t = Instant::now();
    assert_eq!(f.read_at(&mut buf, 5).unwrap(), 4096);
    let took = t.elapsed();
    check_pattern(&buf, 5);
    assert!(took >= Duration::from_millis(150), "delay only {took:?}");
    assert!(took < Duration::from_secs(5), "delay took {took:?}");
    assert!(fs.stats().injected_errors >= 2);
}

#[test]
fn hang_then_release_all() {
    let fs = mount(
        Spec::new()
            .file(FileSpec::pattern("hang", 1 << 20).rule(Rule::read(8192..12288, Behavior::Hang))),
    );
    let path = fs.path("hang");
    let reader = std::thread::spawn(move || {
        let f = File::open(path).unwrap();
        let mut buf = vec![0u8; 8192];
        let (n, e) = raw_pread(&f, &mut buf, 4096);
        (n, e, buf)
    });
    assert!(fs.wait_parked(1, WAIT), "read never parked");
    assert_eq!(fs.stats().parked, 1);
    assert_eq!(fs.stats().files["hang"].parked, 1);
    // Other reads are not blocked by the hung one.
    let mut other = vec![0u8; 4096];
    let f = File::open(fs.path("hang")).unwrap();
    assert_eq!(f.read_at(&mut other, 0).unwrap(), 4096);
    check_pattern(&other, 0);
    assert_eq!(fs.release_all(), 1);
    let (n, e, buf) = join(reader);
    assert_eq!((n, e), (8192, 0));
    check_pattern(&buf, 4096);
    let s = fs.stats();
    assert_eq!(s.parked, 0);
    assert_eq!(s.released, 1);
}

#[test]
fn other_reads_proceed_while_one_hangs() {
    let fs = mount(
        Spec::new()
            .file(FileSpec::pattern("hang", 4096).rule(Rule::read(0..4096, Behavior::Hang)))
            .file(FileSpec::pattern("ok", 100_000)),
    );
    let path = fs.path("hang");
    let reader = std::thread::spawn(move || {
        let f = File::open(path).unwrap();
        let mut buf = vec![0u8; 4096];
        raw_pread(&f, &mut buf, 0)
    });
    assert!(fs.wait_parked(1, WAIT));
    let data = std::fs::read(fs.path("ok")).unwrap();
    check_pattern(&data, 0);
    assert_eq!(fs.fail_parked(libc::ETIMEDOUT), 1);
    assert_eq!(join(reader), (-1, libc::ETIMEDOUT));
}

#[test]
fn interrupt_hung_read_gets_eintr() {
    install_sigusr2();
    let fs = mount(
        Spec::new()
            .file(FileSpec::pattern("hang", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang))),
    );
    let path = fs.path("hang");
    let reader = std::thread::spawn(move || {
        let f = File::open(path).unwrap();
        let mut buf = vec![0u8; 4096];
        let r = raw_pread(&f, &mut buf, 0);
        (r, Instant::now())
    });
    assert!(fs.wait_parked(1, WAIT), "read never parked");
    let t0 = Instant::now();
    kill_thread(&reader);
    let ((n, e), t1) = join(reader);
    assert_eq!((n, e), (-1, libc::EINTR));
    eprintln!("pthread_kill -> read returned EINTR in {:?}", t1 - t0);
    let s = fs.stats();
    assert_eq!(s.interrupts, 1, "{s:?}");
    assert_eq!(s.interrupted, 1);
    assert_eq!(s.parked, 0);
    assert_eq!(s.files["hang"].interrupted, 1);
}

#[test]
fn interrupt_delayed_read_gets_eintr() {
    install_sigusr2();
    let fs = mount(
        Spec::new().file(
            FileSpec::pattern("slow", 1 << 20)
                .rule(Rule::read(0..u64::MAX, Behavior::Delay { ms: 60_000 })),
        ),
    );
    let path = fs.path("slow");
    let reader = std::thread::spawn(move || {
        let f = File::open(path).unwrap();
        let mut buf = vec![0u8; 4096];
        raw_pread(&f, &mut buf, 0)
    });
    let parked = || fs.stats().delayed == 1;
    let deadline = Instant::now() + WAIT;
    while !parked() {
        assert!(Instant::now() < deadline, "read never delayed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let t0 = Instant::now();
    kill_thread(&reader);
    assert_eq!(join(reader), (-1, libc::EINTR));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(fs.wait_interrupts(1, WAIT));
    assert_eq!(fs.stats().delayed, 0);
}

#[test]
fn write_interrupted_midway_reports_accepted_bytes() {
    install_sigusr2();
    const HALF: u64 = 512 * 1024;
    let fs = mount(
        Spec::new().file(FileSpec::new("out", 0).rule(Rule::write(HALF..u64::MAX, Behavior::Hang))),
    );
    let path = fs.path("out");
    let data: Vec<u8> = (0..2 * HALF).map(|i| (i % 253) as u8).collect();
    let expect = data[..HALF as usize].to_vec();
    let writer = std::thread::spawn(move || {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        raw_pwrite(&f, &data, 0)
    });
    assert!(fs.wait_parked(1, WAIT), "write never parked");
    let before = fs.stats();
    // The kernel splits the write into requests of at most 128 KiB (fewer bytes when the
    // buffer is not page aligned); every request entirely below HALF was accepted.
    let accepted = before.bytes_written;
    assert!(
        accepted > HALF - 128 * 1024 && accepted <= HALF,
        "{before:?}"
    );
    kill_thread(&writer);
    let (n, e) = join(writer);
    let s = fs.stats();
    assert_eq!(s.interrupts, 1, "{s:?}");
    assert_eq!(
        (n, e),
        (accepted as isize, 0),
        "write must report the bytes accepted"
    );
    assert_eq!(s.bytes_written, n as u64);
    assert_eq!(s.parked, 0);
    assert_eq!(
        fs.file_contents("out").unwrap(),
        expect[..accepted as usize]
    );
}

#[test]
fn write_interrupted_before_any_byte_gets_eintr() {
    install_sigusr2();
    let fs = mount(
        Spec::new().file(FileSpec::new("out", 0).rule(Rule::write(0..u64::MAX, Behavior::Hang))),
    );
    let path = fs.path("out");
    let writer = std::thread::spawn(move || {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        raw_pwrite(&f, &[7u8; 1 << 20], 0)
    });
    assert!(fs.wait_parked(1, WAIT));
    kill_thread(&writer);
    assert_eq!(join(writer), (-1, libc::EINTR));
    assert_eq!(fs.stats().bytes_written, 0);
    assert!(fs.file_contents("out").unwrap().is_empty());
}

#[test]
fn enospc_and_short_writes() {
    let fs = mount(
        Spec::new()
            .file(FileSpec::new("full", 0).rule(Rule::write(4096..u64::MAX, Behavior::Enospc)))
            .file(
                FileSpec::new("short", 0).rule(Rule::write(0..u64::MAX, Behavior::Short { n: 10 })),
            ),
    );
    let f = OpenOptions::new()
        .write(true)
        .open(fs.path("full"))
        .unwrap();
    assert_eq!(f.write_at(&[1u8; 4096], 0).unwrap(), 4096);
    let e = f.write_at(&[2u8; 10], 4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(fs.file_contents("full").unwrap(), vec![1u8; 4096]);

    let f = OpenOptions::new()
        .write(true)
        .open(fs.path("short"))
        .unwrap();
    assert_eq!(f.write_at(&[3u8; 100], 0).unwrap(), 10);
    let s = fs.stats();
    assert_eq!(s.bytes_written, 4096 + 10);
    assert_eq!(s.files["short"].bytes_written, 10);
}

#[test]
fn set_rules_at_runtime() {
    let fs = mount(Spec::new().file(FileSpec::pattern("f", 8192)));
    let f = File::open(fs.path("f")).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 16);
    fs.set_rules(
        "f",
        vec![Rule::read(
            0..10,
            Behavior::Errno {
                errno: libc::EAGAIN,
            },
        )],
    )
    .unwrap();
    assert_eq!(
        f.read_at(&mut buf, 0).unwrap_err().raw_os_error(),
        Some(libc::EAGAIN)
    );
    assert_eq!(f.read_at(&mut buf, 10).unwrap(), 16);
    fs.set_rules("f", vec![]).unwrap();
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 16);
    assert!(matches!(
        fs.set_rules("nope", vec![]),
        Err(Error::NoSuchFile(_))
    ));
    assert!(fs
        .set_rules(
            "f",
            vec![Rule::read(
                std::ops::Range { start: 5, end: 1 },
                Behavior::Eio
            )]
        )
        .is_err());
}

fn spawn_hung_readers(path: &Path, n: usize) -> Vec<JoinHandle<(isize, i32, Vec<u8>)>> {
    (0..n)
        .map(|i| {
            let path: PathBuf = path.to_owned();
            std::thread::spawn(move || {
                let f = File::open(path).unwrap();
                let mut buf = vec![0u8; 4096];
                let (n, e) = raw_pread(&f, &mut buf, i as u64 * 4096);
                (n, e, buf)
            })
        })
        .collect()
}

#[test]
fn many_parked_reads_released() {
    let fs = mount(
        Spec::new()
            .file(FileSpec::pattern("hang", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang))),
    );
    let readers = spawn_hung_readers(&fs.path("hang"), 120);
    assert!(
        fs.wait_parked(120, WAIT),
        "only {} parked",
        fs.stats().parked
    );
    assert_eq!(fs.release_all(), 120);
    for (i, r) in readers.into_iter().enumerate() {
        let (n, e, buf) = join(r);
        assert_eq!((n, e), (4096, 0));
        check_pattern(&buf, i as u64 * 4096);
    }
}

#[test]
fn teardown_with_hung_reads_is_prompt() {
    let fs = mount(
        Spec::new()
            .file(FileSpec::pattern("hang", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang))),
    );
    let mp = fs.mountpoint().to_owned();
    assert!(is_mounted(&mp));
    let readers = spawn_hung_readers(&fs.path("hang"), 50);
    assert!(
        fs.wait_parked(50, WAIT),
        "only {} parked",
        fs.stats().parked
    );
    let t = Instant::now();
    drop(fs);
    let took = t.elapsed();
    eprintln!("teardown with 50 hung reads took {took:?}");
    assert!(took < Duration::from_secs(3), "teardown took {took:?}");
    for r in readers {
        let (n, e, _) = join(r);
        assert_eq!(n, -1);
        assert!(
            [libc::EIO, libc::ECONNABORTED, libc::ENOTCONN].contains(&e),
            "errno {e}"
        );
    }
    assert!(!is_mounted(&mp), "still mounted");
    assert!(!mp.exists(), "temp dir left behind");
}

#[test]
fn abort_ends_hung_requests() {
    let fs = mount(
        Spec::new()
            .file(FileSpec::pattern("hang", 1 << 20).rule(Rule::read(0..u64::MAX, Behavior::Hang))),
    );
    let readers = spawn_hung_readers(&fs.path("hang"), 3);
    assert!(fs.wait_parked(3, WAIT));
    fs.abort()
        .expect("fusectl abort (needs fusectl; root mounts it)");
    for r in readers {
        let (n, e, _) = join(r);
        assert_eq!(n, -1);
        assert!(
            [libc::ECONNABORTED, libc::ENOTCONN].contains(&e),
            "errno {e}"
        );
    }
    let e = std::fs::read(fs.path("hang")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
    let mp = fs.mountpoint().to_owned();
    fs.unmount().unwrap();
    assert!(!is_mounted(&mp));
}

#[test]
fn panic_while_mounted_still_unmounts() {
    let mut mp = PathBuf::new();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fs = mount(
            Spec::new()
                .file(FileSpec::pattern("hang", 4096).rule(Rule::read(0..4096, Behavior::Hang))),
        );
        mp = fs.mountpoint().to_owned();
        let _readers = spawn_hung_readers(&fs.path("hang"), 1);
        assert!(fs.wait_parked(1, WAIT));
        panic!("test failure while a read is hung");
    }));
    assert!(res.is_err());
    assert!(!is_mounted(&mp));
}

#[test]
fn cached_file_hang_and_release() {
    let fs = mount(
        Spec::new().file(
            FileSpec::pattern("cached", 1 << 20)
                .cached(true)
                .rule(Rule::read(0..u64::MAX, Behavior::Hang)),
        ),
    );
    let path = fs.path("cached");
    let reader = std::thread::spawn(move || {
        let f = File::open(path).unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, e) = raw_pread(&f, &mut buf, 8192);
        (n, e, buf)
    });
    assert!(fs.wait_parked(1, WAIT));
    // Readahead may send several requests; release until the reader is done.
    let deadline = Instant::now() + WAIT;
    while !reader.is_finished() {
        fs.release_all();
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let (n, e, buf) = join(reader);
    assert_eq!((n, e), (4096, 0));
    check_pattern(&buf, 8192);
}

#[test]
fn example_spec_parses() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/spec.toml");
    let spec = Spec::from_toml_file(&p).unwrap();
    assert!(spec.files.len() >= 3);
    assert!(spec
        .files
        .iter()
        .any(|f| f.rules.iter().any(|r| r.behavior == Behavior::Hang)));
    assert!(matches!(
        Spec::from_toml_file("/nonexistent/spec.toml"),
        Err(Error::ReadSpec { .. })
    ));
    // And it mounts.
    let fs = mount(spec);
    assert!(fs.is_alive());
}

/// Not a test on its own: the body of the child process of `run_foreground_until_sigterm`.
#[test]
fn run_foreground_child() {
    let Some(dir) = std::env::var_os("QUELL_FAULTFS_FG_DIR") else {
        return;
    };
    let spec = Spec::from_toml_str("[[file]]\nname = \"p\"\nsize = 10000\ncontent = \"pattern\"\n")
        .unwrap();
    quell_faultfs::run_foreground(Path::new(&dir), spec).unwrap();
}

#[test]
fn run_foreground_until_sigterm() {
    let dir = std::env::temp_dir().join(format!("quell-faultfs-fg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "run_foreground_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QUELL_FAULTFS_FG_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !is_mounted(&dir) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("run_foreground never mounted {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let data = std::fs::read(dir.join("p")).unwrap();
    check_pattern(&data, 0);
    assert_eq!(data.len(), 10000);
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline + WAIT {
            let _ = child.kill();
            panic!("run_foreground did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{status:?}");
    assert!(!is_mounted(&dir));
    std::fs::remove_dir(&dir).unwrap();
}
