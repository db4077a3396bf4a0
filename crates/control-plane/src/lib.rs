//! The local control plane: the orchestrator side of the worker protocol
//! (docs/PROTOCOL.md), a runs API, and durable state in SQLite. It runs as
//! `oz-agent-worker serve` or embedded in-process through [`ControlPlane`].
//!
//! Three folders, each depending only on those before it (the runs API's
//! bodies and state machine, and its client, are the `oz-runs-api` crate):
//! - `store`: durable state. `writer` is the one thread that runs SQLite
//!   (concurrent changes share a commit); `mod.rs` holds all SQL, as jobs
//!   for that thread; `keys` hashes API keys; `time` writes RFC 3339.
//! - `dispatch`: runs in motion, in memory. `index` (every run that has not
//!   ended, the queue per worker key, the live connections), `output` (runs'
//!   live output: bounded, stored, watched), `metrics` (the instruments of
//!   `serve --metrics-listen`), `run_scheduler` (the [`ControlPlane`]'s
//!   core: offers queued runs to worker connections and takes their claims,
//!   re-announces, output, reports and cancellations), `calendar` (cron
//!   expressions in a time zone) and `cron_scheduler` (runs from schedules,
//!   once per slot).
//! - `http`: what every endpoint shares (`endpoint_support`: bodies, JSON
//!   errors, authentication, shared state), the runs API under `api/`
//!   (`runs`, `output`, `schedules`, `workers`), the worker endpoint `ws`,
//!   the management UI `ui` with its sign-ins (`sessions`, `login_limit`),
//!   the abuse defences `connections` and `followers`, `openapi`, `tls`, and
//!   `server`, which only accepts connections and routes requests.
//!
//! Outside the crate only what the binary and the tests use is public: the
//! [`ControlPlane`] and its [`Config`], the [`store::Store`] calls of the
//! `api-keys` command, the defaults of `serve`'s flags, and the OpenAPI
//! [`http::openapi::document`].
//!
//! # Run lifecycle
//! `queued → assigned → claimed → succeeded | failed | cancelled`
//! (`RunState::can_become` is the whole table; `Store::transition` enforces
//! it and records every move with its time and a note).
//! - A run is offered only to connections of its team whose `worker_id`
//!   equals its `worker_host` exactly; connections sharing an id take turns.
//!   With none connected it stays queued and `waiting_reason` says so.
//! - A run has one execution id, minted at its first offer and repeated in
//!   every later one, so a worker recognises a re-offer of what it runs.
//!   The assignment is stored before it is sent.
//! - `task_rejected`, or the connection closing before `task_claimed`, puts it
//!   back in the queue (another connection may take it at once). A
//!   connection has at most one offer out at a time; one that rejected is
//!   offered nothing more until one of its tasks ends or
//!   `rejection_backoff` (default 30 s, doubling for each rejected probe)
//!   has passed.
//! - A claim is accepted from the connection the run was offered to, or from
//!   any connection of its team and worker id that names its execution (a
//!   re-announce, docs/PROTOCOL.md `task-reannounce`). A repeated claim is a
//!   no-op; a claim or report naming another execution is ignored.
//! - After the claim, a closed connection leaves the run claimed: any
//!   connection of the same team and worker id may deliver its terminal
//!   message naming the run's execution id (a worker re-sends a pending
//!   report that way on a new connection). A report or output that names no
//!   execution is taken only from the connection the run is assigned to or
//!   held by. Output after the run's end is taken only until its output
//!   settles (`output::SETTLE_MAX` at most: the worker's output queue may
//!   trail its report), then refused and not stored.
//!   Once no such connection has been live for `worker_lost_timeout`
//!   (default 10 min, `--worker-lost-timeout`) it fails with `worker_lost`.
//! - Every terminal report is answered with `report_ack` once recorded; a
//!   report for a finished run is ignored (logged at debug) and acked too.
//! - Cancel: queued → cancelled at once. Assigned or claimed → marked
//!   `cancel_requested` and `task_cancellation` is sent to the holding
//!   connection; the run ends when the worker reports (`task_completed` with
//!   `task_state: CANCELLED` → cancelled). If the holder is gone, every live
//!   connection of its id is told, and any that connects later; a rejection
//!   or disconnect before the claim of a cancel-requested run cancels it. A
//!   finished run cannot be cancelled (HTTP 409).
//! - A worker connection that sends nothing, not even a ping, for
//!   `worker_read_timeout` (default 60 s) is dropped, after the frames it
//!   had already sent are handled.
//! - A shutdown changes no run. On start, `claimed` runs wait for their
//!   workers as above, and runs left `assigned` wait `reannounce_grace`
//!   (default 75 s) for a worker to re-announce or report on them before
//!   they are offered again, with the same execution id.

pub mod dispatch;
pub mod http;
pub mod store;

use dispatch::cron_scheduler::CronScheduler;
use dispatch::run_scheduler::{RunScheduler, SchedulingTimeouts};
use http::endpoint_support::Shared;
use http::{connections, followers, login_limit, sessions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::{NewApiKey, Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use http::tls::TlsFiles;
pub use http::ws::WS_PATH;

/// Where the control plane keeps its state.
#[derive(Debug, Clone)]
pub enum Storage {
    /// An SQLite file (created with its directory when missing).
    File(PathBuf),
    /// Nothing survives the process: for tests and demos.
    InMemory,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub storage: Storage,
    /// A worker connection that sends nothing (not even a ping) for this long
    /// is dropped. docs/PROTOCOL.md: 60 s.
    pub worker_read_timeout: Duration,
    /// A claimed run fails with `worker_lost` once no worker with its id has
    /// been connected for this long.
    pub worker_lost_timeout: Duration,
    /// After a connection rejects an offer, how long before it is offered
    /// anything again when none of its tasks ended meanwhile (doubling for
    /// each rejected probe, up to 16 times this).
    pub rejection_backoff: Duration,
    /// After a restart, how long a run left `assigned` waits for its worker
    /// to re-announce it before it is offered again (same execution id).
    pub reannounce_grace: Duration,
    /// An HTTP connection must send a request's complete headers within
    /// this long (also between requests on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// How often the re-offer and worker-lost checks run.
    pub sweep_interval: Duration,
    /// Serve TLS (`https://`, `wss://`) with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Live output kept per run, in bytes (the newest; older output is
    /// dropped, and readers are told how much).
    pub output_limit: u64,
    /// Serve the Prometheus page (`/metrics`, unauthenticated: counts and
    /// worker ids only) on this address; `None` (the default) serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// A request's body must arrive within this long of its headers.
    pub body_read_timeout: Duration,
    /// Open HTTP connections at most; `None`: the file limit less
    /// `connections::FD_RESERVE`, at most `connections::DEFAULT_MAX`.
    pub max_connections: Option<u64>,
    /// Live-output followers a team may have open at once.
    pub max_followers_per_team: usize,
    /// A follower that takes no event for this long is dropped.
    pub follower_send_timeout: Duration,
    /// Failed UI sign-ins per client address per minute.
    pub max_failed_logins: usize,
    /// UI sessions: lifetime, idle timeout, cap per team.
    pub sessions: sessions::Limits,
}

pub const DEFAULT_WORKER_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WORKER_LOST_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_REJECTION_BACKOFF: Duration = Duration::from_secs(30);
/// A worker retries its connection at most 60 s apart (docs/PROTOCOL.md), so one
/// that was backing off while the control plane was down is back within
/// this, with time to spare for its handshake.
pub const DEFAULT_REANNOUNCE_GRACE: Duration = Duration::from_secs(75);
/// Headers are a few hundred bytes; a client that takes longer is stuck or
/// hostile, and would otherwise hold a connection (and a task) forever.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Config {
    pub fn new(listen: SocketAddr, storage: Storage) -> Config {
        Config {
            listen,
            storage,
            worker_read_timeout: DEFAULT_WORKER_READ_TIMEOUT,
            worker_lost_timeout: DEFAULT_WORKER_LOST_TIMEOUT,
            rejection_backoff: DEFAULT_REJECTION_BACKOFF,
            reannounce_grace: DEFAULT_REANNOUNCE_GRACE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            sweep_interval: Duration::from_secs(1),
            tls: None,
            output_limit: dispatch::output::DEFAULT_LIMIT,
            metrics_listen: None,
            body_read_timeout: http::endpoint_support::DEFAULT_BODY_READ_TIMEOUT,
            max_connections: None,
            max_followers_per_team: followers::DEFAULT_MAX_PER_TEAM,
            follower_send_timeout: followers::DEFAULT_SEND_TIMEOUT,
            max_failed_logins: login_limit::DEFAULT_MAX_FAILURES,
            sessions: sessions::Limits::default(),
        }
    }

    /// In memory, on an ephemeral localhost port.
    pub fn ephemeral() -> Config {
        Config::new(SocketAddr::from(([127, 0, 0, 1], 0)), Storage::InMemory)
    }
}

/// The connection budget: `asked`, or the default for the process's file
/// limit; an explicit budget the file limit cannot hold is refused.
fn connection_budget(asked: Option<u64>) -> Result<usize, StartError> {
    use nix::sys::resource::{getrlimit, Resource};
    let nofile = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let room = nofile.saturating_sub(connections::FD_RESERVE);
    match asked {
        None => Ok(connections::default_max(nofile) as usize),
        Some(0) => Err(StartError::NoConnections),
        Some(n) if n > room => Err(StartError::TooManyConnections {
            asked: n,
            nofile,
            room,
        }),
        Some(n) => Ok(n as usize),
    }
}

/// `$XDG_DATA_HOME/oz-agent-worker`, else `~/.local/share/oz-agent-worker`,
/// else `./oz-agent-worker-data`.
pub fn default_data_dir() -> PathBuf {
    oz_foundation::dirs::xdg_dir("XDG_DATA_HOME", ".local/share", "data")
}

pub const DB_FILE_NAME: &str = "control-plane.sqlite3";

/// Why the control plane did not start. Each message names the setting
/// (flag) at fault and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("opening the database panicked: {0}")]
    OpenPanicked(#[source] tokio::task::JoinError),
    #[error("cannot listen on {addr}: {source}; pick another address with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS files.
    #[error(transparent)]
    Tls(#[from] http::tls::TlsError),
    /// The metrics address cannot be served: a sentence naming
    /// `--metrics-listen`.
    #[error("{0}")]
    Metrics(#[source] oz_telemetry::StartError),
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--max-connections {asked} does not fit the open-files limit ({nofile}, of which {reserve} are kept for the database and the log); raise the limit (ulimit -n, or LimitNOFILE= in the service unit) or ask for at most {room}", reserve = connections::FD_RESERVE)]
    TooManyConnections { asked: u64, nofile: u64, room: u64 },
}

/// A running control plane. Dropping it stops it too; `shutdown` also waits.
pub struct ControlPlane {
    addr: SocketAddr,
    tls: bool,
    run_scheduler: Arc<RunScheduler>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    metrics: Option<oz_telemetry::Running>,
}

/// The metrics page's source: the run scheduler's instruments and queues.
struct MetricsSource(Arc<RunScheduler>);

impl oz_telemetry::Source for MetricsSource {
    fn snapshot(&self) -> oz_telemetry::model::Snapshot {
        self.0.metrics().snapshot(&self.0.queues())
    }
}

impl ControlPlane {
    /// Opens the store, recovers runs, binds the listener and starts serving.
    pub async fn start(config: Config) -> Result<ControlPlane, StartError> {
        let max_connections = connection_budget(config.max_connections)?;
        let tls = match &config.tls {
            Some(files) => Some(http::tls::server_config(files)?),
            None => None,
        };
        // Opening runs migrations: not on an async thread either.
        let storage = config.storage.clone();
        let store = tokio::task::spawn_blocking(move || match &storage {
            Storage::File(path) => Store::open(path),
            Storage::InMemory => Store::open_in_memory(),
        })
        .await
        .map_err(StartError::OpenPanicked)??;
        let run_scheduler = Arc::new(
            RunScheduler::recover(
                Arc::new(store),
                SchedulingTimeouts {
                    worker_lost: config.worker_lost_timeout,
                    rejection_backoff: config.rejection_backoff,
                    reannounce_grace: config.reannounce_grace,
                },
                config.output_limit,
            )
            .await?,
        );
        let cron_scheduler = Arc::new(CronScheduler::load(run_scheduler.clone()).await?);
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                oz_telemetry::start(
                    &oz_telemetry::exporter::ExporterChoice::Prometheus {
                        address: addr.to_string(),
                        from_flag: true,
                    },
                    Arc::new(MetricsSource(run_scheduler.clone())),
                )
                .await
                .map_err(StartError::Metrics)?,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            run_scheduler: run_scheduler.clone(),
            cron_scheduler: cron_scheduler.clone(),
            sessions: sessions::Sessions::new(config.sessions),
            tls: tls.is_some(),
            worker_read_timeout: config.worker_read_timeout,
            header_read_timeout: config.header_read_timeout,
            body_read_timeout: config.body_read_timeout,
            connections: connections::Connections::new(max_connections),
            followers: followers::Followers::new(
                config.max_followers_per_team,
                config.follower_send_timeout,
            ),
            login_limit: login_limit::LoginLimit::new(config.max_failed_logins),
            shutdown: shutdown_rx.clone(),
        });
        let serves_tls = tls.is_some();
        let scheduling = tokio::spawn(cron_scheduler.run(shutdown_rx.clone()));
        let server = tokio::spawn(http::server::accept_loop(listener, shared, tls));
        let sweeper = {
            let run_scheduler = run_scheduler.clone();
            let mut stop = shutdown_rx;
            let period = config.sweep_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => run_scheduler.sweep().await,
                        _ = stop.changed() => break,
                    }
                }
            })
        };
        tracing::info!(%addr, "control plane listening (worker endpoint {WS_PATH})");
        if let Some(m) = &metrics {
            tracing::info!("metrics: {}", m.description);
        }
        Ok(ControlPlane {
            addr,
            tls: serves_tls,
            run_scheduler,
            shutdown,
            tasks: vec![server, sweeper, scheduling],
            metrics,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when `Config::metrics_listen` asked for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.prometheus)
    }

    /// `http://ADDR` (`https://` with TLS), for the runs API and `--server`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The worker WebSocket endpoint (`ws://` or `wss://`), without the
    /// `worker_id` query.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{WS_PATH}", self.addr)
    }

    /// Creates a key for `team` (creating the team). The secret is in the
    /// returned value only. Waits on the calling thread for the database:
    /// for set-up code and tests.
    pub fn create_api_key(&self, team: &str) -> Result<NewApiKey, StoreError> {
        self.run_scheduler.store().create_api_key_blocking(team)
    }

    /// Live worker connections.
    pub fn connection_count(&self) -> usize {
        self.run_scheduler.connection_count()
    }

    /// Stops accepting, closes worker connections (with a close frame) and
    /// waits for the listener and background tasks to end.
    pub async fn shutdown(mut self) {
        self.run_scheduler.stop();
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        if let Some(m) = self.metrics.take() {
            m.shutdown().await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.run_scheduler.stop();
        let _ = self.shutdown.send(true);
    }
}
