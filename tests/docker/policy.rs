//! Operator policy on the Docker runtime (issue 20, items 3 to 6), end to
//! end against the real dockerd: the task container's network, resources,
//! allowed images and pull policies, and the OOM score of tasks and worker.
//! Settings are given in a real config file; what the daemon made is read
//! back from the kept container (`--no-cleanup`).

use oz_test_support as support;

use oz_docker_engine::models::ContainerInspectResponse;
use oz_docker_engine::Docker;
use oz_protocol::InstanceShape;
use oz_runs_api::model::{CreateRunRequest, Run, RunState};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::images::{remove_sidecar, script_sidecar};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Case {
    engine: Engine,
    plane: TestPlane,
    docker: Docker,
    dir: tempfile::TempDir,
    /// A sidecar that runs `OZ_TEST_SCRIPT`, and its volume.
    sidecar: (String, String),
}

impl Case {
    async fn new() -> Option<Case> {
        Case::on(Engine::Docker).await
    }

    async fn on(engine: Engine) -> Option<Case> {
        if !engine.available() {
            return None;
        }
        let docker = engine.docker().await;
        let sidecar = script_sidecar(&docker).await;
        Some(Case {
            engine,
            plane: TestPlane::start(test_config()).await,
            docker,
            dir: tempfile::tempdir().unwrap(),
            sidecar,
        })
    }

    fn config(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// A worker reading `yaml` as its config file, keeping task containers.
    async fn worker(&self, prefix: &str, yaml: &str, opts: WorkerOptions<'_>) -> WorkerProcess {
        let id = unique_id(prefix);
        let config = self.config(&id, yaml);
        let mut extra_args = vec![
            "--config-file".to_string(),
            config.display().to_string(),
            "--no-cleanup".to_string(),
        ];
        extra_args.extend(opts.extra_args.iter().cloned());
        WorkerProcess::start(
            &self.plane,
            self.engine,
            WorkerOptions {
                worker_id: &id,
                extra_args,
                ..opts
            },
        )
        .await
    }

    fn script_run(&self, worker: &WorkerProcess, script: &str) -> CreateRunRequest {
        let mut req = demo_run(&worker.worker_id, &[("OZ_TEST_SCRIPT", script)]);
        req.sidecar_image = Some(self.sidecar.0.clone());
        req
    }

    async fn run(&self, req: &CreateRunRequest) -> Run {
        let run = self.plane.client().create_run(req).await.unwrap();
        wait_terminal(&self.plane, &run.id, RUN_TIMEOUT).await
    }

    async fn containers_of(&self, task_id: &str) -> Vec<String> {
        task_containers(&self.docker, task_id).await
    }

    /// The run's kept task container, inspected, then removed.
    async fn kept_container(&self, run: &Run) -> ContainerInspectResponse {
        let ids = self.containers_of(&run.id).await;
        assert_eq!(ids.len(), 1, "one kept container for {}: {ids:?}", run.id);
        let c = self
            .docker
            .container_inspect(&ids[0], &Default::default())
            .await
            .unwrap();
        remove(&self.docker, &ids[0]).await;
        c
    }

    async fn finish(self) {
        remove_sidecar(&self.docker, &self.sidecar.0, &self.sidecar.1).await;
    }
}

async fn remove(d: &Docker, id: &str) {
    let _ = d
        .container_delete(
            id,
            &oz_docker_engine::params::ContainerDeleteParams {
                force: Some(true),
                ..Default::default()
            },
        )
        .await;
}

/// Runs the worker binary to its exit at start-up with `yaml` as config
/// file, against the test dockerd; (status, stderr).
fn start_up(dir: &std::path::Path, yaml: &str) -> (Option<i32>, String) {
    let file = dir.join(format!("{}.yaml", unique_id("startup")));
    std::fs::write(&file, yaml).unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
        .args(["--worker-id", "policy-startup", "--web-socket-url"])
        .arg("ws://127.0.0.1:9/ws")
        .arg("--state-dir")
        .arg(state.path())
        .arg("--config-file")
        .arg(&file)
        .env("WARP_API_KEY", "test-key")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("DOCKER_HOST", Engine::Docker.host())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `/proc/PID/oom_score_adj`.
fn read_oom_score_adj(pid: &str) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether this process (and so the worker it starts) has
/// CAP_SYS_RESOURCE, which lowering an OOM score needs.
fn privileged() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    cap_eff & (1 << 24) != 0
}

/// A TCP listener on the host's loopback that answers HTTP and records the
/// first line of every request it gets.
struct Listener {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    fn start() -> Listener {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]);
                seen.lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or_default().to_string());
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        Listener { port, requests }
    }

    fn saw(&self, needle: &str) -> bool {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(needle))
    }
}

/// With `network_mode: host` a task reaches a server on the host's
/// 127.0.0.1; with `none` the same task cannot.
async fn network_none_and_host(engine: Engine) {
    let Some(c) = Case::on(engine).await else {
        return;
    };
    let listener = Listener::start();
    // busybox's nc (its static wget crashes on this image).
    let script = format!(
        "printf 'GET /from-%s HTTP/1.0\\r\\n\\r\\n' \"$TASK_ID\" | nc -w 5 127.0.0.1 {}",
        listener.port
    );

    let host = c
        .worker(
            "net-host",
            "backend:\n  docker:\n    network_mode: host\n",
            WorkerOptions::default(),
        )
        .await;
    let done = c.run(&c.script_run(&host, &script)).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert!(listener.saw(&format!("GET /from-{} ", done.id)));
    let hc = c.kept_container(&done).await.host_config.unwrap();
    assert_eq!(hc.network_mode.as_deref(), Some("host"));
    assert_eq!(hc.oom_score_adj, Some(500), "the default OomScoreAdj");

    let none = c
        .worker(
            "net-none",
            "backend:\n  docker:\n    network_mode: none\n",
            WorkerOptions::default(),
        )
        .await;
    let done = c.run(&c.script_run(&none, &script)).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("container_exit"));
    assert!(
        done.message
            .as_deref()
            .unwrap_or("")
            .contains("can't connect to remote host (127.0.0.1)"),
        "the task's own error is reported: {done:#?}"
    );
    assert!(
        !listener.saw(&done.id),
        "no request from the run without a network"
    );
    let kept = c.kept_container(&done).await;
    assert_eq!(
        kept.host_config.unwrap().network_mode.as_deref(),
        Some("none")
    );
    c.finish().await;
}

/// A user-defined network (created here) with DNS settings reaches the
/// task container; a network that does not exist stops the worker at
/// start-up with exit status 2, naming the key and the network.
async fn user_defined_network_and_dns_and_a_missing_network() {
    let Some(c) = Case::new().await else { return };
    let name = unique_id("oz-policy-net");
    c.docker
        .network_create(&oz_docker_engine::models::NetworkCreateBody {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let w = c
        .worker(
            "net-named",
            &format!(
                "backend:\n  docker:\n    network_mode: {name}\n    dns: [127.0.0.1]\n    dns_search:\n      - corp.example\n"
            ),
            WorkerOptions::default(),
        )
        .await;
    let done = c
        .run(&c.script_run(&w, "grep -q corp.example /etc/resolv.conf"))
        .await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let kept = c.kept_container(&done).await;
    let hc = kept.host_config.unwrap();
    assert_eq!(hc.network_mode.as_deref(), Some(name.as_str()));
    assert_eq!(hc.dns, Some(vec!["127.0.0.1".to_string()]));
    assert_eq!(hc.dns_search, Some(vec!["corp.example".to_string()]));
    let networks = kept.network_settings.unwrap().networks.unwrap_or_default();
    assert!(networks.contains_key(&name), "{networks:?}");
    drop(w);
    let _ = c.docker.network_delete(&name).await;

    let missing = unique_id("oz-policy-missing");
    let (code, stderr) = start_up(
        c.dir.path(),
        &format!("worker_id: w\nbackend:\n  docker:\n    network_mode: {missing}\n"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "line 4: backend.docker.network_mode: network \"{missing}\" does not exist on the Docker daemon"
        )) && stderr.contains(&format!("docker network create {missing}")),
        "{stderr}"
    );
    // cpus above what the daemon's host has: also found at start-up.
    let (code, stderr) = start_up(c.dir.path(), "backend:\n  docker:\n    cpus: 4096\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("backend.docker.cpus: 4096 is more than the"),
        "{stderr}"
    );
    c.finish().await;
}

/// The operator's limits reach every task container; a shape within them
/// replaces them; a shape above them is refused before anything is made.
async fn resource_limits_and_instance_shapes(engine: Engine) {
    let Some(c) = Case::on(engine).await else {
        return;
    };
    let w = c
        .worker(
            "res",
            "backend:\n  docker:\n    cpus: 1.5\n    memory: 2g\n    memory_swap: 3g\n    pids_limit: 100\n",
            WorkerOptions::default(),
        )
        .await;
    assert!(
        w.log_text().contains(
            "task containers: network_mode bridge, cpus 1.5, memory 2 GiB, memory_swap 3 GiB, \
             pids_limit 100, oom_score_adj 500, allowed_images any, allowed_pull_policies [if-not-present]"
        ),
        "the policy in force is logged at start-up: {}",
        w.log_text()
    );
    // Started at the test's own value: lowered only with CAP_SYS_RESOURCE,
    // never raised.
    let own = read_oom_score_adj("self");
    let worker = read_oom_score_adj(&w.child.id().unwrap().to_string());
    let expected = match (privileged(), own) {
        (true, own) => own.min(-500),
        (false, own) if own > 0 => 0,
        (false, own) => own,
    };
    assert_eq!(worker, expected);
    let done = c.run(&c.script_run(&w, "true")).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let hc = c.kept_container(&done).await.host_config.unwrap();
    assert_eq!(hc.nano_cpus, Some(1_500_000_000));
    assert_eq!(hc.memory, Some(2 << 30));
    assert_eq!(hc.memory_swap, Some(3 << 30));
    assert_eq!(hc.pids_limit, Some(100));
    assert_eq!(hc.oom_score_adj, Some(500), "the default OomScoreAdj");

    let mut within = c.script_run(&w, "true");
    within.instance_shape = Some(InstanceShape {
        vcpus: Some(1),
        memory_gb: Some(1),
    });
    let done = c.run(&within).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let hc = c.kept_container(&done).await.host_config.unwrap();
    assert_eq!(hc.nano_cpus, Some(1_000_000_000));
    assert_eq!(hc.memory, Some(1 << 30));
    assert_eq!(hc.memory_swap, Some(1 << 30), "swap pinned to the shape");
    assert_eq!(hc.pids_limit, Some(100));

    for (shape, named) in [
        (
            InstanceShape {
                vcpus: Some(2),
                memory_gb: None,
            },
            "instance_shape.vcpus 2 but this worker allows at most 1.5 CPUs (backend.docker.cpus)",
        ),
        (
            InstanceShape {
                vcpus: None,
                memory_gb: Some(3),
            },
            "instance_shape.memory_gb 3 (3 GiB) but this worker allows at most 2 GiB (backend.docker.memory)",
        ),
    ] {
        let mut above = c.script_run(&w, "true");
        above.instance_shape = Some(shape);
        let done = c.run(&above).await;
        assert_eq!(done.state, RunState::Failed, "{done:#?}");
        assert_eq!(done.failure_reason.as_deref(), Some("container_create"));
        assert!(
            done.message.as_deref().unwrap_or("").contains(named),
            "{done:#?}"
        );
        assert!(
            c.containers_of(&done.id).await.is_empty(),
            "nothing created for a refused shape"
        );
    }
    c.finish().await;
}

/// A task that allocates past its real memory limit (after printing 20 MB
/// of output) ends as `container_oom`; its container has the configured
/// OomScoreAdj; the worker's own score is lowered where it may be and
/// never raised, and the worker stays up with bounded memory.
async fn out_of_memory_kills_the_task_not_the_worker(engine: Engine) {
    let Some(c) = Case::on(engine).await else {
        return;
    };
    let mut w = c
        .worker(
            "oom",
            "backend:\n  docker:\n    memory: 64m\n    oom_score_adj: 700\n",
            WorkerOptions {
                oom_score_adj: Some(300),
                ..Default::default()
            },
        )
        .await;
    let pid = w.child.id().unwrap();
    let done = c
        .run(&c.script_run(
            &w,
            "yes oz-output-line | head -c 20000000; head -c 512m /dev/zero | tail",
        ))
        .await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("container_oom"),
        "{done:#?}"
    );
    assert_eq!(done.exit_code, Some(137));
    assert!(
        done.message
            .as_deref()
            .unwrap_or("")
            .contains("memory limit of 64 MiB"),
        "{done:#?}"
    );
    let kept = c.kept_container(&done).await;
    assert_eq!(kept.host_config.unwrap().oom_score_adj, Some(700));
    // Podman 4 on cgroup v1 never reports OOM kills; the worker infers
    // them there (a SIGKILL it did not send, under a memory limit).
    if engine != Engine::Podman {
        assert_eq!(kept.state.unwrap().oom_killed, Some(true));
    }

    // Started at 300 by its launcher: lowered to -500 with CAP_SYS_RESOURCE,
    // else to 0 (as low as an unprivileged process may go), never above.
    let own = read_oom_score_adj(&pid.to_string());
    assert_eq!(own, if privileged() { -500 } else { 0 });
    if !privileged() {
        assert!(
            w.log_text().contains("needs CAP_SYS_RESOURCE"),
            "the refusal is logged at debug level"
        );
    }
    assert!(w.child.try_wait().unwrap().is_none(), "the worker is up");
    let hwm_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!("worker peak RSS (VmHWM) after the OOM task: {hwm_kib} KiB");
    assert!(
        hwm_kib < 64 * 1024,
        "the worker's peak RSS stays below the task's own 64 MiB limit: {hwm_kib} KiB"
    );
    c.finish().await;
}

/// The test registry's address and a Docker config dir logged in to it.
fn registry_login() -> Option<(String, tempfile::TempDir, String)> {
    let root = std::env::var("OZ_TEST_ROOT").unwrap_or_else(|_| "/var/lib/oz-worker-test".into());
    let address = std::env::var("OZ_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let password_file = std::env::var("OZ_TEST_REGISTRY_PASSWORD_FILE")
        .unwrap_or_else(|_| format!("{root}/registry/password"));
    let user = std::env::var("OZ_TEST_REGISTRY_USER").unwrap_or_else(|_| "oztest".into());
    let Ok(password) = std::fs::read_to_string(&password_file) else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("no test registry password at {password_file}; run scripts/test-env.sh up");
        }
        eprintln!("skipping: the test registry is not set up (run scripts/test-env.sh up)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("docker")
        .args(["--config", dir.path().to_str().unwrap(), "login", &address])
        .args(["-u", &user, "--password-stdin"])
        .env("DOCKER_HOST", Engine::Docker.host())
        .env("DOCKER_API_VERSION", "1.41")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker CLI on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.trim().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((address, dir, format!("{root}/logs/registry.log")))
}

/// Pushes the local busybox under a fresh tag and drops the local copy:
/// the image then exists only in the registry.
async fn push_unique(d: &Docker, registry: &str, config: &std::path::Path) -> String {
    // Credentials as the worker finds them: the logged-in config's auths.
    let lookup = |name: &str| (name == "DOCKER_CONFIG").then(|| config.display().to_string());
    let auth = oz_docker_engine::credentials::resolve(registry, &lookup)
        .await
        .auth
        .expect("docker login stored credentials");
    let repo = format!("{registry}/oz/policy-busybox");
    support::images::push_only(d, BUSYBOX, &repo, auth.header_value()).await
}

/// A task whose image, or any sidecar image, matches no `allowed_images`
/// pattern fails with `invalid_image` before anything is pulled: the
/// registry never sees a request for it and the daemon never has it. The
/// same run on a worker that allows it pulls it (so the check would see a
/// pull). A pull policy outside `allowed_pull_policies` stops the worker.
async fn images_not_allowed_fail_before_any_pull() {
    let Some(c) = Case::new().await else { return };
    let Some((registry, login, registry_log)) = registry_login() else {
        return;
    };
    let image = push_unique(&c.docker, &registry, login.path()).await;
    let sidecar = format!("{registry}/oz/agent-sidecar:1");
    let manifest = |reference: &str| {
        let (repo, tag) = reference
            .strip_prefix(&format!("{registry}/"))
            .unwrap()
            .rsplit_once(':')
            .unwrap();
        format!("/v2/{repo}/manifests/{tag}")
    };
    // A pull reads the manifest (GET or HEAD); the push only wrote it (PUT).
    let pushed_at = std::fs::metadata(&registry_log)
        .map(|m| m.len())
        .unwrap_or(0) as usize;
    let registry_saw = |path: &str| {
        let log = std::fs::read(&registry_log).unwrap_or_default();
        let log = String::from_utf8_lossy(log.get(pushed_at..).unwrap_or_default()).into_owned();
        log.contains(&format!("\"GET {path} ")) || log.contains(&format!("\"HEAD {path} "))
    };
    let on_daemon = |reference: String| {
        let d = c.docker.clone();
        async move {
            d.image_inspect(&reference, &Default::default())
                .await
                .is_ok()
        }
    };
    let opts = || WorkerOptions {
        pull_policy: Some("always"),
        env: vec![("DOCKER_CONFIG".into(), login.path().display().to_string())],
        ..Default::default()
    };
    let run_with = |w: &WorkerProcess| {
        let mut req = demo_run(&w.worker_id, &[]);
        req.docker_image = Some(image.clone());
        req.sidecar_image = Some(sidecar.clone());
        req
    };

    // The task image is not allowed.
    let w = c
        .worker(
            "img-task",
            &format!(
                "backend:\n  docker:\n    allowed_images:\n      - {registry}/oz/agent-sidecar:*\n      - docker.io/oz-test/**\n    allowed_pull_policies: [always, if-not-present]\n"
            ),
            opts(),
        )
        .await;
    let done = c.run(&run_with(&w)).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("invalid_image"));
    let message = done.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!("the task image {image}"))
            && message.contains(&format!(
                "backend.docker.allowed_images [{registry}/oz/agent-sidecar:*, docker.io/oz-test/**]"
            )),
        "{message}"
    );
    assert!(!w.log_text().contains("pulling image"), "{}", w.log_text());
    assert!(c.containers_of(&done.id).await.is_empty());

    // The task image is allowed, a sidecar is not: still nothing pulled.
    let w = c
        .worker(
            "img-sidecar",
            &format!("backend:\n  docker:\n    allowed_images: [\"{registry}/oz/policy-*:*\"]\n"),
            opts(),
        )
        .await;
    let done = c.run(&run_with(&w)).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("invalid_image"),
        "{done:#?}"
    );
    assert!(
        done.message
            .as_deref()
            .unwrap_or("")
            .starts_with(&format!("sidecar image {sidecar}")),
        "{done:#?}"
    );
    assert!(!w.log_text().contains("pulling image"), "{}", w.log_text());
    assert!(!registry_saw(&manifest(&image)), "no pull of {image}");
    assert!(
        !on_daemon(image.clone()).await,
        "{image} is not on the daemon"
    );

    // Allowed: the same run pulls both, which the registry log shows.
    let w = c
        .worker(
            "img-allowed",
            &format!("backend:\n  docker:\n    allowed_images: [\"{registry}/oz/**\"]\n"),
            opts(),
        )
        .await;
    let done = c.run(&run_with(&w)).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert!(
        registry_saw(&manifest(&image)),
        "the registry log shows pulls"
    );
    assert!(on_daemon(image.clone()).await);
    remove(&c.docker, &c.containers_of(&done.id).await[0]).await;
    let _ = c.docker.image_delete(&image, &Default::default()).await;

    // The pull policy in use must be allowed.
    let (code, stderr) = start_up(
        c.dir.path(),
        "backend:\n  docker:\n    pull_policy: always\n    allowed_pull_policies: [never, if-not-present]\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("line 4: backend.docker.allowed_pull_policies: the pull policy in use, always (backend.docker.pull_policy), is not in the allowed list [never, if-not-present]"),
        "{stderr}"
    );
    c.finish().await;
}

/// Module names put the scenarios in the README's daemon matrix table.
mod docker {
    use super::Engine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn network_mode_none_cannot_reach_the_host_and_host_can() {
        super::network_none_and_host(Engine::Docker).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn user_defined_network_and_dns_and_a_missing_network() {
        super::user_defined_network_and_dns_and_a_missing_network().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_limits_and_instance_shapes() {
        super::resource_limits_and_instance_shapes(Engine::Docker).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_memory_kills_the_task_not_the_worker() {
        super::out_of_memory_kills_the_task_not_the_worker(Engine::Docker).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn images_not_allowed_fail_before_any_pull() {
        super::images_not_allowed_fail_before_any_pull().await
    }
}

mod podman {
    use super::Engine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn network_mode_none_cannot_reach_the_host_and_host_can() {
        super::network_none_and_host(Engine::Podman).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_limits_and_instance_shapes() {
        super::resource_limits_and_instance_shapes(Engine::Podman).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_memory_kills_the_task_not_the_worker() {
        super::out_of_memory_kills_the_task_not_the_worker(Engine::Podman).await
    }
}

/// Resources and OOM on the newer daemons of the matrix (in their own
/// network namespaces: the network and registry scenarios need the host's
/// loopback).
macro_rules! newer_daemon {
    ($module:ident, $engine:expr) => {
        mod $module {
            use super::Engine;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn resource_limits_and_instance_shapes() {
                super::resource_limits_and_instance_shapes($engine).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn out_of_memory_kills_the_task_not_the_worker() {
                super::out_of_memory_kills_the_task_not_the_worker($engine).await
            }
        }
    };
}

newer_daemon!(docker26, Engine::Docker26);
newer_daemon!(docker28, Engine::Docker28);
newer_daemon!(podman5, Engine::Podman5);
