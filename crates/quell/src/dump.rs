//! Op tables for people: a readable table and JSON of [`Ring::ops`](crate::Ring::ops)
//! listings, written by [`Ring::dump_ops`](crate::Ring::dump_ops), a signal bound with
//! [`Ring::dump_on_signal`](crate::Ring::dump_on_signal), a
//! [`Handle::dump_ops`](crate::Handle::dump_ops) call, or the `quell ops` command.

use crate::info::OpInfo;
use std::io::{self, Write};
use std::time::Instant;

/// Which forms a dump writes.
///
/// ```
/// assert_ne!(quell::DumpFormat::Table, quell::DumpFormat::Json);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    /// Aligned columns, one op per line.
    Table,
    /// One JSON document: `{"ops": [..]}`.
    Json,
    /// The table, then the JSON document.
    Both,
}

/// One op as dumped in JSON: plain, stable field names, durations in milliseconds.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// ring.submit(quell::Op::timeout(std::time::Duration::from_secs(5)).user_data(9))?;
/// let rec = quell::OpRecord::from(&ring.ops()[0]);
/// assert_eq!((rec.kind.as_str(), rec.user_data), ("timeout", 9));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpRecord {
    /// `slot.generation`.
    pub id: String,
    /// User data.
    pub user_data: u64,
    /// Group path.
    pub group: String,
    /// Op kind name.
    pub kind: String,
    /// Descriptor (`-1`: none).
    pub fd: i32,
    /// What the descriptor refers to (`/proc/self/fd`), read when dumped.
    pub path: Option<String>,
    /// Offset of positioned transfers.
    pub offset: Option<u64>,
    /// Bytes asked for.
    pub len: u64,
    /// Bytes already moved (derived ops).
    pub transferred: u64,
    /// How it can be canceled now.
    pub class: String,
    /// Where it is in its life.
    pub state: String,
    /// Milliseconds since submission.
    pub age_ms: f64,
    /// Milliseconds until its deadline (negative: past), if it has one.
    pub deadline_in_ms: Option<f64>,
}

impl From<&OpInfo> for OpRecord {
    fn from(o: &OpInfo) -> Self {
        let now = Instant::now();
        OpRecord {
            id: o.id.to_string(),
            user_data: o.user_data,
            group: o.group_path.to_string(),
            kind: o.kind.name().to_string(),
            fd: o.fd,
            path: o.path().map(|p| p.to_string_lossy().into_owned()),
            offset: o.offset,
            len: o.len,
            transferred: o.transferred,
            class: o.class.to_string(),
            state: o.state.to_string(),
            age_ms: o.age.as_secs_f64() * 1e3,
            deadline_in_ms: o.deadline.map(|d| {
                if d >= now {
                    d.duration_since(now).as_secs_f64() * 1e3
                } else {
                    -(now.duration_since(d).as_secs_f64() * 1e3)
                }
            }),
        }
    }
}

/// Writes `ops` as an aligned table (a header, one line per op, oldest first).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = quell::Ring::new()?;
/// ring.submit(quell::Op::timeout(std::time::Duration::from_secs(5)))?;
/// let mut out = Vec::new();
/// quell::dump::write_table(&ring.ops(), &mut out)?;
/// let text = String::from_utf8(out)?;
/// assert!(text.lines().next().unwrap().starts_with("ID"));
/// assert!(text.contains("timeout"));
/// # Ok(()) }
/// ```
pub fn write_table(ops: &[OpInfo], w: &mut dyn Write) -> io::Result<()> {
    let mut recs: Vec<OpRecord> = ops.iter().map(OpRecord::from).collect();
    recs.sort_by(|a, b| b.age_ms.total_cmp(&a.age_ms));
    writeln!(
        w,
        "{:<10} {:>8} {:<16} {:<9} {:>4} {:<28} {:>10} {:>9} {:>9} {:<13} {:<16} {:>9} {:>9}",
        "ID",
        "USER",
        "GROUP",
        "OP",
        "FD",
        "PATH",
        "OFFSET",
        "LEN",
        "DONE",
        "CLASS",
        "STATE",
        "AGE",
        "DEADLINE"
    )?;
    for r in &recs {
        writeln!(
            w,
            "{:<10} {:>8} {:<16} {:<9} {:>4} {:<28} {:>10} {:>9} {:>9} {:<13} {:<16} {:>9} {:>9}",
            r.id,
            r.user_data,
            clip(&r.group, 16),
            r.kind,
            r.fd,
            clip(r.path.as_deref().unwrap_or("-"), 28),
            r.offset.map_or("-".to_string(), |o| o.to_string()),
            r.len,
            r.transferred,
            r.class,
            r.state,
            ms(r.age_ms),
            r.deadline_in_ms.map_or("-".to_string(), ms),
        )?;
    }
    writeln!(w, "{} ops outstanding", recs.len())
}

/// Writes `ops` as one JSON document `{"ops": [..]}` followed by a newline.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ring = quell::Ring::new()?;
/// let mut out = Vec::new();
/// quell::dump::write_json(&ring.ops(), &mut out)?;
/// assert_eq!(String::from_utf8(out)?, "{\"ops\":[]}\n");
/// # Ok(()) }
/// ```
pub fn write_json(ops: &[OpInfo], w: &mut dyn Write) -> io::Result<()> {
    #[derive(serde::Serialize)]
    struct Doc {
        ops: Vec<OpRecord>,
    }
    let doc = Doc {
        ops: ops.iter().map(OpRecord::from).collect(),
    };
    serde_json::to_writer(&mut *w, &doc)?;
    writeln!(w)
}

/// Writes `ops` in `format`.
///
/// ```
/// let mut out = Vec::new();
/// quell::dump::write(&[], quell::DumpFormat::Both, &mut out).unwrap();
/// assert!(String::from_utf8(out).unwrap().contains("0 ops outstanding"));
/// ```
pub fn write(ops: &[OpInfo], format: DumpFormat, w: &mut dyn Write) -> io::Result<()> {
    match format {
        DumpFormat::Table => write_table(ops, w)?,
        DumpFormat::Json => write_json(ops, w)?,
        DumpFormat::Both => {
            write_table(ops, w)?;
            write_json(ops, w)?;
        }
    }
    w.flush()
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(n - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

fn ms(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.1}s", v / 1e3)
    } else {
        format!("{v:.1}ms")
    }
}
