//! The container image (Dockerfile), built here through its build arguments
//! from base images made of Debian packages (scripts/container-image.sh),
//! then used as an operator would: the worker in a container, as uid 10001
//! with the socket's group added, the host's daemon through the mounted
//! socket, `WARP_API_KEY` through `docker run -e`, task `-e`/`-v` given to
//! the worker, a mounted Docker config for the private test registry (the
//! daemon pulls the task and sidecar images with it), against a control
//! plane (`oz-agent-worker serve`) on the host reached over `--network host`.
//! The same image's `check` works against the daemon, and fails clearly
//! without the socket's group.

use oz_test_support as support;

use base64::Engine as _;
use oz_test_support::cli::output_text as text;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::net::free_port;
use support::plane_process::PlaneProcess;
use support::worker::{unique_id, Engine, BUSYBOX, SIDECAR};

const IMAGE: &str = "oz-agent-worker:test";
const PATIENCE: Duration = Duration::from_secs(120);

/// The Docker CLI against the test dockerd, whatever the caller's DOCKER_*.
fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args)
        .env("DOCKER_HOST", Engine::Docker.host())
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_API_VERSION");
    c
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args).output().expect("the docker CLI runs");
    assert!(out.status.success(), "docker {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Registry {
    address: String,
    user: String,
    password: String,
}

fn registry() -> Option<Registry> {
    let root = std::env::var("OZ_TEST_ROOT").unwrap_or_else(|_| "/var/lib/oz-worker-test".into());
    let file = std::env::var("OZ_TEST_REGISTRY_PASSWORD_FILE")
        .unwrap_or_else(|_| format!("{root}/registry/password"));
    let address = std::env::var("OZ_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    match std::fs::read_to_string(&file) {
        Ok(p) if std::net::TcpStream::connect(&address).is_ok() => Some(Registry {
            address,
            user: std::env::var("OZ_TEST_REGISTRY_USER").unwrap_or_else(|_| "oztest".into()),
            password: p.trim().to_string(),
        }),
        _ => support::docker::unavailable("the test registry (password file and 127.0.0.1:5000)"),
    }
}

/// A Docker config directory holding the registry's credentials, readable
/// by the container's uid 10001.
fn docker_config(reg: &Registry) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", reg.user, reg.password));
    let config = serde_json::json!({ "auths": { &reg.address: { "auth": auth } } });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    chmod(dir.path(), "755");
    chmod(&dir.path().join("config.json"), "644");
    dir
}

fn chmod(path: &Path, mode: &str) {
    let ok = Command::new("chmod")
        .arg(mode)
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chmod {mode} {}", path.display());
}

/// Pushes a local image to the registry under a fresh tag and drops every
/// local copy, so the daemon must pull it.
fn push_unique(reg: &Registry, config: &Path, source: &str, repo: &str) -> String {
    let reference = format!("{}/{repo}:{}", reg.address, unique_id("image"));
    let cfg = config.to_str().unwrap();
    docker_ok(&["tag", source, &reference]);
    docker_ok(&["--config", cfg, "push", &reference]);
    docker_ok(&["rmi", &reference]);
    reference
}

/// Removes the named containers and images when the test ends, passed or not.
struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = docker(&["rmi", i]).output();
        }
    }
}

fn socket_gid(host: &str) -> String {
    let path = host.strip_prefix("unix://").expect("a unix socket");
    let out = Command::new("stat")
        .args(["-c", "%g", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds the image once per test binary: the tests run in parallel, and
/// two builds at once would compile everything twice.
fn build_image() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_image_now).clone()
}

fn build_image_now() -> String {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let out = Command::new(repo.join("scripts/container-image.sh"))
        .args(["build", IMAGE])
        .env("DOCKER_HOST", Engine::Docker.host())
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/container-image.sh runs");
    assert!(
        out.status.success(),
        "scripts/container-image.sh build failed (its output is above)"
    );
    eprintln!(
        "[container_image] image built in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The module name puts this test in the README's matrix table (dockerd).
mod docker {
    use super::*;

    #[test]
    fn image_runs_a_task_end_to_end() {
        if !Engine::Docker.available() {
            return;
        }
        let Some(reg) = registry() else {
            return;
        };
        let image_id = build_image();
        assert!(image_id.starts_with("sha256:"), "{image_id}");
        check_image_config();

        let config = docker_config(&reg);
        let task_image = push_unique(&reg, config.path(), BUSYBOX, "oz/image-e2e-task");
        let sidecar = push_unique(&reg, config.path(), SIDECAR, "oz/image-e2e-agent");
        let worker_id = unique_id("image-e2e");
        let container = format!("oz-test-{worker_id}");
        let _cleanup = Cleanup {
            containers: vec![container.clone()],
            images: vec![task_image.clone(), sidecar.clone()],
        };
        // Kept for the test's length: the plane's process belongs to it.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let plane = rt.block_on(PlaneProcess::start(&[]));
        let report = tempfile::tempdir().unwrap();
        let host = Engine::Docker.host();
        let socket = host.strip_prefix("unix://").unwrap();
        let gid = socket_gid(&host);

        // The worker, as an operator runs it.
        let out = docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            "host",
            "--group-add",
            &gid,
            "-v",
            &format!("{socket}:/var/run/docker.sock"),
            "-v",
            &format!("{}:/home/oz/.docker:ro", config.path().display()),
            "-e",
            "WARP_API_KEY",
            IMAGE,
            "--worker-id",
            &worker_id,
            "--web-socket-url",
            &format!(
                "{}/api/v1/selfhosted/worker/ws",
                plane.url().replace("http://", "ws://")
            ),
            "--server-root-url",
            &plane.url(),
            "--pull-policy",
            "always",
            "-e",
            "OPERATOR_VAR=from-operator",
            "-v",
            &format!("{}:/report", report.path().display()),
        ])
        .env("WARP_API_KEY", &plane.key)
        .output()
        .unwrap();
        assert!(out.status.success(), "docker run: {}", text(&out));
        poll("the worker in the container connects", PATIENCE, || {
            let logs = docker(&["logs", &container]).output().unwrap();
            let logs = text(&logs);
            assert!(!logs.contains(&plane.key), "the API key appears in the log");
            logs.contains("connected to the orchestrator").then_some(())
        });
        let uid = docker_ok(&["exec", &container, "id", "-u"]);
        assert_eq!(uid, "10001", "the worker runs as uid 10001, not root");

        // A task through the control plane's CLI, pulled from the registry
        // by the daemon with the mounted credentials.
        let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
            .args(["run", "--server", &plane.url(), "--host", &worker_id])
            .args(["--image", &task_image, "--sidecar", &sidecar])
            .args(["--prompt", "hello from the image", "--wait", "--json"])
            .env("WARP_API_KEY", &plane.key)
            .output()
            .unwrap();
        let logs = text(&docker(&["logs", &container]).output().unwrap());
        assert!(
            out.status.success(),
            "run: {}\nworker log:\n{logs}",
            text(&out)
        );
        let run: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("run --json: {e}: {}", text(&out)));
        assert_eq!(run["state"], "succeeded", "{run}");
        let task_id = run["id"].as_str().unwrap();
        let env = std::fs::read_to_string(report.path().join(task_id).join("env"))
            .unwrap_or_else(|e| panic!("the agent's report: {e}\nworker log:\n{logs}"));
        assert!(
            env.lines().any(|l| l == "OPERATOR_VAR=from-operator"),
            "{env}"
        );
        assert!(
            env.lines().any(|l| l == format!("TASK_ID={task_id}")),
            "{env}"
        );
        assert!(!env.contains(&plane.key), "the API key reached the task");
        let agent_mount =
            std::fs::read_to_string(report.path().join(task_id).join("agent_mount")).unwrap();
        assert_eq!(agent_mount.trim(), "readonly");

        check_health(&container);

        // SIGTERM (docker stop) ends the worker cleanly as PID 1.
        docker_ok(&["stop", "-t", "30", &container]);
        let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &container]);
        assert_eq!(code, "0", "exit code after docker stop");

        check_command(socket, &gid);
    }
}

/// User, entry point, health check and the health listener's address.
fn check_image_config() {
    let inspect = docker_ok(&["image", "inspect", IMAGE]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let c = &v[0]["Config"];
    assert_eq!(c["User"], "10001:10001", "{c}");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/oz-agent-worker"])
    );
    assert_eq!(
        c["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "oz-agent-worker", "probe"]),
        "{c}"
    );
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(env.contains(&"OZ_HEALTH_LISTEN=0.0.0.0:8081"), "{env:?}");
    let size = v[0]["Size"].as_u64().unwrap();
    eprintln!(
        "[container_image] {IMAGE}: {:.1} MB",
        size as f64 / 1_000_000.0
    );
    // The tools an operator relies on are there: CA certificates and ssh.
    let out = docker_ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "ssh -V 2>&1; test -s /etc/ssl/certs/ca-certificates.crt && echo certs",
    ]);
    assert!(out.contains("OpenSSH"), "{out}");
    assert!(out.contains("certs"), "{out}");
}

/// The HEALTHCHECK probes the worker's /healthz. The worker serves it when
/// it knows `--health-listen` (env OZ_HEALTH_LISTEN, set by the image);
/// until then only the probe's verdict on a closed port can be asserted.
fn check_health(container: &str) {
    let help = docker_ok(&["run", "--rm", IMAGE, "--help"]);
    let serves_health = help.contains("--health-listen");
    let probe = docker(&["exec", container, "oz-agent-worker", "probe"])
        .output()
        .unwrap();
    if serves_health {
        assert!(probe.status.success(), "probe: {}", text(&probe));
        poll("the container is reported healthy", PATIENCE, || {
            let status = docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", container]);
            (status == "healthy").then_some(())
        });
    } else {
        eprintln!(
            "[container_image] the worker has no --health-listen yet: /healthz is not served"
        );
        assert_eq!(probe.status.code(), Some(1), "{}", text(&probe));
        assert!(
            text(&probe).contains("Connection refused"),
            "{}",
            text(&probe)
        );
    }
}

/// `check` in the same image: works with the socket's group, and without it
/// says that the socket refused the connection.
fn check_command(socket: &str, gid: &str) {
    let mount = format!("{socket}:/var/run/docker.sock");
    let out = docker_ok(&[
        "run",
        "--rm",
        "--group-add",
        gid,
        "-v",
        &mount,
        IMAGE,
        "check",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["endpoint"], "unix:///var/run/docker.sock");
    assert_eq!(v["chosen_by"]["kind"], "default", "{v}");
    assert_eq!(v["engine"]["kind"], "docker", "{v}");

    let out = docker(&["run", "--rm", "-v", &mount, IMAGE, "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("cannot connect to the Docker daemon at unix:///var/run/docker.sock")
            && err.contains("ermission denied"),
        "{err}"
    );
}

/// Issue 22 item 9, in the dockerd matrix row like the test above.
mod docker_host_network {
    use super::*;

    /// Two workers from the image on the host network, each with its own
    /// OZ_HEALTH_LISTEN (neither on the image's default port): both start,
    /// and Docker reports both healthy, because the HEALTHCHECK probes the
    /// port each one listens on. A third on a port already taken stops with
    /// an error that names OZ_HEALTH_LISTEN. Each runs as PID 1 (no
    /// `--init`) and runs 5 tasks (direct runtime) whose agent leaves an
    /// orphaned process behind: every orphan is reaped, none stays a zombie.
    #[test]
    fn two_workers_on_the_host_network_are_healthy_and_reap_orphans() {
        if !Engine::Docker.available() {
            return;
        }
        build_image();
        // Kept for the test's length: the plane's process belongs to it.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let plane = rt.block_on(PlaneProcess::start(&[]));
        let share = tempfile::tempdir().unwrap();
        chmod(share.path(), "0777");
        // The agent: an orphan (its parent subshell exits at once) that
        // records its pid and lives for a second.
        let agent = share.path().join("agent.sh");
        std::fs::write(
            &agent,
            "#!/bin/sh\n( sleep 1 & echo $! > \"/share/orphan-$TASK_ID\" )\necho agent done\n",
        )
        .unwrap();
        chmod(&agent, "0755");
        std::fs::write(
            share.path().join("config.yaml"),
            "backend:\n  direct:\n    oz_path: /share/agent.sh\n    workspace_root: /home/oz/workspaces\n",
        )
        .unwrap();
        chmod(&share.path().join("config.yaml"), "0644");

        let ids: Vec<String> = (0..2).map(|_| unique_id("image-hostnet")).collect();
        let ports = [free_port(), free_port()];
        let containers: Vec<String> = ids.iter().map(|i| format!("oz-test-{i}")).collect();
        let third = format!("oz-test-{}", unique_id("image-hostnet"));
        let _cleanup = Cleanup {
            containers: containers.iter().cloned().chain([third.clone()]).collect(),
            images: vec![],
        };
        let ws = format!(
            "{}/api/v1/selfhosted/worker/ws",
            plane.url().replace("http://", "ws://")
        );
        let run_worker = |name: &str, id: &str, port: u16| {
            docker(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "host",
                "--health-interval",
                "1s",
                "--health-start-period",
                "30s",
                "-e",
                &format!("OZ_HEALTH_LISTEN=127.0.0.1:{port}"),
                "-e",
                "WARP_API_KEY",
                "-v",
                &format!("{}:/share", share.path().display()),
                IMAGE,
                "--worker-id",
                id,
                "--backend",
                "direct",
                "--config-file",
                "/share/config.yaml",
                "--web-socket-url",
                &ws,
                "--server-root-url",
                &plane.url(),
            ])
            .env("WARP_API_KEY", &plane.key)
            .output()
            .unwrap()
        };
        for i in 0..2 {
            let out = run_worker(&containers[i], &ids[i], ports[i]);
            assert!(out.status.success(), "docker run: {}", text(&out));
        }
        for c in &containers {
            poll(&format!("{c} reported healthy"), PATIENCE, || {
                let status = docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", c]);
                let logs = text(&docker(&["logs", c]).output().unwrap());
                assert_ne!(status, "unhealthy", "{c}: {logs}");
                (status == "healthy").then_some(())
            });
        }
        // The worker is not PID 1 itself: PID 1 is its reaper, its parent.
        let children = docker_ok(&[
            "exec",
            &containers[0],
            "sh",
            "-c",
            "for c in $(cat /proc/1/task/1/children); do cat /proc/$c/comm; done",
        ]);
        assert!(
            children.lines().any(|c| c == "oz-agent-worker"),
            "PID 1 runs the worker as its child: {children:?}"
        );

        // A third on the first one's port: a clear error, exit status 1.
        let out = run_worker(&third, &ids[0], ports[0]);
        assert!(out.status.success(), "docker run: {}", text(&out));
        let code = poll("the third worker exits", PATIENCE, || {
            let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", &third]);
            (running == "false")
                .then(|| docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &third]))
        });
        let logs = text(&docker(&["logs", &third]).output().unwrap());
        assert_eq!(code, "1", "{logs}");
        assert!(
            logs.contains("OZ_HEALTH_LISTEN") && logs.contains(&ports[0].to_string()),
            "{logs}"
        );

        // 5 tasks on the first worker, each leaving an orphan.
        let mut orphans = Vec::new();
        for n in 0..5 {
            let out = Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
                .args(["run", "--server", &plane.url(), "--host", &ids[0]])
                .args(["--prompt", &format!("orphan {n}"), "--wait", "--json"])
                .env("WARP_API_KEY", &plane.key)
                .output()
                .unwrap();
            let run: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("run --json: {e}: {}", text(&out)));
            assert_eq!(run["state"], "succeeded", "{run}");
            let task_id = run["id"].as_str().unwrap().to_string();
            let pid = poll("the orphan's pid", PATIENCE, || {
                std::fs::read_to_string(share.path().join(format!("orphan-{task_id}")))
                    .ok()
                    .filter(|p| p.ends_with('\n'))
            });
            orphans.push(pid.trim().to_string());
        }
        // Reaped: gone from the container's /proc (a zombie stays listed).
        for pid in &orphans {
            poll(&format!("orphan {pid} reaped"), PATIENCE, || {
                let out = docker(&[
                    "exec",
                    &containers[0],
                    "test",
                    "-e",
                    &format!("/proc/{pid}"),
                ])
                .output()
                .unwrap();
                (!out.status.success()).then_some(())
            });
        }
        let zombies = docker_ok(&[
            "exec",
            &containers[0],
            "sh",
            "-c",
            "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l",
        ]);
        assert_eq!(zombies, "0", "zombies in the container");

        // docker stop: PID 1 forwards SIGTERM; the worker's exit status is the container's.
        docker_ok(&["stop", "-t", "30", &containers[0]]);
        let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &containers[0]]);
        assert_eq!(code, "0", "exit code after docker stop");
    }
}
