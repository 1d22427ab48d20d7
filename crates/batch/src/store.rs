//! Where a batch's state lives: SQLite (a file, the default) or PostgreSQL (shared by workers on
//! many machines), through sqlx's runtime-chosen driver, with the same SQL for both but the claim.
//!
//! Every method is one committed transaction implementing one arrow of [`crate::machine`]; each
//! `UPDATE` names the state it moves a line from, so a transition the machine forbids cannot
//! happen, whatever two workers do at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};

use crate::machine::LineState;
use crate::{Error, Source};
use gptimage::types::CREDITS_PER_TASK;

/// Where the state of a batch is kept: `sqlite:PATH` or `postgres://…`.
///
/// ```
/// use gptimage_batch::StateUrl;
///
/// let local: StateUrl = "sqlite:results/gptimage-batch.sqlite".parse().unwrap();
/// assert_eq!(local.to_string(), "sqlite:results/gptimage-batch.sqlite");
/// let shared: StateUrl = "postgres://batch:secret@db.internal/images".parse().unwrap();
/// assert_eq!(shared.to_string(), "postgres://batch:***@db.internal/images"); // never the password
/// assert!("mysql://x".parse::<StateUrl>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// A SQLite database file (created when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl StateUrl {
    /// The default: `gptimage-batch.sqlite` in the output folder.
    pub fn in_folder(out: &Path) -> Self {
        StateUrl::Sqlite(out.join("gptimage-batch.sqlite"))
    }

    fn connect_url(&self, create: bool) -> Result<String, Error> {
        match self {
            StateUrl::Sqlite(path) => {
                let text = path.to_str().ok_or_else(|| {
                    Error::BadStateUrl(format!(
                        "the SQLite path {} is not valid UTF-8",
                        path.display()
                    ))
                })?;
                let encoded = text
                    .replace('%', "%25")
                    .replace('?', "%3F")
                    .replace('#', "%23");
                let mode = if create { "rwc" } else { "rw" };
                Ok(format!("sqlite://{encoded}?mode={mode}"))
            }
            StateUrl::Postgres(url) => Ok(url.clone()),
        }
    }
}

impl FromStr for StateUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        if let Some(path) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            if path.is_empty() || path.starts_with(":memory:") {
                return Err(Error::BadStateUrl(
                    "give a file after sqlite: (a batch's state must outlive the process)".into(),
                ));
            }
            return Ok(StateUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StateUrl::Postgres(text.to_owned()));
        }
        Err(Error::BadStateUrl(format!(
            "{:?} is not a state URL: use sqlite:PATH or postgres://USER@HOST/DATABASE",
            redact(text)
        )))
    }
}

/// A URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StateUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateUrl({self})")
    }
}

/// The schema: one batch, its workers, and a row for each line a worker has claimed. Lines not
/// yet claimed have no row: `claimed` counts them out, in file order.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS gptimage_batch (
        one BIGINT PRIMARY KEY CHECK (one = 1),
        batch_id TEXT NOT NULL,
        file_name TEXT NOT NULL,
        items BIGINT NOT NULL,
        claimed BIGINT NOT NULL DEFAULT 0,
        committed BIGINT NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "CREATE TABLE IF NOT EXISTS gptimage_workers (
        id BIGINT PRIMARY KEY,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        out_dir TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'stopped', 'dead')),
        started_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "CREATE TABLE IF NOT EXISTS gptimage_lines (
        item BIGINT PRIMARY KEY,
        line BIGINT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'submitting', 'submitted', 'done',
            'failed', 'refused', 'unknown', 'invalid')),
        owner BIGINT,
        worker BIGINT,
        name TEXT UNIQUE,
        prompt TEXT NOT NULL DEFAULT '',
        task_id TEXT,
        images TEXT,
        files TEXT,
        credits BIGINT,
        error_kind TEXT,
        error_message TEXT)",
    "CREATE INDEX IF NOT EXISTS gptimage_lines_claimable ON gptimage_lines (state, owner, item)",
];

/// Which database the state is in: they differ in one statement (the claim) and in how a dead
/// worker is told from a live one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    Sqlite { path: PathBuf },
    Postgres,
}

/// The open state of a batch.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    url: StateUrl,
    backend: Backend,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// A worker's identity in the state. Its liveness is a lock only a live process holds: a lock
/// file beside a SQLite database, a session advisory lock in PostgreSQL. Both vanish with the
/// process (or its connection), so a killed worker is known dead at once, and a slow one never
/// is.
pub struct Worker {
    id: i64,
    _liveness: Liveness,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Worker({})", self.id)
    }
}

enum Liveness {
    /// Held for its `Drop`: the lock lives exactly as long as the worker.
    #[expect(dead_code, reason = "held, never read")]
    LockFile(LockFile),
    Session(tokio::sync::Mutex<AnyConnection>),
}

/// A held lock file, removed when the worker leaves.
struct LockFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The advisory-lock namespace of gptimage workers in PostgreSQL ("gpti").
const PG_LOCK_CLASS: i32 = 0x6770_7469;

/// A line a worker now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Its key: its position among the file's non-blank lines, from 0.
    pub item: u64,
    /// `Pending` (to read and send) or `Submitted` (to wait for `task_id`).
    pub state: LineState,
    /// The task of a `Submitted` line.
    pub task_id: Option<String>,
    /// The stem its images are named after, once chosen.
    pub name: Option<String>,
    /// Its prompt, once read (empty for a line not yet read).
    pub prompt: String,
}

/// How [`Store::start_submitting`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitting {
    /// Committed as submitting; its images are named after this.
    Named(String),
    /// The budget allows no more tasks: nothing was committed, nothing may be sent.
    OverBudget,
}

/// Everything the state knows of one line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineRecord {
    /// Position among the non-blank lines, from 0.
    pub item: u64,
    /// The 1-based line number in the file.
    pub line: u64,
    /// Where it is in its life.
    #[serde(serialize_with = "serialize_state")]
    pub state: LineState,
    /// The stem of its image files.
    pub name: Option<String>,
    /// Its prompt (empty for a line that did not parse).
    pub prompt: String,
    /// Its task, once the service named one.
    pub task_id: Option<String>,
    /// The result URLs the service reported.
    pub images: Vec<String>,
    /// The files written, by whichever worker wrote them.
    pub files: Vec<PathBuf>,
    /// Credits the task consumed (0 for a failed task, whose credits come back).
    pub credits: Option<u64>,
    /// Why it is not done: a short kind (`task_failed`, `api`, `outcome_unknown`, …) and a
    /// message.
    pub error: Option<(String, String)>,
}

fn serialize_state<S: serde::Serializer>(state: &LineState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

/// Counts of a batch's lines by state, and what it has cost.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Progress {
    /// The batch file's SHA-256.
    pub batch_id: String,
    /// The file's name when the batch began.
    pub file_name: String,
    /// Non-blank lines in the file.
    pub lines: u64,
    /// Lines in each state; lines never claimed count as `pending`.
    pub states: BTreeMap<String, u64>,
    /// Credits consumed by finished tasks, refunds included.
    pub credits: u64,
    /// Credits committed: tasks that may have been charged (finished, running, or of unknown
    /// outcome), counted at their price; what a budget is measured against.
    pub committed: u64,
    /// Workers running now.
    pub workers: u64,
}

impl Progress {
    /// Lines in `state`.
    pub fn count(&self, state: LineState) -> u64 {
        self.states.get(state.as_str()).copied().unwrap_or(0)
    }

    /// Whether every line is done.
    pub fn all_done(&self) -> bool {
        self.count(LineState::Done) == self.lines
    }
}

impl Store {
    /// Opens (creating when missing) the state at `url`, with the schema in place.
    pub async fn open(url: &StateUrl) -> Result<Self, Error> {
        Self::connect(url, true).await
    }

    /// Opens an existing state to look at it, changing nothing; a missing SQLite file is an
    /// error, not a new state.
    pub async fn open_existing(url: &StateUrl) -> Result<Self, Error> {
        if let StateUrl::Sqlite(path) = url
            && !path.is_file()
        {
            return Err(Error::NoState { url: url.clone() });
        }
        let store = Self::connect(url, false).await?;
        if store.backend == Backend::Postgres {
            let tables: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'gptimage_batch'
                 AND table_schema = ANY (current_schemas(false))",
            )
            .fetch_one(&store.pool)
            .await
            .map_err(|e| store.error(e))?;
            if tables == 0 {
                return Err(Error::NoState { url: url.clone() });
            }
        }
        Ok(store)
    }

    async fn connect(url: &StateUrl, create: bool) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let backend = match url {
            StateUrl::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
                    && create
                {
                    std::fs::create_dir_all(parent).map_err(|e| state_error(url, e))?;
                }
                Backend::Sqlite { path: path.clone() }
            }
            StateUrl::Postgres(_) => Backend::Postgres,
        };
        let connect_url = url.connect_url(create)?;
        // The first connection is made by hand: a pool retries a failing connect until its
        // timeout and then reports only that, where this reports the cause (a full disk, a
        // refused password) at once.
        let mut first = AnyConnection::connect(&connect_url)
            .await
            .map_err(|e| state_error(url, e))?;
        configure(&mut first)
            .await
            .map_err(|e| state_error(url, e))?;
        if create {
            create_schema(&mut first, &backend)
                .await
                .map_err(|e| state_error(url, e))?;
        }
        first.close().await.map_err(|e| state_error(url, e))?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(60))
            .after_connect(|conn, _| Box::pin(configure(conn)))
            .connect_lazy(&connect_url)
            .map_err(|e| state_error(url, e))?;
        Ok(Self {
            pool,
            url: url.clone(),
            backend,
        })
    }

    /// Where this state is.
    pub fn url(&self) -> &StateUrl {
        &self.url
    }

    fn error(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        state_error(&self.url, e)
    }

    /// Binds the state to `source`'s batch, or refuses a state that belongs to another file.
    pub async fn bind(&self, source: &Source) -> Result<(), Error> {
        let name = source
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO gptimage_batch (one, batch_id, file_name, items) VALUES (1, $1, $2, $3)
             ON CONFLICT (one) DO NOTHING",
        )
        .bind(source.id().to_owned())
        .bind(name)
        .bind(source.len() as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let progress = self.progress().await?;
        if progress.batch_id != source.id() {
            return Err(Error::OtherBatch {
                url: self.url.clone(),
                file: source.path().to_path_buf(),
                theirs: progress.file_name,
                their_lines: progress.lines,
            });
        }
        Ok(())
    }

    /// Registers a worker writing to `out`. Its lock is taken before its row exists, so no
    /// other worker can see it without its lock and think it dead.
    pub async fn join(&self, out: &Path) -> Result<Worker, Error> {
        for _ in 0..16 {
            let id = i64::from(random_id());
            let liveness = match &self.backend {
                Backend::Sqlite { path } => {
                    let path = lock_path(path, id);
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(|e| self.error(e))?;
                    if file.try_lock().is_err() {
                        continue;
                    }
                    Liveness::LockFile(LockFile { path, _file: file })
                }
                Backend::Postgres => {
                    let mut conn = AnyConnection::connect(&self.url.connect_url(true)?)
                        .await
                        .map_err(|e| self.error(e))?;
                    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                        .bind(PG_LOCK_CLASS)
                        .bind(id as i32)
                        .fetch_one(&mut conn)
                        .await
                        .map_err(|e| self.error(e))?;
                    if !locked {
                        continue;
                    }
                    Liveness::Session(tokio::sync::Mutex::new(conn))
                }
            };
            let inserted = sqlx::query(
                "INSERT INTO gptimage_workers (id, host, pid, out_dir, status)
                 VALUES ($1, $2, $3, $4, 'running') ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(host_name())
            .bind(i64::from(std::process::id()))
            .bind(out.display().to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
            if inserted.rows_affected() == 1 {
                return Ok(Worker {
                    id,
                    _liveness: liveness,
                });
            }
        }
        Err(self.error("could not pick an unused worker id"))
    }

    /// Whether `worker` still holds its liveness lock; a worker that lost it (its database
    /// session ended) must stop sending, since others may already count it dead.
    pub async fn still_alive(&self, worker: &Worker) -> Result<(), Error> {
        if let Liveness::Session(conn) = &worker._liveness {
            let mut conn = conn.lock().await;
            conn.ping().await.map_err(|_| Error::LostWorker {
                url: self.url.clone(),
            })?;
        }
        Ok(())
    }

    /// Gives refused lines another chance: a new worker's start is a rerun.
    pub async fn retry_refused(&self) -> Result<u64, Error> {
        self.execute(
            "UPDATE gptimage_lines SET state = 'pending', owner = NULL, error_kind = NULL,
             error_message = NULL WHERE state = 'refused'",
        )
        .await
    }

    /// Sends unknown-outcome lines again: only on the user's explicit word, after checking that
    /// the account holds no task for them.
    /// Their credits are no longer counted as committed: the user says no task exists.
    pub async fn resubmit_unknown(&self) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        let moved = sqlx::query(
            "UPDATE gptimage_lines SET state = 'pending', owner = NULL, task_id = NULL,
             error_kind = NULL, error_message = NULL WHERE state = 'unknown'",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?
        .rows_affected();
        self.give_back(&mut tx, moved * CREDITS_PER_TASK).await?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(moved)
    }

    async fn execute(&self, sql: &'static str) -> Result<u64, Error> {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.error(e))
    }

    /// Finds workers that died (their lock is free) and settles their lines: what they were
    /// submitting becomes `unknown`, never `pending`; what they held otherwise becomes
    /// claimable. Returns how many workers were found dead.
    pub async fn reap(&self, me: &Worker) -> Result<u64, Error> {
        let others: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM gptimage_workers WHERE status = 'running' AND id <> $1",
        )
        .bind(me.id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let mut dead = 0;
        for id in others {
            if self.is_alive(id).await? {
                continue;
            }
            dead += 1;
            sqlx::query("UPDATE gptimage_workers SET status = 'dead' WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
        }
        // Settles every departed worker's lines, including any a racing transaction committed
        // after an earlier sweep.
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        sqlx::query(
            "UPDATE gptimage_lines SET state = 'unknown', error_kind = 'outcome_unknown',
             error_message = 'the worker sending it stopped before it learned the answer'
             WHERE state = 'submitting'
             AND owner IN (SELECT id FROM gptimage_workers WHERE status <> 'running')",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        sqlx::query(
            "UPDATE gptimage_lines SET owner = NULL WHERE state IN ('pending', 'submitted')
             AND owner IN (SELECT id FROM gptimage_workers WHERE status <> 'running')",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(dead)
    }

    async fn is_alive(&self, id: i64) -> Result<bool, Error> {
        match &self.backend {
            Backend::Sqlite { path } => {
                let Ok(file) = std::fs::File::open(lock_path(path, id)) else {
                    return Ok(false);
                };
                match file.try_lock_shared() {
                    Ok(()) => Ok(false),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(true),
                    Err(std::fs::TryLockError::Error(e)) => Err(self.error(e)),
                }
            }
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await.map_err(|e| self.error(e))?;
                let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(PG_LOCK_CLASS)
                    .bind(id as i32)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.error(e))?;
                if free {
                    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                        .bind(PG_LOCK_CLASS)
                        .bind(id as i32)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| self.error(e))?;
                }
                Ok(!free)
            }
        }
    }

    /// Claims the next line for `worker`: first a line left claimable (pending, or submitted and
    /// waiting for someone to wait for it), then the next unread line of the file. One worker
    /// wins each line: the claim is a single conditional statement (PostgreSQL skips rows other
    /// claims have locked), or a counter moved under the database's write lock.
    pub async fn claim(&self, worker: &Worker) -> Result<Option<Claim>, Error> {
        let claim_existing = match self.backend {
            Backend::Postgres => {
                "UPDATE gptimage_lines SET owner = $1 WHERE item = (
                    SELECT item FROM gptimage_lines
                    WHERE owner IS NULL AND state IN ('pending', 'submitted')
                    ORDER BY item LIMIT 1 FOR UPDATE SKIP LOCKED)
                 AND owner IS NULL AND state IN ('pending', 'submitted')
                 AND EXISTS (SELECT 1 FROM gptimage_workers WHERE id = $1 AND status = 'running')
                 RETURNING item, state, task_id, name, prompt"
            }
            Backend::Sqlite { .. } => {
                "UPDATE gptimage_lines SET owner = $1 WHERE item = (
                    SELECT item FROM gptimage_lines
                    WHERE owner IS NULL AND state IN ('pending', 'submitted')
                    ORDER BY item LIMIT 1)
                 AND owner IS NULL AND state IN ('pending', 'submitted')
                 AND EXISTS (SELECT 1 FROM gptimage_workers WHERE id = $1 AND status = 'running')
                 RETURNING item, state, task_id, name, prompt"
            }
        };
        if let Some(row) = sqlx::query(claim_existing)
            .bind(worker.id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))?
        {
            return self.read_claim(&row).map(Some);
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        let item: Option<i64> = sqlx::query_scalar(
            "UPDATE gptimage_batch SET claimed = claimed + 1 WHERE one = 1 AND claimed < items
             AND EXISTS (SELECT 1 FROM gptimage_workers WHERE id = $1 AND status = 'running')
             RETURNING claimed - 1",
        )
        .bind(worker.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        let Some(item) = item else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO gptimage_lines (item, line, state, owner) VALUES ($1, 0, 'pending', $2)",
        )
        .bind(item)
        .bind(worker.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(Some(Claim {
            item: item as u64,
            state: LineState::Pending,
            task_id: None,
            name: None,
            prompt: String::new(),
        }))
    }

    fn read_claim(&self, row: &AnyRow) -> Result<Claim, Error> {
        let state: String = row.try_get("state").map_err(|e| self.error(e))?;
        Ok(Claim {
            item: row.try_get::<i64, _>("item").map_err(|e| self.error(e))? as u64,
            state: state.parse().map_err(|e| self.error(e))?,
            task_id: row.try_get("task_id").map_err(|e| self.error(e))?,
            name: row.try_get("name").map_err(|e| self.error(e))?,
            prompt: row.try_get("prompt").map_err(|e| self.error(e))?,
        })
    }

    /// `pending → submitting`, committed before the POST goes out, with the task's credits
    /// counted against `budget` (all credits this batch may commit, across runs and workers) in
    /// the same transaction: the budget is exact however many workers run. The line's images get
    /// the first of `names` no other line has. An error means nothing may be sent.
    pub async fn start_submitting(
        &self,
        worker: &Worker,
        item: u64,
        line: u64,
        names: &[String],
        prompt: &str,
        budget: Option<u64>,
    ) -> Result<Submitting, Error> {
        let budget = budget.map_or(-1, |b| b.min(i64::MAX as u64) as i64);
        for name in names {
            let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
            let within = sqlx::query(
                "UPDATE gptimage_batch SET committed = committed + $1
                 WHERE one = 1 AND ($2 < 0 OR committed + $1 <= $2)",
            )
            .bind(CREDITS_PER_TASK as i64)
            .bind(budget)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
            if within.rows_affected() == 0 {
                return Ok(Submitting::OverBudget);
            }
            let result = sqlx::query(
                "UPDATE gptimage_lines SET state = 'submitting', worker = $2, line = $3,
                 name = $4, prompt = $5
                 WHERE item = $1 AND state = 'pending' AND owner = $2
                 AND EXISTS (SELECT 1 FROM gptimage_workers WHERE id = $2 AND status = 'running')",
            )
            .bind(item as i64)
            .bind(worker.id)
            .bind(line as i64)
            .bind(name.clone())
            .bind(prompt.to_owned())
            .execute(&mut *tx)
            .await;
            match result {
                Ok(done) if done.rows_affected() == 1 => {
                    tx.commit().await.map_err(|e| self.error(e))?;
                    return Ok(Submitting::Named(name.clone()));
                }
                Ok(_) => {
                    return Err(Error::LostWorker {
                        url: self.url.clone(),
                    });
                }
                // The transaction is dropped (rolled back) with its credits; try the next name.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(self.error(e)),
            }
        }
        Err(self.error(format!("line {line}: every name for its images is taken")))
    }

    /// `pending → invalid`: the line cannot be sent as it is.
    pub async fn invalid(
        &self,
        worker: &Worker,
        item: u64,
        line: u64,
        prompt: &str,
        reason: &str,
    ) -> Result<(), Error> {
        self.transition(
            sqlx::query(
                "UPDATE gptimage_lines SET state = 'invalid', owner = NULL, worker = $2,
                 line = $3, prompt = $4, error_kind = 'invalid_request', error_message = $5
                 WHERE item = $1 AND state = 'pending' AND owner = $2",
            )
            .bind(item as i64)
            .bind(worker.id)
            .bind(line as i64)
            .bind(prompt.to_owned())
            .bind(reason.to_owned()),
        )
        .await
    }

    /// `submitting → submitted`: the service named the task. Also from `unknown`, for a worker
    /// presumed dead that learned its answer after all (the id is better than no id).
    pub async fn submitted(&self, worker: &Worker, item: u64, task_id: &str) -> Result<(), Error> {
        self.transition(
            sqlx::query(
                "UPDATE gptimage_lines SET state = 'submitted', task_id = $3, error_kind = NULL,
                 error_message = NULL
                 WHERE item = $1 AND worker = $2 AND state IN ('submitting', 'unknown')",
            )
            .bind(item as i64)
            .bind(worker.id)
            .bind(task_id.to_owned()),
        )
        .await
    }

    /// `submitting → refused` (no task exists, so a later start may send it again, and its
    /// credits are not committed) or `submitting → unknown` (a task may exist: its credits stay
    /// counted).
    pub async fn not_submitted(
        &self,
        worker: &Worker,
        item: u64,
        state: LineState,
        kind: &str,
        message: &str,
    ) -> Result<(), Error> {
        debug_assert!(LineState::Submitting.may_become(state, crate::machine::Actor::Worker));
        let refund = if state == LineState::Refused {
            CREDITS_PER_TASK
        } else {
            0
        };
        self.transition_refunding(
            sqlx::query(
                "UPDATE gptimage_lines SET state = $3, owner = NULL, error_kind = $4,
                 error_message = $5 WHERE item = $1 AND worker = $2 AND state = 'submitting'",
            )
            .bind(item as i64)
            .bind(worker.id)
            .bind(state.as_str())
            .bind(kind.to_owned())
            .bind(message.to_owned()),
            refund,
        )
        .await
    }

    /// `submitted → done`, with where its images went.
    pub async fn done(
        &self,
        worker: &Worker,
        item: u64,
        images: &[String],
        files: &[PathBuf],
        credits: Option<u64>,
    ) -> Result<(), Error> {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        self.transition(
            sqlx::query(
                "UPDATE gptimage_lines SET state = 'done', owner = NULL, images = $3, files = $4,
                 credits = $5, error_kind = NULL, error_message = NULL
                 WHERE item = $1 AND owner = $2 AND state = 'submitted'",
            )
            .bind(item as i64)
            .bind(worker.id)
            .bind(serde_json::to_string(images).unwrap_or_default())
            .bind(serde_json::to_string(&files).unwrap_or_default())
            .bind(credits.map(|c| c as i64)),
        )
        .await
    }

    /// `submitted → failed`: the task ended `FAILED`, and the service gave its credits back.
    pub async fn failed(
        &self,
        worker: &Worker,
        item: u64,
        message: &str,
        credits: Option<u64>,
    ) -> Result<(), Error> {
        self.transition_refunding(
            sqlx::query(
                "UPDATE gptimage_lines SET state = 'failed', owner = NULL, credits = $3,
                 error_kind = 'task_failed', error_message = $4
                 WHERE item = $1 AND owner = $2 AND state = 'submitted'",
            )
            .bind(item as i64)
            .bind(worker.id)
            .bind(credits.map(|c| c as i64))
            .bind(message.to_owned()),
            CREDITS_PER_TASK,
        )
        .await
    }

    /// Lets go of a line the worker holds without moving it: a pending line it did not send, or
    /// a submitted one whose wait ended without an outcome (deadline, network, interrupt). The
    /// reason, if any, is kept for reports until the line moves on.
    pub async fn release(
        &self,
        worker: &Worker,
        item: u64,
        reason: Option<(&str, &str)>,
    ) -> Result<(), Error> {
        self.transition(
            sqlx::query(
                "UPDATE gptimage_lines SET owner = NULL, error_kind = $3, error_message = $4
                 WHERE item = $1 AND owner = $2 AND state IN ('pending', 'submitted')",
            )
            .bind(item as i64)
            .bind(worker.id)
            .bind(reason.map(|(k, _)| k.to_owned()))
            .bind(reason.map(|(_, m)| m.to_owned())),
        )
        .await
    }

    /// A transition that gives `refund` committed credits back, in one transaction.
    async fn transition_refunding(
        &self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
        refund: u64,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        let moved = query.execute(&mut *tx).await.map_err(|e| self.error(e))?;
        if moved.rows_affected() != 1 {
            return Err(Error::LostWorker {
                url: self.url.clone(),
            });
        }
        self.give_back(&mut tx, refund).await?;
        tx.commit().await.map_err(|e| self.error(e))
    }

    /// Takes `credits` off what the batch has committed, inside the transaction that made them
    /// uncommitted.
    async fn give_back(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        credits: u64,
    ) -> Result<(), Error> {
        if credits == 0 {
            return Ok(());
        }
        sqlx::query("UPDATE gptimage_batch SET committed = committed - $1 WHERE one = 1")
            .bind(credits as i64)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn transition(
        &self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<(), Error> {
        match query.execute(&self.pool).await {
            Ok(done) if done.rows_affected() == 1 => Ok(()),
            Ok(_) => Err(Error::LostWorker {
                url: self.url.clone(),
            }),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The worker leaves: its held lines become claimable, and it stops counting as running.
    pub async fn leave(&self, worker: &Worker) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(|e| self.error(e))?;
        sqlx::query("UPDATE gptimage_workers SET status = 'stopped' WHERE id = $1")
            .bind(worker.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        sqlx::query(
            "UPDATE gptimage_lines SET owner = NULL WHERE owner = $1
             AND state IN ('pending', 'submitted')",
        )
        .bind(worker.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.error(e))?;
        tx.commit().await.map_err(|e| self.error(e))
    }

    /// Whether a worker other than `me` still holds a line it may finish.
    pub async fn others_busy(&self, me: &Worker) -> Result<bool, Error> {
        let busy: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM gptimage_lines WHERE owner IS NOT NULL AND owner <> $1
             AND state IN ('pending', 'submitting', 'submitted')",
        )
        .bind(me.id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(busy > 0)
    }

    /// How the batch stands: counts by state, credits, workers.
    pub async fn progress(&self) -> Result<Progress, Error> {
        let batch = sqlx::query(
            "SELECT batch_id, file_name, items, committed FROM gptimage_batch WHERE one = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?
        .ok_or_else(|| Error::NoState {
            url: self.url.clone(),
        })?;
        let mut progress = Progress {
            batch_id: batch.try_get("batch_id").map_err(|e| self.error(e))?,
            file_name: batch.try_get("file_name").map_err(|e| self.error(e))?,
            lines: batch
                .try_get::<i64, _>("items")
                .map_err(|e| self.error(e))? as u64,
            committed: batch
                .try_get::<i64, _>("committed")
                .map_err(|e| self.error(e))? as u64,
            ..Progress::default()
        };
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM gptimage_lines GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        let mut claimed_not_pending = 0;
        for row in rows {
            let state: String = row.try_get("state").map_err(|e| self.error(e))?;
            let n = row.try_get::<i64, _>("n").map_err(|e| self.error(e))? as u64;
            if state != LineState::Pending.as_str() {
                claimed_not_pending += n;
                progress.states.insert(state, n);
            }
        }
        let pending = progress.lines.saturating_sub(claimed_not_pending);
        if pending > 0 {
            progress.states.insert("pending".into(), pending);
        }
        progress.credits = sqlx::query_scalar::<_, i64>(
            "SELECT CAST(COALESCE(SUM(credits), 0) AS BIGINT) FROM gptimage_lines",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error(e))? as u64;
        progress.workers = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM gptimage_workers WHERE status = 'running'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error(e))? as u64;
        Ok(progress)
    }

    /// Up to `limit` claimed lines after item `after` (or from the start), in file order. Page
    /// through a large batch with the last item seen, or with [`pages`](Self::pages).
    pub async fn lines(&self, after: Option<u64>, limit: u64) -> Result<Vec<LineRecord>, Error> {
        let rows = sqlx::query(
            "SELECT item, line, state, name, prompt, task_id, images, files, credits,
             error_kind, error_message FROM gptimage_lines
             WHERE item > $1 ORDER BY item LIMIT $2",
        )
        .bind(after.map_or(-1, |a| a as i64))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        rows.iter().map(|row| self.read_record(row)).collect()
    }

    /// Every claimed line in file order, read a page of `page` lines at a time, so a large
    /// batch is never held in memory whole.
    ///
    /// ```no_run
    /// # async fn show(store: &gptimage_batch::Store) -> Result<(), gptimage_batch::Error> {
    /// let mut pages = store.pages(1000);
    /// while let Some(page) = pages.next().await? {
    ///     for line in page {
    ///         println!("line {}: {}", line.line, line.state);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn pages(&self, page: u64) -> Pages<'_> {
        Pages {
            store: self,
            page: page.max(1),
            after: None,
            done: false,
        }
    }

    /// One line's record, if the line has been claimed.
    pub async fn line(&self, item: u64) -> Result<Option<LineRecord>, Error> {
        let row = sqlx::query(
            "SELECT item, line, state, name, prompt, task_id, images, files, credits,
             error_kind, error_message FROM gptimage_lines WHERE item = $1",
        )
        .bind(item as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        row.map(|row| self.read_record(&row)).transpose()
    }

    fn read_record(&self, row: &AnyRow) -> Result<LineRecord, Error> {
        let get_text = |name: &str| -> Result<Option<String>, Error> {
            row.try_get::<Option<String>, _>(name)
                .map_err(|e| self.error(e))
        };
        let list = |text: Option<String>| -> Vec<String> {
            text.and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default()
        };
        let state: String = row.try_get("state").map_err(|e| self.error(e))?;
        let error = match (get_text("error_kind")?, get_text("error_message")?) {
            (Some(kind), message) => Some((kind, message.unwrap_or_default())),
            _ => None,
        };
        Ok(LineRecord {
            item: row.try_get::<i64, _>("item").map_err(|e| self.error(e))? as u64,
            line: row.try_get::<i64, _>("line").map_err(|e| self.error(e))? as u64,
            state: state.parse().map_err(|e| self.error(e))?,
            name: get_text("name")?,
            prompt: get_text("prompt")?.unwrap_or_default(),
            task_id: get_text("task_id")?,
            images: list(get_text("images")?),
            files: list(get_text("files")?)
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            credits: row
                .try_get::<Option<i64>, _>("credits")
                .map_err(|e| self.error(e))?
                .map(|c| c as u64),
            error,
        })
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The claimed lines of a batch, a page at a time ([`Store::pages`]).
#[derive(Debug)]
pub struct Pages<'a> {
    store: &'a Store,
    page: u64,
    after: Option<u64>,
    done: bool,
}

impl Pages<'_> {
    /// The next page, or `None` after the last line.
    pub async fn next(&mut self) -> Result<Option<Vec<LineRecord>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = self.store.lines(self.after, self.page).await?;
        match page.last() {
            Some(last) => {
                self.after = Some(last.item);
                Ok(Some(page))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

impl Worker {
    /// The worker's id in the state.
    pub fn id(&self) -> i64 {
        self.id
    }
}

/// Settings of every connection: for SQLite, every commit reaches the disk before it returns,
/// and writers from several processes wait their turn rather than fail.
async fn configure(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    if conn.backend_name() == "SQLite" {
        sqlx::raw_sql(
            "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 60000; PRAGMA foreign_keys = ON",
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Creates the tables when missing, in one transaction.
async fn create_schema(conn: &mut AnyConnection, backend: &Backend) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    if *backend == Backend::Postgres {
        // Concurrent CREATE TABLE IF NOT EXISTS can collide in PostgreSQL's catalog.
        sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
            .bind(PG_LOCK_CLASS)
            .execute(&mut *tx)
            .await?;
    }
    for statement in SCHEMA {
        sqlx::query(*statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    if let Backend::Sqlite { .. } = backend {
        // WAL: readers never block the writer. The mode is kept in the file.
        sqlx::raw_sql("PRAGMA journal_mode = WAL")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn state_error(url: &StateUrl, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::State {
        url: url.clone(),
        source: Arc::from(e.into()),
    }
}

/// The lock file of worker `id` of the SQLite state at `db`.
fn lock_path(db: &Path, id: i64) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".worker-{id}.lock"));
    db.with_file_name(name)
}

/// A random positive 31-bit worker id (PostgreSQL's advisory locks take 32-bit keys).
fn random_id() -> i32 {
    use std::hash::{BuildHasher, RandomState};
    let seed = (std::process::id(), std::time::SystemTime::now());
    (RandomState::new().hash_one(seed) & 0x7fff_ffff) as i32
}

/// This machine's name, for reports of who is working; empty when unknown.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_a_password() {
        assert_eq!(
            "sqlite:a/b.db".parse::<StateUrl>().unwrap(),
            StateUrl::Sqlite("a/b.db".into())
        );
        assert_eq!(
            "sqlite:///tmp/b.db".parse::<StateUrl>().unwrap(),
            StateUrl::Sqlite("/tmp/b.db".into())
        );
        assert!("sqlite::memory:".parse::<StateUrl>().is_err());
        assert!("sqlite:".parse::<StateUrl>().is_err());
        let pg: StateUrl = "postgresql://u:p%40ss@h:5432/d?sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(
            pg.to_string(),
            "postgresql://u:***@h:5432/d?sslmode=require"
        );
        assert!(!format!("{pg:?}").contains("p%40ss"));
        let error = "redis://u:pw@h"
            .parse::<StateUrl>()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sqlite:PATH") && !error.contains("pw"),
            "{error}"
        );
    }

    #[test]
    fn sqlite_paths_with_url_characters_survive() {
        let url = StateUrl::Sqlite("dir with space/a?b#c%d.db".into());
        assert_eq!(
            url.connect_url(true).unwrap(),
            "sqlite://dir with space/a%3Fb%23c%25d.db?mode=rwc"
        );
    }
}
