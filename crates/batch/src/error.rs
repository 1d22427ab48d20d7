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
    /// This worker lost its hold on the state (its database session ended, or another worker
    /// found it unresponsive and counted it out), so it stops sending.
    #[error(
        "this worker lost its hold on the batch state {url} (another worker may have counted it \
         out); it sends nothing more: run the command again"
    )]
    LostWorker {
        /// Where the state is.
        url: StateUrl,
    },
}

impl Error {
    /// Whether the error is about the state store (rather than the file).
    pub fn is_state(&self) -> bool {
        matches!(
            self,
            Error::State { .. } | Error::NoState { .. } | Error::LostWorker { .. }
        )
    }
}
