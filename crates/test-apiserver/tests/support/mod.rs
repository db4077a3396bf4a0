//! Shared helpers: a server process on a fresh state dir, the real kubectl
//! against it, raw HTTPS through curl (for exact status codes and bodies),
//! and schema checks of what comes back.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use oz_test_apiserver::process::ApiServerProcess;
use oz_test_apiserver::schema::Schemas;
use serde_json::Value;

/// Fails under CI=true, otherwise prints why the test is skipped.
pub fn unavailable(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("test environment unavailable under CI=true: {reason} (run scripts/test.sh)");
    }
    eprintln!("skipped: {reason}");
}

pub fn kubectl_path() -> PathBuf {
    std::env::var_os("OZ_TEST_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

pub struct Env {
    pub server: ApiServerProcess,
    _dir: tempfile::TempDir,
}

/// A fresh server, or None (outside CI) when kubectl or dockerd is missing.
pub fn start(extra: &[&str]) -> Option<Env> {
    if !Command::new(kubectl_path())
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        unavailable("kubectl not runnable (set OZ_TEST_KUBECTL)");
        return None;
    }
    if !Command::new("docker")
        .args(["info", "--format", "{{.ID}}"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        unavailable("dockerd not reachable (scripts/test-env.sh up)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--bookmark-interval-ms", "300", "--pull-backoff-ms", "500"];
    args.extend_from_slice(extra);
    let server = ApiServerProcess::start(
        env!("CARGO_BIN_EXE_oz-test-apiserver").as_ref(),
        dir.path(),
        &args,
    )
    .expect("start oz-test-apiserver");
    Some(Env { server, _dir: dir })
}

pub fn busybox() -> String {
    std::env::var("OZ_TEST_IMAGE_BUSYBOX").unwrap_or_else(|_| "oz-test/busybox:latest".into())
}

impl Env {
    /// kubectl with the server's kubeconfig; stdin from `input`.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut c = Command::new(kubectl_path());
        c.env("KUBECONFIG", self.server.kubeconfig())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if input.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().expect("run kubectl");
        if let Some(text) = input {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str], input: Option<&str>) -> String {
        let out = self.kubectl(args, input);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a, None)).unwrap()
    }

    /// A raw request with curl: (HTTP status, body).
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
        token: bool,
    ) -> (u16, String) {
        self.server.curl(method, path, body, content_type, token)
    }

    /// A JSON request; the answer parsed.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, text) = self.curl(method, path, body, "application/json", true);
        (
            code,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}")),
        )
    }

    /// The watch events a request streams (it must end: timeoutSeconds).
    pub fn watch_lines(&self, path: &str) -> Vec<Value> {
        let (code, text) = self.curl("GET", path, None, "", true);
        assert_eq!(code, 200, "{text}");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn admin(&self, what: &str) -> Value {
        let (code, v) = self.request("POST", &format!("/admin/{what}"), None);
        assert_eq!(code, 200, "{v}");
        v
    }
}

impl Drop for Env {
    /// Every object the server stored itself (defaults, controller and
    /// kubelet updates, events) matched its schema.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let (code, body) = self.request("GET", "/admin/self-check", None);
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body["violations"],
            serde_json::json!([]),
            "the server stored objects its schema refuses"
        );
    }
}

/// Every object must match its vendored schema.
pub fn valid(object: &Value) {
    if let Err(e) = Schemas::global().validate(object) {
        panic!("{e}\n{object}");
    }
}

/// A Status body with this code and reason.
pub fn status(body: &Value, code: u16, reason: &str) {
    valid(body);
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

/// A Job manifest (YAML) running `script` in busybox.
pub fn job_yaml(name: &str, script: &str, extra_spec: &str, container_extra: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  labels:\n    oz-test: \"true\"\nspec:\n  backoffLimit: 0\n{extra_spec}  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 5\n      containers:\n      - name: task\n        image: {}\n        imagePullPolicy: IfNotPresent\n        command: [\"sh\", \"-c\", {script:?}]\n{container_extra}",
        busybox()
    )
}

/// The one Pod of a Job.
pub fn pod_of(env: &Env, job: &str) -> Value {
    env.ok(
        &[
            "wait",
            "--for=create",
            "pod",
            "-l",
            &format!("job-name={job}"),
            "--timeout=120s",
        ],
        None,
    );
    let list = env.get_json(&["pods", "-l", &format!("job-name={job}")]);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    items[0].clone()
}
