//! Draining, end to end with the real worker binary: SIGQUIT makes the
//! worker reject every new task as at capacity (the Go worker's reason, so
//! a reference orchestrator sends it elsewhere), finish what runs with no
//! deadline, deliver the reports, close normally and exit 0; `/readyz`
//! answers 503 meanwhile; a SIGTERM during the drain falls back to the
//! normal shutdown; `--disconnect-after-task` exits 0 after one task. The
//! Docker scenarios run on dockerd, the others on the direct runtime.

use oz_test_support as support;

use oz_protocol::*;
use oz_runs_api::model::RunState;
use std::path::PathBuf;
use std::time::Duration;
use support::control_plane::{test_config, TestPlane};
use support::fixtures::FakeAgentRoot;
use support::host::{running, wait_file, wait_gone};
use support::net::{free_port, probe_until};
use support::scripted_server::ScriptedServer;
use support::worker::*;

const KEY: &str = "ozk_scripted-test-key-0001";
const ROOT: &str = "http://oz.invalid";
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The Go worker's `task_rejected` reason when it is full.
const AT_CAPACITY: &str = "worker at maximum concurrency";

fn assignment(task_id: &str, env: &[(&str, &str)]) -> String {
    let a = TaskAssignment {
        task_id: task_id.into(),
        execution_id: Some(format!("exec-{task_id}")),
        task: Task {
            id: task_id.into(),
            title: "drain".into(),
            ..Default::default()
        },
        docker_image: Some(BUSYBOX.into()),
        sidecar_image: Some(SIDECAR.into()),
        env_vars: env
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
        ..Default::default()
    };
    encode(&ServerMessage::TaskAssignment(Box::new(a)))
}

/// Containers of dockerd labelled with the task id.
async fn containers_of(task_id: &str) -> Vec<String> {
    task_containers(&Engine::Docker.docker().await, task_id).await
}

/// Against a reference orchestrator (no extension offered): after SIGQUIT
/// a new assignment is rejected with the Go worker's at-capacity reason,
/// the running task finishes and its report arrives (confirmed by a pong),
/// nothing outside the reference protocol is sent, `/readyz` says
/// draining, and the worker closes the socket and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_drains_and_a_reference_server_sees_at_capacity_then_the_report() {
    if !Engine::Docker.available() {
        return;
    }
    let server = ScriptedServer::start().await;
    let id = unique_id("drain-ref");
    let port = free_port();
    let health = format!("127.0.0.1:{port}");
    let mut w = WorkerProcess::spawn_at(
        &server.ws_url,
        ROOT,
        KEY,
        Engine::Docker,
        WorkerOptions {
            worker_id: &id,
            extra_args: ["--ping-interval", "200ms", "--health-listen", &health]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    );
    let mut conn = server.accept(Duration::from_secs(30)).await;
    let (first, second) = (format!("{id}-t1"), format!("{id}-t2"));
    conn.send_text(&assignment(
        &first,
        &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "8")],
    ))
    .await;
    match conn.next_message(Duration::from_secs(30)).await {
        Some(WorkerMessage::TaskClaimed(c)) => assert_eq!(c.task_id, first),
        other => panic!("{other:?}"),
    }
    w.wait_for_log("task container started", RUN_TIMEOUT).await;
    probe_until(port, "/readyz", 200).await;

    w.signal(3);
    w.wait_for_log("draining:", Duration::from_secs(10)).await;
    let body = probe_until(port, "/readyz", 503).await;
    assert!(body.contains("draining"), "{body}");

    conn.send_text(&assignment(&second, &[])).await;
    match conn.next_message(Duration::from_secs(10)).await {
        Some(WorkerMessage::TaskRejected(r)) => {
            assert_eq!(
                (r.task_id.as_str(), r.reason.as_str()),
                (second.as_str(), AT_CAPACITY)
            )
        }
        other => panic!("the second task is rejected as at capacity: {other:?}"),
    }
    match conn.next_message(RUN_TIMEOUT).await {
        Some(WorkerMessage::TaskCompleted(c)) => assert_eq!(c.task_id, first),
        other => panic!(
            "the running task finishes and is reported: {other:?}; log:\n{}",
            w.log_text()
        ),
    }
    // Reading answers the worker's pings: the pong after the report
    // confirms it, and the worker closes the socket.
    if let Some(m) = conn.next_message(Duration::from_secs(30)).await {
        panic!("nothing more before the close, got {m:?}");
    }
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit 0 after the drain, got {status:?}; log:\n{}",
        w.log_text()
    );
    assert!(
        containers_of(&first).await.is_empty(),
        "the container is removed"
    );
    assert!(
        containers_of(&second).await.is_empty(),
        "the rejected task never ran"
    );
    let log = w.log_text();
    assert!(log.contains("connection closed normally"), "{log}");
    assert!(
        !log.contains("graceful_shutdown"),
        "nothing was cut short:\n{log}"
    );
}

/// With the local control plane (which offers `worker-state`): the worker
/// list shows the connection draining, a new run stays queued saying so,
/// the running one succeeds, the worker exits 0, and the queued run goes to
/// the next worker of that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_with_the_control_plane_shows_draining_and_leaves_new_runs_queued() {
    if !Engine::Docker.available() {
        return;
    }
    let plane = TestPlane::start(test_config()).await;
    let client = plane.client();
    let id = unique_id("drain-cp");
    let opts = || WorkerOptions {
        worker_id: &id,
        ..Default::default()
    };
    let mut w = WorkerProcess::start(&plane, Engine::Docker, opts()).await;
    let running = client
        .create_run(&demo_run(
            &id,
            &[("OZ_DEMO_BEHAVIOUR", "sleep"), ("OZ_DEMO_SLEEP", "6")],
        ))
        .await
        .unwrap();
    w.wait_for_log("task container started", RUN_TIMEOUT).await;
    w.signal(3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = client.list_workers().await.unwrap();
        let me = list.workers.iter().find(|x| x.worker_id == id).unwrap();
        if me.connections.iter().any(|c| c.draining) {
            assert_eq!(
                me.connections[0].version.as_deref(),
                Some(env!("CARGO_PKG_VERSION")),
                "the plane records X-Warp-Worker-Version"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never shown draining: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queued = client.create_run(&demo_run(&id, &[])).await.unwrap();
    let q = client.get_run(&queued.id).await.unwrap();
    assert_eq!(q.state, RunState::Queued);
    assert!(
        q.waiting_reason
            .as_deref()
            .is_some_and(|r| r.contains("draining")),
        "{q:#?}"
    );
    let done = wait_terminal(&plane, &running.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let status = w.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}; log:\n{}", w.log_text());
    let q = client.get_run(&queued.id).await.unwrap();
    assert_eq!(
        q.state,
        RunState::Queued,
        "the draining worker never took it: {q:#?}"
    );
    assert!(containers_of(&running.id).await.is_empty());

    let _next = WorkerProcess::start(&plane, Engine::Docker, opts()).await;
    let done = wait_terminal(&plane, &queued.id, RUN_TIMEOUT).await;
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
}

/// A worker on the direct runtime running `tests/fixtures/fake-oz/oz`,
/// which records each start under `report/<task id>/`.
struct Direct {
    plane: TestPlane,
    root: FakeAgentRoot,
}

impl Direct {
    async fn new() -> Direct {
        Direct {
            plane: TestPlane::start(test_config()).await,
            root: FakeAgentRoot::new(),
        }
    }

    fn report(&self, run: &str) -> PathBuf {
        self.root.report().join(run)
    }

    async fn worker(&self, id: &str, extra: &[&str]) -> WorkerProcess {
        let config = self.root.config("");
        let mut args = vec![
            "--backend".to_string(),
            "direct".into(),
            "--config-file".into(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        WorkerProcess::start(
            &self.plane,
            Engine::None,
            WorkerOptions {
                worker_id: id,
                extra_args: args,
                ..Default::default()
            },
        )
        .await
    }

    async fn run(&self, host: &str, env: &[(&str, &str)]) -> String {
        let req = host_run(host, "drain", env);
        self.plane.client().create_run(&req).await.unwrap().id
    }
}

/// SIGTERM during a drain is the normal shutdown: the running agent is
/// stopped (SIGTERM to its group) and reported `graceful_shutdown`, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_falls_back_to_the_normal_shutdown() {
    let s = Direct::new().await;
    let id = unique_id("drain-term");
    let mut w = s.worker(&id, &[]).await;
    let run = s
        .run(
            &id,
            &[("FAKE_OZ_BEHAVIOUR", "hold"), ("FAKE_OZ_ON_TERM", "exit")],
        )
        .await;
    wait_file(&s.report(&run).join("ready")).await;
    let agent: u32 = std::fs::read_to_string(s.report(&run).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    w.signal(3);
    w.wait_for_log("draining:", Duration::from_secs(10)).await;
    assert!(running(agent), "a drain leaves the agent running");
    w.signal(15);
    let status = w.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; log:\n{}", w.log_text());
    let done = wait_terminal(&s.plane, &run, Duration::from_secs(10)).await;
    assert_eq!(done.state, RunState::Failed, "{done:#?}");
    assert_eq!(done.failure_reason.as_deref(), Some("graceful_shutdown"));
    assert!(
        s.report(&run).join("term").exists(),
        "the agent got SIGTERM"
    );
    wait_gone(agent, "the agent").await;
    assert!(w
        .log_text()
        .contains("during the drain: shutting down the normal way"));
}

/// `--disconnect-after-task`: the worker claims one task, rejects the next
/// as at capacity, exits 0 once the first has been reported; the second
/// stays queued and its agent never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_after_task_runs_one_task_then_exits_0() {
    let s = Direct::new().await;
    let id = unique_id("one-task");
    let mut w = s.worker(&id, &["--disconnect-after-task"]).await;
    let first = s.run(&id, &[]).await;
    let second = s.run(&id, &[]).await;
    let status = w.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}; log:\n{}", w.log_text());
    let done = s.plane.client().get_run(&first).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded, "{done:#?}");
    let left = s.plane.client().get_run(&second).await.unwrap();
    assert_eq!(left.state, RunState::Queued, "{left:#?}");
    assert!(
        !s.report(&second).exists(),
        "the second task's agent never started"
    );
    let starts = std::fs::read_to_string(s.report(&first).join("starts")).unwrap();
    assert_eq!(starts.lines().count(), 1);
    let log = w.log_text();
    assert!(
        log.contains("--disconnect-after-task: the task has ended"),
        "{log}"
    );
    assert!(log.contains("connection closed normally"), "{log}");
}
