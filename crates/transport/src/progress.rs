//! What the clients report while they work, shared by both: a generation's progress, the events
//! of many tasks at once, and the signal that stops submitting more.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use gptimage_types::{CreatedTask, TaskInfo};

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
    wakers: Vec<Waker>,
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
        for waker in wakers {
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
        Stopped { stopper: self }
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

/// The future of [`Stopper::stopped`].
pub(crate) struct Stopped<'a> {
    stopper: &'a Stopper,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.stopper.state();
        if state.stopped {
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Whether a watch's step is its last: the terminal status, or an error.
#[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
pub(crate) fn is_last(step: &Result<TaskInfo>) -> bool {
    !matches!(step, Ok(info) if !info.status.is_terminal())
}
