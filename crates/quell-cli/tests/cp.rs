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
}

#[test]
fn copies_are_byte_identical() {
    let d = TempDir::new("ident");
    let sizes = [0usize, 1, 4096, 100_003, (1 << 20) + 17];
    for backend in backends() {
        for &n in &sizes {
            let src = d.path(&format!("src-{n}"));
            std::fs::write(&src, data(n, n as u8)).unwrap();
            for (direct, engine) in [(false, "splice"), (false, "rw"), (true, "rw")] {
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
        let dst = d.path(&format!("dst-{backend}"));
        let o = cp(&[os(&src), os(&dst), os("--backend"), os(backend)]);
        assert!(o.status.success(), "{backend}: {}", stderr(&o));
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), gib);
        assert!(same_file(&src, &dst), "{backend}");
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&dst).unwrap());
        assert!(
            blocks * 512 < 64 << 20,
            "{backend}: {blocks} blocks allocated"
        );
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

fn slow_source() -> Option<(FaultFs, Vec<u8>)> {
    let fs = mount(
        Spec::new().file(
            FileSpec::pattern("slow.bin", SLOW)
                .rule(Rule::read(0..SLOW, Behavior::Delay { ms: 40 }))
                .cached(false),
        ),
    )?;
    let bytes = fs.file_contents("slow.bin").unwrap();
    Some((fs, bytes))
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
