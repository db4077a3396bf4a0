//! The worker core: configuration, the orchestrator session, the terminal
//! outbox and the task lifecycle. It drives a [`crate::runtime::TaskRuntime`]
//! and knows no Docker type.

pub mod backoff;
pub mod config;
pub mod connection;
pub mod metrics;
pub mod operator_env;
pub mod outbox;
pub mod pending;
pub mod session;
pub mod task_spec;
pub mod tasks;

use crate::runtime::TaskRuntime;
use config::WorkerConfig;
use std::process::ExitCode;
use std::sync::Arc;

/// The worker loop over any runtime; `shutdown` resolves when the worker
/// should stop taking tasks and wind down.
pub async fn run_with<R: TaskRuntime>(
    config: WorkerConfig,
    runtime: Arc<R>,
    shutdown: impl std::future::Future<Output = ()>,
) -> ExitCode {
    tracing::info!(worker_id = %config.worker_id, backend = runtime.backend_name(), "starting: {}", runtime.describe());
    let recovered = match runtime.recover_orphans().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("could not look for containers left by an earlier run: {e}");
            Vec::new()
        }
    };
    let metrics = metrics::Metrics::new(
        &config.worker_id,
        runtime.backend_name(),
        config.max_concurrent_tasks,
    );
    if let Some(addr) = config.metrics_listen {
        match metrics::serve(addr, metrics.clone()).await {
            Ok(bound) => tracing::info!("serving metrics at http://{bound}/metrics"),
            Err(e) => {
                eprintln!("error: cannot serve metrics on {addr}: {e}; choose another --metrics-listen address");
                return ExitCode::FAILURE;
            }
        }
    }
    let config = Arc::new(config);
    let outbox = Arc::new(outbox::TerminalOutbox::default());
    let manager = tasks::TaskManager::new(runtime, config.clone(), outbox.clone(), metrics.clone());
    // Reported on the first connection, like any other terminal message.
    manager.report_recovered(recovered);
    let instance = pending::instance_id();
    for msg in pending::take(&config.state_dir, &config.worker_id, &instance) {
        tracing::info!(
            task_id = msg.task_id(),
            "delivering a report left undelivered by an earlier run of this worker"
        );
        outbox.push(msg);
    }
    let dispatch = tasks::Dispatch(manager.clone());
    let close = tokio_util::sync::CancellationToken::new();
    let session = session::Session {
        config: &config,
        timing: config.timing,
        outbox: &outbox,
        inbound: &dispatch,
        close: close.clone(),
        metrics: &metrics,
    };

    let session_run = session.run();
    tokio::pin!(session_run);
    tokio::select! {
        _ = &mut session_run => return ExitCode::SUCCESS,
        _ = shutdown => {}
    }
    tracing::info!(
        "shutting down: stopping {} running task(s)",
        manager.active()
    );
    // The session keeps running (delivering the outbox) while we wind down.
    tokio::join!(
        wind_down(&manager, &config, &outbox, &close),
        &mut session_run
    );
    save_undelivered(&config, &instance, &outbox);
    tracing::info!("worker stopped");
    ExitCode::SUCCESS
}

/// Stops the running tasks, gives their reports a bounded chance to go out,
/// then asks the session to close the socket normally.
async fn wind_down<R: TaskRuntime>(
    manager: &tasks::TaskManager<R>,
    config: &WorkerConfig,
    outbox: &outbox::TerminalOutbox,
    close: &tokio_util::sync::CancellationToken,
) {
    let left = manager.shutdown(config.shutdown_timeout).await;
    if left > 0 {
        tracing::warn!(
            "{left} task(s) did not finish cleaning up within {:?}",
            config.shutdown_timeout
        );
    }
    let deliver = std::time::Duration::from_secs(10);
    if tokio::time::timeout(deliver, outbox.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} terminal message(s) could not be delivered before exit",
            outbox.len()
        );
    }
    close.cancel();
}

/// Keeps what the outbox still holds for the next start of this worker.
fn save_undelivered(config: &WorkerConfig, instance: &str, outbox: &outbox::TerminalOutbox) {
    let undelivered = outbox.take_all();
    if undelivered.is_empty() {
        return;
    }
    match pending::save(&config.state_dir, &config.worker_id, instance, &undelivered) {
        Ok(path) => tracing::warn!(
            "{} report(s) could not be delivered; saved to {} for the next start of this worker",
            undelivered.len(),
            path.display()
        ),
        Err(e) => tracing::error!(
            "{} report(s) could not be delivered or saved: {e}",
            undelivered.len()
        ),
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("second signal: exiting immediately");
        std::process::exit(130);
    });
}
