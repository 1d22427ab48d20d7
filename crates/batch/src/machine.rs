//! A line's life as an explicit state machine: its states, and who may move a line between them.
//!
//! The database is where a line's state lives; this module is the rule book every statement of
//! [`Store`](crate::Store) follows. Each transition is one committed transaction, and the store's SQL for
//! it names the `from` state in its `WHERE` clause, so a transition that this table does not allow
//! cannot happen even when two workers race.
//!
//! ```text
//!            claim              pacer turn, commit, POST         answer: a task id
//!  (unread) ───────▶ pending ──────────────────────▶ submitting ─────────────────▶ submitted
//!                    │  ▲  ▲ ▲                        │ │    │                      │   │
//!          invalid ◀─┘  │  │ └── 429, or not sent ────┘ │    │ no answer, or the    │   └─▶ done
//!                       │  │     (proven: no task)      │    │ worker died (after   │
//!                       │  └── refused ◀──────────────--┘    │ its lock-delay)      └─────▶ failed
//!                       │      (no task was made; pending    ▼
//!                       │       at a later run, spaced)    unknown
//!                       └──────────────────────────────────┘ only by the user (--resubmit-unknown)
//! ```
//!
//! A `submitting` line returns to `pending` only on an answer that proves no task was made:
//! the service's 429, or the client's own word that the POST never left (its send window
//! closed before an attempt could start). Otherwise its POST may have reached the service, and
//! the API has no idempotency key, so only the user, having checked the account, can send it
//! again.

use std::fmt;
use std::str::FromStr;

/// Where a line of a batch is in its life.
///
/// ```
/// use gptimage_batch::LineState;
///
/// assert_eq!("submitting".parse::<LineState>().unwrap(), LineState::Submitting);
/// assert!(LineState::Submitting.may_have_paid());
/// assert!(!LineState::Refused.may_have_paid());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LineState {
    /// Read and valid, not yet sent. Claimable when no worker holds it.
    Pending,
    /// Committed as about to be sent: its POST may be on the wire. Never claimable again.
    Submitting,
    /// The service answered with a task id; the task is being (or will be) waited for.
    Submitted,
    /// The task succeeded and its images are on disk.
    Done,
    /// The task ended `FAILED` (the service gives its credits back).
    Failed,
    /// The service refused the submission, so no task exists; tried again at the next start.
    Refused,
    /// The submission may have created a task whose id was never learned.
    Unknown,
    /// The line cannot be sent as it is (not JSON, or a rule of the API is broken).
    Invalid,
}

/// Who moves a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The worker that holds the line.
    Worker,
    /// Another worker that found the holder dead.
    Reaper,
    /// A worker starting up (refused lines get another chance).
    Start,
    /// The user, explicitly (`--resubmit-unknown`).
    User,
}

impl LineState {
    /// Every state, in the order a line normally goes through them.
    pub const ALL: [LineState; 8] = [
        LineState::Pending,
        LineState::Submitting,
        LineState::Submitted,
        LineState::Done,
        LineState::Failed,
        LineState::Refused,
        LineState::Unknown,
        LineState::Invalid,
    ];

    /// The name stored in the database and printed in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            LineState::Pending => "pending",
            LineState::Submitting => "submitting",
            LineState::Submitted => "submitted",
            LineState::Done => "done",
            LineState::Failed => "failed",
            LineState::Refused => "refused",
            LineState::Unknown => "unknown",
            LineState::Invalid => "invalid",
        }
    }

    /// Whether a task may exist (and be charged) for a line in this state.
    pub fn may_have_paid(self) -> bool {
        matches!(
            self,
            LineState::Submitting
                | LineState::Submitted
                | LineState::Done
                | LineState::Failed
                | LineState::Unknown
        )
    }

    /// Whether nothing more happens to the line without the user (or a new run, for `Refused`).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            LineState::Done
                | LineState::Failed
                | LineState::Refused
                | LineState::Unknown
                | LineState::Invalid
        )
    }

    /// Whether `actor` may move a line from `self` to `to`. This is the whole rule book: the
    /// store's statements implement exactly these arrows, and a test checks that every other
    /// arrow is refused.
    pub fn may_become(self, to: LineState, actor: Actor) -> bool {
        use LineState::*;
        match (actor, self, to) {
            (Actor::Worker, Pending, Submitting | Invalid) => true,
            // Deferred too often in a row without being sent (no pacer turn for it).
            (Actor::Worker, Pending, Refused) => true,
            (Actor::Worker, Submitting, Submitted | Refused | Unknown) => true,
            // Only on an answer that proves no task was made (a 429, or never sent).
            (Actor::Worker, Submitting, Pending) => true,
            // A worker that was presumed dead but learned its task id still records it.
            (Actor::Worker, Unknown, Submitted) => true,
            (Actor::Worker, Submitted, Done | Failed) => true,
            (Actor::Reaper, Submitting, Unknown) => true,
            (Actor::Start, Refused, Pending) => true,
            (Actor::User, Unknown, Pending) => true,
            _ => false,
        }
    }
}

impl fmt::Display for LineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`LineState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a line state")]
pub struct UnknownState(pub String);

impl FromStr for LineState {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        LineState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownState(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in LineState::ALL {
            assert_eq!(state.as_str().parse::<LineState>(), Ok(state));
        }
        assert!("paid".parse::<LineState>().is_err());
    }

    #[test]
    fn nothing_that_may_have_paid_becomes_pending_but_by_the_user() {
        for from in LineState::ALL.into_iter().filter(|s| s.may_have_paid()) {
            for actor in [Actor::Worker, Actor::Reaper, Actor::Start] {
                // The sending worker's own arrow back, taken only on a proof that no task was
                // made (`Store::unsent`): nobody else's, and from no other state.
                let unsent = from == LineState::Submitting && actor == Actor::Worker;
                assert_eq!(
                    from.may_become(LineState::Pending, actor),
                    unsent,
                    "{from} -> pending by {actor:?}"
                );
            }
        }
        assert!(LineState::Unknown.may_become(LineState::Pending, Actor::User));
        assert!(!LineState::Submitted.may_become(LineState::Pending, Actor::User));
    }

    #[test]
    fn only_a_pending_line_is_sent() {
        for from in LineState::ALL {
            for actor in [Actor::Worker, Actor::Reaper, Actor::Start, Actor::User] {
                let allowed = from.may_become(LineState::Submitting, actor);
                assert_eq!(
                    allowed,
                    from == LineState::Pending && actor == Actor::Worker,
                    "{from} -> submitting by {actor:?}"
                );
            }
        }
    }

    #[test]
    fn the_reaper_only_turns_submitting_into_unknown() {
        let mut arrows = Vec::new();
        for from in LineState::ALL {
            for to in LineState::ALL {
                if from.may_become(to, Actor::Reaper) {
                    arrows.push((from, to));
                }
            }
        }
        assert_eq!(arrows, [(LineState::Submitting, LineState::Unknown)]);
    }

    #[test]
    fn final_states_leave_only_by_a_new_start_or_the_user() {
        for from in LineState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in LineState::ALL {
                if from.may_become(to, Actor::Worker) {
                    assert_eq!((from, to), (LineState::Unknown, LineState::Submitted));
                }
                assert!(!from.may_become(to, Actor::Reaper));
            }
        }
    }
}
