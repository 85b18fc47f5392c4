//! The mount guard.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use polyfuse::{KernelConfig, Session};

use crate::daemon::{self, Shared};
use crate::mount;
use crate::spec::{validate_rules, Rule, Spec};
use crate::stats::Stats;
use crate::Error;

/// FUSE loop threads. Hung and delayed requests are parked, never block a loop thread, so a
/// few threads serve any number of them; several are needed so that requests are read while
/// others are being answered.
const LOOP_THREADS: usize = 4;
/// Largest FUSE write (and direct-I/O read) request: 128 KiB. polyfuse's 16 MiB default makes
/// every request allocate and clear a 16 MiB buffer (~200 µs).
const MAX_WRITE: u32 = 128 * 1024;
/// How long teardown waits for the daemon threads before detaching them.
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

/// A mounted fault-injection filesystem; unmounts on drop.
///
/// The daemon runs in threads of the calling process. Dropping the guard (also while a test
/// panics) answers every parked request with `EIO`, aborts the connection through fusectl (so
/// any request still in flight ends with `ECONNABORTED`/`ENOTCONN`), detaches the mount
/// (`umount2(MNT_DETACH)`) and joins the threads, waiting at most a few seconds: it never
/// hangs. If the whole process dies, the kernel aborts the connection itself when the
/// `/dev/fuse` descriptor closes; the mount point is then left as a dead mount (`ENOTCONN`)
/// until someone unmounts it, but nothing hangs.
///
/// ```no_run
/// use std::io::Read;
/// use std::time::Duration;
/// use quell_faultfs::{Behavior, FaultFs, FileSpec, Rule, Spec};
///
/// let fs = FaultFs::mount_temp(
///     Spec::new().file(FileSpec::pattern("hang.bin", 1 << 20).rule(Rule::read(0..4096, Behavior::Hang))),
/// )?;
/// let path = fs.path("hang.bin");
/// let reader = std::thread::spawn(move || {
///     let mut buf = vec![0u8; 4096];
///     std::fs::File::open(path)?.read(&mut buf)
/// });
/// assert!(fs.wait_parked(1, Duration::from_secs(5)));
/// fs.release_all();
/// assert_eq!(reader.join().unwrap()?, 4096);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct FaultFs {
    shared: Arc<Shared>,
    session: Option<Arc<Session>>,
    threads: Vec<JoinHandle<()>>,
    mountpoint: PathBuf,
    fusermount: PathBuf,
    conn_id: Option<u64>,
    fusectl: Result<(), String>,
    temp_dir: Option<PathBuf>,
    torn_down: bool,
}

impl std::fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFs")
            .field("mountpoint", &self.mountpoint)
            .field("conn_id", &self.conn_id)
            .finish_non_exhaustive()
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FaultFs {
    /// Mount `spec` at the existing directory `dir` and start serving.
    ///
    /// Needs `/dev/fuse` and a `fusermount` helper (package `fuse3`). Mounts fusectl at
    /// `/sys/fs/fuse/connections` if it is not mounted and we are allowed to (root); without
    /// fusectl everything works except [`FaultFs::abort`], and teardown relies on answering
    /// parked requests plus the lazy unmount.
    ///
    /// ```no_run
    /// use quell_faultfs::{FaultFs, FileSpec, Spec};
    ///
    /// std::fs::create_dir_all("/tmp/ffs")?;
    /// let fs = FaultFs::mount("/tmp/ffs".as_ref(), Spec::new().file(FileSpec::pattern("a", 100)))?;
    /// assert_eq!(std::fs::read(fs.path("a"))?.len(), 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mount(dir: &Path, spec: Spec) -> Result<FaultFs, Error> {
        Self::mount_inner(dir, spec, None)
    }

    /// Mount `spec` in a fresh directory under the system temp dir; the directory is removed
    /// on drop.
    ///
    /// ```no_run
    /// let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// println!("mounted at {}", fs.mountpoint().display());
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn mount_temp(spec: Spec) -> Result<FaultFs, Error> {
        spec.validate()?;
        let base = std::env::temp_dir();
        let pid = std::process::id();
        let dir = loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let d = base.join(format!("quell-faultfs-{pid}-{n}"));
            match std::fs::create_dir(&d) {
                Ok(()) => break d,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::BadMountpoint {
                        path: d,
                        reason: format!("cannot create it: {e}"),
                    })
                }
            }
        };
        match Self::mount_inner(&dir, spec, Some(dir.clone())) {
            Ok(fs) => Ok(fs),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    fn mount_inner(dir: &Path, spec: Spec, temp_dir: Option<PathBuf>) -> Result<FaultFs, Error> {
        spec.validate()?;
        let mountpoint = dir.canonicalize().map_err(|e| Error::BadMountpoint {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        if !mountpoint.is_dir() {
            return Err(Error::BadMountpoint {
                path: dir.to_owned(),
                reason: "not a directory".into(),
            });
        }
        mount::check_dev_fuse()?;
        let fusermount = mount::find_fusermount()?;
        let fusectl = mount::ensure_fusectl();
        if let Err(why) = &fusectl {
            tracing::warn!("faultfs: {why}; abort() and forced teardown are unavailable");
        }

        let mut config = KernelConfig::default();
        config
            .auto_unmount(false)
            // Without this, direct-I/O reads from io_uring go as background requests: the
            // kernel never sends INTERRUPT for them.
            .async_dio(false)
            .max_write(MAX_WRITE)
            .fusermount_path(&fusermount)
            .mount_option("fsname=quell-faultfs,subtype=faultfs");
        let session =
            Session::mount(mountpoint.clone(), config).map_err(|source| Error::Mount {
                path: mountpoint.clone(),
                source,
            })?;
        let session = Arc::new(session);
        let conn_id = mount::find_fuse_mount(&mountpoint).map(|e| e.fuse_conn_id());
        if conn_id.is_none() {
            tracing::warn!(
                "faultfs: mount at {} not found in /proc/self/mountinfo",
                mountpoint.display()
            );
        }

        let shared = Arc::new(Shared::new(&spec.files));
        let mut fs = FaultFs {
            shared,
            session: Some(session.clone()),
            threads: Vec::new(),
            mountpoint,
            fusermount,
            conn_id,
            fusectl,
            temp_dir,
            torn_down: false,
        };
        // On any error below, dropping `fs` tears the mount down again.
        for i in 0..=LOOP_THREADS {
            fs.shared.lock().threads_alive += 1;
            let shared = fs.shared.clone();
            let builder = std::thread::Builder::new();
            let res = if i == LOOP_THREADS {
                builder
                    .name("faultfs-timer".into())
                    .spawn(move || daemon::timer(shared))
            } else {
                let session = session.clone();
                builder
                    .name(format!("faultfs-loop-{i}"))
                    .spawn(move || daemon::serve(shared, session))
            };
            match res {
                Ok(h) => fs.threads.push(h),
                Err(e) => {
                    fs.shared.lock().threads_alive -= 1;
                    return Err(Error::Io(e));
                }
            }
        }
        Ok(fs)
    }

    /// The mount point (canonical path).
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// assert!(fs.mountpoint().is_absolute());
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The path of file `name` inside the mount.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// let p = fs.path("data.bin");
    /// assert!(p.ends_with("data.bin"));
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    /// The FUSE connection id (the directory name under `/sys/fs/fuse/connections`), if the
    /// mount was found in `/proc/self/mountinfo`.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// println!("connection {:?}", fs.connection_id());
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn connection_id(&self) -> Option<u64> {
        self.conn_id
    }

    /// Answer every hung request with its real result (reads: the current content; writes:
    /// stored and acknowledged in full). Returns how many were released. Rules are unchanged,
    /// so a new request on a hung range hangs again.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// let n = fs.release_all();
    /// println!("released {n}");
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn release_all(&self) -> usize {
        self.shared.release_all()
    }

    /// Answer every hung request with the error `errno` (values outside `1..=511`, which the
    /// kernel would refuse, become `EIO`). Returns how many were answered.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// fs.fail_parked(libc::ETIMEDOUT);
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn fail_parked(&self, errno: i32) -> usize {
        self.shared.fail_parked(errno, false)
    }

    /// Replace the rules of file `name`. Applies to requests arriving from now on; requests
    /// already hung or delayed keep their fate.
    ///
    /// ```no_run
    /// use quell_faultfs::{Behavior, FileSpec, Rule, Spec};
    /// # let fs = quell_faultfs::FaultFs::mount_temp(Spec::new().file(FileSpec::new("a", 10)))?;
    /// fs.set_rules("a", vec![Rule::read(0..10, Behavior::Eio)])?;
    /// fs.set_rules("a", vec![])?; // healthy again
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn set_rules(&self, name: &str, rules: Vec<Rule>) -> Result<(), Error> {
        validate_rules(name, &rules)?;
        let mut st = self.shared.lock();
        let f = st
            .files
            .iter_mut()
            .find(|f| f.spec_name == name)
            .ok_or_else(|| Error::NoSuchFile(name.to_owned()))?;
        f.rules = rules;
        Ok(())
    }

    /// A snapshot of the counters.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// let s = fs.stats();
    /// println!("{} interrupts, {} parked", s.interrupts, s.parked);
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Wait until at least `n` requests are hung (parked by a `Hang` rule). Returns `false` on
    /// timeout.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// # use std::time::Duration;
    /// if !fs.wait_parked(1, Duration::from_secs(5)) {
    ///     panic!("the read never reached the daemon");
    /// }
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        self.shared
            .wait_until(timeout, |st| Shared::hung_count(st) >= n)
    }

    /// Wait until at least `n` `FUSE_INTERRUPT` requests have been received in total.
    /// Returns `false` on timeout.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// # use std::time::Duration;
    /// assert!(fs.wait_interrupts(1, Duration::from_secs(5)));
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn wait_interrupts(&self, n: u64, timeout: Duration) -> bool {
        self.shared
            .wait_until(timeout, |st| Shared::interrupt_count(st) >= n)
    }

    /// The current content of file `name` (initial content plus everything written).
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new()
    /// #     .file(quell_faultfs::FileSpec::new("out", 0)))?;
    /// std::fs::write(fs.path("out"), b"hello")?;
    /// assert_eq!(fs.file_contents("out")?, b"hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_contents(&self, name: &str) -> Result<Vec<u8>, Error> {
        let st = self.shared.lock();
        let f = st
            .files
            .iter()
            .find(|f| f.spec_name == name)
            .ok_or_else(|| Error::NoSuchFile(name.to_owned()))?;
        Ok(f.data.read(0, f.data.size()))
    }

    /// Whether the daemon is still serving (all its threads are running).
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// assert!(fs.is_alive());
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn is_alive(&self) -> bool {
        !self.torn_down && self.shared.lock().threads_alive == LOOP_THREADS + 1
    }

    /// Abort the connection through fusectl, like `echo 1 > /sys/fs/fuse/connections/N/abort`:
    /// every request in flight ends at once (`ECONNABORTED` / `ENOTCONN`), later accesses fail
    /// with `ENOTCONN`, and the daemon threads stop. The mount stays (dead) until the guard is
    /// dropped.
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// fs.abort()?;
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn abort(&self) -> Result<(), Error> {
        if let Err(why) = &self.fusectl {
            return Err(Error::Fusectl(why.clone()));
        }
        let Some(id) = self.conn_id else {
            return Err(Error::Fusectl(format!(
                "the connection id of {} is unknown (not in /proc/self/mountinfo)",
                self.mountpoint.display()
            )));
        };
        mount::abort_connection(id).map_err(Error::Fusectl)
    }

    /// Unmount now and report what happened (the same as dropping the guard, which ignores
    /// the result).
    ///
    /// ```no_run
    /// # let fs = quell_faultfs::FaultFs::mount_temp(quell_faultfs::Spec::new())?;
    /// fs.unmount()?;
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn unmount(mut self) -> Result<(), Error> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), Error> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let start = Instant::now();
        let mut problems = Vec::new();

        // 1. No new parking; answer everything parked (hung and delayed) with EIO.
        self.shared.begin_shutdown();
        self.shared.fail_parked(libc::EIO, true);

        // 2. Abort: ends anything still in flight and wakes the loop threads (ENODEV). The
        //    loop threads cannot be woken any other way while a file is open.
        if self.fusectl.is_ok() {
            if let Err(e) = self.abort() {
                problems.push(e.to_string());
            }
        }

        // 3. Detach the mount.
        if let Err(e) = mount::unmount_lazy(&self.mountpoint, &self.fusermount) {
            problems.push(e);
        }

        // 4. Wait for the threads, bounded.
        let all_done = self
            .shared
            .wait_until(JOIN_TIMEOUT, |st| st.threads_alive == 0);
        if all_done {
            for h in self.threads.drain(..) {
                let _ = h.join();
            }
        } else {
            problems.push(format!(
                "daemon threads still running after {JOIN_TIMEOUT:?} (no fusectl and files \
                 still open?); detached them"
            ));
            self.threads.clear();
        }
        // 5. Close the connection (polyfuse also runs `fusermount -u`, a no-op by now).
        self.session.take();

        if let Some(dir) = self.temp_dir.take() {
            if !mount::is_mounted(&self.mountpoint) {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        tracing::debug!("faultfs: teardown took {:?}", start.elapsed());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Io(std::io::Error::other(problems.join("; "))))
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("faultfs: teardown of {}: {e}", self.mountpoint.display());
        }
    }
}
