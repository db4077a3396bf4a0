//! `cargo xtask bench [--quick] [--only NAME,NAME…]`: builds every benchmark
//! once, runs them in order, and rewrites `BENCHMARKS.md` from what they
//! report (each bench writes a JSON report to the path in
//! `OZ_BENCH_REPORT`), with the machine they ran on: CPU, memory, kernel,
//! daemon versions, date, and the load average before and after. `--quick`
//! sets `OZ_BENCH_QUICK=1`: small counts, a smoke run. `--only` builds and
//! runs the named benches alone (a full run takes the better part of an
//! hour); every other bench's summary rows and section are kept from the
//! previous `BENCHMARKS.md`, marked as such.
//!
//! The bench executables are run directly (not through `cargo bench`), so
//! their own exit status tells a missing environment (2) from a failure.

use crate::codegen::project_root;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// In the order they run, with what each measures for the summary when it
/// could not report.
const BENCHES: [(&str, &str); 9] = [
    ("lifecycle", "Docker client vs. raw HTTP"),
    ("worker_overhead", "Per-task overhead"),
    ("throughput", "Throughput at concurrency 8"),
    ("claim_latency", "Claim latency"),
    ("cold_start", "Cold start with a large sidecar (Docker 28)"),
    ("worker_rss", "Worker memory"),
    ("reconnect", "Reconnect after the control plane restarts"),
    ("soak", "Soak"),
    ("control_plane", "Control plane under load"),
];

/// A bench's exit status when its environment is missing (crates/test-support/src/bench/setup.rs).
const EXIT_MISSING: i32 = 2;

/// Why the arguments of `cargo xtask bench` were refused.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("--only needs a comma-separated list of benches")]
    OnlyWithoutList,
    /// `all`: the bench names, comma-separated.
    #[error("--only: no bench named {name:?} (the benches: {all})")]
    NoSuchBench { name: String, all: String },
    #[error("--only needs at least one bench name")]
    OnlyWithoutName,
    #[error("cargo xtask bench: unknown argument {0:?}")]
    UnknownArgument(String),
}

/// Why `cargo xtask bench` failed as a whole (one bench's failure is a
/// [`BenchFailure`], gathered into [`BenchError::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot run cargo: {0}")]
    RunCargo(#[source] std::io::Error),
    /// Reading cargo's output or waiting for it.
    #[error("{0}")]
    Cargo(#[source] std::io::Error),
    #[error("building the benchmarks failed (see above)")]
    BuildFailed,
    #[error("cargo built no bench named {0}")]
    NotBuilt(&'static str),
    #[error("cannot run {}: {source}", exe.display())]
    RunBench {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Creating the reports folder or writing BENCHMARKS.md.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `name: why` of each bench that did not pass.
    #[error("some benchmarks did not pass:\n  {}", .0.join("\n  "))]
    Failed(Vec<String>),
}

/// Why one bench did not pass; said after "This benchmark".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BenchFailure {
    #[error("was not run: its environment is missing (see the console)")]
    EnvironmentMissing,
    #[error("failed with exit status {0} (see the console)")]
    Failed(i32),
    /// The exit status as the platform says it (a signal).
    #[error("killed ({0})")]
    Killed(String),
}

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    /// `--quick`: small counts, a smoke run.
    pub quick: bool,
    /// `--only a,b`: the benches to run (names from [`BENCHES`]); `None`: all.
    pub only: Option<Vec<&'static str>>,
}

impl Options {
    /// The arguments after `bench`; an unknown flag or bench name is an error
    /// that lists the names.
    pub fn parse(args: &[&str]) -> Result<Options, OptionsError> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match *arg {
                "--quick" => options.quick = true,
                "--only" => {
                    let list = args.next().ok_or(OptionsError::OnlyWithoutList)?;
                    let mut names = Vec::new();
                    for name in list.split(',').filter(|n| !n.is_empty()) {
                        let known = BENCHES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                            let all: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
                            OptionsError::NoSuchBench {
                                name: name.to_string(),
                                all: all.join(", "),
                            }
                        })?;
                        names.push(known.0);
                    }
                    if names.is_empty() {
                        return Err(OptionsError::OnlyWithoutName);
                    }
                    options.only = Some(names);
                }
                other => return Err(OptionsError::UnknownArgument(other.to_string())),
            }
        }
        Ok(options)
    }

    fn runs(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&name))
    }
}

struct Outcome {
    name: &'static str,
    title: &'static str,
    report: Option<Value>,
    status: Result<(), BenchFailure>,
    /// Not run this time (`--only`): the previous document's figures.
    kept: Option<Kept>,
}

/// A bench's summary rows and section body from an earlier `BENCHMARKS.md`.
#[derive(Debug, Default, PartialEq)]
struct Kept {
    /// The section's heading without `## ` and the bench's file name.
    title: Option<String>,
    summary: Vec<String>,
    section: String,
}

/// The line that marks a section kept from an earlier run.
const KEPT_NOTE: &str = "*Not run by the last `cargo xtask bench --only`: these figures are \
                         from an earlier run (see its commit in the git history of this file).*";

pub fn run(options: Options) -> Result<(), BenchError> {
    let quick = options.quick;
    let root = project_root();
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let executables = build(&root, &options)?;
    let reports = root.join("target").join("bench-reports");
    std::fs::create_dir_all(&reports).map_err(|source| BenchError::File {
        path: reports.clone(),
        source,
    })?;
    let load_before = load_average();
    let started = utc_now();
    let mut outcomes = Vec::new();
    for (name, title) in BENCHES {
        if !options.runs(name) {
            outcomes.push(Outcome {
                name,
                title,
                report: None,
                status: Ok(()),
                kept: Some(kept(&old, name)),
            });
            continue;
        }
        let exe = executables.get(name).ok_or(BenchError::NotBuilt(name))?;
        let report_path = reports.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&report_path);
        eprintln!("\n=== cargo xtask bench: {name} ===");
        let status = Command::new(exe)
            .arg("--bench")
            .current_dir(&root)
            .env("OZ_BENCH_REPORT", &report_path)
            .env("OZ_BENCH_QUICK", if quick { "1" } else { "0" })
            .status()
            .map_err(|source| BenchError::RunBench {
                exe: exe.clone(),
                source,
            })?;
        let status = match status.code() {
            Some(0) => Ok(()),
            Some(EXIT_MISSING) => Err(BenchFailure::EnvironmentMissing),
            Some(c) => Err(BenchFailure::Failed(c)),
            None => Err(BenchFailure::Killed(status.to_string())),
        };
        let report = std::fs::read(&report_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        outcomes.push(Outcome {
            name,
            title,
            report,
            status,
            kept: None,
        });
    }
    let load_after = load_average();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let doc = render(
        &outcomes,
        &machine(),
        quick,
        cpus,
        &started,
        (&load_before, &load_after),
    );
    let doc = doc + hand_written(&old);
    std::fs::write(&path, doc).map_err(|source| BenchError::File {
        path: path.clone(),
        source,
    })?;
    eprintln!("\nwrote {}", path.display());
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.status.as_ref().err().map(|e| format!("{}: {e}", o.name)))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Failed(failed))
    }
}

/// Cargo, without what `cargo run` set for this xtask process: ring's
/// build script reruns when `CARGO_MANIFEST_DIR` changes, and with it
/// every crate above it, so an inherited value would rebuild the whole
/// bench profile here and again on the next plain `cargo bench`.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd
}

/// `cargo bench --no-run` for every bench (or those `--only` names); their
/// executables by name.
fn build(root: &Path, options: &Options) -> Result<BTreeMap<String, PathBuf>, BenchError> {
    let mut cmd = cargo();
    cmd.current_dir(root).args([
        "bench",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    match &options.only {
        None => {
            cmd.arg("--benches");
        }
        Some(names) => {
            for name in names {
                cmd.args(["--bench", name]);
            }
        }
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(BenchError::RunCargo)?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .map_err(BenchError::Cargo)?;
    if !child.wait().map_err(BenchError::Cargo)?.success() {
        return Err(BenchError::BuildFailed);
    }
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_bench = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bench"));
        if v["reason"] == "compiler-artifact" && is_bench {
            if let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
            {
                found.insert(name.to_string(), PathBuf::from(exe));
            }
        }
    }
    Ok(found)
}

/// The line after which BENCHMARKS.md is written by hand (one-off
/// measurements such as build times); `cargo xtask bench` keeps it and
/// what follows.
const HAND_WRITTEN: &str = "<!-- Written by hand below this line; cargo xtask bench keeps it. -->";

/// The hand-written tail of `old`, from [`HAND_WRITTEN`] on; empty without it.
fn hand_written(old: &str) -> &str {
    old.find(HAND_WRITTEN).map_or("", |at| &old[at..])
}

/// Bench `name`'s summary rows and section body (without its heading and
/// any earlier [`KEPT_NOTE`]) in the generated part of `old`; empty when
/// `old` has none.
fn kept(old: &str, name: &str) -> Kept {
    let generated = old.find(HAND_WRITTEN).map_or(old, |at| &old[..at]);
    let row = format!("| `{name}` |");
    let heading = format!("(`benches/{name}.rs`)");
    let summary = generated
        .lines()
        .filter(|l| l.starts_with(&row))
        .map(str::to_owned)
        .collect();
    let mut title = None;
    let mut section = String::new();
    let mut inside = false;
    for line in generated.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            inside = h.ends_with(&heading);
            if inside {
                title = Some(h.trim_end_matches(&heading).trim_end().to_owned());
            }
            continue;
        }
        if inside && line != KEPT_NOTE {
            section.push_str(line);
            section.push('\n');
        }
    }
    Kept {
        title,
        summary,
        section: section.trim().to_owned(),
    }
}

fn render(
    outcomes: &[Outcome],
    machine: &[(String, String)],
    quick: bool,
    cpus: usize,
    started: &str,
    (load_before, load_after): (&str, &str),
) -> String {
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Generated by `cargo xtask bench` (do not edit by hand; run it again). Every figure is \
         measured against a baseline in the same run, with worker and baseline iterations \
         interleaved so that the machine's load affects both alike; each section says what \
         is compared. The benches are in `benches/`; each can also run alone with \
         `cargo bench --bench NAME`. They need the test environment (`scripts/test-env.sh up`).\n\n",
    );
    if quick {
        md.push_str(
            "**Quick run (`--quick`): small counts, for a smoke test only; the figures are not \
             representative.**\n\n",
        );
    }
    let busiest = [load_before, load_after]
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    if busiest > 0.5 * cpus as f64 {
        let _ = write!(
            md,
            "**The machine was busy while these ran** (1-minute load average {busiest:.2} on \
             {cpus} CPUs; see below): other jobs shared the CPUs, the disk and the Docker \
             daemons, so the figures are noisy. Re-run `cargo xtask bench` on a quiet machine \
             before drawing conclusions.\n\n"
        );
    }
    md.push_str("## Machine\n\n| | |\n| --- | --- |\n");
    for (k, v) in machine {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md, "| started (UTC) | {started} |");
    let _ = writeln!(md, "| load average (1, 5, 15 min) before | {load_before} |");
    let _ = writeln!(md, "| load average (1, 5, 15 min) after | {load_after} |");
    let _ = writeln!(
        md,
        "| mode | {} |",
        if quick { "quick (`--quick`)" } else { "full" }
    );
    if outcomes.iter().any(|o| o.kept.is_some()) {
        let run: Vec<String> = outcomes
            .iter()
            .filter(|o| o.kept.is_none())
            .map(|o| format!("`{}`", o.name))
            .collect();
        let _ = writeln!(
            md,
            "| benches run | {} (`--only`; the others' figures are kept from an earlier run) |",
            run.join(", ")
        );
    }
    md.push('\n');

    md.push_str("## Summary\n\n| benchmark | figure | value | goal | met |\n| --- | --- | --- | --- | --- |\n");
    for o in outcomes {
        if let Some(kept) = &o.kept {
            for row in &kept.summary {
                let _ = writeln!(md, "{row}");
            }
            if kept.summary.is_empty() {
                let _ = writeln!(
                    md,
                    "| `{}` | {} | — | — | not run (`--only`) |",
                    o.name, o.title
                );
            }
            continue;
        }
        let rows = o
            .report
            .as_ref()
            .and_then(|r| r["summary"].as_array().cloned())
            .unwrap_or_default();
        if rows.is_empty() {
            let why = o
                .status
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_else(|| "no figures".into());
            let _ = writeln!(md, "| `{}` | {} | — | — | {why} |", o.name, o.title);
        }
        for row in rows {
            let met = match row["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {met} |",
                o.name,
                row["figure"].as_str().unwrap_or(""),
                row["value"].as_str().unwrap_or(""),
                row["goal"].as_str().unwrap_or(""),
            );
        }
    }
    md.push('\n');

    for o in outcomes {
        let title = o
            .report
            .as_ref()
            .and_then(|r| r["title"].as_str().map(str::to_string))
            .unwrap_or_else(|| o.title.to_string());
        if let Some(kept) = &o.kept {
            let title = kept.title.as_deref().unwrap_or(o.title);
            let _ = writeln!(md, "## {title} (`benches/{}.rs`)\n", o.name);
            let _ = writeln!(md, "{KEPT_NOTE}\n");
            if !kept.section.is_empty() {
                md.push_str(&kept.section);
                md.push_str("\n\n");
            }
            continue;
        }
        let _ = writeln!(md, "## {title} (`benches/{}.rs`)\n", o.name);
        if let Err(e) = &o.status {
            let _ = writeln!(md, "**This benchmark {e}.**\n");
        }
        if let Some(text) = o.report.as_ref().and_then(|r| r["markdown"].as_str()) {
            md.push_str(text.trim_end());
            md.push_str("\n\n");
        }
    }
    format!("{}\n", md.trim_end())
}

/// What the figures came from, as (what, value) rows.
fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".into(), |s| s.trim().to_string());
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("unknown".into(), |s| s.trim_matches('"').to_string());
    let mut rows = vec![
        ("CPU".to_string(), format!("{model} × {cpus}")),
        (
            "memory".to_string(),
            format!("{:.1} GiB", mem_kib as f64 / 1048576.0),
        ),
        ("kernel".to_string(), kernel),
        ("OS".to_string(), os),
    ];
    for (label, var, default) in [
        (
            "Docker (test daemon)",
            "OZ_TEST_DOCKER_HOST",
            "unix:///var/run/docker.sock",
        ),
        (
            "Docker 28 (matrix daemon)",
            "OZ_TEST_DOCKER28_HOST",
            "unix:///var/lib/oz-worker-test/daemons/docker28/docker.sock",
        ),
    ] {
        let host = std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string());
        rows.push((label.to_string(), daemon_version(&host)));
    }
    rows.push(("rustc".into(), command_line("rustc", &["-V"])));
    let commit = command_line("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !command_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    rows.push((
        "commit".into(),
        if dirty {
            format!("{commit} (with uncommitted changes)")
        } else {
            commit
        },
    ));
    rows
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(project_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(String::new, |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
}

/// `VERSION (API X) at HOST` from the daemon's `GET /version`, or why not.
fn daemon_version(host: &str) -> String {
    let Some(path) = host.strip_prefix("unix://") else {
        return format!("not queried ({host} is not a unix socket)");
    };
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        // HTTP/1.0: the daemon closes the connection after the answer.
        s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })();
    match answer {
        Ok(text) => {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            match serde_json::from_str::<Value>(body) {
                Ok(v) => format!(
                    "{} (API {}) at `{host}`",
                    v["Version"].as_str().unwrap_or("?"),
                    v["ApiVersion"].as_str().unwrap_or("?")
                ),
                Err(_) => format!("unreadable answer from `{host}`"),
            }
        }
        Err(e) => format!("not reachable at `{host}` ({e})"),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Now as `2024-05-01 12:34:56`, UTC.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_tail_is_kept() {
        let old = format!(
            "# Benchmarks\ngenerated\n\n{}\n## Workspace reshape\nby hand\n",
            super::HAND_WRITTEN
        );
        assert_eq!(
            super::hand_written(&old),
            format!("{}\n## Workspace reshape\nby hand\n", super::HAND_WRITTEN)
        );
        assert_eq!(super::hand_written("# Benchmarks\nonly generated\n"), "");
    }

    #[test]
    fn a_missing_bench_is_said_in_the_summary_and_its_section() {
        let outcomes = [
            Outcome {
                name: "soak",
                title: "Soak",
                report: Some(serde_json::json!({
                    "title": "Soak: many short tasks",
                    "markdown": "| a | b |\n",
                    "summary": [{"figure": "lost", "value": "0", "goal": "0", "met": true}],
                })),
                status: Ok(()),
                kept: None,
            },
            Outcome {
                name: "cold_start",
                title: "Cold start",
                report: None,
                status: Err(BenchFailure::EnvironmentMissing),
                kept: None,
            },
        ];
        let machine = [("CPU".to_string(), "x".to_string())];
        let md = render(&outcomes, &machine, false, 2, "now", ("0.1 0 0", "3.0 0 0"));
        assert!(md.contains("| `soak` | lost | 0 | 0 | yes |"), "{md}");
        assert!(
            md.contains("| `cold_start` | Cold start | — | — | was not run"),
            "{md}"
        );
        assert!(
            md.contains("**This benchmark was not run: its environment is missing"),
            "{md}"
        );
        assert!(
            md.contains("The machine was busy"),
            "a load of 3 on 2 CPUs is busy: {md}"
        );
        assert!(
            md.contains("## Soak: many short tasks (`benches/soak.rs`)"),
            "{md}"
        );
    }

    #[test]
    fn only_parses_known_names_and_refuses_others() {
        let o = Options::parse(&["--quick", "--only", "worker_rss,throughput"]).unwrap();
        assert!(o.quick);
        assert_eq!(o.only, Some(vec!["worker_rss", "throughput"]));
        assert!(o.runs("throughput") && !o.runs("soak"));
        assert!(Options::parse(&[]).unwrap().runs("soak"));
        let e = Options::parse(&["--only", "rss"]).unwrap_err().to_string();
        assert!(e.contains("\"rss\"") && e.contains("worker_rss"), "{e}");
        assert!(Options::parse(&["--only"]).is_err());
        assert!(Options::parse(&["--fast"]).is_err());
    }

    #[test]
    fn a_bench_not_run_keeps_its_earlier_rows_and_section() {
        let old = format!(
            "# Benchmarks\n\n## Summary\n\n| benchmark | figure |\n| --- | --- |\n\
             | `soak` | lost | 0 |\n| `worker_rss` | idle | 9 MiB |\n\n\
             ## Soak: many short tasks (`benches/soak.rs`)\n\n{KEPT_NOTE}\n\n| a | b |\n\n\
             ## Worker memory (`benches/worker_rss.rs`)\n\nrss table\n\n{}\n## by hand\n",
            super::HAND_WRITTEN
        );
        let soak = kept(&old, "soak");
        assert_eq!(soak.title.as_deref(), Some("Soak: many short tasks"));
        assert_eq!(soak.summary, vec!["| `soak` | lost | 0 |".to_string()]);
        assert_eq!(
            soak.section, "| a | b |",
            "the earlier note is not repeated"
        );
        assert_eq!(kept(&old, "worker_rss").section, "rss table");
        assert_eq!(kept(&old, "lifecycle"), Kept::default());

        let outcomes = [Outcome {
            name: "soak",
            title: "Soak",
            report: None,
            status: Ok(()),
            kept: Some(soak),
        }];
        let md = render(&outcomes, &[], false, 2, "now", ("0 0 0", "0 0 0"));
        assert!(md.contains("| `soak` | lost | 0 |"), "{md}");
        assert!(
            md.contains("## Soak: many short tasks (`benches/soak.rs`)"),
            "{md}"
        );
        assert_eq!(md.matches(KEPT_NOTE).count(), 1, "{md}");
        assert!(md.contains("| benches run |  (`--only`"), "{md}");
    }
}
