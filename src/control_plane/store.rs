//! Durable state in SQLite: teams, API keys (hashed), runs, and every run's
//! history. All SQL lives in this file.
//!
//! Every call runs on the database thread (`writer`), never on an async
//! thread, and its result comes back as a [`Pending`] future once the batch
//! it ran in is committed: a caller never acts on a change that a crash
//! could still undo. Calls run in the order they are made. Each change is
//! atomic on its own (a savepoint inside the batch's transaction).

use crate::control_plane::keys;
use crate::control_plane::model::{CreateRunRequest, HistoryEntry, RunState};
use crate::control_plane::time;
use crate::control_plane::writer::{JobError, Writer};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct StoreError(String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(format!("control plane database error: {e}"))
    }
}

impl StoreError {
    /// An error of the store's own, for the log: one sentence.
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError(message.into())
    }
}

impl From<JobError> for StoreError {
    fn from(e: JobError) -> Self {
        // Job errors are already StoreError sentences or rusqlite's.
        StoreError(e.0)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

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

#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub key_id: i64,
    pub team: Team,
    pub prefix: String,
    pub created_at: String,
}

/// A run as stored, including its secrets (`spec.env_vars`).
#[derive(Debug, Clone)]
pub struct RunRecord {
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
}

/// One state change. Fields left `None` keep their stored value.
#[derive(Debug, Clone)]
pub struct Change {
    pub to: RunState,
    pub note: String,
    pub execution_id: Option<String>,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
}

impl Change {
    pub fn to(to: RunState, note: impl Into<String>) -> Change {
        Change {
            to,
            note: note.into(),
            execution_id: None,
            failure_reason: None,
            exit_code: None,
            message: None,
        }
    }
}

/// A run that has not ended, as loaded at start-up: its creation order too.
#[derive(Debug, Clone)]
pub struct LiveRun {
    /// Creation order (the table's sequence): the queue order.
    pub seq: i64,
    pub record: RunRecord,
}

/// The result of a store call, available once its batch is committed.
pub struct Pending<T>(oneshot::Receiver<Result<T>>);

impl<T> Future for Pending<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(StoreError(
                    "the control plane's database thread stopped".into(),
                ))
            })
        })
    }
}

pub struct Store {
    writer: Writer,
    /// key hash → team, for keys seen valid. Keys are never deleted, so a
    /// hit needs no database; a miss asks it (`api-keys create` may have
    /// added the key from another process).
    known_keys: Mutex<HashMap<String, Team>>,
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
];

const RUN_COLUMNS: &str = "id, team_id, state, spec_json, created_at, updated_at, execution_id, \
     failure_reason, exit_code, message, cancel_requested";

impl Store {
    /// Opens (creating when missing) the database file and its directory.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError(format!(
                    "cannot create the data directory {}: {e}; pass --data-dir or --db to put it elsewhere",
                    dir.display()
                ))
            })?;
        }
        let conn = Connection::open(path).map_err(|e| {
            StoreError(format!(
                "cannot open the control plane database {}: {e}",
                path.display()
            ))
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Runs hold their env values (secrets): only the owner may read them.
        // WAL and shared-memory files inherit the database file's mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            StoreError(format!(
                "cannot restrict permissions of {}: {e}",
                path.display()
            ))
        })?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        // The CLI's `api-keys create` may write while `serve` runs.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError(format!(
                "the control plane database has schema version {version}, newer than this build knows ({known}); upgrade oz-agent-worker"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1))?;
            tx.commit()?;
        }
        let writer = Writer::start(conn, "oz-cp-sqlite").map_err(|e| {
            StoreError(format!(
                "cannot start the control plane's database thread: {e}"
            ))
        })?;
        Ok(Store {
            writer,
            known_keys: Mutex::default(),
        })
    }

    /// Runs `job` on the database thread; the result is ready once it is
    /// committed. Submitted now, not when first polled.
    pub fn call<T: Send + 'static>(
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
    pub fn call_then<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        self.writer
            .submit(job, move |r: std::result::Result<T, JobError>| {
                done(r.map_err(StoreError::from))
            });
    }

    /// `call`, waiting on the calling thread: for set-up code and tests,
    /// never on a request path.
    pub fn call_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.call_then(job, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError(
                "the control plane's database thread stopped".into(),
            ))
        })
    }

    // ---- teams and keys ----

    /// Creates a key for `team_name`, creating the team when it is new.
    pub fn create_api_key(&self, team_name: &str) -> Pending<NewApiKey> {
        let team_name = team_name.trim().to_string();
        self.call(move |conn| create_api_key(conn, &team_name))
    }

    /// `create_api_key`, waiting on the calling thread (set-up and tests).
    pub fn create_api_key_blocking(&self, team_name: &str) -> Result<NewApiKey> {
        let team_name = team_name.trim().to_string();
        self.call_blocking(move |conn| create_api_key(conn, &team_name))
    }

    pub fn list_api_keys(&self) -> Pending<Vec<ApiKeyInfo>> {
        self.call(list_api_keys)
    }

    /// The team a presented secret belongs to, if any.
    pub async fn team_for_key(&self, secret: &str) -> Result<Option<Team>> {
        let hash = keys::hash(secret);
        if let Some(team) = self.known().get(&hash) {
            return Ok(Some(team.clone()));
        }
        let found = self
            .call({
                let hash = hash.clone();
                move |conn| team_for_key_hash(conn, &hash)
            })
            .await?;
        if let Some(team) = &found {
            self.known().insert(hash, team.clone());
        }
        Ok(found)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Team>> {
        self.known_keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- runs ----

    /// Stores a new queued run with its first history entry.
    pub fn insert_run(&self, id: &str, team_id: i64, spec: &CreateRunRequest) -> Pending<LiveRun> {
        let (id, spec) = (id.to_string(), spec.clone());
        self.call(move |conn| insert_run(conn, &id, team_id, &spec))
    }

    /// `team_id: None` looks across teams (the control plane's own use).
    pub fn get_run(&self, id: &str, team_id: Option<i64>) -> Pending<Option<RunRecord>> {
        let id = id.to_string();
        self.call(move |conn| get_run(conn, &id, team_id))
    }

    /// A run with its creation order, when it has not ended.
    pub fn get_live_run(&self, id: &str) -> Pending<Option<LiveRun>> {
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
    pub fn get_run_with_history(
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

    pub fn list_runs(
        &self,
        team_id: i64,
        state: Option<RunState>,
        worker_host: Option<&str>,
    ) -> Pending<Vec<RunRecord>> {
        let worker_host = worker_host.map(str::to_string);
        self.call(move |conn| list_runs(conn, team_id, state, worker_host.as_deref()))
    }

    /// Every team's runs that have not ended, oldest first.
    pub fn live_runs(&self) -> Pending<Vec<LiveRun>> {
        self.call(live_runs)
    }

    pub fn history(&self, id: &str) -> Pending<Vec<HistoryEntry>> {
        let id = id.to_string();
        self.call(move |conn| history(conn, &id))
    }

    /// Moves run `id` from `from` to `change.to` and records it. `true` when
    /// it moved; `false` when the run was not in `from` (the caller's view
    /// was stale and nothing changed).
    ///
    /// Panics on a move the state machine forbids: that is a bug here.
    pub fn transition(&self, id: &str, from: RunState, change: Change) -> Pending<bool> {
        check_move(from, &change);
        let id = id.to_string();
        self.call(move |conn| transition(conn, &id, from, &change))
    }

    /// `transition`, with the result handed to `done` on the database
    /// thread.
    pub fn transition_then(
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
    pub fn request_cancel_then(
        &self,
        id: &str,
        note: &str,
        done: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        let (id, note) = (id.to_string(), note.to_string());
        self.call_then(move |conn| request_cancel(conn, &id, &note), done);
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

fn create_api_key(conn: &Connection, team_name: &str) -> Result<NewApiKey> {
    if team_name.is_empty() {
        return Err(StoreError("a team name must not be empty".into()));
    }
    let secret = keys::generate()
        .map_err(|e| StoreError(format!("cannot read random bytes for a key: {e}")))?;
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
        "INSERT INTO api_keys (team_id, key_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            team_id,
            keys::hash(&secret),
            keys::display_prefix(&secret),
            now
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
        "SELECT k.id, t.id, t.name, k.prefix, k.created_at
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
        })
    })?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
}

fn team_for_key_hash(conn: &Connection, hash: &str) -> Result<Option<Team>> {
    Ok(conn
        .query_row(
            "SELECT t.id, t.name FROM api_keys k JOIN teams t ON t.id = k.team_id
             WHERE k.key_hash = ?1",
            [hash],
            |r| {
                Ok(Team {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            },
        )
        .optional()?)
}

fn insert_run(
    conn: &Connection,
    id: &str,
    team_id: i64,
    spec: &CreateRunRequest,
) -> Result<LiveRun> {
    let now = time::now();
    let spec_json = serde_json::to_string(spec).expect("run specs serialize");
    conn.execute(
        "INSERT INTO runs (id, team_id, worker_host, state, spec_json, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            id,
            team_id,
            spec.worker_host,
            RunState::Queued.as_str(),
            spec_json,
            now
        ],
    )?;
    let seq = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO run_history (run_id, at, state, note) VALUES (?1, ?2, ?3, ?4)",
        params![id, now, RunState::Queued.as_str(), "created"],
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
        },
    })
}

fn list_runs(
    conn: &Connection,
    team_id: i64,
    state: Option<RunState>,
    worker_host: Option<&str>,
) -> Result<Vec<RunRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE team_id = ?1
         AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR worker_host = ?3)
         ORDER BY seq"
    ))?;
    let rows = stmt.query_map(
        params![team_id, state.map(|s| s.as_str()), worker_host],
        run_from_row,
    )?;
    Ok(rows.collect::<std::result::Result<_, _>>()?)
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
        seq: r.get(11)?,
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
            message = COALESCE(?8, message)
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
            change.message
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
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let spec_json: String = r.get(3)?;
    let spec = serde_json::from_str(&spec_json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(RunRecord {
        id: r.get(0)?,
        team_id: r.get(1)?,
        state: parse_state(r.get(2)?)?,
        spec,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        execution_id: r.get(6)?,
        failure_reason: r.get(7)?,
        exit_code: r.get(8)?,
        message: r.get(9)?,
        cancel_requested: r.get::<_, i64>(10)? != 0,
    })
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

    #[test]
    fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cp.sqlite3");
        let secret = {
            let s = Store::open(&path).unwrap();
            let k = s.call_blocking(|conn| create_api_key(conn, "t")).unwrap();
            let team = k.team.id;
            s.call_blocking(move |conn| insert_run(conn, "r1", team, &spec("w")))
                .unwrap();
            k.secret
        };
        let s = Store::open(&path).unwrap();
        let hash = keys::hash(&secret);
        assert!(s
            .call_blocking(move |conn| team_for_key_hash(conn, &hash))
            .unwrap()
            .is_some());
        assert_eq!(s.call_blocking(live_runs).unwrap().len(), 1);
    }
}
