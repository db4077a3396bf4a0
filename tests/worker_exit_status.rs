//! The worker's exit status at start-up, as README "Exit status" states it:
//! 2 for bad flags or configuration (wherever the bad value is found, in
//! the core's settings or a runtime's), 1 when the worker could not start
//! (here: no daemon at DOCKER_HOST). Each error names the problem.

use std::process::Command;

/// Runs the worker against an address nothing listens on; it must stop
/// before connecting anywhere.
fn worker(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["--worker-id", "exit-status", "--web-socket-url"])
        .arg("ws://127.0.0.1:9/ws")
        .arg("--state-dir")
        .arg(state.path())
        .args(args)
        .env("WARP_API_KEY", "test-key")
        .env("OTEL_METRICS_EXPORTER", "none")
        .envs(env.iter().copied())
        .output()
        .expect("the worker binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad_policy = dir.path().join("worker.yaml");
    std::fs::write(
        &bad_policy,
        "backend:\n  docker:\n    pull_policy: sometimes\n",
    )
    .unwrap();
    let bad_policy = bad_policy.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        // Found by the Docker runtime's settings, after the core's.
        (&["-v", "./cache:/cache"], "./cache"),
        (&["--config-file", bad_policy], "sometimes"),
        // Found by the core.
        (&["--backend", "kubernetes"], "kubernetes"),
        (&["--shutdown-timeout", "30"], "30"),
    ];
    for (args, named) in cases {
        let (code, stderr) = worker(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} names {named:?}: {stderr}");
    }
}

#[test]
fn a_runtime_that_cannot_start_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-daemon.sock");
    let host = format!("unix://{}", socket.display());
    let (code, stderr) = worker(&[], &[("DOCKER_HOST", &host)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no-daemon.sock"), "{stderr}");
}
