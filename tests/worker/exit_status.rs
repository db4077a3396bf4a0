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
        (&["--shutdown-timeout", "30"], "30"),
        (&["--task-timeout", "5x"], "--task-timeout: "),
        (&["--task-timeout=-1h"], "--task-timeout: "),
    ];
    for (args, named) in cases {
        let (code, stderr) = worker(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} names {named:?}: {stderr}");
    }
}

/// A bad value in the config file is named with the file, its line and
/// its key path, wherever it is found (the core, the operator's
/// environment, a runtime's settings); the same value from a flag names
/// the flag.
#[test]
fn a_bad_value_in_the_config_file_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "worker_id: w\nidle_on_complete: 5 minutes\n",
            "line 2: idle_on_complete: invalid duration",
        ),
        (
            "# metrics\nmetrics_listen: localhost:9090\n",
            "line 2: metrics_listen: \"localhost:9090\" is not a listen address",
        ),
        (
            "backend:\n  docker:\n    volumes:\n      - /srv/a:/a\n      - ./cache:/cache\n",
            "line 5: backend.docker.volumes[1]: invalid volume \"./cache:/cache\"",
        ),
        (
            "backend:\n  docker:\n    environment:\n      - name: OK\n        value: x\n      - name: \"A B\"\n",
            "line 6: backend.docker.environment[1]: environment variable name \"A B\"",
        ),
        (
            "backend:\n  docker:\n    stop_grace_period: soon\n",
            "line 3: backend.docker.stop_grace_period: invalid duration",
        ),
        // Issue 20's Docker policy keys (items 3 to 6).
        (
            "backend:\n  docker:\n    network_mode: \"my net\"\n",
            "line 3: backend.docker.network_mode: \"my net\" is not a network name",
        ),
        (
            "backend:\n  docker:\n    dns:\n      - 10.0.0.2\n      - dns.corp\n",
            "line 5: backend.docker.dns[1]: \"dns.corp\" is not an IP address",
        ),
        (
            "backend:\n  docker:\n    cpus: two\n",
            "line 3: backend.docker.cpus: \"two\" is not a number of CPUs",
        ),
        (
            "backend:\n  docker:\n    memory: 5x\n",
            "line 3: backend.docker.memory: \"5x\" is not a size",
        ),
        (
            "backend:\n  docker:\n    memory: 1g\n    memory_swap: 512m\n",
            "line 4: backend.docker.memory_swap: \"512m\" (512 MiB) is below backend.docker.memory",
        ),
        (
            "backend:\n  docker:\n    pids_limit: 0\n",
            "line 3: backend.docker.pids_limit: 0 is not a process limit",
        ),
        (
            "backend:\n  docker:\n    oom_score_adj: -100\n",
            "line 3: backend.docker.oom_score_adj: -100 is out of range; use 1 to 1000",
        ),
        (
            "backend:\n  docker:\n    allowed_images:\n      - \"debian:*\"\n",
            "line 4: backend.docker.allowed_images[0]: \"debian:*\" can never match",
        ),
        (
            "backend:\n  docker:\n    allowed_pull_policies: [never]\n",
            "line 3: backend.docker.allowed_pull_policies: the pull policy in use, always (the default), is not in the allowed list [never]",
        ),
        (
            "worker_id: w\ntask_timeout: 5x\n",
            "line 2: task_timeout: invalid duration \"5x\"",
        ),
    ];
    for (i, (yaml, said)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("worker-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let (code, stderr) = worker(&["--config-file", file.to_str().unwrap()], &[]);
        assert_eq!(code, Some(2), "{yaml}: {stderr}");
        let want = format!("config file {} {said}", file.display());
        assert!(
            stderr.contains(&want),
            "{yaml}\nwant {want:?}\ngot {stderr}"
        );
    }
    // The flag's own bad value names the flag, not the file.
    let file = dir.path().join("worker-0.yaml");
    let (code, stderr) = worker(
        &[
            "--config-file",
            file.to_str().unwrap(),
            "--idle-on-complete",
            "later",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("error: --idle-on-complete: invalid duration \"later\""),
        "{stderr}"
    );
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
