//! What the clients report while they work, shared by both: a generation's progress, the events
//! of many tasks at once, and the signal that stops submitting more.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::error::Result;

/// What `generate_with` reports as it goes, before it returns the end.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The service created the task. Store its id now: if the program dies while it waits,
    /// the task can be waited for again from it (`wait(task_id)`), and never paid for twice.
    Submitted(&'a CreatedTask),
    /// The task's status changed (each change once, not every poll).
    Changed(&'a TaskInfo),
}

/// What became of a submission that was sent, as the client's
/// [`on_submission`](crate::ClientBuilder::on_submission) sink hears it: the ledger of every
/// task the key may have paid for, whoever was (or was no longer) waiting for the answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Submission<'a> {
    /// The service named the task.
    Created {
        /// The request sent.
        request: &'a GenerateRequest,
        /// The task it made.
        task_id: &'a str,
        /// Whether its caller had gone (its future dropped) before the answer came.
        abandoned: bool,
    },
    /// The answer was lost: a task may exist, and may be charged. If the submission carried one
    /// of the client's callback URLs, a [`Recovered`](Self::Recovered) may follow.
    Unknown {
        /// The request sent.
        request: &'a GenerateRequest,
        /// Why the outcome is unknown.
        error: &'a crate::Error,
        /// Whether its caller had gone (its future dropped) before the answer came.
        abandoned: bool,
    },
    /// A task whose submission's answer was lost, found from its callback and confirmed by a
    /// status request (the task exists under this key, and its echoed request carries the
    /// submission's own callback URL).
    Recovered {
        /// The request sent.
        request: &'a GenerateRequest,
        /// The task it made.
        task_id: &'a str,
    },
}

/// The sink of [`Submission`]s a client was built with.
pub(crate) type SubmissionSink = Arc<dyn Fn(&Submission<'_>) + Send + Sync>;

/// Tells the sink and the log what became of a submission.
#[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
pub(crate) fn report(sink: Option<&SubmissionSink>, outcome: &Submission<'_>) {
    #[cfg(feature = "tracing")]
    match outcome {
        Submission::Created {
            task_id, abandoned, ..
        } => tracing::info!(
            target: "gptimage",
            task_id = %task_id,
            abandoned = *abandoned,
            "task created"
        ),
        Submission::Unknown {
            error, abandoned, ..
        } => tracing::warn!(
            target: "gptimage",
            error = %error,
            abandoned = *abandoned,
            "submission outcome unknown: a task may exist"
        ),
        Submission::Recovered { task_id, .. } => tracing::info!(
            target: "gptimage",
            task_id = %task_id,
            "lost task recovered from its callback"
        ),
    }
    if let Some(sink) = sink {
        // A sink that panics loses its own record, never the submission's outcome.
        let heard = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(outcome)));
        #[cfg(feature = "tracing")]
        if heard.is_err() {
            tracing::error!(target: "gptimage", "the on_submission sink panicked");
        }
        #[cfg(not(feature = "tracing"))]
        let _ = heard;
    }
}

/// One event of `generate_many`, with the index of its request in the input.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManyEvent {
    /// The service created the task for request `index`: store its id now.
    Submitted {
        /// The request's place in the input, from 0.
        index: usize,
        /// The task the service created.
        task_id: String,
    },
    /// Request `index` is over: its task succeeded, failed or passed its deadline, or it was
    /// never submitted, or its submission's outcome is unknown. The error says which, and
    /// carries the task id when there is one ([`Error::task_id`](crate::Error::task_id)).
    Finished {
        /// The request's place in the input, from 0.
        index: usize,
        /// The finished task, or why there is none.
        result: Result<TaskInfo>,
    },
    /// The stop came while the task of request `index` was running: the task goes on at the
    /// service, and `wait(task_id)` finds it later.
    Stopped {
        /// The request's place in the input, from 0.
        index: usize,
        /// The task, still running at the service.
        task_id: String,
    },
}

impl ManyEvent {
    /// The index of the request the event is about.
    pub fn index(&self) -> usize {
        match self {
            Self::Submitted { index, .. }
            | Self::Finished { index, .. }
            | Self::Stopped { index, .. } => *index,
        }
    }
}

/// Stops `generate_many` from submitting more; cheap to clone, and usable from any thread.
///
/// After [`stop`](Self::stop), nothing new is submitted; a submission already on its way still
/// reports its task id ([`ManyEvent::Submitted`]) or its unknown outcome
/// ([`ManyEvent::Finished`]); the waits in progress end at once with [`ManyEvent::Stopped`]; and
/// then the events end.
///
/// ```
/// use gptimage_transport::Stopper;
///
/// let stop = Stopper::new();
/// let handle = stop.clone();
/// assert!(!stop.is_stopped());
/// handle.stop();
/// assert!(stop.is_stopped());
/// ```
#[derive(Clone, Default)]
pub struct Stopper {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    state: Mutex<StopState>,
    changed: Condvar,
}

#[derive(Default)]
struct StopState {
    stopped: bool,
    /// The futures waiting for the signal, by registration: each removes its own when it is
    /// dropped, so a long run's finished waits leave nothing behind (a waker holds its task).
    wakers: std::collections::HashMap<u64, Waker>,
    next: u64,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl Stopper {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, StopState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the signal (again is harmless).
    pub fn stop(&self) {
        let wakers = {
            let mut state = self.state();
            state.stopped = true;
            std::mem::take(&mut state.wakers)
        };
        self.inner.changed.notify_all();
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Whether the signal was given.
    pub fn is_stopped(&self) -> bool {
        self.state().stopped
    }

    /// Completes once the signal is given.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn stopped(&self) -> Stopped<'_> {
        Stopped {
            stopper: self,
            key: None,
        }
    }

    /// Blocks until `until` or the signal, whichever comes first; whether the signal came.
    #[cfg_attr(not(feature = "blocking"), allow(dead_code))]
    pub(crate) fn sleep_until(&self, until: Instant) -> bool {
        let mut state = self.state();
        loop {
            if state.stopped {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .inner
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The future of [`Stopper::stopped`]: registered while it waits, unregistered when dropped.
pub(crate) struct Stopped<'a> {
    stopper: &'a Stopper,
    key: Option<u64>,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stopper = self.stopper;
        let mut state = stopper.state();
        if state.stopped {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = state.next;
                state.next = state.next.wrapping_add(1);
                key
            }
        };
        match state.wakers.get_mut(&key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                state.wakers.insert(key, cx.waker().clone());
            }
        }
        drop(state);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.stopper.state().wakers.remove(&key);
        }
    }
}

/// Whether a watch's step is its last: the terminal status, or an error.
#[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
pub(crate) fn is_last(step: &Result<TaskInfo>) -> bool {
    !matches!(step, Ok(info) if !info.status.is_terminal())
}
