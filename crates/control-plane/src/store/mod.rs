//! Durable state in SQLite: teams, API keys (hashed), runs, every run's
//! history and its bounded live output, schedules, and the worker ids seen.
//! All SQL lives in this file.
//!
//! Every call runs on the database thread (`writer`), never on an async
//! thread, and its result comes back as a [`Pending`] future once the batch
//! it ran in is committed: a caller never acts on a change that a crash
//! could still undo. Calls run in the order they are made. Each change is
//! atomic on its own (a savepoint inside the batch's transaction).

pub(crate) mod keys;
pub mod time;
pub(crate) mod writer;

pub use crate::store::writer::BatchError;
use crate::store::writer::{JobError, Writer};
use oz_protocol::OutputStream;
use oz_runs_api::model::{CreateRunRequest, HistoryEntry, MissedSlots, OutputChunk, RunState};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Who may run a run: one team's worker id (the `workers` table's key).
/// Runs queue per key, connections are grouped by it, and a key is
/// paused or resumed as a whole. Ordered by team, then worker id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WorkerKey {
    pub team_id: i64,
    /// The `worker_id` the worker connects with; a run's `worker_host`.
    pub worker_id: String,
}

impl WorkerKey {
    pub(crate) fn new(team_id: i64, worker_id: &str) -> WorkerKey {
        WorkerKey {
            team_id,
            worker_id: worker_id.to_string(),
        }
    }
}

/// The run a schedule's slot creates: its id and the note its history
/// starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRun {
    pub run_id: String,
    pub note: String,
}

/// Why a store call failed. Each message is one sentence for the log (or,
/// at start-up, for the operator: those name the fix).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement failed.
    #[error("control plane database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The job's batch could not run it or make it durable.
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("the control plane's database thread stopped")]
    ThreadStopped,
    #[error("cannot start the control plane's database thread: {0}")]
    StartThread(#[source] std::io::Error),
    #[error("cannot create the data directory {}: {source}; pass --data-dir or --db to put it elsewhere", dir.display())]
    CreateDataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the control plane database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot restrict permissions of {}: {source}", path.display())]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the control plane database has schema version {found}, newer than this build knows ({known}); upgrade oz-agent-worker")]
    NewerSchema { found: i64, known: i64 },
    #[error("a team name must not be empty")]
    EmptyTeamName,
    #[error("cannot read random bytes for a key: {0}")]
    Random(#[source] std::io::Error),
    #[error("output for unknown run {0}")]
    UnknownRun(String),
}

impl From<JobError<StoreError>> for StoreError {
    fn from(e: JobError<StoreError>) -> Self {
        match e {
            JobError::Job(e) => e,
            JobError::Batch(e) => StoreError::Batch(e),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: i64,
    pub name: String,
}

/// Returned once, when a key is created: the only time the secret exists
/// outside the caller's hands.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub team: Team,
    pub key_id: i64,
    pub secret: String,
}

/// What `api-keys list` shows of a key: never the key itself.
#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub key_id: i64,
    pub team: Team,
    /// A name given at creation (`--name`), if any.
    pub name: Option<String>,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub created_at: String,
    /// RFC 3339; the key is refused from then on.
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Updated at most once a minute.
    pub last_used_at: Option<String>,
}

/// Options of a new key.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    pub name: Option<String>,
    /// RFC 3339 (`time::rfc3339`).
    pub expires_at: Option<String>,
}

/// What `revoke_api_key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    Now(ApiKeyRef),
    /// Already revoked, at this time.
    Already(String),
    NoSuchKey,
}

/// A key by id, with its team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRef {
    pub key_id: i64,
    pub team: Team,
}

/// A key found valid is trusted this long without asking the database
/// again: revoking or expiring a key (by `api-keys revoke`, another
/// process writing the same database) takes effect within it.
pub(crate) const KEY_RECHECK: Duration = Duration::from_millis(500);

/// A run as stored, including its secrets (`spec.env_vars`).
#[derive(Debug, Clone)]
pub(crate) struct RunRecord {
    pub id: String,
    pub team_id: i64,
    pub state: RunState,
    pub spec: CreateRunRequest,
    pub created_at: String,
    pub updated_at: String,
    pub execution_id: Option<String>,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    pub cancel_requested: bool,
    pub schedule_id: Option<String>,
    pub scheduled_for: Option<String>,
    /// Who ended it (`worker`, `api`, `control_plane`), once ended.
    pub ended_by: Option<String>,
    pub output: OutputTotals,
}

/// What ended a run: its worker's report, an outside system's report
/// through the API, or the control plane itself (cancelled while queued,
/// `worker_lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndedBy {
    Worker,
    Api,
    ControlPlane,
}

impl EndedBy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndedBy::Worker => "worker",
            EndedBy::Api => "api",
            EndedBy::ControlPlane => "control_plane",
        }
    }
}

/// One state change. Fields left `None` keep their stored value.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub to: RunState,
    pub note: String,
    pub execution_id: Option<String>,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    pub ended_by: Option<EndedBy>,
}

impl Change {
    pub(crate) fn to(to: RunState, note: impl Into<String>) -> Change {
        Change {
            to,
            note: note.into(),
            execution_id: None,
            failure_reason: None,
            exit_code: None,
            message: None,
            ended_by: None,
        }
    }

    /// A move to a terminal state, saying who ended the run.
    pub(crate) fn end(to: RunState, by: EndedBy, note: impl Into<String>) -> Change {
        Change {
            ended_by: Some(by),
            ..Change::to(to, note)
        }
    }
}

/// A run's live output as stored: offsets are bytes of the whole output
/// received for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OutputTotals {
    /// Where the next byte goes: everything received (and lost in memory).
    pub end: u64,
    /// The first byte still kept; everything before it was dropped to stay
    /// within the limit.
    pub start: u64,
    /// Bytes the worker said it dropped, in all.
    pub dropped: u64,
}

/// Output waiting to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewChunk {
    pub stream: OutputStream,
    pub data: String,
    /// Bytes the worker dropped just before it.
    pub dropped_before: u64,
}

/// A schedule as stored, including the run's secrets.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleRecord {
    pub id: String,
    pub team_id: i64,
    pub name: String,
    pub cron: String,
    pub time_zone: String,
    pub missed: MissedSlots,
    pub spec: CreateRunRequest,
    pub paused: bool,
    /// Slots up to and including this instant (RFC 3339, UTC) are handled.
    pub handled_until: String,
    pub last_run_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// What handling a schedule's due slot did.
#[derive(Debug, Clone)]
pub(crate) enum SlotOutcome {
    /// The run was created (and the slot marked handled).
    Created(Box<LiveRun>),
    /// The slot was marked handled without a run.
    Skipped,
    /// The schedule changed meanwhile (paused, deleted, or handled by an
    /// earlier call): nothing was done.
    Stale,
}

/// A worker id seen on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerRecord {
    pub worker_id: String,
    pub first_seen_at: String,
    pub last_seen_at: String,
    /// RFC 3339, UTC: since when an operator has it paused.
    pub paused_at: Option<String>,
}

/// A run that has not ended, as loaded at start-up: its creation order too.
#[derive(Debug, Clone)]
pub(crate) struct LiveRun {
    /// Creation order (the table's sequence): the queue order.
    pub seq: i64,
    pub record: RunRecord,
}

/// The result of a store call, available once its batch is committed.
pub struct Pending<T>(oneshot::Receiver<Result<T>>);

impl<T> Future for Pending<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(StoreError::ThreadStopped)))
    }
}

/// One page of a team's runs (`Store::list_runs`).
#[derive(Debug, Clone)]
pub(crate) struct RunPage {
    /// Newest first.
    pub runs: Vec<RunRecord>,
    /// The position to pass as `before` for the next page; `None` when
    /// this page is the last.
    pub next_before: Option<i64>,
}

pub struct Store {
    writer: Writer,
    /// key hash → team, for keys seen valid. Keys are never deleted, so a
    /// hit needs no database; a miss asks it (`api-keys create` may have
    /// added the key from another process).
    /// Key hash → (its team, when the database last said it is valid).
    known_keys: Mutex<HashMap<String, (Team, Instant)>>,
}

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE teams (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        team_id INTEGER NOT NULL REFERENCES teams(id),
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        team_id INTEGER NOT NULL REFERENCES teams(id),
        worker_host TEXT NOT NULL,
        state TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        execution_id TEXT,
        failure_reason TEXT,
        exit_code INTEGER,
        message TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_by_state ON runs(state, seq);
    CREATE TABLE run_history (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs(id),
        at TEXT NOT NULL,
        state TEXT NOT NULL,
        note TEXT
    );
    CREATE INDEX run_history_by_run ON run_history(run_id, seq);",
    // 2: live output, schedules, worker ids seen, who ended a run.
    "ALTER TABLE runs ADD COLUMN schedule_id TEXT;
    ALTER TABLE runs ADD COLUMN scheduled_for TEXT;
    ALTER TABLE runs ADD COLUMN ended_by TEXT;
    ALTER TABLE runs ADD COLUMN output_end INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN output_start INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN output_dropped INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX runs_by_schedule_slot ON runs(schedule_id, scheduled_for)
        WHERE schedule_id IS NOT NULL;
    CREATE TABLE run_output (
        run_id TEXT NOT NULL REFERENCES runs(id),
        offset INTEGER NOT NULL,
        stream TEXT NOT NULL,
        data TEXT NOT NULL,
        len INTEGER NOT NULL,
        dropped_before INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, offset)
    ) WITHOUT ROWID;
    CREATE TABLE schedules (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        team_id INTEGER NOT NULL REFERENCES teams(id),
        name TEXT NOT NULL,
        cron TEXT NOT NULL,
        time_zone TEXT NOT NULL,
        missed TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        handled_until TEXT NOT NULL,
        last_run_id TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE workers (
        team_id INTEGER NOT NULL REFERENCES teams(id),
        worker_id TEXT NOT NULL,
        first_seen_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        PRIMARY KEY (team_id, worker_id)
    ) WITHOUT ROWID;",
    // 3: a team's runs by creation position, for `GET /api/v1/runs` pages
    // (one index range per page, however many runs other teams have).
    "CREATE INDEX runs_by_team ON runs(team_id, seq);",
    // 4: worker ids paused by an operator.
    "ALTER TABLE workers ADD COLUMN paused_at TEXT;",
    // 5: key lifecycle: a name, an optional expiry, revocation, last use.
    "ALTER TABLE api_keys ADD COLUMN name TEXT;
    ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
    ALTER TABLE api_keys ADD COLUMN revoked_at TEXT;
    ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;",
];

const RUN_COLUMNS: &str = "id, team_id, state, spec_json, created_at, updated_at, execution_id, \
     failure_reason, exit_code, message, cancel_requested, schedule_id, scheduled_for, ended_by, \
     output_end, output_start, output_dropped";

const SCHEDULE_COLUMNS: &str = "id, team_id, name, cron, time_zone, missed, spec_json, paused, \
     handled_until, last_run_id, created_at, updated_at";

impl Store {
    /// Opens (creating when missing) the database file and its directory.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDataDir {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Runs hold their env values (secrets): only the owner may read them.
        // WAL and shared-memory files inherit the database file's mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StoreError::Permissions {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Self::init(conn)
    }

    pub(crate) fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        // The CLI's `api-keys create` may write while `serve` runs.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::NewerSchema {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1))?;
            tx.commit()?;
        }
        let writer = Writer::start(conn, "oz-cp-sqlite").map_err(StoreError::StartThread)?;
        Ok(Store {
            writer,
            known_keys: Mutex::default(),
        })
    }

    /// Runs `job` on the database thread; the result is ready once it is
    /// committed. Submitted now, not when first polled.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = oneshot::channel();
        self.call_then(job, move |r| {
            let _ = tx.send(r);
        });
        Pending(rx)
    }

    /// Like `call`, handing the result to `done` on the database thread
    /// (quick, non-blocking work only: e.g. sending on a channel).
    pub(crate) fn call_then<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        self.writer.submit(
            job,
            move |r: std::result::Result<T, JobError<StoreError>>| {
                done(r.map_err(StoreError::from))
            },
        );
    }

    /// `call`, waiting on the calling thread: for set-up code and tests,
    /// never on a request path.
    pub(crate) fn call_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.call_then(job, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| Err(StoreError::ThreadStopped))
    }

    // ---- teams and keys ----

    /// Creates a key for `team_name`, creating the team when it is new.
    #[cfg(test)]
    pub(crate) fn create_api_key(&self, team_name: &str) -> Pending<NewApiKey> {
        let team_name = team_name.trim().to_string();
        self.call(move |conn| create_api_key(conn, &team_name, &KeyOptions::default()))
    }

    /// `create_api_key`, waiting on the calling thread (set-up and tests).
    pub(crate) fn create_api_key_blocking(&self, team_name: &str) -> Result<NewApiKey> {
        let team_name = team_name.trim().to_string();
        self.call_blocking(move |conn| create_api_key(conn, &team_name, &KeyOptions::default()))
    }

    pub fn list_api_keys(&self) -> Pending<Vec<ApiKeyInfo>> {
        self.call(list_api_keys)
    }

    /// The team a presented secret belongs to, if it is a key neither
    /// revoked nor expired.
    pub(crate) async fn team_for_key(&self, secret: &str) -> Result<Option<Team>> {
        self.team_for_key_hash(&keys::hash(secret)).await
    }

    /// The team of the valid key whose stored hash is `hash` (a UI session
    /// and a worker connection keep only the hash). A valid answer is
    /// reused for [`KEY_RECHECK`]; an invalid one is never cached.
    pub(crate) async fn team_for_key_hash(&self, hash: &str) -> Result<Option<Team>> {
        if let Some((team, at)) = self.known().get(hash) {
            if at.elapsed() < KEY_RECHECK {
                return Ok(Some(team.clone()));
            }
        }
        let found = self
            .call({
                let hash = hash.to_string();
                move |conn| valid_key_team(conn, &hash)
            })
            .await?;
        let mut known = self.known();
        match &found {
            Some(team) => {
                if known.len() > 10_000 {
                    known.retain(|_, (_, at)| at.elapsed() < KEY_RECHECK);
                }
                known.insert(hash.to_string(), (team.clone(), Instant::now()));
            }
            None => {
                known.remove(hash);
            }
        }
        Ok(found)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Team, Instant)>> {
        self.known_keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a key for `team_name` with `options`.
    pub fn create_api_key_with(&self, team_name: &str, options: KeyOptions) -> Pending<NewApiKey> {
        let team_name = team_name.trim().to_string();
        self.call(move |conn| create_api_key(conn, &team_name, &options))
    }

    /// Revokes key `key_id`: from then on (within [`KEY_RECHECK`] for a
    /// `serve` using the same database) it is refused everywhere.
    pub fn revoke_api_key(&self, key_id: i64) -> Pending<Revoked> {
        self.call(move |conn| revoke_api_key(conn, key_id))
    }

    // ---- runs ----

    /// Stores a new queued run with its first history entry.
    pub(crate) fn insert_run(
        &self,
        id: &str,
        team_id: i64,
        spec: &CreateRunRequest,
    ) -> Pending<LiveRun> {
        let (id, spec) = (id.to_string(), spec.clone());
        self.call(move |conn| insert_run(conn, &id, team_id, &spec, None, "created"))
    }

    /// `team_id: None` looks across teams (the control plane's own use).
    pub(crate) fn get_run(&self, id: &str, team_id: Option<i64>) -> Pending<Option<RunRecord>> {
        let id = id.to_string();
        self.call(move |conn| get_run(conn, &id, team_id))
    }

    /// A run with its creation order, when it has not ended.
    pub(crate) fn get_live_run(&self, id: &str) -> Pending<Option<LiveRun>> {
        let id = id.to_string();
        self.call(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS}, seq FROM runs WHERE id = ?1
                     AND state IN ('queued', 'assigned', 'claimed')"
                ))?
                .query_row([id], live_from_row)
                .optional()?)
        })
    }

    /// A run with its history, in one call.
    pub(crate) fn get_run_with_history(
        &self,
        id: &str,
        team_id: i64,
    ) -> Pending<Option<(RunRecord, Vec<HistoryEntry>)>> {
        let id = id.to_string();
        self.call(move |conn| {
            let Some(run) = get_run(conn, &id, Some(team_id))? else {
                return Ok(None);
            };
            Ok(Some((run, history(conn, &id)?)))
        })
    }

    /// One page of `team_id`'s runs, newest first (by creation position,
    /// `seq`): at most `limit` runs created before position `before` (all
    /// when `None`), optionally only in `state` or for `worker_host`.
    pub(crate) fn list_runs(
        &self,
        team_id: i64,
        state: Option<RunState>,
        worker_host: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Pending<RunPage> {
        let worker_host = worker_host.map(str::to_string);
        self.call(move |conn| {
            list_runs(conn, team_id, state, worker_host.as_deref(), before, limit)
        })
    }

    /// Every team's runs that have not ended, oldest first.
    pub(crate) fn live_runs(&self) -> Pending<Vec<LiveRun>> {
        self.call(live_runs)
    }

    pub(crate) fn history(&self, id: &str) -> Pending<Vec<HistoryEntry>> {
        let id = id.to_string();
        self.call(move |conn| history(conn, &id))
    }

    /// Moves run `id` from `from` to `change.to` and records it. `true` when
    /// it moved; `false` when the run was not in `from` (the caller's view
    /// was stale and nothing changed).
    ///
    /// Panics on a move the state machine forbids: that is a bug here.
    #[cfg(test)]
    pub(crate) fn transition(&self, id: &str, from: RunState, change: Change) -> Pending<bool> {
        check_move(from, &change);
        let id = id.to_string();
        self.call(move |conn| transition(conn, &id, from, &change))
    }

    /// `transition`, with the result handed to `done` on the database
    /// thread.
    pub(crate) fn transition_then(
        &self,
        id: &str,
        from: RunState,
        change: Change,
        done: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        check_move(from, &change);
        let id = id.to_string();
        self.call_then(move |conn| transition(conn, &id, from, &change), done);
    }

    /// Marks a run cancel-requested (it stays in its state) and records why.
    /// `false` when there is no such run.
    pub(crate) fn request_cancel_then(
        &self,
        id: &str,
        note: &str,
        done: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        let (id, note) = (id.to_string(), note.to_string());
        self.call_then(move |conn| request_cancel(conn, &id, &note), done);
    }

    // ---- live output ----

    /// Appends output to run `id`. `take` is called on the database thread
    /// when the job runs, so whatever arrived until then goes in one write;
    /// it returns the chunks and how many bytes before them were lost in
    /// memory. Keeps the last `limit` bytes of the run's output; `done` gets
    /// the new totals once they are committed.
    pub(crate) fn append_output_then(
        &self,
        id: &str,
        limit: u64,
        take: impl FnOnce() -> (Vec<NewChunk>, u64) + Send + 'static,
        done: impl FnOnce(Result<OutputTotals>) + Send + 'static,
    ) {
        let id = id.to_string();
        self.call_then(
            move |conn| {
                let (chunks, lost) = take();
                append_output(conn, &id, &chunks, lost, limit)
            },
            done,
        );
    }

    /// The run and the output it keeps from byte `after` on, in order.
    /// `team_id: None` looks across teams.
    pub(crate) fn read_output(
        &self,
        id: &str,
        team_id: Option<i64>,
        after: u64,
    ) -> Pending<Option<(RunRecord, Vec<OutputChunk>)>> {
        let id = id.to_string();
        self.call(move |conn| {
            let Some(run) = get_run(conn, &id, team_id)? else {
                return Ok(None);
            };
            let chunks = read_output(conn, &id, after)?;
            Ok(Some((run, chunks)))
        })
    }

    /// The run (of `team_id`, if given) and at most `max` bytes of its
    /// output from byte `after` on, with whether more is stored; `None`
    /// when there is no such run.
    pub(crate) fn read_output_page(
        &self,
        id: &str,
        team_id: Option<i64>,
        after: u64,
        max: usize,
    ) -> Pending<Option<(RunRecord, Vec<OutputChunk>, bool)>> {
        let id = id.to_string();
        self.call(move |conn| {
            let Some(run) = get_run(conn, &id, team_id)? else {
                return Ok(None);
            };
            let (chunks, more) = read_output_page(conn, &id, after, max)?;
            Ok(Some((run, chunks, more)))
        })
    }

    // ---- schedules ----

    pub(crate) fn insert_schedule(&self, rec: ScheduleRecord) -> Pending<ScheduleRecord> {
        self.call(move |conn| {
            insert_schedule(conn, &rec)?;
            Ok(rec)
        })
    }

    /// `team_id: None`: every team's (the cron scheduler's own use).
    pub(crate) fn list_schedules(&self, team_id: Option<i64>) -> Pending<Vec<ScheduleRecord>> {
        self.call(move |conn| list_schedules(conn, team_id))
    }

    /// `team_id: None` looks across teams (the cron scheduler's own use).
    pub(crate) fn get_schedule(
        &self,
        id: &str,
        team_id: Option<i64>,
    ) -> Pending<Option<ScheduleRecord>> {
        let id = id.to_string();
        self.call(move |conn| get_schedule(conn, &id, team_id))
    }

    /// Pauses or resumes; a resume also marks every slot until
    /// `handled_until` handled, so what came due while paused never runs.
    pub(crate) fn set_schedule_paused(
        &self,
        id: &str,
        team_id: i64,
        paused: bool,
        handled_until: Option<String>,
    ) -> Pending<Option<ScheduleRecord>> {
        let id = id.to_string();
        self.call(move |conn| {
            let n = conn.execute(
                "UPDATE schedules SET paused = ?3, updated_at = ?4,
                 handled_until = COALESCE(?5, handled_until)
                 WHERE id = ?1 AND team_id = ?2",
                params![id, team_id, paused, time::now(), handled_until],
            )?;
            if n == 0 {
                return Ok(None);
            }
            get_schedule(conn, &id, Some(team_id))
        })
    }

    /// Deletes a schedule; the runs it created keep its id.
    pub(crate) fn delete_schedule(
        &self,
        id: &str,
        team_id: i64,
    ) -> Pending<Option<ScheduleRecord>> {
        let id = id.to_string();
        self.call(move |conn| {
            let Some(rec) = get_schedule(conn, &id, Some(team_id))? else {
                return Ok(None);
            };
            conn.execute("DELETE FROM schedules WHERE id = ?1", [&id])?;
            Ok(Some(rec))
        })
    }

    /// Handles a due slot of schedule `id` in one change: when the schedule
    /// is still active and handled exactly until `expected`, creates `run`
    /// (queued, recording the schedule and the slot) unless it is `None`,
    /// and marks everything until `slot` handled. A slot therefore gets at
    /// most one run, whatever crashes when.
    pub(crate) fn handle_slot(
        &self,
        id: &str,
        expected: &str,
        slot: &str,
        run: Option<SlotRun>,
    ) -> Pending<SlotOutcome> {
        let (id, expected, slot) = (id.to_string(), expected.to_string(), slot.to_string());
        self.call(move |conn| handle_slot(conn, &id, &expected, &slot, run.as_ref()))
    }

    // ---- worker ids ----

    /// Records that a connection with `worker_id` opened or closed now.
    pub(crate) fn worker_seen_then(
        &self,
        team_id: i64,
        worker_id: &str,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) {
        let worker_id = worker_id.to_string();
        self.call_then(
            move |conn| {
                let now = time::now();
                conn.prepare_cached(
                    "INSERT INTO workers (team_id, worker_id, first_seen_at, last_seen_at)
                     VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT(team_id, worker_id) DO UPDATE SET last_seen_at = ?3",
                )?
                .execute(params![team_id, worker_id, now])?;
                Ok(())
            },
            done,
        );
    }

    /// Every worker id the team's workers connected with, by id.
    pub(crate) fn list_workers(&self, team_id: i64) -> Pending<Vec<WorkerRecord>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT worker_id, first_seen_at, last_seen_at, paused_at FROM workers
                 WHERE team_id = ?1 ORDER BY worker_id",
            )?;
            let rows = stmt.query_map([team_id], |r| {
                Ok(WorkerRecord {
                    worker_id: r.get(0)?,
                    first_seen_at: r.get(1)?,
                    last_seen_at: r.get(2)?,
                    paused_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
    }

    /// Pauses (`paused_at` = now, kept when already paused) or resumes a
    /// worker id of the team; `false` when no worker ever connected with it.
    /// `live`: a connection with this id is up (its record may still be on
    /// its way), so the record is created when missing.
    pub(crate) fn set_worker_paused(
        &self,
        team_id: i64,
        worker_id: &str,
        paused: bool,
        live: bool,
    ) -> Pending<bool> {
        let worker_id = worker_id.to_string();
        self.call(move |conn| {
            if live {
                conn.execute(
                    "INSERT OR IGNORE INTO workers (team_id, worker_id, first_seen_at, last_seen_at)
                     VALUES (?1, ?2, ?3, ?3)",
                    params![team_id, worker_id, time::now()],
                )?;
            }
            let n = conn.execute(
                "UPDATE workers SET paused_at = CASE WHEN ?3 THEN COALESCE(paused_at, ?4) END
                 WHERE team_id = ?1 AND worker_id = ?2",
                params![team_id, worker_id, paused, time::now()],
            )?;
            Ok(n > 0)
        })
    }

    /// Every paused worker id, for a start.
    pub(crate) fn paused_workers(&self) -> Pending<Vec<WorkerKey>> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT team_id, worker_id FROM workers WHERE paused_at IS NOT NULL",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(WorkerKey {
                    team_id: r.get(0)?,
                    worker_id: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
    }
}

fn check_move(from: RunState, change: &Change) {
    assert!(
        from.can_become(change.to),
        "illegal run transition {from} -> {}",
        change.to
    );
}

// ---- the SQL, run on the database thread inside a savepoint ----

fn create_api_key(conn: &Connection, team_name: &str, options: &KeyOptions) -> Result<NewApiKey> {
    if team_name.is_empty() {
        return Err(StoreError::EmptyTeamName);
    }
    let secret = keys::generate().map_err(StoreError::Random)?;
    let now = time::now();
    conn.execute(
        "INSERT INTO teams (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
        params![team_name, now],
    )?;
    let team_id: i64 =
        conn.query_row("SELECT id FROM teams WHERE name = ?1", [team_name], |r| {
            r.get(0)
        })?;
    conn.execute(
        "INSERT INTO api_keys (team_id, key_hash, prefix, created_at, name, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            team_id,
            keys::hash(&secret),
            keys::display_prefix(&secret),
            now,
            options.name,
            options.expires_at
        ],
    )?;
    Ok(NewApiKey {
        team: Team {
            id: team_id,
            name: team_name.to_string(),
        },
        key_id: conn.last_insert_rowid(),
        secret,
    })
}

fn list_api_keys(conn: &Connection) -> Result<Vec<ApiKeyInfo>> {
    let mut stmt = conn.prepare(
        "SELECT k.id, t.id, t.name, k.prefix, k.created_at, k.name, k.expires_at,
                k.revoked_at, k.last_used_at
         FROM api_keys k JOIN teams t ON t.id = k.team_id ORDER BY t.name, k.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ApiKeyInfo {
            key_id: r.get(0)?,
            team: Team {
                id: r.get(1)?,
                name: r.get(2)?,
            },
            prefix: r.get(3)?,
            created_at: r.get(4)?,
            name: r.get(5)?,
            expires_at: r.get(6)?,
            revoked_at: r.get(7)?,
            last_used_at: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// The team of key `hash` if it is neither revoked nor expired; notes its
/// use (at most once a minute, so a busy key costs no write per request).
fn valid_key_team(conn: &Connection, hash: &str) -> Result<Option<Team>> {
    let now = time::now();
    let found = conn
        .query_row(
            "SELECT k.id, t.id, t.name FROM api_keys k JOIN teams t ON t.id = k.team_id
             WHERE k.key_hash = ?1 AND k.revoked_at IS NULL
               AND (k.expires_at IS NULL OR k.expires_at > ?2)",
            params![hash, now],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Team {
                        id: r.get(1)?,
                        name: r.get(2)?,
                    },
                ))
            },
        )
        .optional()?;
    let Some((key_id, team)) = found else {
        return Ok(None);
    };
    let minute_ago = time::rfc3339(std::time::SystemTime::now() - Duration::from_secs(60));
    conn.execute(
        "UPDATE api_keys SET last_used_at = ?1
         WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?3)",
        params![now, key_id, minute_ago],
    )?;
    Ok(Some(team))
}

fn revoke_api_key(conn: &Connection, key_id: i64) -> Result<Revoked> {
    let found = conn
        .query_row(
            "SELECT k.revoked_at, t.id, t.name FROM api_keys k JOIN teams t ON t.id = k.team_id
             WHERE k.id = ?1",
            [key_id],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    Team {
                        id: r.get(1)?,
                        name: r.get(2)?,
                    },
                ))
            },
        )
        .optional()?;
    match found {
        None => Ok(Revoked::NoSuchKey),
        Some((Some(at), _)) => Ok(Revoked::Already(at)),
        Some((None, team)) => {
            conn.execute(
                "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2",
                params![time::now(), key_id],
            )?;
            Ok(Revoked::Now(ApiKeyRef { key_id, team }))
        }
    }
}

/// `schedule`: (schedule id, slot) for a run a schedule creates; `note`
/// starts its history.
fn insert_run(
    conn: &Connection,
    id: &str,
    team_id: i64,
    spec: &CreateRunRequest,
    schedule: Option<(&str, &str)>,
    note: &str,
) -> Result<LiveRun> {
    let now = time::now();
    let spec_json = serde_json::to_string(spec).expect("run specs serialize");
    let (schedule_id, scheduled_for) = schedule.unzip();
    conn.execute(
        "INSERT INTO runs (id, team_id, worker_host, state, spec_json, created_at, updated_at,
            schedule_id, scheduled_for)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
        params![
            id,
            team_id,
            spec.worker_host,
            RunState::Queued.as_str(),
            spec_json,
            now,
            schedule_id,
            scheduled_for
        ],
    )?;
    let seq = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO run_history (run_id, at, state, note) VALUES (?1, ?2, ?3, ?4)",
        params![id, now, RunState::Queued.as_str(), note],
    )?;
    Ok(LiveRun {
        seq,
        record: RunRecord {
            id: id.to_string(),
            team_id,
            state: RunState::Queued,
            spec: spec.clone(),
            created_at: now.clone(),
            updated_at: now,
            execution_id: None,
            failure_reason: None,
            exit_code: None,
            message: None,
            cancel_requested: false,
            schedule_id: schedule_id.map(str::to_string),
            scheduled_for: scheduled_for.map(str::to_string),
            ended_by: None,
            output: OutputTotals::default(),
        },
    })
}

/// One page of a team's runs (see `list_runs`): `?1` team, `?2` state or
/// NULL, `?3` worker host or NULL, `?4` the cursor's position, `?5` rows.
fn list_runs_sql() -> String {
    format!(
        "SELECT {RUN_COLUMNS}, seq FROM runs WHERE team_id = ?1
         AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR worker_host = ?3)
         AND seq < ?4 ORDER BY seq DESC LIMIT ?5"
    )
}

fn list_runs(
    conn: &Connection,
    team_id: i64,
    state: Option<RunState>,
    worker_host: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> Result<RunPage> {
    // A range of `runs_by_team`, walked backwards from the cursor: no row
    // before it is read. It stops after limit + 1 matches (the one more
    // says whether a next page exists). The bound is always given (not
    // `?4 IS NULL OR …`) so SQLite can seek to it.
    let mut stmt = conn.prepare_cached(&list_runs_sql())?;
    let rows = stmt.query_map(
        params![
            team_id,
            state.map(|s| s.as_str()),
            worker_host,
            before.unwrap_or(i64::MAX),
            limit as i64 + 1
        ],
        live_from_row,
    )?;
    let mut runs: Vec<LiveRun> = rows.collect::<std::result::Result<_, _>>()?;
    let more = runs.len() > limit;
    runs.truncate(limit);
    Ok(RunPage {
        next_before: if more {
            runs.last().map(|r| r.seq)
        } else {
            None
        },
        runs: runs.into_iter().map(|r| r.record).collect(),
    })
}

fn live_runs(conn: &Connection) -> Result<Vec<LiveRun>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS}, seq FROM runs WHERE state IN ('queued', 'assigned', 'claimed')
         ORDER BY seq"
    ))?;
    let rows = stmt.query_map([], live_from_row)?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

/// `SELECT {RUN_COLUMNS}, seq`.
fn live_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LiveRun> {
    Ok(LiveRun {
        record: run_from_row(r)?,
        seq: r.get("seq")?,
    })
}

fn history(conn: &Connection, id: &str) -> Result<Vec<HistoryEntry>> {
    let mut stmt = conn
        .prepare_cached("SELECT at, state, note FROM run_history WHERE run_id = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([id], |r| {
        Ok(HistoryEntry {
            at: r.get(0)?,
            state: parse_state(r.get::<_, String>(1)?)?,
            note: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

fn transition(conn: &Connection, id: &str, from: RunState, change: &Change) -> Result<bool> {
    let now = time::now();
    let n = conn
        .prepare_cached(
            "UPDATE runs SET state = ?3, updated_at = ?4,
            execution_id = COALESCE(?5, execution_id),
            failure_reason = COALESCE(?6, failure_reason),
            exit_code = COALESCE(?7, exit_code),
            message = COALESCE(?8, message),
            ended_by = COALESCE(?9, ended_by)
         WHERE id = ?1 AND state = ?2",
        )?
        .execute(params![
            id,
            from.as_str(),
            change.to.as_str(),
            now,
            change.execution_id,
            change.failure_reason,
            change.exit_code,
            change.message,
            change.ended_by.map(EndedBy::as_str)
        ])?;
    if n == 0 {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO run_history (run_id, at, state, note) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, now, change.to.as_str(), change.note])?;
    Ok(true)
}

fn request_cancel(conn: &Connection, id: &str, note: &str) -> Result<bool> {
    let now = time::now();
    let Some(rec) = get_run(conn, id, None)? else {
        return Ok(false);
    };
    conn.execute(
        "UPDATE runs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    conn.execute(
        "INSERT INTO run_history (run_id, at, state, note) VALUES (?1, ?2, ?3, ?4)",
        params![id, now, rec.state.as_str(), note],
    )?;
    Ok(true)
}

fn parse_state(s: String) -> rusqlite::Result<RunState> {
    s.parse().map_err(|e: oz_runs_api::model::UnknownRunState| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn parse_spec(text: String) -> rusqlite::Result<CreateRunRequest> {
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

/// `SELECT {RUN_COLUMNS}`.
fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get("id")?,
        team_id: r.get("team_id")?,
        state: parse_state(r.get("state")?)?,
        spec: parse_spec(r.get("spec_json")?)?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        execution_id: r.get("execution_id")?,
        failure_reason: r.get("failure_reason")?,
        exit_code: r.get("exit_code")?,
        message: r.get("message")?,
        cancel_requested: r.get::<_, i64>("cancel_requested")? != 0,
        schedule_id: r.get("schedule_id")?,
        scheduled_for: r.get("scheduled_for")?,
        ended_by: r.get("ended_by")?,
        output: OutputTotals {
            end: r.get::<_, i64>("output_end")? as u64,
            start: r.get::<_, i64>("output_start")? as u64,
            dropped: r.get::<_, i64>("output_dropped")? as u64,
        },
    })
}

fn stream_name(s: OutputStream) -> &'static str {
    match s {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

fn parse_stream(s: String) -> rusqlite::Result<OutputStream> {
    match s.as_str() {
        "stdout" => Ok(OutputStream::Stdout),
        "stderr" => Ok(OutputStream::Stderr),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown output stream {other:?}").into(),
        )),
    }
}

/// The smallest index ≥ `i` that starts a character of `s`.
fn char_boundary_at_or_after(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

/// Appends `chunks` after `lost` bytes that never reached the database,
/// then drops the oldest output beyond `limit` bytes (cutting the first
/// kept chunk at a character boundary), all in the caller's savepoint.
fn append_output(
    conn: &Connection,
    id: &str,
    chunks: &[NewChunk],
    lost: u64,
    limit: u64,
) -> Result<OutputTotals> {
    let (end, start, dropped): (i64, i64, i64) = conn
        .prepare_cached("SELECT output_end, output_start, output_dropped FROM runs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?
        .ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
    let mut t = OutputTotals {
        end: end as u64 + lost,
        start: start as u64,
        dropped: dropped as u64,
    };
    // Bytes lost in memory are gone: nothing before what follows them is
    // contiguous any more, so the kept output starts after them.
    let mut floor = if lost > 0 { t.end } else { 0 };
    {
        let mut insert = conn.prepare_cached(
            "INSERT INTO run_output (run_id, offset, stream, data, len, dropped_before)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        // A chunk without data still counts its drops, marked on the next.
        let mut carried = 0;
        for c in chunks {
            t.dropped += c.dropped_before;
            carried += c.dropped_before;
            if c.data.is_empty() {
                continue;
            }
            insert.execute(params![
                id,
                t.end as i64,
                stream_name(c.stream),
                c.data,
                c.data.len() as i64,
                carried as i64
            ])?;
            carried = 0;
            t.end += c.data.len() as u64;
        }
    }
    floor = floor.max(t.end.saturating_sub(limit));
    if t.start < floor {
        conn.prepare_cached("DELETE FROM run_output WHERE run_id = ?1 AND offset + len <= ?2")?
            .execute(params![id, floor as i64])?;
        let first: Option<(i64, String, String, i64)> = conn
            .prepare_cached(
                "SELECT offset, stream, data, dropped_before FROM run_output
                 WHERE run_id = ?1 ORDER BY offset LIMIT 1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        t.start = floor;
        if let Some((offset, stream, data, dropped_before)) = first {
            let offset = offset as u64;
            if offset < floor {
                let cut = char_boundary_at_or_after(&data, (floor - offset) as usize);
                conn.prepare_cached("DELETE FROM run_output WHERE run_id = ?1 AND offset = ?2")?
                    .execute(params![id, offset as i64])?;
                let rest = &data[cut..];
                t.start = offset + cut as u64;
                if !rest.is_empty() {
                    conn.prepare_cached(
                        "INSERT INTO run_output (run_id, offset, stream, data, len, dropped_before)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        id,
                        t.start as i64,
                        stream,
                        rest,
                        rest.len() as i64,
                        dropped_before
                    ])?;
                }
            }
        }
    }
    conn.prepare_cached(
        "UPDATE runs SET output_end = ?2, output_start = ?3, output_dropped = ?4 WHERE id = ?1",
    )?
    .execute(params![id, t.end as i64, t.start as i64, t.dropped as i64])?;
    Ok(t)
}

/// The kept output from byte `after` on (a chunk that straddles `after` is
/// cut at the first character boundary at or after it).
/// At most `max` bytes (at least one character) of run `id`'s output from
/// byte `after` on, cut at a character boundary: (the chunks, whether more
/// is stored after them). Rows are read lazily, so a follower costs one
/// page of memory however much output the run keeps.
fn read_output_page(
    conn: &Connection,
    id: &str,
    after: u64,
    max: usize,
) -> Result<(Vec<OutputChunk>, bool)> {
    let mut stmt = conn.prepare_cached(
        "SELECT offset, stream, data, dropped_before FROM run_output
         WHERE run_id = ?1 AND offset + len > ?2 ORDER BY offset",
    )?;
    let mut rows = stmt.query(params![id, after as i64])?;
    let (mut out, mut total) = (Vec::new(), 0usize);
    while let Some(r) = rows.next()? {
        let offset = r.get::<_, i64>(0)? as u64;
        let mut data: String = r.get(2)?;
        let mut dropped = r.get::<_, i64>(3)? as u64;
        let mut start = offset;
        if offset < after {
            let cut = char_boundary_at_or_after(&data, (after - offset) as usize);
            data.drain(..cut);
            start = offset + cut as u64;
            dropped = 0;
        }
        if data.is_empty() {
            continue;
        }
        let room = max.saturating_sub(total);
        if data.len() > room {
            let mut cut = room;
            while cut > 0 && !data.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut == 0 && total == 0 {
                // One character longer than the page: send it whole.
                cut = char_boundary_at_or_after(&data, 1);
            }
            if cut > 0 {
                data.truncate(cut);
                out.push(OutputChunk {
                    offset: start,
                    stream: parse_stream(r.get(1)?)?,
                    data,
                    dropped_bytes: dropped,
                });
            }
            return Ok((out, true));
        }
        total += data.len();
        out.push(OutputChunk {
            offset: start,
            stream: parse_stream(r.get(1)?)?,
            data,
            dropped_bytes: dropped,
        });
        if total >= max {
            return Ok((out, rows.next()?.is_some()));
        }
    }
    Ok((out, false))
}

fn read_output(conn: &Connection, id: &str, after: u64) -> Result<Vec<OutputChunk>> {
    let mut stmt = conn.prepare_cached(
        "SELECT offset, stream, data, dropped_before FROM run_output
         WHERE run_id = ?1 AND offset + len > ?2 ORDER BY offset",
    )?;
    let rows = stmt.query_map(params![id, after as i64], |r| {
        let offset = r.get::<_, i64>(0)? as u64;
        let mut data: String = r.get(2)?;
        let mut dropped = r.get::<_, i64>(3)? as u64;
        let mut start = offset;
        if offset < after {
            let cut = char_boundary_at_or_after(&data, (after - offset) as usize);
            data.drain(..cut);
            start = offset + cut as u64;
            dropped = 0;
        }
        Ok(OutputChunk {
            offset: start,
            stream: parse_stream(r.get(1)?)?,
            data,
            dropped_bytes: dropped,
        })
    })?;
    Ok(rows
        .collect::<std::result::Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|c| !c.data.is_empty())
        .collect())
}

fn schedule_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        id: r.get("id")?,
        team_id: r.get("team_id")?,
        name: r.get("name")?,
        cron: r.get("cron")?,
        time_zone: r.get("time_zone")?,
        missed: r.get::<_, String>("missed")?.parse().map_err(
            |e: oz_runs_api::model::UnknownMissedSlots| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            },
        )?,
        spec: parse_spec(r.get("spec_json")?)?,
        paused: r.get::<_, i64>("paused")? != 0,
        handled_until: r.get("handled_until")?,
        last_run_id: r.get("last_run_id")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    })
}

fn insert_schedule(conn: &Connection, s: &ScheduleRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO schedules (id, team_id, name, cron, time_zone, missed, spec_json, paused,
            handled_until, last_run_id, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            s.id,
            s.team_id,
            s.name,
            s.cron,
            s.time_zone,
            s.missed.as_str(),
            serde_json::to_string(&s.spec).expect("run specs serialize"),
            s.paused,
            s.handled_until,
            s.last_run_id,
            s.created_at,
            s.updated_at
        ],
    )?;
    Ok(())
}

fn list_schedules(conn: &Connection, team_id: Option<i64>) -> Result<Vec<ScheduleRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE (?1 IS NULL OR team_id = ?1) ORDER BY seq"
    ))?;
    let rows = stmt.query_map([team_id], schedule_from_row)?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

fn get_schedule(
    conn: &Connection,
    id: &str,
    team_id: Option<i64>,
) -> Result<Option<ScheduleRecord>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1 AND (?2 IS NULL OR team_id = ?2)"
        ))?
        .query_row(params![id, team_id], schedule_from_row)
        .optional()?)
}

fn handle_slot(
    conn: &Connection,
    id: &str,
    expected: &str,
    slot: &str,
    run: Option<&SlotRun>,
) -> Result<SlotOutcome> {
    let Some(s) = get_schedule(conn, id, None)? else {
        return Ok(SlotOutcome::Stale);
    };
    if s.paused || s.handled_until != expected {
        return Ok(SlotOutcome::Stale);
    }
    let outcome = match run {
        Some(SlotRun { run_id, note }) => SlotOutcome::Created(Box::new(insert_run(
            conn,
            run_id,
            s.team_id,
            &s.spec,
            Some((id, slot)),
            note,
        )?)),
        None => SlotOutcome::Skipped,
    };
    let run_id = run.map(|r| r.run_id.as_str());
    conn.execute(
        "UPDATE schedules SET handled_until = ?2, last_run_id = COALESCE(?3, last_run_id),
         updated_at = ?4 WHERE id = ?1",
        params![id, slot, run_id, time::now()],
    )?;
    Ok(outcome)
}

fn get_run(conn: &Connection, id: &str, team_id: Option<i64>) -> Result<Option<RunRecord>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND (?2 IS NULL OR team_id = ?2)"
        ))?
        .query_row(params![id, team_id], run_from_row)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.sqlite");
        let _store = Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// A page reads one range of the team's index from the cursor on,
    /// never the rows before it or another team's.
    #[test]
    fn a_page_is_one_index_range() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", list_runs_sql()))
            .unwrap()
            .query_map(params![1, None::<String>, None::<String>, 42, 101], |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            plan,
            ["SEARCH runs USING INDEX runs_by_team (team_id=? AND seq<?)"],
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn pages_hold_each_run_once_newest_first_per_team() {
        let s = Store::open_in_memory().unwrap();
        let a = s.create_api_key("alpha").await.unwrap().team.id;
        let b = s.create_api_key("beta").await.unwrap().team.id;
        let mut ids = Vec::new();
        for i in 0..25 {
            let team = if i % 5 == 0 { b } else { a };
            let id = format!("run_{i:02}");
            s.insert_run(&id, team, &spec(if i % 2 == 0 { "even" } else { "odd" }))
                .await
                .unwrap();
            if team == a {
                ids.push(id);
            }
        }
        ids.reverse();
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = s.list_runs(a, None, None, before, 7).await.unwrap();
            assert!(page.runs.len() <= 7);
            seen.extend(page.runs.into_iter().map(|r| r.id));
            match page.next_before {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ids);
        let odd = s.list_runs(a, None, Some("odd"), None, 100).await.unwrap();
        assert!(odd.next_before.is_none());
        assert_eq!(
            odd.runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ids.iter()
                .filter(|id| id[4..].parse::<u32>().unwrap() % 2 == 1)
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        // Exactly a page left: no cursor after it.
        let all = s.list_runs(a, None, None, None, 20).await.unwrap();
        assert_eq!((all.runs.len(), all.next_before), (20, None));
    }

    fn spec(host: &str) -> CreateRunRequest {
        CreateRunRequest {
            worker_host: host.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keys_resolve_to_their_team_and_are_stored_hashed() {
        let s = Store::open_in_memory().unwrap();
        let a = s.create_api_key("alpha").await.unwrap();
        let a2 = s.create_api_key("alpha").await.unwrap();
        let b = s.create_api_key("beta").await.unwrap();
        assert_eq!(a.team, a2.team);
        assert_ne!(a.team, b.team);
        assert_eq!(
            s.team_for_key(&a2.secret).await.unwrap(),
            Some(a.team.clone())
        );
        // Cached now; still right.
        assert_eq!(
            s.team_for_key(&a2.secret).await.unwrap(),
            Some(a.team.clone())
        );
        assert_eq!(s.team_for_key("ozk_nope").await.unwrap(), None);
        let listed = s.list_api_keys().await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|k| !k.prefix.contains(&a.secret[10..])));
        assert!(s.create_api_key("  ").await.is_err());
    }

    #[tokio::test]
    async fn revoked_and_expired_keys_are_refused() {
        let s = Store::open_in_memory().unwrap();
        let a = s.create_api_key("alpha").await.unwrap();
        assert!(s.team_for_key(&a.secret).await.unwrap().is_some());
        assert!(matches!(
            s.revoke_api_key(a.key_id).await.unwrap(),
            Revoked::Now(ApiKeyRef { key_id, .. }) if key_id == a.key_id
        ));
        assert!(matches!(
            s.revoke_api_key(a.key_id).await.unwrap(),
            Revoked::Already(_)
        ));
        assert_eq!(s.revoke_api_key(999).await.unwrap(), Revoked::NoSuchKey);
        // The positive answer cached before the revocation lasts at most
        // KEY_RECHECK.
        tokio::time::sleep(KEY_RECHECK).await;
        assert_eq!(s.team_for_key(&a.secret).await.unwrap(), None);
        let past = time::rfc3339(std::time::SystemTime::now() - Duration::from_secs(1));
        let old = s
            .create_api_key_with(
                "alpha",
                KeyOptions {
                    name: Some("ci".into()),
                    expires_at: Some(past),
                },
            )
            .await
            .unwrap();
        assert_eq!(s.team_for_key(&old.secret).await.unwrap(), None);
        let listed = s.list_api_keys().await.unwrap();
        assert!(listed[0].revoked_at.is_some());
        assert_eq!(listed[1].name.as_deref(), Some("ci"));
        assert!(listed[1].expires_at.is_some());
    }

    #[tokio::test]
    async fn transitions_are_conditional_and_recorded() {
        let s = Store::open_in_memory().unwrap();
        let team = s.create_api_key("t").await.unwrap().team;
        let first = s.insert_run("r1", team.id, &spec("w")).await.unwrap();
        let second = s.insert_run("r2", team.id, &spec("w")).await.unwrap();
        assert!(first.seq < second.seq);
        let mut c = Change::to(RunState::Assigned, "assigned");
        c.execution_id = Some("e1".into());
        assert!(s.transition("r1", RunState::Queued, c).await.unwrap());
        let r = s.get_run("r1", None).await.unwrap().unwrap();
        assert_eq!(r.state, RunState::Assigned);
        assert_eq!(r.execution_id.as_deref(), Some("e1"));
        // Stale: the run is no longer queued.
        assert!(!s
            .transition("r1", RunState::Queued, Change::to(RunState::Cancelled, "x"))
            .await
            .unwrap());
        let h = s.history("r1").await.unwrap();
        assert_eq!(
            h.iter().map(|e| e.state).collect::<Vec<_>>(),
            [RunState::Queued, RunState::Assigned]
        );
        assert!(s.get_run("r1", Some(team.id + 1)).await.unwrap().is_none());
        let live = s.live_runs().await.unwrap();
        assert_eq!(
            live.iter()
                .map(|l| l.record.id.as_str())
                .collect::<Vec<_>>(),
            ["r1", "r2"]
        );
    }

    #[tokio::test]
    async fn concurrent_calls_share_commits_and_each_is_atomic() {
        let s = Store::open_in_memory().unwrap();
        let team = s.create_api_key("t").await.unwrap().team;
        // Submitted together, run in order; a failing one (duplicate id)
        // takes nothing else with it.
        let a = s.insert_run("r1", team.id, &spec("w"));
        let dup = s.insert_run("r1", team.id, &spec("w"));
        let b = s.insert_run("r2", team.id, &spec("w"));
        assert!(a.await.is_ok());
        assert!(dup.await.is_err());
        assert!(b.await.is_ok());
        assert_eq!(s.history("r1").await.unwrap().len(), 1);
        assert_eq!(s.live_runs().await.unwrap().len(), 2);
    }

    fn chunk(stream: OutputStream, data: &str, dropped_before: u64) -> NewChunk {
        NewChunk {
            stream,
            data: data.into(),
            dropped_before,
        }
    }

    #[test]
    fn output_keeps_the_last_bytes_in_order_and_counts_what_it_dropped() {
        use OutputStream::{Stderr, Stdout};
        let s = Store::open_in_memory().unwrap();
        let team = s.create_api_key_blocking("t").unwrap().team.id;
        s.call_blocking(move |c| insert_run(c, "r1", team, &spec("w"), None, "created"))
            .unwrap();
        let append = |chunks: Vec<NewChunk>, lost: u64, limit: u64| {
            s.call_blocking(move |c| append_output(c, "r1", &chunks, lost, limit))
                .unwrap()
        };
        let read = |after: u64| {
            s.call_blocking(move |c| read_output(c, "r1", after))
                .unwrap()
        };
        // "wörld\n" is 7 bytes: 13 in all, the limit keeps the last 10, so
        // the first chunk is cut to "lo ".
        let t = append(
            vec![chunk(Stdout, "hello ", 0), chunk(Stderr, "wörld\n", 5)],
            0,
            10,
        );
        assert_eq!(
            t,
            OutputTotals {
                end: 13,
                start: 3,
                dropped: 5
            }
        );
        let all = read(0);
        assert_eq!(
            all.iter()
                .map(|c| (c.offset, c.stream, c.data.as_str(), c.dropped_bytes))
                .collect::<Vec<_>>(),
            [(3, Stdout, "lo ", 0), (6, Stderr, "wörld\n", 5)]
        );
        // A read from inside a character starts at the next one.
        let tail = read(8);
        assert_eq!((tail[0].offset, tail[0].data.as_str()), (9, "rld\n"));
        // Bytes lost before reaching the database: nothing before the
        // next chunk is kept, and the counts show it.
        let t = append(vec![chunk(Stdout, "x", 0), chunk(Stdout, "", 2)], 4, 10);
        assert_eq!(
            t,
            OutputTotals {
                end: 18,
                start: 17,
                dropped: 7
            }
        );
        let all = read(0);
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].offset, all[0].data.as_str()), (17, "x"));
        let run = s
            .call_blocking(|c| get_run(c, "r1", None))
            .unwrap()
            .unwrap();
        assert_eq!(run.output, t);
    }

    #[test]
    fn a_schedule_slot_gets_one_run_even_when_handled_twice() {
        let s = Store::open_in_memory().unwrap();
        let team = s.create_api_key_blocking("t").unwrap().team.id;
        let rec = ScheduleRecord {
            id: "sch_1".into(),
            team_id: team,
            name: "n".into(),
            cron: "* * * * *".into(),
            time_zone: "UTC".into(),
            missed: MissedSlots::Skip,
            spec: spec("w"),
            paused: false,
            handled_until: "2030-01-01T00:00:00.000Z".into(),
            last_run_id: None,
            created_at: "2030-01-01T00:00:00.000Z".into(),
            updated_at: "2030-01-01T00:00:00.000Z".into(),
        };
        s.call_blocking(move |c| insert_schedule(c, &rec)).unwrap();
        let slot = "2030-01-01T00:01:00.000Z";
        let first = s
            .call_blocking(move |c| {
                handle_slot(
                    c,
                    "sch_1",
                    "2030-01-01T00:00:00.000Z",
                    slot,
                    Some(&SlotRun {
                        run_id: "r1".into(),
                        note: "n".into(),
                    }),
                )
            })
            .unwrap();
        let SlotOutcome::Created(run) = first else {
            panic!("{first:?}")
        };
        assert_eq!(run.record.schedule_id.as_deref(), Some("sch_1"));
        assert_eq!(run.record.scheduled_for.as_deref(), Some(slot));
        // The same call again (a retry after a crash that lost the answer)
        // finds the schedule moved on.
        let again = s
            .call_blocking(move |c| {
                handle_slot(
                    c,
                    "sch_1",
                    "2030-01-01T00:00:00.000Z",
                    slot,
                    Some(&SlotRun {
                        run_id: "r2".into(),
                        note: "n".into(),
                    }),
                )
            })
            .unwrap();
        assert!(matches!(again, SlotOutcome::Stale), "{again:?}");
        let sched = s
            .call_blocking(|c| get_schedule(c, "sch_1", None))
            .unwrap()
            .unwrap();
        assert_eq!(sched.handled_until, slot);
        assert_eq!(sched.last_run_id.as_deref(), Some("r1"));
        assert_eq!(s.call_blocking(live_runs).unwrap().len(), 1);
    }

    #[test]
    fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cp.sqlite3");
        let secret = {
            let s = Store::open(&path).unwrap();
            let k = s
                .call_blocking(|conn| create_api_key(conn, "t", &KeyOptions::default()))
                .unwrap();
            let team = k.team.id;
            s.call_blocking(move |conn| insert_run(conn, "r1", team, &spec("w"), None, "created"))
                .unwrap();
            k.secret
        };
        let s = Store::open(&path).unwrap();
        let hash = keys::hash(&secret);
        assert!(s
            .call_blocking(move |conn| valid_key_team(conn, &hash))
            .unwrap()
            .is_some());
        assert_eq!(s.call_blocking(live_runs).unwrap().len(), 1);
    }
}
