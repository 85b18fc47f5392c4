//! Parsers for command-line values: byte sizes and durations.

/// Parses a byte count: a plain number, or a number with a suffix `K`, `KiB`, `M`,
/// `MiB`, `G`, `GiB`, `T`, `TiB` (all powers of 1024; `KB`, `MB`, `GB` too, also as
/// powers of 1024, as fio reads them). Case-insensitive.
///
/// Used as a clap value parser, so the error is a message for the user.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("`{s}` is not a size (examples: 4096, 64MiB, 1GiB)"));
    }
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size suffix `{other}` in `{s}` (use K, KiB, M, MiB, G, GiB)"
            ))
        }
    };
    let bytes = if num.contains('.') {
        let v: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (examples: 4096, 64MiB, 1GiB)"))?;
        let b = v * mult as f64;
        if !b.is_finite() || b >= u64::MAX as f64 {
            return Err(format!("size `{s}` is too large"));
        }
        b as u64
    } else {
        let v: u64 = num
            .parse()
            .map_err(|_| format!("size `{s}` is too large"))?;
        v.checked_mul(mult)
            .ok_or_else(|| format!("size `{s}` is too large"))?
    };
    Ok(bytes)
}

/// Parses a duration in seconds (a positive decimal number, at most one hour).
///
/// Used as a clap value parser, so the error is a message for the user.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds (example: 0.5)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("seconds must be a positive number, got `{s}`"));
    }
    if v > 3600.0 {
        return Err(format!("seconds must be at most 3600, got `{s}`"));
    }
    Ok(v)
}

/// Parses a duration: a positive decimal number of seconds, optionally suffixed `s`, or
/// of milliseconds with `ms`, or minutes with `m` (`1s`, `0.5`, `250ms`, `2m`); at most
/// one day.
///
/// Used as a clap value parser, so the error is a message for the user.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 1s, 250ms, 2m)"))?;
    let secs = v * mult;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("a duration must be positive, got `{s}`"));
    }
    if secs > 86_400.0 {
        return Err(format!("a duration must be at most one day, got `{s}`"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Formats a byte count with a binary suffix when it is an exact multiple.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (m, name) in UNITS {
        if bytes >= m && bytes % m == 0 {
            return format!("{}{}", bytes / m, name);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0.2"), Ok(0.2));
        assert_eq!(parse_seconds("3s"), Ok(3.0));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("abc").is_err());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("2d").is_err());
    }
}
