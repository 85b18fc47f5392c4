//! `quell faultfs`: a bad spec is a clear error; a real mount serves its files with the
//! faults the spec asks for and Ctrl-C (SIGINT) unmounts it cleanly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mounted(dir: &std::path::Path) -> bool {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(dir.as_str())))
        .unwrap_or(false)
}

#[test]
fn bad_spec_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("quell-cli-badspec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("bad.toml");
    std::fs::write(&spec, "[[file]]\nname = 3\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args(["faultfs", "mount"])
        .arg(&dir)
        .arg("--spec")
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("spec"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_spec_prints() {
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args(["faultfs", "example-spec"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("behavior"));
}

#[test]
fn mount_serves_faults_and_ctrl_c_unmounts() {
    if !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("no /dev/fuse here; skipped");
        return;
    }
    let base = std::env::temp_dir().join(format!("quell-cli-faultfs-{}", std::process::id()));
    let dir = base.join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = base.join("spec.toml");
    std::fs::write(
        &spec,
        "[[file]]\nname = \"ok.bin\"\nsize = 4096\ncontent = \"pattern\"\n\n\
         [[file]]\nname = \"bad.bin\"\nsize = 4096\ncontent = \"pattern\"\n\
         [[file.rule]]\nrange = [0, 4096]\non = \"read\"\nbehavior = \"eio\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args(["faultfs", "mount"])
        .arg(&dir)
        .arg("--spec")
        .arg(&spec)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.join("ok.bin").exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let data = std::fs::read(dir.join("ok.bin")).unwrap();
    assert_eq!(data.len(), 4096);
    assert_eq!(data[300], (300 % 251) as u8);
    let err = std::fs::read(dir.join("bad.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not exit on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut msg = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut msg)
        .unwrap();
    assert!(status.success(), "{status:?}: {msg}");
    assert!(msg.contains("unmounted"), "{msg}");
    assert!(!mounted(&dir), "still mounted after Ctrl-C");
    let _ = std::fs::remove_dir_all(&base);
}
