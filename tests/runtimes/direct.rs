//! End to end: the direct runtime. The real worker binary runs
//! `tests/fixtures/fake-oz/oz` (a fake agent program that records its argv,
//! working directory, environment, pid and process group, and can hold on
//! and trap SIGTERM) on this host, against the embedded control plane or
//! the scripted orchestrator. No container engine is involved.

use oz_test_support as support;

use oz_protocol::*;
use oz_runs_api::model::RunState;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::fixtures::fake_oz;
use support::host::{running, wait_file, wait_gone};
use support::scripted_server::ScriptedServer;
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Not in the agent's environment, though the worker has it.
const WORKER_ONLY: (&str, &str) = ("WORKER_ONLY_SETTING", "worker-private-value");

struct Direct {
    plane: TestPlane,
    root: tempfile::TempDir,
}

impl Direct {
    async fn new() -> Direct {
        let root = tempfile::tempdir().unwrap();
        for d in ["ws", "report", "home", "tmp"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        Direct {
            plane: TestPlane::start(test_config()).await,
            root,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    fn workspace_root(&self) -> PathBuf {
        self.path("ws")
    }

    /// The config file: the fake agent, a setup command that writes a
    /// dotenv line and logs its variables (then hangs when the task sets
    /// `SETUP_HANG`, or exits `$SETUP_EXIT`), a teardown command that logs
    /// where it ran (and hangs while `report/hang-teardown` exists), and
    /// configured entries.
    fn config(&self) -> PathBuf {
        let report = self.path("report");
        let yaml = format!(
            r#"backend:
  direct:
    workspace_root: {ws}
    oz_path: {oz}
    setup_command: 'echo FROM_SETUP=from-setup >"$OZ_ENVIRONMENT_FILE"; printf "%s|%s|%s|%s|%s\n" "$OZ_RUN_ID" "$OZ_WORKER_BACKEND" "$OZ_WORKSPACE_ROOT" "$PWD" "${{WARP_API_KEY:-no-key}}" >>{report}/setup.log; if [ -n "${{SETUP_HANG:-}}" ]; then sleep 300 & echo "$$ $!" >{report}/setup-$OZ_RUN_ID.pids; wait; fi; exit "${{SETUP_EXIT:-0}}"'
    teardown_command: 'printf "%s|%s|%s\n" "$OZ_RUN_ID" "$PWD" "$GIT_CONFIG_GLOBAL" >>{report}/teardown.log; if [ -e {report}/hang-teardown ]; then sleep 300 & echo $! >{report}/teardown-$OZ_RUN_ID.pid; wait; fi'
    teardown_timeout: 1s
    environment:
      - name: FAKE_OZ_REPORT
        value: {report}
      - name: CONFIGURED
        value: from-config
"#,
            ws = self.workspace_root().display(),
            oz = fake_oz().display(),
            report = report.display(),
        );
        let path = self.path("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// A config file `name` whose `backend.direct` section is `section`
    /// (YAML lines indented by four spaces), with the fake agent, the
    /// workspace root and the report entry filled in.
    fn custom_config(&self, name: &str, section: &str) -> PathBuf {
        let yaml = format!(
            "backend:\n  direct:\n    workspace_root: {ws}\n    oz_path: {oz}\n    environment:\n      - name: FAKE_OZ_REPORT\n        value: {report}\n{section}",
            ws = self.workspace_root().display(),
            oz = fake_oz().display(),
            report = self.path("report").display(),
        );
        let path = self.path(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn options<'a>(&self, id: &'a str, extra: &[&str]) -> WorkerOptions<'a> {
        self.options_with(id, &self.config(), extra)
    }

    fn options_with<'a>(&self, id: &'a str, config: &Path, extra: &[&str]) -> WorkerOptions<'a> {
        let mut args = vec![
            "--backend".to_string(),
            "direct".into(),
            "--config-file".into(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        WorkerOptions {
            worker_id: id,
            extra_args: args,
            env: vec![
                ("HOME".into(), self.path("home").display().to_string()),
                ("TMPDIR".into(), self.path("tmp").display().to_string()),
                (WORKER_ONLY.0.into(), WORKER_ONLY.1.into()),
            ],
            ..Default::default()
        }
    }

    async fn worker(&self, id: &str, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::start(&self.plane, Engine::None, self.options(id, extra)).await
    }

    async fn worker_with(&self, id: &str, config: &Path, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::start(
            &self.plane,
            Engine::None,
            self.options_with(id, config, extra),
        )
        .await
    }

    /// Lets `oz-agent-test` (scripts/test-env.sh makes it) reach the test's
    /// folders: the root searchable, the report folder writable.
    fn open_to_the_test_user(&self) {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        mode(self.root.path(), 0o755);
        mode(&self.path("report"), 0o777);
    }

    async fn run(&self, host: &str, env: &[(&str, &str)]) -> String {
        let req = host_run(host, "direct", env);
        self.plane.client().create_run(&req).await.unwrap().id
    }

    fn report_dir(&self, run: &str) -> PathBuf {
        self.path("report").join(run)
    }

    fn report(&self, run: &str, name: &str) -> String {
        std::fs::read_to_string(self.report_dir(run).join(name))
            .unwrap_or_else(|e| panic!("fake oz report {name} missing for {run}: {e}"))
    }

    fn pid(&self, run: &str, name: &str) -> u32 {
        self.report(run, name).trim().parse().unwrap()
    }

    fn env(&self, run: &str) -> BTreeMap<String, String> {
        self.report(run, "env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The agent started exactly once for `run`.
    fn started_once(&self, run: &str) {
        let starts = self.report(run, "starts");
        assert_eq!(
            starts.lines().count(),
            1,
            "agent starts for {run}: {starts}"
        );
    }

    /// Lines of `setup.log` / `teardown.log` about `run`, split at `|`.
    fn logged(&self, file: &str, run: &str) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.path("report").join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('|').map(str::to_string).collect::<Vec<_>>())
            .filter(|f| f[0] == run)
            .collect()
    }

    /// Waits for the teardown command to have logged `run` (it runs after
    /// the report is queued, so it may lag the run's terminal state).
    async fn teardown_of(&self, run: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(line) = self.logged("teardown.log", run).pop() {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "teardown never ran for {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_removed(&self, path: &Path) {
        let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
        while path.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} was not removed",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_path_contract() {
    let s = Direct::new().await;
    let id = unique_id("direct-ok");
    let w = s
        .worker(
            &id,
            &["-e", "OPERATOR_VAR=from-flag", "-e", "SHARED=operator-wins"],
        )
        .await;
    let run = s
        .run(
            &id,
            &[("TASK_SECRET", "s3cr3t-value"), ("SHARED", "task-loses")],
        )
        .await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    s.started_once(&run);

    assert_eq!(
        s.report(&run, "program").trim(),
        fake_oz().display().to_string()
    );
    let root = s.plane.plane.url();
    let argv: Vec<String> = s.report(&run, "argv").lines().map(String::from).collect();
    let expected = [
        "agent",
        "run",
        "--share",
        "team:edit",
        "--task-id",
        &run,
        "--sandboxed",
        "--server-root-url",
        &root,
        "--idle-on-complete",
    ];
    assert_eq!(argv, expected, "the base args follow the program");

    let workspace = s.workspace_root().join(&run);
    assert_eq!(
        s.report(&run, "cwd").trim(),
        workspace.display().to_string()
    );
    assert_eq!(s.report(&run, "cwd_mode").trim(), "700");
    assert_eq!(
        s.report(&run, "pgid").trim(),
        s.report(&run, "pid").trim(),
        "the agent leads its own process group"
    );
    let oom: i32 = s.report(&run, "oom_score_adj").trim().parse().unwrap();
    assert!(
        oom > 0,
        "the agent, not the worker, is the OOM killer's choice: {oom}"
    );

    let env = s.env(&run);
    let git_config = workspace.join(".gitconfig").display().to_string();
    let path = std::env::var("PATH").unwrap();
    let home = s.path("home").display().to_string();
    let tmp = s.path("tmp").display().to_string();
    let report = s.path("report").display().to_string();
    let want: BTreeMap<&str, &str> = [
        ("HOME", home.as_str()),
        ("TMPDIR", tmp.as_str()),
        ("PATH", path.as_str()),
        ("TASK_ID", run.as_str()),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GH_PROMPT_DISABLED", "1"),
        ("WARP_SERVER_ROOT_URL", root.as_str()),
        ("TASK_SECRET", "s3cr3t-value"),
        ("SHARED", "operator-wins"),
        ("OPERATOR_VAR", "from-flag"),
        ("FAKE_OZ_REPORT", report.as_str()),
        ("CONFIGURED", "from-config"),
        ("FROM_SETUP", "from-setup"),
        ("GIT_CONFIG_GLOBAL", git_config.as_str()),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        got, want,
        "only HOME/TMPDIR/PATH of the worker's environment, the task's and the configured entries"
    );
    assert!(!env.values().any(|v| v == &s.plane.key), "no API key");
    assert!(!env.contains_key(WORKER_ONLY.0));

    let setup = s.logged("setup.log", &run);
    assert_eq!(setup.len(), 1, "{setup:?}");
    let ws = workspace.display().to_string();
    assert_eq!(
        setup[0][1..],
        ["direct", ws.as_str(), ws.as_str(), "no-key"],
        "setup: OZ_* variables, run in the workspace, without the API key"
    );
    let teardown = s.teardown_of(&run).await;
    assert_eq!(teardown[1..], [ws.as_str(), git_config.as_str()]);
    s.wait_removed(&workspace).await;
    assert!(
        !w.log_text().contains("s3cr3t-value"),
        "task env values never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonzero_exit_is_agent_invocation_with_the_code() {
    let s = Direct::new().await;
    let id = unique_id("direct-exit");
    let _w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("FAKE_OZ_EXIT", "3")]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("agent_invocation"));
    assert_eq!(done.exit_code, Some(3));
    let message = done.message.unwrap_or_default();
    assert!(
        message.contains("exited with code 3") && message.contains("fake oz: done"),
        "the message quotes the agent's last output: {message}"
    );
    s.started_once(&run);
    s.teardown_of(&run).await;
    s.wait_removed(&s.workspace_root().join(&run)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_command_failure_is_setup_command_and_the_agent_never_starts() {
    let s = Direct::new().await;
    let id = unique_id("direct-setup");
    let _w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("SETUP_EXIT", "7")]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("setup_command"));
    assert_eq!(done.exit_code, Some(7));
    assert_eq!(s.logged("setup.log", &run).len(), 1, "setup ran once");
    assert!(!s.report_dir(&run).exists(), "the agent never started");
    s.teardown_of(&run).await;
    s.wait_removed(&s.workspace_root().join(&run)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_terms_the_group_kills_after_the_grace_and_tears_down() {
    let s = Direct::new().await;
    let id = unique_id("direct-cancel");
    let grace = Duration::from_secs(3);
    let _w = s.worker(&id, &["--stop-grace-period", "3s"]).await;
    let run = s.run(&id, &[("FAKE_OZ_BEHAVIOUR", "hold")]).await;
    wait_file(&s.report_dir(&run).join("ready")).await;
    let (agent, grandchild) = (s.pid(&run, "pid"), s.pid(&run, "gc_pid"));
    assert!(running(agent) && running(grandchild));

    s.plane.client().cancel_run(&run).await.unwrap();
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Cancelled, "{done:#?}");
    wait_gone(agent, "the agent").await;
    wait_gone(grandchild, "the agent's grandchild").await;

    let nanos = |name: &str| -> u128 {
        s.report(&run, name)
            .lines()
            .next()
            .unwrap_or_else(|| panic!("{name} is empty"))
            .trim()
            .parse()
            .unwrap()
    };
    let term = nanos("term");
    nanos("gc_term"); // the grandchild got SIGTERM too: it went to the group
    let last_alive = nanos("alive");
    // The heartbeat is written every 0.1 s: the agent lived on well into
    // the grace period after SIGTERM (the margin absorbs a heartbeat loop
    // slowed by a loaded machine; an early SIGKILL leaves nearly nothing).
    let alive_after_term = Duration::from_nanos((last_alive.saturating_sub(term)) as u64);
    assert!(
        alive_after_term >= grace / 2,
        "the agent ignored SIGTERM and was killed only {alive_after_term:?} later (grace {grace:?})"
    );
    s.started_once(&run);
    s.teardown_of(&run).await;
    s.wait_removed(&s.workspace_root().join(&run)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_dir_is_used_kept_and_torn_down() {
    let s = Direct::new().await;
    let target = s.path("checkout");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("marker"), "keep me").unwrap();
    let id = unique_id("direct-target");
    let _w = s
        .worker(&id, &["--target-dir", target.to_str().unwrap()])
        .await;
    let run = s.run(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    s.started_once(&run);
    assert_eq!(s.report(&run, "cwd").trim(), target.display().to_string());
    // The global git config lives outside the shared checkout, in a private
    // temporary folder that goes with the task.
    let git_config = PathBuf::from(&s.env(&run)["GIT_CONFIG_GLOBAL"]);
    assert_eq!(git_config.file_name().unwrap(), ".gitconfig");
    let git_dir = git_config.parent().unwrap().to_path_buf();
    assert!(
        git_dir.starts_with(s.path("tmp"))
            && git_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("oz-gitconfig-"),
        "{}",
        git_dir.display()
    );
    let teardown = s.teardown_of(&run).await;
    assert_eq!(teardown[1], target.display().to_string());
    s.wait_removed(&git_dir).await;
    assert_eq!(
        std::fs::read_to_string(target.join("marker")).unwrap(),
        "keep me"
    );
    let left: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["marker"], "the setup-output file is removed");
    assert_eq!(
        std::fs::read_dir(s.workspace_root()).unwrap().count(),
        0,
        "no per-task workspace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cleanup_keeps_the_workspace() {
    let s = Direct::new().await;
    let id = unique_id("direct-keep");
    let _w = s.worker(&id, &["--no-cleanup"]).await;
    let run = s.run(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    s.started_once(&run);
    let workspace = s.workspace_root().join(&run);
    assert!(workspace.is_dir(), "--no-cleanup keeps the workspace");
    assert!(
        s.logged("teardown.log", &run).is_empty(),
        "with cleanup off teardown does not run either (the Go worker's rule)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_worker_reports_graceful_shutdown_and_leaves_no_agent() {
    let s = Direct::new().await;
    let id = unique_id("direct-term");
    let mut w = s.worker(&id, &[]).await;
    let run = s
        .run(
            &id,
            &[("FAKE_OZ_BEHAVIOUR", "hold"), ("FAKE_OZ_ON_TERM", "exit")],
        )
        .await;
    wait_file(&s.report_dir(&run).join("ready")).await;
    let (agent, grandchild) = (s.pid(&run, "pid"), s.pid(&run, "gc_pid"));
    w.signal(15);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; log:\n{}", w.log_text());
    let done = wait_terminal(&s.plane, &run, Duration::from_secs(10)).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("graceful_shutdown"));
    assert!(
        !running(agent) && !running(grandchild),
        "no agent process left"
    );
    assert!(s.report_dir(&run).join("term").exists(), "asked politely");
    s.started_once(&run);
    assert_eq!(s.logged("teardown.log", &run).len(), 1);
    assert!(!s.workspace_root().join(&run).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_stops_the_orphaned_agent_and_reports_the_run() {
    let s = Direct::new().await;
    let id = unique_id("direct-kill");
    let hold = [("FAKE_OZ_BEHAVIOUR", "hold")];
    let mut a = s.worker(&id, &["--max-concurrent-tasks", "1"]).await;
    let on_a = s.run(&id, &hold).await;
    wait_file(&s.report_dir(&on_a).join("ready")).await;
    let (agent, grandchild) = (s.pid(&on_a, "pid"), s.pid(&on_a, "gc_pid"));
    // A live sibling sharing the id and the state directory, with a task of
    // its own: its start must not touch A's agent, nor A's restart its.
    let sibling = s.worker(&id, &[]).await;
    let on_sibling = s.run(&id, &hold).await;
    wait_file(&s.report_dir(&on_sibling).join("ready")).await;
    let sibling_agent = s.pid(&on_sibling, "pid");
    assert!(
        running(agent) && running(grandchild),
        "a sibling's start leaves a live worker's agent alone"
    );

    a.signal(9);
    a.wait_exit(Duration::from_secs(10)).await;
    assert!(
        running(agent) && running(grandchild),
        "the agent outlives a killed worker (its own process group)"
    );

    let restarted = s.worker(&id, &[]).await;
    let done = wait_terminal(&s.plane, &on_a, Duration::from_secs(30)).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("unknown"));
    let message = done.message.unwrap_or_default();
    assert!(
        message.contains("died") && message.contains("stopped"),
        "{message}"
    );
    wait_gone(agent, "the orphaned agent").await;
    wait_gone(grandchild, "the orphaned agent's grandchild").await;
    assert!(restarted
        .log_text()
        .contains("stopped an agent left running by a dead earlier run"));
    s.wait_removed(&s.workspace_root().join(&on_a)).await;
    s.started_once(&on_a);

    assert!(
        running(sibling_agent),
        "the live sibling's agent is untouched"
    );
    assert_eq!(
        s.plane.client().get_run(&on_sibling).await.unwrap().state,
        RunState::Claimed
    );
    s.plane.client().cancel_run(&on_sibling).await.unwrap();
    let done = wait_terminal(&s.plane, &on_sibling, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Cancelled, "{done:#?}");
    s.started_once(&on_sibling);
    drop(sibling);
}

/// The local control plane makes its own run ids, so an id that cannot
/// name a folder comes from the scripted orchestrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_that_is_not_one_path_component_is_refused_as_workspace_setup() {
    let s = Direct::new().await;
    let server = ScriptedServer::start().await;
    let id = unique_id("direct-unsafe");
    let _w = WorkerProcess::spawn_at(
        &server.ws_url,
        "http://oz.invalid",
        "ozk_scripted-test-key-0001",
        Engine::None,
        s.options(&id, &[]),
    );
    let mut conn = server.accept(Duration::from_secs(30)).await;
    for task_id in ["..", "a/b"] {
        let a = TaskAssignment {
            task_id: task_id.into(),
            execution_id: Some("exec-1".into()),
            task: Task {
                id: task_id.into(),
                title: "t".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        conn.send_text(&encode(&ServerMessage::TaskAssignment(Box::new(a))))
            .await;
        match conn.next_message(Duration::from_secs(10)).await {
            Some(WorkerMessage::TaskClaimed(c)) => assert_eq!(c.task_id, task_id),
            other => panic!("expected task_claimed, got {other:?}"),
        }
        match conn.next_message(Duration::from_secs(10)).await {
            Some(WorkerMessage::TaskFailed(f)) => {
                assert_eq!(f.task_id, task_id);
                assert_eq!(f.failure_reason, FailureReason::WorkspaceSetup);
                assert!(f.message.contains("one path component"), "{}", f.message);
            }
            other => panic!("expected task_failed, got {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read_dir(s.workspace_root()).unwrap().count(),
        0,
        "nothing made under the workspace root"
    );
    assert!(
        s.logged("setup.log", "..").is_empty(),
        "no setup command for a refused task"
    );
    assert_eq!(
        std::fs::read_dir(s.path("report")).unwrap().count(),
        0,
        "the agent never started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_teardown_is_killed_at_its_time_limit() {
    let s = Direct::new().await;
    std::fs::write(s.path("report/hang-teardown"), "").unwrap();
    let id = unique_id("direct-teardown");
    let w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let sleeper: u32 = std::fs::read_to_string(s.path(&format!("report/teardown-{run}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_gone(sleeper, "the teardown command's child").await;
    w.wait_for_log("did not finish within 1s", RUN_TIMEOUT)
        .await;
    s.wait_removed(&s.workspace_root().join(&run)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_setup_then_restart_stops_the_setup_command() {
    let s = Direct::new().await;
    let id = unique_id("direct-kill-setup");
    let mut w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("SETUP_HANG", "1")]).await;
    let pids = s.path(&format!("report/setup-{run}.pids"));
    wait_file(&pids).await;
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    w.signal(9);
    w.wait_exit(Duration::from_secs(10)).await;
    assert!(
        pids.iter().all(|p| running(*p)),
        "setup outlives its worker"
    );

    let restarted = s.worker(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("unknown"));
    assert!(
        done.message.unwrap_or_default().contains("did not run"),
        "the agent never started"
    );
    for pid in pids {
        wait_gone(pid, "the orphaned setup command").await;
    }
    assert!(restarted
        .log_text()
        .contains("stopped a setup command left running by a dead earlier run"));
    assert!(!s.report_dir(&run).exists(), "the agent never started");
    s.wait_removed(&s.workspace_root().join(&run)).await;
}

/// The test user's ids (scripts/test-env.sh creates it).
fn test_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, TEST_USER])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "no user {TEST_USER}: run scripts/test-env.sh up"
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

const TEST_USER: &str = "oz-agent-test";

/// A number no other process has in its argv: `sleep MARKER` is findable.
fn marker(prefix: u32) -> String {
    format!(
        "{prefix}{:05}{:03}",
        std::process::id() % 100_000,
        fastrand::u32(..1000)
    )
}

/// Pids of live processes whose argv holds `needle` as one argument.
fn with_arg(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == needle.as_bytes()))
                && running(*pid)
        })
        .collect()
}

async fn wait_no_process_with(needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = with_arg(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes with {needle} in their argv still run: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run `run` of fake-oz started a child in its own session (`FAKE_OZ_SETSID`)
/// that traps SIGTERM: once the agent is ready, the child is outside the
/// agent's process group; the run is cancelled, both end, and the child
/// lived at least half of `grace` after its SIGTERM.
async fn cancel_and_check_the_escaped_child_got_the_grace(s: &Direct, run: &str, grace: Duration) {
    wait_file(&s.report_dir(run).join("ready")).await;
    let (agent, child) = (s.pid(run, "pid"), s.pid(run, "gc_pid"));
    assert_ne!(
        pgid_of(child),
        pgid_of(agent),
        "the child left the agent's group"
    );
    s.plane.client().cancel_run(run).await.unwrap();
    let done = wait_terminal(&s.plane, run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Cancelled, "{done:#?}");
    wait_gone(agent, "the agent").await;
    wait_gone(child, "the escaped child").await;
    let nanos = |name: &str| -> u64 {
        s.report(run, name)
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let lived = Duration::from_nanos(nanos("gc_alive").saturating_sub(nanos("gc_term")));
    assert!(
        lived >= grace / 2,
        "the escaped child got SIGTERM and was killed only {lived:?} later (grace {grace:?})"
    );
}

fn pgid_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A setup command that leaves `sleep SETUP_MARKER` in the background.
fn background_setup(report: &Path, setup_marker: &str) -> String {
    format!(
        "    setup_command: 'sleep {setup_marker} </dev/null >/dev/null 2>&1 & echo $! >{}/setup-bg-$OZ_RUN_ID.pid'\n",
        report.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_a_task_starts_ends_with_it() {
    let s = Direct::new().await;
    let (setup_marker, agent_marker) = (marker(3331), marker(3332));
    let config = s.custom_config(
        "escape.yaml",
        &background_setup(&s.path("report"), &setup_marker),
    );
    let id = unique_id("direct-escape");
    let _w = s.worker_with(&id, &config, &[]).await;
    let run = s
        .run(
            &id,
            &[
                ("FAKE_OZ_BEHAVIOUR", "escape"),
                ("FAKE_OZ_MARKER", &agent_marker),
            ],
        )
        .await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let setup_bg: u32 = std::fs::read_to_string(s.path(&format!("report/setup-bg-{run}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (escaped, orphan) = (s.pid(&run, "escape_pid"), s.pid(&run, "orphan_pid"));
    wait_gone(setup_bg, "the setup command's background sleep").await;
    wait_gone(escaped, "the agent's setsid sleep").await;
    wait_gone(orphan, "the agent's double-forked sleep").await;
    wait_no_process_with(&setup_marker).await;
    wait_no_process_with(&agent_marker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_gives_the_grace_to_a_child_that_left_the_process_group() {
    let s = Direct::new().await;
    let id = unique_id("direct-grace");
    let grace = Duration::from_secs(3);
    let _w = s.worker(&id, &["--stop-grace-period", "3s"]).await;
    let run = s
        .run(
            &id,
            &[("FAKE_OZ_BEHAVIOUR", "hold"), ("FAKE_OZ_SETSID", "1")],
        )
        .await;
    cancel_and_check_the_escaped_child_got_the_grace(&s, &run, grace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_leaves_no_process_of_its_task_after_its_restart() {
    let s = Direct::new().await;
    let (setup_marker, agent_marker) = (marker(3333), marker(3334));
    let report = s.path("report");
    let config = s.custom_config("kill.yaml", &background_setup(&report, &setup_marker));
    let id = unique_id("direct-kill-tree");
    let mut w = s.worker_with(&id, &config, &[]).await;
    let run = s
        .run(
            &id,
            &[
                ("FAKE_OZ_BEHAVIOUR", "hold"),
                ("FAKE_OZ_SETSID", "1"),
                ("FAKE_OZ_MARKER", &agent_marker),
            ],
        )
        .await;
    wait_file(&s.report_dir(&run).join("ready")).await;
    let setup_bg: u32 = std::fs::read_to_string(report.join(format!("setup-bg-{run}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (agent, child) = (s.pid(&run, "pid"), s.pid(&run, "gc_pid"));
    w.signal(9);
    w.wait_exit(Duration::from_secs(10)).await;

    let restarted = s.worker_with(&id, &config, &[]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("unknown"));
    for (pid, what) in [
        (agent, "the agent"),
        (child, "the agent's setsid child"),
        (setup_bg, "the setup command's background sleep"),
    ] {
        wait_gone(pid, what).await;
    }
    wait_no_process_with(&setup_marker).await;
    // The agent's child has the run's report folder in its argv.
    wait_no_process_with(&s.report_dir(&run).display().to_string()).await;
    s.wait_removed(&s.workspace_root().join(&run)).await;
    drop(restarted);
}

/// Whether the worker's cgroup v2 offers `controller` to task cgroups
/// (read the way an operator would check it).
fn cgroup_v2_offers(controller: &str) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4))?
    }) else {
        return false;
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    std::fs::read_to_string(format!("{mount}{own}/cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
}

/// With the memory controller: a real limit, an agent that allocates past
/// it, and a failure that says so. Without it (a hybrid cgroup v1/v2 host
/// like this test machine): the worker refuses to start, exit status 2,
/// naming the key and why, instead of running tasks without the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_is_enforced_or_refused_at_start_up() {
    let s = Direct::new().await;
    let config = s.custom_config("memory.yaml", "    memory: 64m\n    memory_swap: 64m\n");
    let id = unique_id("direct-memory");
    if cgroup_v2_offers("memory") {
        let _w = s.worker_with(&id, &config, &[]).await;
        let run = s.run(&id, &[("FAKE_OZ_BEHAVIOUR", "alloc")]).await;
        let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
        assert_eq!(done.state, RunState::Failed, "{done:#?}");
        assert_eq!(done.failure_reason.as_deref(), Some("agent_invocation"));
        assert_eq!(done.exit_code, Some(137), "SIGKILL from the OOM killer");
        assert!(
            done.message.unwrap_or_default().contains("OOM killer"),
            "the message says why"
        );
    } else {
        let mut w = WorkerProcess::spawn(&s.plane, Engine::None, s.options_with(&id, &config, &[]));
        let status = w.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(2), "log:\n{}", w.log_text());
        let log = w.log_text();
        assert!(
            log.contains("backend.direct.memory") && log.contains("cgroup v2 memory controller"),
            "{log}"
        );
        let config = s.custom_config("pids.yaml", "    pids_limit: 50\n");
        let mut w = WorkerProcess::spawn(&s.plane, Engine::None, s.options_with(&id, &config, &[]));
        let status = w.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(2), "log:\n{}", w.log_text());
        assert!(
            w.log_text().contains("backend.direct.pids_limit"),
            "{}",
            w.log_text()
        );
    }
}

/// A hostile agent, running as the configured unprivileged user, looks for
/// the worker's key everywhere it might be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_running_as_the_configured_user_finds_no_key() {
    let s = Direct::new().await;
    let (uid, _) = test_user();
    s.open_to_the_test_user();
    let state = s.path("state");
    let report = s.path("report");
    let config = s.custom_config(
        "user.yaml",
        &format!(
            "    user: {TEST_USER}\n    setup_command: 'id -u >{r}/setup-uid-$OZ_RUN_ID; touch mine'\n    teardown_command: 'id -u >{r}/teardown-uid-$OZ_RUN_ID'\n",
            r = report.display()
        ),
    );
    let id = unique_id("direct-hostile-user");
    let mut opts = s.options_with(&id, &config, &[]);
    opts.state_dir = Some(state.clone());
    let w = WorkerProcess::start(&s.plane, Engine::None, opts).await;
    let worker_pid = w.pid().to_string();
    let state_dir = state.display().to_string();
    let run = s
        .run(
            &id,
            &[
                ("FAKE_OZ_BEHAVIOUR", "hostile"),
                ("HOSTILE_WORKER_PID", &worker_pid),
                ("HOSTILE_STATE_DIR", &state_dir),
            ],
        )
        .await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert_eq!(
        s.report(&run, "uid").trim(),
        uid.to_string(),
        "ran as {TEST_USER}"
    );
    let found = s.report(&run, "found");
    assert!(
        found.contains(&format!("== /proc/{worker_pid}/environ")),
        "the agent looked: {found}"
    );
    assert!(
        found.contains("Permission denied"),
        "the worker's /proc files and state are closed to it: {found}"
    );
    assert!(
        !found.contains(&s.plane.key),
        "the key leaked to the agent:\n{found}"
    );
    assert!(!found.contains("WARP_API_KEY"), "{found}");
}

/// Root can read any process's /proc files: without `user`, the worker
/// warns, and its environment block holds no key any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_without_a_user_the_worker_warns_and_its_environment_has_no_key() {
    let s = Direct::new().await;
    let id = unique_id("direct-hostile-root");
    let w = s.worker(&id, &[]).await;
    assert!(
        w.log_text().contains("the agent runs as root"),
        "the start-up warning says what the agent can reach:\n{}",
        w.log_text()
    );
    let worker_pid = w.pid().to_string();
    let run = s
        .run(
            &id,
            &[
                ("FAKE_OZ_BEHAVIOUR", "hostile"),
                ("HOSTILE_WORKER_PID", &worker_pid),
            ],
        )
        .await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let found = s.report(&run, "found");
    let environ = found
        .split(&format!("== /proc/{worker_pid}/environ\n"))
        .nth(1)
        .and_then(|rest| rest.split("== ").next())
        .unwrap_or_default();
    assert!(
        environ.contains(WORKER_ONLY.0),
        "root read the worker's environment block: {found}"
    );
    assert!(
        !found.contains(&s.plane.key),
        "the key leaked to the agent:\n{found}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_environment_name_fails_the_task_before_anything_runs() {
    let s = Direct::new().await;
    let server = ScriptedServer::start().await;
    let id = unique_id("direct-bad-env");
    let _w = WorkerProcess::spawn_at(
        &server.ws_url,
        "http://oz.invalid",
        "ozk_scripted-test-key-0001",
        Engine::None,
        s.options(&id, &["-e", "OP_SECRET=operator-value"]),
    );
    let mut conn = server.accept(Duration::from_secs(30)).await;
    let mut a = TaskAssignment {
        task_id: "bad-env".into(),
        execution_id: Some("exec-1".into()),
        task: Task {
            id: "bad-env".into(),
            title: "t".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    a.env_vars
        .insert("OP_SECRET=shadow".into(), "from-task".into());
    conn.send_text(&encode(&ServerMessage::TaskAssignment(Box::new(a))))
        .await;
    match conn.next_message(Duration::from_secs(10)).await {
        Some(WorkerMessage::TaskClaimed(_)) => {}
        other => panic!("expected task_claimed, got {other:?}"),
    }
    match conn.next_message(Duration::from_secs(10)).await {
        Some(WorkerMessage::TaskFailed(f)) => {
            assert_eq!(f.failure_reason, FailureReason::Unknown);
            assert!(
                f.message.contains("OP_SECRET=shadow") && !f.message.contains("from-task"),
                "{}",
                f.message
            );
        }
        other => panic!("expected task_failed, got {other:?}"),
    }
    assert!(
        s.logged("setup.log", "bad-env").is_empty(),
        "no setup command"
    );
    assert!(!s.report_dir("bad-env").exists(), "no agent");
    assert_eq!(std::fs::read_dir(s.workspace_root()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_entries_win_over_the_tasks_in_the_agent_and_the_setup_command() {
    let s = Direct::new().await;
    let report = s.path("report");
    let config = s.custom_config(
        "op.yaml",
        &format!(
            "    setup_command: 'printf %s \"$OP_SECRET\" >{}/setup-op-$OZ_RUN_ID'\n",
            report.display()
        ),
    );
    let id = unique_id("direct-op-wins");
    let _w = s
        .worker_with(&id, &config, &["-e", "OP_SECRET=operator-value"])
        .await;
    let run = s.run(&id, &[("OP_SECRET", "task-value")]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert_eq!(s.env(&run)["OP_SECRET"], "operator-value");
    assert_eq!(
        std::fs::read_to_string(report.join(format!("setup-op-{run}"))).unwrap(),
        "operator-value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_deletes_its_workspace_still_gets_its_teardown() {
    let s = Direct::new().await;
    let id = unique_id("direct-rm-ws");
    let w = s.worker(&id, &[]).await;
    let run = s.run(&id, &[("FAKE_OZ_BEHAVIOUR", "rm-workspace")]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let workspace = s.workspace_root().join(&run);
    let teardown = s.teardown_of(&run).await;
    assert_eq!(
        teardown[1],
        workspace.display().to_string(),
        "in the workspace"
    );
    w.wait_for_log("the task deleted its workspace", RUN_TIMEOUT)
        .await;
    assert!(!w.log_text().contains("No such file"), "{}", w.log_text());
    s.wait_removed(&workspace).await;
}

/// The systemd unit's set-up: a worker that is not root. Without a cgroup
/// of its own it contains tasks with a subreaper, and it removes the
/// read-only tree a task leaves (a Go module cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_worker_removes_read_only_trees_and_ends_escaped_processes() {
    let s = Direct::new().await;
    let (uid, gid) = test_user();
    s.open_to_the_test_user();
    let state = s.path("state");
    std::fs::create_dir(&state).unwrap();
    for d in ["ws", "home", "tmp", "state"] {
        std::os::unix::fs::chown(s.path(d), Some(uid), Some(gid)).unwrap();
    }
    let agent_marker = marker(3335);
    let id = unique_id("direct-nonroot");
    let mut opts = s.options(&id, &[]);
    opts.state_dir = Some(state);
    opts.wrapper = vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".into(),
    ];
    let w = WorkerProcess::start(&s.plane, Engine::None, opts).await;
    assert!(w.log_text().contains("subreaper"), "{}", w.log_text());
    let run = s
        .run(
            &id,
            &[
                ("FAKE_OZ_BEHAVIOUR", "modcache"),
                ("FAKE_OZ_MARKER", &agent_marker),
            ],
        )
        .await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert_eq!(s.report(&run, "uid").trim(), uid.to_string());
    let escaped = s.pid(&run, "escape_pid");
    wait_gone(escaped, "the agent's setsid sleep").await;
    wait_no_process_with(&agent_marker).await;
    s.wait_removed(&s.workspace_root().join(&run)).await;
    assert!(
        !w.log_text().contains("cannot remove the workspace"),
        "{}",
        w.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_dotenv_file_is_read_as_godotenv_reads_it() {
    let s = Direct::new().await;
    let dotenv = s.path("dotenv");
    std::fs::write(
        &dotenv,
        "E1=one\nE2=two words\nNOT A LINE\nexport E3=\"quoted # kept\" # comment\nE4='single $E1'\nE5=$E1-${E2}\n",
    )
    .unwrap();
    let config = s.custom_config(
        "dotenv.yaml",
        &format!(
            "    setup_command: 'cat {} >\"$OZ_ENVIRONMENT_FILE\"'\n",
            dotenv.display()
        ),
    );
    let id = unique_id("direct-dotenv");
    let w = s.worker_with(&id, &config, &[]).await;
    let run = s.run(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let env = s.env(&run);
    for (k, v) in [
        ("E1", "one"),
        ("E2", "two words"),
        ("E3", "quoted # kept"),
        ("E4", "single $E1"),
        ("E5", "one-two words"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}: {env:?}");
    }
    w.wait_for_log("line 3", RUN_TIMEOUT).await;
    assert!(
        w.log_text().contains("$OZ_ENVIRONMENT_FILE"),
        "{}",
        w.log_text()
    );
}

/// The subreaper (a non-root worker has no cgroup): a stop still reaches a
/// child that left the agent's process group, with the whole grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cgroup_a_stop_gives_the_grace_to_an_escaped_child() {
    let s = Direct::new().await;
    let (uid, gid) = test_user();
    s.open_to_the_test_user();
    let state = s.path("state");
    std::fs::create_dir(&state).unwrap();
    for d in ["ws", "home", "tmp", "state"] {
        std::os::unix::fs::chown(s.path(d), Some(uid), Some(gid)).unwrap();
    }
    let id = unique_id("direct-reaper-grace");
    let grace = Duration::from_secs(3);
    let mut opts = s.options(&id, &["--stop-grace-period", "3s"]);
    opts.state_dir = Some(state);
    opts.wrapper = vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".into(),
    ];
    let w = WorkerProcess::start(&s.plane, Engine::None, opts).await;
    assert!(w.log_text().contains("subreaper"), "{}", w.log_text());
    let run = s
        .run(
            &id,
            &[
                ("FAKE_OZ_BEHAVIOUR", "hold"),
                ("FAKE_OZ_SETSID", "1"),
                ("FAKE_OZ_ON_TERM", "exit"),
            ],
        )
        .await;
    cancel_and_check_the_escaped_child_got_the_grace(&s, &run, grace).await;
    s.wait_removed(&s.workspace_root().join(&run)).await;
}

/// Same user, no `user` key: the worker is non-dumpable, so an agent of its
/// own uid cannot open its /proc files, and it says what the agent can reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_of_the_workers_own_user_cannot_open_its_proc_files() {
    let s = Direct::new().await;
    let (uid, gid) = test_user();
    s.open_to_the_test_user();
    let state = s.path("state");
    std::fs::create_dir(&state).unwrap();
    for d in ["ws", "home", "tmp", "state"] {
        std::os::unix::fs::chown(s.path(d), Some(uid), Some(gid)).unwrap();
    }
    let id = unique_id("direct-hostile-same-uid");
    let mut opts = s.options(&id, &[]);
    opts.state_dir = Some(state);
    opts.wrapper = vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".into(),
    ];
    let w = WorkerProcess::start(&s.plane, Engine::None, opts).await;
    assert!(
        w.log_text()
            .contains("the agent runs as this worker's user"),
        "{}",
        w.log_text()
    );
    let worker_pid = w.pid().to_string();
    let run = s
        .run(
            &id,
            &[
                ("FAKE_OZ_BEHAVIOUR", "hostile"),
                ("HOSTILE_WORKER_PID", &worker_pid),
            ],
        )
        .await;
    let done = wait_terminal(&s.plane, &run, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert_eq!(
        s.report(&run, "uid").trim(),
        uid.to_string(),
        "the same uid"
    );
    let found = s.report(&run, "found");
    for file in ["environ", "maps"] {
        let section = found
            .split(&format!("== /proc/{worker_pid}/{file}\n"))
            .nth(1)
            .and_then(|rest| rest.split("== ").next())
            .unwrap_or_else(|| panic!("the agent did not try {file}: {found}"));
        assert!(
            section.contains("Permission denied"),
            "/proc/{worker_pid}/{file} is closed to the same uid: {section}"
        );
    }
    assert!(
        !found.contains(&s.plane.key),
        "the key leaked to the agent:\n{found}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_cannot_be_used_stops_the_worker_at_start_up_with_status_2() {
    let s = Direct::new().await;
    let id = unique_id("direct-bad-user");
    let unknown = s.custom_config("unknown-user.yaml", "    user: no-such-user-oz\n");
    let mut w = WorkerProcess::spawn(&s.plane, Engine::None, s.options_with(&id, &unknown, &[]));
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "log:\n{}", w.log_text());
    assert!(
        w.log_text().contains("backend.direct.user") && w.log_text().contains("useradd"),
        "{}",
        w.log_text()
    );

    // A worker that is not root cannot switch to another user.
    let (uid, gid) = test_user();
    s.open_to_the_test_user();
    let nobody = s.custom_config("nobody.yaml", "    user: nobody\n");
    let mut opts = s.options_with(&id, &nobody, &[]);
    opts.state_dir = Some(s.path("state"));
    opts.wrapper = vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".into(),
    ];
    let mut w = WorkerProcess::spawn(&s.plane, Engine::None, opts);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "log:\n{}", w.log_text());
    assert!(
        w.log_text().contains("needs a worker running as root"),
        "{}",
        w.log_text()
    );
}
