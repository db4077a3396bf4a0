//! The worker core: configuration, the orchestrator session, the journal
//! and delivery of reports, and the task lifecycle. It drives any
//! [`crate::runtime::Runtime`] and knows no runtime's types.

pub mod backoff;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod dial;
pub mod health;
pub mod invocation;
pub mod journal;
pub mod metrics;
pub mod proxy;
pub mod session;
pub mod tasks;
pub mod tls;

use crate::runtime::Runtime;
use config::WorkerConfig;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit status when the shutdown deadline passed before every task ended
/// and every report was delivered: tasks were force-stopped, and reports
/// still undelivered wait in the journal for the next start.
pub const EXIT_DRAIN_INCOMPLETE: u8 = 3;

/// How long, after the tasks have ended, a shutdown waits for their reports
/// to be confirmed before leaving them to the next start.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// The worker over any runtime; `shutdown` resolves when the worker should
/// stop taking tasks and wind down.
///
/// Exit status: 0 when the drain finished in time, [`EXIT_DRAIN_INCOMPLETE`]
/// when it did not, 1 when the worker could not start (its state directory
/// is unusable, the metrics address is taken).
pub async fn run_with(
    config: WorkerConfig,
    runtime: Arc<dyn Runtime>,
    shutdown: impl std::future::Future<Output = ()>,
) -> ExitCode {
    tracing::info!(worker_id = %crate::text::Escaped(&config.worker_id), backend = runtime.name(), "starting: {}", runtime.describe());
    let (journal, inherited) = match journal::Journal::open(&config.state_dir, &config.worker_id) {
        Ok(j) => j,
        Err(e) => {
            eprintln!(
                    "error: cannot use the state directory {}: {e}; the worker records every claim there before \
                     it runs a task. Fix its permissions or choose another with --state-dir",
                    config.state_dir.display()
                );
            return ExitCode::FAILURE;
        }
    };
    let journal = Arc::new(journal);
    let metrics = metrics::Metrics::new(
        &config.worker_id,
        runtime.name(),
        config.max_concurrent_tasks,
    );
    // The exporter the OpenTelemetry variables choose (the Go worker's
    // autoexport), or Prometheus on --metrics-listen.
    let exporter = match metrics::start_exporter(&metrics, config.metrics_listen).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let health = Arc::new(health::Health::default());
    if let Some(addr) = config.health_listen {
        match health::serve(addr, health.clone(), runtime.clone()).await {
            Ok(bound) => {
                tracing::info!("serving health probes at http://{bound}/healthz and /readyz")
            }
            Err(e) => {
                eprintln!("error: cannot serve health probes on {addr}: {e}; choose another --health-listen address");
                return ExitCode::FAILURE;
            }
        }
    }
    let config = Arc::new(config);
    let delivery = Arc::new(delivery::Delivery::new(journal.clone()));
    let manager = tasks::TaskManager::new(
        runtime.clone(),
        config.clone(),
        journal.clone(),
        delivery.clone(),
        metrics.clone(),
    );

    // What dead earlier instances left: reports to deliver, executions to
    // resolve. Reported on the first connection, like any other report.
    for (task, report) in inherited.undelivered {
        tracing::info!(
            task_id = task.task_id,
            "delivering a report left undelivered by an earlier run of this worker"
        );
        delivery.resume(task, report);
    }
    let unfinished = inherited.unfinished.clone();
    let mut resolved = runtime.recover(unfinished.clone()).await;
    for task in unfinished {
        if !resolved.iter().any(|(t, _)| *t == task) {
            resolved.push((
                task,
                crate::runtime::RunOutcome::Failed(crate::runtime::Failure::new(
                    crate::protocol::FailureReason::Unknown,
                    "the worker died while it held this task and the runtime found nothing of it at the restart",
                )),
            ));
        }
    }
    for (task, outcome) in resolved {
        manager.report_recovered(task, outcome);
    }
    if !inherited.dispatched.is_empty() {
        tracing::info!(
            "{} task(s) dispatched by an earlier run of this worker are still known; a cancellation reaches their dispatcher",
            inherited.dispatched.len()
        );
    }

    let dispatch = tasks::Dispatch(manager.clone());
    let close = tokio_util::sync::CancellationToken::new();
    let session = session::Session {
        config: &config,
        timing: config.timing,
        delivery: &delivery,
        inbound: &dispatch,
        close: close.clone(),
        metrics: &metrics,
        health: &health,
    };

    let session_run = session.run();
    tokio::pin!(session_run);
    tokio::select! {
        _ = &mut session_run => return ExitCode::SUCCESS,
        _ = shutdown => {}
    }
    health.set_shutting_down();
    tracing::info!("shutting down: {} task(s) running", manager.active());
    // The session keeps running (delivering reports) while we wind down.
    let (in_time, _) = tokio::join!(
        wind_down(&manager, &config, &delivery, &close),
        &mut session_run
    );
    runtime.shutdown(Duration::from_secs(10)).await;
    // A last push, so a collector sees the final state.
    exporter.shutdown().await;
    if !delivery.is_empty() {
        tracing::warn!(
            "{} report(s) not yet confirmed by the orchestrator; they are kept under {} and delivered by the next start of this worker",
            delivery.len(),
            config.state_dir.display()
        );
    }
    tracing::info!("worker stopped");
    if in_time && delivery.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRAIN_INCOMPLETE)
    }
}

/// Stops the running tasks (bounded), gives their reports a bounded chance
/// to be confirmed, then asks the session to close the socket normally.
/// Returns whether the tasks ended within the shutdown timeout.
async fn wind_down(
    manager: &tasks::TaskManager,
    config: &WorkerConfig,
    delivery: &delivery::Delivery,
    close: &tokio_util::sync::CancellationToken,
) -> bool {
    let in_time = manager.shutdown(config.shutdown_timeout).await;
    if tokio::time::timeout(DELIVERY_GRACE, delivery.drained())
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

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once with
/// 128 + the signal number (the shell's convention): 130 for SIGINT, 143
/// for SIGTERM. The journal keeps what the process held.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = term.recv() => 128 + 15,
            _ = int.recv() => 128 + 2,
        };
        eprintln!(
            "second signal: exiting immediately (what was running is recovered at the next start)"
        );
        std::process::exit(code);
    });
}
