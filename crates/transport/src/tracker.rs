//! A task tracker for services (feature `async`): submissions that survive their caller,
//! supervised waits, one status cache fed by the waits (and so by the webhooks that end them),
//! subscriptions for server-sent events, hooks for the service's own database, and resumption
//! after a restart.
//!
//! ```no_run
//! use gptimage_transport::{Client, Tracker};
//! use gptimage_types::GenerateRequest;
//!
//! # async fn run() -> Result<(), gptimage_transport::Error> {
//! let tracker = Tracker::builder(Client::from_env()?)
//!     .on_submitted(|created| async move {
//!         // INSERT INTO images (task_id) VALUES (created.task_id)
//!         let _ = created;
//!     })
//!     .on_ended(|ended| async move {
//!         // UPDATE images SET status = … WHERE task_id = ended.task_id
//!         let _ = ended;
//!     })
//!     .build();
//! // A handler: its client may go away; the task is tracked whatever happens to it.
//! let request = GenerateRequest::text_to_image("a lighthouse").build()?;
//! let created = tracker.submit_keyed("user-42:form-7", &request).await?;
//! // Another handler: no request to the service, the cache answers.
//! let status = tracker.get(&created.task_id);
//! # let _ = status;
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo, TaskStatus};
use tokio::sync::{Semaphore, watch};

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};

/// A hook: an async function of one value, run to its end on the tracker's own task.
type Hook<T> = Arc<dyn Fn(T) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How a tracked task ended, as [`TrackerBuilder::on_ended`] hears it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Ended {
    /// The task.
    pub task_id: String,
    /// Its last status (`SUCCESS` with its images), or why the wait ended without one: a
    /// failed task ([`ErrorKind::TaskFailed`]), a deadline passed (the task may still finish:
    /// [`Tracker::resume`] follows it again), or an error of the service.
    pub result: Result<TaskInfo>,
}

/// Builds a [`Tracker`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct TrackerBuilder {
    client: Client,
    max_waits: usize,
    keep_ended: usize,
    on_submitted: Option<Hook<CreatedTask>>,
    on_ended: Option<Hook<Ended>>,
}

impl std::fmt::Debug for TrackerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerBuilder")
            .field("max_waits", &self.max_waits)
            .field("keep_ended", &self.keep_ended)
            .finish_non_exhaustive()
    }
}

impl TrackerBuilder {
    /// At most `n` waits at once (1024 by default; at least 1): a task beyond them is tracked
    /// at once, and followed when a wait is free.
    pub fn max_waits(mut self, n: usize) -> Self {
        self.max_waits = n.max(1);
        self
    }

    /// How many ended tasks the cache keeps answering for (10,000 by default); the oldest are
    /// forgotten first. A task still running is never forgotten.
    pub fn keep_ended(mut self, n: usize) -> Self {
        self.keep_ended = n;
        self
    }

    /// Runs `hook` with each task the service creates for a submission (or that a lost
    /// submission's callback recovered), before the submission returns: store the id in the
    /// service's database here. It runs whether or not the submitting caller is still there.
    pub fn on_submitted<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(CreatedTask) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_submitted = Some(Arc::new(move |created| Box::pin(hook(created))));
        self
    }

    /// Runs `hook` when a tracked task's wait ends (see [`Ended`]).
    pub fn on_ended<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Ended) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_ended = Some(Arc::new(move |ended| Box::pin(hook(ended))));
        self
    }

    /// The tracker.
    pub fn build(self) -> Tracker {
        Tracker {
            shared: Arc::new(Shared {
                client: self.client,
                tasks: Mutex::default(),
                waits: Arc::new(Semaphore::new(self.max_waits)),
                keep_ended: self.keep_ended,
                on_submitted: self.on_submitted,
                on_ended: self.on_ended,
            }),
        }
    }
}

/// Keeps a service's tasks: submits them so that no caller's departure loses a paid task,
/// follows each to its end within a bound on concurrent waits, and answers for them from one
/// cache, so that a `GET` for a known task costs the service nothing.
///
/// - [`submit`](Self::submit) and [`submit_keyed`](Self::submit_keyed) run on the tracker's own
///   task: dropped by its caller (an HTTP handler whose client went away), a submission whose
///   request is on the wire still finishes, its task is tracked and the
///   [`on_submitted`](TrackerBuilder::on_submitted) hook runs. With a key, a retry (the user
///   clicking again) gets the same task, not a second one.
/// - Each task is followed by the client's wait (with webhooks, a callback ends it at once,
///   and it costs one status request); each status seen updates the cache:
///   [`get`](Self::get) and [`subscribe`](Self::subscribe) read it.
/// - An unknown outcome is recovered from its callback when the client has webhooks (see
///   [`Client::recover`]): the task is then tracked as if the answer had come.
/// - [`resume`](Self::resume) follows task ids stored before a restart.
///
/// Cheap to clone; clones share everything. Use it inside a tokio runtime.
#[derive(Clone)]
pub struct Tracker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("tracked", &self.shared.tasks().by_id.len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: Client,
    tasks: Mutex<Tasks>,
    waits: Arc<Semaphore>,
    keep_ended: usize,
    on_submitted: Option<Hook<CreatedTask>>,
    on_ended: Option<Hook<Ended>>,
}

impl Shared {
    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Tasks {
    by_id: HashMap<String, watch::Sender<Cached>>,
    /// Tasks a wait is following now.
    following: HashSet<String>,
    /// Ended tasks, oldest first: forgotten beyond `keep_ended`.
    ended: VecDeque<String>,
    /// Submissions by their caller's key: what a retry with the same key gets.
    keys: HashMap<String, Keyed>,
    key_order: VecDeque<String>,
}

/// A task as the cache keeps it: its last status (without the echoed request, which carries
/// the submission's secret callback URL), and whether a wait still follows it.
#[derive(Clone, Debug, PartialEq)]
struct Cached {
    info: TaskInfo,
    following: bool,
}

/// Keys kept at once; the oldest settled ones are forgotten first (one whose submission is
/// still on its way, or of unknown outcome, is never forgotten by the bound).
const MAX_KEYS: usize = 100_000;

/// A key's submission: the request it was for, and what it came to.
struct Keyed {
    request: GenerateRequest,
    outcome: watch::Receiver<Option<KeyOutcome>>,
}

/// What a keyed submission came to, for the retries that wait on it.
#[derive(Clone, Debug)]
enum KeyOutcome {
    Created(CreatedTask),
    /// The answer was lost: a task may exist (it is being recovered, with webhooks).
    Unknown,
    /// No task was made (refused, never sent): the key is free again.
    Unsent,
}

/// A key's claim: this caller's to submit under, or another's submission to wait for.
enum Claimed {
    Mine(watch::Sender<Option<KeyOutcome>>),
    Earlier(watch::Receiver<Option<KeyOutcome>>),
}

impl Tracker {
    /// A tracker with every default (see [`TrackerBuilder`]).
    pub fn new(client: Client) -> Self {
        Self::builder(client).build()
    }

    /// A builder, to set hooks and bounds.
    pub fn builder(client: Client) -> TrackerBuilder {
        TrackerBuilder {
            client,
            max_waits: 1024,
            keep_ended: 10_000,
            on_submitted: None,
            on_ended: None,
        }
    }

    /// The client it submits and waits with.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Submits `request` and tracks its task (see [`Tracker`]): the task the service created,
    /// once the [`on_submitted`](TrackerBuilder::on_submitted) hook has run.
    pub async fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask> {
        let (tracker, request) = (self.clone(), request.clone());
        let run = tokio::spawn(async move { tracker.submission(request, None).await });
        joined(run.await)
    }

    /// Like [`submit`](Self::submit), once per `key` (the caller's own name for this piece of
    /// work: a form's nonce, a job's id): while a submission with this key is on its way, or
    /// after it made a task, a call with the same key waits for it and gets the same task
    /// instead of paying for a second one. A key whose submission's outcome is unknown answers
    /// [`OutcomeUnknown`](ErrorKind::OutcomeUnknown) until the task is recovered; a key whose
    /// submission made no task (refused, never sent) is free again.
    ///
    /// Scope keys to the user they belong to (`"user-42:form-7"`): the tracker takes a key as
    /// the caller's word. The same key with another request is refused
    /// ([`InvalidRequest`](ErrorKind::InvalidRequest)), never answered with the first one's
    /// task.
    pub async fn submit_keyed(&self, key: &str, request: &GenerateRequest) -> Result<CreatedTask> {
        loop {
            let mut earlier = match self.claim_key(key, request)? {
                Claimed::Mine(publish) => return self.submit_as(key, request, publish).await,
                Claimed::Earlier(earlier) => earlier,
            };
            // Someone submitted with this key: its outcome, not a second task.
            let outcome = earlier
                .wait_for(Option::is_some)
                .await
                .map(|outcome| outcome.clone());
            match outcome {
                Ok(Some(KeyOutcome::Created(created))) => return Ok(created),
                // No task came of it: the key is free; claim it (once, in this loop's next turn).
                Ok(Some(KeyOutcome::Unsent)) => tokio::task::yield_now().await,
                // Unknown, or its submission ended abnormally without a word: a task may exist.
                _ => {
                    return Err(Error::outcome_unknown(
                        "a submission with the same key is of unknown outcome: a task may \
                         exist (with webhooks it is being recovered; Tracker::forget_key \
                         releases the key once you have checked)",
                        None,
                    ));
                }
            }
        }
    }

    /// Forgets `key`, so that the next submission with it is a new one: for a key whose
    /// outcome is unknown, once you have checked the account and found no task.
    pub fn forget_key(&self, key: &str) {
        let mut tasks = self.shared.tasks();
        tasks.keys.remove(key);
        tasks.key_order.retain(|k| k != key);
    }

    /// The key for this caller to submit under, or the submission already made under it.
    fn claim_key(&self, key: &str, request: &GenerateRequest) -> Result<Claimed> {
        let mut tasks = self.shared.tasks();
        if let Some(earlier) = tasks.keys.get(key) {
            let settled_unsent = matches!(*earlier.outcome.borrow(), Some(KeyOutcome::Unsent));
            if !settled_unsent {
                if earlier.request != *request {
                    return Err(Error::invalid_request(format!(
                        "the key {key:?} was used for another request: a key names one piece \
                         of work (scope keys to their user and form)"
                    )));
                }
                return Ok(Claimed::Earlier(earlier.outcome.clone()));
            }
        }
        let (publish, outcome) = watch::channel(None);
        let keyed = Keyed {
            request: request.clone(),
            outcome,
        };
        if tasks.keys.insert(key.to_owned(), keyed).is_none() {
            tasks.key_order.push_back(key.to_owned());
        }
        // Beyond the bound, the oldest settled keys go (bounded work: a look at the oldest).
        let mut looked = 0;
        while tasks.key_order.len() > MAX_KEYS && looked < 64 {
            looked += 1;
            let Some(oldest) = tasks.key_order.pop_front() else {
                break;
            };
            let settled = tasks.keys.get(&oldest).is_some_and(|k| {
                matches!(
                    *k.outcome.borrow(),
                    Some(KeyOutcome::Created(_) | KeyOutcome::Unsent)
                )
            });
            if settled {
                tasks.keys.remove(&oldest);
            } else {
                tasks.key_order.push_back(oldest);
            }
        }
        Ok(Claimed::Mine(publish))
    }

    /// Submits under `key`, on the tracker's task; a submission that made no task frees it.
    async fn submit_as(
        &self,
        key: &str,
        request: &GenerateRequest,
        publish: watch::Sender<Option<KeyOutcome>>,
    ) -> Result<CreatedTask> {
        let (tracker, request) = (self.clone(), request.clone());
        let _ = key;
        let run = tokio::spawn(async move {
            let result = tracker.submission(request, Some(&publish)).await;
            if let Err(error) = &result
                && !error.may_have_created_task()
            {
                // No task: the key is free for a retry (the waiters hear `Unsent`).
                publish.send_replace(Some(KeyOutcome::Unsent));
            }
            result
        });
        joined(run.await)
    }

    /// The submission itself, on the tracker's task: tracked and hooked once created; a lost
    /// answer recovered in the background.
    async fn submission(
        &self,
        request: GenerateRequest,
        publish: Option<&watch::Sender<Option<KeyOutcome>>>,
    ) -> Result<CreatedTask> {
        let client = &self.shared.client;
        match client.submit(&request).await {
            Ok(created) => {
                self.track(&created).await;
                if let Some(publish) = publish {
                    publish.send_replace(Some(KeyOutcome::Created(created.clone())));
                }
                Ok(created)
            }
            Err(error) if error.kind() == ErrorKind::OutcomeUnknown => {
                if let Some(publish) = publish {
                    publish.send_replace(Some(KeyOutcome::Unknown));
                }
                if let Some(lost) = error.lost().cloned() {
                    let (tracker, publish) = (self.clone(), publish.cloned());
                    tokio::spawn(async move {
                        if let Some(created) = tracker.shared.client.recovered(&lost).await {
                            tracker.track(&created).await;
                            if let Some(publish) = publish {
                                publish.send_replace(Some(KeyOutcome::Created(created)));
                            }
                        }
                    });
                }
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Tracks a created task: cached, hooked, followed.
    async fn track(&self, created: &CreatedTask) {
        let fresh = {
            let mut tasks = self.shared.tasks();
            if tasks.by_id.contains_key(&created.task_id) {
                false
            } else {
                let info = TaskInfo::new(created.task_id.clone(), created.status.clone());
                tasks.by_id.insert(
                    created.task_id.clone(),
                    watch::Sender::new(Cached {
                        info,
                        following: true,
                    }),
                );
                true
            }
        };
        if !fresh {
            return;
        }
        if let Some(hook) = &self.shared.on_submitted {
            run_hook(hook(created.clone())).await;
        }
        self.follow(created.task_id.clone());
    }

    /// Follows tasks stored before a restart (their ids from the service's database): each
    /// not already tracked is cached as pending and waited for, within the bound on waits.
    pub fn resume<I, S>(&self, task_ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for task_id in task_ids {
            let task_id = task_id.into();
            let fresh = {
                let mut tasks = self.shared.tasks();
                if tasks.following.contains(&task_id) {
                    false
                } else {
                    tasks.ended.retain(|id| id != &task_id);
                    let cached = tasks.by_id.get(&task_id).map(|t| t.borrow().info.clone());
                    let info = cached
                        .unwrap_or_else(|| TaskInfo::new(task_id.clone(), TaskStatus::Pending));
                    match tasks.by_id.get(&task_id) {
                        Some(sender) => {
                            sender.send_modify(|cached| cached.following = true);
                        }
                        None => {
                            let cached = Cached {
                                info,
                                following: true,
                            };
                            tasks
                                .by_id
                                .insert(task_id.clone(), watch::Sender::new(cached));
                        }
                    }
                    true
                }
            };
            if fresh {
                self.follow(task_id);
            }
        }
    }

    /// Waits for the task on a task of its own, once a wait is free; every status seen goes
    /// to the cache, and the end to the hook.
    fn follow(&self, task_id: String) {
        self.shared.tasks().following.insert(task_id.clone());
        let tracker = self.clone();
        tokio::spawn(async move {
            let shared = &tracker.shared;
            let Ok(_permit) = Arc::clone(&shared.waits).acquire_owned().await else {
                return;
            };
            let result = shared
                .client
                .wait_with(&task_id, |info| tracker.seen(info))
                .await;
            if let Ok(info) = &result {
                tracker.seen(info);
            }
            tracker.ended(&task_id);
            if let Some(hook) = &shared.on_ended {
                run_hook(hook(Ended { task_id, result })).await;
            }
        });
    }

    /// A status seen: the cache and the subscribers hear of a change. The echoed request is
    /// not kept: it carries the submission's callback URL, a secret a service must not show.
    fn seen(&self, info: &TaskInfo) {
        let mut info = info.clone();
        info.request = None;
        let tasks = self.shared.tasks();
        if let Some(sender) = tasks.by_id.get(&info.task_id) {
            sender.send_if_modified(|cached| {
                let changed = cached.info != info;
                if changed {
                    cached.info = info;
                }
                changed
            });
        }
    }

    /// A task's wait ended (its end, a deadline, an error): it joins the ended ones, its
    /// subscribers' streams end, and the oldest beyond the bound go.
    fn ended(&self, task_id: &str) {
        let mut tasks = self.shared.tasks();
        tasks.following.remove(task_id);
        if let Some(sender) = tasks.by_id.get(task_id) {
            sender.send_modify(|cached| cached.following = false);
        }
        tasks.ended.push_back(task_id.to_owned());
        while tasks.ended.len() > self.shared.keep_ended {
            if let Some(oldest) = tasks.ended.pop_front()
                && !tasks.following.contains(&oldest)
            {
                tasks.by_id.remove(&oldest);
            }
        }
    }

    /// The task's last status as the tracker knows it, without asking the service; `None`
    /// for a task it does not track (or no longer: see
    /// [`keep_ended`](TrackerBuilder::keep_ended)).
    pub fn get(&self, task_id: &str) -> Option<TaskInfo> {
        self.shared
            .tasks()
            .by_id
            .get(task_id)
            .map(|sender| sender.borrow().info.clone())
    }

    /// The task's statuses as a stream, for server-sent events: the current one at once, then
    /// each change, ending after a terminal status, or when no wait follows the task any more
    /// (its deadline passed: [`resume`](Self::resume) follows it again), or when the tracker
    /// forgets it. `None` for a task it does not track.
    pub fn subscribe(&self, task_id: &str) -> Option<TaskUpdates> {
        let receiver = self.shared.tasks().by_id.get(task_id)?.subscribe();
        Some(TaskUpdates {
            state: Updates::Ready(receiver, true),
        })
    }
}

/// Runs a hook on a task of its own: a hook that panics is reported, and changes nothing of
/// the tracker's (no key left claimed, no task left unfollowed).
async fn run_hook(hook: Pin<Box<dyn Future<Output = ()> + Send>>) {
    if let Err(_panicked) = tokio::spawn(hook).await {
        #[cfg(feature = "tracing")]
        tracing::error!(target: "gptimage", "a tracker hook panicked: {_panicked}");
    }
}

/// A submission's task joined: a panic in it is an unknown outcome (it may have been sent).
fn joined(
    joined: std::result::Result<Result<CreatedTask>, tokio::task::JoinError>,
) -> Result<CreatedTask> {
    joined.unwrap_or_else(|join| {
        Err(Error::outcome_unknown(
            format!("the tracker's submission ended abnormally ({join})"),
            None,
        ))
    })
}

/// The stream of [`Tracker::subscribe`]: a task's statuses. A
/// [`Stream`](futures_core::Stream), with an inherent [`next`](Self::next).
pub struct TaskUpdates {
    state: Updates,
}

type Changed = Pin<Box<dyn Future<Output = (watch::Receiver<Cached>, Option<Cached>)> + Send>>;

enum Updates {
    /// Ready to look (the first look yields the current status).
    Ready(watch::Receiver<Cached>, bool),
    /// Waiting for a change.
    Waiting(Changed),
    Done,
}

impl std::fmt::Debug for TaskUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskUpdates")
            .field("over", &matches!(self.state, Updates::Done))
            .finish_non_exhaustive()
    }
}

impl TaskUpdates {
    /// The next status; `None` once the task ended (after its terminal status), or no wait
    /// follows it any more.
    pub async fn next(&mut self) -> Option<TaskInfo> {
        std::future::poll_fn(|cx| self.poll_step(cx)).await
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<TaskInfo>> {
        loop {
            match std::mem::replace(&mut self.state, Updates::Done) {
                Updates::Done => return Poll::Ready(None),
                Updates::Ready(mut receiver, true) => {
                    let cached = receiver.borrow_and_update().clone();
                    if cached.following && !cached.info.status.is_terminal() {
                        self.state = Updates::Ready(receiver, false);
                    }
                    return Poll::Ready(Some(cached.info));
                }
                Updates::Ready(mut receiver, false) => {
                    self.state = Updates::Waiting(Box::pin(async move {
                        let changed = receiver.changed().await.is_ok();
                        let cached = changed.then(|| receiver.borrow_and_update().clone());
                        (receiver, cached)
                    }));
                }
                Updates::Waiting(mut changed) => match changed.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.state = Updates::Waiting(changed);
                        return Poll::Pending;
                    }
                    Poll::Ready((_, None)) => return Poll::Ready(None),
                    Poll::Ready((receiver, Some(cached))) => {
                        if cached.following && !cached.info.status.is_terminal() {
                            self.state = Updates::Ready(receiver, false);
                        }
                        // The wait's end with no new status says nothing new: the stream ends.
                        if !cached.following && !cached.info.status.is_terminal() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(cached.info));
                    }
                },
            }
        }
    }
}

impl futures_core::Stream for TaskUpdates {
    type Item = TaskInfo;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TaskInfo>> {
        self.get_mut().poll_step(cx)
    }
}
