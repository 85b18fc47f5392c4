//! `quell cp`: byte-identical copies, and honest stops (Ctrl-C, a second Ctrl-C, an I/O
//! error, a deadline) that leave the destination equal to a prefix of the source whose
//! length the command reports, resumable with `--resume`. Each behavioural test runs on
//! both backends.

use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quell");

fn backends() -> Vec<&'static str> {
    let mut v = vec!["portable"];
    if quell::Ring::builder()
        .backend(quell::BackendChoice::Uring)
        .build()
        .is_ok()
    {
        v.insert(0, "uring");
    }
    v
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("quell-cp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cp(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN)
        .arg("cp")
        .arg("--no-progress")
        .args(args)
        .output()
        .expect("quell runs")
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The N of "holds the first N bytes" in the command's report.
fn reported_offset(err: &str) -> u64 {
    let at = err
        .find("holds the first ")
        .unwrap_or_else(|| panic!("no offset reported in: {err}"));
    err[at + "holds the first ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn same_file(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .expect("cmp runs")
        .success()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[test]
fn help_documents_the_exit_codes() {
    let o = Command::new(BIN).args(["cp", "--help"]).output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for w in [
        "--depth",
        "--block-size",
        "--direct",
        "copy-range",
        "--deadline",
        "--resume",
        "Exit codes",
        "3  --deadline passed",
        "4  interrupted by Ctrl-C",
        "5  interrupted by a second Ctrl-C",
    ] {
        assert!(s.contains(w), "{w} missing from:\n{s}");
    }
}

#[test]
fn bad_arguments_are_clear() {
    let d = TempDir::new("bad");
    let src = d.path("src");
    std::fs::write(&src, b"abc").unwrap();
    let dst = d.path("dst");
    for (args, expect) in [
        (vec![os(&src)], "DST"),
        (vec![os(&src), os(&dst), os("--depth"), os("0")], "--depth"),
        (
            vec![os(&src), os(&dst), os("--block-size"), os("12XB")],
            "suffix",
        ),
        (
            vec![
                os(&src),
                os(&dst),
                os("--block-size"),
                os("1000"),
                os("--direct"),
            ],
            "multiple of 4096",
        ),
        (
            vec![os(&src), os(&dst), os("--deadline"), os("soon")],
            "duration",
        ),
        (
            vec![os(&src), os(&dst), os("--block-size"), os("0")],
            "--block-size",
        ),
        (
            vec![
                os(&src),
                os(&dst),
                os("--direct"),
                os("--engine"),
                os("splice"),
            ],
            "--engine rw",
        ),
        (
            vec![
                os(&src),
                os(&dst),
                os("--direct"),
                os("--engine"),
                os("copy-range"),
            ],
            "--engine rw",
        ),
        (
            vec![os(&src), os(&dst), os("--engine"), os("memcpy")],
            "copy-range",
        ),
    ] {
        let o = cp(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("error") && e.contains(expect), "{args:?}: {e}");
    }
    // Runtime errors: exit 1 with the path named.
    let missing = d.path("missing");
    let o = cp(&[os(&missing), os(&dst)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    let o = cp(&[os(&src), os(&dst), os("--resume")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("checkpoint"), "{}", stderr(&o));
    let o = cp(&[os(&src), os(&src)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("same file"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    // Buffers no machine can allocate: an error, not a panic or an abort.
    let o = cp(&[
        os(&src),
        os(&dst),
        os("--direct"),
        os("--block-size"),
        os(&(1u64 << 60).to_string()),
    ]);
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("block-size"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn copies_are_byte_identical() {
    let d = TempDir::new("ident");
    let sizes = [0usize, 1, 4096, 100_003, (1 << 20) + 17];
    for backend in backends() {
        for &n in &sizes {
            let src = d.path(&format!("src-{n}"));
            std::fs::write(&src, data(n, n as u8)).unwrap();
            for (direct, engine) in [
                (false, "copy-range"),
                (false, "splice"),
                (false, "rw"),
                (true, "rw"),
            ] {
                let dst = d.path(&format!("dst-{backend}-{n}-{direct}-{engine}"));
                std::fs::write(&dst, b"stale bytes that must go").unwrap();
                let mut args = vec![
                    os(&src),
                    os(&dst),
                    os("--backend"),
                    os(backend),
                    os("--block-size"),
                    os("64K"),
                    os("--depth"),
                    os("4"),
                    os("--engine"),
                    os(engine),
                ];
                if direct {
                    args.push(os("--direct"));
                }
                let o = cp(&args);
                if direct && !o.status.success() && stderr(&o).contains("Invalid argument") {
                    eprintln!("O_DIRECT unsupported in {}; skipped", d.0.display());
                    continue;
                }
                assert!(
                    o.status.success(),
                    "{backend} {n} {engine} {direct}: {}",
                    stderr(&o)
                );
                assert!(
                    same_file(&src, &dst),
                    "{backend} {n} bytes {engine} direct={direct}"
                );
                assert!(
                    stderr(&o).contains(&format!("{engine} engine")),
                    "{backend} {n}: the engine asked for was used: {}",
                    stderr(&o)
                );
            }
        }
    }
}

#[test]
fn a_sparse_gibibyte_copies_identically_and_stays_sparse() {
    let d = TempDir::new("sparse");
    let src = d.path("src");
    let f = std::fs::File::create(&src).unwrap();
    let gib = 1u64 << 30;
    for (off, bytes) in [
        (0u64, &b"head"[..]),
        (gib / 2 + 7, b"middle"),
        (gib - 3, b"end"),
    ] {
        std::os::unix::fs::FileExt::write_all_at(&f, bytes, off).unwrap();
    }
    f.set_len(gib).unwrap();
    drop(f);
    for backend in backends() {
        // The default engine here (one local filesystem) is copy-range, whose 32 MiB
        // chunks would allocate 96 MiB if it copied the holes inside the three chunks
        // that hold data; the others skip whole 1 MiB chunks of zeros.
        for (engine, limit) in [("copy-range", 1u64 << 20), ("splice", 64 << 20)] {
            let dst = d.path(&format!("dst-{backend}-{engine}"));
            let mut args = vec![os(&src), os(&dst), os("--backend"), os(backend)];
            if engine != "copy-range" {
                args.extend([os("--engine"), os(engine)]);
            }
            let o = cp(&args);
            assert!(o.status.success(), "{backend}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(&format!("{engine} engine")),
                "{backend}: {}",
                stderr(&o)
            );
            assert_eq!(std::fs::metadata(&dst).unwrap().len(), gib);
            assert!(same_file(&src, &dst), "{backend} {engine}");
            let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&dst).unwrap());
            assert!(
                blocks * 512 < limit,
                "{backend} {engine}: {blocks} blocks allocated"
            );
            let _ = std::fs::remove_file(&dst);
        }
    }
}

fn mount(spec: Spec) -> Option<FaultFs> {
    if std::env::var_os("QUELL_SKIP_FUSE_TESTS").is_some_and(|v| v == "1") {
        eprintln!("QUELL_SKIP_FUSE_TESTS=1: skipped");
        return None;
    }
    Some(FaultFs::mount_temp(spec).expect("mount quell-faultfs (needs root and /dev/fuse)"))
}

fn spawn_cp(args: &[&std::ffi::OsStr]) -> Child {
    Command::new(BIN)
        .arg("cp")
        .arg("--no-progress")
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("quell cp still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err, start.elapsed())
}

fn sigint(child: &Child) {
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

fn wait_for_len(path: &Path, at_least: u64) {
    let start = Instant::now();
    while std::fs::metadata(path).map_or(0, |m| m.len()) < at_least {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "copy never started"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks the destination is exactly the source's first `n` bytes.
fn assert_prefix(src: &[u8], dst: &Path, n: u64) {
    let got = std::fs::read(dst).unwrap();
    assert_eq!(
        got.len() as u64,
        n,
        "destination length is the reported offset"
    );
    assert!(
        got == src[..n as usize],
        "destination equals the source up to {n}"
    );
}

const SLOW: u64 = 8 << 20;

/// `slow.bin`: every read of it takes 40 ms, and nothing of it is cached.
fn slow_spec() -> Spec {
    Spec::new().file(
        FileSpec::pattern("slow.bin", SLOW)
            .rule(Rule::read(0..SLOW, Behavior::Delay { ms: 40 }))
            .cached(false),
    )
}

/// Mounts `spec` (which holds `slow.bin`) and returns the mount with `slow.bin`'s bytes.
fn mount_slow(spec: Spec) -> Option<(FaultFs, Vec<u8>)> {
    let fs = mount(spec)?;
    let bytes = fs.file_contents("slow.bin").unwrap();
    Some((fs, bytes))
}

fn slow_source() -> Option<(FaultFs, Vec<u8>)> {
    mount_slow(slow_spec())
}

#[test]
fn ctrl_c_drains_to_a_consistent_prefix_and_resume_finishes() {
    let Some((fs, bytes)) = slow_source() else {
        return;
    };
    let src = fs.path("slow.bin");
    let d = TempDir::new("sigint");
    for backend in backends() {
        let dst = d.path(&format!("dst-{backend}"));
        let args = [
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--block-size"),
            os("64K"),
            os("--depth"),
            os("4"),
        ];
        let child = spawn_cp(&args);
        wait_for_len(&dst, 128 << 10);
        sigint(&child);
        let (code, err, _) = finish(child, Duration::from_secs(20));
        assert_eq!(code, Some(4), "{backend}: {err}");
        assert!(err.contains("drained"), "{backend}: {err}");
        let n = reported_offset(&err);
        assert!(n > 0 && n < SLOW, "{backend}: {n}");
        assert_eq!(n % (64 << 10), 0, "{backend}: whole chunks");
        assert_prefix(&bytes, &dst, n);
        let ck = std::fs::read_to_string(d.path(&format!("dst-{backend}.quell-cp.json"))).unwrap();
        let ck: serde_json::Value = serde_json::from_str(&ck).unwrap();
        assert_eq!(ck["done"], n, "{backend}: the checkpoint agrees");
        assert_eq!(ck["reason"], "interrupted");

        let mut resume = args.to_vec();
        resume.push(os("--resume"));
        let (code, err, _) = finish(spawn_cp(&resume), Duration::from_secs(30));
        assert_eq!(code, Some(0), "{backend}: {err}");
        assert!(
            err.contains(&format!("({} bytes", SLOW - n)),
            "{backend}: resumed from {n}: {err}"
        );
        assert!(std::fs::read(&dst).unwrap() == bytes, "{backend}");
        assert!(
            !d.path(&format!("dst-{backend}.quell-cp.json")).exists(),
            "{backend}: checkpoint removed once done"
        );
    }
}

#[test]
fn a_second_ctrl_c_cancels_and_still_reports_an_honest_prefix() {
    // Writes past 256 KiB of the destination hang: the drain the first Ctrl-C starts
    // cannot finish, so only the second Ctrl-C, canceling them, ends the copy.
    let hang_from = 256u64 << 10;
    let Some(fs) = mount(
        Spec::new().file(
            FileSpec::new("out.bin", 0)
                .rule(Rule::write(hang_from..u64::MAX / 2, Behavior::Hang))
                .cached(false),
        ),
    ) else {
        return;
    };
    let d = TempDir::new("sigint2");
    let bytes = data(4 << 20, 9);
    let src = d.path("src");
    std::fs::write(&src, &bytes).unwrap();
    let dst = fs.path("out.bin");
    for backend in backends() {
        let child = spawn_cp(&[
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--block-size"),
            os("64K"),
            os("--depth"),
            os("4"),
            os("--checkpoint"),
            os(&d.path(&format!("ck-{backend}.json"))),
        ]);
        assert!(
            fs.wait_parked(1, Duration::from_secs(20)),
            "{backend}: no write hung"
        );
        sigint(&child);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            std::fs::metadata(d.path(&format!("ck-{backend}.json"))).is_err(),
            "{backend}: the drain cannot finish while writes hang"
        );
        sigint(&child);
        let (code, err, _) = finish(child, Duration::from_secs(20));
        assert_eq!(code, Some(5), "{backend}: {err}");
        assert!(err.contains("canceled"), "{backend}: {err}");
        let n = reported_offset(&err);
        assert!(n <= hang_from, "{backend}: {n}");
        assert_prefix(&bytes, &dst, n);
        fs.release_all();
    }
}

#[test]
fn an_eio_range_is_reported_with_its_offset_and_no_partial_lie() {
    let size = 4u64 << 20;
    let bad = 1u64 << 20;
    let Some(fs) = mount(
        Spec::new().file(
            FileSpec::pattern("eio.bin", size)
                .rule(Rule::read(bad..bad + 4096, Behavior::Eio))
                .cached(false),
        ),
    ) else {
        return;
    };
    let bytes = fs.file_contents("eio.bin").unwrap();
    let src = fs.path("eio.bin");
    let d = TempDir::new("eio");
    for backend in backends() {
        let dst = d.path(&format!("dst-{backend}"));
        let o = cp(&[
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--block-size"),
            os("64K"),
            os("--depth"),
            os("4"),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{backend}: {err}");
        assert!(
            err.contains("Input/output error") && err.contains(&format!("at offset {bad}")),
            "{backend}: {err}"
        );
        let n = reported_offset(&err);
        assert!(
            n <= bad,
            "{backend}: claims {n} bytes past the bad block at {bad}"
        );
        assert_prefix(&bytes, &dst, n);
        let ck = std::fs::read_to_string(d.path(&format!("dst-{backend}.quell-cp.json"))).unwrap();
        assert!(ck.contains(&format!("\"done\": {n}")), "{ck}");
    }
}

#[test]
fn a_hung_read_meets_the_deadline() {
    let size = 2u64 << 20;
    let Some(fs) = mount(
        Spec::new().file(
            FileSpec::pattern("hang.bin", size)
                .rule(Rule::read(512 << 10..size, Behavior::Hang))
                .cached(false),
        ),
    ) else {
        return;
    };
    let bytes = fs.file_contents("hang.bin").unwrap();
    let src = fs.path("hang.bin");
    let d = TempDir::new("hang");
    for backend in backends() {
        let dst = d.path(&format!("dst-{backend}"));
        let child = spawn_cp(&[
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--block-size"),
            os("64K"),
            os("--deadline"),
            os("1s"),
        ]);
        // The issue asks for an exit within 2 s of the start (measured: 1.01–1.02 s,
        // the deadline plus the cancel of the hung read); the time is printed.
        let (code, err, took) = finish(child, Duration::from_secs(10));
        eprintln!("{backend}: exited after {took:?}");
        assert_eq!(code, Some(3), "{backend}: {err}");
        assert!(took < Duration::from_secs(2), "{backend}: took {took:?}");
        assert!(err.contains("deadline"), "{backend}: {err}");
        let n = reported_offset(&err);
        assert!(n <= 512 << 10, "{backend}: {n}");
        assert_prefix(&bytes, &dst, n);
        fs.release_all();
    }
}

#[test]
fn copy_range_across_filesystems_reads_and_writes_and_keeps_holes() {
    // A copy between two filesystems: since Linux 5.19 copy_file_range refuses it
    // (EXDEV), so the copy-range chunks move their data extents with pread/pwrite.
    // /dev/shm (tmpfs) is the second filesystem where it differs from the temporary
    // directory's; elsewhere the test has nothing to cross and says so.
    let shm = Path::new("/dev/shm");
    let d = TempDir::new("xdev");
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    if !shm.is_dir() || dev(shm) == dev(&d.0) {
        eprintln!("no second filesystem at /dev/shm; skipped");
        return;
    }
    let src = shm.join(format!("quell-cp-xdev-{}", std::process::id()));
    // Data, a 16 MiB hole, data, a hole to the end: 40 MiB, 3 MiB + 5 bytes of data.
    let mb = 1u64 << 20;
    let f = std::fs::File::create(&src).unwrap();
    let (head, tail) = (data(2 << 20, 4), data((1 << 20) + 5, 5));
    std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &tail, 18 * mb).unwrap();
    f.set_len(40 * mb).unwrap();
    drop(f);
    let probe = std::fs::File::open(&src).unwrap();
    let out = std::fs::File::create(d.path("probe")).unwrap();
    // SAFETY: two open descriptors, zero length, null offsets (the file positions).
    let refused = unsafe {
        use std::os::fd::AsRawFd;
        libc::copy_file_range(
            probe.as_raw_fd(),
            std::ptr::null_mut(),
            out.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            0,
        )
    } < 0;
    for backend in backends() {
        for engine in [None, Some("copy-range")] {
            let dst = d.path(&format!("dst-{backend}-{engine:?}"));
            let mut args = vec![
                os(&src),
                os(&dst),
                os("--backend"),
                os(backend),
                os("--block-size"),
                os("4MiB"),
            ];
            if let Some(e) = engine {
                args.extend([os("--engine"), os(e)]);
            }
            let o = cp(&args);
            let err = stderr(&o);
            assert!(o.status.success(), "{backend} {engine:?}: {err}");
            assert!(same_file(&src, &dst), "{backend} {engine:?}");
            assert!(
                err.contains("copy-range engine"),
                "{backend} {engine:?}: {err}"
            );
            if refused {
                assert!(err.contains("pread/pwrite"), "{backend} {engine:?}: {err}");
            }
            let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&dst).unwrap());
            assert!(
                blocks * 512 < 8 * mb,
                "{backend} {engine:?}: {blocks} blocks: the holes were kept"
            );
        }
    }
    let _ = std::fs::remove_file(&src);
}

/// A source on faultfs whose reads are slow, and an empty destination on the same
/// mount, so `--engine copy-range` (copy_file_range within one filesystem) is slow
/// enough to interrupt and to overrun a deadline.
fn slow_pair() -> Option<(FaultFs, Vec<u8>)> {
    mount_slow(slow_spec().file(FileSpec::new("out.bin", 0).cached(false)))
}

#[test]
fn copy_range_drains_on_ctrl_c_and_resumes() {
    let Some((fs, bytes)) = slow_pair() else {
        return;
    };
    let src = fs.path("slow.bin");
    let dst = fs.path("out.bin");
    let d = TempDir::new("range-sigint");
    for backend in backends() {
        let ck = d.path(&format!("ck-{backend}.json"));
        let args = [
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--engine"),
            os("copy-range"),
            os("--block-size"),
            os("256K"),
            os("--depth"),
            os("2"),
            os("--checkpoint"),
            os(&ck),
        ];
        // Empty, so the length seen below is this run's progress, not the last one's.
        std::fs::File::create(&dst).unwrap();
        let child = spawn_cp(&args);
        wait_for_len(&dst, 256 << 10);
        sigint(&child);
        let (code, err, _) = finish(child, Duration::from_secs(20));
        assert_eq!(code, Some(4), "{backend}: {err}");
        assert!(err.contains("drained"), "{backend}: {err}");
        let n = reported_offset(&err);
        assert!(n > 0 && n < SLOW, "{backend}: {n}");
        assert_eq!(n % (256 << 10), 0, "{backend}: whole chunks");
        assert_prefix(&bytes, &dst, n);
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ck).unwrap()).unwrap();
        assert_eq!(saved["done"], n, "{backend}: the checkpoint agrees");

        let mut resume = args.to_vec();
        resume.push(os("--resume"));
        let (code, err, _) = finish(spawn_cp(&resume), Duration::from_secs(30));
        assert_eq!(code, Some(0), "{backend}: {err}");
        assert!(err.contains("copy-range engine"), "{backend}: {err}");
        assert!(
            err.contains(&format!("({} bytes", SLOW - n)),
            "{backend}: resumed from {n}: {err}"
        );
        assert!(std::fs::read(&dst).unwrap() == bytes, "{backend}");
        assert!(!ck.exists(), "{backend}: checkpoint removed once done");
    }
}

#[test]
fn copy_range_meets_the_deadline_with_an_honest_prefix() {
    let Some((fs, bytes)) = slow_pair() else {
        return;
    };
    let src = fs.path("slow.bin");
    let dst = fs.path("out.bin");
    let d = TempDir::new("range-deadline");
    for backend in backends() {
        let child = spawn_cp(&[
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--engine"),
            os("copy-range"),
            os("--block-size"),
            os("256K"),
            os("--deadline"),
            os("300ms"),
            os("--checkpoint"),
            os(&d.path(&format!("ck-{backend}.json"))),
        ]);
        let (code, err, took) = finish(child, Duration::from_secs(10));
        eprintln!("{backend}: exited after {took:?}");
        assert_eq!(code, Some(3), "{backend}: {err}");
        assert!(err.contains("deadline"), "{backend}: {err}");
        let n = reported_offset(&err);
        assert!(n < SLOW, "{backend}: {n}");
        assert_prefix(&bytes, &dst, n);
    }
}

#[test]
fn copy_range_reports_an_eio_with_its_offset() {
    let size = 4u64 << 20;
    let bad = 1u64 << 20;
    let Some(fs) = mount(
        Spec::new()
            .file(
                FileSpec::pattern("eio.bin", size)
                    .rule(Rule::read(bad..bad + 4096, Behavior::Eio))
                    .cached(false),
            )
            .file(FileSpec::new("out.bin", 0).cached(false)),
    ) else {
        return;
    };
    let bytes = fs.file_contents("eio.bin").unwrap();
    let (src, dst) = (fs.path("eio.bin"), fs.path("out.bin"));
    let d = TempDir::new("range-eio");
    for backend in backends() {
        let ck = d.path(&format!("ck-{backend}.json"));
        let o = cp(&[
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--engine"),
            os("copy-range"),
            os("--block-size"),
            os("64K"),
            os("--depth"),
            os("4"),
            os("--checkpoint"),
            os(&ck),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{backend}: {err}");
        assert!(
            err.contains("Input/output error") && err.contains(&format!("at offset {bad}")),
            "{backend}: {err}"
        );
        let n = reported_offset(&err);
        assert!(
            n <= bad,
            "{backend}: claims {n} bytes past the bad block at {bad}"
        );
        assert_prefix(&bytes, &dst, n);
        let saved = std::fs::read_to_string(&ck).unwrap();
        assert!(saved.contains(&format!("\"done\": {n}")), "{saved}");
    }
}

#[test]
fn copy_range_on_a_local_file_stops_at_the_deadline_and_resumes() {
    // 256 MiB take tens of milliseconds at memory speed, the deadline is 5 ms: the
    // chunks in flight are canceled inside or between their copy_file_range calls.
    let d = TempDir::new("range-local-deadline");
    let src = d.path("src");
    let size = 256usize << 20;
    let bytes = data(size, 11);
    std::fs::write(&src, &bytes).unwrap();
    for backend in backends() {
        let dst = d.path(&format!("dst-{backend}"));
        let args = [
            os(&src),
            os(&dst),
            os("--backend"),
            os(backend),
            os("--block-size"),
            os("1MiB"),
        ];
        let mut first = args.to_vec();
        first.extend([os("--deadline"), os("5ms")]);
        let o = cp(&first);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{backend}: {err}");
        let n = reported_offset(&err);
        assert!(n < size as u64, "{backend}: {n}");
        assert_eq!(n % (1 << 20), 0, "{backend}: whole chunks");
        assert_prefix(&bytes, &dst, n);

        let mut resume = args.to_vec();
        resume.push(os("--resume"));
        let o = cp(&resume);
        let err = stderr(&o);
        assert!(o.status.success(), "{backend}: {err}");
        assert!(err.contains("copy-range engine"), "{backend}: {err}");
        assert!(
            err.contains(&format!("({} bytes", size as u64 - n)),
            "{backend}: resumed from {n}: {err}"
        );
        assert!(same_file(&src, &dst), "{backend}");
    }
}

#[test]
fn a_device_destination_is_written_in_place_and_a_fifo_is_refused() {
    let d = TempDir::new("device");
    let src = d.path("src");
    std::fs::write(&src, data((3 << 20) + 5, 4)).unwrap();
    for backend in backends() {
        for engine in ["copy-range", "splice", "rw"] {
            let o = cp(&[
                os(&src),
                os("/dev/null"),
                os("--backend"),
                os(backend),
                os("--engine"),
                os(engine),
            ]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(0), "{backend} {engine}: {err}");
            assert!(err.contains("copied"), "{backend} {engine}: {err}");
        }
    }
    assert!(
        !Path::new("/dev/null.quell-cp.json").exists(),
        "no checkpoint beside a device"
    );
    let fifo = d.path("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let o = cp(&[os(&src), os(&fifo)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("regular file or a device"), "{err}");
}
