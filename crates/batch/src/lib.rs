//! Durable batches of GPT Image 1.5 tasks: a JSON-lines file of requests, run by one worker or
//! many, where every line is paid for once whatever happens.
//!
//! A batch's state lives in a database: SQLite by default (a file beside the images, nothing to
//! install), PostgreSQL when workers on several machines share one batch. Each line's life is an
//! explicit state machine ([`LineState`], [`machine`]) whose every step is a committed
//! transaction:
//!
//! - a line is **claimed** by exactly one worker (a conditional update only one can win);
//! - it is committed as **`submitting` before its POST goes out**: if that commit fails, nothing
//!   is sent and the worker stops with an error naming the state store;
//! - a line whose worker died while `submitting` becomes **`unknown`, never `pending`**: the
//!   API has no idempotency key, so only the user can decide to send it again
//!   ([`Options::resubmit_unknown`]). A worker's liveness is a lock only a live process holds (a
//!   lock file for SQLite, a session advisory lock for PostgreSQL), so a killed worker is known
//!   dead at once and a slow one never is.
//!
//! The file is read once to identify it (its SHA-256 is the batch's identity: a state refuses a
//! different file) and to index where its lines start; lines are then read as they are claimed,
//! so memory follows `concurrency`, not the file's length.
//!
//! ```no_run
//! use gptimage_batch::{Batch, LineState, Options, StateUrl};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = gptimage::Client::from_env()?;
//! // Workers on many machines: the same command, the same URL.
//! let state: StateUrl = "postgres://batch@db.internal/images".parse()?;
//! let batch = Batch::open("prompts.jsonl", &state).await?;
//! let mut options = Options::new("results");
//! options.concurrency = 16;
//! let summary = batch
//!     .run(&client, &options, std::future::pending::<()>(), |line| {
//!         if let Some((kind, message)) = &line.error {
//!             eprintln!("line {}: {kind}: {message}", line.line);
//!         }
//!     })
//!     .await?;
//! assert!(summary.progress.count(LineState::Submitting) == 0);
//! # Ok(())
//! # }
//! ```

mod error;
mod index;
mod inputs;
pub mod machine;
mod plan;
mod run;
mod source;
mod store;

pub use error::Error;
pub use index::{GALLERY_VALIDITY, write_index, write_index_to};
pub use inputs::{InputHost, ResultsStore};
pub use machine::LineState;
pub use plan::{Plan, QUOTED_INVALID, plan};
pub use run::{Batch, Options, Summary};
pub use source::{MAX_LINE_BYTES, ParsedLine, RawLine, Source, stem};
pub use store::{
    Claim, HEARTBEAT_STALE, LineRecord, MAX_DEFERRALS, OpenOptions, OutcomeToken, Pages, Progress,
    Reason, Retry, SEND_WINDOW, StateUrl, Store, Submitting, Worker, lock_delay, send_bound,
};
