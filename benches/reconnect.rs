//! Time to reconnect after the control plane comes back: an
//! `oz-agent-worker serve` process on a fixed port and its own data
//! directory, a worker connected to it (command runtime: no daemon needed),
//! then, N times: SIGKILL the plane, wait until the worker has noticed, start
//! the plane again on the same port and data, and time from the restarted
//! plane answering its API to the worker connected again (its
//! `oz_worker_connected` metric, polled every 2 ms). Baseline, interleaved:
//! a fresh worker process started against the ready plane, from spawn to
//! connected. The protocol's backoff (1 s doubling, 20 % jitter, reset on
//! connect) bounds the first: with a plane back within ~1 s the worker
//! retries 0.8–1 s after it lost the connection.
//!
//! `cargo bench --bench reconnect`; `OZ_BENCH_N` cycles (default 10, quick 3).

use oz_test_support::bench as support;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oz_runs_api::client::Client;
use oz_test_support::worker::{Launch, WorkerProcess};
use oz_test_support::worker_binary as binary;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::engine::unique;
use support::report::Report;
use support::setup;
use support::stats::{median, ms, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "reconnect";
const POLL: Duration = Duration::from_millis(2);
const WITHIN: Duration = Duration::from_secs(120);

struct Serve {
    child: Option<tokio::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
    key: String,
    starts: usize,
}

impl Serve {
    async fn start() -> Serve {
        let dir = tempfile::Builder::new()
            .prefix("oz-bench-serve-")
            .tempdir()
            .unwrap();
        let out = std::process::Command::new(binary())
            .args(["api-keys", "create", "--team", "bench", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "api-keys create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Serve {
            child: None,
            port,
            key: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            dir,
            starts: 0,
        };
        s.spawn().await;
        s
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, oz_control_plane::WS_PATH)
    }

    /// Starts it and returns when its API answers.
    async fn spawn(&mut self) -> Instant {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("serve-{}.log", self.starts)))
            .unwrap();
        self.child = Some(
            tokio::process::Command::new(binary())
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .arg("--data-dir")
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("serve starts"),
        );
        let client = Client::new(&self.url(), &self.key).unwrap();
        let deadline = Instant::now() + WITHIN;
        loop {
            if client.list_runs(None, None).await.is_ok() {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "serve did not come up");
            tokio::time::sleep(POLL).await;
        }
    }

    async fn kill(&mut self) {
        let mut child = self.child.take().expect("serve runs");
        let _ = kill(
            Pid::from_raw(child.id().expect("a pid") as i32),
            Signal::SIGKILL,
        );
        child.wait().await.unwrap();
    }
}

/// The `oz_worker_connected` gauge from the worker's metrics endpoint.
async fn connected(addr: &str) -> Option<bool> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    // `oz_worker_connected{worker_id="…",…} 1` (labelled, as the Go worker's).
    let line = text.lines().find(|l| {
        l.strip_prefix("oz_worker_connected")
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
    })?;
    Some(line.ends_with(" 1"))
}

async fn until_connected(addr: &str, want: bool) -> Instant {
    let deadline = Instant::now() + WITHIN;
    loop {
        if connected(addr).await == Some(want) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the worker's oz_worker_connected never became {want}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn launch(serve: &Serve, config: &Path) -> Launch {
    Launch {
        worker_id: unique("bench-reconnect"),
        ws_url: serve.ws_url(),
        root_url: serve.url(),
        api_key: serve.key.clone(),
        args: vec![
            "--backend".into(),
            "command".into(),
            "--config-file".into(),
            config.display().to_string(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
        ..Default::default()
    }
}

/// The metrics address the worker logged (`metrics: Prometheus at
/// http://ADDR/metrics`).
fn metrics_addr(worker: &WorkerProcess) -> String {
    const SAID: &str = "Prometheus at http://";
    let log = worker.log_text();
    let at = log
        .find(SAID)
        .unwrap_or_else(|| panic!("the worker logs its metrics address:\n{log}"));
    let rest = &log[at + SAID.len()..];
    rest.split('/').next().unwrap().to_string()
}

#[tokio::main]
async fn main() {
    let n = setup::count("OZ_BENCH_N", 10, 3);
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        "backend:\n  command:\n    dispatch_command: \"exit 0\"\n",
    )
    .unwrap();
    let mut serve = Serve::start().await;
    let worker = WorkerProcess::try_start(launch(&serve, &config))
        .await
        .unwrap_or_else(|e| setup::missing(NAME, &format!("the worker did not start: {e}")));
    let addr = metrics_addr(&worker);
    until_connected(&addr, true).await;

    let (mut reconnect, mut outage, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    let mut notice = Vec::new();
    for _ in 0..n {
        let killed = Instant::now();
        serve.kill().await;
        let noticed = until_connected(&addr, false).await;
        let ready = serve.spawn().await;
        let back = until_connected(&addr, true).await;
        reconnect.push(back - ready);
        outage.push(ready - killed);
        notice.push(noticed - killed);

        // Baseline: a new worker process against the ready plane.
        let t0 = Instant::now();
        let other = WorkerProcess::try_spawn(launch(&serve, &config)).unwrap();
        other
            .try_wait_for_log("Prometheus at http://", WITHIN)
            .await
            .unwrap();
        until_connected(&metrics_addr(&other), true).await;
        fresh.push(t0.elapsed());
        other.stop(Duration::from_secs(30)).await;
    }
    worker.stop(Duration::from_secs(30)).await;
    serve.kill().await;

    let mut r = Report::new(NAME, "Reconnect after the control plane restarts");
    r.text(&format!(
        "{n} cycles: SIGKILL of an `oz-agent-worker serve` process, restarted at once on the \
         same port and SQLite data; timed from the restarted plane answering its runs API to the \
         worker's `oz_worker_connected` metric reading 1 (polled every {POLL:?}). Baseline, in \
         the same cycles: a new worker process started against the ready plane, from spawn to \
         connected. No goal was set; the protocol's reconnect backoff (first retry 0.8–1 s after \
         the loss, then doubling) is the expected bound."
    ));
    r.table(
        &["figure", "median", "max"],
        &[
            vec![
                "**plane ready → worker connected again**".into(),
                format!("**{}**", ms(median(&reconnect))),
                ms(*reconnect.iter().max().unwrap()),
            ],
            vec![
                "plane killed → worker noticed (metric reads 0)".into(),
                ms(median(&notice)),
                ms(*notice.iter().max().unwrap()),
            ],
            vec![
                "plane killed → restarted plane ready (outage)".into(),
                ms(median(&outage)),
                ms(*outage.iter().max().unwrap()),
            ],
            vec![
                "outage + reconnect (plane killed → worker connected)".into(),
                ms(median(
                    &reconnect
                        .iter()
                        .zip(&outage)
                        .map(|(a, b)| *a + *b)
                        .collect::<Vec<_>>(),
                )),
                "—".into(),
            ],
            vec![
                "baseline: new worker process, spawn → connected".into(),
                ms(median(&fresh)),
                ms(percentile(&fresh, 100.0)),
            ],
        ],
    );
    r.goal(
        "reconnect after a control plane restart (ready → connected), median",
        &ms(median(&reconnect)),
        "— (backoff: ≤ 1 s)",
        None,
    );
    r.finish();
}
