//! Resource-limit values in the Docker CLI's units (`--cpus`, `--memory`,
//! `--memory-swap`, `--pids-limit`), shared by every runtime's config
//! section that accepts them. A leaf module: parsing only, no I/O.

/// Why a limit could not be read; `Display` says what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// Not a number with an optional unit.
    Malformed {
        value: String,
        expected: &'static str,
    },
    /// A number out of range (zero, negative where not allowed, too large).
    OutOfRange {
        value: String,
        expected: &'static str,
    },
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitError::Malformed { value, expected } => {
                write!(f, "{value:?} is not {expected}")
            }
            LimitError::OutOfRange { value, expected } => {
                write!(f, "{value:?} is out of range: expected {expected}")
            }
        }
    }
}

impl std::error::Error for LimitError {}

const MEMORY: &str = "a size in bytes with an optional unit b, k, m, g, t or p (binary multiples, as Docker's --memory: \"512m\", \"2g\")";

/// A byte size as Docker's `--memory` reads it (go-units `RAMInBytes`): a
/// decimal number, an optional space, an optional unit `b k m g t p`
/// (case-insensitive, powers of 1024) optionally followed by `i` and/or `b`
/// ("1.5g", "512MiB", "1024"). Errors for an empty, negative or zero value.
pub fn parse_memory_bytes(value: &str) -> Result<u64, LimitError> {
    let bad = || LimitError::Malformed {
        value: value.to_string(),
        expected: MEMORY,
    };
    let s = value.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut chars = unit.chars();
    let shift = match chars.next() {
        None => 0,
        Some('b') if unit.len() == 1 => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => return Err(bad()),
    };
    let rest: String = chars.collect();
    if shift != 0 && !matches!(rest.as_str(), "" | "b" | "i" | "ib") {
        return Err(bad());
    }
    let bytes = number * (1u64 << shift) as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(LimitError::OutOfRange {
            value: value.to_string(),
            expected: "at least 1 byte",
        });
    }
    Ok(bytes as u64)
}

/// `--memory-swap`: memory plus swap in [`parse_memory_bytes`] units, or
/// `-1` for unlimited swap (`None`).
pub fn parse_memory_swap(value: &str) -> Result<Option<u64>, LimitError> {
    if value.trim() == "-1" {
        return Ok(None);
    }
    parse_memory_bytes(value).map(Some)
}

/// `--cpus`: a positive decimal number of CPUs ("1.5"), returned in
/// millionths of a CPU as Docker's `NanoCPUs`/1000 is, so 0.000001 is the
/// finest step.
pub fn parse_cpus(value: &str) -> Result<u64, LimitError> {
    const EXPECTED: &str = "a positive number of CPUs, as Docker's --cpus (\"1.5\")";
    let n: f64 = value.trim().parse().map_err(|_| LimitError::Malformed {
        value: value.to_string(),
        expected: EXPECTED,
    })?;
    let micros = (n * 1e6).round();
    if !n.is_finite() || !(1.0..=1e12).contains(&micros) {
        return Err(LimitError::OutOfRange {
            value: value.to_string(),
            expected: EXPECTED,
        });
    }
    Ok(micros as u64)
}

/// `--pids-limit`: the most processes (and threads) at once; `-1` or `0`
/// mean unlimited (`None`), as in Docker.
pub fn parse_pids_limit(value: i64) -> Result<Option<u64>, LimitError> {
    match value {
        -1 | 0 => Ok(None),
        n if n > 0 => Ok(Some(n as u64)),
        n => Err(LimitError::OutOfRange {
            value: n.to_string(),
            expected: "a positive number of processes, or -1 for unlimited",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_as_docker_reads_it() {
        for (s, want) in [
            ("1024", 1024),
            ("1b", 1),
            ("1k", 1024),
            ("512m", 512 << 20),
            ("512MiB", 512 << 20),
            ("512mb", 512 << 20),
            ("2g", 2 << 30),
            ("1.5g", 3 << 29),
            ("64 m", 64 << 20),
            ("1T", 1 << 40),
        ] {
            assert_eq!(parse_memory_bytes(s), Ok(want), "{s}");
        }
        for s in ["", "m", "-1", "0", "1x", "1.2.3", "1mm", ".5m", "1gbb"] {
            assert!(parse_memory_bytes(s).is_err(), "{s}");
        }
        assert_eq!(parse_memory_swap("-1"), Ok(None));
        assert_eq!(parse_memory_swap("1g"), Ok(Some(1 << 30)));
    }

    #[test]
    fn cpus_and_pids() {
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000));
        assert_eq!(parse_cpus("0.01"), Ok(10_000));
        for s in ["0", "-1", "abc", "NaN", "inf", ""] {
            assert!(parse_cpus(s).is_err(), "{s}");
        }
        assert_eq!(parse_pids_limit(-1), Ok(None));
        assert_eq!(parse_pids_limit(0), Ok(None));
        assert_eq!(parse_pids_limit(100), Ok(Some(100)));
        assert!(parse_pids_limit(-2).is_err());
    }
}
