//! `PlaneProcess`: the control plane as a real `oz-agent-worker serve`
//! process on a state directory of its own, so fault tests can SIGKILL it,
//! SIGSTOP it and start it again on the same port and data.

use crate::net::free_port;
use oz_runs_api::client::Client;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub struct PlaneProcess {
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
    port: u16,
    pub key: String,
    extra: Vec<String>,
    starts: usize,
}

fn bin() -> &'static str {
    crate::worker_binary()
}

impl PlaneProcess {
    /// Starts `serve` with `extra` flags and creates a team key.
    pub async fn start(extra: &[&str]) -> PlaneProcess {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(bin())
            .args(["api-keys", "create", "--team", "faults", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let mut p = PlaneProcess {
            child: None,
            dir,
            port: free_port(),
            key,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        p.spawn().await;
        p
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("serve-{n}.log"))
    }

    /// Everything every start of the plane logged.
    pub fn log_text(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let child = tokio::process::Command::new(bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--log-level", "debug"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("serve starts");
        self.child = Some(child);
        // Ready when the port answers HTTP.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.client().list_runs(None, None).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve did not come up; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, oz_control_plane::WS_PATH)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url(), &self.key).unwrap()
    }

    fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("serve runs") as i32
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        self.signal("KILL");
        let mut child = self.child.take().unwrap();
        child.wait().await.unwrap();
    }

    /// Freezes the process (it keeps its sockets, reads nothing).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Starts it again on the same port and state.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn().await;
    }
}
