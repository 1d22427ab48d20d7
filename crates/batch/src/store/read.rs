//! Reading a batch's state for reports, never holding more than a page of it: counts by state,
//! lines a page at a time, and the lines that are not done summarized by reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{OutcomeToken, Store};
use crate::Error;
use crate::machine::LineState;

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
    /// message that says what to do.
    pub error: Option<(String, String)>,
    /// How many times it was submitted (a line sent again after an unknown outcome counts
    /// each).
    pub submissions: u64,
    /// Whether it is held back until a later run: it could not progress in this one.
    pub held: bool,
    /// How long until it may be tried again (a setback's backoff, a 429's `Retry-After`, or the
    /// spacing a held or refused line has earned), on the database's clock; `None` when nothing
    /// holds it back.
    pub retry_in: Option<std::time::Duration>,
    /// The token naming its unknown outcome (state, line, submission), for
    /// `--resubmit-unknown`; `None` unless its outcome is unknown and settled.
    #[serde(serialize_with = "serialize_token")]
    pub token: Option<OutcomeToken>,
    /// For an unknown outcome not yet settled: how long what its worker sent may still reach
    /// the service (the commit's start plus the sender's lock-delay, on the database's clock).
    /// Until then no check of the account can tell, and it has no token.
    pub settles_in: Option<std::time::Duration>,
}

impl LineRecord {
    /// The token naming this line's unknown outcome, for `--resubmit-unknown`; `None` unless
    /// the line's outcome is unknown and settled (see [`settles_in`](Self::settles_in)).
    pub fn outcome_token(&self) -> Option<OutcomeToken> {
        self.token.filter(|_| self.state == LineState::Unknown)
    }
}

fn serialize_token<S: serde::Serializer>(
    token: &Option<OutcomeToken>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match token {
        Some(token) => s.serialize_str(&token.to_string()),
        None => s.serialize_none(),
    }
}

fn serialize_state<S: serde::Serializer>(state: &LineState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.as_str())
}

/// Counts of a batch's lines by state, and what it has cost.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Progress {
    /// The batch file's SHA-256.
    pub batch_id: String,
    /// The state's own identity (random, made with it), which its tokens begin with.
    pub state_id: String,
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
    /// The batch's credit budget, if one was set (it holds for every worker).
    pub budget: Option<u64>,
    /// Submitted lines held back until a later run: they could not progress in this one.
    pub held: u64,
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

/// The lines that are not done for one reason: their state and error kind, how many, and the
/// first few, in file order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reason {
    /// The lines' state.
    #[serde(serialize_with = "serialize_state")]
    pub state: LineState,
    /// Their error kind (`api`, `download`, `outcome_unknown`, …); empty when none was kept.
    pub kind: String,
    /// How many lines.
    pub count: u64,
    /// The first few of them, whole.
    pub first: Vec<LineRecord>,
}

/// The columns of a [`LineRecord`].
const RECORD: &str = "item, line, state, name, prompt, task_id, images, files, credits, \
                      error_kind, error_message, submissions, held_ms, \
                      CASE WHEN retry_at IS NULL THEN NULL ELSE retry_at - NOW_MS END \
                      AS retry_in_ms, \
                      CASE WHEN state = 'unknown' AND sent_ms IS NOT NULL \
                      AND sent_ms + COALESCE(fence_ms, 0) > NOW_MS \
                      THEN sent_ms + COALESCE(fence_ms, 0) - NOW_MS END AS settles_in_ms, \
                      (SELECT state_id FROM gptimage_batch WHERE one = 1) AS state_id";

/// Every claimed line.
const ALL: &str = "TRUE";
/// The lines a report lists as not done: claimed, and neither done nor merely pending.
const NOT_DONE: &str = "state NOT IN ('done', 'pending')";
/// The lines of unknown outcome.
const UNKNOWN: &str = "state = 'unknown'";

impl Store {
    /// How the batch stands: counts by state, credits, workers.
    pub async fn progress(&self) -> Result<Progress, Error> {
        let batch = sqlx::query(
            "SELECT batch_id, file_name, items, committed, budget, state_id FROM gptimage_batch
             WHERE one = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error(e))?
        .ok_or_else(|| Error::NoState {
            url: self.url.clone(),
        })?;
        let mut progress = Progress {
            batch_id: batch.try_get("batch_id").map_err(|e| self.error(e))?,
            state_id: batch
                .try_get::<Option<String>, _>("state_id")
                .map_err(|e| self.error(e))?
                .unwrap_or_default(),
            file_name: batch.try_get("file_name").map_err(|e| self.error(e))?,
            lines: batch
                .try_get::<i64, _>("items")
                .map_err(|e| self.error(e))? as u64,
            committed: batch
                .try_get::<i64, _>("committed")
                .map_err(|e| self.error(e))? as u64,
            budget: batch
                .try_get::<Option<i64>, _>("budget")
                .map_err(|e| self.error(e))?
                .map(|b| b.max(0) as u64),
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
        progress.credits = self
            .count("SELECT CAST(COALESCE(SUM(credits), 0) AS BIGINT) FROM gptimage_lines")
            .await?;
        progress.held = self
            .count(
                "SELECT COUNT(*) FROM gptimage_lines WHERE state = 'submitted'
                 AND held_ms IS NOT NULL AND owner IS NULL",
            )
            .await?;
        progress.workers = self
            .count("SELECT COUNT(*) FROM gptimage_workers WHERE status = 'running'")
            .await?;
        Ok(progress)
    }

    async fn count(&self, sql: &'static str) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(n.max(0) as u64)
    }

    /// Up to `limit` claimed lines after item `after` (or from the start), in file order. Page
    /// through a large batch with the last item seen, or with [`pages`](Self::pages).
    pub async fn lines(&self, after: Option<u64>, limit: u64) -> Result<Vec<LineRecord>, Error> {
        self.page(ALL, after, limit).await
    }

    /// Like [`lines`](Self::lines), but only the lines a report lists as not done: neither
    /// done nor merely pending.
    pub async fn not_done(&self, after: Option<u64>, limit: u64) -> Result<Vec<LineRecord>, Error> {
        self.page(NOT_DONE, after, limit).await
    }

    async fn page(
        &self,
        filter: &'static str,
        after: Option<u64>,
        limit: u64,
    ) -> Result<Vec<LineRecord>, Error> {
        let sql = format!(
            "SELECT {RECORD} FROM gptimage_lines WHERE item > $1 AND {filter}
             ORDER BY item LIMIT $2"
        );
        let rows = sqlx::query(self.sql(&sql))
            .bind(after.map_or(-1, |a| a as i64))
            .bind(limit.min(i64::MAX as u64) as i64)
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
            filter: ALL,
        }
    }

    /// Like [`pages`](Self::pages), but only the lines that are not done (see
    /// [`not_done`](Self::not_done)).
    pub fn pages_not_done(&self, page: u64) -> Pages<'_> {
        Pages {
            filter: NOT_DONE,
            ..self.pages(page)
        }
    }

    /// Like [`pages`](Self::pages), but only the lines of unknown outcome, each with its
    /// [`outcome_token`](LineRecord::outcome_token).
    pub fn pages_unknown(&self, page: u64) -> Pages<'_> {
        Pages {
            filter: UNKNOWN,
            ..self.pages(page)
        }
    }

    /// One line's record, if the line has been claimed.
    pub async fn line(&self, item: u64) -> Result<Option<LineRecord>, Error> {
        let sql = format!("SELECT {RECORD} FROM gptimage_lines WHERE item = $1");
        let row = sqlx::query(self.sql(&sql))
            .bind(item as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        row.map(|row| self.read_record(&row)).transpose()
    }

    /// The lines that are not done, by reason (state and error kind), each with its count and
    /// its first `first` lines: what a report shows of a batch of any size, in memory that
    /// does not grow with it.
    pub async fn reasons(&self, first: u64) -> Result<Vec<Reason>, Error> {
        let groups = sqlx::query(
            "SELECT state, COALESCE(error_kind, '') AS kind, COUNT(*) AS n FROM gptimage_lines
             WHERE state NOT IN ('done', 'pending') GROUP BY state, COALESCE(error_kind, '')
             ORDER BY MIN(item)",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let mut reasons = Vec::with_capacity(groups.len());
        for group in groups {
            let state: String = group.try_get("state").map_err(|e| self.error(e))?;
            let kind: String = group.try_get("kind").map_err(|e| self.error(e))?;
            let count = group.try_get::<i64, _>("n").map_err(|e| self.error(e))? as u64;
            let sql = format!(
                "SELECT {RECORD} FROM gptimage_lines WHERE state = $1
                 AND COALESCE(error_kind, '') = $2 ORDER BY item LIMIT $3"
            );
            let rows = sqlx::query(self.sql(&sql))
                .bind(state.clone())
                .bind(kind.clone())
                .bind(first.min(i64::MAX as u64) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
            reasons.push(Reason {
                state: state.parse().map_err(|e| self.error(e))?,
                kind,
                count,
                first: rows
                    .iter()
                    .map(|row| self.read_record(row))
                    .collect::<Result<_, _>>()?,
            });
        }
        Ok(reasons)
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
        let held_ms: Option<i64> = row.try_get("held_ms").map_err(|e| self.error(e))?;
        let retry_in: Option<i64> = row.try_get("retry_in_ms").map_err(|e| self.error(e))?;
        let state: LineState = state.parse().map_err(|e| self.error(e))?;
        let line = row.try_get::<i64, _>("line").map_err(|e| self.error(e))? as u64;
        let submissions = row
            .try_get::<i64, _>("submissions")
            .map_err(|e| self.error(e))?
            .max(0) as u64;
        let settles_in: Option<i64> = row.try_get("settles_in_ms").map_err(|e| self.error(e))?;
        let settles_in = settles_in
            .filter(|ms| *ms > 0)
            .map(|ms| std::time::Duration::from_millis(ms as u64));
        let token = match (state, get_text("state_id")?) {
            (LineState::Unknown, Some(id)) if settles_in.is_none() => {
                Some(OutcomeToken::new(&id, line, submissions))
            }
            _ => None,
        };
        Ok(LineRecord {
            item: row.try_get::<i64, _>("item").map_err(|e| self.error(e))? as u64,
            line,
            state,
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
            submissions,
            held: state == LineState::Submitted && held_ms.is_some(),
            retry_in: retry_in
                .filter(|ms| *ms > 0)
                .map(|ms| std::time::Duration::from_millis(ms as u64)),
            token,
            settles_in,
        })
    }
}

/// The claimed lines of a batch, a page at a time ([`Store::pages`]).
#[derive(Debug)]
pub struct Pages<'a> {
    store: &'a Store,
    page: u64,
    after: Option<u64>,
    done: bool,
    /// Which lines: a `WHERE` condition of this module's.
    filter: &'static str,
}

impl Pages<'_> {
    /// The next page, or `None` after the last line.
    pub async fn next(&mut self) -> Result<Option<Vec<LineRecord>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = self.store.page(self.filter, self.after, self.page).await?;
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
