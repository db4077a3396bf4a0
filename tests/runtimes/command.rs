//! End to end: the command runtime. The real worker binary hands each task
//! to `tests/fixtures/command/dispatch.sh` (a fake dispatcher that records
//! its stdin and environment and starts a detached job standing for the
//! agent) and cancellations to `cancel.sh`, against the embedded control
//! plane. No container engine is involved.

use oz_test_support as support;

use oz_runs_api::model::{CreateRunRequest, RunState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::fixtures;
use support::host::{env_file, running, wait_file, wait_gone};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The worker's own environment reaches the dispatcher (not the agent).
const WORKER_SETTING: (&str, &str) = ("WORKER_SETTING", "from-the-worker");

struct CommandSetup {
    plane: TestPlane,
    root: tempfile::TempDir,
    dispatch_timeout: &'static str,
}

impl CommandSetup {
    async fn new() -> CommandSetup {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("report")).unwrap();
        CommandSetup {
            plane: TestPlane::start(test_config()).await,
            root,
            dispatch_timeout: "2s",
        }
    }

    fn report_root(&self) -> PathBuf {
        self.root.path().join("report")
    }

    fn config(&self) -> PathBuf {
        let report = self.report_root().display().to_string();
        let yaml = format!(
            r#"backend:
  command:
    dispatch_command: '{dispatch} {report}'
    cancel_command: '{cancel} {report}'
    dispatch_timeout: {timeout}
    environment:
      - name: CONFIGURED
        value: from-config
"#,
            dispatch = fixtures::path("command/dispatch.sh").display(),
            cancel = fixtures::path("command/cancel.sh").display(),
            timeout = self.dispatch_timeout,
        );
        let path = self.root.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn options<'a>(&self, id: &'a str, extra: &[&str]) -> WorkerOptions<'a> {
        let mut args = vec![
            "--backend".to_string(),
            "command".into(),
            "--config-file".into(),
            self.config().display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        WorkerOptions {
            worker_id: id,
            extra_args: args,
            env: vec![(WORKER_SETTING.0.into(), WORKER_SETTING.1.into())],
            ..Default::default()
        }
    }

    async fn worker(&self, id: &str, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::start(&self.plane, Engine::None, self.options(id, extra)).await
    }

    async fn run(&self, host: &str, env: &[(&str, &str)]) -> String {
        let req = host_run(host, "dispatched", env);
        self.plane.client().create_run(&req).await.unwrap().id
    }

    fn dir(&self, run: &str) -> PathBuf {
        self.report_root().join(run)
    }

    fn read(&self, run: &str, name: &str) -> String {
        std::fs::read_to_string(self.dir(run).join(name))
            .unwrap_or_else(|e| panic!("{name} missing for {run}: {e}"))
    }

    fn pid(&self, run: &str, name: &str) -> u32 {
        self.read(run, name).trim().parse().unwrap()
    }

    /// Waits until the fake dispatcher has started the job for `run` and
    /// the worker has recorded the dispatch; returns the job's pid.
    async fn dispatched(&self, w: &WorkerProcess, run: &str) -> u32 {
        wait_file(&self.dir(run).join("job_pid")).await;
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        while !w
            .log_text()
            .lines()
            .any(|l| l.contains("task dispatched") && l.contains(run))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker never logged the dispatch of {run}:\n{}",
                w.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.pid(run, "job_pid")
    }

    /// Waits for the cancel command to have run for `run`; its environment.
    async fn cancelled(&self, run: &str) -> BTreeMap<String, String> {
        wait_file(&self.dir(run).join("cancels")).await;
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        loop {
            let env = env_file(
                &std::fs::read_to_string(self.dir(run).join("cancel_env")).unwrap_or_default(),
            );
            if env.contains_key("OZ_WORKER_BACKEND") {
                return env;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn count(&self, run: &str, name: &str) -> usize {
        std::fs::read_to_string(self.dir(run).join(name))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn schema_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("api-specs/command-dispatch-payload.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo xtask codegen` to generate it",
                path.display()
            )
        }))
        .unwrap();
    jsonschema::validator_for(&schema).expect("the committed schema is a valid JSON schema")
}

fn assert_valid(validator: &jsonschema::Validator, payload: &serde_json::Value) {
    let errors: Vec<String> = validator
        .iter_errors(payload)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "payload does not match the schema: {errors:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_gets_the_payload_frees_the_slot_and_cancel_runs_the_cancel_command() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-ok");
    let w = s.worker(&id, &["--max-concurrent-tasks", "1"]).await;
    let client = s.plane.client();
    let mut req = CreateRunRequest {
        worker_host: id.clone(),
        title: Some("dispatched".into()),
        prompt: Some("say hello".into()),
        sidecar_image: Some("agent:1".into()),
        env_vars: [("TASK_SECRET".to_string(), "s3cr3t-value".into())]
            .into_iter()
            .collect(),
        additional_oz_args: vec!["--extra".into()],
        ..Default::default()
    };
    let first = client.create_run(&req).await.unwrap().id;
    let first_job = s.dispatched(&w, &first).await;

    // The payload: valid against the committed schema, every field as sent.
    let payload: serde_json::Value = serde_json::from_str(&s.read(&first, "payload.json")).unwrap();
    assert_valid(&schema_validator(), &payload);
    let run = client.get_run(&first).await.unwrap();
    let exec = run
        .execution_id
        .clone()
        .expect("the plane sends an execution id");
    let root = s.plane.plane.url();
    assert_eq!(payload["version"], 1);
    assert_eq!(payload["run_id"], first);
    assert_eq!(payload["execution_id"], exec);
    assert_eq!(payload["server_root_url"], root);
    assert_eq!(payload["worker_id"], id);
    assert_eq!(payload["docker_image"], "ubuntu:22.04", "the default image");
    let base_args: Vec<&str> = payload["base_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        base_args,
        [
            "agent",
            "run",
            "--share",
            "team:edit",
            "--task-id",
            &first,
            "--sandboxed",
            "--server-root-url",
            &root,
            "--extra",
            "--idle-on-complete"
        ]
    );
    assert_eq!(payload["env"]["TASK_SECRET"], "s3cr3t-value");
    assert_eq!(payload["env"]["TASK_ID"], first);
    assert_eq!(payload["env"]["GIT_TERMINAL_PROMPT"], "0");
    assert_eq!(payload["env"]["WARP_SERVER_ROOT_URL"], root);
    assert!(
        payload["env"].get("CONFIGURED").is_none(),
        "the configured environment is the dispatcher's, not the task's"
    );
    assert_eq!(
        payload["sidecars"],
        serde_json::json!([{"image": "agent:1", "mount_path": "/agent", "read_write": false}])
    );
    assert_eq!(payload["task"]["id"], first);
    assert_eq!(payload["task"]["title"], "dispatched");

    // The dispatcher's own environment: the worker's, the configured
    // entries and the OZ_* variables; never the task's nor the API key.
    let env = env_file(&s.read(&first, "env"));
    assert_eq!(env["OZ_RUN_ID"], first);
    assert_eq!(env["OZ_EXECUTION_ID"], exec);
    assert_eq!(env["OZ_WORKER_BACKEND"], "command");
    assert_eq!(env["OZ_SERVER_ROOT_URL"], root);
    assert_eq!(env["OZ_DOCKER_IMAGE"], "ubuntu:22.04");
    assert_eq!(env["CONFIGURED"], "from-config");
    assert_eq!(env[WORKER_SETTING.0], WORKER_SETTING.1);
    for task_var in ["TASK_SECRET", "TASK_ID", "WARP_SERVER_ROOT_URL"] {
        assert!(!env.contains_key(task_var), "{task_var} leaked: {env:#?}");
    }
    assert!(!env.contains_key("WARP_API_KEY"));
    assert!(!env
        .values()
        .any(|v| v == &s.plane.key || v == "s3cr3t-value"));

    // Exit 0 freed the slot: a worker with one slot takes a second task
    // while the first stays claimed (the outside system reports it).
    req.sidecar_image = None;
    req.docker_image = Some("my/image:1".into());
    let second = client.create_run(&req).await.unwrap().id;
    s.dispatched(&w, &second).await;
    let second_payload: serde_json::Value =
        serde_json::from_str(&s.read(&second, "payload.json")).unwrap();
    assert_eq!(
        second_payload.get("sidecars"),
        Some(&serde_json::Value::Null),
        "present, and null"
    );
    assert_eq!(
        env_file(&s.read(&second, "env"))["OZ_DOCKER_IMAGE"],
        "my/image:1"
    );
    for run in [&first, &second] {
        assert_eq!(client.get_run(run).await.unwrap().state, RunState::Claimed);
        assert_eq!(s.count(run, "dispatches"), 1, "dispatched once");
    }
    let log = w.log_text();
    assert!(
        !log.contains("sent task_completed") && !log.contains("sent task_failed"),
        "no terminal report for a dispatched task:\n{log}"
    );
    assert!(
        !log.contains("s3cr3t-value"),
        "task env values never logged"
    );

    // A server cancellation runs the cancel command with the ids.
    client.cancel_run(&first).await.unwrap();
    let cancel_env = s.cancelled(&first).await;
    assert_eq!(cancel_env["OZ_RUN_ID"], first);
    assert_eq!(cancel_env["OZ_EXECUTION_ID"], exec);
    assert_eq!(cancel_env["OZ_WORKER_BACKEND"], "command");
    assert_eq!(cancel_env["CONFIGURED"], "from-config");
    assert!(!cancel_env.contains_key("TASK_SECRET"));
    wait_gone(first_job, "the cancelled job").await;
    assert_eq!(s.count(&first, "cancels"), 1);
    let now = client.get_run(&first).await.unwrap();
    assert!(
        now.cancel_requested && now.state == RunState::Claimed,
        "{now:#?}"
    );
    assert_eq!(s.count(&second, "cancels"), 0, "only the cancelled run's");
    client.cancel_run(&second).await.unwrap();
    s.cancelled(&second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dispatch_is_dispatch_command_with_the_exit_code() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-exit");
    let _w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("FAKE_DISPATCH", "exit-3")]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("dispatch_command"));
    assert_eq!(done.exit_code, Some(3));
    let message = done.message.unwrap_or_default();
    assert!(message.contains("refusing"), "quotes the output: {message}");
    assert_eq!(s.count(&run, "dispatches"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_past_its_timeout_is_killed_with_its_group() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-timeout");
    let _w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("FAKE_DISPATCH", "hang")]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("dispatch_timeout"));
    assert!(
        done.message.unwrap_or_default().contains("2s"),
        "names the limit"
    );
    wait_gone(s.pid(&run, "hang_pid"), "the dispatch command").await;
    wait_gone(
        s.pid(&run, "hang_child_pid"),
        "the dispatch command's child",
    )
    .await;
    assert_eq!(s.count(&run, "dispatches"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_dispatched_tasks_alone_and_a_restart_still_cancels_them() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-term");
    let mut w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[]).await;
    let job = s.dispatched(&w, &run).await;
    w.signal(15);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; log:\n{}", w.log_text());
    assert!(running(job), "the dispatched job is left alone");
    assert_eq!(s.count(&run, "cancels"), 0, "no cancel at shutdown");
    assert_eq!(
        s.plane.client().get_run(&run).await.unwrap().state,
        RunState::Claimed,
        "nothing reported for it"
    );

    let _restarted = s.worker(&id, &[]).await;
    s.plane.client().cancel_run(&run).await.unwrap();
    let env = s.cancelled(&run).await;
    assert_eq!(env["OZ_RUN_ID"], run);
    assert_eq!(
        Some(&env["OZ_EXECUTION_ID"]),
        s.plane
            .client()
            .get_run(&run)
            .await
            .unwrap()
            .execution_id
            .as_ref()
    );
    wait_gone(job, "the cancelled job").await;
    assert_eq!(s.count(&run, "dispatches"), 1, "never dispatched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_still_runs_the_cancel_command() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-kill");
    let mut w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[]).await;
    let job = s.dispatched(&w, &run).await;
    w.signal(9);
    w.wait_exit(Duration::from_secs(10)).await;
    assert!(running(job));

    let restarted = s.worker(&id, &[]).await;
    assert!(
        restarted
            .log_text()
            .contains("dispatched by an earlier run"),
        "{}",
        restarted.log_text()
    );
    s.plane.client().cancel_run(&run).await.unwrap();
    let env = s.cancelled(&run).await;
    assert_eq!(env["OZ_RUN_ID"], run);
    wait_gone(job, "the cancelled job").await;
    assert_eq!(s.count(&run, "dispatches"), 1, "never dispatched again");
    assert_eq!(
        s.plane.client().get_run(&run).await.unwrap().state,
        RunState::Claimed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_dispatch_then_restart_stops_the_dispatch_and_reports_the_run() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-kill-mid");
    let mut w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("FAKE_DISPATCH", "hang")]).await;
    wait_file(&s.dir(&run).join("hang_pid")).await;
    let (dispatch, child) = (s.pid(&run, "hang_pid"), s.pid(&run, "hang_child_pid"));
    w.signal(9);
    w.wait_exit(Duration::from_secs(10)).await;

    let _restarted = s.worker(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("dispatch_command"));
    assert!(done.message.unwrap_or_default().contains("died"));
    // Whether it reached the outside system is unknown: it is cancelled there.
    let env = s.cancelled(&run).await;
    assert_eq!(env["OZ_RUN_ID"], run);
    wait_gone(dispatch, "the interrupted dispatch command").await;
    wait_gone(child, "the interrupted dispatch command's child").await;
    assert_eq!(s.count(&run, "dispatches"), 1);
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/command-backend")
        .join(name)
}

/// A worker whose dispatch and cancel commands are `dispatch`/`cancel`.
fn worker_with<'a>(
    s: &CommandSetup,
    id: &'a str,
    dispatch: &str,
    cancel: &str,
    env: &[(&str, &str)],
) -> WorkerOptions<'a> {
    let entries: String = env
        .iter()
        .map(|(k, v)| format!("      - name: {k}\n        value: '{v}'\n"))
        .collect();
    let yaml = format!(
        "backend:\n  command:\n    dispatch_command: '{dispatch}'\n    cancel_command: '{cancel}'\n    dispatch_timeout: 60s\n    environment:\n{entries}"
    );
    let config = s.root.path().join("example.yaml");
    std::fs::write(&config, yaml).unwrap();
    WorkerOptions {
        worker_id: id,
        extra_args: vec![
            "--backend".into(),
            "command".into(),
            "--config-file".into(),
            config.display().to_string(),
        ],
        ..Default::default()
    }
}

/// The example dispatcher, in its dry-run mode, given the real payload the
/// worker sends: the `docker run` it would start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_dispatcher_plans_a_real_payload() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-example-plan");
    let out = s.report_root();
    let dispatch = format!(
        "tee {out}/$OZ_RUN_ID.json | OZ_DISPATCH_DRY_RUN=1 python3 {script} >{out}/$OZ_RUN_ID.plan",
        out = out.display(),
        script = example("dispatch.py").display()
    );
    let opts = worker_with(&s, &id, &dispatch, "true", &[]);
    let w = WorkerProcess::start(&s.plane, Engine::None, opts).await;
    let req = CreateRunRequest {
        worker_host: id.clone(),
        title: Some("example".into()),
        docker_image: Some(BUSYBOX.into()),
        sidecar_image: Some(SIDECAR.into()),
        additional_sidecars: vec![oz_protocol::SidecarSpec {
            image: BUSYBOX.into(),
            mount_path: "/tools".into(),
            read_write: true,
        }],
        env_vars: [("TASK_SECRET".to_string(), "s3cr3t-value".into())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let run = s.plane.client().create_run(&req).await.unwrap().id;
    let plan_path = out.join(format!("{run}.plan"));
    wait_file(&plan_path).await;
    w.wait_for_log("task dispatched", RUN_TIMEOUT).await;
    let exec = s
        .plane
        .client()
        .get_run(&run)
        .await
        .unwrap()
        .execution_id
        .unwrap();
    let text = std::fs::read_to_string(&plan_path).unwrap();
    assert!(
        !text.contains("s3cr3t-value"),
        "no secret in the plan: {text}"
    );
    let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    let argv: Vec<&str> = plan["docker_run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| -> Vec<&str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1])
            .collect()
    };
    assert_eq!(argv[1..3], ["run", "--detach"]);
    assert_eq!(
        after("--name"),
        [format!("oz-task-{run}-{}", &exec[exec.len() - 8..])]
    );
    assert_eq!(
        after("--label"),
        [
            format!("dev.oz.run-id={run}"),
            format!("dev.oz.execution-id={exec}"),
            format!("dev.oz.worker-id={id}")
        ]
    );
    let volumes = after("--volume");
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    assert!(volumes[0].ends_with(":/agent:ro") && volumes[0].contains(SIDECAR));
    assert!(volumes[1].ends_with(":/tools:rw"));
    let env_names = after("--env");
    assert!(env_names.contains(&"TASK_SECRET") && env_names.contains(&"TASK_ID"));
    // Image, program, then the base args exactly as the payload has them.
    let payload: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{run}.json"))).unwrap())
            .unwrap();
    assert_valid(&schema_validator(), &payload);
    let dashdash = argv.iter().position(|a| *a == "--").unwrap();
    let base_args: Vec<&str> = payload["base_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        argv[dashdash + 1..dashdash + 3],
        [BUSYBOX, "/agent/entrypoint.sh"]
    );
    assert_eq!(argv[dashdash + 3..], base_args[..]);
    assert_eq!(
        s.plane.client().get_run(&run).await.unwrap().state,
        RunState::Claimed
    );
}

/// The example for real: the demo agent runs in a detached container on
/// the test dockerd, and a server cancellation removes it through cancel.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_dispatcher_runs_the_agent_in_a_detached_container() {
    if !Engine::Docker.available() {
        return;
    }
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-example");
    let cache = s.root.path().join("cache");
    let mut opts = worker_with(
        &s,
        &id,
        &format!("python3 {}", example("dispatch.py").display()),
        &format!("python3 {}", example("cancel.py").display()),
        &[
            ("OZ_DISPATCH_CACHE", cache.to_str().unwrap()),
            ("OZ_CANCEL_GRACE", "1"),
        ],
    );
    opts.env = Engine::Docker.env();
    let w = WorkerProcess::start(&s.plane, Engine::None, opts).await;
    let req = CreateRunRequest {
        worker_host: id.clone(),
        title: Some("example".into()),
        docker_image: Some(BUSYBOX.into()),
        sidecar_image: Some(SIDECAR.into()),
        env_vars: [
            ("OZ_DEMO_BEHAVIOUR".to_string(), "sleep".into()),
            ("TASK_SECRET".to_string(), "s3cr3t-value".into()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let run = s.plane.client().create_run(&req).await.unwrap().id;
    w.wait_for_log("task dispatched", RUN_TIMEOUT).await;

    let docker = |args: &[&str]| -> String {
        let out = std::process::Command::new("docker")
            .args(args)
            .envs(Engine::Docker.env())
            .output()
            .expect("the docker CLI runs");
        assert!(out.status.success(), "docker {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let label = format!("label=dev.oz.run-id={run}");
    let ps = || docker(&["ps", "--all", "--quiet", "--filter", &label]);
    let container = ps().trim().to_string();
    assert!(!container.is_empty(), "a container for {run}");
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let logs = loop {
        let logs = docker(&["logs", &container]);
        if logs.contains("argv:") {
            break logs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent output: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        logs.contains(&format!("task {run} started in /workspace")),
        "{logs}"
    );
    assert!(logs.contains(&format!("--task-id {run}")), "{logs}");
    let env = docker(&["exec", &container, "env"]);
    assert!(
        env.contains("TASK_SECRET=s3cr3t-value"),
        "the task env reaches the agent"
    );
    let inspect = docker(&["inspect", "--format", "{{json .Args}}", &container]);
    assert!(!inspect.contains("s3cr3t-value"), "never on a command line");
    assert_eq!(
        std::fs::read_dir(cache.join("sidecars")).unwrap().count(),
        1,
        "the sidecar is unpacked once"
    );

    s.plane.client().cancel_run(&run).await.unwrap();
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while !ps().trim().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cancel.py did not remove the container; log:\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--task-timeout` on the command runtime bounds the dispatch (a hung
/// dispatch command is killed with its group at the limit and the run is
/// reported `task_timeout`); a dispatched task is the outside system's from
/// then on: the worker runs nothing of it, so its deadline is that
/// system's, and the limit does not touch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_timeout_bounds_the_dispatch_not_the_dispatched_task() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-task-timeout");
    // Shorter than the config's dispatch_timeout (2s), so it is the one that fires.
    let w = s.worker(&id, &["--task-timeout", "1s"]).await;
    let hung = s.run(&id, &[("FAKE_DISPATCH", "hang")]).await;
    let done = wait_terminal(&s.plane, &hung, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("task_timeout"));
    assert!(
        done.message.unwrap_or_default().contains("task_timeout 1s"),
        "names the limit"
    );
    wait_gone(s.pid(&hung, "hang_pid"), "the dispatch command").await;
    wait_gone(
        s.pid(&hung, "hang_child_pid"),
        "the dispatch command's child",
    )
    .await;

    let run = s.run(&id, &[]).await;
    let job = s.dispatched(&w, &run).await;
    // A window twice the limit: nothing may stop the dispatched job in it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        running(job),
        "the dispatched job is not the worker's to time out"
    );
    let claimed = s.plane.client().get_run(&run).await.unwrap();
    assert_eq!(claimed.state, RunState::Claimed, "{claimed:#?}");
    s.plane.client().cancel_run(&run).await.unwrap();
    s.cancelled(&run).await;
    wait_gone(job, "the dispatched job").await;
}

/// `runs cancel` from 10 processes at once, through the real CLI.
async fn cancel_ten_times(s: &CommandSetup, run: &str) {
    let cancels: Vec<_> = (0..10)
        .map(|_| {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_oz-agent-worker"))
                .args(["runs", "cancel", run, "--server", &s.plane.plane.url()])
                .env("WARP_API_KEY", &s.plane.key)
                .output()
        })
        .collect();
    for out in futures_util::future::join_all(cancels).await {
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "runs cancel: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn cancel_requests_in_history(run: &oz_runs_api::model::Run) -> usize {
    run.history
        .iter()
        .filter(|h| {
            h.note
                .as_deref()
                .is_some_and(|n| n.contains("cancel requested"))
        })
        .count()
}

/// Issue 22 item 2: a cancellation while `dispatch_command` still runs kills
/// it, reports CANCELLED and runs `cancel_command` (the dispatch may already
/// have reached the outside system). Ten concurrent `runs cancel` make one
/// history entry, one `task_cancellation` and one run of the cancel command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_dispatch_kills_it_and_runs_the_cancel_command_once() {
    let mut s = CommandSetup::new().await;
    s.dispatch_timeout = "120s";
    let id = unique_id("cmd-cancel-dispatch");
    let w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("FAKE_DISPATCH", "hang")]).await;
    wait_file(&s.dir(&run).join("hang_pid")).await;
    let (dispatcher, child) = (s.pid(&run, "hang_pid"), s.pid(&run, "hang_child_pid"));
    cancel_ten_times(&s, &run).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Cancelled, "{done:#?}");
    wait_gone(dispatcher, "the dispatch command").await;
    wait_gone(child, "the dispatch command's child").await;
    s.cancelled(&run).await;
    assert_eq!(cancel_requests_in_history(&done), 1, "{done:#?}");
    let log = w.log_text();
    assert_eq!(
        log.matches("cancelling task on the server's request")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("repeated cancellation"), "{log}");
    // The cancel command ran to its end: nothing runs it again later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.count(&run, "cancels"), 1, "cancel_command runs");
    assert_eq!(s.count(&run, "dispatches"), 1);
}

/// Issue 22 item 2: ten concurrent `runs cancel` of a dispatched task run
/// its `cancel_command` once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancels_of_a_dispatched_task_run_the_cancel_command_once() {
    let s = CommandSetup::new().await;
    let id = unique_id("cmd-cancel-many");
    let w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[]).await;
    let job = s.dispatched(&w, &run).await;
    cancel_ten_times(&s, &run).await;
    s.cancelled(&run).await;
    wait_gone(job, "the dispatched job").await;
    let after = s.plane.client().get_run(&run).await.unwrap();
    assert_eq!(cancel_requests_in_history(&after), 1, "{after:#?}");
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    while !w
        .log_text()
        .contains("cancelling a dispatched task through the runtime")
    {
        assert!(tokio::time::Instant::now() < deadline, "{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.count(&run, "cancels"), 1, "cancel_command runs");
    assert_eq!(
        w.log_text()
            .matches("cancelling a dispatched task through the runtime")
            .count(),
        1
    );
}
