//! Claiming a line: a line let go (never one held back until a later run, nor one waiting out a
//! setback), else the next unread line of the file. One worker wins each line.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Store, Worker};
use crate::Error;
use crate::machine::LineState;

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
    /// How many times in a row it was let go without progress (its retries back off).
    pub setbacks: u32,
    /// How many times the service refused it (no task made): their retries are spaced.
    pub refusals: u32,
    /// How many times in a row it went back unsent (a 429, a POST never sent, no pacer turn).
    pub deferrals: u32,
}

/// What makes a line let go claimable now by a worker that started at `$2` (database clock):
/// nobody holds it, it can still progress, its retry time (if any) has come, and it is not held
/// back until a later run than the worker's own (a line held back before the worker started is
/// the worker's to take, once its spacing has passed).
const CLAIMABLE: &str = "owner IS NULL AND state IN ('pending', 'submitted')
    AND (retry_at IS NULL OR retry_at <= NOW_MS) AND (held_ms IS NULL OR held_ms < $2)";

impl Store {
    /// Claims the next line for `worker`: first a line left claimable (pending, or submitted and
    /// waiting for someone to wait for it), then the next unread line of the file. One worker
    /// wins each line: the claim is a single conditional statement (PostgreSQL skips rows other
    /// claims have locked), or a counter moved under the database's write lock.
    pub async fn claim(&self, worker: &Worker) -> Result<Option<Claim>, Error> {
        let skip_locked = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite { .. } => "",
        };
        let claim_existing = format!(
            "UPDATE gptimage_lines SET owner = $1, held_ms = NULL WHERE item = (
                SELECT item FROM gptimage_lines WHERE {CLAIMABLE}
                ORDER BY item LIMIT 1 {skip_locked})
             AND {CLAIMABLE}
             AND EXISTS (SELECT 1 FROM gptimage_workers WHERE id = $1 AND status = 'running')
             RETURNING item, state, task_id, name, prompt, setbacks, refusals, deferrals"
        );
        if let Some(row) = sqlx::query(self.sql(&claim_existing))
            .bind(worker.id())
            .bind(worker.started_ms())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))?
        {
            return self.read_claim(&row).map(Some);
        }
        let mut tx = self.write().await?;
        let item: Option<i64> = sqlx::query_scalar(
            "UPDATE gptimage_batch SET claimed = claimed + 1 WHERE one = 1 AND claimed < items
             AND EXISTS (SELECT 1 FROM gptimage_workers WHERE id = $1 AND status = 'running')
             RETURNING claimed - 1",
        )
        .bind(worker.id())
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
        .bind(worker.id())
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
            setbacks: 0,
            refusals: 0,
            deferrals: 0,
        }))
    }

    fn read_claim(&self, row: &AnyRow) -> Result<Claim, Error> {
        let state: String = row.try_get("state").map_err(|e| self.error(e))?;
        let setbacks: i64 = row.try_get("setbacks").map_err(|e| self.error(e))?;
        let refusals: i64 = row.try_get("refusals").map_err(|e| self.error(e))?;
        let deferrals: i64 = row.try_get("deferrals").map_err(|e| self.error(e))?;
        Ok(Claim {
            item: row.try_get::<i64, _>("item").map_err(|e| self.error(e))? as u64,
            state: state.parse().map_err(|e| self.error(e))?,
            task_id: row.try_get("task_id").map_err(|e| self.error(e))?,
            name: row.try_get("name").map_err(|e| self.error(e))?,
            prompt: row.try_get("prompt").map_err(|e| self.error(e))?,
            setbacks: setbacks.clamp(0, i64::from(u32::MAX)) as u32,
            refusals: refusals.clamp(0, i64::from(u32::MAX)) as u32,
            deferrals: deferrals.clamp(0, i64::from(u32::MAX)) as u32,
        })
    }

    /// How long until the next line waiting out a setback (or a 429's `Retry-After`) may be
    /// claimed again, if any is (on the database's clock). A line held back until a later run
    /// does not count, whoever held it: a run takes such a line if its spacing has passed when
    /// it looks, and never waits for it, so a supervisor that restarts a failing run finds it
    /// ending at once while the spacing holds.
    pub async fn next_retry(&self, _worker: &Worker) -> Result<Option<std::time::Duration>, Error> {
        let next: Option<i64> = sqlx::query_scalar(self.sql(
            "SELECT MIN(retry_at) - NOW_MS FROM gptimage_lines WHERE owner IS NULL
             AND state IN ('pending', 'submitted') AND retry_at IS NOT NULL
             AND held_ms IS NULL",
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        Ok(next.map(|left| std::time::Duration::from_millis(left.max(0) as u64)))
    }
}
