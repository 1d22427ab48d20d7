//! Workers joining and leaving a batch, the lock that says a worker is alive, and reaping the
//! lines of workers that died.
//!
//! A worker's liveness is a lock only a live process holds: an exclusive lock on a file beside
//! a SQLite database, or a session advisory lock in PostgreSQL. Both vanish with the process
//! (or its database session, which the server ends within about 25 s of losing the client:
//! see `schema.rs`), so a killed or cut-off worker is counted out at once. Beside it, a
//! heartbeat on the database's clock: a worker that has not beaten for [`HEARTBEAT_STALE`] is
//! counted out too, lock or not (a paused process holds its lock; behind a pooler in session
//! mode, a partitioned worker's server session, and its lock, live as long as the pooler's own
//! timeouts, hours). Only the database's clock is read: no two machines' clocks need agree.
//!
//! A worker counted out while `submitting` may still have its POST on the wire: the line
//! becomes `unknown` only after its lock-delay (see [`lock_delay`](super::lock_delay)), counted
//! from the commit on the database's clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::{AnyConnection, Connection};

use super::{Backend, HEARTBEAT_STALE, PG_LOCK_CLASS, Store, ms};
use crate::Error;

/// How long a worker waits for the state to confirm its liveness lock before it counts itself
/// out: a worker that cannot reach its state cannot record anything, so it must stop sending.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker's identity in the state, and the lock that makes it alive.
pub struct Worker {
    id: i64,
    /// When it joined, on the database's clock: it may take lines held back before then.
    started_ms: i64,
    liveness: Liveness,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Worker({})", self.id)
    }
}

impl Worker {
    /// The worker's id in the state.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// When it joined, in milliseconds on the database's clock.
    pub(super) fn started_ms(&self) -> i64 {
        self.started_ms
    }
}

enum Liveness {
    /// Held for its `Drop`: the lock lives exactly as long as the worker.
    #[expect(dead_code, reason = "held, never read")]
    LockFile(LockFile),
    /// The session holding the advisory lock, and the server process behind it: a pooler that
    /// hands the session's statements to another server process is caught by the change.
    Session {
        conn: tokio::sync::Mutex<AnyConnection>,
        backend_pid: i32,
    },
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

/// Whether this session holds worker `$2`'s advisory lock, and which server process it is.
const HOLDS_LOCK: &str = "SELECT pg_backend_pid(), CAST((SELECT COUNT(*) FROM pg_locks
     WHERE locktype = 'advisory' AND classid = CAST($1 AS OID) AND objid = CAST($2 AS OID)
     AND objsubid = 2 AND pid = pg_backend_pid() AND granted) AS BIGINT)";

impl Store {
    /// Registers a worker writing to `out`. Its lock is taken before its row exists, so no
    /// other worker can see it without its lock and think it dead.
    pub async fn join(&self, out: &Path) -> Result<Worker, Error> {
        for _ in 0..16 {
            let id = i64::from(random_id());
            let liveness = match &self.backend {
                Backend::Sqlite { path } => {
                    let path = lock_path(path, id);
                    let mut options = std::fs::OpenOptions::new();
                    options.create(true).truncate(false).write(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                    let file = options.open(&path).map_err(|e| self.error(e))?;
                    if file.try_lock().is_err() {
                        continue;
                    }
                    Liveness::LockFile(LockFile { path, _file: file })
                }
                Backend::Postgres => {
                    let mut conn = AnyConnection::connect(&self.url.connect_url(true)?)
                        .await
                        .map_err(|e| self.error(e))?;
                    super::schema::configure(&mut conn, self.commit)
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
                    let (backend_pid, held): (i32, i64) = sqlx::query_as(HOLDS_LOCK)
                        .bind(PG_LOCK_CLASS)
                        .bind(id as i32)
                        .fetch_one(&mut conn)
                        .await
                        .map_err(|e| self.error(e))?;
                    if held != 1 {
                        return Err(self.pooled());
                    }
                    Liveness::Session {
                        conn: tokio::sync::Mutex::new(conn),
                        backend_pid,
                    }
                }
            };
            let started: Option<i64> = sqlx::query_scalar(self.sql(
                "INSERT INTO gptimage_workers (id, host, pid, out_dir, status, started_ms,
                 heartbeat_ms) VALUES ($1, $2, $3, $4, 'running', NOW_MS, NOW_MS)
                 ON CONFLICT (id) DO NOTHING RETURNING started_ms",
            ))
            .bind(id)
            .bind(host_name())
            .bind(i64::from(std::process::id()))
            .bind(out.display().to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
            if let Some(started_ms) = started {
                return Ok(Worker {
                    id,
                    started_ms,
                    liveness,
                });
            }
        }
        Err(self.error("could not pick an unused worker id"))
    }

    fn pooled(&self) -> Error {
        Error::Pooled {
            url: self.url.clone(),
        }
    }

    /// Whether `worker` still counts as alive, confirmed by the state within 10 s: it holds its
    /// liveness lock, and its heartbeat (stamped now, on the database's clock) was taken while
    /// it was still `running`. A worker that lost either (its session ended, it moved to another
    /// server process behind a pooler, another worker counted it out), or cannot reach the
    /// state to tell, must stop sending: others may already count it dead.
    pub async fn still_alive(&self, worker: &Worker) -> Result<(), Error> {
        let beat = self.sql(
            "UPDATE gptimage_workers SET heartbeat_ms = NOW_MS WHERE id = $1 AND status = 'running'",
        );
        let both = async {
            let beaten = match &worker.liveness {
                // On the session that holds the lock: the beat never waits for the pool.
                Liveness::Session { conn, backend_pid } => {
                    let mut conn = conn.lock().await;
                    match sqlx::query_as::<_, (i32, i64)>(HOLDS_LOCK)
                        .bind(PG_LOCK_CLASS)
                        .bind(worker.id as i32)
                        .fetch_one(&mut *conn)
                        .await
                    {
                        Ok((pid, 1)) if pid == *backend_pid => {}
                        Ok((pid, _)) if pid != *backend_pid => return Err(self.pooled()),
                        _ => return Err(self.lost()),
                    }
                    sqlx::query(beat).bind(worker.id).execute(&mut *conn).await
                }
                Liveness::LockFile(_) => {
                    sqlx::query(beat).bind(worker.id).execute(&self.pool).await
                }
            };
            match beaten {
                Ok(done) if done.rows_affected() == 1 => Ok(()),
                _ => Err(self.lost()),
            }
        };
        tokio::time::timeout(LIVENESS_TIMEOUT, both)
            .await
            .unwrap_or_else(|_| Err(self.lost()))
    }

    /// Finds workers that died (their lock is free, or their heartbeat is older than
    /// [`HEARTBEAT_STALE`]) and settles their lines: what they held but had not sent becomes
    /// claimable at once; what they were submitting becomes `unknown`, never `pending`, once its
    /// lock-delay has passed on the database's clock (until then it stays `submitting`: its POST
    /// may still be on the wire). Returns how many workers were found dead.
    pub async fn reap(&self, me: &Worker) -> Result<u64, Error> {
        let others: Vec<(i64, i64)> = sqlx::query_as(self.sql(
            "SELECT id, CAST(CASE WHEN heartbeat_ms IS NOT NULL AND heartbeat_ms < NOW_MS - $2
             THEN 1 ELSE 0 END AS BIGINT) FROM gptimage_workers
             WHERE status = 'running' AND id <> $1",
        ))
        .bind(me.id)
        .bind(ms(HEARTBEAT_STALE))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let mut dead = 0;
        for (id, stale) in others {
            let lock_free = stale == 0 && !self.is_alive(id).await?;
            if stale == 0 && !lock_free {
                continue;
            }
            // Counted out only if still so now: a stale heartbeat is checked again in the
            // statement itself (the worker may have beaten since the read above).
            let counted_out = sqlx::query(self.sql(
                "UPDATE gptimage_workers SET status = 'dead', dead_ms = NOW_MS
                 WHERE id = $1 AND status = 'running'
                 AND ($3 = 1 OR (heartbeat_ms IS NOT NULL AND heartbeat_ms < NOW_MS - $2))",
            ))
            .bind(id)
            .bind(ms(HEARTBEAT_STALE))
            .bind(i64::from(lock_free))
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected();
            dead += counted_out;
        }
        // Settles every departed worker's lines, including any a racing transaction committed
        // after an earlier sweep.
        let mut tx = self.write().await?;
        sqlx::query(self.sql(
            "UPDATE gptimage_lines SET state = 'unknown', error_kind = 'outcome_unknown',
             error_message = 'the worker sending it stopped before it learned the answer'
             WHERE state = 'submitting'
             AND owner IN (SELECT id FROM gptimage_workers WHERE status <> 'running')
             AND (sent_ms IS NULL OR sent_ms + COALESCE(fence_ms, 0) <= NOW_MS)",
        ))
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

    /// The worker leaves: its held lines become claimable, and it stops counting as running.
    pub async fn leave(&self, worker: &Worker) -> Result<(), Error> {
        let mut tx = self.write().await?;
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
}

/// Refuses a state reached through a pooler that hands each transaction to whichever server
/// connection is free (pgbouncer in transaction or statement mode): a worker's liveness is a
/// lock held by its session, and through such a pooler that lock would sit on a server
/// connection other clients share, so a live worker could look dead, or a dead one alive.
///
/// The probe: `first` notes its server process, a second connection pins a server connection
/// with an open transaction, and `first` asks again. Two client connections to PostgreSQL
/// itself, or through a session-mode pool, never share a server process and `first` never
/// changes its own; through a transaction pooler, the pinned transaction gets the server
/// connection `first` just released (pgbouncer reuses the most recent), and `first` moves to
/// another. Plain queries only: prepared statements do not survive such a pooler either.
pub(super) async fn refuse_a_transaction_pooler(
    url: &super::StateUrl,
    connect_url: &str,
    first: &mut AnyConnection,
    commit: super::schema::Commit,
) -> Result<(), Error> {
    let fail = |e: sqlx::Error| super::state_error(url, e);
    let pooled = || Error::Pooled { url: url.clone() };
    let before = backend_pid(first).await.map_err(fail)?;
    let mut second = AnyConnection::connect(connect_url).await.map_err(fail)?;
    super::schema::configure(&mut second, commit)
        .await
        .map_err(fail)?;
    let mut pinned = second.begin().await.map_err(fail)?;
    let pinned_pid = backend_pid(&mut pinned).await.map_err(fail)?;
    // Through a pooler whose every server connection is pinned, the question waits: bounded.
    let after = tokio::time::timeout(LIVENESS_TIMEOUT, backend_pid(first)).await;
    pinned.rollback().await.map_err(fail)?;
    let _ = second.close().await;
    let Ok(after) = after else {
        return Err(pooled());
    };
    if after.map_err(fail)? == before && pinned_pid != before {
        Ok(())
    } else {
        Err(pooled())
    }
}

/// The server process behind `conn`, asked in the simple query protocol.
async fn backend_pid(conn: &mut AnyConnection) -> Result<i32, sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await?;
    row.try_get::<i32, _>(0)
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
