//! `quell bench` with no workload: every registered [`Workload`] on every available
//! backend (a workload that measures both backends itself runs once), then the
//! cancel-latency distribution per op class. A progress bar goes to standard error;
//! the results to standard output as one Markdown table, or with `--json` as one JSON
//! document whose `workloads` array holds one DESIGN.md §7 object per workload and
//! backend. A workload that fails is reported under `failed` and the suite goes on.

use super::cancel_latency::{self, ClassLatency};
use super::plot::{self, Panel};
use super::read::bench_dir;
use super::{capture, quantile_us, settings_for, BackendArg, BenchArgs, Report, Workload};
use crate::CliError;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quell::{BackendChoice, Ring};
use serde_json::{json, Value};
use std::time::Instant;

struct Failure {
    workload: &'static str,
    backend: &'static str,
    error: String,
}

fn available_backends(args: &BenchArgs) -> Vec<BackendArg> {
    match args.backend {
        BackendArg::Auto => {
            let uring = Ring::builder()
                .backend(BackendChoice::Uring)
                .build()
                .is_ok();
            let mut v = vec![BackendArg::Portable];
            if uring {
                v.insert(0, BackendArg::Uring);
            }
            v
        }
        b => vec![b],
    }
}

/// Runs the suite.
pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let backends = available_backends(args);
    let mut jobs: Vec<(Workload, BackendArg)> = Vec::new();
    for &w in Workload::all() {
        if w.spec().both_backends && args.backend == BackendArg::Auto {
            jobs.push((w, BackendArg::Auto));
        } else {
            jobs.extend(backends.iter().map(|&b| (w, b)));
        }
    }
    let pb = ProgressBar::with_draw_target(
        Some(jobs.len() as u64 + backends.len() as u64),
        ProgressDrawTarget::stderr(),
    );
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut reports: Vec<Report> = Vec::new();
    let mut failures = Vec::new();
    let mut panels = Vec::new();
    for (w, b) in jobs {
        let name = w.spec().name;
        pb.set_message(format!("{name} on {}", b.name()));
        let mut a = args.clone();
        a.backend = b;
        a.workload = Some(w);
        capture::start();
        let result = settings_for(&a, w).and_then(|s| (w.spec().run)(&a, &s));
        let curves = capture::take();
        match result {
            Ok(rs) => {
                let backend = rs.first().map(|r| r.backend.clone()).unwrap_or_default();
                panels.push(Panel {
                    title: format!("{name} ({backend}): latency CDF"),
                    curves: unique_labels(curves),
                });
                reports.extend(rs);
            }
            Err(e) => failures.push(Failure {
                workload: name,
                backend: b.name(),
                error: e.to_string(),
            }),
        }
        pb.inc(1);
    }
    let iters = if args.quick { 100 } else { 1000 };
    let file = bench_dir().join("quell-bench-cancel-1MiB.dat");
    if std::fs::metadata(&file).map_or(true, |m| m.len() != 1 << 20) {
        std::fs::write(&file, vec![1u8; 1 << 20])
            .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    }
    let mut cancels: Vec<(&'static str, Vec<ClassLatency>, &'static str)> = Vec::new();
    for &b in &backends {
        pb.set_message(format!("cancel latency on {}", b.name()));
        match cancel_latency::measure(b.choice(), iters, &file) {
            Ok((v, how)) => {
                panels.push(Panel {
                    title: format!("cancel → completion by op class ({})", b.name()),
                    curves: v
                        .iter()
                        .map(|c| (c.class.to_string(), c.hist.clone()))
                        .collect(),
                });
                cancels.push((b.name(), v, how));
            }
            Err(e) => failures.push(Failure {
                workload: "cancel-latency",
                backend: b.name(),
                error: e.to_string(),
            }),
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let wall = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    if let Some(path) = &args.plot {
        plot::draw(path, &panels)?;
        eprintln!("quell bench: plot written to {}", path.display());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&document(
                args, &backends, &reports, &cancels, &failures, wall
            ))?
        );
    } else {
        print!("{}", markdown(&reports, &cancels, &failures, wall));
    }
    Ok(())
}

/// Makes curve labels unique within a panel (a workload measuring two backends reports
/// quell twice).
fn unique_labels(
    curves: Vec<(String, hdrhistogram::Histogram<u64>)>,
) -> Vec<(String, hdrhistogram::Histogram<u64>)> {
    let mut seen: Vec<String> = Vec::new();
    curves
        .into_iter()
        .map(|(n, h)| {
            let k = seen.iter().filter(|s| **s == n).count();
            seen.push(n.clone());
            (if k == 0 { n } else { format!("{n} #{}", k + 1) }, h)
        })
        .collect()
}

fn cancel_rows(cancels: &[(&'static str, Vec<ClassLatency>, &'static str)]) -> Vec<Value> {
    let mut rows = Vec::new();
    for (backend, v, how) in cancels {
        for c in v {
            rows.push(json!({
                "backend": backend,
                "class": c.class.to_string(),
                "n": c.hist.len(),
                "p50_us": quantile_us(&c.hist, 0.5),
                "p99_us": quantile_us(&c.hist, 0.99),
                "max_us": quantile_us(&c.hist, 1.0),
                "bounded_file": how,
            }));
        }
    }
    rows
}

fn document(
    args: &BenchArgs,
    backends: &[BackendArg],
    reports: &[Report],
    cancels: &[(&'static str, Vec<ClassLatency>, &'static str)],
    failures: &[Failure],
    wall: f64,
) -> Value {
    json!({
        "suite": "quell bench",
        "quick": args.quick,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "backends": backends.iter().map(|b| b.name()).collect::<Vec<_>>(),
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "workloads": reports.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        "cancel_latency": cancel_rows(cancels),
        "failed": failures.iter().map(|f| json!({"workload": f.workload, "backend": f.backend, "error": f.error})).collect::<Vec<_>>(),
        "wall_s": wall,
    })
}

fn markdown(
    reports: &[Report],
    cancels: &[(&'static str, Vec<ClassLatency>, &'static str)],
    failures: &[Failure],
    wall: f64,
) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "| workload | backend | quell ops/s | p50 µs | p99 µs | peer | peer ops/s | peer p50 µs | peer p99 µs | quell / peer |");
    let _ = writeln!(o, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|");
    for r in reports {
        let ratios = r.ratios();
        let q = &r.quell;
        let head = format!(
            "| {} | {} | {} | {:.2} | {:.2} ",
            r.workload,
            r.backend,
            super::group_digits(q.ops_per_sec),
            q.p50_us,
            q.p99_us
        );
        if r.peers.is_empty() {
            let _ = writeln!(o, "{head}| - | | | | |");
        }
        for p in &r.peers {
            let ratio = ratios
                .iter()
                .find(|(n, _)| *n == p.name)
                .map_or("-".to_string(), |(_, v)| format!("{v:.3}"));
            let _ = writeln!(
                o,
                "{head}| {} | {} | {:.2} | {:.2} | {} |",
                p.name,
                super::group_digits(p.ops_per_sec),
                p.p50_us,
                p.p99_us,
                ratio
            );
        }
    }
    let _ = writeln!(o, "\nCancel → completion, per op class:\n");
    let _ = writeln!(o, "| backend | class | n | p50 µs | p99 µs | max µs |");
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
    for row in cancel_rows(cancels) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            row["backend"].as_str().unwrap_or(""),
            row["class"].as_str().unwrap_or(""),
            row["n"],
            row["p50_us"],
            row["p99_us"],
            row["max_us"]
        );
    }
    for r in reports {
        for (name, why) in &r.skipped {
            let _ = writeln!(o, "\n{} ({}): {name} skipped: {why}", r.workload, r.backend);
        }
    }
    for f in failures {
        let _ = writeln!(o, "\nFAILED {} on {}: {}", f.workload, f.backend, f.error);
    }
    let _ = writeln!(
        o,
        "\nwall {wall} s; ops/s is the median round; cp is MiB/s; drain ops are ops resolved/s"
    );
    o
}
