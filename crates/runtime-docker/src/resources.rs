//! Task container resources: the operator's `backend.docker.cpus`,
//! `memory`, `memory_swap` and `pids_limit` (the Docker CLI's `--cpus`,
//! `--memory`, `--memory-swap`, `--pids-limit`, with the CLI's units) as
//! every task's defaults, and an assignment's `instance_shape` honoured up
//! to them as maxima. Pure: parsing and the shape rule are unit-tested here.

use super::InvalidSetting;
use oz_runtime::ResourceLimits;

/// The smallest memory limit dockerd accepts (`linuxMinMemory`, 6 MiB).
pub const MIN_MEMORY: i64 = 6 << 20;
/// The smallest CPU limit dockerd accepts: 0.01 CPU.
pub const MIN_NANO_CPUS: i64 = 10_000_000;
const NANOS_PER_CPU: i64 = 1_000_000_000;

/// The operator's limits, resolved. `None` = not set (the daemon's default:
/// unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `HostConfig.NanoCpus`: CPUs × 10⁹ (`cpus: 1.5` → 1 500 000 000).
    pub nano_cpus: Option<i64>,
    /// `HostConfig.Memory` in bytes.
    pub memory: Option<i64>,
    /// `HostConfig.MemorySwap` in bytes (memory plus swap), `-1` = unlimited swap.
    pub memory_swap: Option<i64>,
    /// `HostConfig.PidsLimit`, `-1` = unlimited.
    pub pids_limit: Option<i64>,
}

/// What one task container gets: the operator's limits with the
/// assignment's shape applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskResources {
    /// `HostConfig.NanoCpus` (CPUs × 10⁹); `None` = unlimited.
    pub nano_cpus: Option<i64>,
    /// `HostConfig.Memory` in bytes; `None` = unlimited.
    pub memory: Option<i64>,
    /// `HostConfig.MemorySwap` in bytes, `-1` = unlimited; `None` = the
    /// daemon's default (twice `memory`).
    pub memory_swap: Option<i64>,
    /// `HostConfig.PidsLimit`, `-1` = unlimited; `None` = the daemon's default.
    pub pids_limit: Option<i64>,
}

/// An `instance_shape` above the operator's maximum: the task is refused
/// before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeRefused {
    /// `instance_shape.vcpus` above `backend.docker.cpus`.
    Cpus { asked: u32, max_nano_cpus: i64 },
    /// `instance_shape.memory_gb` (in bytes) above `backend.docker.memory`.
    Memory { asked_bytes: i64, max_bytes: i64 },
}

impl std::fmt::Display for ShapeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShapeRefused::Cpus {
                asked,
                max_nano_cpus,
            } => write!(
                f,
                "the run asks for instance_shape.vcpus {asked} but this worker allows at most {} CPUs \
                 (backend.docker.cpus); ask for at most that many, or raise backend.docker.cpus",
                format_cpus(*max_nano_cpus)
            ),
            ShapeRefused::Memory {
                asked_bytes,
                max_bytes,
            } => write!(
                f,
                "the run asks for instance_shape.memory_gb {} ({}) but this worker allows at most {} \
                 (backend.docker.memory); ask for less, or raise backend.docker.memory",
                asked_bytes >> 30,
                format_bytes(*asked_bytes),
                format_bytes(*max_bytes)
            ),
        }
    }
}

impl std::error::Error for ShapeRefused {}

impl Limits {
    /// The task's resources. A shape's value replaces the default, and must
    /// not exceed it; a shape's memory also pins swap to that memory (no
    /// swap), as the container contract says (docs/PROTOCOL.md, step 5).
    pub fn for_task(&self, shape: ResourceLimits) -> Result<TaskResources, ShapeRefused> {
        let mut r = TaskResources {
            nano_cpus: self.nano_cpus,
            memory: self.memory,
            memory_swap: self.memory_swap,
            pids_limit: self.pids_limit,
        };
        if let Some(vcpus) = shape.cpus {
            let asked = i64::from(vcpus).saturating_mul(NANOS_PER_CPU);
            if let Some(max) = self.nano_cpus.filter(|max| asked > *max) {
                return Err(ShapeRefused::Cpus {
                    asked: vcpus,
                    max_nano_cpus: max,
                });
            }
            r.nano_cpus = Some(asked);
        }
        if let Some(asked) = shape.memory_bytes {
            if let Some(max) = self.memory.filter(|max| asked > *max) {
                return Err(ShapeRefused::Memory {
                    asked_bytes: asked,
                    max_bytes: max,
                });
            }
            r.memory = Some(asked);
            r.memory_swap = Some(asked);
        }
        Ok(r)
    }
}

/// The keys as written in the file (numbers already turned into text).
#[derive(Debug, Clone, Default)]
pub struct LimitInputs<'a> {
    pub cpus: Option<&'a str>,
    pub memory: Option<&'a str>,
    pub memory_swap: Option<&'a str>,
    pub pids_limit: Option<i64>,
}

impl<'a> LimitInputs<'a> {
    /// Parses and cross-checks the keys as dockerd would refuse them at
    /// create time, so a bad value stops the worker at start-up instead of
    /// failing every task.
    pub fn resolve(&self) -> Result<Limits, InvalidSetting> {
        let nano_cpus = self
            .cpus
            .map(|c| parse_cpus(c, "backend.docker.cpus"))
            .transpose()?;
        let memory = self
            .memory
            .map(|m| {
                let bytes = parse_bytes(m, "backend.docker.memory")?;
                if bytes < MIN_MEMORY {
                    return Err(InvalidSetting::new(
                        "backend.docker.memory",
                        format!("{m:?} is below the Docker daemon's minimum of 6m (6 MiB)"),
                    ));
                }
                Ok(bytes)
            })
            .transpose()?;
        let swap_key = "backend.docker.memory_swap";
        let memory_swap = self
            .memory_swap
            .map(|s| {
                if s.trim() == "-1" {
                    return Ok(-1);
                }
                let swap = parse_bytes(s, swap_key).map_err(|mut e| {
                    e.problem.push_str(", or -1 for unlimited swap");
                    e
                })?;
                match memory {
                    None => Err(InvalidSetting::new(
                        swap_key,
                        format!("{s:?} needs backend.docker.memory too (memory_swap is memory plus swap; as docker run --memory-swap)"),
                    )),
                    Some(m) if swap < m => Err(InvalidSetting::new(
                        swap_key,
                        format!(
                            "{s:?} ({}) is below backend.docker.memory ({}); memory_swap is memory plus swap, so it must be at least memory (or -1 for unlimited swap)",
                            format_bytes(swap),
                            format_bytes(m)
                        ),
                    )),
                    Some(_) => Ok(swap),
                }
            })
            .transpose()?;
        let pids_limit = match self.pids_limit {
            None => None,
            Some(n) if n == -1 || n > 0 => Some(n),
            Some(n) => {
                return Err(InvalidSetting::new(
                    "backend.docker.pids_limit",
                    format!(
                        "{n} is not a process limit; use a positive number, or -1 for unlimited"
                    ),
                ))
            }
        };
        Ok(Limits {
            nano_cpus,
            memory,
            memory_swap,
            pids_limit,
        })
    }
}

/// `--cpus` as the Docker CLI reads it (`opts.ParseCPUs`): a decimal number
/// of CPUs, at most 9 decimals (nanoCPUs are whole), at least 0.01.
/// Errors name `key`.
pub fn parse_cpus(text: &str, key: &str) -> Result<i64, InvalidSetting> {
    let t = text.trim();
    let bad = |problem: String| InvalidSetting::new(key, problem);
    let usage = || {
        bad(format!(
            "{text:?} is not a number of CPUs; write a decimal such as 1.5"
        ))
    };
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(usage());
    }
    if frac.len() > 9 {
        return Err(bad(format!(
            "{text:?} is too precise; CPUs are counted in billionths (at most 9 decimals)"
        )));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| usage())?
    };
    let frac_nanos: i64 = format!("{frac:0<9}").parse().map_err(|_| usage())?;
    let nanos = whole
        .checked_mul(NANOS_PER_CPU)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(usage)?;
    if nanos < MIN_NANO_CPUS {
        return Err(bad(format!(
            "{text:?} is below the Docker daemon's minimum of 0.01 CPUs"
        )));
    }
    Ok(nanos)
}

/// A size as the Docker CLI reads `--memory` (go-units `RAMInBytes`): a
/// number, optionally with a decimal part, then an optional unit `b`, `k`,
/// `m`, `g`, `t` or `p` (any case, powers of 1024, `kb`/`kib` alike).
/// Errors name `key`.
pub fn parse_bytes(text: &str, key: &str) -> Result<i64, InvalidSetting> {
    let usage = || {
        InvalidSetting::new(
            key,
            format!("{text:?} is not a size; write a number with an optional unit b, k, m or g (e.g. 512m, 2g)"),
        )
    };
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(usage());
    }
    let unit = unit.trim_start_matches(' ').to_ascii_lowercase();
    let unit = unit
        .strip_suffix('b')
        .unwrap_or(&unit)
        .trim_end_matches('i')
        .to_string();
    let shift = match unit.as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(usage()),
    };
    // An `i` alone (`5i`) is not a unit.
    if unit.is_empty() && t.to_ascii_lowercase().ends_with('i') {
        return Err(usage());
    }
    let value: f64 = number.parse().map_err(|_| usage())?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(InvalidSetting::new(key, format!("{text:?} is too large")));
    }
    Ok(bytes as i64)
}

/// `1.5`, `2`, `0.25` from nanoCPUs.
pub fn format_cpus(nano: i64) -> String {
    let whole = nano / NANOS_PER_CPU;
    let frac = nano % NANOS_PER_CPU;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Bytes in the largest binary unit that divides them: `64 MiB`, `2 GiB`,
/// `1536 KiB`, `100 B`.
pub fn format_bytes(bytes: i64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes % (1i64 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_as_the_docker_cli_reads_them() {
        for (text, nanos) in [
            ("1.5", 1_500_000_000),
            ("2", 2_000_000_000),
            ("0.01", 10_000_000),
            (".5", 500_000_000),
            ("1.000000001", 1_000_000_001),
        ] {
            assert_eq!(parse_cpus(text, "k"), Ok(nanos), "{text}");
        }
        for (text, why) in [
            ("", "not a number"),
            ("one", "not a number"),
            ("-1", "not a number"),
            ("1,5", "not a number"),
            ("0.001", "minimum of 0.01"),
            ("0", "minimum"),
            ("1.0000000001", "too precise"),
        ] {
            let e = parse_cpus(text, "backend.docker.cpus").unwrap_err();
            assert_eq!(e.key, "backend.docker.cpus");
            assert!(e.problem.contains(why), "{text}: {e}");
        }
        assert_eq!(format_cpus(1_500_000_000), "1.5");
        assert_eq!(format_cpus(3_000_000_000), "3");
    }

    #[test]
    fn sizes_as_go_units_ram_in_bytes() {
        for (text, bytes) in [
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("2g", 2 << 30),
            ("2gb", 2 << 30),
            ("2GiB", 2 << 30),
            ("64 m", 64 << 20),
            ("1.5g", 3 << 29),
            ("100", 100),
            ("100b", 100),
            ("4k", 4096),
        ] {
            assert_eq!(parse_bytes(text, "k"), Ok(bytes), "{text}");
        }
        for text in [
            "",
            "m",
            "5x",
            "5i",
            "1.2.3g",
            "-5m",
            ".5g",
            "5.g",
            "5 mb extra",
        ] {
            assert!(parse_bytes(text, "k").is_err(), "{text}");
        }
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(3 << 29), "1536 MiB");
        assert_eq!(format_bytes(100), "100 B");
    }

    fn inputs<'a>(
        cpus: Option<&'a str>,
        memory: Option<&'a str>,
        swap: Option<&'a str>,
    ) -> LimitInputs<'a> {
        LimitInputs {
            cpus,
            memory,
            memory_swap: swap,
            pids_limit: None,
        }
    }

    #[test]
    fn cross_checks_name_the_key() {
        let cases: &[(LimitInputs, &str, &str)] = &[
            (
                inputs(None, Some("4m"), None),
                "backend.docker.memory",
                "minimum of 6m",
            ),
            (
                inputs(None, None, Some("1g")),
                "backend.docker.memory_swap",
                "needs backend.docker.memory",
            ),
            (
                inputs(None, Some("1g"), Some("512m")),
                "backend.docker.memory_swap",
                "below backend.docker.memory (1 GiB)",
            ),
            (
                inputs(None, None, Some("lots")),
                "backend.docker.memory_swap",
                "-1 for unlimited",
            ),
            (
                inputs(Some("two"), None, None),
                "backend.docker.cpus",
                "not a number of CPUs",
            ),
            (
                LimitInputs {
                    pids_limit: Some(0),
                    ..Default::default()
                },
                "backend.docker.pids_limit",
                "-1 for unlimited",
            ),
        ];
        for (i, key, why) in cases {
            let e = i.resolve().unwrap_err();
            assert_eq!(e.key, *key, "{i:?}");
            let text = e.to_string();
            assert!(text.starts_with(key) && text.contains(why), "{text}");
        }
        let ok = LimitInputs {
            cpus: Some("1.5"),
            memory: Some("1g"),
            memory_swap: Some("-1"),
            pids_limit: Some(-1),
        }
        .resolve()
        .unwrap();
        assert_eq!(
            ok,
            Limits {
                nano_cpus: Some(1_500_000_000),
                memory: Some(1 << 30),
                memory_swap: Some(-1),
                pids_limit: Some(-1),
            }
        );
    }

    #[test]
    fn a_shape_is_honoured_up_to_the_maxima() {
        let max = Limits {
            nano_cpus: Some(2_000_000_000),
            memory: Some(4 << 30),
            memory_swap: Some(8 << 30),
            pids_limit: Some(256),
        };
        // No shape: the defaults as they are.
        let r = max.for_task(ResourceLimits::default()).unwrap();
        assert_eq!(
            (r.nano_cpus, r.memory, r.memory_swap, r.pids_limit),
            (Some(2_000_000_000), Some(4 << 30), Some(8 << 30), Some(256))
        );
        // Within: the shape's values, swap pinned to its memory.
        let r = max
            .for_task(ResourceLimits {
                cpus: Some(1),
                memory_bytes: Some(2 << 30),
            })
            .unwrap();
        assert_eq!(
            (r.nano_cpus, r.memory, r.memory_swap, r.pids_limit),
            (Some(1_000_000_000), Some(2 << 30), Some(2 << 30), Some(256))
        );
        // Above: refused, naming both values and the key.
        let e = max
            .for_task(ResourceLimits {
                cpus: Some(3),
                memory_bytes: None,
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("instance_shape.vcpus 3")
                && e.contains("at most 2 CPUs")
                && e.contains("backend.docker.cpus"),
            "{e}"
        );
        let e = max
            .for_task(ResourceLimits {
                cpus: None,
                memory_bytes: Some(8 << 30),
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("instance_shape.memory_gb 8 (8 GiB)")
                && e.contains("at most 4 GiB")
                && e.contains("backend.docker.memory"),
            "{e}"
        );
        // Without a maximum any shape goes.
        let r = Limits::default()
            .for_task(ResourceLimits {
                cpus: Some(64),
                memory_bytes: Some(1 << 40),
            })
            .unwrap();
        assert_eq!(r.memory, Some(1 << 40));
    }
}
