//! Runs the examples (feature `tokio`) as a user would, on both backends
//! (`QUELL_BACKEND`): the echo server against clients on 127.0.0.1 with an idle
//! deadline and a Ctrl-C drain, the copy with a deadline, the hung-read cancel.
#![cfg(feature = "tokio")]

mod common;

use quell::BackendChoice;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example's binary, built on demand when the test run did not build examples.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = profile_dir.join("examples").join(name);
    if !bin.exists() {
        let target = profile_dir.parent().unwrap();
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "quell",
                "--features",
                "tokio",
                "--example",
                name,
                "--target-dir",
            ])
            .arg(target)
            .status()
            .expect("cargo build");
        assert!(st.success(), "building example {name} failed");
    }
    bin
}

fn backend_name(b: BackendChoice) -> &'static str {
    match b {
        BackendChoice::Portable => "portable",
        _ => "uring",
    }
}

/// Waits for `child` to exit, killing it after `secs`.
fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("example still running after {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// Reads until EOF (the server closed), failing after 5 s.
fn expect_eof(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: got {n} unexpected bytes instead of EOF"),
        Err(e) => panic!("{what}: no EOF within 5 s ({e})"),
    }
}

both_backends! {
    fn echo_server_serves_times_out_idlers_and_drains_on_ctrl_c(b: BackendChoice) {
        let mut child = Command::new(example("echo"))
            .args(["127.0.0.1:0", "--idle-ms", "400", "--grace-ms", "3000"])
            .env("QUELL_BACKEND", backend_name(b))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn echo");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains(backend_name(b)), "{line}");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();

        let mut a = TcpStream::connect(&addr).unwrap();
        echo_once(&mut a, b"hello");
        echo_once(&mut a, &vec![7u8; 100_000]);

        // A silent client is closed at its idle deadline.
        let mut idle = TcpStream::connect(&addr).unwrap();
        let t = Instant::now();
        expect_eof(&mut idle, "idle connection");
        assert!(t.elapsed() >= Duration::from_millis(300), "closed before its idle deadline");

        // An active client, then Ctrl-C: it is drained (EOF), the server exits cleanly.
        let mut c = TcpStream::connect(&addr).unwrap();
        echo_once(&mut c, b"before the drain");
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        expect_eof(&mut c, "drained connection");
        let st = wait_exit(&mut child, 10);
        assert!(st.success(), "echo exited with {st}");
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("connection ended: idle"), "{rest}");
        assert!(rest.contains("drained: "), "{rest}");
        assert!(!rest.contains(" 0 finished"), "the drain finished no connection: {rest}");
        assert!(rest.contains(" 0 forced"), "{rest}");
        drop(a);
    }

    fn copy_with_a_deadline_copies_or_stops_honestly(b: BackendChoice) {
        let dir = std::env::temp_dir().join(format!("quell-copy-{}-{}", std::process::id(), backend_name(b)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let st = Command::new(example("copy_deadline"))
            .arg(&src)
            .arg(dir.join("dst"))
            .args(["--deadline-ms", "30000"])
            .env("QUELL_BACKEND", backend_name(b))
            .status()
            .unwrap();
        assert!(st.success(), "{st}");
        assert!(std::fs::read(dir.join("dst")).unwrap() == data);

        // A source that never delivers (a FIFO with no data): the deadline stops it.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Hold both ends open so the example's open does not block and no EOF comes.
        let _hold = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
        let t = Instant::now();
        let out = Command::new(example("copy_deadline"))
            .arg(&fifo)
            .arg(dir.join("dst2"))
            .args(["--deadline-ms", "300"])
            .env("QUELL_BACKEND", backend_name(b))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains("deadline of 300ms passed"), "{text}");
        assert!(t.elapsed() < Duration::from_secs(10));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn cancel_a_hung_read_on_faultfs(b: BackendChoice) {
        if std::env::var_os("QUELL_SKIP_FUSE_TESTS").is_some_and(|v| v == "1") {
            eprintln!("QUELL_SKIP_FUSE_TESTS=1: skipping a FUSE test");
            return;
        }
        let mut child = Command::new(example("cancel_hung_read"))
            .env("QUELL_BACKEND", backend_name(b))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let st = wait_exit(&mut child, 60);
        let mut text = String::new();
        child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        assert!(st.success(), "{st}: {text}");
        assert!(text.contains("explicit cancel: outcome canceled"), "{text}");
        assert!(text.contains("timed out, read canceled"), "{text}");
        assert!(text.contains("no op left running"), "{text}");
    }
}
