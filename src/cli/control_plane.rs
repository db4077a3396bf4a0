//! `serve`, `run`, `runs`, `api-keys`: the control plane and its clients.
//!
//! Exit codes: 0 success; 1 a run followed with `--wait`, `--attach` or
//! `runs logs --follow` failed or was cancelled; 2 the command itself
//! failed (bad input, unreachable server).

use oz_control_plane::store::{KeyOptions, Revoked, Store};
use oz_control_plane::{self as cp, Config, ControlPlane, Storage};
use oz_runs_api::client::{Client, ClientError, OutputEvent, RunQuery};
use oz_runs_api::model::{
    CreateRunRequest, CreateScheduleRequest, MissedSlots, OutputChunk, Run, RunState, Schedule,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the control plane's SQLite file lives.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Directory for the control plane's state
    /// [default: $XDG_DATA_HOME/oz-agent-worker or ~/.local/share/oz-agent-worker].
    #[arg(long, env = "OZ_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The SQLite database file itself (overrides --data-dir).
    #[arg(long, global = true)]
    pub db: Option<PathBuf>,
}

impl StoreArgs {
    pub fn db_path(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(|| {
            self.data_dir
                .clone()
                .unwrap_or_else(cp::default_data_dir)
                .join(cp::DB_FILE_NAME)
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address for the worker endpoint and the runs API (plain HTTP unless
    /// --tls-cert is given).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve TLS (workers use wss://, clients https://) with this PEM
    /// certificate chain, server certificate first.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Drop a worker connection that sends nothing (not even a ping) for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub worker_read_timeout: Duration,
    /// Fail a claimed run with `worker_lost` once no worker with its id has
    /// been connected for this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub worker_lost_timeout: Duration,
    /// After a restart, how long a run that was offered but not yet claimed
    /// waits for its worker to re-announce it before it is offered again
    /// (with the same execution id).
    #[arg(long, default_value = "75s", value_parser = parse_duration)]
    pub reannounce_grace: Duration,
    /// After a worker connection rejects a run (it is at capacity), offer
    /// it nothing more until one of its tasks ends or this long has passed
    /// (doubling for each rejected retry, up to 16 times this).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub rejection_backoff: Duration,
    /// Live output kept per run (the newest bytes; readers are told how much
    /// older output was dropped): bytes, or with a KiB/MiB/GiB suffix.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub output_limit: u64,
    /// Serve Prometheus metrics (queued runs per worker id, dispatch
    /// latency) at http://ADDR/metrics, without authentication: bind it
    /// where only the scraper reaches. Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Close a connection that has not sent a request's complete headers
    /// within this long (also a TLS handshake, and the idle time between
    /// requests on a kept-alive connection).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Answer 408 and close a connection whose request body has not
    /// arrived this long after its headers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Open HTTP connections at most (worker WebSockets included)
    /// [default: the open-files limit, raised to its hard limit at start,
    /// less 64; at most 16384]. Past it, the oldest connection that has not
    /// authenticated is closed for a new one; when all have, new ones get 503.
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Live-output followers (`runs logs --follow`, the UI's run page) a
    /// team may have open at once; past it, 429.
    #[arg(long, default_value_t = cp::http::followers::DEFAULT_MAX_PER_TEAM)]
    pub max_followers_per_team: usize,
    /// Drop a live-output follower that takes no event for this long (it
    /// is sent a `dropped` event saying where to resume).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub follower_send_timeout: Duration,
    /// Failed UI sign-ins allowed per client address per minute; past it,
    /// 429 with Retry-After.
    #[arg(long, default_value_t = cp::http::login_limit::DEFAULT_MAX_FAILURES)]
    pub max_failed_logins: usize,
    /// A UI session ends this long after sign-in, however active.
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub session_lifetime: Duration,
    /// A UI session unused for this long ends.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub session_idle_timeout: Duration,
    /// UI sessions a team may have; past it, a sign-in ends that team's
    /// least recently used session (never another team's).
    #[arg(long, default_value_t = cp::http::sessions::DEFAULT_MAX_PER_TEAM)]
    pub max_sessions_per_team: usize,
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    pub log_level: String,
}

/// A `--output-limit` that is not a size.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size; write e.g. 4MiB, 512KiB or 1048576")]
    NotASize(String),
    #[error("unknown size unit {unit:?} in {text:?}; use KiB, MiB or GiB")]
    UnknownUnit { unit: String, text: String },
    #[error("{0:?}: the size must be above zero")]
    Zero(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// `4MiB`, `512KiB`, `1GiB` (also `K`, `M`, `G`, powers of 1024), or bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| SizeError::NotASize(s.to_string()))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(SizeError::UnknownUnit {
                unit: other.to_string(),
                text: s.to_string(),
            })
        }
    };
    match n.checked_mul(scale) {
        Some(0) => Err(SizeError::Zero(s.to_string())),
        Some(v) => Ok(v),
        None => Err(SizeError::TooLarge(s.to_string())),
    }
}

/// The control plane a client command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Control plane URL: http://HOST:PORT, or https:// for a control plane
    /// serving TLS (its CA trusted through SSL_CERT_FILE / SSL_CERT_DIR or
    /// the system store).
    #[arg(
        long,
        env = "OZ_SERVER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// A team API key of that control plane.
    #[arg(long, env = "WARP_API_KEY", hide_env_values = true, global = true, value_parser = super::secret_arg)]
    pub api_key: Option<oz_foundation::secret::Secret>,
}

impl ServerArgs {
    pub(crate) fn client(&self) -> Result<Client, ClientError> {
        let key = self.api_key.as_ref().map(|k| k.expose_str()).unwrap_or("");
        Client::new(&self.server, key)
    }
}

/// A run's fields, for `run` and `schedules create`.
#[derive(Debug, clap::Args)]
pub struct RunSpecArgs {
    /// Id of the worker that runs it (exact, case-sensitive).
    #[arg(long)]
    pub host: String,
    /// Task container image (default: the worker's).
    #[arg(long)]
    pub image: Option<String>,
    /// Agent sidecar image.
    #[arg(long)]
    pub sidecar: Option<String>,
    /// KEY=VALUE for the task's environment, or KEY to pass this shell's value (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// What the agent is asked to do.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A short name for the run, shown in `runs list`.
    #[arg(long)]
    pub title: Option<String>,
}

impl RunSpecArgs {
    fn request(&self) -> Result<CreateRunRequest, EnvError> {
        let env_vars = parse_env(&self.env)?;
        Ok(CreateRunRequest {
            worker_host: self.host.clone(),
            title: self.title.clone(),
            prompt: self.prompt.clone(),
            docker_image: self.image.clone(),
            sidecar_image: self.sidecar.clone(),
            env_vars: env_vars.into_iter().map(|(k, v)| (k, v.into())).collect(),
            ..Default::default()
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: RunSpecArgs,
    /// Follow the run to its end; exit 1 when it fails or is cancelled.
    #[arg(long)]
    pub wait: bool,
    /// Print the agent's output live (stdout to stdout, stderr to stderr)
    /// until the run ends; exit 1 when it fails or is cancelled.
    #[arg(long, conflicts_with_all = ["wait", "json"])]
    pub attach: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: RunsCommand,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// List this team's runs, newest first: one page (the newest 100
    /// unless --limit says otherwise; the next page's command is printed
    /// to stderr), or every run with --all.
    List {
        /// Only runs in this state (queued, assigned, claimed, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<RunState>,
        /// Only runs for this worker id.
        #[arg(long)]
        host: Option<String>,
        /// Runs per page, 1 to 1000 [default: 100; 1000 with --all].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: Option<u16>,
        /// Start after an earlier page: the cursor it printed.
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Every run, page after page.
        #[arg(long)]
        all: bool,
    },
    /// Show one run with its state history.
    Get { id: String },
    /// Print a run's output (stdout to stdout, stderr to stderr) as the
    /// control plane keeps it.
    Logs {
        id: String,
        /// Keep printing as it arrives until the run ends; exit 1 when it
        /// failed or was cancelled.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Cancel a run (at once when queued; otherwise the worker is told to stop).
    Cancel { id: String },
}

#[derive(Debug, clap::Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    pub command: SchedulesCommand,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum SchedulesCommand {
    /// Create a schedule: a run (the same fields as `run`) created at each
    /// slot of a cron expression.
    Create {
        /// Five fields (minute hour day-of-month month day-of-week), six
        /// with seconds first, or an alias such as @hourly.
        #[arg(long)]
        cron: String,
        /// The IANA time zone the expression is read in (e.g. Europe/Berlin).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Slots that came due while the control plane was down: skip
        /// (none runs, as cron) or run-once (the latest runs, once).
        #[arg(long, default_value = "skip", value_parser = parse_missed)]
        missed: MissedSlots,
        /// A name to tell it apart (default: the run's title, else the expression).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        run: RunSpecArgs,
    },
    /// List this team's schedules.
    List,
    /// Show one schedule.
    Get { id: String },
    /// Stop creating runs until resumed.
    Pause { id: String },
    /// Create runs again from the next slot on (slots missed while paused do not run).
    Resume { id: String },
    /// Delete a schedule (its runs keep its id).
    Delete { id: String },
}

fn parse_missed(s: &str) -> Result<MissedSlots, oz_runs_api::model::UnknownMissedSlots> {
    s.parse()
}

#[derive(Debug, clap::Args)]
pub struct ApiKeysArgs {
    #[command(subcommand)]
    pub command: ApiKeysCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ApiKeysCommand {
    /// Create a key for a team (creating the team); the secret is printed once.
    Create {
        #[arg(long)]
        team: String,
        /// A name to tell the key apart in `api-keys list` (e.g. the host
        /// or the person it is for).
        #[arg(long)]
        name: Option<String>,
        /// Refuse the key after this long: 30d, 12h, 90m (d for days, or a
        /// Go duration).
        #[arg(long, value_parser = parse_expiry)]
        expires_in: Option<Duration>,
    },
    /// List keys: id, team, name, prefix, created, expiry, last use,
    /// revocation (never the key itself).
    List,
    /// Revoke a key by its id (from `api-keys list`): a running `serve` on
    /// the same database refuses it within a second, on the API, the UI and
    /// the worker endpoint, and closes worker connections using it.
    Revoke {
        /// The key's id (the KEY column of `api-keys list`).
        id: i64,
    },
}

/// An `--expires-in` that is not a duration in the future.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error("{0:?} is not a number of days; write e.g. 30d, 12h or 90m")]
    NotDays(String),
    #[error(transparent)]
    Duration(#[from] oz_foundation::duration::DurationError),
    #[error("{0:?}: an expiry must be in the future")]
    NotInFuture(String),
}

/// `30d` (days), or a Go duration (`12h`, `90m`).
fn parse_expiry(s: &str) -> Result<Duration, ExpiryError> {
    let d = match s.trim().strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .map(|n| Duration::from_secs(n * 86_400))
            .map_err(|_| ExpiryError::NotDays(s.to_string()))?,
        None => parse_duration(s)?,
    };
    if d.is_zero() {
        return Err(ExpiryError::NotInFuture(s.to_string()));
    }
    Ok(d)
}

/// `500ms`, `30s`, `10m`, `1h`, or a bare number of seconds.
pub use oz_foundation::duration::parse_duration;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

pub async fn serve(a: ServeArgs) -> ExitCode {
    super::logging::init(&a.log_level);
    match cp::http::connections::raise_nofile_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open-files limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit to its hard limit: {e}"),
    }
    let db = a.store.db_path();
    let mut config = Config::new(a.listen, Storage::File(db.clone()));
    config.worker_read_timeout = a.worker_read_timeout;
    config.worker_lost_timeout = a.worker_lost_timeout;
    config.rejection_backoff = a.rejection_backoff;
    config.reannounce_grace = a.reannounce_grace;
    config.output_limit = a.output_limit;
    config.metrics_listen = a.metrics_listen;
    config.header_read_timeout = a.header_read_timeout;
    config.body_read_timeout = a.body_read_timeout;
    config.max_connections = a.max_connections;
    config.max_followers_per_team = a.max_followers_per_team;
    config.follower_send_timeout = a.follower_send_timeout;
    config.max_failed_logins = a.max_failed_logins;
    config.sessions = cp::http::sessions::Limits {
        lifetime: a.session_lifetime,
        idle_timeout: a.session_idle_timeout,
        max_per_team: a.max_sessions_per_team,
    };
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        config.tls = Some(cp::TlsFiles { cert, key });
    }
    let plane = match ControlPlane::start(config).await {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    eprintln!(
        "control plane on {} (workers: {}, state: {})",
        plane.url(),
        plane.ws_url(),
        db.display()
    );
    if let Some(addr) = plane.metrics_addr() {
        eprintln!("metrics on http://{addr}/metrics");
    }
    super::signals::shutdown_signal().await;
    tracing::info!("shutting down");
    plane.shutdown().await;
    ExitCode::SUCCESS
}

pub async fn api_keys(a: ApiKeysArgs) -> ExitCode {
    let path = a.store.db_path();
    let store = match Store::open(&path) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match a.command {
        ApiKeysCommand::Create {
            team,
            name,
            expires_in,
        } => {
            let options = KeyOptions {
                name,
                expires_at: expires_in
                    .map(|d| cp::store::time::rfc3339(std::time::SystemTime::now() + d)),
            };
            let expiry = options.expires_at.clone();
            match store.create_api_key_with(&team, options).await {
                Ok(k) => {
                    eprintln!(
                        "Created API key {} for team {:?} (team id {}) in {}{}. Save it now: it is not shown again.",
                        k.key_id,
                        k.team.name,
                        k.team.id,
                        path.display(),
                        expiry.map(|e| format!(", valid until {e}")).unwrap_or_default()
                    );
                    println!("{}", k.secret);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        ApiKeysCommand::List => match store.list_api_keys().await {
            Ok(keys) => {
                println!(
                    "{:<6} {:<20} {:<8} {:<16} {:<14} {:<24} {:<24} {:<24} STATUS",
                    "KEY", "TEAM", "TEAM_ID", "NAME", "PREFIX", "CREATED", "EXPIRES", "LAST_USED"
                );
                let now = cp::store::time::now();
                for k in keys {
                    let status = match (&k.revoked_at, &k.expires_at) {
                        (Some(at), _) => format!("revoked {at}"),
                        (None, Some(e)) if *e <= now => "expired".to_string(),
                        _ => "active".to_string(),
                    };
                    println!(
                        "{:<6} {:<20} {:<8} {:<16} {:<14} {:<24} {:<24} {:<24} {}",
                        k.key_id,
                        oz_foundation::escape::escape_control(&k.team.name),
                        k.team.id,
                        oz_foundation::escape::escape_control(k.name.as_deref().unwrap_or("-")),
                        format!("{}…", k.prefix),
                        k.created_at,
                        k.expires_at.as_deref().unwrap_or("never"),
                        k.last_used_at.as_deref().unwrap_or("never"),
                        status
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        ApiKeysCommand::Revoke { id } => match store.revoke_api_key(id).await {
            Ok(Revoked::Now(k)) => {
                eprintln!(
                    "Revoked API key {} of team {:?}: a running serve on {} refuses it within a second.",
                    k.key_id,
                    k.team.name,
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Ok(Revoked::Already(at)) => {
                eprintln!("API key {id} was already revoked at {at}; nothing to do.");
                ExitCode::SUCCESS
            }
            Ok(Revoked::NoSuchKey) => fail(format!(
                "no API key with id {id} in {}; see `oz-agent-worker api-keys list`",
                path.display()
            )),
            Err(e) => fail(e),
        },
    }
}

/// A `-e` entry that names no variable or one that is not set.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("-e {0}: {0} is not set in this environment; pass -e {0}=VALUE")]
    NotSet(String),
    #[error("-e {0:?}: the variable name is empty")]
    EmptyName(String),
}

fn parse_env(entries: &[String]) -> Result<BTreeMap<String, String>, EnvError> {
    let mut env = BTreeMap::new();
    for e in entries {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => {
                let v = std::env::var(e).map_err(|_| EnvError::NotSet(e.clone()))?;
                (e.clone(), v)
            }
        };
        if k.is_empty() {
            return Err(EnvError::EmptyName(e.clone()));
        }
        env.insert(k, v);
    }
    Ok(env)
}

pub async fn run(a: RunArgs) -> ExitCode {
    let client = match a.server.client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let req = match a.spec.request() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let run = match client.create_run(&req).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if !a.wait && !a.attach {
        if a.json {
            print_json(&run);
        } else {
            println!("{}", run.id);
            if let Some(w) = &run.waiting_reason {
                eprintln!("{}: {w}", run.state);
            }
        }
        return ExitCode::SUCCESS;
    }
    if !a.json {
        eprintln!("run {} created", run.id);
    }
    if a.attach {
        if let Some(w) = &run.waiting_reason {
            eprintln!("{}: {w}", run.state);
        }
        return attach(&client, &run.id).await;
    }
    follow(&client, run, a.json).await
}

/// Prints run `id`'s output live until it ends, then its outcome (stderr).
async fn attach(client: &Client, id: &str) -> ExitCode {
    match print_output_live(client, id).await {
        Ok(run) => {
            eprintln!("{}", outcome_line(&run));
            exit_for(&run)
        }
        Err(e) => fail(e),
    }
}

/// 0 for a run that succeeded, 1 otherwise (as `run --wait`).
fn exit_for(run: &Run) -> ExitCode {
    if run.state == RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// How long a follow keeps trying to reconnect (e.g. across a restart of
/// `serve`) before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Follows run `id`'s output from the start, printing it as it arrives;
/// reconnects from the last byte seen when the connection drops. Returns
/// the run as it ended.
/// Why a followed run's output stopped before its end.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    /// The control plane answered with an error: it will not get better.
    #[error(transparent)]
    Refused(ClientError),
    #[error("lost the output of run {run}: {why}")]
    Lost { run: String, why: String },
}

async fn print_output_live(client: &Client, id: &str) -> Result<Run, FollowError> {
    use futures_util::StreamExt;
    let mut after = 0;
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let why = match client.follow_output(id, after).await {
            // The server answered: a 4xx will not get better.
            Err(e) if e.status().is_some() => return Err(FollowError::Refused(e)),
            Err(e) => e.to_string(),
            Ok(events) => {
                failing_since = None;
                let mut events = std::pin::pin!(events);
                let mut why = format!("the control plane closed the output stream of run {id}");
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(OutputEvent::Output(c)) => {
                            after = c.offset + c.data.len() as u64;
                            print_chunk(&c);
                        }
                        Ok(OutputEvent::Truncated(t)) => eprintln!(
                            "[oz] {} bytes of output skipped: the control plane keeps only the last {} bytes of a run's output",
                            t.bytes, t.limit_bytes
                        ),
                        Ok(OutputEvent::End(run)) => return Ok(*run),
                        Err(e) => {
                            why = e.to_string();
                            break;
                        }
                    }
                }
                why
            }
        };
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(FollowError::Lost {
                run: id.to_string(),
                why,
            });
        }
        tracing::debug!("following run {id} again after: {why}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One chunk to its stream, with a marker for what the worker dropped.
fn print_chunk(c: &OutputChunk) {
    use std::io::Write;
    if c.dropped_bytes > 0 {
        eprintln!(
            "[oz] {} bytes of older output dropped by the worker here (its buffer filled while its link to the control plane was down or slower than the task; the newest output is kept)",
            c.dropped_bytes
        );
    }
    let _ = match c.stream {
        oz_protocol::OutputStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(c.data.as_bytes()).and_then(|_| out.flush())
        }
        oz_protocol::OutputStream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(c.data.as_bytes()).and_then(|_| err.flush())
        }
    };
}

/// Polls the run until it ends, printing each history entry once.
async fn follow(client: &Client, mut run: Run, json: bool) -> ExitCode {
    let mut shown = 0;
    let mut last_waiting: Option<String> = None;
    loop {
        if !json {
            for h in run.history.iter().skip(shown) {
                match &h.note {
                    Some(n) => eprintln!("{}  {:<9} {n}", h.at, h.state),
                    None => eprintln!("{}  {}", h.at, h.state),
                }
            }
            if run.waiting_reason != last_waiting {
                if let Some(w) = &run.waiting_reason {
                    eprintln!("waiting: {w}");
                }
                last_waiting = run.waiting_reason.clone();
            }
        }
        shown = run.history.len();
        if run.state.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        run = match client.get_run(&run.id).await {
            Ok(r) => r,
            Err(e) => return fail(format!("lost track of run {}: {e}", run.id)),
        };
    }
    if json {
        print_json(&run);
    } else {
        println!("{}", outcome_line(&run));
    }
    exit_for(&run)
}

fn outcome_line(run: &Run) -> String {
    let mut line = format!("run {} {}", run.id, run.state);
    if let Some(r) = &run.failure_reason {
        line.push_str(&format!(" ({r})"));
    }
    if let Some(c) = run.exit_code {
        line.push_str(&format!(", exit code {c}"));
    }
    if let Some(m) = run.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str(&format!(": {m}"));
    }
    line
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialize")
    );
}

/// One page of runs (and the next page's cursor), or with `all` every run
/// from `query`'s position on, page after page.
async fn list_runs(
    client: &Client,
    query: RunQuery<'_>,
    all: bool,
) -> Result<(Vec<Run>, Option<String>), ClientError> {
    if all {
        return Ok((client.all_runs(query).await?, None));
    }
    let page = client.list_runs_page(&query).await?;
    Ok((page.runs, page.next_cursor))
}

fn print_runs(runs: &[Run], json: bool) {
    if json {
        print_json(&runs);
        return;
    }
    println!(
        "{:<22} {:<10} {:<20} {:<25} TITLE",
        "ID", "STATE", "HOST", "CREATED"
    );
    for r in runs {
        println!(
            "{:<22} {:<10} {:<20} {:<25} {}",
            r.id, r.state, r.worker_host, r.created_at, r.title
        );
    }
}

pub async fn runs(a: RunsArgs) -> ExitCode {
    let client = match a.server.client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match a.command {
        RunsCommand::List {
            state,
            host,
            limit,
            cursor,
            all,
        } => {
            let query = RunQuery {
                state,
                worker_host: host.as_deref(),
                limit: limit.map(usize::from),
                cursor: cursor.as_deref(),
            };
            match list_runs(&client, query, all).await {
                Ok((runs, next)) => {
                    print_runs(&runs, a.json);
                    if let Some(next) = next {
                        eprintln!(
                            "more runs: add --cursor {next} for the next page, or --all for every run"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        RunsCommand::Get { id } => match client.get_run(&id).await {
            Ok(r) if a.json => {
                print_json(&r);
                ExitCode::SUCCESS
            }
            Ok(r) => {
                print_run(&r);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        RunsCommand::Logs { id, follow: true } => match print_output_live(&client, &id).await {
            Ok(run) => {
                if run.state != RunState::Succeeded {
                    eprintln!("{}", outcome_line(&run));
                }
                exit_for(&run)
            }
            Err(e) => fail(e),
        },
        RunsCommand::Logs { id, follow: false } => match client.get_output(&id, 0).await {
            Ok(o) if a.json => {
                print_json(&o);
                ExitCode::SUCCESS
            }
            Ok(o) => {
                if o.truncated_bytes > 0 {
                    eprintln!(
                        "[oz] the first {} bytes of output are no longer kept: the control plane keeps only the last {} bytes of a run's output",
                        o.truncated_bytes, o.limit_bytes
                    );
                }
                for c in &o.chunks {
                    print_chunk(c);
                }
                if !o.state.is_terminal() {
                    eprintln!("[oz] run {id} is {}; `runs logs --follow {id}` prints the rest as it comes", o.state);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        RunsCommand::Cancel { id } => match client.cancel_run(&id).await {
            Ok(r) if a.json => {
                print_json(&r);
                ExitCode::SUCCESS
            }
            Ok(r) if r.state == RunState::Cancelled => {
                println!("run {} cancelled", r.id);
                ExitCode::SUCCESS
            }
            Ok(r) => {
                println!(
                    "run {} is {}: cancellation requested; the worker stops it and reports back",
                    r.id, r.state
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

fn print_run(r: &Run) {
    println!("id:          {}", r.id);
    println!("state:       {}", r.state);
    println!("worker_host: {}", r.worker_host);
    if !r.title.is_empty() {
        println!("title:       {}", r.title);
    }
    if let Some(i) = &r.docker_image {
        println!("image:       {i}");
    }
    if let Some(e) = &r.execution_id {
        println!("execution:   {e}");
    }
    if let Some(s) = &r.schedule_id {
        println!(
            "schedule:    {s} (slot {})",
            r.scheduled_for.as_deref().unwrap_or("?")
        );
    }
    if let Some(f) = &r.failure_reason {
        println!("failure:     {f}");
    }
    if let Some(c) = r.exit_code {
        println!("exit code:   {c}");
    }
    if let Some(m) = &r.message {
        println!("message:     {m}");
    }
    if r.cancel_requested && !r.state.is_terminal() {
        println!("cancel:      requested");
    }
    if let Some(w) = &r.waiting_reason {
        println!("waiting:     {w}");
    }
    println!("history:");
    for h in &r.history {
        println!(
            "  {}  {:<9} {}",
            h.at,
            h.state,
            h.note.as_deref().unwrap_or("")
        );
    }
}

pub async fn schedules(a: SchedulesArgs) -> ExitCode {
    let client = match a.server.client() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let one = |r: Result<Schedule, ClientError>, verb: &str| match r {
        Ok(s) if a.json => {
            print_json(&s);
            ExitCode::SUCCESS
        }
        Ok(s) => {
            if verb.is_empty() {
                print_schedule(&s);
            } else {
                println!("schedule {} {verb}", s.id);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    match a.command {
        SchedulesCommand::Create {
            cron,
            time_zone,
            missed,
            name,
            run,
        } => {
            let run = match run.request() {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let req = CreateScheduleRequest {
                name,
                cron,
                time_zone: Some(time_zone),
                missed,
                run,
            };
            match client.create_schedule(&req).await {
                Ok(s) if a.json => {
                    print_json(&s);
                    ExitCode::SUCCESS
                }
                Ok(s) => {
                    println!("{}", s.id);
                    if let Some(next) = &s.next_slot_at {
                        eprintln!("first run at {next}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        SchedulesCommand::List => match client.list_schedules().await {
            Ok(list) if a.json => {
                print_json(&list);
                ExitCode::SUCCESS
            }
            Ok(list) => {
                println!(
                    "{:<22} {:<7} {:<18} {:<16} {:<16} {:<25} NAME",
                    "ID", "STATE", "CRON", "TIME ZONE", "HOST", "NEXT"
                );
                for s in list {
                    println!(
                        "{:<22} {:<7} {:<18} {:<16} {:<16} {:<25} {}",
                        s.id,
                        if s.paused { "paused" } else { "active" },
                        s.cron,
                        s.time_zone,
                        s.run.worker_host,
                        s.next_slot_at.as_deref().unwrap_or("-"),
                        s.name
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        SchedulesCommand::Get { id } => one(client.get_schedule(&id).await, ""),
        SchedulesCommand::Pause { id } => one(client.pause_schedule(&id).await, "paused"),
        SchedulesCommand::Resume { id } => one(client.resume_schedule(&id).await, "resumed"),
        SchedulesCommand::Delete { id } => one(client.delete_schedule(&id).await, "deleted"),
    }
}

fn print_schedule(s: &Schedule) {
    println!("id:          {}", s.id);
    println!("name:        {}", s.name);
    println!("cron:        {} ({})", s.cron, s.time_zone);
    println!("missed:      {}", s.missed.as_str());
    println!(
        "state:       {}",
        if s.paused { "paused" } else { "active" }
    );
    println!("worker_host: {}", s.run.worker_host);
    if let Some(t) = &s.run.title {
        println!("title:       {t}");
    }
    if let Some(i) = &s.run.docker_image {
        println!("image:       {i}");
    }
    if !s.run.env_var_names.is_empty() {
        println!("env:         {}", s.run.env_var_names.join(", "));
    }
    println!("next:        {}", s.next_slot_at.as_deref().unwrap_or("-"));
    println!("handled to:  {}", s.handled_until);
    if let Some(r) = &s.last_run_id {
        println!("last run:    {r}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_defaults_are_the_control_planes() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let a = Cli::parse_from(["serve"]).serve;
        assert_eq!(a.worker_read_timeout, cp::DEFAULT_WORKER_READ_TIMEOUT);
        assert_eq!(a.worker_lost_timeout, cp::DEFAULT_WORKER_LOST_TIMEOUT);
        assert_eq!(a.rejection_backoff, cp::DEFAULT_REJECTION_BACKOFF);
        assert_eq!(a.reannounce_grace, cp::DEFAULT_REANNOUNCE_GRACE);
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("0")
            .unwrap_err()
            .to_string()
            .contains("above zero"));
        assert!(parse_size("4MB")
            .unwrap_err()
            .to_string()
            .contains("KiB, MiB or GiB"));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(
            parse_duration("30").is_err(),
            "a unit is required, as in Go"
        );
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("10 parsecs").is_err());
    }
}
