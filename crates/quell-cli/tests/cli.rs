//! End-to-end tests of the `quell` binary.

use serde_json::Value;
use std::process::{Command, Output};

fn quell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quell"))
        .args(args)
        .output()
        .expect("the quell binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one JSON line a `--json` command prints.
fn json_line(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    let text = stdout(o);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one JSON object per line: {text}");
    serde_json::from_str(lines[0]).expect("valid JSON")
}

fn io_uring_usable() -> bool {
    quell::Ring::builder()
        .backend(quell::BackendChoice::Uring)
        .build()
        .is_ok()
}

/// Checks the fields DESIGN.md §7 requires of a bench line.
fn check_bench(v: &Value, workload: &str) {
    assert_eq!(v["workload"], workload);
    assert!(v["backend"].is_string());
    for k in ["ops_per_sec", "p50_us", "p99_us"] {
        assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {v}");
    }
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0);
    let raw = &v["peers"]["raw-io-uring"];
    for k in ["ops_per_sec", "p50_us", "p99_us"] {
        assert!(raw[k].as_f64().is_some(), "peer {k} in {v}");
    }
    let ratio = v["ratio"]["raw-io-uring"].as_f64().expect("ratio to raw");
    assert!(ratio > 0.0 && ratio.is_finite());
    let expect = v["ops_per_sec"].as_f64().unwrap() / raw["ops_per_sec"].as_f64().unwrap();
    assert!(
        (ratio - expect).abs() < 0.01,
        "ratio is quell/peer: {ratio} vs {expect}"
    );
}

#[test]
fn help_lists_the_commands() {
    let o = quell(&["--help"]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.contains("info") && s.contains("bench"), "{s}");
    let o = quell(&["bench", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("--seconds"));
}

#[test]
fn info_json_has_the_backend() {
    let v = json_line(&quell(&["info", "--json"]));
    assert!(v.get("backend").is_some(), "{v}");
    assert!(v["kernel"]["release"].is_string());
    assert!(v["backends"]["portable"]["available"].is_boolean());
    if io_uring_usable() {
        assert_eq!(v["backend"], "uring");
        assert_eq!(v["io_uring"]["missing_required"], serde_json::json!([]));
    }
}

#[test]
fn info_text_mentions_every_section() {
    let o = quell(&["info"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for word in [
        "backend",
        "kernel",
        "io_uring",
        "userfaultfd",
        "LazyRead",
        "fuse",
    ] {
        assert!(s.contains(word), "{word} missing from:\n{s}");
    }
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        &["bench", "nope"][..],
        &["bench", "nop", "--seconds", "-1"],
        &["bench", "nop", "--seconds", "abc"],
        &["bench", "read", "--size", "12XB"],
        &["bench", "nop", "--depth", "0"],
        &["bench", "nop", "--batch", "64", "--depth", "32"],
        &["bench", "nop", "--backend", "magic"],
        &["frobnicate"],
    ] {
        let o = quell(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("error"), "{args:?}: {e}");
    }
    let e = stderr(&quell(&["bench", "read", "--size", "12XB"]));
    assert!(e.contains("suffix"), "{e}");
}

#[test]
fn an_unavailable_backend_is_reported_not_a_crash() {
    let o = quell(&["bench", "nop", "--seconds", "0.1", "--backend", "portable"]);
    if o.status.success() {
        return; // the portable backend exists now
    }
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("portable") && e.contains("error"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn bench_nop_json() {
    if !io_uring_usable() {
        return;
    }
    let v = json_line(&quell(&["bench", "nop", "--seconds", "0.2", "--json"]));
    check_bench(&v, "nop");
    assert_eq!(v["batch"], 32);
}

#[test]
fn bench_read_json_on_a_small_file() {
    if !io_uring_usable() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("quell-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args([
            "bench",
            "read",
            "--seconds",
            "0.3",
            "--size",
            "64MiB",
            "--json",
        ])
        .env("QUELL_BENCH_DIR", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let v = json_line(&o);
    check_bench(&v, "read");
    assert_eq!(v["file_size"], 64 << 20);
    assert!(v["cache"] == "mlock" || v["cache"] == "rewarm");
    assert_eq!(v["depth"], 32);
    if v["peers"].get("fio-io_uring").is_some() {
        assert!(v["ratio"]["fio-io_uring"].as_f64().is_some());
    }
}

#[test]
fn bench_read_markdown_on_an_explicit_file() {
    if !io_uring_usable() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("quell-cli-md-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("f.dat");
    std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();
    let o = quell(&[
        "bench",
        "read",
        "--seconds",
        "0.1",
        "--rounds",
        "1",
        "--no-fio",
        "--file",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("| read |") && s.contains("raw-io-uring"), "{s}");
}

/// Every non-empty line of a `--json` command's output, parsed.
fn json_lines(o: &Output) -> Vec<Value> {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

/// Checks the DESIGN.md §7 fields of a line and of its peer `peer`, and its ratio.
fn check_peer(v: &Value, workload: &str, peer: &str) {
    assert_eq!(v["workload"], workload, "{v}");
    assert!(v["backend"].is_string(), "{v}");
    for k in ["ops_per_sec", "p50_us", "p99_us"] {
        assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {v}");
    }
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    let p = &v["peers"][peer];
    for k in ["ops_per_sec", "p50_us", "p99_us"] {
        assert!(p[k].as_f64().is_some(), "peer {peer} {k} in {v}");
    }
    let ratio = v["ratio"][peer].as_f64().expect("ratio to the peer");
    let expect = v["ops_per_sec"].as_f64().unwrap() / p["ops_per_sec"].as_f64().unwrap();
    // Relative: ops_per_sec is printed rounded, which shows in large ratios.
    assert!(
        ratio.is_finite() && (ratio - expect).abs() < 0.01 * expect.max(1.0),
        "{v}"
    );
}

#[test]
fn bench_pingpong_json_has_both_backends() {
    let lines = json_lines(&quell(&["bench", "pingpong", "--seconds", "0.3", "--json"]));
    let backends: Vec<&str> = lines.iter().filter_map(|v| v["backend"].as_str()).collect();
    assert!(backends.contains(&"portable"), "{backends:?}");
    if io_uring_usable() {
        assert_eq!(backends, ["uring", "portable"]);
    }
    for v in &lines {
        check_peer(v, "pingpong", "tokio-uds");
        assert_eq!(v["message_bytes"], 64);
    }
    if io_uring_usable() {
        let p = lines.iter().find(|v| v["backend"] == "portable").unwrap();
        let u = lines.iter().find(|v| v["backend"] == "uring").unwrap();
        // The peers that park io_uring in tokio's reactor ride on the uring line only.
        check_peer(u, "pingpong", "tokio-uring");
        check_peer(u, "pingpong", "raw-uring-tokio");
        assert!(p["peers"]["raw-uring-tokio"].is_null(), "{p}");
        for k in [
            "tokio_uring_over_tokio_uds",
            "raw_uring_tokio_over_tokio_uds",
        ] {
            assert!(u[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {u}");
        }
        let r = p["vs_uring_latency"].as_f64().expect("vs_uring_latency");
        let expect = p["p50_us"].as_f64().unwrap() / u["p50_us"].as_f64().unwrap();
        assert!((r - expect).abs() < 0.01, "{r} vs {expect}");
    }
}

#[test]
fn bench_read_portable_has_the_tokio_peers() {
    let dir = std::env::temp_dir().join(format!("quell-cli-tokio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args([
            "bench",
            "read",
            "--backend",
            "portable",
            "--seconds",
            "0.3",
            "--size",
            "64MiB",
            "--json",
        ])
        .env("QUELL_BENCH_DIR", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let v = json_line(&o);
    assert_eq!(v["backend"], "portable");
    check_peer(&v, "read", "tokio-spawn-blocking");
    check_peer(&v, "read", "tokio-fs");
    assert_eq!(v["depth"], 32);
}

#[test]
fn info_reports_the_lazy_read_mode_and_its_override() {
    let v = json_line(&quell(&["info", "--json"]));
    let mode = v["lazy_read"]["mode"].as_str().expect("lazy_read.mode");
    assert!(mode == "uffd" || mode == "checked", "{v}");
    assert_eq!(
        mode == "uffd",
        v["lazy_read"]["userfaultfd_usable"] == true,
        "{v}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args(["info", "--json"])
        .env("QUELL_LAZY", "checked")
        .output()
        .unwrap();
    let v = json_line(&o);
    assert_eq!(v["lazy_read"]["mode"], "checked", "{v}");
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .arg("info")
        .env("QUELL_LAZY", "checked")
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("LazyRead        checked only"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn bench_lazy_json_has_both_workloads_and_peers() {
    let dir = std::env::temp_dir().join(format!("quell-cli-lazy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args([
            "bench",
            "lazy",
            "--seconds",
            "0.3",
            "--rounds",
            "1",
            "--size",
            "16MiB",
            "--json",
        ])
        .env("QUELL_BENCH_DIR", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (v, w) in lines.iter().zip(["lazy-total", "lazy-first"]) {
        check_peer(v, w, "read-fresh-vec");
        check_peer(v, w, "read-prefaulted");
        assert_eq!(v["file_size"], 16 << 20);
        assert!(v["cache"] == "mlock" || v["cache"] == "rewarm");
    }
}

#[test]
fn help_for_every_subcommand() {
    for args in [
        &["info", "--help"][..],
        &["bench", "--help"],
        &["cp", "--help"],
        &["faultfs", "--help"],
        &["faultfs", "mount", "--help"],
    ] {
        let o = quell(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage"), "{args:?}");
    }
    let s = stdout(&quell(&["bench", "--help"]));
    for w in ["--quick", "--plot", "drain", "cp", "whole suite"] {
        assert!(s.contains(w), "{w} missing from bench --help:\n{s}");
    }
}

#[test]
fn plot_needs_the_suite() {
    let o = quell(&["bench", "nop", "--plot", "/tmp/x.svg", "--seconds", "0.1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--plot"));
}

/// The suite, as short as it goes: one JSON document naming every workload on every
/// backend, with §7 fields, the cancel-latency rows of every class, and a plot.
#[test]
fn bench_suite_quick_json_has_every_workload_and_a_plot() {
    let dir = std::env::temp_dir().join(format!("quell-cli-suite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("out.svg");
    let o = Command::new(env!("CARGO_BIN_EXE_quell"))
        .args([
            "bench",
            "--quick",
            "--json",
            "--seconds",
            "0.03",
            "--size",
            "8MiB",
        ])
        .arg("--plot")
        .arg(&svg)
        .env("QUELL_BENCH_DIR", &dir)
        .output()
        .unwrap();
    let plot = std::fs::read_to_string(&svg).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let v = json_line(&o);
    assert_eq!(v["suite"], "quell bench");
    assert_eq!(v["failed"], serde_json::json!([]), "{v}");
    let rows = v["workloads"].as_array().expect("workloads array");
    let backends: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert!(backends.contains(&"portable"));
    // Every registered workload (as `bench --help` lists them) must be in the suite.
    let help = stdout(&quell(&["bench", "--help"]));
    let registered: Vec<String> = help
        .split("Possible values:")
        .nth(1)
        .expect("bench --help lists the workloads")
        .lines()
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    for w in ["nop", "read", "pingpong", "drain", "cp"] {
        assert!(
            registered.iter().any(|r| r == w),
            "{w} not in {registered:?}"
        );
    }
    let mut expect: Vec<&str> = registered.iter().map(|s| s.as_str()).collect();
    expect.push("drain-cancel");
    for w in expect {
        for b in &backends {
            assert!(
                rows.iter().any(|r| {
                    // A workload may report several measurements, named `w-...`.
                    let name = r["workload"].as_str().unwrap_or("");
                    (name == w || name.starts_with(&format!("{w}-"))) && r["backend"] == *b
                }),
                "{w} on {b} missing"
            );
        }
    }
    for r in rows {
        for k in ["ops_per_sec", "p50_us", "p99_us"] {
            assert!(r[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {r}");
        }
        assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        for (peer, ratio) in r["ratio"].as_object().unwrap() {
            let p = r["peers"][peer]["ops_per_sec"].as_f64().unwrap();
            let q = r["ops_per_sec"].as_f64().unwrap();
            // Relative: the rates in the JSON are rounded to 0.1 op/s, which moves a
            // ratio in the hundreds (a slow peer in a tiny run) by more than 0.01.
            let want = q / p;
            assert!(
                (ratio.as_f64().unwrap() - want).abs() <= 0.01 + 1e-3 * want,
                "{r}"
            );
        }
    }
    let read = rows.iter().find(|r| r["workload"] == "read").unwrap();
    if io_uring_usable() {
        for peer in ["raw-io-uring", "tokio-uring", "monoio", "tokio-fs"] {
            assert!(read["peers"].get(peer).is_some(), "{peer} in {read}");
        }
    }
    let cancels = v["cancel_latency"].as_array().unwrap();
    for b in &backends {
        for class in ["queued", "prompt", "interruptible", "bounded"] {
            assert!(
                cancels.iter().any(|c| c["backend"] == *b
                    && c["class"] == class
                    && c["n"].as_u64() > Some(0)),
                "{class} on {b}: {cancels:?}"
            );
        }
    }
    assert!(
        plot.starts_with("<svg") && plot.contains("cancel"),
        "plot: {}",
        &plot[..plot.len().min(200)]
    );
}

#[test]
fn bench_chain_json_links_on_io_uring_only() {
    let dir = std::env::temp_dir().join(format!("quell-cli-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for backend in ["uring", "portable"] {
        if backend == "uring" && !io_uring_usable() {
            continue;
        }
        let o = Command::new(env!("CARGO_BIN_EXE_quell"))
            .args([
                "bench",
                "chain",
                "--seconds",
                "0.2",
                "--rounds",
                "1",
                "--json",
            ])
            .args(["--backend", backend])
            .env("QUELL_BENCH_DIR", &dir)
            .output()
            .unwrap();
        let v = json_line(&o);
        for peer in [
            "quell-declared",
            "quell-sequenced",
            "quell-sequenced-declared",
            "sync-syscalls",
        ] {
            check_peer(&v, "chain", peer);
        }
        assert_eq!(v["backend"], backend);
        assert_eq!(v["sequenced_linked_chains"], 0, "{v}");
        let linked = v["linked_chains"].as_u64().unwrap();
        if backend == "uring" {
            assert!(linked > 0, "{v}");
        } else {
            assert_eq!(linked, 0, "{v}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
