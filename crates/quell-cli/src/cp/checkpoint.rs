//! The checkpoint `quell cp` writes when it stops early: which prefix of the destination
//! is known to hold the source's bytes, and what the source looked like then, so
//! `--resume` neither skips bytes nor trusts a changed source.
//!
//! It is written only after the destination has been synced and truncated to `done`,
//! through a temporary file and a rename, so a checkpoint never claims bytes that are
//! not on disk.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The checkpoint file's content (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version (1).
    pub version: u32,
    /// The source path as given.
    pub src: PathBuf,
    /// The destination path as given.
    pub dst: PathBuf,
    /// The source's length when the copy started.
    pub src_size: u64,
    /// The source's modification time (nanoseconds since the epoch) when the copy started.
    pub src_mtime_ns: i128,
    /// Bytes `0..done` of the destination equal the source's.
    pub done: u64,
    /// Why the copy stopped (`interrupted`, `canceled`, `deadline`, `error`).
    pub reason: String,
}

impl Checkpoint {
    /// The default checkpoint path for a destination: `DST.quell-cp.json` beside it.
    pub fn default_path(dst: &Path) -> PathBuf {
        let mut name = dst.file_name().unwrap_or_default().to_os_string();
        name.push(".quell-cp.json");
        dst.with_file_name(name)
    }

    /// Reads a checkpoint, with a message naming the file on failure.
    pub fn load(path: &Path) -> Result<Checkpoint, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the checkpoint {}: {e}", path.display()))?;
        let c: Checkpoint = serde_json::from_str(&text)
            .map_err(|e| format!("checkpoint {} is not valid: {e}", path.display()))?;
        if c.version != 1 {
            return Err(format!(
                "checkpoint {} has version {}, this quell reads version 1",
                path.display(),
                c.version
            ));
        }
        Ok(c)
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename).
    pub fn store(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
            let f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &f, text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write the checkpoint {}: {e}", path.display())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default_path() {
        let dir = std::env::temp_dir().join(format!("quell-ck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dst = dir.join("out.bin");
        let path = Checkpoint::default_path(&dst);
        assert_eq!(path, dir.join("out.bin.quell-cp.json"));
        let c = Checkpoint {
            version: 1,
            src: "a".into(),
            dst: dst.clone(),
            src_size: 10,
            src_mtime_ns: 5,
            done: 4,
            reason: "interrupted".into(),
        };
        c.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), c);
        std::fs::write(&path, "{").unwrap();
        assert!(Checkpoint::load(&path).unwrap_err().contains("not valid"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
