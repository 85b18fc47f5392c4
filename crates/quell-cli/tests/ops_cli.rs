//! `quell ops`: the demo's live table (bounded by --iterations/--once so it ends) shows
//! the workload's ops in flight; `--bench` lists every op at each size.

use serde_json::Value;
use std::process::{Command, Output};

fn quell(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quell"))
        .args(args)
        .output()
        .expect("the quell binary runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fuse_wanted() -> bool {
    !std::env::var_os("QUELL_SKIP_FUSE_TESTS").is_some_and(|v| v == "1")
}

#[test]
fn demo_json_lists_the_workload_each_refresh() {
    for backend in ["uring", "portable"] {
        let mut args = vec![
            "ops",
            "--demo",
            "--iterations",
            "2",
            "--interval-ms",
            "150",
            "--json",
            "--backend",
            backend,
        ];
        if !fuse_wanted() {
            args.push("--no-fuse");
        }
        let o = quell(&args);
        if backend == "uring"
            && !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("uring")
        {
            eprintln!("io_uring unavailable here; skipping that backend");
            continue;
        }
        let text = ok(&o);
        let docs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
            .collect();
        assert_eq!(docs.len(), 2, "{text}");
        for d in &docs {
            let ops = d["ops"].as_array().unwrap();
            let count = |kind: &str, group: &str| {
                ops.iter()
                    .filter(|o| o["kind"] == kind && o["group"] == group)
                    .count()
            };
            assert_eq!(count("read", "root/net"), 6, "a read on every pipe: {d}");
            assert_eq!(count("write", "root/net"), 1, "{d}");
            assert_eq!(count("timeout", "root"), 1, "{d}");
            assert!(ops
                .iter()
                .all(|o| o["state"] == "in-flight" || o["state"] == "queued"));
            let pipe_read = ops
                .iter()
                .find(|o| o["kind"] == "read" && o["group"] == "root/net")
                .unwrap();
            assert!(
                pipe_read["path"].as_str().unwrap().starts_with("pipe:"),
                "{pipe_read}"
            );
            if fuse_wanted() {
                let hung: Vec<_> = ops
                    .iter()
                    .filter(|o| o["group"] == "root/disk/fuse")
                    .collect();
                assert!(hung.len() >= 2, "the hung FUSE reads: {d}");
                assert!(hung.iter().all(|o| o["class"] == "interruptible"));
            }
        }
        // The slow write into the pipe moves forward between refreshes.
        let moved = |d: &Value| {
            d["ops"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["kind"] == "write")
                .unwrap()["transferred"]
                .as_u64()
                .unwrap()
        };
        assert!(
            moved(&docs[1]) > moved(&docs[0]),
            "the big write's progress shows"
        );
    }
}

#[test]
fn demo_once_prints_a_table() {
    let text = ok(&quell(&[
        "ops",
        "--demo",
        "--once",
        "--interval-ms",
        "50",
        "--no-fuse",
    ]));
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("quell ops --demo"));
    let header = lines.next().unwrap();
    for col in [
        "ID", "GROUP", "OP", "FD", "PATH", "OFFSET", "LEN", "DONE", "CLASS", "STATE", "AGE",
        "DEADLINE",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        text.contains("root/net") && text.contains("timeout"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("8 ops outstanding"), "{text}");
}

#[test]
fn bench_lists_every_op_at_each_size() {
    let text = ok(&quell(&[
        "ops",
        "--bench",
        "--sizes",
        "100,2000",
        "--json",
        "--backend",
        "portable",
    ]));
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["workload"], "ops-listing");
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2);
    assert_eq!(pts[0]["ops"], 100);
    assert_eq!(pts[1]["ops"], 2000);
    assert!(pts
        .iter()
        .all(|p| p["best_ns_per_op"].as_f64().unwrap() > 0.0));
}

#[test]
fn ops_needs_a_mode() {
    let o = quell(&["ops"]);
    assert_eq!(o.status.code(), Some(2));
}
