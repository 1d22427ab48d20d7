//! The tables of a batch's state, how an older state is brought up to date, and the settings
//! every connection runs with (durability, bounded lock waits, a server that notices a vanished
//! worker).

use sqlx::{AnyConnection, Connection};

use super::{Backend, PG_LOCK_CLASS};

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
        budget BIGINT,
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
        error_message TEXT,
        submissions BIGINT NOT NULL DEFAULT 0,
        setbacks BIGINT NOT NULL DEFAULT 0,
        retry_at BIGINT)",
    "CREATE INDEX IF NOT EXISTS gptimage_lines_claimable ON gptimage_lines (state, owner, item)",
    // The state's format: a version that finds a newer one stops before it changes anything.
    "CREATE TABLE IF NOT EXISTS gptimage_format (
        one BIGINT PRIMARY KEY CHECK (one = 1),
        format BIGINT NOT NULL)",
    // Input images the lines name as local files, by content: where each was hosted, until when.
    "CREATE TABLE IF NOT EXISTS gptimage_uploads (
        sha256 TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        expires_at BIGINT NOT NULL)",
];

/// Columns added since the first schema: `(table, column, definition)`. An older state gains
/// them when a worker opens it; their defaults describe its rows truthfully (no submission
/// counted, no setback, nothing held back, no budget).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("gptimage_batch", "budget", "BIGINT"),
    ("gptimage_lines", "submissions", "BIGINT NOT NULL DEFAULT 0"),
    ("gptimage_lines", "setbacks", "BIGINT NOT NULL DEFAULT 0"),
    ("gptimage_lines", "retry_at", "BIGINT"),
    // The state's own identity, which unknown-outcome tokens carry (random, made once).
    ("gptimage_batch", "state_id", "TEXT"),
    // A worker's start and its last heartbeat, and when it was counted out (database clock).
    ("gptimage_workers", "started_ms", "BIGINT"),
    ("gptimage_workers", "heartbeat_ms", "BIGINT"),
    ("gptimage_workers", "dead_ms", "BIGINT"),
    // When the `submitting` commit began (database clock), and the lock-delay its worker
    // declared: the line becomes `unknown` only once both have passed, if its worker died.
    ("gptimage_lines", "sent_ms", "BIGINT"),
    ("gptimage_lines", "fence_ms", "BIGINT"),
    // When a line was held back until a later run (database clock): only a worker started
    // after it takes it again.
    ("gptimage_lines", "held_ms", "BIGINT"),
    // How many times the service refused the line (no task made): their retries are spaced.
    ("gptimage_lines", "refusals", "BIGINT NOT NULL DEFAULT 0"),
    // How many times in a row it went back to `pending` unsent (a 429, a POST never sent, no
    // pacer turn): at MAX_DEFERRALS it is refused for this run, so a run ends by itself.
    ("gptimage_lines", "deferrals", "BIGINT NOT NULL DEFAULT 0"),
];

/// What a state written by an earlier version needs to mean the same now: a line held until
/// a later run was marked with the largest `retry_at` (never reached, so it would never be
/// claimed again); it is held since long ago now, which any run takes.
const UPGRADES: &[&str] = &["UPDATE gptimage_lines SET retry_at = NULL, held_ms = 0
     WHERE retry_at = 9223372036854775807"];

/// Statements that follow the columns: a line's image names are unique without regard to case,
/// so two lines never write one file on a case-insensitive disk (macOS, Windows). Names are
/// ASCII (see [`stem`](crate::stem)), where SQLite's and PostgreSQL's `LOWER` agree.
const AFTER_COLUMNS: &[&str] = &[
    "CREATE UNIQUE INDEX IF NOT EXISTS gptimage_lines_name_nocase ON gptimage_lines (LOWER(name))",
];

/// How a session's commits are made durable: on the server's disk, or (with synchronous
/// standbys) applied on them too, so that a failover to a standby cannot take back a committed
/// `submitting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Commit {
    /// `synchronous_commit = on`: on the server's disk (SQLite: `synchronous = FULL`).
    #[default]
    Local,
    /// `synchronous_commit = remote_apply`: applied on the synchronous standbys as well.
    RemoteApply,
}

/// Settings of every connection.
///
/// SQLite: every commit reaches the disk before it returns, and writers from several processes
/// wait their turn rather than fail.
///
/// PostgreSQL, whatever the server's or the role's defaults: a commit is durable before it
/// returns (`synchronous_commit`: `on`, or `remote_apply` with synchronous standbys, see
/// [`durability`]), so `submitting` is stored before the POST; transactions are `read
/// committed` (a role default of `repeatable read` would make racing workers fail on the batch
/// row); a worker stopped in the middle of a transaction holds its locks at most 30 s
/// (`idle_in_transaction_session_timeout`), a statement waits for a lock at most 90 s
/// (`lock_timeout`, longer, so a live worker outlasts a stuck one) and runs at most 120 s
/// (`statement_timeout`); an idle session is never ended by the server (`idle_session_timeout
/// = 0`, PostgreSQL 14 and newer: the liveness session is mostly idle); and the server ends the
/// session of a client it cannot hear from (a partition, a dead machine, a pulled cable) within
/// about 25 s: keepalive probes after 10 s of silence, 5 s apart, 3 unanswered, and
/// unacknowledged data given up after 25 s. Its liveness lock ends with it. Each is a
/// per-session setting any user may change, managed services included (PostgreSQL 12 or newer,
/// for `tcp_user_timeout`).
pub(super) async fn configure(conn: &mut AnyConnection, commit: Commit) -> Result<(), sqlx::Error> {
    let settings = match conn.backend_name() {
        "SQLite" => {
            "PRAGMA synchronous = FULL; PRAGMA busy_timeout = 60000; PRAGMA foreign_keys = ON"
        }
        "PostgreSQL" => {
            let synchronous = match commit {
                Commit::Local => "SET synchronous_commit = on;",
                Commit::RemoteApply => "SET synchronous_commit = remote_apply;",
            };
            sqlx::raw_sql(synchronous).execute(&mut *conn).await?;
            "SET default_transaction_isolation = 'read committed';
             SET default_transaction_read_only = off;
             SET idle_in_transaction_session_timeout = '30s';
             SET lock_timeout = '90s';
             SET statement_timeout = '120s';
             SELECT set_config('idle_session_timeout', '0', false)
                 WHERE current_setting('server_version_num')::int >= 140000;
             SET tcp_keepalives_idle = 10;
             SET tcp_keepalives_interval = 5;
             SET tcp_keepalives_count = 3;
             SET tcp_user_timeout = 25000"
        }
        _ => return Ok(()),
    };
    sqlx::raw_sql(settings).execute(&mut *conn).await?;
    Ok(())
}

/// How a PostgreSQL state must commit to be durable where it matters: on the server that
/// answers, and on any server a failover could promote. A standby (read-only) is refused; with
/// synchronous standbys (`synchronous_standby_names` set), commits wait until a standby has
/// applied them (`remote_apply`); with standbys that are all asynchronous, a failover can lose
/// the last commits, `submitting` among them, and the line would be sent again: refused unless
/// `options` accept it. Standbys are the physical ones streaming now (not a base backup under
/// way, not a logical subscriber) and those a physical slot waits for while they are away.
/// What the server cannot show (a managed service's storage-level replication, which is
/// synchronous; a standby without a slot that is away) is not judged. SQLite commits locally.
pub(super) async fn durability(
    url: &super::StateUrl,
    conn: &mut AnyConnection,
    options: &super::OpenOptions,
) -> Result<Commit, crate::Error> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(Commit::Local);
    }
    let fail = |e: sqlx::Error| super::state_error(url, e);
    let (standby, sync_names, replicas): (bool, String, i64) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'),
                (SELECT COUNT(*) FROM pg_stat_replication r WHERE r.state <> 'backup'
                 AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                                 WHERE s.active_pid = r.pid AND s.slot_type = 'logical'))
                + (SELECT COUNT(*) FROM pg_replication_slots
                   WHERE slot_type = 'physical' AND NOT active)",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(fail)?;
    if standby {
        return Err(crate::Error::Replication {
            url: url.clone(),
            message: "it is a standby, which cannot record anything: point --state at the \
                      primary"
                .to_owned(),
        });
    }
    if !sync_names.trim().is_empty() {
        return Ok(Commit::RemoteApply);
    }
    if replicas > 0 && !options.accept_async_replicas {
        return Err(crate::Error::Replication {
            url: url.clone(),
            message: format!(
                "it streams to {replicas} standby(s), all asynchronous: a failover to one of \
                 them (automatic with Patroni, CloudNativePG or a managed service) can lose the \
                 last commits, and a line recorded as being sent would be sent again, paid \
                 twice. Make a standby synchronous (synchronous_standby_names), then each \
                 commit waits until it is applied there; or accept the risk with \
                 --accept-async-replicas"
            ),
        });
    }
    Ok(Commit::Local)
}

/// The format this version writes: 2 since submissions are fenced (`sent_ms`, `fence_ms`).
pub(super) const STATE_FORMAT: i64 = 2;

/// A version that writes no fresh commit time (before format 2) cannot take a line to
/// `submitting` in a state of this format: a fleet upgraded halfway never sends unfenced.
const FENCE_SQLITE: &str = "CREATE TRIGGER IF NOT EXISTS gptimage_fence
    BEFORE UPDATE OF state ON gptimage_lines FOR EACH ROW
    WHEN NEW.state = 'submitting' AND OLD.state <> 'submitting' AND NEW.sent_ms IS OLD.sent_ms
    BEGIN SELECT RAISE(ABORT, 'this batch state is written by a newer gptimage (format 2): \
    every worker of a state must run gptimage 0.2 or newer'); END";
const FENCE_POSTGRES: &[&str] = &[
    "CREATE OR REPLACE FUNCTION gptimage_fence() RETURNS trigger LANGUAGE plpgsql AS $f$
     BEGIN RAISE EXCEPTION 'this batch state is written by a newer gptimage (format 2): every \
     worker of a state must run gptimage 0.2 or newer'; END $f$",
    "DO $d$ BEGIN
       IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'gptimage_fence'
                      AND tgrelid = 'gptimage_lines'::regclass) THEN
         CREATE TRIGGER gptimage_fence BEFORE UPDATE OF state ON gptimage_lines FOR EACH ROW
         WHEN (NEW.state = 'submitting' AND OLD.state <> 'submitting'
               AND NEW.sent_ms IS NOT DISTINCT FROM OLD.sent_ms)
         EXECUTE FUNCTION gptimage_fence();
       END IF;
     END $d$",
];

/// Creates the tables when missing and brings an older state's up to date, in one transaction.
/// A state of a newer format than [`STATE_FORMAT`] is left as it is: its format is returned.
pub(super) async fn create(
    conn: &mut AnyConnection,
    backend: &Backend,
) -> Result<Option<i64>, sqlx::Error> {
    // SQLite: the write lock up front, so racing creators wait their turn (busy_timeout) instead
    // of deadlocking when each tries to turn its read into a write (SQLITE_BUSY at once).
    let mut tx = match backend {
        Backend::Sqlite { .. } => conn.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => conn.begin().await?,
    };
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
    let format: Option<i64> = sqlx::query_scalar("SELECT format FROM gptimage_format")
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(newer) = format.filter(|f| *f > STATE_FORMAT) {
        return Ok(Some(newer));
    }
    for (table, column, definition) in ADDED_COLUMNS {
        let columns_query = match backend {
            Backend::Sqlite { .. } => "SELECT name FROM pragma_table_info($1)",
            Backend::Postgres => {
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_name = $1 AND table_schema = ANY (current_schemas(false))"
            }
        };
        let columns: Vec<String> = sqlx::query_scalar(columns_query)
            .bind(*table)
            .fetch_all(&mut *tx)
            .await?;
        if !columns.iter().any(|c| c == column) {
            let alter = format!("ALTER TABLE {table} ADD COLUMN {column} {definition}");
            sqlx::query(sqlx::AssertSqlSafe(alter))
                .execute(&mut *tx)
                .await?;
        }
    }
    for statement in AFTER_COLUMNS.iter().chain(UPGRADES) {
        sqlx::query(*statement).execute(&mut *tx).await?;
    }
    match backend {
        Backend::Sqlite { .. } => {
            sqlx::raw_sql(FENCE_SQLITE).execute(&mut *tx).await?;
        }
        Backend::Postgres => {
            for statement in FENCE_POSTGRES {
                sqlx::raw_sql(*statement).execute(&mut *tx).await?;
            }
        }
    }
    sqlx::query(
        "INSERT INTO gptimage_format (one, format) VALUES (1, $1)
         ON CONFLICT (one) DO UPDATE SET format = excluded.format
         WHERE gptimage_format.format < excluded.format",
    )
    .bind(STATE_FORMAT)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Backend::Sqlite { .. } = backend {
        // WAL: readers never block the writer. The mode is kept in the file.
        sqlx::raw_sql("PRAGMA journal_mode = WAL")
            .execute(&mut *conn)
            .await?;
    }
    Ok(None)
}
