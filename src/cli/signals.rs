//! The process's stop signals, for every long-running subcommand (the
//! worker and `serve`): the core and the control plane only take a future
//! that says when to stop; the binary owns signals and exit statuses.

use std::future::Future;
use tokio::signal::unix::{signal, SignalKind};

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once with
/// 128 + the signal number (the shell's convention): 130 for SIGINT, 143
/// for SIGTERM. The worker's journal keeps what the process held; `serve`'s
/// store is committed transaction by transaction.
///
/// The handlers are installed when this is called (inside the tokio
/// runtime), not when the future is first polled: a signal that arrives
/// while the worker is still starting (or between its first connection
/// attempt and its first wait for a signal) is not lost to the default
/// action, and a second one still forces the exit at any time. Panics
/// only if the handlers cannot be installed (no tokio runtime).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let (received, first) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
        let _ = received.send(());
        let code = tokio::select! {
            _ = term.recv() => 128 + 15,
            _ = int.recv() => 128 + 2,
        };
        eprintln!(
            "second signal: exiting immediately (what was running is recovered at the next start)"
        );
        std::process::exit(code);
    });
    async move {
        // The sender only goes with a runtime that is ending.
        let _ = first.await;
    }
}

/// Resolves on the first SIGQUIT (the worker's drain). Later ones are logged
/// and change nothing (the drain is already under way; SIGTERM is the way
/// to cut it short). The handler is installed when this is called (inside
/// the tokio runtime), so from then on SIGQUIT no longer has its default
/// action (core dump).
pub fn drain_signal() -> impl Future<Output = ()> {
    let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
    async move {
        quit.recv().await;
        tracing::info!("received SIGQUIT: draining");
        tokio::spawn(async move {
            while quit.recv().await.is_some() {
                tracing::info!("received SIGQUIT again: already draining (send SIGTERM to stop the running tasks now)");
            }
        });
    }
}
