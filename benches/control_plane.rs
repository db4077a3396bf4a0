//! The control plane under load: a real `ControlPlane` on a temporary SQLite
//! file (WAL, `synchronous = FULL`), driven over real HTTP and real
//! WebSockets. Three measurements, each against a baseline taken in the same
//! run:
//!
//! 1. **Runs created per second** through `POST /api/v1/runs`
//!    (`OZ_BENCH_CREATE`, default 1000 runs, 8 concurrent clients), for a
//!    worker id nobody serves so every run stays queued. Baselines: the first
//!    fifth of the runs (queue nearly empty) against the last fifth (≈ 800
//!    queued), and the same two inserts as bare SQLite transactions, one
//!    per run, on the same disk (one fsync per create: the floor for a
//!    store without group commit).
//! 2. **Dispatch latency**: `POST /api/v1/runs` for a connected scripted
//!    worker until its `task_assignment` arrives, median and p95 of
//!    `OZ_BENCH_SAMPLES` (default 50), with no other run queued and again
//!    with the 1,000 runs of (1) queued for another worker id.
//! 3. **Capacity soak**: `OZ_BENCH_SOAK_RUNS` (default 200) runs for one
//!    scripted worker that holds at most 4 tasks (each "runs" 50 ms) and
//!    rejects more with `at_capacity`, as `--max-concurrent-tasks 4` does.
//!    Counts offers, rejections and history entries per run, and the wall
//!    time against the ideal (runs / 4 × 50 ms).
//!
//! `cargo bench --bench control_plane`.

use oz_test_support::bench as support;

use futures_util::{SinkExt, StreamExt};
use oz_control_plane::{Config, ControlPlane, Storage};
use oz_protocol::{
    decode_server_frame, encode, ServerMessage, TaskClaimed, TaskCompleted, TaskRejected,
    WorkerMessage,
};
use oz_runs_api::client::Client;
use oz_runs_api::model::CreateRunRequest;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::report::Report;
use support::setup;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn run_for(host: &str) -> CreateRunRequest {
    CreateRunRequest {
        worker_host: host.into(),
        title: Some("bench".into()),
        prompt: Some("a prompt of ordinary length for an agent run in the benchmark".into()),
        docker_image: Some("ubuntu:22.04".into()),
        env_vars: [("TOKEN".to_string(), "s3cret".into())].into(),
        ..Default::default()
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn start(dir: &std::path::Path, name: &str) -> (ControlPlane, String) {
    let config = Config::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Storage::File(dir.join(name)),
    );
    let plane = ControlPlane::start(config).await.expect("control plane");
    let key = plane.create_api_key("bench").unwrap().secret;
    (plane, key)
}

async fn connect(plane: &ControlPlane, key: &str, worker_id: &str) -> Ws {
    let mut req = format!("{}?worker_id={worker_id}", plane.ws_url())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {key}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn send(ws: &mut Ws, msg: WorkerMessage) {
    ws.send(Message::text(encode(&msg))).await.unwrap();
}

/// The next server message, skipping control frames (and acks when asked).
async fn next_message(ws: &mut Ws) -> ServerMessage {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return decode_server_frame(t.as_str()).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("worker connection ended: {other:?}"),
        }
    }
}

/// POST → assignment, then claim and complete so the worker is free again.
async fn dispatch_latency(client: &Client, ws: &mut Ws, host: &str, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let run = client.create_run(&run_for(host)).await.unwrap();
        let a = loop {
            if let ServerMessage::TaskAssignment(a) = next_message(ws).await {
                break a;
            }
        };
        samples.push(t0.elapsed());
        assert_eq!(a.task_id, run.id);
        send(
            ws,
            WorkerMessage::TaskClaimed(TaskClaimed {
                task_id: run.id.clone(),
                worker_id: host.into(),
                execution_id: a.execution_id.clone(),
            }),
        )
        .await;
        send(
            ws,
            WorkerMessage::TaskCompleted(TaskCompleted {
                task_id: run.id.clone(),
                message: "done".into(),
                task_state: None,
                execution_id: a.execution_id.clone(),
            }),
        )
        .await;
    }
    samples
}

/// Creates `n` runs with `concurrency` clients; returns each run's
/// completion instant, in completion order.
async fn create_many(plane: &ControlPlane, key: &str, host: &str, n: usize) -> Vec<Instant> {
    let concurrency = 8;
    let done = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = Client::new(&plane.url(), key).unwrap();
        let (done, next, host) = (done.clone(), next.clone(), host.to_string());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                client.create_run(&run_for(&host)).await.unwrap();
                done.lock().unwrap().push(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut v = std::mem::take(&mut *done.lock().unwrap());
    v.sort();
    v
}

/// Runs per second over a slice of completion instants.
fn rate(done: &[Instant]) -> f64 {
    (done.len() - 1) as f64 / done[done.len() - 1].duration_since(done[0]).as_secs_f64()
}

/// The two inserts of a run creation as bare SQLite transactions, same
/// pragmas, same disk: what a durable create costs at the least.
fn bare_sqlite_rate(dir: &std::path::Path, n: usize) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("bare.sqlite3")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            spec_json TEXT NOT NULL, state TEXT NOT NULL);
         CREATE TABLE run_history (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL,
            state TEXT NOT NULL, note TEXT);",
    )
    .unwrap();
    let spec = serde_json::to_string(&run_for("absent")).unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        let tx = conn.unchecked_transaction().unwrap();
        tx.execute(
            "INSERT INTO runs (id, spec_json, state) VALUES (?1, ?2, 'queued')",
            rusqlite::params![format!("run_{i}"), spec],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO run_history (run_id, state, note) VALUES (?1, 'queued', 'created')",
            [format!("run_{i}")],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

struct SoakResult {
    wall: Duration,
    offers: usize,
    rejections: usize,
    max_history: usize,
    mean_history: f64,
}

/// One worker with `cap` slots, tasks of `task_time`, `n` runs.
async fn soak(dir: &std::path::Path, n: usize, cap: usize, task_time: Duration) -> SoakResult {
    let (plane, key) = start(dir, "soak.sqlite3").await;
    let host = "soak-worker";
    let ws = connect(&plane, &key, host).await;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WorkerMessage>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            sink.send(Message::text(encode(&m))).await.unwrap();
        }
    });
    let client = Client::new(&plane.url(), &key).unwrap();
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(client.create_run(&run_for(host)).await.unwrap().id);
    }
    let (mut offers, mut rejections, mut finished) = (0, 0, 0);
    let mut running = std::collections::HashSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    while finished < n {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if let ServerMessage::TaskAssignment(a) = decode_server_frame(t.as_str()).unwrap() {
                        offers += 1;
                        if running.len() >= cap || running.contains(&a.task_id) {
                            rejections += 1;
                            tx.send(WorkerMessage::TaskRejected(TaskRejected {
                                task_id: a.task_id.clone(),
                                reason: format!("at capacity: {cap} of {cap} tasks running"),
                                execution_id: None,
                            })).unwrap();
                            continue;
                        }
                        running.insert(a.task_id.clone());
                        tx.send(WorkerMessage::TaskClaimed(TaskClaimed {
                            task_id: a.task_id.clone(),
                            worker_id: host.into(),
                            execution_id: a.execution_id.clone(),
                        })).unwrap();
                        let (tx, done_tx) = (tx.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(task_time).await;
                            // Free the slot first, as a worker does before it reports.
                            done_tx.send(a.task_id.clone()).unwrap();
                            tx.send(WorkerMessage::TaskCompleted(TaskCompleted {
                                task_id: a.task_id.clone(),
                                message: "done".into(),
                                task_state: None,
                                execution_id: a.execution_id.clone(),
                            })).unwrap();
                        });
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("soak worker connection ended: {other:?}"),
            },
            Some(id) = done_rx.recv() => {
                running.remove(&id);
                finished += 1;
            }
        }
    }
    // Every run must actually end on the control plane.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut histories = Vec::with_capacity(n);
    for id in &ids {
        loop {
            let run = client.get_run(id).await.unwrap();
            if run.state.is_terminal() {
                histories.push(run.history.len());
                break;
            }
            assert!(Instant::now() < deadline, "run {id} did not end: {run:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let wall = t0.elapsed();
    drop(tx);
    writer.abort();
    plane.shutdown().await;
    SoakResult {
        wall,
        offers,
        rejections,
        max_history: histories.iter().copied().max().unwrap_or(0),
        mean_history: histories.iter().sum::<usize>() as f64 / n as f64,
    }
}

#[tokio::main]
async fn main() {
    let n_create = setup::count("OZ_BENCH_CREATE", 1000, 100);
    let samples = setup::count("OZ_BENCH_SAMPLES", 50, 10);
    let soak_runs = setup::count("OZ_BENCH_SOAK_RUNS", 200, 40);
    let dir = tempfile::tempdir().unwrap();

    let bare = bare_sqlite_rate(dir.path(), n_create);

    let (plane, key) = start(dir.path(), "cp.sqlite3").await;
    let client = Client::new(&plane.url(), &key).unwrap();
    let mut ws = connect(&plane, &key, "bench-worker").await;
    let empty = dispatch_latency(&client, &mut ws, "bench-worker", samples).await;

    let t0 = Instant::now();
    let done = create_many(&plane, &key, "absent-worker", n_create).await;
    let total_rate = n_create as f64 / t0.elapsed().as_secs_f64();
    let fifth = (done.len() / 5).max(2);
    let first = rate(&done[..fifth]);
    let last = rate(&done[done.len() - fifth..]);

    let loaded = dispatch_latency(&client, &mut ws, "bench-worker", samples).await;
    drop(ws);
    plane.shutdown().await;

    let task_time = Duration::from_millis(50);
    let s = soak(dir.path(), soak_runs, 4, task_time).await;
    let ideal = task_time * (soak_runs as u32).div_ceil(4);

    let (e50, e95) = (percentile(empty.clone(), 0.5), percentile(empty, 0.95));
    let (l50, l95) = (percentile(loaded.clone(), 0.5), percentile(loaded, 0.95));
    let per_s = |r: f64| format!("{r:.0} /s");
    let lat = |d: Duration| format!("{:.2} ms", ms(d));
    let mut r = Report::new("control_plane", "Control plane under load");
    r.text(&format!(
        "A real control plane on a temporary SQLite file (WAL, `synchronous = FULL`), over real \
         HTTP and WebSockets. Runs created per second through `POST /api/v1/runs` ({n_create} \
         runs, 8 clients, for a worker id nobody serves, so all stay queued) against bare \
         SQLite transactions (one per run, the same inserts) on the same disk; dispatch latency \
         (`POST` until the scripted worker reads the `task_assignment`, {samples} samples) with \
         no run queued and with the {n_create} runs queued for another worker id; and a \
         capacity soak: {soak_runs} runs for one scripted worker that holds at most 4 (50 ms \
         each) and rejects more with `at_capacity`, as `--max-concurrent-tasks 4` does."
    ));
    r.table(
        &["figure", "value"],
        &[
            vec!["bare SQLite, one transaction per run".into(), per_s(bare)],
            vec![
                format!("all {n_create} runs through the API"),
                per_s(total_rate),
            ],
            vec![
                "… / bare SQLite".into(),
                format!("{:.2}", total_rate / bare),
            ],
            vec![
                format!("first {fifth} runs (queue nearly empty)"),
                per_s(first),
            ],
            vec![
                format!("last {fifth} runs (~{} queued)", n_create - fifth),
                per_s(last),
            ],
            vec!["… last / first".into(), format!("{:.3}", last / first)],
            vec![
                "dispatch latency, 0 queued: median / p95".into(),
                format!("{} / {}", lat(e50), lat(e95)),
            ],
            vec![
                format!("dispatch latency, {n_create} queued: median / p95"),
                format!("{} / {}", lat(l50), lat(l95)),
            ],
            vec![
                "… ratio of medians, queued / empty".into(),
                format!("{:.2}", ms(l50) / ms(e50)),
            ],
            vec![
                "capacity soak: offers (per run) / rejections".into(),
                format!(
                    "{} ({:.2}) / {}",
                    s.offers,
                    s.offers as f64 / soak_runs as f64,
                    s.rejections
                ),
            ],
            vec![
                "capacity soak: history entries per run, max / mean".into(),
                format!("{} / {:.1}", s.max_history, s.mean_history),
            ],
            vec![
                "capacity soak: wall / ideal (runs ÷ 4 × 50 ms)".into(),
                format!(
                    "{:.2} s / {:.2} s",
                    s.wall.as_secs_f64(),
                    ideal.as_secs_f64()
                ),
            ],
        ],
    );
    r.goal(
        "runs created per second through the API (/ bare SQLite)",
        &format!("{total_rate:.0} /s ({:.2})", total_rate / bare),
        "—",
        None,
    );
    r.goal(
        &format!("dispatch latency median, 0 / {n_create} queued"),
        &format!("{} / {}", lat(e50), lat(l50)),
        "—",
        None,
    );
    r.goal(
        "capacity soak: offers per run",
        &format!("{:.2}", s.offers as f64 / soak_runs as f64),
        "—",
        None,
    );
    r.finish();
}
