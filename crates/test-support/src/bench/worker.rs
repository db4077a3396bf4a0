//! The real worker binary (the bench profile's build), started against an
//! orchestrator with a private state directory and a log file, and read
//! from the outside: resident memory and open descriptors from `/proc`.
//!
//! For finding where time goes: `OZ_BENCH_WORKER_LOG` is handed to the
//! worker as its `OZ_LOG` filter (e.g. `info,oz_worker=debug,oz_runtime=debug,oz_docker_engine=debug` logs
//! every Docker request with its time), and with `OZ_BENCH_LOG_DIR` set a
//! stopped worker's log is kept there as `<worker id>.log`.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub fn binary() -> &'static str {
    crate::worker_binary()
}

/// How to start one worker.
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
    pub env: Vec<(String, String)>,
}

pub struct WorkerProc {
    child: tokio::process::Child,
    pub pid: u32,
    pub worker_id: String,
    pub log: PathBuf,
    /// The worker's `--state-dir` (its claim journal lives below it).
    pub state_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl WorkerProc {
    /// Starts the worker (logging at the default `info` level to a file) and
    /// waits until it is connected.
    pub async fn start(launch: Launch) -> Result<WorkerProc, String> {
        let w = Self::spawn(launch)?;
        w.wait_for_log("connected to the orchestrator", Duration::from_secs(60))
            .await?;
        Ok(w)
    }

    pub fn spawn(launch: Launch) -> Result<WorkerProc, String> {
        let dir = tempfile::Builder::new()
            .prefix("oz-bench-worker-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let log = dir.path().join("worker.log");
        let state_dir = dir.path().join("state");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(binary());
        cmd.args(["--worker-id", &launch.worker_id])
            .args(["--web-socket-url", &launch.ws_url])
            .args(["--server-root-url", &launch.root_url])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--log-level", "info"])
            .args(&launch.args)
            .env("WARP_API_KEY", &launch.api_key)
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
            .map_err(|e| format!("starting {}: {e}", binary()))?;
        let pid = child.id().expect("a started child has a pid");
        Ok(WorkerProc {
            child,
            pid,
            worker_id: launch.worker_id,
            log,
            state_dir,
            dir,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log for `needle`; fails when the worker exits first or
    /// `within` passes.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if !self.alive() {
                return Err(format!(
                    "the worker exited before logging {needle:?}; its log:\n{}",
                    self.log_text()
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the worker did not log {needle:?} within {within:?}; its log:\n{}",
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..i + 3].to_string()))
            .is_some_and(|state| state != "Z")
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Resident memory now (VmRSS), KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:").unwrap_or(0)
    }

    /// Peak resident memory (VmHWM), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:").unwrap_or(0)
    }

    /// Open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Threads.
    pub fn threads(&self) -> u64 {
        self.status_kib("Threads:").unwrap_or(0)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid as i32), sig);
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `within`).
    pub async fn stop(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(Signal::SIGTERM);
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
