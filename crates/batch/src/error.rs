//! What can stop a batch: the file, the state store, or the worker's hold on it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::StateUrl;

/// Why a batch could not go on. Each message names what failed (the file or the state store)
/// and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The batch file could not be read.
    #[error("cannot read the batch file {}: {source}", path.display())]
    Source {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The batch file has fewer lines than when it was read: it changed under the batch.
    #[error("the batch file {} changed while the batch ran; run it again", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The state URL is not one this crate can use.
    #[error("{0}")]
    BadStateUrl(String),
    /// The state store could not be read or written. Nothing further is sent once this happens.
    #[error("the batch state {url} could not be read or written: {source}")]
    State {
        /// Where the state is (passwords hidden).
        url: StateUrl,
        /// Why.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// There is no batch state at this place yet.
    #[error("there is no batch state at {url}: start the batch first")]
    NoState {
        /// Where it was looked for.
        url: StateUrl,
    },
    /// The state belongs to a batch of another file (the batch is its file's content).
    #[error(
        "the batch state {url} belongs to another batch file ({theirs:?}, {their_lines} lines); \
         {} has different content: give it its own --out or --state, or run the original file",
        file.display()
    )]
    OtherBatch {
        /// Where the state is.
        url: StateUrl,
        /// The file this worker was given.
        file: PathBuf,
        /// The name of the file the state belongs to.
        theirs: String,
        /// How many lines that file had.
        their_lines: u64,
    },
    /// A line's task panicked (a bug): the worker stops as for a state error.
    #[error("a line's task stopped unexpectedly ({0}); the state is safe: run the command again")]
    Panicked(String),
    /// This worker lost its hold on the batch state (its database session ended, the state
    /// stopped answering, or another worker counted it out), so it stops sending.
    #[error(
        "this worker lost its hold on the batch state {url} (its session ended or the state \
         stopped answering within 10 s, so the other workers may count it out): it sends \
         nothing more; its lines pass to the other workers (a line it was submitting becomes an \
         unknown outcome, never resent without you), or to the next run of the same command"
    )]
    LostWorker {
        /// Where the state is.
        url: StateUrl,
    },
    /// The state is reached through a connection pooler that moves a session's statements
    /// between server connections (pgbouncer in transaction or statement mode): a worker's
    /// liveness lock needs one session, so it could look dead while alive, or alive while dead.
    #[error(
        "the batch state {url} is reached through a connection pooler that moves sessions \
         between server connections (pgbouncer in transaction mode): a worker's liveness needs \
         one session of its own; point --state at PostgreSQL itself, or at a pool in session \
         mode"
    )]
    Pooled {
        /// Where the state is.
        url: StateUrl,
    },
    /// The PostgreSQL server of the state replicates in a way that can lose committed records
    /// (asynchronous standbys only), or is a standby itself.
    #[error("the batch state {url} is not durable enough for paid submissions: {message}")]
    Replication {
        /// Where the state is.
        url: StateUrl,
        /// Why, and what to do.
        message: String,
    },
    /// The SQLite state is on a network file system, whose locks SQLite cannot rely on: two
    /// workers could both hold one line.
    #[error(
        "the batch state {} is on a network file system ({file_system} at {}), where SQLite's \
         locks cannot be trusted and two workers could pay for one line twice: keep the state \
         on a local disk (--state sqlite:/local/path), or share a PostgreSQL state (--state \
         postgres://…) between machines",
        path.display(),
        mount.display()
    )]
    NetworkFileSystem {
        /// The database file.
        path: PathBuf,
        /// The file system's type (`nfs4`, `cifs`, …).
        file_system: String,
        /// Where it is mounted.
        mount: PathBuf,
    },
    /// A line names local input images the run cannot host: no image host was given, or the
    /// host refused (a missing bucket, missing credentials). The run stopped before sending
    /// anything more; the line stays pending.
    #[error("line {line}: {message}")]
    ImageHost {
        /// The line's number in the file.
        line: u64,
        /// What went wrong, and what to do.
        message: String,
    },
    /// A `--resubmit-unknown` token that is not one.
    #[error(
        "{0:?} is not an unknown-outcome token: tokens look like a1b2c3.12.1 (the state \
         a1b2c3, line 12, its first submission), as `gptimage batch-status` prints them \
         (tokens without the state's identity, such as 12.1, are no longer accepted)"
    )]
    BadToken(String),
    /// A `--resubmit-unknown` token of another state: kept from a state since recreated (a new
    /// `--out`, another database), it names a line nobody checked in this one.
    #[error(
        "the token {token} belongs to another batch state, not to {url} (whose tokens begin \
         {state}.): nothing was resent; run `gptimage batch-status` for this state's tokens, \
         and check each outcome before naming it"
    )]
    ForeignToken {
        /// The token given.
        token: String,
        /// The state it was given for.
        url: StateUrl,
        /// The state's identity, as its tokens begin.
        state: String,
    },
    /// A state written by a newer version of gptimage, in a format this one does not know:
    /// nothing was read or changed.
    #[error(
        "the batch state {url} is of format {format}, written by a newer gptimage (this one \
         knows format {known} and older): nothing was changed; run the newer version, on every \
         worker of the state"
    )]
    NewerState {
        /// The state.
        url: StateUrl,
        /// Its format.
        format: i64,
        /// The newest format this version knows.
        known: i64,
    },
    /// A `--resubmit-unknown` token named too soon: its line's submission may still reach the
    /// service (its POST could be on the wire until the commit's start plus the sender's
    /// lock-delay), so no check of the account can settle it yet.
    #[error(
        "the token {token} names an outcome not yet settled: what its worker sent may still \
         reach the service for {} s more; nothing was resent. Check the account after that, \
         then name the token again (`gptimage batch-status` shows it once it is settled)",
        wait.as_secs().max(1)
    )]
    Unsettled {
        /// The token given.
        token: String,
        /// How long until it is settled, on the database's clock.
        wait: std::time::Duration,
    },
    /// The service refused the account (a bad key, no credits): the worker let go of every
    /// line it held and claimed no more, rather than try each line of the file in turn.
    #[error(
        "the service refused the account: {message}; the worker stopped, every line is kept \
         as it was (no line was lost or paid for twice): fix the key or the account, then run \
         the command again"
    )]
    Refused {
        /// The API's code (401, 402, …).
        code: i64,
        /// The SDK's message.
        message: String,
    },
    /// Images could not be saved into the output folder (full, read-only, missing) or the
    /// results store (a bucket that is missing, refuses the credentials, or is over quota): the
    /// run stopped before paying for more; the lines stay submitted, so a later run stores them
    /// without new tasks.
    #[error(
        "the output {} cannot be written: {message}; the run stopped before paying for more, \
         and its lines stay submitted: free space or fix its permissions (for a bucket: that \
         it exists and the credentials may write to it), then run the command again to store \
         them (no task is paid for again)",
        folder.display()
    )]
    Output {
        /// The folder, or the results store's URL.
        folder: PathBuf,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// Whether the error is about the state store (rather than the file).
    pub fn is_state(&self) -> bool {
        matches!(
            self,
            Error::State { .. }
                | Error::NoState { .. }
                | Error::LostWorker { .. }
                | Error::Pooled { .. }
                | Error::Replication { .. }
                | Error::NetworkFileSystem { .. }
        )
    }
}
