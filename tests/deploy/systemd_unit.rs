//! contrib/systemd/oz-agent-worker.service: systemd's own checker accepts it
//! without a warning, its hardening scores as systemd rates it, its stop
//! timeout leaves a margin over the worker's whole stop, and every
//! flag it passes is one the worker has. No systemd runs here, so the unit
//! is not started.

use oz_test_support::cli::output_text as text;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const INSTALLED_BINARY: &str = "/usr/local/bin/oz-agent-worker";
/// systemd must not SIGKILL a worker still within its own stop: the
/// worker's stop ends by its shutdown timeout + `worker::STOP_TAIL`, and
/// this much is left for the process to exit.
const STOP_MARGIN: Duration = Duration::from_secs(5);

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/oz-agent-worker.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).expect("contrib/systemd/oz-agent-worker.service")
}

/// `[Service]` settings, in order (a key may repeat).
fn settings(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("KEY=VALUE");
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key}= is not set"))
}

/// The unit with ExecStart pointing at the binary under test (verify
/// refuses a command that does not exist), in a directory of its own.
fn unit_under_test() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = unit().replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_oz-agent-worker"));
    std::fs::write(dir.path().join("oz-agent-worker.service"), text).unwrap();
    dir
}

fn systemd_analyze(args: &[&str], dir: &Path) -> Option<Output> {
    match Command::new("systemd-analyze")
        .args(args)
        .arg("./oz-agent-worker.service")
        .current_dir(dir)
        .output()
    {
        Ok(o) => Some(o),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("systemd-analyze cannot run under CI=true: {e} (scripts/test-env.sh installs systemd)")
        }
        Err(e) => {
            eprintln!("SKIPPED: systemd-analyze cannot run: {e} (apt-get install systemd)");
            None
        }
    }
}

#[test]
fn systemd_analyze_verify_accepts_it_without_warnings() {
    let dir = unit_under_test();
    let Some(out) = systemd_analyze(&["verify"], dir.path()) else {
        return;
    };
    // An unknown or misspelt key is only a warning to verify: any output fails.
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out), "", "systemd-analyze verify warned");
}

#[test]
fn hardening_exposure_is_at_most_2_0() {
    let dir = unit_under_test();
    // --threshold is on systemd's 0-100 scale: 20 is the "2.0" it prints.
    let Some(out) = systemd_analyze(
        &["security", "--offline=true", "--threshold=20"],
        dir.path(),
    ) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    let overall = text(&out);
    assert!(
        overall.contains("Overall exposure level for oz-agent-worker.service"),
        "{overall}"
    );
}

#[test]
fn stop_timeout_exceeds_the_workers_shutdown_timeout() {
    let s = settings(&unit());
    assert_eq!(setting(&s, "KillMode"), "mixed");
    assert_eq!(setting(&s, "KillSignal"), "SIGTERM");
    let stop = oz_foundation::duration::parse_duration(setting(&s, "TimeoutStopSec"))
        .expect("TimeoutStopSec in seconds");
    let shutdown = oz_worker::config::DEFAULT_SHUTDOWN_TIMEOUT + oz_worker::STOP_TAIL;
    assert!(
        stop >= shutdown + STOP_MARGIN,
        "TimeoutStopSec={stop:?} leaves less than {STOP_MARGIN:?} over the worker's whole stop ({shutdown:?})"
    );
    assert_eq!(setting(&s, "Restart"), "on-failure");
    assert!(setting(&s, "EnvironmentFile")
        .trim_start_matches('-')
        .starts_with('/'));
    // The key comes as the credential the worker reads by itself.
    let credential = setting(&s, "LoadCredential");
    assert!(
        credential.starts_with(&format!("{}:/", oz_foundation::secret::CREDENTIAL_NAME)),
        "LoadCredential={credential} does not load the credential the worker reads"
    );
    // The key is never written into the unit itself.
    assert!(
        !s.iter()
            .any(|(k, v)| k == "Environment" && v.contains("WARP_API_KEY")),
        "the API key belongs in the EnvironmentFile or a credential"
    );
}

#[test]
fn exec_start_passes_only_flags_the_worker_has() {
    let s = settings(&unit());
    let exec: Vec<&str> = setting(&s, "ExecStart").split_whitespace().collect();
    assert_eq!(exec[0], INSTALLED_BINARY);
    let help = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = exec
        .iter()
        .copied()
        .filter(|a| a.starts_with("--"))
        .collect();
    assert!(!flags.is_empty());
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")),
            "the unit passes {flag}, which `oz-agent-worker --help` does not list"
        );
    }
    // The state directory systemd creates is the one the worker is told.
    let state_dir = exec[exec.iter().position(|a| *a == "--state-dir").unwrap() + 1];
    assert_eq!(
        state_dir,
        format!("/var/lib/{}", setting(&s, "StateDirectory"))
    );
}
