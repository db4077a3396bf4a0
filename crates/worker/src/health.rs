//! Health probes on `--health-listen`, for supervisors (Kubernetes liveness
//! and readiness probes, the container image's HEALTHCHECK, systemd):
//!
//! - `GET /healthz` (liveness): 200 while the process is alive and its
//!   session loop is not stuck (it beats on every connection attempt, frame
//!   and ping; silence for [`STUCK_AFTER`] means stuck); 503 otherwise.
//! - `GET /readyz` (readiness): 200 when connected to the orchestrator (or
//!   disconnected for less than [`RECONNECT_GRACE`], so a server restart does
//!   not flap it) and the runtime answers its check; 503 with a JSON reason
//!   otherwise, while draining (reason `draining: …`) and while shutting down.
//!
//! Bodies are JSON: `{"status":"ok"}` or `{"status":"unavailable","reason":"…"}`.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use oz_runtime::Runtime;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// Tokio's clock, so paused-time tests can move it.
use tokio::time::Instant;

/// How long the session loop may go without a beat before liveness fails:
/// a healthy loop beats at least every ping interval (30 s) when connected
/// and every connection attempt (backoff ≤ 60 s, handshake ≤ 30 s) when not.
pub const STUCK_AFTER: Duration = Duration::from_secs(180);
/// How long after losing the orchestrator the worker still reports ready.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(60);
/// How long a runtime check result is reused.
const CHECK_EVERY: Duration = Duration::from_secs(5);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the last beat.
    beat: AtomicU64,
    connected: AtomicBool,
    ever_connected: AtomicBool,
    disconnected_at: Mutex<Option<Instant>>,
    shutting_down: AtomicBool,
    draining: AtomicBool,
    check: Mutex<Option<(Instant, Result<(), Unready>)>>,
}

/// Why the runtime is not usable now (`/readyz` says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unready {
    /// The runtime's own check failed; its words.
    Check(String),
    /// The check did not answer within its limit.
    NoAnswer(Duration),
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unready::Check(why) => f.write_str(why),
            Unready::NoAnswer(limit) => write!(f, "no answer within {limit:?}"),
        }
    }
}

impl std::error::Error for Unready {}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            beat: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            disconnected_at: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            check: Mutex::new(None),
        }
    }
}

/// What a probe answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Unavailable(String),
}

impl Health {
    /// The session loop is making progress.
    pub fn beat(&self) {
        self.beat
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_connected(&self, up: bool) {
        self.beat();
        self.connected.store(up, Ordering::SeqCst);
        let mut at = self.disconnected_at.lock().unwrap();
        if up {
            self.ever_connected.store(true, Ordering::SeqCst);
            *at = None;
        } else if at.is_none() {
            *at = Some(Instant::now());
        }
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// A drain started (SIGQUIT, `--disconnect-after-task`): not ready, so
    /// a load balancer or supervisor sends nothing new this way.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn liveness(&self) -> Verdict {
        let last = Duration::from_millis(self.beat.load(Ordering::Relaxed));
        let silent = self.started.elapsed().saturating_sub(last);
        if silent > STUCK_AFTER {
            Verdict::Unavailable(format!(
                "the session loop has made no progress for {}s",
                silent.as_secs()
            ))
        } else {
            Verdict::Ok
        }
    }

    pub async fn readiness(&self, runtime: &dyn Runtime) -> Verdict {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Verdict::Unavailable("the worker is shutting down".into());
        }
        if self.draining.load(Ordering::SeqCst) {
            return Verdict::Unavailable(
                "draining: the worker finishes its running tasks, takes no new ones and then exits"
                    .into(),
            );
        }
        if !self.connected.load(Ordering::SeqCst) {
            if !self.ever_connected.load(Ordering::SeqCst) {
                return Verdict::Unavailable("not connected to the orchestrator yet".into());
            }
            let since = self.disconnected_at.lock().unwrap().unwrap_or(self.started);
            if since.elapsed() > RECONNECT_GRACE {
                return Verdict::Unavailable(format!(
                    "disconnected from the orchestrator for {}s",
                    since.elapsed().as_secs()
                ));
            }
        }
        match self.runtime_check(runtime).await {
            Ok(()) => Verdict::Ok,
            Err(e) => {
                Verdict::Unavailable(format!("the {} runtime is not usable: {e}", runtime.name()))
            }
        }
    }

    async fn runtime_check(&self, runtime: &dyn Runtime) -> Result<(), Unready> {
        if let Some((at, result)) = self.check.lock().unwrap().as_ref() {
            if at.elapsed() < CHECK_EVERY {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(CHECK_TIMEOUT, runtime.check()).await {
            Ok(r) => r.map_err(|e| Unready::Check(e.to_string())),
            Err(_) => Err(Unready::NoAnswer(CHECK_TIMEOUT)),
        };
        *self.check.lock().unwrap() = Some((Instant::now(), result.clone()));
        result
    }
}

fn respond(verdict: Verdict) -> Response<Full<Bytes>> {
    let (status, body) = match verdict {
        Verdict::Ok => (StatusCode::OK, serde_json::json!({"status": "ok"})),
        Verdict::Unavailable(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "reason": reason}),
        ),
    };
    let mut text = body.to_string();
    text.push('\n');
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-store")
        .body(Full::new(Bytes::from(text)))
        .expect("static response parts are valid")
}

/// Serves the probes until the process ends; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    runtime: Arc<dyn Runtime>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (health, runtime) = (health.clone(), runtime.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (health, runtime) = (health.clone(), runtime.clone());
                        async move {
                            let resp = match req.uri().path() {
                            "/healthz" | "/livez" => respond(health.liveness()),
                            "/readyz" => respond(health.readiness(runtime.as_ref()).await),
                            _ => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(
                                    b"probes are at /healthz (liveness) and /readyz (readiness)\n",
                                )))
                                .expect("static response parts are valid"),
                        };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use oz_runtime::{Invocation, RunOutcome, TaskContext, TaskRef};

    /// A runtime whose `check` answers what the function makes (the
    /// seam's [`oz_runtime::CheckError`] is not `Clone`).
    struct Checked(fn() -> Result<(), oz_runtime::CheckError>);

    impl Runtime for Checked {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn describe(&self) -> String {
            String::new()
        }
        fn run(&self, _: Invocation, _: TaskContext) -> BoxFuture<'_, RunOutcome> {
            Box::pin(async { RunOutcome::Completed })
        }
        fn recover(&self, _: Vec<TaskRef>) -> BoxFuture<'_, Vec<(TaskRef, RunOutcome)>> {
            Box::pin(async { Vec::new() })
        }
        fn check(&self) -> BoxFuture<'_, Result<(), oz_runtime::CheckError>> {
            let r = (self.0)();
            Box::pin(async move { r })
        }
    }

    fn reason(v: Verdict) -> String {
        match v {
            Verdict::Ok => "ok".into(),
            Verdict::Unavailable(r) => r,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_the_connection_with_a_grace_and_the_runtime() {
        let h = Health::default();
        let ok = Checked(|| Ok(()));
        assert!(reason(h.readiness(&ok).await).contains("not connected"));
        h.set_connected(true);
        assert_eq!(h.readiness(&ok).await, Verdict::Ok);
        h.set_connected(false);
        assert_eq!(h.readiness(&ok).await, Verdict::Ok, "within the grace");
        tokio::time::advance(RECONNECT_GRACE + Duration::from_secs(1)).await;
        assert!(reason(h.readiness(&ok).await).contains("disconnected"));
        h.set_connected(true);
        let broken = Checked(|| {
            Err(oz_runtime::CheckError::Unreachable {
                context: "the daemon: ",
                source: "gone".into(),
            })
        });
        assert!(reason(h.readiness(&broken).await).contains("the daemon: gone"));
        h.set_draining();
        assert!(reason(h.readiness(&ok).await).starts_with("draining"));
        h.set_shutting_down();
        assert!(reason(h.readiness(&ok).await).contains("shutting down"));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_when_the_loop_stops_beating() {
        let h = Health::default();
        h.beat();
        assert_eq!(h.liveness(), Verdict::Ok);
        tokio::time::advance(STUCK_AFTER + Duration::from_secs(1)).await;
        assert!(reason(h.liveness()).contains("no progress"));
        h.beat();
        assert_eq!(h.liveness(), Verdict::Ok);
    }
}
