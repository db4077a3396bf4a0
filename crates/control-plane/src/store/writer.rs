//! The one thread that owns the SQLite connection, so no SQLite call (and
//! no fsync) ever runs on an async thread.
//!
//! Jobs are closures over the connection, run in the order they were
//! submitted. Whatever is waiting when the thread comes round is run as one
//! batch in one transaction (group commit): each job inside its own
//! savepoint, so a failing job is rolled back alone, then a single COMMIT
//! (one fsync with `synchronous = FULL`) makes the whole batch durable.
//! Only then is any job's result handed back: a caller never learns of a
//! change that could still be lost.

use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};

/// Why a batch could not run a job or make its change durable (shared by
/// every job of the batch, hence the `Arc`s). Each message is one sentence
/// for the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("cannot begin a database transaction: {0}")]
    Begin(#[source] Arc<rusqlite::Error>),
    #[error("cannot open a database savepoint: {0}")]
    Savepoint(#[source] Arc<rusqlite::Error>),
    #[error("database savepoint failed: {0}")]
    Release(#[source] Arc<rusqlite::Error>),
    #[error("cannot commit to the database: {0}")]
    Commit(#[source] Arc<rusqlite::Error>),
    #[error("a database job panicked (a bug); its change was rolled back")]
    Panicked,
    #[error("the control plane's database thread has stopped")]
    Stopped,
}

/// Why a job's result is not available: the job's own error `E`, or its
/// batch failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError<E> {
    #[error(transparent)]
    Job(E),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// What a job reports when its batch is committed (or not).
type Reply = Box<dyn FnOnce(Result<(), BatchError>) + Send>;

/// One submitted closure and the callback that gets its result.
trait Job: Send {
    /// Runs inside the batch's transaction; `true` when it succeeded.
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Reply);
    /// Not run at all (no transaction could be opened, or no thread).
    fn fail(self: Box<Self>, why: BatchError);
}

struct Typed<F, D> {
    job: F,
    done: D,
}

impl<T, E, F, D> Job for Typed<F, D>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, E> + Send,
    D: FnOnce(Result<T, JobError<E>>) + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Reply) {
        let Typed { job, done } = *self;
        let result = match catch_unwind(AssertUnwindSafe(|| job(conn))) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(JobError::Job(e)),
            Err(_) => Err(JobError::Batch(BatchError::Panicked)),
        };
        let ok = result.is_ok();
        (
            ok,
            Box::new(move |committed| done(committed.map_err(JobError::Batch).and(result))),
        )
    }

    fn fail(self: Box<Self>, why: BatchError) {
        (self.done)(Err(JobError::Batch(why)))
    }
}

/// Jobs per transaction at most, so one batch never holds SQLite's write
/// lock for long (the `api-keys` command may be waiting for it).
const MAX_BATCH: usize = 256;

/// A handle to the thread; cloning shares it. The thread ends when the
/// last handle is dropped, after finishing what was submitted.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Moves `conn` onto a new thread named `name`.
    pub(crate) fn start(conn: Connection, name: &str) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(conn, rx))?;
        Ok(Writer { jobs })
    }

    /// Queues `job`; `done` gets its result once the batch holding it is
    /// committed (or failed), on the writer thread: it must be quick and
    /// must not block. Jobs run in the order of `submit` calls. Never
    /// blocks: callers may hold a lock while submitting.
    pub(crate) fn submit<T, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        done: impl FnOnce(Result<T, JobError<E>>) + Send + 'static,
    ) where
        T: Send + 'static,
        E: Send + 'static,
    {
        if let Err(mpsc::SendError(job)) = self.jobs.send(Box::new(Typed { job, done })) {
            // The thread only ends when every handle is dropped, so this is
            // a panic in the loop itself.
            job.fail(BatchError::Stopped);
        }
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&conn, batch);
    }
}

fn run_batch(conn: &Connection, batch: Vec<Box<dyn Job>>) {
    // IMMEDIATE takes the write lock up front: a deferred transaction that
    // reads first could fail to upgrade while another process writes.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = BatchError::Begin(Arc::new(e));
        for job in batch {
            job.fail(err.clone());
        }
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            job.fail(BatchError::Savepoint(Arc::new(e)));
            continue;
        }
        let (ok, reply) = job.run(conn);
        let end = if ok {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        let failed = conn.execute_batch(end).err();
        replies.push((reply, failed));
    }
    let committed = match conn.execute_batch("COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(BatchError::Commit(Arc::new(e)))
        }
    };
    for (reply, savepoint_error) in replies {
        match savepoint_error {
            Some(e) => reply(Err(BatchError::Release(Arc::new(e)))),
            None => reply(committed.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn writer() -> Writer {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")
            .unwrap();
        Writer::start(conn, "test-writer").unwrap()
    }

    #[test]
    fn jobs_run_in_order_and_a_failing_job_is_rolled_back_alone() {
        let w = writer();
        let (tx, rx) = channel();
        for v in [1, 2, 1, 3] {
            let tx = tx.clone();
            w.submit(
                move |c: &Connection| c.execute("INSERT INTO t (v) VALUES (?1)", [v]),
                move |r| tx.send((v, r.is_ok())).unwrap(),
            );
        }
        let tx2 = tx.clone();
        w.submit(
            |c: &Connection| {
                let mut s = c.prepare("SELECT v FROM t ORDER BY rowid")?;
                let v: Vec<i64> = s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok::<_, rusqlite::Error>(v)
            },
            move |r| tx2.send((0, matches!(r, Ok(v) if v == [1, 2, 3]))).unwrap(),
        );
        let got: Vec<_> = (0..5).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(
            got,
            [(1, true), (2, true), (1, false), (3, true), (0, true)]
        );
    }

    #[test]
    fn a_panicking_job_fails_alone_and_the_thread_survives() {
        let w = writer();
        let (tx, rx) = channel();
        let t = tx.clone();
        w.submit(
            |_: &Connection| -> Result<(), rusqlite::Error> { panic!("bug") },
            move |r| t.send(r.is_err()).unwrap(),
        );
        w.submit(
            |c: &Connection| c.execute("INSERT INTO t (v) VALUES (7)", []),
            move |r| tx.send(r.is_ok()).unwrap(),
        );
        assert!(rx.recv().unwrap());
        assert!(rx.recv().unwrap());
    }
}
