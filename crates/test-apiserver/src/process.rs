//! The server as a child process, for tests that kill and restart it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `oz-test-apiserver`; killed, and its containers removed, on drop.
pub struct ApiServerProcess {
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// The state dir (kubeconfig, CA, token, state.json).
    pub state_dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
}

/// The `oz-test-apiserver` binary for tests outside this crate (whose
/// `CARGO_BIN_EXE_…` only this crate's tests get): `OZ_TEST_APISERVER_BIN`,
/// else the binary beside the running test's target directory
/// (`target/debug/oz-test-apiserver`). When it is not there (a plain
/// `cargo test --test kubernetes` does not build other packages'
/// binaries), it is built once with the cargo running the tests, into the
/// same target directory: cargo holds no lock while tests run.
///
/// Errors: the binary cannot be found and the build fails (its output is
/// in the message).
pub fn binary() -> std::io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OZ_TEST_APISERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/debug/deps/TEST-HASH → target/debug/oz-test-apiserver
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| std::io::Error::other("the test executable is not in a cargo target dir"))?;
    let candidate = profile_dir.join("oz-test-apiserver");
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_build = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if candidate.is_file() {
        return Ok(candidate);
    }
    build_into(profile_dir)?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(std::io::Error::other(format!(
            "cargo built oz-test-apiserver but {} is not there: run `cargo build -p oz-test-apiserver` or set OZ_TEST_APISERVER_BIN",
            candidate.display()
        )))
    }
}

/// `cargo build -p oz-test-apiserver` into the target dir holding
/// `profile_dir` (its `debug` profile: the tests' own).
fn build_into(profile_dir: &Path) -> std::io::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| std::io::Error::other("the test executable is not in a cargo target dir"))?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "oz-test-apiserver",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "oz-test-apiserver is not built and `cargo build -p oz-test-apiserver` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl ApiServerProcess {
    /// Starts the binary on `state_dir` and waits for `listening URL`.
    pub fn start(
        binary: &Path,
        state_dir: &Path,
        extra: &[&str],
    ) -> std::io::Result<ApiServerProcess> {
        let mut args = vec!["--state-dir".to_string(), state_dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = ApiServerProcess {
            binary: binary.to_path_buf(),
            args,
            child: None,
            state_dir: state_dir.to_path_buf(),
            url: String::new(),
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let mut sink = String::new();
            while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| std::io::Error::other("oz-test-apiserver did not start within 60 s"))?;
        let url = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| std::io::Error::other(format!("oz-test-apiserver said {line:?}")))?;
        self.url = url.to_string();
        self.child = Some(child);
        Ok(())
    }

    /// The kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    /// The bearer token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The CA certificate file.
    pub fn ca(&self) -> PathBuf {
        self.state_dir.join("ca.pem")
    }

    /// A raw request with curl, trusting the server's CA, at most 20 s:
    /// (HTTP status, 0 when there was no answer; body). `body` is sent with
    /// `content_type`; `token` adds the bearer token.
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        content_type: &str,
        token: bool,
    ) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "--noproxy", "*", "--max-time", "20", "--cacert"])
            .arg(self.ca())
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if token {
            c.arg("-H")
                .arg(format!("Authorization: Bearer {}", self.token()));
        }
        if let Some(b) = body {
            c.args([
                "-H",
                &format!("Content-Type: {content_type}"),
                "--data-binary",
                &b.to_string(),
            ]);
        }
        c.arg(format!("{}{path}", self.url));
        let out = c.output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and starts again on the same state dir (same port, CA, token).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// This instance's id (the label on its containers and volumes).
    pub fn instance(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("instance"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for ApiServerProcess {
    fn drop(&mut self) {
        self.kill();
        let instance = self.instance();
        if instance.is_empty() {
            return;
        }
        let filter = format!("label={}={instance}", crate::docker::LABEL_INSTANCE);
        // The daemon the server's kubelet used (`--docker-host`), else the
        // environment's.
        let host = self
            .args
            .iter()
            .position(|a| a == "--docker-host")
            .and_then(|i| self.args.get(i + 1))
            .cloned();
        let docker = || {
            let mut c = Command::new("docker");
            if let Some(h) = &host {
                c.env("DOCKER_HOST", h);
            }
            c
        };
        if let Ok(out) = docker().args(["ps", "-aq", "--filter", &filter]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = docker().args(["rm", "-f", "-v", id]).output();
            }
        }
        if let Ok(out) = docker()
            .args(["volume", "ls", "-q", "--filter", &filter])
            .output()
        {
            for v in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = docker().args(["volume", "rm", "-f", v]).output();
            }
        }
    }
}
