//! Durable state in SQLite: teams, API keys (hashed), runs, and every run's
//! history. All SQL lives in this file. Each change is one transaction, so a
//! killed control plane loses nothing it acknowledged.
//!
//! Calls are synchronous behind a mutex: each is a sub-millisecond local
//! query, and the control plane is not a high-throughput service.

use crate::control_plane::keys;
use crate::control_plane::model::{CreateRunRequest, HistoryEntry, RunState};
use crate::control_plane::time;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

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

pub struct Store {
    conn: Mutex<Connection>,
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

    fn init(conn: Connection) -> Result<Store> {
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
            conn.execute_batch(&format!(
                "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // change is a transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- teams and keys ----

    /// Creates a key for `team_name`, creating the team when it is new.
    pub fn create_api_key(&self, team_name: &str) -> Result<NewApiKey> {
        let team_name = team_name.trim();
        if team_name.is_empty() {
            return Err(StoreError("a team name must not be empty".into()));
        }
        let secret = keys::generate()
            .map_err(|e| StoreError(format!("cannot read random bytes for a key: {e}")))?;
        let now = time::now();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO teams (name, created_at) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![team_name, now],
        )?;
        let team_id: i64 =
            tx.query_row("SELECT id FROM teams WHERE name = ?1", [team_name], |r| {
                r.get(0)
            })?;
        tx.execute(
            "INSERT INTO api_keys (team_id, key_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                team_id,
                keys::hash(&secret),
                keys::display_prefix(&secret),
                now
            ],
        )?;
        let key_id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(NewApiKey {
            team: Team {
                id: team_id,
                name: team_name.to_string(),
            },
            key_id,
            secret,
        })
    }

    pub fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>> {
        let conn = self.conn();
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

    /// The team a presented secret belongs to, if any.
    pub fn team_for_key(&self, secret: &str) -> Result<Option<Team>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT t.id, t.name FROM api_keys k JOIN teams t ON t.id = k.team_id
                 WHERE k.key_hash = ?1",
                [keys::hash(secret)],
                |r| {
                    Ok(Team {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    // ---- runs ----

    pub fn insert_run(&self, id: &str, team_id: i64, spec: &CreateRunRequest) -> Result<RunRecord> {
        let now = time::now();
        let spec_json = serde_json::to_string(spec).expect("run specs serialize");
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
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
        tx.execute(
            "INSERT INTO run_history (run_id, at, state, note) VALUES (?1, ?2, ?3, ?4)",
            params![id, now, RunState::Queued.as_str(), "created"],
        )?;
        let rec = get_run(&tx, id, Some(team_id))?.expect("just inserted");
        tx.commit()?;
        Ok(rec)
    }

    /// `team_id: None` looks across teams (the control plane's own use).
    pub fn get_run(&self, id: &str, team_id: Option<i64>) -> Result<Option<RunRecord>> {
        get_run(&self.conn(), id, team_id)
    }

    pub fn list_runs(
        &self,
        team_id: i64,
        state: Option<RunState>,
        worker_host: Option<&str>,
    ) -> Result<Vec<RunRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
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

    /// Every team's runs in `state`, oldest first.
    pub fn runs_in_state(&self, state: RunState) -> Result<Vec<RunRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state = ?1 ORDER BY seq"
        ))?;
        let rows = stmt.query_map([state.as_str()], run_from_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn history(&self, id: &str) -> Result<Vec<HistoryEntry>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT at, state, note FROM run_history WHERE run_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([id], |r| {
            Ok(HistoryEntry {
                at: r.get(0)?,
                state: parse_state(r.get::<_, String>(1)?)?,
                note: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Moves run `id` from `from` to `change.to` and records it. Returns the
    /// updated run, or `None` when the run was not in `from` (someone else
    /// moved it first): the caller's event is then stale and changes nothing.
    ///
    /// Panics on a move the state machine forbids: that is a bug here.
    pub fn transition(
        &self,
        id: &str,
        from: RunState,
        change: Change,
    ) -> Result<Option<RunRecord>> {
        assert!(
            from.can_become(change.to),
            "illegal run transition {from} -> {}",
            change.to
        );
        let now = time::now();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE runs SET state = ?3, updated_at = ?4,
                execution_id = COALESCE(?5, execution_id),
                failure_reason = COALESCE(?6, failure_reason),
                exit_code = COALESCE(?7, exit_code),
                message = COALESCE(?8, message)
             WHERE id = ?1 AND state = ?2",
            params![
                id,
                from.as_str(),
                change.to.as_str(),
                now,
                change.execution_id,
                change.failure_reason,
                change.exit_code,
                change.message
            ],
        )?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO run_history (run_id, at, state, note) VALUES (?1, ?2, ?3, ?4)",
            params![id, now, change.to.as_str(), change.note],
        )?;
        let rec = get_run(&tx, id, None)?;
        tx.commit()?;
        Ok(rec)
    }

    /// Marks a run cancel-requested (it stays in its state) and records why.
    pub fn request_cancel(&self, id: &str, note: &str) -> Result<Option<RunRecord>> {
        let now = time::now();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(rec) = get_run(&tx, id, None)? else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE runs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        tx.execute(
            "INSERT INTO run_history (run_id, at, state, note) VALUES (?1, ?2, ?3, ?4)",
            params![id, now, rec.state.as_str(), note],
        )?;
        let rec = get_run(&tx, id, None)?;
        tx.commit()?;
        Ok(rec)
    }
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
        .query_row(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1 AND (?2 IS NULL OR team_id = ?2)"
            ),
            params![id, team_id],
            run_from_row,
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.sqlite");
        let _store = super::Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    use super::*;

    fn spec(host: &str) -> CreateRunRequest {
        CreateRunRequest {
            worker_host: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn keys_resolve_to_their_team_and_are_stored_hashed() {
        let s = Store::open_in_memory().unwrap();
        let a = s.create_api_key("alpha").unwrap();
        let a2 = s.create_api_key("alpha").unwrap();
        let b = s.create_api_key("beta").unwrap();
        assert_eq!(a.team, a2.team);
        assert_ne!(a.team, b.team);
        assert_eq!(s.team_for_key(&a2.secret).unwrap(), Some(a.team.clone()));
        assert_eq!(s.team_for_key("ozk_nope").unwrap(), None);
        let listed = s.list_api_keys().unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|k| !k.prefix.contains(&a.secret[10..])));
    }

    #[test]
    fn transitions_are_conditional_and_recorded() {
        let s = Store::open_in_memory().unwrap();
        let team = s.create_api_key("t").unwrap().team;
        s.insert_run("r1", team.id, &spec("w")).unwrap();
        let mut c = Change::to(RunState::Assigned, "assigned");
        c.execution_id = Some("e1".into());
        let r = s.transition("r1", RunState::Queued, c).unwrap().unwrap();
        assert_eq!(r.state, RunState::Assigned);
        assert_eq!(r.execution_id.as_deref(), Some("e1"));
        // Stale: the run is no longer queued.
        assert!(s
            .transition("r1", RunState::Queued, Change::to(RunState::Cancelled, "x"))
            .unwrap()
            .is_none());
        let h = s.history("r1").unwrap();
        assert_eq!(
            h.iter().map(|e| e.state).collect::<Vec<_>>(),
            [RunState::Queued, RunState::Assigned]
        );
        assert!(s.get_run("r1", Some(team.id + 1)).unwrap().is_none());
    }

    #[test]
    fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cp.sqlite3");
        let secret = {
            let s = Store::open(&path).unwrap();
            let k = s.create_api_key("t").unwrap();
            s.insert_run("r1", k.team.id, &spec("w")).unwrap();
            k.secret
        };
        let s = Store::open(&path).unwrap();
        assert!(s.team_for_key(&secret).unwrap().is_some());
        assert_eq!(s.runs_in_state(RunState::Queued).unwrap().len(), 1);
    }
}
