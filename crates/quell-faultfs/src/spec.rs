//! The description of a faultfs: which files exist, what they contain, and how they misbehave.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;

use crate::Error;

/// The byte at offset `i` of a file whose content is [`Content::Pattern`]: `(i % 251) as u8`.
///
/// 251 is prime, so the pattern never lines up with page or block sizes and a misplaced
/// chunk is always detected.
///
/// ```
/// use quell_faultfs::pattern_byte;
///
/// assert_eq!(pattern_byte(0), 0);
/// assert_eq!(pattern_byte(250), 250);
/// assert_eq!(pattern_byte(251), 0);
/// ```
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fill `dst` with the pattern starting at file offset `offset`.
///
/// ```
/// let mut buf = [0u8; 4];
/// quell_faultfs::fill_pattern(249, &mut buf);
/// assert_eq!(buf, [249, 250, 0, 1]);
/// ```
pub fn fill_pattern(offset: u64, dst: &mut [u8]) {
    let mut v = offset % 251;
    for b in dst {
        *b = v as u8;
        v += 1;
        if v == 251 {
            v = 0;
        }
    }
}

/// A whole filesystem: a flat directory of files.
///
/// Build one in code with the builder helpers, or parse TOML with [`Spec::from_toml_str`] /
/// [`Spec::from_toml_file`] (format in the crate's README and `examples/spec.toml`).
///
/// ```
/// use quell_faultfs::{Behavior, FileSpec, Rule, Spec};
///
/// let spec = Spec::new()
///     .file(FileSpec::pattern("good.bin", 1 << 20))
///     .file(FileSpec::pattern("bad.bin", 1 << 20).rule(Rule::read(4096..8192, Behavior::Eio)));
/// assert_eq!(spec.files.len(), 2);
/// spec.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "RawSpec")]
pub struct Spec {
    /// The files, in directory order (inode numbers 2, 3, ... in this order).
    pub files: Vec<FileSpec>,
}

/// One file of the filesystem.
///
/// ```
/// use quell_faultfs::{Behavior, Content, FileSpec, Rule};
///
/// let f = FileSpec::new("log.txt", 0)
///     .content(Content::Zero)
///     .rule(Rule::write(0..u64::MAX, Behavior::Enospc));
/// assert_eq!(f.name, "log.txt");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// The name in the root directory (no `/`, not `.` or `..`, at most 255 bytes).
    pub name: String,
    /// Initial size in bytes. The content is produced on demand, so large sizes cost no memory.
    pub size: u64,
    /// The initial content.
    pub content: Content,
    /// Fault rules; for each request the first rule whose range overlaps it applies.
    pub rules: Vec<Rule>,
    /// `false` (default): the file is opened with `FOPEN_DIRECT_IO`, every `read(2)` and
    /// `write(2)` reaches the daemon and can be interrupted. `true`: the kernel page cache is
    /// used (reads go through readahead, hang in page-lock waits and are not interruptible).
    pub cached: bool,
}

/// What a file contains before anything is written to it.
///
/// ```
/// use quell_faultfs::Content;
///
/// assert_eq!(Content::Pattern.byte_at(300), 49);
/// assert_eq!(Content::Bytes(b"ab".to_vec()).byte_at(1), b'b');
/// assert_eq!(Content::Bytes(b"ab".to_vec()).byte_at(5), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Content {
    /// All zero bytes.
    #[default]
    Zero,
    /// Byte `i` is [`pattern_byte(i)`](pattern_byte).
    Pattern,
    /// These bytes, then zeros up to the file size.
    Bytes(Vec<u8>),
}

impl Content {
    /// The initial byte at offset `i`.
    ///
    /// ```
    /// assert_eq!(quell_faultfs::Content::Zero.byte_at(7), 0);
    /// ```
    pub fn byte_at(&self, i: u64) -> u8 {
        match self {
            Content::Zero => 0,
            Content::Pattern => pattern_byte(i),
            Content::Bytes(b) => usize::try_from(i)
                .ok()
                .and_then(|i| b.get(i))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Fill `dst` with the initial bytes starting at `offset`.
    ///
    /// ```
    /// let mut b = [9u8; 3];
    /// quell_faultfs::Content::Zero.fill(0, &mut b);
    /// assert_eq!(b, [0, 0, 0]);
    /// ```
    pub fn fill(&self, offset: u64, dst: &mut [u8]) {
        match self {
            Content::Zero => dst.fill(0),
            Content::Pattern => fill_pattern(offset, dst),
            Content::Bytes(b) => {
                dst.fill(0);
                if let Ok(off) = usize::try_from(offset) {
                    if off < b.len() {
                        let n = (b.len() - off).min(dst.len());
                        dst[..n].copy_from_slice(&b[off..off + n]);
                    }
                }
            }
        }
    }
}

/// Which requests a [`Rule`] applies to.
///
/// ```
/// use quell_faultfs::Access;
///
/// assert!(Access::Both.matches_read());
/// assert!(!Access::Write.matches_read());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Only `FUSE_READ`.
    Read,
    /// Only `FUSE_WRITE`.
    Write,
    /// Both (the default in TOML).
    #[default]
    Both,
}

impl Access {
    /// Whether a rule with this access applies to reads.
    ///
    /// ```
    /// assert!(quell_faultfs::Access::Read.matches_read());
    /// ```
    pub fn matches_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether a rule with this access applies to writes.
    ///
    /// ```
    /// assert!(quell_faultfs::Access::Write.matches_write());
    /// ```
    pub fn matches_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// What the daemon does with a request that a rule matches.
///
/// ```
/// use quell_faultfs::Behavior;
///
/// let b = Behavior::Delay { ms: 50 };
/// assert_ne!(b, Behavior::Hang);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Serve the request normally.
    #[default]
    Normal,
    /// Never reply until released ([`FaultFs::release_all`](crate::FaultFs::release_all)),
    /// failed ([`FaultFs::fail_parked`](crate::FaultFs::fail_parked)), interrupted
    /// (`FUSE_INTERRUPT` → `EINTR`), or the filesystem is torn down.
    Hang,
    /// Sleep `ms` milliseconds, then serve normally; an interrupt during the sleep replies `EINTR`.
    Delay {
        /// The delay in milliseconds.
        ms: u64,
    },
    /// Reply `EIO` for the whole request (even if only part of it overlaps the rule).
    Eio,
    /// Reply at most `n` bytes (reads: a short read; writes: only `n` bytes are stored and
    /// acknowledged).
    Short {
        /// The maximum number of bytes transferred by one request.
        n: u32,
    },
    /// Reply `ENOSPC` (meant for writes; a read matching it also gets `ENOSPC`).
    Enospc,
    /// Reply with this (positive) errno.
    Errno {
        /// The errno value, e.g. `libc::EAGAIN`.
        errno: i32,
    },
}

/// One fault rule: requests of kind `on` overlapping `range` get `behavior`.
///
/// ```
/// use quell_faultfs::{Access, Behavior, Rule};
///
/// let r = Rule::read(0..4096, Behavior::Hang);
/// assert_eq!(r.on, Access::Read);
/// assert!(r.overlaps(4000, 200));
/// assert!(!r.overlaps(4096, 10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Half-open byte range of the file.
    pub range: Range<u64>,
    /// The kind of request the rule applies to.
    pub on: Access,
    /// What happens to a matching request.
    pub behavior: Behavior,
}

impl Rule {
    /// A rule with an explicit access kind.
    ///
    /// ```
    /// use quell_faultfs::{Access, Behavior, Rule};
    /// let r = Rule::new(0..10, Access::Both, Behavior::Eio);
    /// assert_eq!(r.range, 0..10);
    /// ```
    pub fn new(range: Range<u64>, on: Access, behavior: Behavior) -> Rule {
        Rule {
            range,
            on,
            behavior,
        }
    }

    /// A rule for reads.
    ///
    /// ```
    /// let r = quell_faultfs::Rule::read(0..10, quell_faultfs::Behavior::Eio);
    /// assert!(r.on.matches_read());
    /// ```
    pub fn read(range: Range<u64>, behavior: Behavior) -> Rule {
        Rule::new(range, Access::Read, behavior)
    }

    /// A rule for writes.
    ///
    /// ```
    /// let r = quell_faultfs::Rule::write(0..10, quell_faultfs::Behavior::Enospc);
    /// assert!(r.on.matches_write());
    /// ```
    pub fn write(range: Range<u64>, behavior: Behavior) -> Rule {
        Rule::new(range, Access::Write, behavior)
    }

    /// A rule for reads and writes.
    ///
    /// ```
    /// let r = quell_faultfs::Rule::both(0..10, quell_faultfs::Behavior::Hang);
    /// assert!(r.on.matches_read() && r.on.matches_write());
    /// ```
    pub fn both(range: Range<u64>, behavior: Behavior) -> Rule {
        Rule::new(range, Access::Both, behavior)
    }

    /// Whether the byte range `[offset, offset + len)` overlaps this rule's range.
    /// An empty request overlaps nothing.
    ///
    /// ```
    /// let r = quell_faultfs::Rule::read(10..20, quell_faultfs::Behavior::Eio);
    /// assert!(r.overlaps(0, 11));
    /// assert!(!r.overlaps(0, 10));
    /// ```
    pub fn overlaps(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        len > 0 && self.range.start < end && offset < self.range.end
    }
}

impl FileSpec {
    /// A file of `size` zero bytes, direct I/O, no rules.
    ///
    /// ```
    /// let f = quell_faultfs::FileSpec::new("z", 10);
    /// assert_eq!(f.size, 10);
    /// ```
    pub fn new(name: impl Into<String>, size: u64) -> FileSpec {
        FileSpec {
            name: name.into(),
            size,
            content: Content::Zero,
            rules: Vec::new(),
            cached: false,
        }
    }

    /// A file of `size` bytes of [`Content::Pattern`].
    ///
    /// ```
    /// let f = quell_faultfs::FileSpec::pattern("p", 1 << 30); // costs no memory
    /// assert_eq!(f.content, quell_faultfs::Content::Pattern);
    /// ```
    pub fn pattern(name: impl Into<String>, size: u64) -> FileSpec {
        FileSpec::new(name, size).content(Content::Pattern)
    }

    /// A file holding exactly `bytes`.
    ///
    /// ```
    /// let f = quell_faultfs::FileSpec::bytes("hello.txt", b"hello\n".to_vec());
    /// assert_eq!(f.size, 6);
    /// ```
    pub fn bytes(name: impl Into<String>, bytes: Vec<u8>) -> FileSpec {
        let size = bytes.len() as u64;
        FileSpec::new(name, size).content(Content::Bytes(bytes))
    }

    /// Set the content.
    ///
    /// ```
    /// let f = quell_faultfs::FileSpec::new("a", 3).content(quell_faultfs::Content::Pattern);
    /// assert_eq!(f.content.byte_at(2), 2);
    /// ```
    pub fn content(mut self, content: Content) -> FileSpec {
        self.content = content;
        self
    }

    /// Append a rule (rules are tried in order; the first overlapping one applies).
    ///
    /// ```
    /// use quell_faultfs::{Behavior, FileSpec, Rule};
    /// let f = FileSpec::new("a", 3).rule(Rule::read(0..1, Behavior::Eio));
    /// assert_eq!(f.rules.len(), 1);
    /// ```
    pub fn rule(mut self, rule: Rule) -> FileSpec {
        self.rules.push(rule);
        self
    }

    /// Use the page cache (`true`) instead of direct I/O (`false`, the default).
    ///
    /// ```
    /// let f = quell_faultfs::FileSpec::new("a", 3).cached(true);
    /// assert!(f.cached);
    /// ```
    pub fn cached(mut self, cached: bool) -> FileSpec {
        self.cached = cached;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        validate_name(&self.name)?;
        if let Content::Bytes(b) = &self.content {
            if b.len() as u64 > self.size {
                return Err(Error::InvalidSpec(format!(
                    "file {:?}: content has {} bytes but size is {}",
                    self.name,
                    b.len(),
                    self.size
                )));
            }
        }
        validate_rules(&self.name, &self.rules)
    }
}

pub(crate) fn validate_rules(name: &str, rules: &[Rule]) -> Result<(), Error> {
    for (i, r) in rules.iter().enumerate() {
        if r.range.start > r.range.end {
            return Err(Error::InvalidSpec(format!(
                "file {name:?} rule {i}: range start {} is after end {}",
                r.range.start, r.range.end
            )));
        }
        if let Behavior::Errno { errno } = r.behavior {
            if !(1..=511).contains(&errno) {
                return Err(Error::InvalidSpec(format!(
                    "file {name:?} rule {i}: errno {errno} is not an errno value in 1..=511"
                )));
            }
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidSpec(format!("file name {name:?}: {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("is reserved");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("contains '/' or NUL");
    }
    if name.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    Ok(())
}

impl Spec {
    /// An empty spec.
    ///
    /// ```
    /// assert!(quell_faultfs::Spec::new().files.is_empty());
    /// ```
    pub fn new() -> Spec {
        Spec::default()
    }

    /// Append a file.
    ///
    /// ```
    /// let s = quell_faultfs::Spec::new().file(quell_faultfs::FileSpec::new("a", 1));
    /// assert_eq!(s.files[0].name, "a");
    /// ```
    pub fn file(mut self, file: FileSpec) -> Spec {
        self.files.push(file);
        self
    }

    /// Check the spec: valid and unique names, ranges with `start <= end`, literal content no
    /// longer than the size, errno values in range.
    ///
    /// ```
    /// use quell_faultfs::{FileSpec, Spec};
    /// let dup = Spec::new().file(FileSpec::new("a", 1)).file(FileSpec::new("a", 2));
    /// assert!(dup.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        let mut seen = HashSet::new();
        for f in &self.files {
            f.validate()?;
            if !seen.insert(f.name.as_str()) {
                return Err(Error::InvalidSpec(format!(
                    "file name {:?} appears twice",
                    f.name
                )));
            }
        }
        Ok(())
    }

    /// Parse and validate a TOML spec.
    ///
    /// ```
    /// use quell_faultfs::{Behavior, Spec};
    ///
    /// let spec = Spec::from_toml_str(r#"
    ///     [[file]]
    ///     name = "slow.bin"
    ///     size = 65536
    ///     content = "pattern"
    ///
    ///     [[file.rule]]
    ///     range = [4096, 8192]
    ///     on = "read"
    ///     behavior = "delay"
    ///     ms = 100
    /// "#).unwrap();
    /// assert_eq!(spec.files[0].rules[0].behavior, Behavior::Delay { ms: 100 });
    /// ```
    pub fn from_toml_str(s: &str) -> Result<Spec, Error> {
        let raw: RawSpec = toml::from_str(s)?;
        raw.into_spec()
    }

    /// Read, parse and validate a TOML spec file.
    ///
    /// ```no_run
    /// let spec = quell_faultfs::Spec::from_toml_file("crates/quell-faultfs/examples/spec.toml")?;
    /// # Ok::<(), quell_faultfs::Error>(())
    /// ```
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Spec, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadSpec {
            path: path.to_owned(),
            source,
        })?;
        Spec::from_toml_str(&text)
    }
}

// ==== the TOML shape ====

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    file: Vec<RawFile>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawContent {
    Zero,
    Pattern,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    size: Option<u64>,
    content: Option<RawContent>,
    text: Option<String>,
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    cached: bool,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawBehavior {
    Normal,
    Hang,
    Delay,
    Eio,
    Short,
    Enospc,
    Errno,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    range: Option<[u64; 2]>,
    start: Option<u64>,
    end: Option<u64>,
    #[serde(default)]
    on: Access,
    behavior: RawBehavior,
    ms: Option<u64>,
    n: Option<u32>,
    errno: Option<i32>,
}

impl RawSpec {
    fn into_spec(self) -> Result<Spec, Error> {
        let mut files = Vec::with_capacity(self.file.len());
        for f in self.file {
            files.push(f.into_file()?);
        }
        let spec = Spec { files };
        spec.validate()?;
        Ok(spec)
    }
}

impl TryFrom<RawSpec> for Spec {
    type Error = Error;
    fn try_from(raw: RawSpec) -> Result<Spec, Error> {
        raw.into_spec()
    }
}

impl RawFile {
    fn into_file(self) -> Result<FileSpec, Error> {
        let name = self.name;
        let bad = |why: String| Err(Error::InvalidSpec(format!("file {name:?}: {why}")));
        let literal = match (self.text, self.bytes) {
            (Some(_), Some(_)) => return bad("give at most one of `text` and `bytes`".into()),
            (Some(t), None) => Some(t.into_bytes()),
            (None, Some(b)) => Some(b),
            (None, None) => None,
        };
        let content = match (self.content, literal) {
            (Some(_), Some(_)) => {
                return bad("`content` cannot be combined with `text` or `bytes`".into())
            }
            (Some(RawContent::Zero) | None, None) => Content::Zero,
            (Some(RawContent::Pattern), None) => Content::Pattern,
            (None, Some(b)) => Content::Bytes(b),
        };
        let size = match (self.size, &content) {
            (Some(s), _) => s,
            (None, Content::Bytes(b)) => b.len() as u64,
            (None, _) => return bad("`size` is required unless `text` or `bytes` is given".into()),
        };
        let mut rules = Vec::with_capacity(self.rule.len());
        for (i, r) in self.rule.into_iter().enumerate() {
            match r.into_rule() {
                Ok(r) => rules.push(r),
                Err(why) => return bad(format!("rule {i}: {why}")),
            }
        }
        Ok(FileSpec {
            name,
            size,
            content,
            rules,
            cached: self.cached,
        })
    }
}

impl RawRule {
    fn into_rule(self) -> Result<Rule, String> {
        let range = match (self.range, self.start, self.end) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err("give either `range` or `start`/`end`, not both".into())
            }
            (Some([start, end]), None, None) => start..end,
            // TOML integers stop at i64::MAX: `end` omitted means "to the end of any file".
            (None, start, end) => start.unwrap_or(0)..end.unwrap_or(u64::MAX),
        };
        let unused = |field: &str, v: bool| {
            if v {
                Err(format!("`{field}` does not apply to this behavior"))
            } else {
                Ok(())
            }
        };
        let behavior = match self.behavior {
            RawBehavior::Delay => {
                unused("n", self.n.is_some())?;
                unused("errno", self.errno.is_some())?;
                Behavior::Delay {
                    ms: self.ms.ok_or("behavior \"delay\" needs `ms`")?,
                }
            }
            RawBehavior::Short => {
                unused("ms", self.ms.is_some())?;
                unused("errno", self.errno.is_some())?;
                Behavior::Short {
                    n: self.n.ok_or("behavior \"short\" needs `n`")?,
                }
            }
            RawBehavior::Errno => {
                unused("ms", self.ms.is_some())?;
                unused("n", self.n.is_some())?;
                Behavior::Errno {
                    errno: self.errno.ok_or("behavior \"errno\" needs `errno`")?,
                }
            }
            other => {
                unused("ms", self.ms.is_some())?;
                unused("n", self.n.is_some())?;
                unused("errno", self.errno.is_some())?;
                match other {
                    RawBehavior::Normal => Behavior::Normal,
                    RawBehavior::Hang => Behavior::Hang,
                    RawBehavior::Eio => Behavior::Eio,
                    _ => Behavior::Enospc,
                }
            }
        };
        Ok(Rule {
            range,
            on: self.on,
            behavior,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_fill_matches_byte() {
        let mut buf = vec![0u8; 1000];
        fill_pattern(12345, &mut buf);
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, pattern_byte(12345 + i as u64));
        }
    }

    #[test]
    fn bytes_fill() {
        let c = Content::Bytes(vec![1, 2, 3]);
        let mut b = [9u8; 4];
        c.fill(1, &mut b);
        assert_eq!(b, [2, 3, 0, 0]);
        c.fill(10, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn toml_errors_are_typed() {
        let cases = [
            "[[file]]\nname = \"a\"\n",             // no size
            "[[file]]\nname = \"a/b\"\nsize = 1\n", // bad name
            "[[file]]\nname = \"a\"\nsize = 1\n[[file]]\nname = \"a\"\nsize = 2\n", // dup
            "[[file]]\nname = \"a\"\nsize = 1\n[[file.rule]]\nbehavior = \"delay\"\n", // no ms
            "[[file]]\nname = \"a\"\nsize = 1\n[[file.rule]]\nbehavior = \"eio\"\nms = 3\n",
            "[[file]]\nname = \"a\"\nsize = 1\n[[file.rule]]\nrange = [5, 1]\nbehavior = \"eio\"\n",
            "[[file]]\nname = \"a\"\nsize = 1\ntext = \"toolong\"\n",
            "[[file]]\nname = \"a\"\nsize = 1\nbogus = 1\n",
            "[[file]]\nname = \"a\"\nsize = -1\n",
            "[[file]]\nname = \"a\"\nsize = 1\n[[file.rule]]\nbehavior = \"explode\"\n",
            "not toml at all [",
        ];
        for c in cases {
            let e = Spec::from_toml_str(c);
            assert!(e.is_err(), "accepted: {c}");
        }
    }

    #[test]
    fn toml_full() {
        let s = Spec::from_toml_str(
            r#"
            [[file]]
            name = "t"
            text = "hi"
            cached = true
            [[file.rule]]
            behavior = "short"
            n = 1
            on = "write"
            [[file.rule]]
            end = 1
            behavior = "errno"
            errno = 11
            "#,
        )
        .unwrap();
        let f = &s.files[0];
        assert_eq!(f.size, 2);
        assert!(f.cached);
        assert_eq!(f.content, Content::Bytes(b"hi".to_vec()));
        assert_eq!(
            f.rules[0],
            Rule::write(0..u64::MAX, Behavior::Short { n: 1 })
        );
        assert_eq!(f.rules[1], Rule::both(0..1, Behavior::Errno { errno: 11 }));
    }
}
