//! The worker core: configuration, the orchestrator session, the journal
//! and delivery of reports, and the task lifecycle. It drives any
//! [`oz_runtime::Runtime`] and knows no runtime's types.

pub mod config;
pub mod connection;
pub mod delivery;
pub mod dial;
pub mod drain;
pub mod event;
pub mod health;
pub mod invocation;
pub mod journal;
pub mod metrics;
pub mod oom_score;
pub mod outbox;
pub mod proxy;
pub mod runtime_recovery;
pub mod session;
pub mod startup;
pub mod tasks;
pub mod tls;

use config::WorkerConfig;
use oz_runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The exit status the binary gives [`Stopped::Incomplete`] (the shutdown
/// deadline passed before every task ended and every report was delivered:
/// tasks were force-stopped, and reports still undelivered wait in the
/// journal for the next start). Here so the tests can name it.
pub const EXIT_DRAIN_INCOMPLETE: u8 = 3;

/// How long, after the tasks have ended, a shutdown waits for their reports
/// to be confirmed before leaving them to the next start.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// What a stop may take beyond `--shutdown-timeout`: force-stopping the
/// tasks still running ([`tasks::FORCE_STOP_GRACE`]), delivering reports,
/// closing the socket, releasing the runtime (processes it still waits on
/// are killed) and the last metrics push. Each phase takes what is left of
/// one deadline (SIGTERM + shutdown timeout + this), so a stop always ends
/// by then, whatever the collector or a teardown command does; the systemd
/// unit's `TimeoutStopSec` must exceed the sum (tests/deploy/systemd_unit.rs).
pub const STOP_TAIL: Duration = Duration::from_secs(10);

/// The part of [`STOP_TAIL`] kept for the socket's close handshake (at most
/// 2 s, `connection::drive`) and the last metrics push.
const CLOSE_AND_PUSH: Duration = Duration::from_secs(4);
/// The last metrics push at most (OTLP: a collector that never answers
/// would otherwise hold the stop for its whole export timeout).
const FINAL_PUSH: Duration = Duration::from_secs(2);

/// How a worker that started ended (the binary turns it into an exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every task ended within the shutdown timeout (or the drain finished)
    /// and every report was confirmed: exit 0.
    Complete,
    /// The deadline passed first: tasks were force-stopped, or reports still
    /// wait in the journal for the next start ([`EXIT_DRAIN_INCOMPLETE`]).
    Incomplete,
}

/// Why the worker could not start; each names what to change.
#[derive(Debug)]
pub enum StartError {
    /// The state directory (`--state-dir`) cannot hold the claim journal.
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The exporter `--metrics-listen` asked for could not start.
    Metrics(metrics::ExporterError),
    /// The health probes' address (`--health-listen`) cannot be bound.
    HealthListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::StateDir { path, source } => write!(
                f,
                "cannot use the state directory {}: {source}; the worker records every claim there before \
                 it runs a task. Fix its permissions or choose another with --state-dir",
                path.display()
            ),
            StartError::Metrics(e) => e.fmt(f),
            StartError::HealthListen { addr, source } => write!(
                f,
                "cannot serve health probes on {addr}: {source}; choose another address with \
                 --health-listen or OZ_HEALTH_LISTEN (workers sharing a network, such as containers \
                 run with --network host, need one port each)"
            ),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::StateDir { source, .. } | StartError::HealthListen { source, .. } => {
                Some(source)
            }
            StartError::Metrics(e) => Some(e),
        }
    }
}

/// The worker over any runtime; `shutdown` resolves when the worker should
/// stop taking tasks and wind down.
///
/// `Ok` once it has stopped ([`Stopped`] says whether in time); `Err` when
/// it could not start. It never prints, handles signals or exits: the
/// binary does.
pub async fn run_with(
    config: WorkerConfig,
    runtime: Arc<dyn Runtime>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Stopped, StartError> {
    run_with_drain(config, runtime, shutdown, std::future::pending()).await
}

/// [`run_with`], plus `drain`: when it resolves (the binary's SIGQUIT) the
/// worker drains ([`drain`]) and stops [`Stopped::Complete`] once its tasks
/// have ended and their reports are confirmed; `shutdown` during the drain
/// falls back to the normal shutdown. With `--disconnect-after-task` the
/// end of the first task starts the drain.
pub async fn run_with_drain(
    config: WorkerConfig,
    runtime: Arc<dyn Runtime>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: impl std::future::Future<Output = ()>,
) -> Result<Stopped, StartError> {
    let core = Core::start(config, runtime).await?;

    // One path in: every connection's events go to the core's one loop;
    // one path out: the outbox.
    let events = core.manager.events();
    let close = CancellationToken::new();
    let session = session::Session {
        config: &core.config,
        timing: core.config.timing,
        outbox: &core.outbox,
        events: &events,
        close: close.clone(),
        metrics: &core.metrics,
        health: &core.health,
    };
    let session_run = session.run();
    tokio::pin!(session_run);
    tokio::pin!(shutdown);
    tokio::pin!(drain);
    let one_task_ended = core.manager.one_task_ended();
    tokio::pin!(one_task_ended);
    // Only while the worker takes work: not during a drain or a shutdown.
    let take_over_later = core.take_over_periodically();
    tokio::pin!(take_over_later);
    let draining = tokio::select! {
        _ = &mut session_run => return Ok(Stopped::Complete),
        _ = &mut take_over_later => unreachable!("the periodic takeover never ends"),
        _ = &mut shutdown => false,
        _ = &mut drain => true,
        _ = &mut one_task_ended => {
            tracing::info!("--disconnect-after-task: the task has ended; disconnecting");
            true
        }
    };
    let drained = draining && core.drain(&close, &mut session_run, &mut shutdown).await;
    let deadline = tokio::time::Instant::now() + core.config.shutdown_timeout + STOP_TAIL;
    let in_time = drained || core.shut_down(&close, &mut session_run, deadline).await;
    Ok(core.release(in_time, deadline).await)
}

/// What a started worker holds, from start-up to its release.
struct Core {
    config: Arc<WorkerConfig>,
    runtime: Arc<dyn Runtime>,
    metrics: Arc<metrics::Metrics>,
    /// Taken by [`Core::release`] for the last push.
    exporter: std::sync::Mutex<Option<oz_telemetry::Running>>,
    health: Arc<health::Health>,
    delivery: Arc<delivery::Delivery>,
    outbox: Arc<outbox::Outbox>,
    manager: Arc<tasks::TaskManager>,
    journal: Arc<journal::Journal>,
}

impl Core {
    /// Opens the journal, starts the metrics exporter and the health
    /// probes, and takes over what dead earlier instances left
    /// ([`startup::take_over`]), all before the first connection.
    async fn start(config: WorkerConfig, runtime: Arc<dyn Runtime>) -> Result<Core, StartError> {
        tracing::info!(worker_id = %oz_foundation::escape::Escaped(&config.worker_id), backend = runtime.name(), "starting: {}", runtime.describe());
        let (journal, inherited) = journal::Journal::open(&config.state_dir, &config.worker_id)
            .map_err(|source| StartError::StateDir {
                path: config.state_dir.clone(),
                source,
            })?;
        let journal = Arc::new(journal);
        let metrics = metrics::Metrics::new(
            &config.worker_id,
            runtime.name(),
            config.max_concurrent_tasks,
        );
        // The exporter the OpenTelemetry variables choose (the Go worker's
        // autoexport), or Prometheus on --metrics-listen.
        let exporter = metrics::start_exporter(&metrics, config.metrics_listen)
            .await
            .map_err(StartError::Metrics)?;
        let health = Arc::new(health::Health::default());
        if let Some(addr) = config.health_listen {
            let bound = health::serve(addr, health.clone(), runtime.clone())
                .await
                .map_err(|source| StartError::HealthListen { addr, source })?;
            tracing::info!("serving health probes at http://{bound}/healthz and /readyz");
        }
        let config = Arc::new(config);
        let delivery = Arc::new(delivery::Delivery::new(journal.clone()));
        let outbox = Arc::new(outbox::Outbox::new(delivery.clone()));
        let manager = tasks::TaskManager::new(
            runtime.clone(),
            config.clone(),
            journal.clone(),
            outbox.clone(),
            metrics.clone(),
        );
        startup::take_over(inherited, runtime.as_ref(), &journal, &manager, &outbox).await;
        Ok(Core {
            config,
            runtime,
            metrics,
            exporter: std::sync::Mutex::new(Some(exporter)),
            health,
            delivery,
            outbox,
            manager,
            journal,
        })
    }

    /// Every `takeover_interval`, on a runtime whose tasks outlive the
    /// worker, takes over what dead instances of this worker id left since
    /// start-up ([`runtime_recovery::recover_runtime_executions`]): a Job
    /// whose holder still looked alive at start-up (a worker Pod still
    /// terminating) or could not be judged then is not left until the next
    /// restart. Never returns.
    async fn take_over_periodically(&self) {
        let every = match self.config.takeover_interval {
            Some(every) if self.runtime.reattaches() => every,
            _ => return std::future::pending().await,
        };
        loop {
            tokio::time::sleep(every).await;
            tracing::debug!("looking again for tasks that dead instances of this worker id left");
            let taken = runtime_recovery::recover_runtime_executions(
                self.runtime.as_ref(),
                &self.journal,
                &self.manager,
            )
            .await;
            if !taken.is_empty() {
                tracing::info!(
                    "took over {} task(s) that dead instances of this worker id left",
                    taken.len()
                );
            }
        }
    }

    /// The drain ([`drain`]): no new claim, the running tasks end with no
    /// deadline, their reports are confirmed and the socket closed. True
    /// once done; false when `shutdown` came first (the normal shutdown
    /// follows).
    async fn drain(
        &self,
        close: &CancellationToken,
        session_run: &mut (impl std::future::Future<Output = ()> + Unpin),
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> bool {
        self.health.set_draining();
        self.manager.start_drain();
        tracing::info!(
            "draining: {} task(s) running; new tasks are rejected as at capacity; the worker exits when they have ended (SIGTERM stops them now)",
            self.manager.active()
        );
        tokio::select! {
            _ = async {
                tokio::join!(drain::finish(&self.manager, &self.delivery, close), session_run)
            } => true,
            _ = shutdown => {
                tracing::info!("SIGTERM/SIGINT during the drain: shutting down the normal way");
                false
            }
        }
    }

    /// The normal shutdown, by `deadline`: tasks stopped ([`wind_down`])
    /// while the session goes on delivering reports, then closed. True when
    /// the tasks ended within the shutdown timeout.
    async fn shut_down(
        &self,
        close: &CancellationToken,
        session_run: &mut (impl std::future::Future<Output = ()> + Unpin),
        deadline: tokio::time::Instant,
    ) -> bool {
        self.health.set_shutting_down();
        tracing::info!(
            "shutting down: {} task(s) running; stopping within {:?}",
            self.manager.active(),
            self.config.shutdown_timeout + STOP_TAIL
        );
        // The session keeps running (delivering reports) while we wind down;
        // a socket that does not take the close frame (its write timeout is
        // 10 s) is dropped at the deadline instead.
        let session_until = deadline.checked_sub(FINAL_PUSH).unwrap_or(deadline);
        let left = |reserve: Duration| left_of(deadline, reserve);
        let (in_time, session_ended) = tokio::join!(
            wind_down(&self.manager, &self.config, &self.delivery, close, &left),
            tokio::time::timeout_at(session_until, session_run)
        );
        if session_ended.is_err() {
            tracing::warn!("the connection did not close in time; dropped");
        }
        in_time
    }

    /// Releases the runtime and pushes the last metrics, both by
    /// `deadline`; says whether the stop was [`Stopped::Complete`].
    async fn release(&self, in_time: bool, deadline: tokio::time::Instant) -> Stopped {
        let release = left_of(deadline, FINAL_PUSH);
        if tokio::time::timeout(release, self.runtime.shutdown(release))
            .await
            .is_err()
        {
            tracing::warn!("the runtime did not finish releasing what it holds within {release:?}");
        }
        // A last push, so a collector sees the final state; bounded.
        let push = left_of(deadline, Duration::ZERO).min(FINAL_PUSH);
        let exporter = self.exporter.lock().unwrap().take();
        if let Some(exporter) = exporter {
            if !exporter.shutdown_within(push).await {
                tracing::warn!("the last metrics push did not finish within {push:?}; abandoned");
            }
        }
        if !self.delivery.is_empty() {
            tracing::warn!(
                "{} report(s) not yet confirmed by the orchestrator; they are kept under {} and delivered by the next start of this worker",
                self.delivery.len(),
                self.config.state_dir.display()
            );
        }
        tracing::info!("worker stopped");
        if in_time && self.delivery.is_empty() {
            Stopped::Complete
        } else {
            Stopped::Incomplete
        }
    }
}

/// What is left of the time until `deadline`, keeping `reserve` back.
fn left_of(deadline: tokio::time::Instant, reserve: Duration) -> Duration {
    deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .saturating_sub(reserve)
}

/// Stops the running tasks (bounded), gives their reports a bounded chance
/// to be confirmed, then asks the session to close the socket normally.
/// Returns whether the tasks ended within the shutdown timeout.
async fn wind_down(
    manager: &tasks::TaskManager,
    config: &WorkerConfig,
    delivery: &delivery::Delivery,
    close: &CancellationToken,
    left: &dyn Fn(Duration) -> Duration,
) -> bool {
    let in_time = manager.shutdown(config.shutdown_timeout).await;
    let grace = DELIVERY_GRACE.min(left(CLOSE_AND_PUSH));
    if tokio::time::timeout(grace, delivery.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} report(s) could not be confirmed before exit",
            delivery.len()
        );
    }
    close.cancel();
    in_time
}
