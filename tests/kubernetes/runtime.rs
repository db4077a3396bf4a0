//! End to end: the kubernetes runtime. The real worker binary
//! (`--backend kubernetes`) against a scripted orchestrator and the test
//! Kubernetes API server (`oz-test-apiserver`, a real process whose kubelet
//! runs each Pod's containers on the test dockerd). Faults are caused for
//! real: the API server is killed and restarted, its watches closed and
//! compacted, the Job deleted and the Pod evicted behind the worker's back,
//! the worker SIGTERMed and SIGKILLed. Every object the runtime sends is
//! validated by the API server (422 otherwise) and each test ends with its
//! self-check.
#![cfg(feature = "kubernetes")]

use oz_protocol::*;
use oz_test_apiserver::process::{self as apiserver, ApiServerProcess};
use oz_test_support as support;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use support::scripted_server::{ScriptedServer, ServerConn};
use support::worker::*;

const KEY: &str = "ozk_kubernetes-test-key-0001";
const ROOT: &str = "http://oz.invalid";
/// Long enough for a Pod to be scheduled, pulled (locally) and run on a
/// loaded machine; every wait ends as soon as its event arrives.
const WITHIN: Duration = Duration::from_secs(60);

/// The agent sidecar for Kubernetes: the demo agent's entrypoint on top of
/// busybox plus the host's GNU tar and dash (with their libraries) as
/// `tar` and `sh`, since the Go worker's copy init container runs `sh -c`
/// with `tar --exclude` in the sidecar image (the plain
/// oz-test/agent-sidecar has no shell; busybox's tar has no `--exclude`,
/// and busybox's sh runs its own applet whatever PATH says). Built once per
/// test run from local files (nothing pulled).
fn sidecar_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| build_sidecar_image(None))
}

/// Builds the Kubernetes agent sidecar on the dockerd at `docker_host`
/// (None: the default one).
fn build_sidecar_image(docker_host: Option<&str>) -> String {
    {
        let image = "oz-test/agent-sidecar-k8s:latest".to_string();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let mut files = Vec::new();
        for program in ["/usr/bin/tar", "/usr/bin/dash"] {
            let ldd = Command::new("ldd").arg(program).output().expect("ldd runs");
            files.push(PathBuf::from(program));
            files.extend(
                String::from_utf8_lossy(&ldd.stdout)
                    .split_whitespace()
                    .filter(|w| w.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
        for f in &files {
            let target = root.join(f.strip_prefix("/").unwrap());
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(f, &target).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
        std::fs::write(
            dir.path().join("entrypoint.sh"),
            support::images::ENTRYPOINT,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {BUSYBOX}\nRUN rm /bin/tar\nCOPY rootfs/ /\nRUN ln -s /usr/bin/tar /bin/tar && ln -sf /usr/bin/dash /bin/sh\n\
                 COPY entrypoint.sh /entrypoint.sh\nRUN chmod 755 /entrypoint.sh\n"
            ),
        )
        .unwrap();
        let mut build = Command::new("docker");
        build
            .args(["build", "-q", "-t", &image])
            .arg(dir.path())
            .env("DOCKER_BUILDKIT", "0");
        if let Some(host) = docker_host {
            build.env("DOCKER_HOST", host);
        }
        let out = build.output().expect("docker CLI runs");
        assert!(
            out.status.success(),
            "building {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        image
    }
}

/// Fails under CI=true, otherwise says why the test is skipped.
fn available() -> bool {
    let docker = Command::new("docker")
        .args(["info", "--format", "{{.ID}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    let binary = apiserver::binary();
    let problem = match (docker, &binary) {
        (false, _) => "dockerd not reachable (scripts/test-env.sh up)".to_string(),
        (_, Err(e)) => e.to_string(),
        _ => return true,
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("test environment unavailable under CI=true: {problem}");
    }
    eprintln!("skipped: {problem}");
    false
}

/// What most tests start with: a test cluster, the scripted orchestrator
/// and a state dir for the workers.
struct Rig {
    cluster: Cluster,
    server: ScriptedServer,
    state: tempfile::TempDir,
}

impl Rig {
    /// A cluster started with `cluster_args`; None where the test
    /// environment is missing (outside CI: [`available`]).
    async fn start(cluster_args: &[&str]) -> Option<Rig> {
        if !available() {
            return None;
        }
        Some(Rig {
            cluster: Cluster::start(cluster_args),
            server: ScriptedServer::start().await,
            state: tempfile::tempdir().unwrap(),
        })
    }

    /// A kubernetes worker `id` on `config` and the rig's state dir,
    /// connected.
    async fn worker(&self, id: &str, config: &Path) -> Worker {
        worker(&self.server, id, config, self.state.path(), &[]).await
    }
}

/// One test API server process on its own state dir.
struct Cluster {
    server: ApiServerProcess,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("apiserver");
        std::fs::create_dir(&state).unwrap();
        let mut args = vec!["--bookmark-interval-ms", "300", "--pull-backoff-ms", "500"];
        args.extend_from_slice(extra);
        let server = ApiServerProcess::start(&apiserver::binary().unwrap(), &state, &args)
            .expect("start oz-test-apiserver");
        Cluster { server, dir }
    }

    /// A config file with `backend.kubernetes` (the given extra keys
    /// indented under it) for this server.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let mut yaml = format!(
            "backend:\n  kubernetes:\n    kubeconfig: {}\n    namespace: default\n    image_pull_policy: IfNotPresent\n    preflight_image: {BUSYBOX}\n",
            self.server.kubeconfig().display()
        );
        for line in extra.lines() {
            yaml.push_str("    ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// A raw request with curl: (HTTP status, body as JSON or a string).
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, body) = self
            .server
            .curl(method, path, body, "application/json", true);
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (code, value)
    }

    fn admin(&self, what: &str) {
        let (code, v) = self.request("POST", &format!("/admin/{what}"), None);
        assert_eq!(code, 200, "admin {what}: {v}");
    }

    fn job(&self, name: &str) -> Option<Value> {
        let (code, v) = self.request(
            "GET",
            &format!("/apis/batch/v1/namespaces/default/jobs/{name}"),
            None,
        );
        match code {
            200 => Some(v),
            404 => None,
            _ => panic!("GET job {name}: {code} {v}"),
        }
    }

    fn pods(&self, job: &str) -> Vec<Value> {
        let (code, v) = self.request(
            "GET",
            &format!("/api/v1/namespaces/default/pods?labelSelector=job-name%3D{job}"),
            None,
        );
        assert_eq!(code, 200, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `check` holds, polling the API server.
    async fn until<T>(&self, what: &str, mut check: impl FnMut(&Cluster) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never happened: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the Job's Pod runs its `task` container; the Pod.
    async fn task_running(&self, job: &str) -> Value {
        self.until(&format!("the task container of {job} runs"), |c| {
            c.pods(job).into_iter().find(|p| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|s| {
                        s.iter()
                            .any(|s| s["name"] == "task" && s["state"]["running"].is_object())
                    })
            })
        })
        .await
    }

    fn delete_job(&self, name: &str) {
        let (code, v) = self.request(
            "DELETE",
            &format!("/apis/batch/v1/namespaces/default/jobs/{name}"),
            Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})),
        );
        assert_eq!(code, 200, "{v}");
    }

    /// Every object the server stored matched its schema, and it refused
    /// no object the runtime sent (each would have failed a task).
    fn self_check(&self) {
        let (code, body) = self.request("GET", "/admin/self-check", None);
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body["violations"],
            json!([]),
            "the server stored invalid objects"
        );
    }
}

/// The Go worker's Job name: `oz-task-<run>-exec-<last 8 of the execution>`.
fn go_job_name(task: &str, exec: &str) -> String {
    format!("oz-task-{task}-exec-{}", &exec[exec.len() - 8..])
}

/// The Go worker's label hash: hex of the first 8 bytes of SHA-256.
fn go_hash(value: &str) -> String {
    hex::encode(&Sha256::digest(value.as_bytes())[..8])
}

struct Worker {
    process: WorkerProcess,
    conn: ServerConn,
}

/// Starts a kubernetes worker on `config` and accepts its connection.
async fn worker(
    server: &ScriptedServer,
    id: &str,
    config: &Path,
    state: &Path,
    extra: &[&str],
) -> Worker {
    let process = spawn_worker(server, id, config, state, extra);
    let conn = server
        .accept_offering(WITHIN, Some(extensions::TASK_OUTPUT))
        .await;
    Worker { process, conn }
}

fn spawn_worker(
    server: &ScriptedServer,
    id: &str,
    config: &Path,
    state: &Path,
    extra: &[&str],
) -> WorkerProcess {
    spawn_worker_logging(
        server,
        id,
        config,
        state,
        extra,
        "info,oz_worker=debug,oz_runtime_kubernetes=debug",
    )
}

/// [`spawn_worker`] with the log filter `oz_log` (`OZ_LOG`).
fn spawn_worker_logging(
    server: &ScriptedServer,
    id: &str,
    config: &Path,
    state: &Path,
    extra: &[&str],
    oz_log: &str,
) -> WorkerProcess {
    let mut args: Vec<String> = vec![
        "--backend".into(),
        "kubernetes".into(),
        "--config-file".into(),
        config.display().to_string(),
        "--max-concurrent-tasks".into(),
        "4".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let opts = WorkerOptions {
        worker_id: id,
        extra_args: args,
        state_dir: Some(state.to_path_buf()),
        env: vec![("OZ_LOG".into(), oz_log.into())],
        ..Default::default()
    };
    WorkerProcess::spawn_at(&server.ws_url, ROOT, KEY, Engine::None, opts)
}

/// An assignment of the demo agent with `env` (OZ_DEMO_*), its execution id
/// `exec-<task>-0001`.
fn assignment(task: &str, env: &[(&str, &str)]) -> TaskAssignment {
    TaskAssignment {
        task_id: task.into(),
        execution_id: Some(format!("exec-{task}-0001")),
        task: Task {
            id: task.into(),
            title: "k8s".into(),
            ..Default::default()
        },
        docker_image: Some(BUSYBOX.into()),
        sidecar_image: Some(sidecar_image().into()),
        env_vars: env
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
        additional_oz_args: vec!["--from-the-test".into()],
        ..Default::default()
    }
}

fn exec_of(a: &TaskAssignment) -> String {
    a.execution_id.clone().unwrap()
}

impl Worker {
    async fn assign(&mut self, a: &TaskAssignment) {
        self.conn
            .send_text(&encode(&ServerMessage::TaskAssignment(Box::new(a.clone()))))
            .await;
    }

    /// The terminal report of `task` (claims and output of it collected).
    async fn report(&mut self, task: &str) -> (WorkerMessage, String) {
        let mut output = String::new();
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(m) = self.conn.next_message(left).await else {
                panic!(
                    "no report of {task}; output so far {output:?}; log:\n{}",
                    self.process.log_text()
                );
            };
            if m.task_id() != task {
                continue;
            }
            match m {
                WorkerMessage::TaskOutput(o) => output.push_str(&o.data),
                WorkerMessage::TaskClaimed(_) => {}
                WorkerMessage::TaskRejected(r) => panic!("rejected: {r:?}"),
                m => return (m, output),
            }
        }
    }

    /// The terminal reports (`task_completed`, `task_failed`) of `count`
    /// tasks, by task id, in whichever order they come; a second report of
    /// a task or a rejection fails the test.
    async fn reports(&mut self, count: usize) -> BTreeMap<String, WorkerMessage> {
        let mut reports = BTreeMap::new();
        while reports.len() < count {
            let Some(m) = self.conn.next_message(WITHIN).await else {
                panic!(
                    "reports so far {reports:?}; log:\n{}",
                    self.process.log_text()
                );
            };
            match m {
                WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_) => {
                    let previous = reports.insert(m.task_id().to_string(), m);
                    assert!(previous.is_none(), "a second report: {previous:?}");
                }
                WorkerMessage::TaskRejected(r) => panic!("rejected: {r:?}"),
                _ => {}
            }
        }
        reports
    }

    /// [`Worker::reports`] where every report is a `task_failed`.
    async fn failures(&mut self, count: usize) -> BTreeMap<String, TaskFailed> {
        self.reports(count)
            .await
            .into_iter()
            .map(|(task, m)| match m {
                WorkerMessage::TaskFailed(f) => (task, f),
                other => panic!("expected task_failed of {task}, got {other:?}"),
            })
            .collect()
    }

    async fn failed(&mut self, task: &str) -> TaskFailed {
        match self.report(task).await.0 {
            WorkerMessage::TaskFailed(f) => f,
            other => panic!("expected task_failed, got {other:?}"),
        }
    }

    /// Waits for the claim of `task`. Messages about other tasks are
    /// skipped: a report whose delivery the previous connection never
    /// confirmed (no pong read after it) is rightly sent again.
    async fn claimed(&mut self, task: &str) {
        loop {
            match self.conn.next_message(WITHIN).await {
                Some(m) if m.task_id() != task => continue,
                Some(WorkerMessage::TaskClaimed(_)) => return,
                other => panic!("expected task_claimed of {task}, got {other:?}"),
            }
        }
    }
}

/// The kubernetes part of a failure's details, checked for the schema
/// version and the Pod and container parts.
fn k8s_details(f: &TaskFailed) -> KubernetesFailureDetails {
    let d = f
        .failure_details
        .as_ref()
        .and_then(|d| d.kubernetes.clone())
        .unwrap_or_else(|| panic!("no failure_details.kubernetes: {f:?}"));
    assert_eq!(d.schema_version, 1, "{d:?}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_runs_the_agent_in_the_go_workers_job_and_cleanup_deletes_it() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let id = unique_id("k8s-ok");
    let mut w = rig.worker(&id, &cluster.config("c", "")).await;
    assert!(
        w.process.log_text().contains("kubernetes v1.33"),
        "the worker names the server it runs on:\n{}",
        w.process.log_text()
    );

    let a = assignment("k8sok1", &[("OZ_DEMO_FLAVOUR", "vanilla")]);
    w.assign(&a).await;
    w.claimed("k8sok1").await;
    let name = go_job_name("k8sok1", &exec_of(&a));
    // The Job as the Go worker names and labels it, read while it runs.
    let job = cluster.until("the Job exists", |c| c.job(&name)).await;
    let labels = &job["metadata"]["labels"];
    assert_eq!(labels["oz-worker-id"], id.as_str(), "{job}");
    assert_eq!(labels["oz-worker-hash"], go_hash(&id).as_str(), "{job}");
    assert_eq!(labels["oz-task-id"], "k8sok1", "{job}");
    assert_eq!(labels["oz-task-hash"], go_hash("k8sok1").as_str(), "{job}");
    assert_eq!(labels["oz-execution-hash"], go_hash(&exec_of(&a)).as_str());
    assert_eq!(job["spec"]["backoffLimit"], 0, "{job}");
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 86400, "{job}");
    let pod_spec = &job["spec"]["template"]["spec"];
    assert_eq!(pod_spec["restartPolicy"], "Never");
    let task = &pod_spec["containers"][0];
    assert_eq!(task["name"], "task");
    assert_eq!(task["imagePullPolicy"], "IfNotPresent");
    let env: Vec<(String, String)> = task["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (k, v) in [
        ("OZ_DEMO_FLAVOUR", "vanilla"),
        ("OZ_WORKER_BACKEND", "kubernetes"),
        ("OZ_RUN_ID", "k8sok1"),
        ("TASK_ID", "k8sok1"),
    ] {
        assert!(
            env.contains(&(k.to_string(), v.to_string())),
            "{k}={v} missing from {env:?}"
        );
    }

    let (report, output) = w.report("k8sok1").await;
    match report {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.task_state, None);
            assert_eq!(c.execution_id.as_deref(), Some(exec_of(&a).as_str()));
        }
        other => panic!("expected task_completed, got {other:?}"),
    }
    // The agent really ran, in the workspace, with its arguments and env.
    assert!(
        output.contains("oz demo agent: task k8sok1 started in /workspace"),
        "{output:?}"
    );
    assert!(output.contains("--from-the-test"), "{output:?}");
    assert!(output.contains("oz demo agent: done"), "{output:?}");

    // Cleanup on: the succeeded Job and its Pod go.
    cluster
        .until("the succeeded Job is deleted", |c| {
            (c.job(&name).is_none() && c.pods(&name).is_empty()).then_some(())
        })
        .await;

    // --no-cleanup: the next worker's Job has no TTL and is kept.
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    let kept_id = unique_id("k8s-keep");
    let mut w = worker(
        &rig.server,
        &kept_id,
        &cluster.config("c", ""),
        rig.state.path(),
        &["--no-cleanup"],
    )
    .await;
    let a = assignment("k8skeep1", &[]);
    w.assign(&a).await;
    assert!(matches!(
        w.report("k8skeep1").await.0,
        WorkerMessage::TaskCompleted(_)
    ));
    let name = go_job_name("k8skeep1", &exec_of(&a));
    let job = cluster.job(&name).expect("the Job is kept");
    assert!(job["spec"]["ttlSecondsAfterFinished"].is_null(), "{job}");
    // Past the moment a succeeded Job would have been deleted.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(cluster.job(&name).is_some(), "--no-cleanup keeps the Job");
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_diagnosed_with_reasons_exit_codes_and_details() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let id = unique_id("k8s-fail");
    // A memory limit from the pod template for the OOM case; the others
    // stay well under it.
    let config = cluster.config(
        "c",
        "pod_template:\n  containers:\n  - name: task\n    resources:\n      limits: {memory: 64Mi}\n      requests: {memory: 64Mi}",
    );
    let mut w = rig.worker(&id, &config).await;

    let exit = assignment("k8sexit", &[("OZ_DEMO_EXIT", "3")]);
    let oom = assignment("k8soom", &[("OZ_DEMO_BEHAVIOUR", "oom")]);
    let mut pull = assignment("k8spull", &[]);
    pull.docker_image = Some("127.0.0.1:1/oz-test/absent:none".into());
    for a in [&exit, &oom, &pull] {
        w.assign(a).await;
    }
    let reports = w.failures(3).await;

    let f = &reports["k8sexit"];
    assert_eq!(f.failure_reason, FailureReason::ContainerExit, "{f:?}");
    assert_eq!(f.exit_code, Some(3), "{f:?}");
    assert_eq!(f.execution_id.as_deref(), Some(exec_of(&exit).as_str()));
    let d = k8s_details(f);
    let pod = d.pod.as_ref().expect("pod details");
    assert!(
        pod.name
            .starts_with(&go_job_name("k8sexit", &exec_of(&exit))),
        "{d:?}"
    );
    let c = d.container.as_ref().expect("container details");
    assert_eq!(c.name, "task", "{d:?}");
    assert_eq!(c.raw_exit_code, Some(3), "{d:?}");
    assert_eq!(c.termination_reason, "Error", "{d:?}");
    assert!(d.job.is_some(), "{d:?}");

    let f = &reports["k8soom"];
    assert_eq!(f.failure_reason, FailureReason::ContainerOom, "{f:?}");
    assert_eq!(f.exit_code, Some(137), "{f:?}");
    let d = k8s_details(f);
    assert_eq!(
        d.container.as_ref().map(|c| c.termination_reason.as_str()),
        Some("OOMKilled"),
        "{d:?}"
    );

    let f = &reports["k8spull"];
    assert_eq!(f.failure_reason, FailureReason::ImagePull, "{f:?}");
    assert!(f.message.contains("absent"), "names the image: {f:?}");
    k8s_details(f);

    // The Jobs whose Pod ended finished Failed and are kept for their TTL
    // (the Go worker's rule); the one whose Pod would retry the pull
    // forever never finished, so it was deleted, its Pod gone before the
    // report.
    for a in [&exit, &oom] {
        let name = go_job_name(&a.task_id, &exec_of(a));
        let job = cluster
            .until(&format!("{name} is Failed"), |c| {
                let job = c.job(&name).expect("the failed Job is kept");
                job["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Failed" && c["status"] == "True")
                    .then_some(job)
            })
            .await;
        assert!(job["metadata"]["deletionTimestamp"].is_null(), "{job}");
    }
    // The unfinished Job is deleted after the report (once the core has
    // recorded it), with its Pod.
    let pull_job = go_job_name("k8spull", &exec_of(&pull));
    cluster
        .until("the unfinished Job and its Pod are deleted", |c| {
            (c.job(&pull_job).is_none() && c.pods(&pull_job).is_empty()).then_some(())
        })
        .await;

    // A setup_command that fails: the init container is the cause.
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    let config = cluster.config("setup", "setup_command: 'echo preparing; exit 7'");
    let mut w = rig.worker(&unique_id("k8s-setup"), &config).await;
    w.assign(&assignment("k8ssetup", &[])).await;
    let f = w.failed("k8ssetup").await;
    assert_eq!(f.failure_reason, FailureReason::InitContainer, "{f:?}");
    assert!(f.message.contains("setup"), "{f:?}");
    let d = k8s_details(&f);
    assert_eq!(
        d.container.as_ref().map(|c| c.name.as_str()),
        Some("setup"),
        "{d:?}"
    );
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_deletes_the_job_and_reports_cancelled_once_the_pod_is_gone() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let mut w = rig
        .worker(
            &unique_id("k8s-cancel"),
            // A short grace period from the pod template: the agent's shell
            // ignores SIGTERM, so the Pod lasts until the SIGKILL after it.
            &cluster.config("c", "pod_template:\n  terminationGracePeriodSeconds: 3"),
        )
        .await;
    let a = assignment("k8scancel", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    let name = go_job_name("k8scancel", &exec_of(&a));
    w.assign(&a).await;
    w.claimed("k8scancel").await;
    cluster.task_running(&name).await;
    w.conn
        .send_text(&encode(&ServerMessage::TaskCancellation(
            TaskCancellation {
                task_id: "k8scancel".into(),
            },
        )))
        .await;
    // Foreground propagation: the Job stays, marked for deletion with the
    // foregroundDeletion finalizer, until its Pod is gone (the agent's
    // shell ignores SIGTERM, so the Pod takes its grace period).
    let job = cluster
        .until("the Job is being deleted in the foreground", |c| {
            c.job(&name).filter(|j| {
                j["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == "foregroundDeletion"))
            })
        })
        .await;
    assert!(job["metadata"]["deletionTimestamp"].is_string(), "{job}");
    match w.report("k8scancel").await.0 {
        WorkerMessage::TaskCompleted(c) => assert_eq!(c.task_state.as_deref(), Some("CANCELLED")),
        other => panic!("expected a CANCELLED task_completed, got {other:?}"),
    }
    // Reported only once the Pod was gone.
    assert_eq!(cluster.pods(&name), Vec::<Value>::new());
    cluster
        .until("the Job is gone", |c| c.job(&name).is_none().then_some(()))
        .await;
    let log = w.process.log_text();
    assert!(
        log.contains("deleting the task's Job (foreground)"),
        "{log}"
    );
    cluster.self_check();
}

/// SIGTERM leaves the running Job and sends no report; a new worker on the
/// same state dir follows it to its end and reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_the_job_and_a_restart_reattaches_and_reports() {
    leave_and_reattach(15, "k8sterm").await;
}

/// A SIGKILLed worker's Job runs on; the restarted worker reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_the_job_and_a_restart_reattaches_and_reports() {
    leave_and_reattach(9, "k8skill").await;
}

async fn leave_and_reattach(signal: i32, task: &str) {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-reattach");

    {
        let mut w = rig.worker(&id, &config).await;
        let a = assignment(
            task,
            &[
                ("OZ_DEMO_BEHAVIOUR", "sleep"),
                ("OZ_DEMO_SLEEP", "6"),
                ("OZ_DEMO_EXIT", "0"),
            ],
        );
        let name = go_job_name(task, &exec_of(&a));
        w.assign(&a).await;
        w.claimed(task).await;
        let pod = cluster.task_running(&name).await;
        w.process.signal(signal);
        let status = w.process.wait_exit(WITHIN).await;
        if signal == 15 {
            assert!(status.success(), "{status:?}\n{}", w.process.log_text());
            // No report was sent for the task the worker left running (a
            // SIGKILLed worker sends nothing, and resets the connection).
            while let Some(m) = w.conn.next_message(Duration::from_secs(2)).await {
                assert!(
                    !matches!(
                        m,
                        WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_)
                    ),
                    "a report at shutdown: {m:?}"
                );
            }
        }
        let job = cluster.job(&name).expect("the Job survives the worker");
        assert!(job["metadata"]["deletionTimestamp"].is_null(), "{job}");
        assert_eq!(
            cluster.pods(&name)[0]["metadata"]["uid"],
            pod["metadata"]["uid"],
            "the same Pod runs on"
        );

        let mut w = rig.worker(&id, &config).await;
        let (report, _) = w.report(task).await;
        match report {
            WorkerMessage::TaskCompleted(c) => {
                assert_eq!(c.execution_id.as_deref(), Some(exec_of(&a).as_str()))
            }
            other => panic!("expected task_completed after reattach, got {other:?}"),
        }
        assert!(
            cluster.pods(&name).len() <= 1,
            "no second Pod was made for the execution"
        );
        w.process.signal(15);
        w.process.wait_exit(WITHIN).await;
    }
    cluster.self_check();
}

/// #86: an execution's Job that already exists (its worker hung, frozen
/// here with SIGSTOP, and the execution was offered to a worker with an
/// empty journal) is adopted, not a failure. (A dead worker's Jobs are
/// taken over at the start instead: see the takeover tests at the end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_job_of_the_same_execution_is_adopted() {
    if !available() {
        return;
    }
    let cluster = Cluster::start(&[]);
    let server = ScriptedServer::start().await;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-adopt");
    let a = assignment(
        "k8sadopt",
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "4")],
    );
    let name = go_job_name("k8sadopt", &exec_of(&a));

    let first_state = tempfile::tempdir().unwrap();
    let mut w = worker(&server, &id, &config, first_state.path(), &[]).await;
    w.assign(&a).await;
    w.claimed("k8sadopt").await;
    let pod = cluster.task_running(&name).await;
    // SIGSTOP: alive, so the next worker does not take its Job over.
    w.process.signal(19);
    let mut frozen = w;

    // The orchestrator assigns the same execution again to a worker with
    // an empty journal.
    let second_state = tempfile::tempdir().unwrap();
    let mut w = worker(&server, &id, &config, second_state.path(), &[]).await;
    w.assign(&a).await;
    assert!(
        matches!(
            w.report("k8sadopt").await.0,
            WorkerMessage::TaskCompleted(_)
        ),
        "{}",
        w.process.log_text()
    );
    assert!(
        w.process
            .log_text()
            .contains("adopting this execution's existing Job"),
        "{}",
        w.process.log_text()
    );
    assert!(
        !w.process.log_text().contains("taking over an execution"),
        "the Job of a live worker is not taken over at the start:\n{}",
        w.process.log_text()
    );
    let pods = cluster.pods(&name);
    assert!(
        pods.is_empty()
            || pods
                .iter()
                .all(|p| p["metadata"]["uid"] == pod["metadata"]["uid"]),
        "only the first Pod ever ran: {pods:?}"
    );
    frozen.process.signal(9);
    frozen.process.wait_exit(WITHIN).await;
    drop(first_state);
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_and_watch_expiry_mid_task_are_survived() {
    let Some(mut rig) = Rig::start(&[]).await else {
        return;
    };
    let mut w = rig
        .worker(&unique_id("k8s-apiserver"), &rig.cluster.config("c", ""))
        .await;
    let cluster = &mut rig.cluster;
    let restarted = assignment(
        "k8srestart",
        &[
            ("OZ_DEMO_BEHAVIOUR", "sleep"),
            ("OZ_DEMO_SLEEP", "5"),
            ("OZ_DEMO_EXIT", "4"),
        ],
    );
    let expired = assignment(
        "k8sexpire",
        &[
            ("OZ_DEMO_BEHAVIOUR", "sleep"),
            ("OZ_DEMO_SLEEP", "5"),
            ("OZ_DEMO_EXIT", "5"),
        ],
    );
    w.assign(&restarted).await;
    w.assign(&expired).await;
    cluster
        .task_running(&go_job_name("k8srestart", &exec_of(&restarted)))
        .await;
    cluster
        .task_running(&go_job_name("k8sexpire", &exec_of(&expired)))
        .await;

    // Killed and restarted while the worker watches both.
    cluster.server.restart().unwrap();
    // Then every watch from before is expired and closed: the watchers
    // must re-list.
    cluster.admin("compact");
    cluster.admin("close-watches");

    let reports = w.failures(2).await;
    assert_eq!(reports["k8srestart"].exit_code, Some(4), "{reports:?}");
    assert_eq!(reports["k8sexpire"].exit_code, Some(5), "{reports:?}");
    for f in reports.values() {
        assert_eq!(f.failure_reason, FailureReason::ContainerExit, "{f:?}");
    }
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_or_a_pod_evicted_behind_the_workers_back_is_reported() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let mut w = rig
        .worker(&unique_id("k8s-behind"), &cluster.config("c", ""))
        .await;
    let deleted = assignment("k8sdeleted", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    let evicted = assignment("k8sevicted", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    w.assign(&deleted).await;
    w.assign(&evicted).await;
    let deleted_job = go_job_name("k8sdeleted", &exec_of(&deleted));
    let evicted_job = go_job_name("k8sevicted", &exec_of(&evicted));
    cluster.task_running(&deleted_job).await;
    let pod = cluster.task_running(&evicted_job).await;

    cluster.delete_job(&deleted_job);
    cluster.admin(&format!(
        "evict?namespace=default&name={}",
        pod["metadata"]["name"].as_str().unwrap()
    ));

    let reports = w.failures(2).await;
    let f = &reports["k8sdeleted"];
    assert_eq!(f.failure_reason, FailureReason::JobWatch, "{f:?}");
    assert!(
        f.message.contains(&deleted_job) && f.message.contains("deleted"),
        "the message names the Job and what happened: {}",
        f.message
    );
    let f = &reports["k8sevicted"];
    assert_eq!(f.failure_reason, FailureReason::JobFailed, "{f:?}");
    assert!(
        f.message.to_lowercase().contains("evicted"),
        "{}",
        f.message
    );
    k8s_details(f);
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_a_role_without_job_create_and_passes_with_the_charts_role() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let narrow = dir.path().join("role.yaml");
    std::fs::write(
        &narrow,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: narrow\nrules:\n- apiGroups: [\"batch\"]\n  resources: [\"jobs\"]\n  verbs: [\"get\", \"list\", \"watch\", \"delete\"]\n- apiGroups: [\"\"]\n  resources: [\"pods\", \"pods/log\", \"events\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n",
    )
    .unwrap();
    let server = ScriptedServer::start().await;
    {
        let cluster = Cluster::start(&["--rbac-role", narrow.to_str().unwrap()]);
        let state = tempfile::tempdir().unwrap();
        let mut w = spawn_worker(
            &server,
            &unique_id("k8s-rbac"),
            &cluster.config("c", ""),
            state.path(),
            &[],
        );
        let status = w.wait_exit(WITHIN).await;
        let log = w.log_text();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("forbidden") || log.contains("Forbidden"),
            "{log}"
        );
        assert!(log.contains("jobs"), "names the resource:\n{log}");
        assert!(log.contains("create"), "names the verb:\n{log}");
        let (_, v) = cluster.request("GET", "/admin/forbidden", None);
        assert!(
            v["forbidden"]
                .as_array()
                .is_some_and(|f| f.iter().any(|r| r == "create batch/jobs ")),
            "the server's record of refusals: {v}"
        );
        cluster.self_check();
    }
    let role = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base/role.yaml");
    let cluster = Cluster::start(&["--rbac-role", role.to_str().unwrap()]);
    let state = tempfile::tempdir().unwrap();
    let mut w = worker(
        &server,
        &unique_id("k8s-role"),
        &cluster.config("c", ""),
        state.path(),
        &[],
    )
    .await;
    // And a task runs to its end under exactly that Role.
    w.assign(&assignment("k8srole", &[("OZ_DEMO_EXIT", "2")]))
        .await;
    let f = w.failed("k8srole").await;
    assert_eq!(f.exit_code, Some(2), "{f:?}");
    cluster.self_check();
}

// ---------------------------------------------------------------------------
// Taking over without the journal (issue 19 item 4, the Go worker's
// #74/#84): the worker Pod is replaced and its state dir, an emptyDir, goes
// with the journal. The Jobs carry their exact ids and their holder process
// as annotations; a new worker of the same id finds those of a dead holder
// and follows them to their end.
// ---------------------------------------------------------------------------

/// The container id of the `task` container of a running Pod.
fn task_container_id(pod: &Value) -> String {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "task")
        .and_then(|s| s["containerID"].as_str())
        .and_then(|id| id.strip_prefix("docker://"))
        .unwrap_or_else(|| panic!("no task container id in {pod}"))
        .to_string()
}

/// Ends the demo agent's `sleep` in a running Pod's task container, so the
/// agent prints its last line and exits (with `OZ_DEMO_EXIT`).
fn end_the_sleep(pod: &Value) {
    let out = Command::new("docker")
        .args([
            "exec",
            &task_container_id(pod),
            "sh",
            "-c",
            "kill $(pidof sleep)",
        ])
        .output()
        .expect("docker exec runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The task Jobs of a worker id (by the Go worker's label), by name.
fn task_jobs_of(cluster: &Cluster, worker_id: &str) -> Vec<String> {
    let (code, v) = cluster.request(
        "GET",
        &format!(
            "/apis/batch/v1/namespaces/default/jobs?labelSelector=oz-worker-hash%3D{}",
            go_hash(worker_id)
        ),
        None,
    );
    assert_eq!(code, 200, "{v}");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["metadata"]["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("oz-task-"))
        .collect()
}

/// No further terminal report of a task whose id starts with `task`
/// arrives on the connection.
async fn no_second_report(w: &mut Worker, task: &str) {
    while let Some(m) = w.conn.next_message(Duration::from_secs(3)).await {
        assert!(
            !m.task_id().starts_with(task)
                || !matches!(
                    m,
                    WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_)
                ),
            "a second report of {task}: {m:?}"
        );
    }
}

/// The worker is SIGKILLed while its Job runs and its state dir is deleted;
/// a new worker with the same id (a replaced Pod) takes the Job over from
/// its annotations: one report with the right result, live output from
/// where the log stood, no second Job or Pod, the Job cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_worker_without_its_journal_takes_over_its_running_job() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-takeover");
    let task = "k8stakeover";
    // Sleeps until the test ends the sleep, then prints its last line.
    let a = assignment(
        task,
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "600")],
    );
    let name = go_job_name(task, &exec_of(&a));

    let mut w = rig.worker(&id, &config).await;
    w.assign(&a).await;
    w.claimed(task).await;
    let pod = cluster.task_running(&name).await;
    let job = cluster.job(&name).unwrap();
    assert_eq!(job["metadata"]["annotations"]["dev.oz.task-id"], task);
    assert_eq!(
        job["metadata"]["annotations"]["dev.oz.execution-id"],
        exec_of(&a).as_str()
    );
    w.process.signal(9);
    w.process.wait_exit(WITHIN).await;
    // The replaced Pod's emptyDir: the journal is gone.
    std::fs::remove_dir_all(rig.state.path()).unwrap();

    let mut w = rig.worker(&id, &config).await;
    w.process
        .wait_for_log("following the task's log from its current end", WITHIN)
        .await;
    assert!(
        w.process
            .log_text()
            .contains("taking over an execution a dead instance of this worker left"),
        "{}",
        w.process.log_text()
    );
    // Now the task ends.
    end_the_sleep(&pod);

    let (report, output) = w.report(task).await;
    match &report {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.execution_id.as_deref(), Some(exec_of(&a).as_str()))
        }
        other => panic!(
            "expected task_completed, got {other:?}\n{}",
            w.process.log_text()
        ),
    }
    assert!(
        output.contains("oz demo agent: done"),
        "live output after the takeover: {output:?}"
    );
    assert!(
        !output.contains("started in"),
        "what the dead worker had sent is not sent again: {output:?}"
    );
    no_second_report(&mut w, task).await;
    let pods = cluster.pods(&name);
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["uid"] == pod["metadata"]["uid"]),
        "no second Pod: {pods:?}"
    );
    // Cleanup deletes the succeeded Job (a few seconds after the report);
    // no other Job was made for the worker id.
    cluster
        .until("the succeeded Job is deleted", |c| {
            c.job(&name).is_none().then_some(())
        })
        .await;
    assert_eq!(task_jobs_of(cluster, &id), Vec::<String>::new());
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    cluster.self_check();
}

/// The same, with the Jobs finishing while no worker runs: a new worker
/// without the journal reports each once with its result; the succeeded
/// Job is deleted, the failed one kept for its TTL (the Go worker's rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_end_while_no_worker_runs_are_reported_by_a_worker_without_the_journal() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-ended");
    let sleep = [("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "600")];
    let ok = assignment("k8sendedok", &sleep);
    let mut fail = assignment("k8sendedfail", &sleep);
    fail.env_vars.insert("OZ_DEMO_EXIT".into(), "3".into());
    let (ok_job, fail_job) = (
        go_job_name("k8sendedok", &exec_of(&ok)),
        go_job_name("k8sendedfail", &exec_of(&fail)),
    );

    let mut w = rig.worker(&id, &config).await;
    for a in [&ok, &fail] {
        w.assign(a).await;
        w.claimed(&a.task_id).await;
    }
    let ok_pod = cluster.task_running(&ok_job).await;
    let fail_pod = cluster.task_running(&fail_job).await;
    w.process.signal(9);
    w.process.wait_exit(WITHIN).await;
    std::fs::remove_dir_all(rig.state.path()).unwrap();

    // Both end while no worker runs.
    for pod in [&ok_pod, &fail_pod] {
        end_the_sleep(pod);
    }
    for (job, condition) in [(&ok_job, "Complete"), (&fail_job, "Failed")] {
        cluster
            .until(&format!("{job} is {condition}"), |c| {
                c.job(job)?["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|k| k["type"] == condition && k["status"] == "True")
                    .then_some(())
            })
            .await;
    }

    let mut w = rig.worker(&id, &config).await;
    let reports = w.reports(2).await;
    let report = &reports["k8sendedok"];
    assert!(
        matches!(report, WorkerMessage::TaskCompleted(c) if c.execution_id.as_deref() == Some(exec_of(&ok).as_str())),
        "{report:?}\n{}",
        w.process.log_text()
    );
    let WorkerMessage::TaskFailed(f) = &reports["k8sendedfail"] else {
        panic!("expected task_failed: {reports:?}");
    };
    assert_eq!(f.exit_code, Some(3), "{f:?}");
    assert_eq!(f.failure_reason, FailureReason::ContainerExit, "{f:?}");
    assert_eq!(f.execution_id.as_deref(), Some(exec_of(&fail).as_str()));
    no_second_report(&mut w, "k8sended").await;
    for (job, pod) in [(&ok_job, &ok_pod), (&fail_job, &fail_pod)] {
        assert!(
            cluster
                .pods(job)
                .iter()
                .all(|p| p["metadata"]["uid"] == pod["metadata"]["uid"]),
            "no second Pod of {job}"
        );
    }
    cluster
        .until("the succeeded Job is deleted", |c| {
            c.job(&ok_job).is_none().then_some(())
        })
        .await;
    assert_eq!(
        task_jobs_of(cluster, &id),
        vec![fail_job.clone()],
        "the failed Job is kept"
    );
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    cluster.self_check();
}

/// Waits until some process's log holds each needle; for each needle the
/// index of the first process whose log holds it.
async fn logged_by(procs: &[&WorkerProcess], needles: &[&str]) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
        let found: Vec<Option<usize>> = needles
            .iter()
            .map(|n| logs.iter().position(|l| l.contains(n)))
            .collect();
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never logged {needles:?}:\n{}",
            logs.join("\n------\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two workers of one id start at once without a journal (two replicas
/// replacing a dead one, each with its own emptyDir) and both find the Job
/// the dead worker left. Each claims it by patching the holder
/// annotations on the resourceVersion it listed; the API server holds the
/// two patches until both have arrived, so they really race on the same
/// version. Exactly one wins (its process is the Job's holder now) and
/// reports the task once; the other's patch is refused (409), it logs that
/// another instance claimed the Job first and reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_starting_at_once_take_over_a_dead_workers_job_exactly_once() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-claim");
    let task = "k8sclaimrace";
    let a = assignment(
        task,
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "600")],
    );
    let name = go_job_name(task, &exec_of(&a));

    let mut w = rig.worker(&id, &config).await;
    w.assign(&a).await;
    w.claimed(task).await;
    let pod = cluster.task_running(&name).await;
    let dead = cluster.job(&name).unwrap()["metadata"]["annotations"]["dev.oz.instance"].clone();
    w.process.signal(9);
    w.process.wait_exit(WITHIN).await;

    cluster.admin("hold?verb=patch&resource=jobs&count=2&timeout_ms=60000");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut procs: Vec<WorkerProcess> = dirs
        .iter()
        .map(|d| spawn_worker(&rig.server, &id, &config, d.path(), &[]))
        .collect();
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(
            rig.server
                .accept_offering(WITHIN, Some(extensions::TASK_OUTPUT))
                .await,
        );
    }
    let who = logged_by(
        &[&procs[0], &procs[1]],
        &[
            "taking over an execution a dead instance of this worker left",
            "another instance claimed it first",
        ],
    )
    .await;
    let (winner, loser) = (who[0], who[1]);
    assert_ne!(winner, loser, "one takes it over, the other leaves it");
    assert!(
        !procs[loser]
            .log_text()
            .contains("taking over an execution a dead instance of this worker left"),
        "{}",
        procs[loser].log_text()
    );
    let holder = cluster.job(&name).unwrap()["metadata"]["annotations"].clone();
    assert_ne!(holder["dev.oz.instance"], dead, "claimed: {holder}");
    assert_eq!(
        holder["dev.oz.pid"],
        procs[winner].pid().to_string().as_str(),
        "the winner is the Job's holder now: {holder}"
    );

    end_the_sleep(&pod);
    // Every message of both connections, until the report and 3 s after:
    // exactly one terminal report of the task.
    let mut reports = Vec::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let quiet = if reports.is_empty() {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_secs(3)
        };
        let (c0, c1) = conns.split_at_mut(1);
        let m = tokio::select! {
            m = c0[0].next_message(quiet) => m,
            m = c1[0].next_message(quiet) => m,
        };
        let Some(m) = m else { break };
        if m.task_id() == task
            && matches!(
                m,
                WorkerMessage::TaskCompleted(_) | WorkerMessage::TaskFailed(_)
            )
        {
            reports.push(m);
        }
    }
    assert_eq!(
        reports.len(),
        1,
        "one report: {reports:?}\nwinner:\n{}",
        procs[winner].log_text()
    );
    assert!(
        matches!(&reports[0], WorkerMessage::TaskCompleted(c) if c.execution_id.as_deref() == Some(exec_of(&a).as_str())),
        "{reports:?}"
    );
    assert!(
        cluster
            .pods(&name)
            .iter()
            .all(|p| p["metadata"]["uid"] == pod["metadata"]["uid"]),
        "no second Pod"
    );
    for p in &mut procs {
        p.signal(15);
        p.wait_exit(WITHIN).await;
    }
    cluster.self_check();
}

/// Under the Go chart's Role (no `patch` on jobs) the claim is refused
/// (403): a replaced worker still takes its dead instance's Job over, as
/// the Go chart's users need, warning that the takeover is unclaimed and
/// naming the verb to grant; one report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_go_charts_role_a_dead_workers_job_is_taken_over_unclaimed_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let role = dir.path().join("go-chart-role.yaml");
    std::fs::write(
        &role,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: oz-agent-worker\nrules:\n\
         - apiGroups: [\"batch\"]\n  resources: [\"jobs\"]\n  verbs: [\"create\", \"get\", \"list\", \"watch\", \"delete\"]\n\
         - apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n\
         - apiGroups: [\"\"]\n  resources: [\"pods/log\"]\n  verbs: [\"get\"]\n\
         - apiGroups: [\"\"]\n  resources: [\"events\"]\n  verbs: [\"list\"]\n",
    )
    .unwrap();
    let Some(rig) = Rig::start(&["--rbac-role", role.to_str().unwrap()]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-goroles");
    let task = "k8sgorole";
    let a = assignment(
        task,
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "600")],
    );
    let name = go_job_name(task, &exec_of(&a));
    let mut w = rig.worker(&id, &config).await;
    w.assign(&a).await;
    w.claimed(task).await;
    let pod = cluster.task_running(&name).await;
    w.process.signal(9);
    w.process.wait_exit(WITHIN).await;
    std::fs::remove_dir_all(rig.state.path()).unwrap();

    // Looking again every second: the Job it follows is skipped before
    // any claim, so the 403 and its warning come once, not every look.
    let mut w = worker(
        &rig.server,
        &id,
        &config,
        rig.state.path(),
        &["--takeover-interval", "1s"],
    )
    .await;
    w.process
        .wait_for_log(
            "taking over an execution a dead instance of this worker left",
            WITHIN,
        )
        .await;
    w.process
        .wait_for_log("not taking over: the journal knows the execution", WITHIN)
        .await;
    let log = w.process.log_text();
    assert!(
        log.contains("without claiming it")
            && log.contains("forbidden")
            && log.contains("grant `patch` on `jobs`"),
        "{log}"
    );
    assert_eq!(log.matches("without claiming it").count(), 1, "{log}");
    end_the_sleep(&pod);
    match w.report(task).await.0 {
        WorkerMessage::TaskCompleted(_) => {}
        other => panic!("expected task_completed, got {other:?}"),
    }
    no_second_report(&mut w, task).await;
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    cluster.self_check();
}

/// A Job whose worker ran in a Pod on another node is judged by that Pod:
/// while the Pod runs, a new worker of the id leaves the Job alone; once
/// the Pod is deleted, the next one takes the Job over and reports it.
/// This machine is one host, so the other node's worker is represented as
/// the API server sees it: its Pod (a real Pod the test creates and
/// deletes) and the holder annotations it writes on its Jobs (the test
/// rewrites the dead worker's to name that Pod and another host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_pod_is_gone_is_taken_over_and_one_whose_pod_runs_is_left() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-podjudged");
    let task = "k8spodjudged";
    let a = assignment(
        task,
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "600")],
    );
    let name = go_job_name(task, &exec_of(&a));
    let job_path = format!("/apis/batch/v1/namespaces/default/jobs/{name}");
    let worker_pod = "oz-agent-worker-old";
    let pod_path = format!("/api/v1/namespaces/default/pods/{worker_pod}");

    let mut w = rig.worker(&id, &config).await;
    w.assign(&a).await;
    w.claimed(task).await;
    let pod = cluster.task_running(&name).await;
    w.process.signal(9);
    w.process.wait_exit(WITHIN).await;
    std::fs::remove_dir_all(rig.state.path()).unwrap();

    // The worker's Pod on the other node, running.
    let (code, v) = cluster.request(
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": worker_pod, "labels": {"app.kubernetes.io/name": "oz-agent-worker"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "worker", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "600"]}]}})),
    );
    assert_eq!(code, 201, "{v}");
    let worker_pod_uid = v["metadata"]["uid"].as_str().unwrap().to_string();
    cluster
        .until("the worker's Pod runs", |c| {
            let (_, p) = c.request("GET", &pod_path, None);
            (p["status"]["phase"] == "Running").then_some(())
        })
        .await;
    let holder = json!({"metadata": {"annotations": {
        "dev.oz.instance": "instance-on-node-b",
        "dev.oz.host": "machine-b/oz-agent-worker-old",
        "dev.oz.pod": format!("default/{worker_pod}"),
        // The Pod's own uid: the same Pod, so alive while it runs.
        "dev.oz.pod-uid": worker_pod_uid,
    }}});
    let (code, v) = cluster.server.curl(
        "PATCH",
        &job_path,
        Some(&holder),
        "application/merge-patch+json",
        true,
    );
    assert_eq!(code, 200, "{v}");

    // Its Pod runs: left alone, not claimed, not reported.
    let state = tempfile::tempdir().unwrap();
    let mut w = worker(&rig.server, &id, &config, state.path(), &[]).await;
    w.process
        .wait_for_log("not taking over: its worker instance still runs", WITHIN)
        .await;
    no_second_report(&mut w, task).await;
    let annotations = cluster.job(&name).unwrap()["metadata"]["annotations"].clone();
    assert_eq!(
        annotations["dev.oz.instance"], "instance-on-node-b",
        "not claimed: {annotations}"
    );
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;

    // Its Pod is deleted (the node reclaimed, the Deployment rolled).
    let (code, v) = cluster.request("DELETE", &pod_path, None);
    assert_eq!(code, 200, "{v}");
    cluster
        .until("the worker's Pod is gone", |c| {
            (c.request("GET", &pod_path, None).0 == 404).then_some(())
        })
        .await;
    let state = tempfile::tempdir().unwrap();
    let mut w = worker(&rig.server, &id, &config, state.path(), &[]).await;
    w.process
        .wait_for_log("following the task's log from its current end", WITHIN)
        .await;
    let log = w.process.log_text();
    assert!(
        log.contains("taking over an execution a dead instance of this worker left")
            && log.contains(&format!("its Pod default/{worker_pod} no longer exists")),
        "{log}"
    );
    // Claimed: this process is the holder, the gone Pod no longer named.
    let annotations = cluster.job(&name).unwrap()["metadata"]["annotations"].clone();
    assert_eq!(
        annotations["dev.oz.pid"],
        w.process.pid().to_string().as_str(),
        "{annotations}"
    );
    assert!(annotations.get("dev.oz.pod").is_none(), "{annotations}");
    assert!(annotations.get("dev.oz.pod-uid").is_none(), "{annotations}");
    end_the_sleep(&pod);
    match w.report(task).await.0 {
        WorkerMessage::TaskCompleted(c) => {
            assert_eq!(c.execution_id.as_deref(), Some(exec_of(&a).as_str()))
        }
        other => panic!("expected task_completed, got {other:?}"),
    }
    no_second_report(&mut w, task).await;
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    cluster.self_check();
}

// ---------------------------------------------------------------------------
// Features proven end to end (issue 19 items 2, 3 and 6): image volumes,
// unschedulable_timeout, active_deadline_seconds, teardown_command, API
// retries, and a refused (422) Job. Contract cases that already had a test
// above: claim and success (success_runs_…), exit code, OOM, image pull and
// setup failures (failures_are_diagnosed_…), cancellation
// (cancellation_deletes_…), shutdown and restart with reattach
// (shutdown_leaves_…), the worker killed and restarted while its Job runs
// (a_crash_leaves_…), adoption (#86), the API server restarted mid-watch
// and a watch closed with 410 (api_server_restart_…), a Job deleted and a
// Pod evicted behind the worker's back (a_job_deleted_…).
// ---------------------------------------------------------------------------

/// The test environment's Docker 28 (image mounts), as `unix://…`; None
/// (skipped, or a failure under CI=true) when it is not set up.
fn docker28() -> Option<String> {
    match std::env::var("OZ_TEST_DOCKER28_HOST") {
        Ok(h) if !h.is_empty() => Some(h),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("OZ_TEST_DOCKER28_HOST is not set under CI=true (scripts/test-env.sh up; . /var/lib/oz-worker-test/env)")
        }
        _ => {
            eprintln!("skipped: OZ_TEST_DOCKER28_HOST is not set (. /var/lib/oz-worker-test/env)");
            None
        }
    }
}

/// A `pod_template` whose `task` container mounts the host directory
/// `dir` at /report (a hostPath volume of type Directory): the demo agent
/// writes its report there, and a teardown command can write there too.
fn report_template(dir: &Path) -> String {
    format!(
        "pod_template:\n  terminationGracePeriodSeconds: 3\n  volumes:\n  - name: report\n    hostPath: {{path: {}, type: Directory}}\n  containers:\n  - name: task\n    volumeMounts:\n    - {{name: report, mountPath: /report}}",
        dir.display()
    )
}

/// Reads a file the agent or a hook wrote under the report directory.
fn report_file(dir: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(rel)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_mount_the_sidecar_read_only_and_the_agent_runs_from_it() {
    if !available() {
        return;
    }
    let Some(host) = docker28() else { return };
    // The ImageVolume feature gate on, and a kubelet whose dockerd mounts
    // images (Docker 28: `--mount type=image`).
    let cluster = Cluster::start(&[
        "--feature-gates",
        "ImageVolume=true",
        "--docker-host",
        &host,
    ]);
    let sidecar = build_sidecar_image(Some(&host));
    let server = ScriptedServer::start().await;
    let state = tempfile::tempdir().unwrap();
    let report = tempfile::tempdir().unwrap();
    let config = cluster.config(
        "c",
        &format!(
            "use_image_volumes: true\n{}",
            report_template(report.path())
        ),
    );
    // The preflight in image-volume mode completes a Job that mounts
    // preflight_image as an image volume, or the worker does not start.
    let mut w = worker(
        &server,
        &unique_id("k8s-imgvol"),
        &config,
        state.path(),
        &[],
    )
    .await;
    let mut a = assignment("k8simgvol", &[]);
    a.sidecar_image = Some(sidecar.clone());
    let name = go_job_name("k8simgvol", &exec_of(&a));
    w.assign(&a).await;
    let job = cluster.until("the Job exists", |c| c.job(&name)).await;
    let spec = &job["spec"]["template"]["spec"];
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sidecar-0-image")
        .unwrap_or_else(|| panic!("no image volume: {spec}"))
        .clone();
    assert_eq!(volume["image"]["reference"], sidecar.as_str(), "{volume}");
    assert!(
        spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| !c["name"].as_str().unwrap_or("").starts_with("copy-sidecar")),
        "no copy init container in image-volume mode: {spec}"
    );
    let (report_msg, output) = w.report("k8simgvol").await;
    assert!(
        matches!(report_msg, WorkerMessage::TaskCompleted(_)),
        "{report_msg:?}\n{}",
        w.process.log_text()
    );
    // The agent ran from the image's files, mounted at /agent read-only.
    assert!(
        output.contains("oz demo agent: task k8simgvol started in /workspace"),
        "{output:?}"
    );
    assert_eq!(
        report_file(report.path(), "k8simgvol/agent_mount").as_deref(),
        Some("readonly\n")
    );
    let mounts = report_file(report.path(), "k8simgvol/mounts").unwrap_or_default();
    let agent = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/agent"))
        .unwrap_or_else(|| panic!("/agent is not a mount of its own:\n{mounts}"));
    assert!(
        agent
            .split_whitespace()
            .nth(3)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "{agent}"
    );
    cluster.self_check();
}

/// How the runtime decides between image volumes and copies: it does not
/// guess. `use_image_volumes` (default false: copy init containers, the
/// mode every other test here runs) is the operator's choice, and the
/// start-up preflight proves it: on a server without the ImageVolume
/// feature the worker refuses to start and says which key to turn off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_without_server_support_stop_the_worker_at_start() {
    if !available() {
        return;
    }
    let server = ScriptedServer::start().await;
    // The gate off (1.33's default): the API server drops `image`, so the
    // preflight Job's volume has no type and is refused (422).
    {
        let cluster = Cluster::start(&[]);
        let state = tempfile::tempdir().unwrap();
        let mut w = spawn_worker(
            &server,
            &unique_id("k8s-nogate"),
            &cluster.config("c", "use_image_volumes: true"),
            state.path(),
            &[],
        );
        let status = w.wait_exit(WITHIN).await;
        let log = w.log_text();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(log.contains("preflight"), "{log}");
        assert!(
            log.contains("use_image_volumes: true"),
            "names the key:\n{log}"
        );
        assert!(
            log.contains("must specify a volume type"),
            "the server's reason:\n{log}"
        );
        cluster.self_check();
    }
    // The gate on, but a node whose runtime cannot mount images: the
    // preflight Pod never starts its container.
    let cluster = Cluster::start(&["--feature-gates", "ImageVolume=true"]);
    let state = tempfile::tempdir().unwrap();
    let mut w = spawn_worker(
        &server,
        &unique_id("k8s-noimgmount"),
        &cluster.config("c", "use_image_volumes: true"),
        state.path(),
        &[],
    );
    let status = w.wait_exit(WITHIN).await;
    let log = w.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("use_image_volumes: true"),
        "names the key:\n{log}"
    );
    assert!(
        log.contains("is waiting") && log.contains("image volumes are not supported"),
        "says why the preflight Pod cannot start:\n{log}"
    );
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_no_node_fits_fails_the_task_after_unschedulable_timeout() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    // A nodeSelector no node matches: the scheduler leaves the Pod Pending
    // with PodScheduled=False/Unschedulable and a FailedScheduling event.
    let config = cluster.config(
        "c",
        "unschedulable_timeout: 3s\npod_template:\n  nodeSelector: {disktype: ssd}",
    );
    let mut w = rig.worker(&unique_id("k8s-unsched"), &config).await;
    let a = assignment("k8sunsched", &[]);
    let name = go_job_name("k8sunsched", &exec_of(&a));
    let started = std::time::Instant::now();
    w.assign(&a).await;
    let f = w.failed("k8sunsched").await;
    assert_eq!(f.failure_reason, FailureReason::Unschedulable, "{f:?}");
    // The wait counts from the Pod's creationTimestamp, which Kubernetes
    // keeps to the second: up to a second of it can precede `started`.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "reported before unschedulable_timeout ran out: {f:?}"
    );
    assert!(f.message.contains(&name), "names the Pod: {}", f.message);
    assert!(
        f.message
            .contains("didn't match Pod's node affinity/selector"),
        "carries the scheduler's reason: {}",
        f.message
    );
    assert!(
        f.message.contains("unschedulable_timeout is 3s"),
        "{}",
        f.message
    );
    assert_eq!(f.exit_code, None, "{f:?}");
    let d = k8s_details(&f);
    let pod = d.pod.as_ref().expect("pod details");
    assert_eq!(pod.phase, "Pending", "{d:?}");
    assert!(
        pod.conditions.iter().any(|c| c.kind == "PodScheduled"
            && c.status == "False"
            && c.reason == "Unschedulable"),
        "{d:?}"
    );
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == "FailedScheduling" && e.kind == "Warning"),
        "{d:?}"
    );
    assert!(d.container.is_none(), "no container ran: {d:?}");
    // The Job never finished (its Pod would wait for a node forever, and a
    // node that fits later would start the agent of a failed task): it is
    // deleted, with its Pod, once the failure is recorded.
    cluster
        .until("the unfinished Job and its Pod are deleted", |c| {
            (c.job(&name).is_none() && c.pods(&name).is_empty()).then_some(())
        })
        .await;
    let log = w.process.log_text();
    assert!(
        log.contains("deleting the Job so nothing of it runs later"),
        "{log}"
    );
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_seconds_fails_the_task_with_deadline_exceeded() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config(
        "c",
        "active_deadline_seconds: 3\npod_template:\n  terminationGracePeriodSeconds: 1",
    );
    let mut w = rig.worker(&unique_id("k8s-deadline"), &config).await;
    let a = assignment("k8sdeadline", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    let name = go_job_name("k8sdeadline", &exec_of(&a));
    w.assign(&a).await;
    let job = cluster.until("the Job exists", |c| c.job(&name)).await;
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 3, "{job}");
    let f = w.failed("k8sdeadline").await;
    assert_eq!(f.failure_reason, FailureReason::ActiveDeadline, "{f:?}");
    assert!(f.message.contains("DeadlineExceeded"), "{}", f.message);
    // The Job controller's verdict, as it wrote it.
    let job = cluster.job(&name).expect("a failed Job is kept");
    let failed = job["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap_or_else(|| panic!("no Failed condition: {job}"));
    assert_eq!(failed["reason"], "DeadlineExceeded", "{job}");
    let d = k8s_details(&f);
    assert!(
        d.job
            .as_ref()
            .is_some_and(|j| j
                .conditions
                .iter()
                .any(|c| matches!(c.kind.as_str(), "FailureTarget" | "Failed")
                    && c.reason == "DeadlineExceeded")),
        "the Job's verdict (FailureTarget comes first, Failed once the Pod is gone): {d:?}"
    );
    assert!(
        d.events
            .iter()
            .any(|e| e.kind == "Warning" && e.reason == "DeadlineExceeded"),
        "the Job controller's event: {d:?}"
    );
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_command_runs_as_the_pre_stop_hook_when_a_task_is_cancelled() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let report = tempfile::tempdir().unwrap();
    let config = cluster.config(
        "c",
        &format!(
            "teardown_command: 'echo \"torn down $OZ_RUN_ID in $(pwd)\" > /report/teardown'\n{}",
            report_template(report.path())
        ),
    );
    let mut w = rig.worker(&unique_id("k8s-teardown"), &config).await;
    let a = assignment("k8steardown", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    let name = go_job_name("k8steardown", &exec_of(&a));
    w.assign(&a).await;
    w.claimed("k8steardown").await;
    let pod = cluster.task_running(&name).await;
    // use_image_volumes off (the default): the sidecar is copied by a root
    // init container into an emptyDir, the Go worker's legacy mode.
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"], "copy-sidecar-0",
        "{pod}"
    );
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "sidecar-0-data" && v["emptyDir"].is_object()),
        "{pod}"
    );
    let hook = &pod["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(hook[0], "/bin/sh", "{pod}");
    // Nothing ran it yet: the agent is still sleeping.
    assert_eq!(report_file(report.path(), "teardown"), None);
    w.conn
        .send_text(&encode(&ServerMessage::TaskCancellation(
            TaskCancellation {
                task_id: "k8steardown".into(),
            },
        )))
        .await;
    match w.report("k8steardown").await.0 {
        WorkerMessage::TaskCompleted(c) => assert_eq!(c.task_state.as_deref(), Some("CANCELLED")),
        other => panic!("expected a CANCELLED task_completed, got {other:?}"),
    }
    // The hook ran in the task container, with its environment and working
    // directory, before the container was stopped.
    assert_eq!(
        report_file(report.path(), "teardown").as_deref(),
        Some("torn down k8steardown in /workspace\n"),
        "the preStop hook did not run"
    );
    cluster.self_check();
}

/// Asks the server to fail the next `count` requests with `verb` on
/// `resource` with `code`.
fn fail_next(cluster: &Cluster, count: u32, code: u16, verb: &str, resource: &str) {
    cluster.admin(&format!(
        "fail-next?count={count}&code={code}&verb={verb}&resource={resource}"
    ));
}

/// How many injected failures the server answered.
fn failures_served(cluster: &Cluster) -> u64 {
    let (code, v) = cluster.request("GET", "/admin/fail-next", None);
    assert_eq!(code, 200, "{v}");
    v["served"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_failing_api_requests_are_retried_and_the_task_succeeds() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let mut w = rig
        .worker(&unique_id("k8s-retry"), &cluster.config("c", ""))
        .await;
    // 503 on the Job's create, 429 with Retry-After (API priority and
    // fairness) on the Job's watch, 503 on the Pods' list and 500 on the
    // Pods' watch: each is retried with backoff.
    for (i, (count, code, verb, resource)) in [
        (3, 503, "create", "jobs"),
        (2, 429, "watch", "jobs"),
        (2, 503, "list", "pods"),
        (2, 500, "watch", "pods"),
    ]
    .into_iter()
    .enumerate()
    {
        let task = format!("k8sretry{i}");
        fail_next(cluster, count, code, verb, resource);
        w.assign(&assignment(&task, &[])).await;
        match w.report(&task).await.0 {
            WorkerMessage::TaskCompleted(_) => {}
            other => panic!(
                "{code} on {verb} {resource}: expected task_completed, got {other:?}\n{}",
                w.process.log_text()
            ),
        }
        // At least one injected failure was answered and retried. Not
        // necessarily all: on a loaded machine the task can end (seen by
        // the other watch or the safety poll) before a failed watch or
        // list is repeated `count` times.
        let served = failures_served(cluster);
        assert!(
            (1..=count as u64).contains(&served),
            "{served} of {count} injected {code} on {verb} {resource} answered"
        );
    }
    cluster.self_check();
}

/// A Job create answered 500 may have been carried out; kube-rs does not
/// repeat it (it repeats 429, 503 and 504 only). The runtime does, with
/// backoff: twice answered 500 without being stored, then once stored but
/// answered 500 (the repeat gets 409 AlreadyExists and adopts the
/// execution's own Job). Each task completes from exactly one Job and one
/// Pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_create_answered_500_is_retried_and_one_stored_anyway_is_adopted() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let id = unique_id("k8s-create500");
    let state = tempfile::tempdir().unwrap();
    // --no-cleanup keeps each succeeded Job to count after the report.
    let mut w = worker(
        &rig.server,
        &id,
        &cluster.config("c", ""),
        state.path(),
        &["--no-cleanup"],
    )
    .await;
    let mut jobs = Vec::new();
    for (task, count, applied) in [("k8screate500", 2, false), ("k8screatestored", 1, true)] {
        let a = assignment(task, &[]);
        let name = go_job_name(task, &exec_of(&a));
        cluster.admin(&format!(
            "fail-next?count={count}&code=500&verb=create&resource=jobs&applied={applied}"
        ));
        w.assign(&a).await;
        match w.report(task).await.0 {
            WorkerMessage::TaskCompleted(_) => {}
            other => panic!(
                "500 on create (stored: {applied}): expected task_completed, got {other:?}\n{}",
                w.process.log_text()
            ),
        }
        assert_eq!(failures_served(cluster), count as u64);
        let pods = cluster.pods(&name);
        assert_eq!(pods.len(), 1, "one Pod of {name}: {pods:?}");
        jobs.push(name);
    }
    let log = w.process.log_text();
    assert!(
        log.contains("creating the task's Job") && log.contains("trying again"),
        "{log}"
    );
    assert_eq!(
        log.matches("adopting this execution's existing Job")
            .count(),
        1,
        "the create stored but answered 500 is adopted on the repeat, the others created: {log}"
    );
    jobs.sort();
    let mut made = task_jobs_of(cluster, &id);
    made.sort();
    assert_eq!(made, jobs, "one Job per task");
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    cluster.self_check();
}

/// A Job create that gets no answer (the API server is down: connection
/// refused) is repeated with backoff, and the task runs once the server is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_create_while_the_api_server_is_down_is_retried_until_it_is_back() {
    let Some(mut rig) = Rig::start(&[]).await else {
        return;
    };
    let mut w = rig
        .worker(&unique_id("k8s-createdown"), &rig.cluster.config("c", ""))
        .await;
    let cluster = &mut rig.cluster;
    let task = "k8screatedown";
    let a = assignment(task, &[]);
    cluster.server.kill();
    w.assign(&a).await;
    w.process
        .wait_for_log("trying again (it may have been created", WITHIN)
        .await;
    cluster.server.restart().unwrap();
    match w.report(task).await.0 {
        WorkerMessage::TaskCompleted(_) => {}
        other => panic!(
            "expected task_completed, got {other:?}\n{}",
            w.process.log_text()
        ),
    }
    let name = go_job_name(task, &exec_of(&a));
    assert_eq!(cluster.pods(&name).len(), 1, "one Pod");
    cluster.self_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_api_server_refuses_as_invalid_fails_the_task_naming_the_field() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    // The operator's template already mounts something at /agent, where
    // the task's agent sidecar goes: the Job has two mounts at one path,
    // which Kubernetes refuses (422 Invalid, "must be unique"); no retry
    // can fix that, so the task fails at once, naming the field.
    let config = cluster.config(
        "c",
        "pod_template:\n  volumes:\n  - {name: tools, emptyDir: {}}\n  containers:\n  - name: task\n    volumeMounts:\n    - {name: tools, mountPath: /agent}",
    );
    let mut w = rig.worker(&unique_id("k8s-invalid"), &config).await;
    let a = assignment("k8sinvalid", &[]);
    let name = go_job_name("k8sinvalid", &exec_of(&a));
    w.assign(&a).await;
    let f = w.failed("k8sinvalid").await;
    assert_eq!(f.failure_reason, FailureReason::JobCreate, "{f:?}");
    assert!(f.message.contains(&name), "names the Job: {}", f.message);
    assert!(
        f.message.contains("volumeMounts[") && f.message.contains("mountPath"),
        "names the field: {}",
        f.message
    );
    assert!(
        f.message.contains("\"/agent\"") && f.message.contains("must be unique"),
        "names the value and the rule: {}",
        f.message
    );
    assert!(cluster.job(&name).is_none(), "nothing was created");
    cluster.self_check();
}

/// BACKENDS.md §5: the Pod diagnosis ignores native sidecars (init
/// containers with `restartPolicy: Always`). The operator's `pod_template`
/// adds one that exits 143 on SIGTERM; the kubelet stops it once the task
/// container has exited 0, so its non-zero exit is how every such sidecar
/// ends, not a failure of the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_sidecar_that_exits_non_zero_when_stopped_does_not_fail_the_task() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config(
        "c",
        &format!(
            "pod_template:\n  terminationGracePeriodSeconds: 5\n  initContainers:\n  - name: proxy\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    restartPolicy: Always\n    command: [\"sh\", \"-c\", \"trap 'exit 143' TERM; while :; do sleep 1; done\"]"
        ),
    );
    let mut w = rig.worker(&unique_id("k8s-sidecar"), &config).await;
    let a = assignment("k8snative", &[]);
    let name = go_job_name("k8snative", &exec_of(&a));
    w.assign(&a).await;
    let (report, output) = w.report("k8snative").await;
    assert!(
        matches!(report, WorkerMessage::TaskCompleted(ref c) if c.task_state.is_none()),
        "expected task_completed, got {report:?}\n{}",
        w.process.log_text()
    );
    assert!(output.contains("oz demo agent: done"), "{output:?}");
    // The sidecar ran beside the task and was stopped with SIGTERM after it
    // (the succeeded Job is deleted only a few seconds after the report).
    let pod = cluster
        .pods(&name)
        .into_iter()
        .next()
        .expect("the Pod is still there right after the report");
    let sidecar = pod["status"]["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "proxy")
        .unwrap_or_else(|| panic!("no status of the sidecar: {pod}"))
        .clone();
    assert_eq!(sidecar["state"]["terminated"]["exitCode"], 143, "{pod}");
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}");
    cluster.self_check();
}

/// Sets a Pod's finalizers (a JSON merge patch of `metadata.finalizers`,
/// retried on 409 while the controllers update the Pod).
fn set_pod_finalizers(cluster: &Cluster, pod: &str, finalizers: &[&str]) {
    let path = format!("/api/v1/namespaces/default/pods/{pod}");
    for _ in 0..20 {
        let (code, body) = cluster.server.curl(
            "PATCH",
            &path,
            Some(&json!({"metadata": {"finalizers": finalizers}})),
            "application/merge-patch+json",
            true,
        );
        match code {
            200 => return,
            409 => continue,
            _ => panic!("PATCH {path}: {code} {body}"),
        }
    }
    panic!("PATCH {path}: conflicts did not stop");
}

/// A Pod stuck terminating (held here by a finalizer nobody removes, as a
/// Pod on a lost node is held by a kubelet that never confirms the stop)
/// does not hold a cancellation forever: once the Pod's grace period and
/// the 30 s margin have passed, `CANCELLED` is reported with a warning
/// naming the Pod and its namespace; the worker deletes no Pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_stuck_terminating_does_not_hold_a_cancellation_forever() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "pod_template:\n  terminationGracePeriodSeconds: 1");
    let mut w = rig.worker(&unique_id("k8s-stuck"), &config).await;
    let a = assignment("k8sstuck", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    let name = go_job_name("k8sstuck", &exec_of(&a));
    w.assign(&a).await;
    w.claimed("k8sstuck").await;
    let pod = cluster.task_running(&name).await;
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let mut finalizers: Vec<String> = pod["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    finalizers.push("oz.test/hold".into());
    set_pod_finalizers(
        cluster,
        &pod_name,
        &finalizers.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let cancelled_at = std::time::Instant::now();
    w.conn
        .send_text(&encode(&ServerMessage::TaskCancellation(
            TaskCancellation {
                task_id: "k8sstuck".into(),
            },
        )))
        .await;
    match w.report("k8sstuck").await.0 {
        WorkerMessage::TaskCompleted(c) => assert_eq!(c.task_state.as_deref(), Some("CANCELLED")),
        other => panic!("expected a CANCELLED task_completed, got {other:?}"),
    }
    // Reported while the Pod was still terminating, its containers stopped,
    // and only after its grace period (1 s) and the margin (30 s).
    assert!(
        cancelled_at.elapsed() >= Duration::from_secs(30),
        "reported before the Pod had its grace period and the margin: {:?}",
        cancelled_at.elapsed()
    );
    let stuck = cluster.pods(&name);
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert!(
        stuck[0]["metadata"]["deletionTimestamp"].is_string(),
        "{stuck:?}"
    );
    assert_eq!(stuck[0]["status"]["phase"], "Failed", "stopped: {stuck:?}");
    let log = w.process.log_text();
    assert!(
        log.contains(&format!(
            "the task's Pod {pod_name} (finalizers: oz.test/hold) in namespace default is still terminating"
        )),
        "{log}"
    );
    // Kubernetes finishes once the finalizer goes: the Pod, then the Job.
    set_pod_finalizers(cluster, &pod_name, &[]);
    cluster
        .until("the Pod and the Job are gone", |c| {
            (c.pods(&name).is_empty() && c.job(&name).is_none()).then_some(())
        })
        .await;
    cluster.self_check();
}

// ---------------------------------------------------------------------------
// Live output across a break of the `pods/log` follow.
// ---------------------------------------------------------------------------

/// Writes `lines` to the agent's standard output (PID 1's, which the
/// container runtime logs) from inside a running Pod's task container.
fn print_in_task(pod: &Value, lines: &[&str]) {
    let script = lines
        .iter()
        .map(|l| format!("echo {l} > /proc/1/fd/1"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = Command::new("docker")
        .args(["exec", &task_container_id(pod), "sh", "-c", &script])
        .output()
        .expect("docker exec runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Worker {
    /// Reads the connection until the live output of `task` (added to
    /// `output`) contains `needle`; other messages of the task are not
    /// expected before it.
    async fn output_until(&mut self, task: &str, output: &mut String, needle: &str) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        while !output.contains(needle) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.conn.next_message(left).await {
                Some(WorkerMessage::TaskOutput(o)) if o.task_id == task => output.push_str(&o.data),
                Some(m) if m.task_id() != task => {}
                Some(WorkerMessage::TaskClaimed(_)) => {}
                Some(m) => panic!("expected output of {task}, got {m:?}; output {output:?}"),
                None => panic!(
                    "no {needle:?} in the live output of {task}: {output:?}; log:\n{}",
                    self.process.log_text()
                ),
            }
        }
    }
}

/// The API server is killed while the agent prints (lines printed while
/// it is down, then after its restart): the worker follows the log again
/// from where it broke, so the orchestrator's live output has every line,
/// each once, and the report follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_output_goes_on_after_the_api_server_restarts_without_repeats() {
    let Some(mut rig) = Rig::start(&[]).await else {
        return;
    };
    let mut w = rig
        .worker(&unique_id("k8s-logbreak"), &rig.cluster.config("c", ""))
        .await;
    let cluster = &mut rig.cluster;
    let task = "k8slogbreak";
    let a = assignment(
        task,
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "600")],
    );
    let name = go_job_name(task, &exec_of(&a));
    w.assign(&a).await;
    w.claimed(task).await;
    let pod = cluster.task_running(&name).await;
    let mut output = String::new();
    w.output_until(task, &mut output, "started in").await;
    print_in_task(&pod, &["oz-live-before-1", "oz-live-before-2"]);
    w.output_until(task, &mut output, "oz-live-before-2").await;

    // Down: the follow breaks; the agent goes on printing.
    cluster.server.kill();
    print_in_task(&pod, &["oz-live-down-1", "oz-live-down-2"]);
    cluster.server.restart().unwrap();
    print_in_task(&pod, &["oz-live-after-1", "oz-live-after-2"]);
    // Live output resumes while the task still runs.
    w.output_until(task, &mut output, "oz-live-after-2").await;
    end_the_sleep(&pod);
    let (report, rest) = w.report(task).await;
    output.push_str(&rest);
    assert!(
        matches!(report, WorkerMessage::TaskCompleted(_)),
        "{report:?}\n{}",
        w.process.log_text()
    );
    for line in [
        "oz demo agent: task k8slogbreak started in /workspace",
        "oz-live-before-1",
        "oz-live-before-2",
        "oz-live-down-1",
        "oz-live-down-2",
        "oz-live-after-1",
        "oz-live-after-2",
        "oz demo agent: done",
    ] {
        assert_eq!(
            output.matches(&format!("{line}\n")).count(),
            1,
            "{line:?} once in the live output: {output:?}"
        );
    }
    // In the order printed.
    let at = |l: &str| output.find(l).unwrap();
    assert!(at("oz-live-before-2") < at("oz-live-down-1"), "{output:?}");
    assert!(at("oz-live-down-2") < at("oz-live-after-1"), "{output:?}");
    assert!(
        at("oz-live-after-2") < at("oz demo agent: done"),
        "{output:?}"
    );
    let log = w.process.log_text();
    assert!(
        log.contains("following it again"),
        "the worker says it followed the log again:\n{log}"
    );
    cluster.self_check();
}

// ---------------------------------------------------------------------------
// The contract of ARCHITECTURE.md "How to add a runtime", step 5, beyond
// the cases above: secrets stay out of logs, the metrics carry the
// runtime's `backend` label, task_timeout ends a task and its Job; and
// every call path of the runtime under the Go chart's Role.
// ---------------------------------------------------------------------------

/// A task environment value no log may show.
const TASK_SECRET: &str = "k8s-task-s3cr3t-7f3a91";

/// A worker logging everything at debug (the kube client's requests
/// included) runs a task that succeeds and one that fails,
/// both with a secret in their environment: neither that value nor the API
/// key appears in the worker's log or in a report, while the value does
/// reach the task (it is in the Job, as the Go worker puts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_the_workers_log_and_reports() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let process = spawn_worker_logging(
        &rig.server,
        &unique_id("k8s-secrets"),
        &cluster.config("c", ""),
        rig.state.path(),
        &[],
        "debug,task_output=debug",
    );
    let conn = rig
        .server
        .accept_offering(WITHIN, Some(extensions::TASK_OUTPUT))
        .await;
    let mut w = Worker { process, conn };
    let ok = assignment("k8ssecretok", &[("OZ_TEST_SECRET", TASK_SECRET)]);
    let failing = assignment(
        "k8ssecretfail",
        &[("OZ_TEST_SECRET", TASK_SECRET), ("OZ_DEMO_EXIT", "3")],
    );
    w.assign(&ok).await;
    let job = cluster
        .until("the Job exists", |c| {
            c.job(&go_job_name("k8ssecretok", &exec_of(&ok)))
        })
        .await;
    assert!(
        job.to_string().contains(TASK_SECRET),
        "the value reaches the task: {job}"
    );
    let (report, output) = w.report("k8ssecretok").await;
    assert!(
        matches!(report, WorkerMessage::TaskCompleted(_)),
        "{report:?}"
    );
    assert!(output.contains("oz demo agent: done"), "{output:?}");
    w.assign(&failing).await;
    let f = w.failed("k8ssecretfail").await;
    assert_eq!(f.failure_reason, FailureReason::ContainerExit, "{f:?}");
    k8s_details(&f);
    let report = serde_json::to_string(&f).unwrap();
    assert!(!report.contains(TASK_SECRET), "{report}");
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;
    let log = w.process.log_text();
    assert!(
        log.contains("created the task's Job") && log.contains("kube_client"),
        "the log is the verbose one: {log}"
    );
    assert!(
        !log.contains(TASK_SECRET),
        "a task env value in the log:\n{log}"
    );
    assert!(!log.contains(KEY), "the API key in the log:\n{log}");
    cluster.self_check();
}

/// The value of the one series `name` whose labels include all of
/// `labels`, from a Prometheus text page.
fn sample(page: &str, name: &str, labels: &[&str]) -> Option<String> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

/// The worker's Prometheus page names the runtime: `backend="kubernetes"`
/// on `oz_worker_info` (and `worker_backend` on `target_info`), beside the
/// task metrics of a success and a failure it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_kubernetes_backend_label_beside_the_task_metrics() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let port = support::net::free_port();
    let id = unique_id("k8s-metrics");
    let mut w = worker(
        &rig.server,
        &id,
        &rig.cluster.config("c", ""),
        rig.state.path(),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    )
    .await;
    w.assign(&assignment("k8smetricsok", &[])).await;
    w.assign(&assignment("k8smetricsfail", &[("OZ_DEMO_EXIT", "4")]))
        .await;
    let reports = w.reports(2).await;
    assert!(
        matches!(reports["k8smetricsok"], WorkerMessage::TaskCompleted(_)),
        "{reports:?}"
    );
    let page = support::net::metrics_page(port).await;
    let backend = "backend=\"kubernetes\"";
    assert_eq!(
        sample(
            &page,
            "oz_worker_info",
            &[backend, &format!("worker_id=\"{id}\"")]
        )
        .as_deref(),
        Some("1"),
        "{page}"
    );
    assert!(
        page.lines()
            .any(|l| l.starts_with("target_info{") && l.contains("worker_backend=\"kubernetes\"")),
        "{page}"
    );
    for (name, labels, value) in [
        ("oz_worker_tasks_claimed_total", vec![], "2"),
        (
            "oz_worker_tasks_completed_total",
            vec!["result=\"succeeded\""],
            "1",
        ),
        (
            "oz_worker_tasks_completed_total",
            vec!["result=\"failed\""],
            "1",
        ),
        (
            "oz_worker_task_failures_total",
            vec!["phase=\"backend\"", "reason=\"container_exit\""],
            "1",
        ),
        (
            "oz_worker_task_duration_seconds_count",
            vec!["result=\"succeeded\""],
            "1",
        ),
    ] {
        let found = if labels.is_empty() {
            page.lines()
                .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        } else {
            sample(&page, name, &labels)
        };
        assert_eq!(
            found.as_deref(),
            Some(value),
            "{name}{labels:?} in:\n{page}"
        );
    }
    rig.cluster.self_check();
}

/// `--task-timeout`: a task still running at the limit is stopped as a
/// cancellation stops it (its Job deleted in the foreground) and reported
/// `task_timeout`, naming the limit; its Job and Pod are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_task_timeout_fails_task_timeout_and_its_job_is_deleted() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "pod_template:\n  terminationGracePeriodSeconds: 1");
    let mut w = worker(
        &rig.server,
        &unique_id("k8s-timeout"),
        &config,
        rig.state.path(),
        &["--task-timeout", "3s"],
    )
    .await;
    let a = assignment("k8stimeout", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    let name = go_job_name("k8stimeout", &exec_of(&a));
    let started = std::time::Instant::now();
    w.assign(&a).await;
    w.claimed("k8stimeout").await;
    cluster.task_running(&name).await;
    let f = w.failed("k8stimeout").await;
    assert!(started.elapsed() >= Duration::from_secs(3), "{f:?}");
    assert_eq!(f.failure_reason, FailureReason::TaskTimeout, "{f:?}");
    assert_eq!(
        f.message,
        "task exceeded task_timeout 3s; set task_timeout/--task-timeout to allow longer"
    );
    assert_eq!(f.execution_id.as_deref(), Some(exec_of(&a).as_str()));
    // Stopped as a cancellation: the Pod was gone before the report.
    assert_eq!(cluster.pods(&name), Vec::<Value>::new());
    cluster
        .until("the Job is deleted", |c| {
            c.job(&name).is_none().then_some(())
        })
        .await;
    let log = w.process.log_text();
    assert!(
        log.contains("deleting the task's Job (foreground)"),
        "{log}"
    );
    cluster.self_check();
}

/// Every call path under exactly the Go chart's Role (the worker's token
/// bound to deploy/kubernetes/base/role.yaml): the preflight, a success
/// with live output, a failure and its diagnosis (Pod, Job, events), a
/// cancellation (foreground delete, Pods watched away), a worker killed and
/// restarted (discovery by labels, reattach, the log followed from its
/// end) and a follow of the log broken and resumed (`sinceTime`). The
/// server refused nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_path_runs_under_the_charts_role() {
    let role = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base/role.yaml");
    let Some(mut rig) = Rig::start(&["--rbac-role", role.to_str().unwrap()]).await else {
        return;
    };
    let config = rig
        .cluster
        .config("c", "pod_template:\n  terminationGracePeriodSeconds: 2");
    let id = unique_id("k8s-rbac-all");
    let mut w = rig.worker(&id, &config).await;

    // Success with live output, and a failure diagnosed.
    w.assign(&assignment("k8srbacok", &[])).await;
    let (report, output) = w.report("k8srbacok").await;
    assert!(
        matches!(report, WorkerMessage::TaskCompleted(_)),
        "{report:?}"
    );
    assert!(output.contains("oz demo agent: done"), "{output:?}");
    w.assign(&assignment("k8srbacfail", &[("OZ_DEMO_EXIT", "2")]))
        .await;
    let f = w.failed("k8srbacfail").await;
    assert_eq!(f.failure_reason, FailureReason::ContainerExit, "{f:?}");
    assert_eq!(f.exit_code, Some(2), "{f:?}");
    let d = k8s_details(&f);
    assert!(d.job.is_some() && d.pod.is_some(), "{d:?}");

    // A cancellation.
    let cancelled = assignment("k8srbaccancel", &[("OZ_DEMO_BEHAVIOUR", "sleep")]);
    let cancelled_job = go_job_name("k8srbaccancel", &exec_of(&cancelled));
    w.assign(&cancelled).await;
    w.claimed("k8srbaccancel").await;
    rig.cluster.task_running(&cancelled_job).await;
    w.conn
        .send_text(&encode(&ServerMessage::TaskCancellation(
            TaskCancellation {
                task_id: "k8srbaccancel".into(),
            },
        )))
        .await;
    match w.report("k8srbaccancel").await.0 {
        WorkerMessage::TaskCompleted(c) => assert_eq!(c.task_state.as_deref(), Some("CANCELLED")),
        other => panic!("expected a CANCELLED task_completed, got {other:?}"),
    }

    // The worker killed while a task runs; the next one reattaches, follows
    // the log from its end and, across an API server restart, on.
    let a = assignment(
        "k8srbacreattach",
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "600")],
    );
    let name = go_job_name("k8srbacreattach", &exec_of(&a));
    w.assign(&a).await;
    w.claimed("k8srbacreattach").await;
    let pod = rig.cluster.task_running(&name).await;
    w.process.signal(9);
    w.process.wait_exit(WITHIN).await;
    let mut w = rig.worker(&id, &config).await;
    w.process
        .wait_for_log("following the task's log from its current end", WITHIN)
        .await;
    let mut output = String::new();
    print_in_task(&pod, &["oz-rbac-before"]);
    w.output_until("k8srbacreattach", &mut output, "oz-rbac-before")
        .await;
    rig.cluster.server.restart().unwrap();
    print_in_task(&pod, &["oz-rbac-after"]);
    w.output_until("k8srbacreattach", &mut output, "oz-rbac-after")
        .await;
    end_the_sleep(&pod);
    let (report, rest) = w.report("k8srbacreattach").await;
    output.push_str(&rest);
    assert!(
        matches!(report, WorkerMessage::TaskCompleted(_)),
        "{report:?}\n{}",
        w.process.log_text()
    );
    assert!(!output.contains("started in"), "{output:?}");
    for line in [
        "oz-rbac-before\n",
        "oz-rbac-after\n",
        "oz demo agent: done\n",
    ] {
        assert_eq!(output.matches(line).count(), 1, "{line:?} once: {output:?}");
    }
    w.process.signal(15);
    w.process.wait_exit(WITHIN).await;

    let (code, v) = rig.cluster.request("GET", "/admin/forbidden", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        v["forbidden"],
        json!([]),
        "requests the chart's Role does not grant"
    );
    let log = w.process.log_text();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    rig.cluster.self_check();
}

/// #84 after start-up: a Job whose holder still ran when a new worker of
/// the id started (frozen here with SIGSTOP; on a cluster, a worker Pod
/// still terminating) is left alone then, and taken over by the new
/// worker's periodic look (`--takeover-interval`) once the holder is dead:
/// followed to its end and reported once, by the new worker, with no
/// second Pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_holder_dies_after_the_start_is_taken_over_by_the_periodic_look() {
    let Some(rig) = Rig::start(&[]).await else {
        return;
    };
    let cluster = &rig.cluster;
    let config = cluster.config("c", "");
    let id = unique_id("k8s-later");
    let a = assignment(
        "k8slater",
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "8")],
    );
    let name = go_job_name("k8slater", &exec_of(&a));

    let first_state = tempfile::tempdir().unwrap();
    let mut first = worker(&rig.server, &id, &config, first_state.path(), &[]).await;
    first.assign(&a).await;
    first.claimed("k8slater").await;
    let pod = cluster.task_running(&name).await;
    first.process.signal(19);

    let second_state = tempfile::tempdir().unwrap();
    let mut second = worker(
        &rig.server,
        &id,
        &config,
        second_state.path(),
        &["--takeover-interval", "1s"],
    )
    .await;
    // The start-up look judged the holder alive and left its Job.
    second
        .process
        .wait_for_log("not taking over: its worker instance still runs", WITHIN)
        .await;
    assert!(
        !second
            .process
            .log_text()
            .contains("taking over an execution"),
        "{}",
        second.process.log_text()
    );

    first.process.signal(9);
    first.process.wait_exit(WITHIN).await;
    let (report, _) = second.report("k8slater").await;
    assert!(
        matches!(report, WorkerMessage::TaskCompleted(_)),
        "{report:?}\n{}",
        second.process.log_text()
    );
    let log = second.process.log_text();
    assert!(
        log.contains("took over 1 task(s) that dead instances of this worker id left"),
        "{log}"
    );
    assert_eq!(log.matches("taking over an execution").count(), 1, "{log}");
    let pods = cluster.pods(&name);
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["uid"] == pod["metadata"]["uid"]),
        "only the first Pod ever ran: {pods:?}"
    );
    cluster.self_check();
}
