//! LazyRead with bad input, failing/hanging files, rings dropped under it.
use crate::common::*;
use quell::lazy::{LazyError, LazyMode, LazyOptions};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[test]
fn lazy_bad_input_typed() {
    let _s = serial();
    for b in BACKENDS {
        guard("lazy_bad", 30, move || {
            let mut ring = ring(b);
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let fd = f.as_raw_fd();
            let cases: Vec<(&str, Result<quell::lazy::LazyRead, LazyError>)> = vec![
                ("len 0", ring.read_lazy(fd, 0, 0, LazyOptions::default())),
                ("fd -1", ring.read_lazy(-1, 0, 4096, LazyOptions::default())),
                (
                    "fd 1<<30",
                    ring.read_lazy(1 << 30, 0, 4096, LazyOptions::default()),
                ),
                (
                    "offset overflow",
                    ring.read_lazy(fd, u64::MAX - 10, 4096, LazyOptions::default()),
                ),
                (
                    "offset u64::MAX",
                    ring.read_lazy(fd, u64::MAX, 4096, LazyOptions::default()),
                ),
                (
                    "len usize::MAX",
                    ring.read_lazy(fd, 0, usize::MAX, LazyOptions::default()),
                ),
                (
                    "chunk 0",
                    ring.read_lazy(fd, 0, 4096, LazyOptions::default().chunk_size(0)),
                ),
                (
                    "chunk 3",
                    ring.read_lazy(fd, 0, 4096, LazyOptions::default().chunk_size(3)),
                ),
                (
                    "chunk huge",
                    ring.read_lazy(fd, 0, 4096, LazyOptions::default().chunk_size(usize::MAX)),
                ),
                (
                    "window 0",
                    ring.read_lazy(fd, 0, 4096, LazyOptions::default().window(0)),
                ),
            ];
            for (name, r) in cases {
                match r {
                    Ok(l) => {
                        let res = l.finish(&mut ring).map(|d| d.len());
                        eprintln!(
                            "{b:?} {name}: accepted, finish -> {:?}",
                            res.map_err(|e| e.to_string())
                        );
                    }
                    Err(e) => eprintln!("{b:?} {name}: {e}"),
                }
            }
            // pipe (not seekable)
            let (rx, tx) = pipe();
            write_fd(tx.as_raw_fd(), b"pipe data");
            drop(tx);
            match ring.read_lazy(rx.as_raw_fd(), 0, 4096, LazyOptions::default()) {
                Ok(l) => eprintln!(
                    "{b:?} pipe: accepted, finish -> {:?}",
                    l.finish(&mut ring)
                        .map(|d| d.len())
                        .map_err(|e| e.to_string())
                ),
                Err(e) => eprintln!("{b:?} pipe: {e}"),
            }
            // ranges out of bounds
            let l = ring
                .read_lazy(fd, 0, 10000, LazyOptions::default())
                .unwrap();
            assert!(matches!(
                l.wait_range(&mut ring, 0..20000),
                Err(LazyError::OutOfBounds { .. })
            ));
            #[allow(clippy::reversed_empty_ranges)]
            let r = l.wait_range(&mut ring, 500..100);
            assert!(r.is_err() || r.unwrap().is_empty(), "{b:?} reversed range");
            assert!(matches!(
                l.try_range(usize::MAX - 1..usize::MAX),
                Some(Err(LazyError::OutOfBounds { .. })) | None
            ));
            let other = &mut crate::common::ring(b);
            assert!(
                matches!(l.wait_range(other, 0..10), Err(LazyError::ForeignRing)),
                "{b:?} wait_range with another ring"
            );
            let all = l.finish(&mut ring).unwrap();
            assert_eq!(all, &std::fs::read("/proc/self/exe").unwrap()[..10000]);
        });
    }
}

/// Short file: zero-filled beyond EOF, data_len says how much the file gave.
#[test]
fn lazy_past_eof() {
    let _s = serial();
    for b in BACKENDS {
        guard("lazy_eof", 30, move || {
            let mut ring = ring(b);
            let p = tmpfile("/dev/shm", "lazyeof");
            std::fs::write(&p, vec![7u8; 5000]).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            let l = ring
                .read_lazy(
                    f.as_raw_fd(),
                    100,
                    3 << 20,
                    LazyOptions::default().chunk_size(1 << 20),
                )
                .unwrap();
            let all = l.finish(&mut ring).unwrap().to_vec();
            assert_eq!(l.data_len(), 4900, "{b:?}");
            assert!(all[..4900].iter().all(|&x| x == 7));
            assert!(all[4900..].iter().all(|&x| x == 0));
            std::fs::remove_file(&p).unwrap();
        });
    }
}

/// FUSE: a chunk that fails (EIO) is reported by the checked API, others go on; a chunk that
/// hangs is canceled with the LazyRead; the ring drops cleanly afterwards.
#[test]
fn lazy_on_faulty_fuse() {
    let _s = serial();
    use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
    for b in BACKENDS {
        for mode in [LazyMode::Checked, LazyMode::Auto] {
            guard("lazy_fuse", 60, move || {
                let fs = FaultFs::mount_temp(
                    Spec::new()
                        .file(
                            FileSpec::pattern("e.bin", 4 << 20)
                                .rule(Rule::read((1 << 20) + 5..(1 << 20) + 6, Behavior::Eio)),
                        )
                        .file(
                            FileSpec::pattern("h.bin", 4 << 20)
                                .rule(Rule::read((2 << 20)..(2 << 20) + 1, Behavior::Hang)),
                        ),
                )
                .unwrap();
                let mut ring = ring(b);
                let e = std::fs::File::open(fs.path("e.bin")).unwrap();
                let l = ring
                    .read_lazy(
                        e.as_raw_fd(),
                        0,
                        4 << 20,
                        LazyOptions::default().chunk_size(1 << 20).mode(mode),
                    )
                    .unwrap();
                let r0 = l.wait_range(&mut ring, 0..100).map(|d| d.to_vec());
                assert_eq!(
                    r0.unwrap(),
                    (0..100).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
                    "{b:?} {mode:?}"
                );
                let r1 = l.wait_range(&mut ring, (1 << 20)..(1 << 20) + 10);
                assert!(
                    matches!(r1, Err(LazyError::Chunk { chunk: 1, .. })),
                    "{b:?} {mode:?}: {r1:?}"
                );
                let r3 = l
                    .wait_range(&mut ring, (3 << 20)..(3 << 20) + 10)
                    .map(|d| d.to_vec());
                assert!(r3.is_ok(), "{b:?} {mode:?}: other chunks go on: {r3:?}");
                assert!(l.finish(&mut ring).is_err());
                drop(l);
                let h = std::fs::File::open(fs.path("h.bin")).unwrap();
                let l = ring
                    .read_lazy(
                        h.as_raw_fd(),
                        0,
                        4 << 20,
                        LazyOptions::default().chunk_size(1 << 20).mode(mode),
                    )
                    .unwrap();
                let r = l.wait_range(&mut ring, 0..10).map(|d| d.len());
                assert_eq!(r.unwrap(), 10);
                let t0 = Instant::now();
                while fs.stats().parked == 0 && t0.elapsed() < Duration::from_secs(5) {
                    ring.wait(1, Some(Duration::from_millis(20))).unwrap();
                }
                let n = l.cancel();
                eprintln!("{b:?} {mode:?}: cancel reached {n}");
                let r = l.wait_range(&mut ring, (2 << 20)..(2 << 20) + 10);
                assert!(
                    matches!(r, Err(LazyError::Chunk { .. })),
                    "{b:?} {mode:?}: {r:?}"
                );
                let t0 = Instant::now();
                let fin = l.finish(&mut ring);
                assert!(fin.is_err());
                assert!(t0.elapsed() < Duration::from_secs(5));
                drop(l);
                drop(ring);
            });
        }
    }
}

/// The ring is dropped while a LazyRead is still being filled; the LazyRead is used afterwards.
#[test]
fn lazy_outlives_ring() {
    let _s = serial();
    for b in BACKENDS {
        guard("lazy_outlive", 30, move || {
            let mut ring = ring(b);
            let p = tmpfile("/dev/shm", "lazyout");
            std::fs::write(&p, vec![3u8; 8 << 20]).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            let l = ring
                .read_lazy(
                    f.as_raw_fd(),
                    0,
                    8 << 20,
                    LazyOptions::default().mode(LazyMode::Checked),
                )
                .unwrap();
            let _ = l.wait_range(&mut ring, 0..10);
            drop(ring);
            let pr = l.progress();
            eprintln!(
                "{b:?}: after ring drop: {pr:?}; try_range(8MiB-10..) = {:?}",
                l.try_range((8 << 20) - 10..8 << 20)
                    .map(|r| r.map(|d| d.len()).map_err(|e| e.to_string()))
            );
            let mut r2 = crate::common::ring(b);
            let res = l.finish(&mut r2);
            assert!(
                matches!(
                    res,
                    Err(LazyError::ForeignRing)
                        | Err(LazyError::Chunk { .. })
                        | Err(LazyError::Ring(_))
                ) || res.is_ok(),
                "{b:?}"
            );
            std::fs::remove_file(&p).unwrap();
        });
    }
}

/// Raw view in Uffd mode: another thread touches an unpublished page while the owner drives; a
/// canceled chunk is poisoned (SIGBUS) -- test only the happy path here.
#[test]
fn lazy_raw_touch_from_thread() {
    let _s = serial();
    if quell::lazy::availability().mode != LazyMode::Uffd {
        eprintln!("no uffd: {:?}", quell::lazy::availability());
    }
    for b in BACKENDS {
        guard("lazy_raw", 30, move || {
            let mut ring = ring(b);
            let p = tmpfile("/dev/shm", "lazyraw");
            let data: Vec<u8> = (0..(6 << 20)).map(|i| (i % 241) as u8).collect();
            std::fs::write(&p, &data).unwrap();
            let f = std::fs::File::open(&p).unwrap();
            let l = ring
                .read_lazy(f.as_raw_fd(), 0, 6 << 20, LazyOptions::default())
                .unwrap();
            if l.mode() != LazyMode::Uffd {
                eprintln!("{b:?}: mode {:?}, skipping raw", l.mode());
                let _ = l.finish(&mut ring);
                return;
            }
            let view = l.view();
            let t = std::thread::spawn(move || {
                let raw = view.raw().unwrap();
                let mut sum = 0u64;
                for i in (0..raw.len()).step_by(4096) {
                    sum += raw[i] as u64;
                }
                sum
            });
            while !t.is_finished() {
                ring.wait(1, Some(Duration::from_millis(5))).unwrap();
            }
            let sum = t.join().unwrap();
            let want: u64 = (0..data.len()).step_by(4096).map(|i| data[i] as u64).sum();
            assert_eq!(sum, want, "{b:?}");
            assert_eq!(l.finish(&mut ring).unwrap(), &data[..]);
            std::fs::remove_file(&p).unwrap();
        });
    }
}

/// read_lazy "returns at once"; I10: an oversized length is a typed error. A 64 TiB lazy read of a
/// 2 MiB file is accepted after seconds and hundreds of MB of bookkeeping (and finishing a 1 TiB one
/// does not end in 40 s).
#[test]
fn lazy_huge_length_returns_at_once_or_refused() {
    let _s = serial();
    for b in BACKENDS {
        let r = guard("lazy_huge", 60, move || {
            let mut ring = ring(b);
            let f = std::fs::File::open("/proc/self/exe").unwrap();
            let t0 = Instant::now();
            let l = ring.read_lazy(f.as_raw_fd(), 0, 1 << 46, LazyOptions::default());
            let el = t0.elapsed();
            let rss: String = std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("VmRSS"))
                .collect();
            let ok = l.is_err() || el < Duration::from_millis(500);
            let s = format!(
                "read_lazy(len 64 TiB) -> {} after {el:?}, {rss}",
                if l.is_ok() { "Ok" } else { "Err" }
            );
            drop(l);
            (ok, s)
        });
        assert!(r.0, "{b:?}: {}", r.1);
    }
}
