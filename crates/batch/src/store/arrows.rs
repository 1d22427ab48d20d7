//! One function per arrow of the state table in ARCHITECTURE.md, each one committed
//! transaction whose `UPDATE` names the state the line leaves and, for a worker's arrows, that
//! the worker still holds it: a worker counted out can move nothing.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use gptimage::types::CREDITS_PER_TASK;

use super::{MAX_DEFERRALS, Store, Worker, ms};
use crate::Error;
use crate::machine::{Actor, LineState};

/// How [`Store::start_submitting`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitting {
    /// Committed as submitting; its images are named after this.
    Named(String),
    /// The batch's budget allows no more tasks: nothing was committed, nothing may be sent.
    OverBudget {
        /// The budget, in credits.
        budget: u64,
    },
}

/// When a line let go without progress may be claimed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// After this long (its setbacks back off).
    After(Duration),
    /// Not in this run: at the start of a later one (the service no longer knows its task,
    /// will not serve its images, or its wait outlasted the deadline).
    NextRun,
}

/// Names one unknown outcome: the state's identity, then line `line`'s submission number
/// `submission`. `batch-status` prints one for each line of unknown outcome, and
/// `--resubmit-unknown` sends again only the lines whose token the user names, after checking
/// the account holds no task for them. A line sent again that becomes unknown again has a new
/// token, so a command repeated as it was (by a supervisor, say) never resends an outcome nobody
/// has looked at; and a token names its state (random, made when the state was), so one kept
/// from a state since recreated (a new `--out`, another database) is refused by name rather
/// than matched to a line nobody checked.
///
/// ```
/// use gptimage_batch::OutcomeToken;
///
/// let token: OutcomeToken = "a1b2c3.12.1".parse().unwrap();
/// assert_eq!((token.state(), token.line, token.submission), ("a1b2c3", 12, 1));
/// assert_eq!(token.to_string(), "a1b2c3.12.1");
/// assert!("12.1".parse::<OutcomeToken>().is_err(), "no state: an older token");
/// assert!("12".parse::<OutcomeToken>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutcomeToken {
    state: [u8; STATE_ID_LEN],
    /// The line's 1-based number in the file.
    pub line: u64,
    /// Which of its submissions had the unknown outcome (1 for the first).
    pub submission: u64,
}

/// Hex digits of a state's identity in a token.
pub(crate) const STATE_ID_LEN: usize = 6;

impl OutcomeToken {
    /// The token of line `line`'s submission `submission` in the state `state_id` (whose first
    /// six hex digits it keeps).
    pub(crate) fn new(state_id: &str, line: u64, submission: u64) -> Self {
        let mut state = [b'0'; STATE_ID_LEN];
        for (to, from) in state.iter_mut().zip(state_id.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        Self {
            state,
            line,
            submission,
        }
    }

    /// The identity of the state it belongs to (six hex digits).
    pub fn state(&self) -> &str {
        std::str::from_utf8(&self.state).unwrap_or_default()
    }
}

impl fmt::Display for OutcomeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.state(), self.line, self.submission)
    }
}

impl FromStr for OutcomeToken {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let mut parts = text.trim().split('.');
        let parsed = (|| {
            let state = parts.next()?;
            let line: u64 = parts.next()?.parse().ok()?;
            let submission: u64 = parts.next()?.parse().ok()?;
            let shaped = state.len() == STATE_ID_LEN
                && state.bytes().all(|b| b.is_ascii_hexdigit())
                && parts.next().is_none()
                && line > 0;
            shaped.then(|| OutcomeToken::new(state, line, submission))
        })();
        parsed.ok_or_else(|| Error::BadToken(text.to_owned()))
    }
}

/// How long a line refused (or held back) for the `n`th time waits before a later run takes it
/// again: at once the first time, then 30 s, doubling to a day. A supervisor that restarts a
/// failing run in a loop makes requests at this spacing, not at its own restart rate.
pub(crate) fn spacing(n: u32) -> Duration {
    match n {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(30)
            .saturating_mul(1 << (n - 2).min(12))
            .min(Duration::from_secs(24 * 3600)),
    }
}

impl Store {
    /// `pending → submitting`, committed before the POST goes out, with the task's credits
    /// counted against the batch's stored budget (all credits this batch may commit, across
    /// runs and workers) in the same transaction: the budget is exact however many workers
    /// run. The line's images get the first of `names` no other line has, without regard to
    /// case. An error means nothing may be sent.
    ///
    /// The commit notes when it began on the database's clock, and `lock_delay` (see
    /// [`lock_delay`](super::lock_delay)): should the worker be counted out before it records
    /// the answer, the line becomes `unknown` only once both have passed.
    pub async fn start_submitting(
        &self,
        worker: &Worker,
        item: u64,
        line: u64,
        names: &[String],
        prompt: &str,
        lock_delay: Duration,
    ) -> Result<Submitting, Error> {
        for name in names {
            let mut tx = self.write().await?;
            let within = sqlx::query(
                "UPDATE gptimage_batch SET committed = committed + $1
                 WHERE one = 1 AND (budget IS NULL OR committed + $1 <= budget)",
            )
            .bind(CREDITS_PER_TASK as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
            if within.rows_affected() == 0 {
                let budget: Option<i64> =
                    sqlx::query_scalar("SELECT budget FROM gptimage_batch WHERE one = 1")
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|e| self.error(e))?;
                return Ok(Submitting::OverBudget {
                    budget: budget.unwrap_or_default().max(0) as u64,
                });
            }
            let result = sqlx::query(self.sql(
                "UPDATE gptimage_lines SET state = 'submitting', worker = $2, line = $3,
                 name = $4, prompt = $5, submissions = submissions + 1, retry_at = NULL,
                 held_ms = NULL, sent_ms = NOW_MS, fence_ms = $6
                 WHERE item = $1 AND state = 'pending' AND owner = $2
                 AND EXISTS (SELECT 1 FROM gptimage_workers WHERE id = $2 AND status = 'running')",
            ))
            .bind(item as i64)
            .bind(worker.id())
            .bind(line as i64)
            .bind(name.clone())
            .bind(prompt.to_owned())
            .bind(ms(lock_delay))
            .execute(&mut *tx)
            .await;
            match result {
                Ok(done) if done.rows_affected() == 1 => {
                    tx.commit().await.map_err(|e| self.error(e))?;
                    return Ok(Submitting::Named(name.clone()));
                }
                Ok(_) => return Err(self.lost()),
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
            .bind(worker.id())
            .bind(line as i64)
            .bind(prompt.to_owned())
            .bind(reason.to_owned()),
            0,
        )
        .await
    }

    /// `submitting → submitted`: the service named the task. Also from `unknown`, for a worker
    /// presumed dead that learned its answer after all (the id is better than no id).
    pub async fn submitted(&self, worker: &Worker, item: u64, task_id: &str) -> Result<(), Error> {
        self.transition(
            sqlx::query(
                "UPDATE gptimage_lines SET state = 'submitted', task_id = $3, error_kind = NULL,
                 error_message = NULL, setbacks = 0, deferrals = 0, owner = $2
                 WHERE item = $1 AND worker = $2 AND state IN ('submitting', 'unknown')",
            )
            .bind(item as i64)
            .bind(worker.id())
            .bind(task_id.to_owned()),
            0,
        )
        .await
    }

    /// `submitting → refused` (no task exists, so a later run may send it again once its
    /// spacing has passed: see `spacing`, by its number of refusals, `refusals` before this
    /// one; its credits are not committed) or `submitting → unknown` (a task may exist: its
    /// credits stay counted).
    pub async fn not_submitted(
        &self,
        worker: &Worker,
        item: u64,
        (state, refusals): (LineState, u32),
        kind: &str,
        message: &str,
    ) -> Result<(), Error> {
        debug_assert!(LineState::Submitting.may_become(state, Actor::Worker));
        let (refund, count, wait) = if state == LineState::Refused {
            (CREDITS_PER_TASK, 1, spacing(refusals.saturating_add(1)))
        } else {
            (0, 0, Duration::ZERO)
        };
        self.transition(
            sqlx::query(self.sql(
                "UPDATE gptimage_lines SET state = $3, owner = NULL, error_kind = $4,
                 error_message = $5, refusals = refusals + $6, retry_at = NOW_MS + $7
                 WHERE item = $1 AND worker = $2 AND state = 'submitting'",
            ))
            .bind(item as i64)
            .bind(worker.id())
            .bind(state.as_str())
            .bind(kind.to_owned())
            .bind(message.to_owned())
            .bind(count)
            .bind(ms(wait)),
            refund,
        )
        .await
    }

    /// `submitting → pending`: the submission was not sent after all (its send window closed,
    /// the pacer found it no turn) or the service answered 429; either way no task was made, so
    /// its credits are given back, and it is claimable again after `after` (the service's
    /// `Retry-After`, or the pacer's spacing), by any worker. The only arrow back to `pending`
    /// a worker takes. Deferred [`MAX_DEFERRALS`] times in a row, it is `refused` instead
    /// (spaced as refusals are, for a later run): a service that answers 429 for ever, or a
    /// state too slow for any send window, ends the run rather than loop in it.
    pub async fn unsent(
        &self,
        worker: &Worker,
        claim: &super::Claim,
        (kind, message): (&str, &str),
        after: Duration,
    ) -> Result<(), Error> {
        debug_assert!(LineState::Submitting.may_become(LineState::Pending, Actor::Worker));
        self.defer_from(
            "submitting",
            worker,
            claim,
            (kind, message),
            after,
            CREDITS_PER_TASK,
        )
        .await
    }

    /// `pending → pending`, let go unsent and counted as deferred (no pacer turn came for it
    /// within the wait timeout), claimable again after `after`; or `pending → refused` once
    /// deferred [`MAX_DEFERRALS`] times in a row, as for [`unsent`](Self::unsent).
    pub async fn defer(
        &self,
        worker: &Worker,
        claim: &super::Claim,
        (kind, message): (&str, &str),
        after: Duration,
    ) -> Result<(), Error> {
        self.defer_from("pending", worker, claim, (kind, message), after, 0)
            .await
    }

    async fn defer_from(
        &self,
        from: &'static str,
        worker: &Worker,
        claim: &super::Claim,
        (kind, message): (&str, &str),
        after: Duration,
        refund: u64,
    ) -> Result<(), Error> {
        let holder = if from == "submitting" {
            "worker"
        } else {
            "owner"
        };
        if claim.deferrals.saturating_add(1) >= MAX_DEFERRALS {
            debug_assert!(
                from.parse::<LineState>()
                    .is_ok_and(|f| f.may_become(LineState::Refused, Actor::Worker))
            );
            let message = format!(
                "{message} (deferred {MAX_DEFERRALS} times in a row without being sent: no task \
                 was made; a later run tries it again, spaced)"
            );
            let sql = format!(
                "UPDATE gptimage_lines SET state = 'refused', owner = NULL, error_kind = $3,
                 error_message = $4, refusals = refusals + 1, deferrals = 0,
                 retry_at = NOW_MS + $5
                 WHERE item = $1 AND {holder} = $2 AND state = '{from}'"
            );
            return self
                .transition(
                    sqlx::query(self.sql(&sql))
                        .bind(claim.item as i64)
                        .bind(worker.id())
                        .bind(kind.to_owned())
                        .bind(message)
                        .bind(ms(spacing(claim.refusals.saturating_add(1)))),
                    refund,
                )
                .await;
        }
        let sql = format!(
            "UPDATE gptimage_lines SET state = 'pending', owner = NULL, error_kind = $3,
             error_message = $4, retry_at = NOW_MS + $5, deferrals = deferrals + 1
             WHERE item = $1 AND {holder} = $2 AND state = '{from}'"
        );
        self.transition(
            sqlx::query(self.sql(&sql))
                .bind(claim.item as i64)
                .bind(worker.id())
                .bind(kind.to_owned())
                .bind(message.to_owned())
                .bind(ms(after)),
            refund,
        )
        .await
    }

    /// `submitted → done`, with where its images went (already on disk, and their folder
    /// synced, so `done` never outlives its files).
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
                 credits = $5, error_kind = NULL, error_message = NULL, setbacks = 0
                 WHERE item = $1 AND owner = $2 AND state = 'submitted'",
            )
            .bind(item as i64)
            .bind(worker.id())
            .bind(serde_json::to_string(images).unwrap_or_default())
            .bind(serde_json::to_string(&files).unwrap_or_default())
            .bind(credits.map(|c| c as i64)),
            0,
        )
        .await
    }

    /// `submitted → failed`: the task ended `FAILED`. Its credits are given back to the budget
    /// as the service says it gave them back: all of them unless its status names what it
    /// consumed (`credits`), then the rest.
    pub async fn failed(
        &self,
        worker: &Worker,
        item: u64,
        message: &str,
        credits: Option<u64>,
    ) -> Result<(), Error> {
        self.transition(
            sqlx::query(
                "UPDATE gptimage_lines SET state = 'failed', owner = NULL, credits = $3,
                 error_kind = 'task_failed', error_message = $4, setbacks = 0
                 WHERE item = $1 AND owner = $2 AND state = 'submitted'",
            )
            .bind(item as i64)
            .bind(worker.id())
            .bind(credits.map(|c| c.min(i64::MAX as u64) as i64))
            .bind(message.to_owned()),
            CREDITS_PER_TASK.saturating_sub(credits.unwrap_or(0)),
        )
        .await
    }

    /// Lets go of a line the worker holds without moving it and through no fault of the line:
    /// a pending line it did not send, or a submitted one whose wait was interrupted (the user
    /// stopped the run, the account was refused, the output folder failed). The reason, if any,
    /// is kept for reports until the line moves on.
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
            .bind(worker.id())
            .bind(reason.map(|(k, _)| k.to_owned()))
            .bind(reason.map(|(_, m)| m.to_owned())),
            0,
        )
        .await
    }

    /// Lets go of a submitted line that could not progress (its wait or download failed), with
    /// the reason, counting one more setback (`setbacks` before this one), and holds it back as
    /// `retry` says: for a while (its retries back off), or until a later run, which takes it
    /// once the spacing its holds have earned has passed (`spacing`). Every time is the
    /// database's. It stays `submitted` with its task id: nothing is ever resubmitted for it.
    pub async fn set_back(
        &self,
        worker: &Worker,
        item: u64,
        (kind, message): (&str, &str),
        (retry, setbacks): (Retry, u32),
    ) -> Result<(), Error> {
        let (wait, held) = match retry {
            Retry::After(delay) => (delay, false),
            Retry::NextRun => (spacing(setbacks.saturating_add(1)), true),
        };
        self.transition(
            sqlx::query(self.sql(
                "UPDATE gptimage_lines SET owner = NULL, error_kind = $3, error_message = $4,
                 setbacks = setbacks + 1, retry_at = NOW_MS + $5,
                 held_ms = CASE WHEN $6 = 1 THEN NOW_MS ELSE NULL END
                 WHERE item = $1 AND owner = $2 AND state = 'submitted'",
            ))
            .bind(item as i64)
            .bind(worker.id())
            .bind(kind.to_owned())
            .bind(message.to_owned())
            .bind(ms(wait))
            .bind(i64::from(held)),
            0,
        )
        .await
    }

    /// A new run is a retry of what was refused (no task was made): refused lines whose
    /// spacing has passed become pending. Lines held back need nothing: a worker started after
    /// their hold takes them once their spacing has passed. Returns how many refused lines
    /// became pending.
    pub async fn start_run(&self) -> Result<u64, Error> {
        let refused = sqlx::query(self.sql(
            "UPDATE gptimage_lines SET state = 'pending', owner = NULL, error_kind = NULL,
             error_message = NULL, retry_at = NULL
             WHERE state = 'refused' AND (retry_at IS NULL OR retry_at <= NOW_MS)",
        ))
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?
        .rows_affected();
        Ok(refused)
    }

    /// `unknown → pending`, only on the user's explicit word: each of `tokens` names an
    /// unknown outcome the user checked (the account holds no task for it). A line whose
    /// outcome is unknown again since (a later submission) does not match its old token and is
    /// not sent. Their credits are no longer counted as committed: the user says no task
    /// exists. Returns the tokens that matched no line of unknown outcome.
    ///
    /// A token of another state (one since recreated, or another batch's) is refused by name,
    /// and nothing is resent.
    pub async fn resubmit_unknown(
        &self,
        tokens: &[OutcomeToken],
    ) -> Result<Vec<OutcomeToken>, Error> {
        let state = self.state_id().await?;
        if let Some(foreign) = tokens.iter().find(|t| !state.starts_with(t.state())) {
            return Err(Error::ForeignToken {
                token: foreign.to_string(),
                url: self.url.clone(),
                state: state.chars().take(super::arrows::STATE_ID_LEN).collect(),
            });
        }
        let mut tx = self.write().await?;
        let mut unmatched = Vec::new();
        let mut moved = 0;
        for token in tokens {
            let (line, submission) = (
                token.line.min(i64::MAX as u64) as i64,
                token.submission.min(i64::MAX as u64) as i64,
            );
            // Settled only: nothing its worker sent can still arrive (see `lock_delay`).
            let done = sqlx::query(self.sql(
                "UPDATE gptimage_lines SET state = 'pending', owner = NULL, task_id = NULL,
                 error_kind = NULL, error_message = NULL, retry_at = NULL, sent_ms = NULL,
                 fence_ms = NULL, deferrals = 0
                 WHERE state = 'unknown' AND line = $1 AND submissions = $2
                 AND (sent_ms IS NULL OR sent_ms + COALESCE(fence_ms, 0) <= NOW_MS)",
            ))
            .bind(line)
            .bind(submission)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected();
            if done == 0 {
                let unsettled: Option<i64> = sqlx::query_scalar(self.sql(
                    "SELECT sent_ms + COALESCE(fence_ms, 0) - NOW_MS FROM gptimage_lines
                     WHERE state = 'unknown' AND line = $1 AND submissions = $2
                     AND sent_ms IS NOT NULL",
                ))
                .bind(line)
                .bind(submission)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.error(e))?;
                if let Some(wait) = unsettled.filter(|ms| *ms > 0) {
                    return Err(Error::Unsettled {
                        token: token.to_string(),
                        wait: Duration::from_millis(wait as u64),
                    });
                }
                unmatched.push(*token);
            }
            moved += done;
        }
        self.give_back(&mut tx, moved * CREDITS_PER_TASK).await?;
        tx.commit().await.map_err(|e| self.error(e))?;
        Ok(unmatched)
    }

    /// One arrow: `query` must move exactly one line (else this worker no longer holds it),
    /// giving `refund` committed credits back in the same transaction.
    async fn transition(
        &self,
        query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>,
        refund: u64,
    ) -> Result<(), Error> {
        if refund == 0 {
            // One statement is a transaction of its own.
            return match query.execute(&self.pool).await {
                Ok(done) if done.rows_affected() == 1 => Ok(()),
                Ok(_) => Err(self.lost()),
                Err(e) => Err(self.error(e)),
            };
        }
        let mut tx = self.write().await?;
        let moved = query.execute(&mut *tx).await.map_err(|e| self.error(e))?;
        if moved.rows_affected() != 1 {
            return Err(self.lost());
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
}
