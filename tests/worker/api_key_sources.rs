//! The worker binary's API key sources (issue 21 item 9): `--api-key-file`,
//! `WARP_API_KEY_FILE` and the systemd credential `warp-api-key` connect
//! with the key in the file (its trailing newline ignored); a key file that
//! others can read and a key on the command line are warned about without
//! the key ever reaching the log; two sources at one level stop the worker
//! with exit status 2 naming both. Real worker binary, embedded control
//! plane; the direct runtime so no engine is needed.

use oz_test_support as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::fixtures::fake_oz;
use support::worker::*;

fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn direct_args(dir: &Path, extra: &[String]) -> Vec<String> {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "backend:\n  direct:\n    workspace_root: {}\n    oz_path: {}\n",
            ws.display(),
            fake_oz().display()
        ),
    )
    .unwrap();
    let mut args = vec![
        "--backend".to_string(),
        "direct".into(),
        "--config-file".into(),
        config.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// Starts the worker with `WARP_API_KEY=env_key` (empty = unset for the
/// worker) and `env`, and waits until it is connected: only the right key
/// connects, so a connection proves which source was used.
async fn connects(
    plane: &TestPlane,
    dir: &Path,
    env_key: &str,
    extra: &[String],
    env: Vec<(String, String)>,
) -> WorkerProcess {
    let id = unique_id("apikey");
    let w = WorkerProcess::spawn(
        plane,
        Engine::None,
        WorkerOptions {
            worker_id: &id,
            extra_args: direct_args(dir, extra),
            env,
            api_key: Some(env_key),
            ..Default::default()
        },
    );
    w.wait_for_log("connected to the orchestrator", Duration::from_secs(30))
        .await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_connects_and_a_readable_one_is_warned_about() {
    let plane = TestPlane::start(test_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    write_mode(&file, &format!("{}\n", plane.key), 0o644);
    // WARP_API_KEY holds a wrong key: the flag's file wins.
    let w = connects(
        &plane,
        dir.path(),
        "wrong-key",
        &["--api-key-file".into(), file.display().to_string()],
        vec![],
    )
    .await;
    let log = w.log_text();
    assert!(
        log.contains("can be read by every user") && log.contains("chmod 600"),
        "{log}"
    );
    assert!(!log.contains(&plane.key), "the key reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warp_api_key_file_and_the_systemd_credential_connect_without_a_warning() {
    let plane = TestPlane::start(test_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-key");
    write_mode(&file, &format!("{}\r\n", plane.key), 0o600);
    let w = connects(
        &plane,
        dir.path(),
        "",
        &[],
        vec![("WARP_API_KEY_FILE".into(), file.display().to_string())],
    )
    .await;
    assert!(!w.log_text().contains("can be read by"), "{}", w.log_text());

    let creds = tempfile::tempdir().unwrap();
    write_mode(
        &creds.path().join("warp-api-key"),
        &format!("{}\n", plane.key),
        0o400,
    );
    let w = connects(
        &plane,
        dir.path(),
        "",
        &[],
        vec![(
            "CREDENTIALS_DIRECTORY".into(),
            creds.path().display().to_string(),
        )],
    )
    .await;
    assert!(!w.log_text().contains(&plane.key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_on_the_command_line_works_with_a_warning_that_says_why_and_what_instead() {
    let plane = TestPlane::start(test_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = plane.key.clone();
    let w = connects(
        &plane,
        dir.path(),
        "",
        &["--api-key".into(), key.clone()],
        vec![],
    )
    .await;
    let log = w.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("/proc/PID/cmdline"))
        .unwrap_or_else(|| panic!("no warning about the command line: {log}"));
    assert!(
        warning.contains("--api-key-file") && warning.contains("WARP_API_KEY_FILE"),
        "{warning}"
    );
    assert!(!log.contains(&key), "the key reached the log");
}

fn worker_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["--worker-id", "apikey-both"])
        .args(direct_args(dir.path(), &args))
        .env_remove("WARP_API_KEY")
        .env_remove("WARP_API_KEY_FILE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn two_sources_at_one_level_exit_2_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k");
    write_mode(&file, "k\n", 0o600);
    let path = file.display().to_string();
    let (code, err) = worker_exit(&["--api-key", "k", "--api-key-file", &path], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--api-key and --api-key-file"), "{err}");
    let (code, err) = worker_exit(&[], &[("WARP_API_KEY", "k"), ("WARP_API_KEY_FILE", &path)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("WARP_API_KEY and WARP_API_KEY_FILE"), "{err}");
    let empty = dir.path().join("empty");
    write_mode(&empty, "\n", 0o600);
    let (code, err) = worker_exit(&["--api-key-file", &empty.display().to_string()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--api-key-file") && err.contains("empty"),
        "{err}"
    );
}
