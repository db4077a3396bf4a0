//! `WorkerProcess`: the real worker binary, started against an embedded
//! control plane, a `serve` process or a scripted orchestrator, on a real
//! engine or a host runtime, so tests can signal and kill it and benches
//! can measure it.

use super::control_plane::TestPlane;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oz_runs_api::model::{CreateRunRequest, Run, RunState};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub const BUSYBOX: &str = "oz-test/busybox:latest";
pub const MUSL: &str = "oz-test/musl:latest";
pub const SIDECAR: &str = "oz-test/agent-sidecar:latest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// dockerd 20.10 (Debian 12) on its unix socket.
    Docker,
    /// Podman 4 (Debian 12) on its Docker-compatible socket.
    Podman,
    /// The same dockerd, reached over TCP with mutual TLS.
    DockerTls,
    /// No engine at all (the direct and command runtimes): no `DOCKER_*`
    /// variable reaches the worker and no `--pull-policy` is passed.
    None,
    /// Docker 26 (API 1.45, Debian 13), in a container of the test dockerd.
    Docker26,
    /// Docker 28 (API 1.51, Debian unstable), in a container of the test dockerd.
    Docker28,
    /// Podman 5 (Debian unstable), in a container of the test dockerd.
    Podman5,
}

impl Engine {
    /// Every daemon of the matrix, each over its unix socket.
    pub const MATRIX: [Engine; 5] = [
        Engine::Docker,
        Engine::Podman,
        Engine::Docker26,
        Engine::Docker28,
        Engine::Podman5,
    ];

    /// The name of the test module that runs a scenario on this engine
    /// (`docker::NAME`, `docker28::NAME`, ...): the README's daemon matrix
    /// table (scripts/matrix-table.py) attributes tests by it.
    pub fn key(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
            Engine::DockerTls => "docker_tls",
            Engine::Docker26 => "docker26",
            Engine::Docker28 => "docker28",
            Engine::Podman5 => "podman5",
            Engine::None => "none",
        }
    }

    /// Whether containers of this engine reach the host's loopback (the
    /// test registry on 127.0.0.1:5000, a control plane). The matrix's
    /// nested daemons live in their own network namespace: they pull
    /// nothing from the test registry, so tests there use preloaded images
    /// (`--pull-policy if-not-present`, the `WorkerOptions` default).
    pub fn reaches_host_loopback(self) -> bool {
        matches!(self, Engine::Docker | Engine::Podman | Engine::DockerTls)
    }

    pub fn host(self) -> String {
        let (var, default) = match self {
            Engine::Docker => ("OZ_TEST_DOCKER_HOST", "unix:///var/run/docker.sock"),
            Engine::Podman => ("OZ_TEST_PODMAN_HOST", "unix:///run/podman/podman.sock"),
            Engine::DockerTls => ("OZ_TEST_TLS_HOST", "tcp://127.0.0.1:2376"),
            Engine::None => return String::new(),
            Engine::Docker26 => (
                "OZ_TEST_DOCKER26_HOST",
                "unix:///var/lib/oz-worker-test/daemons/docker26/docker.sock",
            ),
            Engine::Docker28 => (
                "OZ_TEST_DOCKER28_HOST",
                "unix:///var/lib/oz-worker-test/daemons/docker28/docker.sock",
            ),
            Engine::Podman5 => (
                "OZ_TEST_PODMAN5_HOST",
                "unix:///var/lib/oz-worker-test/daemons/podman5/podman.sock",
            ),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_string())
    }

    /// The variables that select this engine, as a user would set them.
    pub fn env(self) -> Vec<(String, String)> {
        if self == Engine::None {
            return Vec::new();
        }
        let mut env = vec![("DOCKER_HOST".to_string(), self.host())];
        if self == Engine::DockerTls {
            let certs = std::env::var("OZ_TEST_CERT_DIR")
                .unwrap_or_else(|_| "/var/lib/oz-worker-test/certs".into());
            env.push(("DOCKER_TLS_VERIFY".into(), "1".into()));
            env.push(("DOCKER_CERT_PATH".into(), certs));
        }
        env
    }

    /// [`Engine::host`] when the engine answers ([`Engine::available`]:
    /// under CI a missing engine fails the test), else None.
    pub fn reachable_host(self) -> Option<String> {
        self.available().then(|| self.host())
    }

    /// Whether the engine answers. Under CI a missing engine fails the test
    /// instead of skipping it.
    pub fn available(self) -> bool {
        if self == Engine::None {
            return true;
        }
        let host = self.host();
        let up = match host.strip_prefix("unix://") {
            Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            None => std::net::TcpStream::connect(host.trim_start_matches("tcp://")).is_ok(),
        };
        if !up {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{self:?} is not reachable at {host}; run scripts/test-env.sh up");
            }
            eprintln!("skipping: {self:?} is not reachable at {host} (run scripts/test-env.sh up)");
        }
        up
    }

    pub async fn docker(self) -> oz_docker_engine::Docker {
        let env = self.env().into_iter().fold(
            oz_docker_engine::transport::endpoint::EnvSnapshot::empty(),
            |snapshot, (k, v)| snapshot.with_var(&k, v),
        );
        oz_docker_engine::Docker::connect(&env)
            .await
            .expect("test engine reachable")
    }
}

/// One worker to start: what the tests ([`WorkerOptions`] through
/// [`WorkerProcess::start`]) and the benches ([`WorkerProcess::try_start`])
/// vary. The worker gets `--worker-id`, `--web-socket-url`,
/// `--server-root-url`, `--state-dir` and `--log-level`, then `args`; every
/// Docker variable, `OZ_LOG` and `OZ_HEALTH_LISTEN` of this process are
/// cleared, then `DOCKER_HOST` (`docker_host`) and `env` are set. `OZ_LOG`
/// is `OZ_BENCH_WORKER_LOG` when that is set (e.g.
/// `info,oz_worker=debug,oz_docker_engine=debug` logs every Docker request
/// with its time), unless `env` sets it.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub worker_id: String,
    pub ws_url: String,
    pub root_url: String,
    pub api_key: String,
    /// `DOCKER_HOST` for the worker; other Docker variables are cleared.
    pub docker_host: Option<String>,
    /// Flags after the common ones (`--backend`, `--max-concurrent-tasks`, …).
    pub args: Vec<String>,
    /// Environment set last (over `docker_host`).
    pub env: Vec<(String, String)>,
    /// `--log-level`; `info` when None.
    pub log_level: Option<String>,
    /// `--state-dir`; when None a private one, `state` beside the log.
    pub state_dir: Option<PathBuf>,
    /// A program (and its arguments) that runs the worker, e.g. `setpriv`
    /// with another user's ids; it must `exec` the worker (same pid).
    pub wrapper: Vec<String>,
    /// Start the worker with this `oom_score_adj` (raised by a shell that
    /// then execs it, as a launcher might), instead of this process's own.
    /// Ignored with a `wrapper`.
    pub oom_score_adj: Option<i64>,
}

impl Launch {
    /// The tests' worker: `--log-level debug` with every crate of ours at
    /// debug in `OZ_LOG`, `--pull-policy` (`if-not-present` unless given;
    /// none on the host runtimes), `--stop-grace-period 2s` unless the extra
    /// flags set one, the shared test state directory unless given, and the
    /// engine selected by its own variables ([`Engine::env`]).
    pub fn for_test(
        ws_url: &str,
        root_url: &str,
        key: &str,
        engine: Engine,
        opts: WorkerOptions<'_>,
    ) -> Launch {
        let mut args = Vec::new();
        if engine != Engine::None {
            args.push("--pull-policy".to_string());
            args.push(opts.pull_policy.unwrap_or("if-not-present").to_string());
        }
        if !opts.extra_args.iter().any(|a| a == "--stop-grace-period") {
            args.push("--stop-grace-period".to_string());
            args.push("2s".to_string());
        }
        args.extend(opts.extra_args);
        let mut env = engine.env();
        env.push((
            "OZ_LOG".to_string(),
            "info,oz_agent_worker=debug,oz_worker=debug,oz_runtime=debug,oz_docker_engine=debug"
                .to_string(),
        ));
        env.extend(opts.env);
        Launch {
            worker_id: opts.worker_id.to_string(),
            ws_url: ws_url.to_string(),
            root_url: root_url.to_string(),
            api_key: key.to_string(),
            docker_host: None,
            args,
            env,
            log_level: Some("debug".to_string()),
            state_dir: Some(
                opts.state_dir
                    .unwrap_or_else(|| std::env::temp_dir().join("oz-worker-test-state")),
            ),
            wrapper: opts.wrapper,
            oom_score_adj: opts.oom_score_adj,
        }
    }
}

/// Why [`WorkerProcess::try_spawn`], [`WorkerProcess::try_start`] or
/// [`WorkerProcess::try_wait_for_log`] failed; the last two hold the
/// worker's log.
#[derive(Debug, thiserror::Error)]
pub enum WorkerProcessError {
    #[error("temp dir: {0}")]
    TempDir(#[source] std::io::Error),
    #[error(transparent)]
    Log(std::io::Error),
    /// The binary (or its wrapper) could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker exited before logging {needle:?}; its log:\n{log}")]
    Exited { needle: String, log: String },
    #[error("the worker did not log {needle:?} within {within:?}; its log:\n{log}")]
    Silent {
        needle: String,
        within: Duration,
        log: String,
    },
}

/// The real worker binary ([`crate::worker_binary`]) as a child process
/// logging to a file, so tests and benches can wait for log lines, signal
/// and kill it, and read its resident memory and descriptors from `/proc`.
/// Killed when dropped. With `OZ_BENCH_LOG_DIR` set, [`WorkerProcess::stop`]
/// keeps the log there as `<worker id>.log`.
pub struct WorkerProcess {
    pub child: tokio::process::Child,
    /// The worker's stderr.
    pub log: PathBuf,
    pub worker_id: String,
    /// The worker's `--state-dir` (its claim journal lives below it).
    pub state_dir: PathBuf,
    /// The pid at start, for `/proc` after the child was waited for.
    started_pid: u32,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct WorkerOptions<'a> {
    pub worker_id: &'a str,
    pub extra_args: Vec<String>,
    /// Defaults to `if-not-present`: the local test images exist in no registry.
    pub pull_policy: Option<&'a str>,
    /// Extra environment for the worker process (e.g. DOCKER_CONFIG, PATH).
    pub env: Vec<(String, String)>,
    /// Instead of the plane's valid key.
    pub api_key: Option<&'a str>,
    /// Start the worker with this `oom_score_adj` (raised by a shell that
    /// then execs it, as a launcher might), instead of the test's own.
    pub oom_score_adj: Option<i64>,
    /// A program (and its arguments) that runs the worker, e.g. `setpriv`
    /// with another user's ids; it must `exec` the worker (same pid).
    pub wrapper: Vec<String>,
    /// Instead of the shared test state directory.
    pub state_dir: Option<PathBuf>,
}

impl WorkerProcess {
    /// Starts the worker and waits until it is connected.
    pub async fn start(
        plane: &TestPlane,
        engine: Engine,
        opts: WorkerOptions<'_>,
    ) -> WorkerProcess {
        let w = Self::spawn(plane, engine, opts);
        w.wait_for_log("connected to the orchestrator", Duration::from_secs(30))
            .await;
        w
    }

    /// Starts the worker without waiting for anything.
    pub fn spawn(plane: &TestPlane, engine: Engine, opts: WorkerOptions<'_>) -> WorkerProcess {
        let key = opts.api_key.unwrap_or(&plane.key).to_string();
        Self::spawn_at(
            &plane.plane.ws_url(),
            &plane.plane.url(),
            &key,
            engine,
            opts,
        )
    }

    /// Starts the worker against any orchestrator URL (e.g. a scripted server).
    pub fn spawn_at(
        ws_url: &str,
        root_url: &str,
        key: &str,
        engine: Engine,
        opts: WorkerOptions<'_>,
    ) -> WorkerProcess {
        Self::try_spawn(Launch::for_test(ws_url, root_url, key, engine, opts))
            .unwrap_or_else(|e| panic!("worker binary starts: {e}"))
    }

    /// Starts the worker and waits (60 s at most) until it is connected.
    /// Errors: the binary cannot be started, or it exits or stays silent
    /// first (the message holds its log).
    pub async fn try_start(launch: Launch) -> Result<WorkerProcess, WorkerProcessError> {
        let w = Self::try_spawn(launch)?;
        w.try_wait_for_log("connected to the orchestrator", Duration::from_secs(60))
            .await?;
        Ok(w)
    }

    /// Starts the worker without waiting for anything. Errors: no temporary
    /// directory or log file, or the binary (or wrapper) cannot be started.
    pub fn try_spawn(launch: Launch) -> Result<WorkerProcess, WorkerProcessError> {
        let dir = tempfile::Builder::new()
            .prefix("oz-worker-process-")
            .tempdir()
            .map_err(WorkerProcessError::TempDir)?;
        let log = dir.path().join("worker.log");
        let state_dir = launch
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let log_file = std::fs::File::create(&log).map_err(WorkerProcessError::Log)?;
        let binary = crate::worker_binary();
        let mut cmd = match (launch.wrapper.split_first(), launch.oom_score_adj) {
            (Some((program, args)), _) => {
                let mut c = tokio::process::Command::new(program);
                c.args(args).arg(binary);
                c
            }
            (None, None) => tokio::process::Command::new(binary),
            (None, Some(adj)) => {
                let mut sh = tokio::process::Command::new("sh");
                sh.arg("-c")
                    .arg(format!(
                        "echo {adj} > /proc/self/oom_score_adj && exec \"$0\" \"$@\""
                    ))
                    .arg(binary);
                sh
            }
        };
        cmd.args(["--worker-id", &launch.worker_id])
            .args(["--web-socket-url", &launch.ws_url])
            .args(["--server-root-url", &launch.root_url])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--log-level", launch.log_level.as_deref().unwrap_or("info")])
            .args(&launch.args)
            .env("WARP_API_KEY", &launch.api_key)
            // Only the launch's own variables select the daemon and logging.
            .env_remove("OZ_LOG")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_TLS")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("OZ_HEALTH_LISTEN");
        if let Some(filter) = std::env::var_os("OZ_BENCH_WORKER_LOG") {
            cmd.env("OZ_LOG", filter);
        }
        if let Some(h) = &launch.docker_host {
            cmd.env("DOCKER_HOST", h);
        }
        cmd.envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|source| WorkerProcessError::Spawn { binary, source })?;
        let started_pid = child.id().expect("a started child has a pid");
        Ok(WorkerProcess {
            child,
            log,
            worker_id: launch.worker_id,
            state_dir,
            started_pid,
            _dir: dir,
        })
    }

    /// The worker's pid (also through a wrapper that execs it). Panics once
    /// the worker was waited for.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("worker still running")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log for `needle`; panics (with the log) when the worker
    /// exits first or `within` passes.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        if let Err(e) = self.try_wait_for_log(needle, within).await {
            panic!("{e}");
        }
    }

    /// Polls the log for `needle`. Errors (holding the log) when the worker
    /// exits without having logged it, or `within` passes.
    pub async fn try_wait_for_log(
        &self,
        needle: &str,
        within: Duration,
    ) -> Result<(), WorkerProcessError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if !self.alive() {
                // It may have logged the line just before it exited.
                if self.log_text().contains(needle) {
                    return Ok(());
                }
                return Err(WorkerProcessError::Exited {
                    needle: needle.to_string(),
                    log: self.log_text(),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(WorkerProcessError::Silent {
                    needle: needle.to_string(),
                    within,
                    log: self.log_text(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process runs (neither gone nor a zombie).
    fn alive(&self) -> bool {
        crate::host::running(self.started_pid)
    }

    fn status_field(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.started_pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Resident memory now (VmRSS), KiB; 0 once the worker is gone.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:").unwrap_or(0)
    }

    /// Peak resident memory (VmHWM), KiB; 0 once the worker is gone.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:").unwrap_or(0)
    }

    /// Open file descriptors; 0 once the worker is gone.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.started_pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Threads; 0 once the worker is gone.
    pub fn threads(&self) -> u64 {
        self.status_field("Threads:").unwrap_or(0)
    }

    /// Sends signal number `sig` (e.g. 15 for SIGTERM); panics when the
    /// worker is gone or `sig` is no signal.
    pub fn signal(&self, sig: i32) {
        let sig = Signal::try_from(sig).expect("a signal number");
        kill(Pid::from_raw(self.pid() as i32), sig).expect("the worker gets the signal");
    }

    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!(
                "worker did not exit within {within:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `within`, and then
    /// None); keeps the log in `OZ_BENCH_LOG_DIR` when that is set.
    pub async fn stop(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = kill(Pid::from_raw(self.started_pid as i32), Signal::SIGTERM);
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        if let Some(dir) = std::env::var_os("OZ_BENCH_LOG_DIR") {
            let dest = PathBuf::from(dir).join(format!("{}.log", self.worker_id));
            if let Err(e) = std::fs::copy(&self.log, &dest) {
                eprintln!("cannot keep the worker log as {}: {e}", dest.display());
            }
        }
        status
    }
}

/// A run of the demo agent with the given extra environment.
pub fn demo_run(host: &str, env: &[(&str, &str)]) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.to_string(),
        title: Some("e2e".into()),
        prompt: Some("say hello".into()),
        docker_image: Some(BUSYBOX.into()),
        sidecar_image: Some(SIDECAR.into()),
        env_vars: env
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
        ..Default::default()
    }
}

/// A run for a host runtime (direct, command): [`demo_run`] without images,
/// under `title`.
pub fn host_run(host: &str, title: &str, env: &[(&str, &str)]) -> CreateRunRequest {
    CreateRunRequest {
        title: Some(title.into()),
        docker_image: None,
        sidecar_image: None,
        ..demo_run(host, env)
    }
}

/// Polls until the run reaches a terminal state, then returns it.
pub async fn wait_terminal(plane: &TestPlane, id: &str, within: Duration) -> Run {
    let client = plane.client();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let run = client.get_run(id).await.unwrap();
        if matches!(
            run.state,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        ) {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} did not end within {within:?}: {run:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_state(plane: &TestPlane, id: &str, state: RunState, within: Duration) -> Run {
    let client = plane.client();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let run = client.get_run(id).await.unwrap();
        if run.state == state {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} never reached {state:?}: {run:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unique worker id per test, so tests sharing a control plane or engine
/// never see each other's tasks or containers.
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &oz_runtime_docker::identity::random_id()[..8]
    )
}

/// The containers, stopped ones too, that carry every one of `labels`
/// (`KEY=VALUE`; the Docker runtime's are `dev.oz.task-id`,
/// `dev.oz.worker-id`, `dev.oz.role`, ...).
pub async fn labelled_containers(
    d: &oz_docker_engine::Docker,
    labels: &[String],
) -> Vec<oz_docker_engine::models::ContainerSummary> {
    let filters = serde_json::json!({ "label": labels }).to_string();
    d.container_list(&oz_docker_engine::params::ContainerListParams {
        all: Some(true),
        filters: Some(filters),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Ids of the containers (task and helpers, stopped ones too) labelled with
/// `task_id`: none may be left once a run has ended.
pub async fn task_containers(d: &oz_docker_engine::Docker, task_id: &str) -> Vec<String> {
    labelled_containers(d, &[format!("dev.oz.task-id={task_id}")])
        .await
        .into_iter()
        .map(|c| c.id)
        .collect()
}
