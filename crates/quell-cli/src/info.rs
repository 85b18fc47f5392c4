//! `quell info`: the backend quell would use and why, and what this kernel offers
//! (io_uring and its opcodes, userfaultfd, FUSE). Every check is cheap and harmless;
//! a check that cannot be made is reported as such, never as a crash.

use crate::CliError;
use io_uring::opcode;
use quell::{BackendChoice, Ring};
use serde_json::{json, Value};
use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// Arguments of `quell info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Opcodes the quell io_uring backend requires (the library's own list).
pub const REQUIRED_OPCODES: &[(u8, &str)] = quell::REQUIRED_OPCODES;

/// Opcodes quell may use when present (reported, not required).
pub const OPTIONAL_OPCODES: &[(u8, &str)] = &[
    (opcode::LinkTimeout::CODE, "link_timeout"),
    (opcode::MsgRingData::CODE, "msg_ring"),
    (opcode::ReadFixed::CODE, "read_fixed"),
    (opcode::FutexWait::CODE, "futex_wait"),
];

/// Runs `quell info`.
pub fn run(args: &InfoArgs) -> Result<(), CliError> {
    let report = gather();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", human(&report));
    }
    Ok(())
}

/// Collects everything `quell info` reports, as one JSON object.
pub fn gather() -> Value {
    let (backend, reason, default_error) = match Ring::new() {
        Ok(r) => (
            Value::from(r.backend().name()),
            Value::from(r.backend_reason()),
            Value::Null,
        ),
        Err(e) => (Value::Null, Value::Null, Value::from(e.to_string())),
    };
    let backends: serde_json::Map<String, Value> = [
        ("uring", BackendChoice::Uring),
        ("portable", BackendChoice::Portable),
    ]
    .into_iter()
    .map(|(name, choice)| {
        let v = match Ring::builder().backend(choice).build() {
            Ok(r) => json!({"available": true, "reason": r.backend_reason()}),
            Err(e) => json!({"available": false, "error": e.to_string()}),
        };
        (name.to_string(), v)
    })
    .collect();
    json!({
        "backend": backend,
        "backend_reason": reason,
        "backend_error": default_error,
        "quell_backend_env": std::env::var("QUELL_BACKEND").ok(),
        "backends": backends,
        "kernel": kernel(),
        "io_uring": io_uring_probe(),
        "userfaultfd": userfaultfd(),
        "lazy_read": lazy_read(),
        "fuse": fuse(),
    })
}

/// The mode LazyRead runs in here, as the library probes it (`QUELL_LAZY` included).
fn lazy_read() -> Value {
    let a = quell::lazy::availability();
    json!({
        "mode": match a.mode {
            quell::lazy::LazyMode::Uffd => "uffd",
            _ => "checked",
        },
        "userfaultfd_usable": a.usable,
        "via": a.source.map(|s| format!("{s:?}")),
        "publish": if a.can_move { "UFFDIO_MOVE (COPY fallback)" } else { "UFFDIO_COPY" },
        "failed_chunks": if a.can_poison { "UFFDIO_POISON (SIGBUS)" } else { "PROT_NONE (SIGSEGV)" },
        "reason": a.reason,
        "quell_lazy_env": std::env::var("QUELL_LAZY").ok(),
    })
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn kernel() -> Value {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return json!({"error": std::io::Error::last_os_error().to_string()});
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates every field within its array.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    json!({
        "sysname": field(&u.sysname),
        "release": field(&u.release),
        "version": field(&u.version),
        "machine": field(&u.machine),
    })
}

fn io_uring_probe() -> Value {
    let disabled =
        read_trimmed("/proc/sys/kernel/io_uring_disabled").and_then(|s| s.parse::<i64>().ok());
    let ring = match io_uring::IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            return json!({
                "setup": false,
                "setup_error": e.to_string(),
                "io_uring_disabled": disabled,
            })
        }
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return json!({
            "setup": true,
            "probe_error": e.to_string(),
            "io_uring_disabled": disabled,
        });
    }
    let table = |list: &[(u8, &str)]| -> serde_json::Map<String, Value> {
        list.iter()
            .map(|&(code, name)| (name.to_string(), Value::from(probe.is_supported(code))))
            .collect()
    };
    let required = table(REQUIRED_OPCODES);
    let missing: Vec<&str> = REQUIRED_OPCODES
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, n)| *n)
        .collect();
    let p = ring.params();
    json!({
        "setup": true,
        "io_uring_disabled": disabled,
        "required_opcodes": required,
        "missing_required": missing,
        "optional_opcodes": table(OPTIONAL_OPCODES),
        "features": {
            "ext_arg": p.is_feature_ext_arg(),
            "fast_poll": p.is_feature_fast_poll(),
            "native_workers": p.is_feature_native_workers(),
            "nodrop": p.is_feature_nodrop(),
        },
    })
}

/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `USERFAULTFD_IOC_NEW`: `_IO(0xAA, 0x00)`.
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_POISON: u64 = 1 << 14;
const UFFD_FEATURE_MOVE: u64 = 1 << 16;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// Opens a userfaultfd through /dev/userfaultfd or the syscall. `Ok((fd, how))`.
fn open_uffd() -> (Option<(libc::c_int, &'static str)>, Vec<String>) {
    let mut errors = Vec::new();
    // SAFETY: plain open of a device node with a NUL-terminated path.
    let dev = unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev >= 0 {
        // SAFETY: USERFAULTFD_IOC_NEW takes flags by value.
        let fd =
            unsafe { libc::ioctl(dev, USERFAULTFD_IOC_NEW, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        let err = std::io::Error::last_os_error();
        // SAFETY: dev is ours.
        unsafe { libc::close(dev) };
        if fd >= 0 {
            return (Some((fd, "/dev/userfaultfd")), errors);
        }
        errors.push(format!("/dev/userfaultfd ioctl: {err}"));
    } else {
        errors.push(format!(
            "/dev/userfaultfd: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the userfaultfd syscall takes flags only.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd >= 0 {
        return (Some((fd as libc::c_int, "syscall")), errors);
    }
    errors.push(format!(
        "userfaultfd syscall: {}",
        std::io::Error::last_os_error()
    ));
    (None, errors)
}

fn userfaultfd() -> Value {
    let unprivileged = read_trimmed("/proc/sys/vm/unprivileged_userfaultfd");
    let (fd, errors) = open_uffd();
    let Some((fd, via)) = fd else {
        return json!({
            "available": false,
            "errors": errors,
            "unprivileged_userfaultfd": unprivileged,
        });
    };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: api is a valid uffdio_api for the kernel to read and fill.
    let rc = unsafe { libc::ioctl(fd, UFFDIO_API, &mut api as *mut UffdioApi) };
    let api_err = (rc != 0).then(|| std::io::Error::last_os_error().to_string());
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    let features = (rc == 0).then_some(api.features);
    json!({
        "available": true,
        "via": via,
        "errors": errors,
        "unprivileged_userfaultfd": unprivileged,
        "api_error": api_err,
        "features": features.map(|f| format!("{f:#x}")),
        "move": features.map(|f| f & UFFD_FEATURE_MOVE != 0),
        "poison": features.map(|f| f & UFFD_FEATURE_POISON != 0),
    })
}

/// Finds an executable in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn fuse() -> Value {
    let dev = Path::new("/dev/fuse");
    let dev_state = if !dev.exists() {
        json!({"present": false, "openable": false})
    } else {
        match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
            Ok(_) => json!({"present": true, "openable": true}),
            Err(e) => json!({"present": true, "openable": false, "error": e.to_string()}),
        }
    };
    let fusectl = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let mut f = l.split_whitespace();
                let _src = f.next();
                let target = f.next();
                let fstype = f.next();
                fstype == Some("fusectl") || target == Some("/sys/fs/fuse/connections")
            })
        })
        .unwrap_or(false);
    json!({
        "dev_fuse": dev_state,
        "fusermount3": find_in_path("fusermount3").map(|p| p.display().to_string()),
        "fusectl_mounted": fusectl,
    })
}

fn yes_no(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders the report as text.
pub fn human(r: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = match r["backend"].as_str() {
        Some(b) => writeln!(o, "backend         {b} ({})", text(&r["backend_reason"])),
        None => writeln!(o, "backend         none: {}", text(&r["backend_error"])),
    };
    if let Some(env) = r["quell_backend_env"].as_str() {
        let _ = writeln!(o, "QUELL_BACKEND   {env}");
    }
    if let Some(map) = r["backends"].as_object() {
        for (name, b) in map {
            let _ = if b["available"].as_bool() == Some(true) {
                writeln!(o, "  {name:<13} available")
            } else {
                writeln!(o, "  {name:<13} unavailable: {}", text(&b["error"]))
            };
        }
    }
    let k = &r["kernel"];
    let _ = writeln!(
        o,
        "kernel          {} {} {}",
        text(&k["sysname"]),
        text(&k["release"]),
        text(&k["machine"])
    );
    let u = &r["io_uring"];
    let _ = writeln!(
        o,
        "io_uring        setup {}; kernel.io_uring_disabled = {}",
        if u["setup"].as_bool() == Some(true) {
            "ok".to_string()
        } else {
            format!("failed: {}", text(&u["setup_error"]))
        },
        text(&u["io_uring_disabled"])
    );
    if let Some(e) = u["probe_error"].as_str() {
        let _ = writeln!(o, "  probe failed: {e}");
    }
    if let Some(req) = u["required_opcodes"].as_object() {
        let ok = req.values().filter(|v| v.as_bool() == Some(true)).count();
        let missing: Vec<&str> = req
            .iter()
            .filter(|(_, v)| v.as_bool() != Some(true))
            .map(|(k, _)| k.as_str())
            .collect();
        let _ = writeln!(
            o,
            "  required      {ok}/{} opcodes supported{}",
            req.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", missing.join(", "))
            }
        );
    }
    if let Some(opt) = u["optional_opcodes"].as_object() {
        let list: Vec<String> = opt
            .iter()
            .map(|(k, v)| format!("{k} {}", yes_no(v)))
            .collect();
        let _ = writeln!(o, "  optional      {}", list.join(", "));
    }
    let f = &r["userfaultfd"];
    if f["available"].as_bool() == Some(true) {
        let _ = writeln!(
            o,
            "userfaultfd     available via {}; UFFDIO_MOVE {}, UFFDIO_POISON {}; vm.unprivileged_userfaultfd = {}",
            text(&f["via"]),
            yes_no(&f["move"]),
            yes_no(&f["poison"]),
            text(&f["unprivileged_userfaultfd"])
        );
    } else {
        let errs: Vec<String> = f["errors"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        let _ = writeln!(o, "userfaultfd     unavailable: {}", errs.join("; "));
    }
    let l = &r["lazy_read"];
    let _ = if l["mode"].as_str() == Some("uffd") {
        writeln!(
            o,
            "LazyRead        uffd: raw page-level blocking view; publish by {}; failed chunks {}",
            text(&l["publish"]),
            text(&l["failed_chunks"])
        )
    } else {
        writeln!(
            o,
            "LazyRead        checked only (raw view refused): {}",
            match l["quell_lazy_env"].as_str() {
                Some(e) => format!("QUELL_LAZY={e}"),
                None => text(&l["reason"]),
            }
        )
    };
    let fu = &r["fuse"];
    let dev = &fu["dev_fuse"];
    let _ = writeln!(
        o,
        "fuse            /dev/fuse {}; fusermount3 {}; fusectl {}",
        if dev["openable"].as_bool() == Some(true) {
            "ok".to_string()
        } else if dev["present"].as_bool() == Some(true) {
            format!("not openable ({})", text(&dev["error"]))
        } else {
            "missing".to_string()
        },
        fu["fusermount3"].as_str().unwrap_or("not in PATH"),
        if fu["fusectl_mounted"].as_bool() == Some(true) {
            "mounted at /sys/fs/fuse/connections"
        } else {
            "not mounted"
        }
    );
    o
}
