//! End to end: the embedded control plane, the real worker binary and a real
//! engine (dockerd and Podman). Each scenario runs once per engine.

use oz_test_support as support;

use oz_protocol::{InstanceShape, SidecarSpec};
use oz_runs_api::model::RunState;
use std::collections::BTreeMap;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::worker::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Setup {
    plane: TestPlane,
    engine: Engine,
    report: tempfile::TempDir,
}

impl Setup {
    async fn new(engine: Engine) -> Option<Setup> {
        if !engine.available() {
            return None;
        }
        let plane = TestPlane::start(test_config()).await;
        let report = tempfile::tempdir().unwrap();
        Some(Setup {
            plane,
            engine,
            report,
        })
    }

    async fn worker(&self, id: &str, extra: &[&str]) -> WorkerProcess {
        self.worker_with_env(id, extra, &[]).await
    }

    async fn worker_with_env(
        &self,
        id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let mut args = vec![
            "-v".to_string(),
            format!("{}:/report", self.report.path().display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        WorkerProcess::start(
            &self.plane,
            self.engine,
            WorkerOptions {
                worker_id: id,
                extra_args: args,
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
        )
        .await
    }

    /// The same setup with a control plane whose state lives in a file under
    /// `db`, so it can be restarted with [`Setup::restart_plane`].
    async fn durable(self, db: &std::path::Path) -> (Setup, oz_control_plane::Config) {
        let mut config = test_config();
        config.storage = oz_control_plane::Storage::File(db.join("cp.sqlite"));
        let plane = TestPlane::start(config.clone()).await;
        config.listen = plane.plane.addr();
        (Setup { plane, ..self }, config)
    }

    /// Stops the control plane, runs `while_down`, and starts it again on the
    /// same address with the same state and keys.
    async fn restart_plane(
        self,
        config: oz_control_plane::Config,
        while_down: impl std::future::Future<Output = ()>,
    ) -> Setup {
        let Setup {
            plane,
            engine,
            report,
        } = self;
        let TestPlane {
            plane,
            key,
            team_id,
            ..
        } = plane;
        plane.shutdown().await;
        while_down.await;
        let plane = oz_control_plane::ControlPlane::start(config).await.unwrap();
        let runs = oz_runs_api::client::Client::new(&plane.url(), &key).unwrap();
        Setup {
            plane: TestPlane {
                plane,
                key,
                team_id,
                runs,
            },
            engine,
            report,
        }
    }

    /// Runs the demo agent on `image` with a fresh worker and expects the run
    /// to fail with `reason`; returns the failure message.
    async fn expect_image_failure(&self, image: &str, reason: &str) -> String {
        let id = unique_id("e2e-img");
        let _w = self.worker(&id, &[]).await;
        let mut req = demo_run(&id, &[]);
        req.docker_image = Some(image.into());
        let run = self.plane.client().create_run(&req).await.unwrap();
        let done = wait_terminal(&self.plane, &run.id, RUN_TIMEOUT).await;
        assert_eq!(done.failure_reason.as_deref(), Some(reason), "{done:#?}");
        assert!(
            !self.report.path().join(&run.id).exists(),
            "the agent never started"
        );
        done.message.unwrap_or_default()
    }

    fn report_file(&self, task_id: &str, name: &str) -> String {
        std::fs::read_to_string(self.report.path().join(task_id).join(name))
            .unwrap_or_else(|e| panic!("agent report {name} missing for {task_id}: {e}"))
    }

    /// Containers of this engine labelled with the task id.
    async fn containers_of(&self, task_id: &str) -> Vec<String> {
        task_containers(&self.engine.docker().await, task_id).await
    }
}

macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod docker {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { if let Some(s) = super::Setup::new(super::Engine::Docker).await { super::$name(s).await } } )*
        }
        mod podman {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { if let Some(s) = super::Setup::new(super::Engine::Podman).await { super::$name(s).await } } )*
        }
        // The daemon matrix's newer engines (module names are Engine::key()).
        mod docker26 {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { if let Some(s) = super::Setup::new(super::Engine::Docker26).await { super::$name(s).await } } )*
        }
        mod docker28 {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { if let Some(s) = super::Setup::new(super::Engine::Docker28).await { super::$name(s).await } } )*
        }
        mod podman5 {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { if let Some(s) = super::Setup::new(super::Engine::Podman5).await { super::$name(s).await } } )*
        }
    };
}

per_engine!(
    success_path_contract,
    nonzero_exit_fails_with_code,
    out_of_memory_is_container_oom,
    cancellation_reports_cancelled_and_removes_container,
    cancellation_sends_sigterm_before_sigkill,
    capacity_rejects_and_run_goes_elsewhere,
    control_plane_restart_mid_task_reports_once,
    undelivered_report_survives_a_worker_restart,
    sigterm_mid_task_reports_graceful_shutdown,
    sigkill_then_restart_removes_orphan,
    task_finished_while_worker_was_down_is_reported_at_restart,
    no_cleanup_keeps_container,
    missing_image_is_image_pull,
    musl_image_is_refused,
    missing_sidecar_fails_clearly,
    second_signal_exits_at_once,
);

async fn success_path_contract(s: Setup) {
    let id = unique_id("e2e-ok");
    let tools = tempfile::tempdir().unwrap();
    let _w = s
        .worker(
            &id,
            &[
                "-e",
                "OPERATOR_VAR=from-operator",
                "-e",
                "SHARED=operator-wins",
                "-v",
                &format!("{}:/opt/host:ro", tools.path().display()),
            ],
        )
        .await;
    let mut req = demo_run(
        &id,
        &[("TASK_SECRET", "s3cr3t-value"), ("SHARED", "task-loses")],
    );
    req.additional_sidecars = vec![SidecarSpec {
        image: BUSYBOX.into(),
        mount_path: "/tools".into(),
        read_write: true,
    }];
    req.additional_oz_args = vec!["--extra".into(), "two words".into()];
    let run = s.plane.client().create_run(&req).await.unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");

    let argv: Vec<String> = s
        .report_file(&run.id, "argv")
        .lines()
        .map(str::to_string)
        .collect();
    let root = s.plane.plane.url();
    let expected: Vec<String> = [
        "agent",
        "run",
        "--share",
        "team:edit",
        "--task-id",
        &run.id,
        "--sandboxed",
        "--server-root-url",
        &root,
        "--extra",
        "two words",
        "--idle-on-complete",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(argv, expected);

    let env: BTreeMap<String, String> = s
        .report_file(&run.id, "env")
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(env["TASK_ID"], run.id);
    assert_eq!(env["GIT_TERMINAL_PROMPT"], "0");
    assert_eq!(env["GH_PROMPT_DISABLED"], "1");
    assert_eq!(env["WARP_SERVER_ROOT_URL"], root);
    assert_eq!(env["TASK_SECRET"], "s3cr3t-value");
    assert_eq!(env["OPERATOR_VAR"], "from-operator");
    assert_eq!(env["SHARED"], "operator-wins");
    assert_eq!(s.report_file(&run.id, "cwd").trim(), "/workspace");
    assert_eq!(s.report_file(&run.id, "agent_mount").trim(), "readonly");

    let mounts = s.report_file(&run.id, "mounts");
    let opts = |target: &str| -> String {
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(target))
            .unwrap_or_else(|| panic!("{target} not mounted:\n{mounts}"))
            .split_whitespace()
            .nth(3)
            .unwrap()
            .to_string()
    };
    assert!(
        opts("/agent").split(',').any(|o| o == "ro"),
        "/agent must be read-only"
    );
    assert!(
        opts("/tools").split(',').any(|o| o == "rw"),
        "/tools must be read-write"
    );
    assert!(
        opts("/opt/host").split(',').any(|o| o == "ro"),
        "operator volume mode kept"
    );
    assert!(opts("/report").split(',').any(|o| o == "rw"));

    assert!(
        s.containers_of(&run.id).await.is_empty(),
        "container removed after success"
    );
    assert!(
        !_w.log_text().contains("s3cr3t-value"),
        "task env values never logged"
    );
}

async fn nonzero_exit_fails_with_code(s: Setup) {
    let id = unique_id("e2e-exit");
    let _w = s.worker(&id, &[]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[("OZ_DEMO_EXIT", "3")]))
        .await
        .unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed);
    assert_eq!(done.failure_reason.as_deref(), Some("container_exit"));
    assert_eq!(done.exit_code, Some(3));
    assert!(
        done.message
            .as_deref()
            .unwrap_or("")
            .contains("exited with code 3"),
        "{done:#?}"
    );
    assert!(
        _w.log_text().contains("task output: oz demo agent"),
        "output logged on failure"
    );
}

async fn out_of_memory_is_container_oom(s: Setup) {
    let id = unique_id("e2e-oom");
    let _w = s.worker(&id, &[]).await;
    let mut req = demo_run(&id, &[("OZ_DEMO_BEHAVIOUR", "oom")]);
    req.instance_shape = Some(InstanceShape {
        vcpus: Some(1),
        memory_gb: Some(1),
    });
    let run = s.plane.client().create_run(&req).await.unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("container_oom"),
        "{done:#?}"
    );
    assert_eq!(done.exit_code, Some(137));
}

async fn cancellation_reports_cancelled_and_removes_container(s: Setup) {
    let id = unique_id("e2e-cancel");
    let w = s.worker(&id, &[]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[("OZ_DEMO_BEHAVIOUR", "sleep")]))
        .await
        .unwrap();
    wait_state(&s.plane, &run.id, RunState::Claimed, RUN_TIMEOUT).await;
    w.wait_for_log("task container started", RUN_TIMEOUT).await;
    s.plane.client().cancel_run(&run.id).await.unwrap();
    let done = wait_terminal(&s.plane, &run.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, RunState::Cancelled, "{done:#?}");
    assert!(
        s.containers_of(&run.id).await.is_empty(),
        "cancelled task's container removed"
    );
}

async fn cancellation_sends_sigterm_before_sigkill(s: Setup) {
    let id = unique_id("e2e-term-first");
    let w = s.worker(&id, &["--stop-grace-period", "20s"]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[("OZ_DEMO_BEHAVIOUR", "trap")]))
        .await
        .unwrap();
    w.wait_for_log("task container started", RUN_TIMEOUT).await;
    s.plane.client().cancel_run(&run.id).await.unwrap();
    let done = wait_terminal(&s.plane, &run.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, RunState::Cancelled, "{done:#?}");
    assert_eq!(
        s.report_file(&run.id, "got_term").trim(),
        "term",
        "the agent saw SIGTERM"
    );
    assert!(
        !w.log_text().contains("still running after"),
        "it stopped within the grace period: no SIGKILL"
    );
}

async fn capacity_rejects_and_run_goes_elsewhere(s: Setup) {
    let id = unique_id("e2e-cap");
    let a = s.worker(&id, &["--max-concurrent-tasks", "1"]).await;
    let client = s.plane.client();
    let first = client
        .create_run(&demo_run(
            &id,
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "20")],
        ))
        .await
        .unwrap();
    wait_state(&s.plane, &first.id, RunState::Claimed, RUN_TIMEOUT).await;
    let second = client.create_run(&demo_run(&id, &[])).await.unwrap();
    a.wait_for_log("rejecting task", Duration::from_secs(10))
        .await;
    let _b = s.worker(&id, &[]).await;
    let done = wait_terminal(&s.plane, &second.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let first_now = client.get_run(&first.id).await.unwrap();
    assert_eq!(
        first_now.state,
        RunState::Claimed,
        "the first task still runs on worker A"
    );
    let history = client.get_run(&second.id).await.unwrap().history;
    assert!(
        history
            .iter()
            .any(|h| h.note.as_deref().unwrap_or("").contains("reject")),
        "{history:#?}"
    );
    client.cancel_run(&first.id).await.unwrap();
    wait_terminal(&s.plane, &first.id, Duration::from_secs(30)).await;
}

async fn control_plane_restart_mid_task_reports_once(s: Setup) {
    let db = tempfile::tempdir().unwrap();
    let (s, config) = s.durable(db.path()).await;
    let id = unique_id("e2e-cprestart");
    let w = s.worker(&id, &[]).await;
    let sleep = [("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "4")];
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &sleep))
        .await
        .unwrap();
    wait_state(&s.plane, &run.id, RunState::Claimed, RUN_TIMEOUT).await;
    let s = s
        .restart_plane(config, async {
            w.wait_for_log("connection lost", Duration::from_secs(10))
                .await;
            // The task ends while the plane is down.
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = s.plane.client().get_run(&run.id).await.unwrap().history;
    let terminal = history
        .iter()
        .filter(|h| h.state == RunState::Succeeded)
        .count();
    assert_eq!(terminal, 1, "{history:#?}");
    assert!(w.log_text().contains("sent task_completed"));
}

async fn undelivered_report_survives_a_worker_restart(s: Setup) {
    let db = tempfile::tempdir().unwrap();
    let (s, config) = s.durable(db.path()).await;
    let id = unique_id("e2e-pending");
    let mut w = s.worker(&id, &[]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[("OZ_DEMO_BEHAVIOUR", "sleep")]))
        .await
        .unwrap();
    w.wait_for_log("task container started", RUN_TIMEOUT).await;
    let s = s
        .restart_plane(config, async {
            w.wait_for_log("connection lost", Duration::from_secs(10))
                .await;
            // Shut the worker down while nobody can hear its report.
            w.signal(15);
            let status = w.wait_exit(Duration::from_secs(60)).await;
            assert_eq!(
                status.code(),
                Some(i32::from(oz_worker::EXIT_DRAIN_INCOMPLETE)),
                "the exit status says the drain did not finish; log:\n{}",
                w.log_text()
            );
            assert!(w.log_text().contains("kept under"), "{}", w.log_text());
        })
        .await;
    let restarted = s.worker(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run.id, Duration::from_secs(30)).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("graceful_shutdown"),
        "{done:#?}"
    );
    assert!(restarted
        .log_text()
        .contains("left undelivered by an earlier run"));
}

async fn sigterm_mid_task_reports_graceful_shutdown(s: Setup) {
    let id = unique_id("e2e-term");
    let mut w = s.worker(&id, &[]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[("OZ_DEMO_BEHAVIOUR", "sleep")]))
        .await
        .unwrap();
    w.wait_for_log("task container started", RUN_TIMEOUT).await;
    w.signal(15);
    let status = w.wait_exit(Duration::from_secs(60)).await;
    assert!(
        status.success(),
        "exit 0 after SIGTERM, got {status:?}; log:\n{}",
        w.log_text()
    );
    let done = wait_terminal(&s.plane, &run.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, RunState::Failed);
    assert_eq!(done.failure_reason.as_deref(), Some("graceful_shutdown"));
    assert!(s.containers_of(&run.id).await.is_empty());
    assert!(w.log_text().contains("connection closed normally"));
}

async fn sigkill_then_restart_removes_orphan(s: Setup) {
    let id = unique_id("e2e-kill");
    let client = s.plane.client();
    let sleep = [("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "60")];
    let mut a = s.worker(&id, &["--max-concurrent-tasks", "1"]).await;
    let on_a = client.create_run(&demo_run(&id, &sleep)).await.unwrap();
    a.wait_for_log("task container started", RUN_TIMEOUT).await;
    // A live sibling sharing the id, with a task of its own.
    let sibling = s.worker(&id, &[]).await;
    let on_sibling = client.create_run(&demo_run(&id, &sleep)).await.unwrap();
    sibling
        .wait_for_log("task container started", RUN_TIMEOUT)
        .await;

    a.signal(9);
    a.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        s.containers_of(&on_a.id).await.len(),
        1,
        "the killed worker's container is left behind"
    );

    let restarted = s.worker(&id, &[]).await;
    restarted
        .wait_for_log(
            "removed a container left by a dead earlier run",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        s.containers_of(&on_a.id).await.is_empty(),
        "orphan removed on restart"
    );
    // The restarted worker reports the dead one's task instead of leaving it
    // to the control plane's worker-lost timeout.
    let lost = wait_terminal(&s.plane, &on_a.id, Duration::from_secs(30)).await;
    assert_eq!(lost.state, RunState::Failed, "{lost:#?}");
    assert_eq!(lost.failure_reason.as_deref(), Some("unknown"));
    assert!(lost.message.unwrap_or_default().contains("died"));
    assert_eq!(
        s.containers_of(&on_sibling.id).await.len(),
        1,
        "a live sibling's container is untouched"
    );
    assert_eq!(
        client.get_run(&on_sibling.id).await.unwrap().state,
        RunState::Claimed
    );
    client.cancel_run(&on_sibling.id).await.unwrap();
    assert_eq!(
        wait_terminal(&s.plane, &on_sibling.id, Duration::from_secs(30))
            .await
            .state,
        RunState::Cancelled
    );
}

async fn task_finished_while_worker_was_down_is_reported_at_restart(s: Setup) {
    let id = unique_id("e2e-down");
    let mut a = s.worker(&id, &[]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(
            &id,
            &[
                ("OZ_DEMO_BEHAVIOUR", "sleep"),
                ("OZ_DEMO_SLEEP", "2"),
                ("OZ_DEMO_EXIT", "5"),
            ],
        ))
        .await
        .unwrap();
    a.wait_for_log("task container started", RUN_TIMEOUT).await;
    a.signal(9);
    a.wait_exit(Duration::from_secs(10)).await;
    // Let the agent finish with nobody watching.
    let d = s.engine.docker().await;
    let container = s
        .containers_of(&run.id)
        .await
        .pop()
        .expect("the container outlives its worker");
    let wait = oz_docker_engine::params::ContainerWaitParams {
        condition: Some(oz_docker_engine::models::ContainerWaitCondition::NotRunning),
    };
    d.container_wait(&container, &wait).await.unwrap();
    let _restarted = s.worker(&id, &[]).await;
    let done = wait_terminal(&s.plane, &run.id, Duration::from_secs(30)).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("container_exit"),
        "{done:#?}"
    );
    assert_eq!(
        done.exit_code,
        Some(5),
        "the real exit code, read from the orphan"
    );
    assert!(s.containers_of(&run.id).await.is_empty());
}

async fn no_cleanup_keeps_container(s: Setup) {
    let id = unique_id("e2e-keep");
    let mut w = s.worker(&id, &["--no-cleanup"]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[]))
        .await
        .unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded);
    let left = s.containers_of(&run.id).await;
    assert_eq!(left.len(), 1, "--no-cleanup keeps the container");
    // A kept container is not an orphan: a later run of the worker leaves it.
    w.signal(9);
    w.wait_exit(Duration::from_secs(10)).await;
    let restarted = s.worker(&id, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.containers_of(&run.id).await,
        left,
        "kept across a restart"
    );
    assert!(!restarted
        .log_text()
        .contains("removed a container left by a dead earlier run"));
    let d = s.engine.docker().await;
    let params = oz_docker_engine::params::ContainerDeleteParams {
        force: Some(true),
        ..Default::default()
    };
    d.container_delete(&left[0], &params).await.unwrap();
}

async fn missing_image_is_image_pull(s: Setup) {
    // Nothing listens on port 1: the daemon's pull fails with a connection error.
    let image = "127.0.0.1:1/oz/does-not-exist:1";
    let msg = s.expect_image_failure(image, "image_pull").await;
    assert!(
        msg.contains(image) && msg.contains("unreachable") && msg.contains("aemon said"),
        "{msg}"
    );
}

async fn musl_image_is_refused(s: Setup) {
    let msg = s.expect_image_failure(MUSL, "invalid_image").await;
    assert!(msg.contains(MUSL) && msg.contains("musl"), "{msg}");
}

async fn missing_sidecar_fails_clearly(s: Setup) {
    let id = unique_id("e2e-nosidecar");
    let _w = s.worker(&id, &[]).await;
    let mut req = demo_run(&id, &[]);
    req.sidecar_image = None;
    let run = s.plane.client().create_run(&req).await.unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(
        done.failure_reason.as_deref(),
        Some("sidecar_prep"),
        "{done:#?}"
    );
    assert!(done
        .message
        .unwrap_or_default()
        .contains("sidecar_image is empty"));
}

async fn second_signal_exits_at_once(s: Setup) {
    let id = unique_id("e2e-twice");
    // A long grace period: only the second signal can make the exit quick.
    let mut w = s.worker(&id, &["--shutdown-timeout", "60s"]).await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[("OZ_DEMO_BEHAVIOUR", "sleep")]))
        .await
        .unwrap();
    w.wait_for_log("task container started", RUN_TIMEOUT).await;
    // Make the first stop slow: the task ignores nothing, but the worker
    // waits for cleanup; the second signal must not wait at all.
    w.signal(15);
    w.wait_for_log("received SIGTERM", Duration::from_secs(5))
        .await;
    w.signal(15);
    let status = w.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "a second SIGTERM exits at once with 128 + 15; log:\n{}",
        w.log_text()
    );
    // Whatever the first signal had started, the run ends as failed
    // (graceful_shutdown) or stays claimed until worker_lost: never succeeded.
    let now = s.plane.client().get_run(&run.id).await.unwrap();
    assert_ne!(now.state, RunState::Succeeded);
    let d = s.engine.docker().await;
    for c in s.containers_of(&run.id).await {
        let _ = d
            .container_delete(
                &c,
                &oz_docker_engine::params::ContainerDeleteParams {
                    force: Some(true),
                    ..Default::default()
                },
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_for_another_platform_is_refused_naming_both() {
    use futures_util::StreamExt;
    let Some(s) = Setup::new(Engine::Docker).await else {
        return;
    };
    let d = s.engine.docker().await;
    let repo = format!("oz-test/arm64-{}", unique_id("p"));
    // `docker load` of a hand-made image whose config says linux/arm64 (the
    // import endpoint ignores `platform` on Docker 20.10).
    use sha2::Digest;
    let tar = oz_runtime_docker::tar::archive;
    let layer = tar(&[("hello", b"hi", 0o644)]);
    let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)));
    let config = serde_json::json!({
        "architecture": "arm64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id] }
    })
    .to_string();
    let config_name = format!(
        "{}.json",
        hex::encode(sha2::Sha256::digest(config.as_bytes()))
    );
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": [format!("{repo}:latest")], "Layers": ["layer.tar"] }]).to_string();
    let bundle = tar(&[
        (&config_name, config.as_bytes(), 0o644),
        ("layer.tar", &layer, 0o644),
        ("manifest.json", manifest.as_bytes(), 0o644),
    ]);
    let body = futures_util::stream::once(async move { Ok(bytes::Bytes::from(bundle)) }).boxed();
    let mut progress = d.image_load(&Default::default(), Some(body)).await.unwrap();
    while let Some(item) = progress.next().await {
        item.unwrap();
    }
    let image = format!("{repo}:latest");
    let msg = s.expect_image_failure(&image, "image_pull").await;
    assert!(
        msg.contains("linux/arm64") && msg.contains("linux/amd64") && msg.contains(&image),
        "{msg}"
    );
    let _ = d.image_delete(&image, &Default::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_api_key_is_explained_and_retried_slowly() {
    let Some(s) = Setup::new(Engine::Docker).await else {
        return;
    };
    let wrong = "ozk_definitely-not-a-key-1234";
    let id = unique_id("e2e-badkey");
    let mut w = WorkerProcess::spawn(
        &s.plane,
        Engine::Docker,
        WorkerOptions {
            worker_id: &id,
            api_key: Some(wrong),
            ..Default::default()
        },
    );
    w.wait_for_log("refused the API key", Duration::from_secs(30))
        .await;
    let log = w.log_text();
    assert!(log.contains("--api-key or WARP_API_KEY"), "{log}");
    let delay: f64 = log
        .split("retrying in ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no retry delay in: {log}"));
    assert!(
        delay >= 40.0,
        "a refused key is retried at the slow end of the backoff, got {delay}s"
    );
    assert!(!log.contains(wrong), "the key is never logged");
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "the worker keeps running"
    );
    w.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_use_the_reference_names() {
    let Some(s) = Setup::new(Engine::Docker).await else {
        return;
    };
    let port = support::net::free_port();
    let id = unique_id("e2e-metrics");
    let w = s
        .worker(
            &id,
            &[
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
                "--max-concurrent-tasks",
                "2",
            ],
        )
        .await;
    w.wait_for_log("metrics: Prometheus at", Duration::from_secs(5))
        .await;
    for env in [vec![], vec![("OZ_DEMO_EXIT", "4")]] {
        let run = s
            .plane
            .client()
            .create_run(&demo_run(&id, &env))
            .await
            .unwrap();
        wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    }
    let text = support::net::metrics_page(port).await;
    // Samples by name, the labels given (the page adds the Go exporter's
    // otel_scope_* labels) and value.
    let has = |name: &str, labels: &[(&str, &str)], value: &str| {
        text.lines().any(|l| {
            let Some((series, v)) = l.rsplit_once(' ') else {
                return false;
            };
            (series == name || series.starts_with(&format!("{name}{{")))
                && labels
                    .iter()
                    .all(|(k, want)| series.contains(&format!("{k}=\"{want}\"")))
                && v == value
        })
    };
    for (name, labels, value) in [
        ("oz_worker_connected", vec![], "1"),
        ("oz_worker_tasks_active", vec![], "0"),
        ("oz_worker_tasks_max_concurrent", vec![], "2"),
        ("oz_worker_tasks_claimed_total", vec![], "2"),
        (
            "oz_worker_tasks_completed_total",
            vec![("result", "succeeded")],
            "1",
        ),
        (
            "oz_worker_tasks_completed_total",
            vec![("result", "failed")],
            "1",
        ),
        (
            "oz_worker_tasks_completed_total",
            vec![("result", "dispatched")],
            "0",
        ),
        (
            "oz_worker_task_failures_total",
            vec![("phase", "backend"), ("reason", "container_exit")],
            "1",
        ),
        (
            "oz_worker_task_duration_seconds_count",
            vec![("result", "succeeded")],
            "1",
        ),
    ] {
        assert!(
            has(name, &labels, value),
            "missing {name}{labels:?} {value} in:\n{text}"
        );
    }
    assert!(
        text.contains(&format!("worker_id=\"{id}\"")) && text.contains("backend=\"docker\""),
        "{text}"
    );
}

/// Runs one failing task on a worker logging everything (task output
/// included) with `args`; returns the whole log, the run and its execution id.
async fn failing_task_log(
    s: &Setup,
    prefix: &str,
    args: &[&str],
) -> (String, oz_runs_api::model::Run, String) {
    let id = unique_id(prefix);
    let w = s
        .worker_with_env(&id, args, &[("OZ_LOG", "debug,task_output=debug")])
        .await;
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[("OZ_DEMO_EXIT", "2")]))
        .await
        .unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    let execution = done.execution_id.clone().unwrap();
    w.wait_for_log("report delivery confirmed", Duration::from_secs(10))
        .await;
    (w.log_text(), run, execution)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let Some(s) = Setup::new(Engine::Docker).await else {
        return;
    };
    let (log, run, execution) = failing_task_log(&s, "e2e-json", &["--log-format", "json"]).await;
    let mut about_task = 0;
    let mut claimed = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        // From the claim on, the runtime works only on this task.
        claimed |= line.contains("claimed task");
        let target = v["target"].as_str().unwrap_or_default();
        let runtime_line = claimed && (target.starts_with("oz_runtime") || target == "task_output");
        if !(line.contains(&run.id) || runtime_line) {
            continue;
        }
        about_task += 1;
        let field = |name: &str| {
            v["fields"][name]
                .as_str()
                .or(v["span"][name].as_str())
                .map(str::to_string)
        };
        assert_eq!(field("task_id").as_deref(), Some(run.id.as_str()), "{line}");
        assert_eq!(
            field("execution_id").as_deref(),
            Some(execution.as_str()),
            "{line}"
        );
    }
    // Claim, image, sidecar, container, output, failure, report, confirmation.
    assert!(
        about_task >= 8,
        "only {about_task} lines about the task:\n{log}"
    );
}

/// Text logs carry the same ids: the task's span prefixes every line the
/// worker and the runtime log during its life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_name_the_task_and_execution_on_every_line_about_it() {
    let Some(s) = Setup::new(Engine::Docker).await else {
        return;
    };
    let (log, run, execution) = failing_task_log(&s, "e2e-text", &[]).await;
    let mut about_task = 0;
    let mut claimed = false;
    for line in log.lines() {
        claimed |= line.contains("claimed task");
        let runtime_line =
            claimed && (line.contains(" oz_runtime") || line.contains(" task_output:"));
        if !(line.contains(&run.id) || runtime_line) {
            continue;
        }
        about_task += 1;
        // Strings may be quoted (event fields) or not (span fields).
        let plain = line.replace('"', "");
        assert!(
            plain.contains(&format!("task_id={}", run.id))
                && plain.contains(&format!("execution_id={execution}")),
            "{line}"
        );
    }
    assert!(
        about_task >= 8,
        "only {about_task} lines about the task:\n{log}"
    );
}

/// The whole contract once more with the daemon reached over TCP + mutual
/// TLS (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), as a remote
/// daemon would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_path_over_tls() {
    let Some(s) = Setup::new(Engine::DockerTls).await else {
        return;
    };
    let id = unique_id("e2e-tls");
    let w = s.worker(&id, &[]).await;
    assert!(
        w.log_text().contains("tcp://127.0.0.1:2376") && w.log_text().contains("tls=true"),
        "{}",
        w.log_text()
    );
    let run = s
        .plane
        .client()
        .create_run(&demo_run(&id, &[]))
        .await
        .unwrap();
    let done = wait_terminal(&s.plane, &run.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    assert_eq!(s.report_file(&run.id, "cwd").trim(), "/workspace");
    assert!(s.containers_of(&run.id).await.is_empty());
}
