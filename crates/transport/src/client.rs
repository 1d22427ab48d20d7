//! The async client: one loop that drives the core's machines over an [`AsyncTransport`](crate::transport::AsyncTransport) and
//! tokio's timer; every method is a thin wrapper over it.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::config::{ClientBuilder, Config, FromConfig, sealed};
use crate::core::{CallMachine, DownloadMachine, Image, Machine, Next, TurnMachine, WaitMachine};
use crate::error::{Error, Result};
use crate::progress::{self, ManyEvent, Progress, Stopper, Submission};
use crate::reqwest_transport::ReqwestTransport;
use crate::transport::AsyncTransport;
use crate::webhook::Hints;
use crate::{drive, files};

/// The async client of the GPT Image 1.5 API, on tokio.
///
/// Cheap to clone (clones share one connection pool), `Send` and `Sync`. Every call is bounded
/// in time; submissions are never retried when a task may already exist.
///
/// ```no_run
/// use gptimage_transport::Client;
/// use gptimage_types::{GenerateRequest, Size};
///
/// # async fn run() -> Result<(), gptimage_transport::Error> {
/// let client = Client::from_env()?; // GPTIMAGE_API_KEY, and GPTIMAGE_BASE_URL if set
/// let request = GenerateRequest::text_to_image("a lighthouse at dawn")
///     .size(Size::Landscape)
///     .build()?;
/// let task = client.generate(&request).await?; // submit, then wait for the end
/// let paths = client.download_to_dir(&task, "out").await?;
/// println!("saved {paths:?}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// This handle's settings: the client's, or a per-call variant ([`Client::with_options`]).
    config: Arc<Config>,
}

drive::client_shell!(AsyncTransport, ReqwestTransport, "Client");

impl Client {
    /// Starts a task. Retried only when no task can have been created; when the outcome is
    /// unknown, the error says so ([`ErrorKind::OutcomeUnknown`](crate::ErrorKind)), and, if
    /// the client has webhooks, the task can still be recovered from its callback
    /// ([`recover`](Self::recover)).
    ///
    /// The submission survives its caller: dropping this future (an HTTP handler whose client
    /// disconnected, a `select!` that took another branch) cancels it only while nothing has
    /// been sent (a pacer wait, a backoff after a 429); once its request is on the wire, it runs
    /// to its answer on a task of its own, and the outcome (the task id, or unknown) goes to the
    /// client's [`on_submission`](crate::ClientBuilder::on_submission) sink and to a `tracing`
    /// event. A paid task's id is never lost with a dropped future. Runs on the current tokio
    /// runtime.
    pub async fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask> {
        let caller = Stopper::new();
        let _gone = GoneOnDrop(caller.clone());
        let (client, request) = (self.clone(), request.clone());
        let detached =
            tokio::spawn(async move { client.submission(&request, &caller, None).await });
        detached.await.unwrap_or_else(|join| {
            Err(Error::outcome_unknown(
                format!("the submission's task ended abnormally ({join})"),
                None,
            ))
        })
    }

    /// One submission, left unsent if `caller` goes (or `stop` comes) before its request is on
    /// the wire; its outcome reported to the sink; an unknown outcome watched for its callback.
    async fn submission(
        &self,
        request: &GenerateRequest,
        caller: &Stopper,
        stop: Option<&Stopper>,
    ) -> Result<CreatedTask> {
        let _counted = Submitting::new(&self.inner.submitting);
        let watch = drive::watch(self.config(), request)?;
        let callback = watch.as_ref().map(|w| w.url.as_str());
        let pacer = &self.inner.pacer;
        let submit = CallMachine::submit(self.config(), request, callback, pacer, drive::seed());
        let result = self.drive_submission(submit, caller, stop).await;
        let result = drive::settle(self.config(), watch, result);
        self.reported(request, &result, caller.is_stopped());
        if let Err(error) = &result
            && let Some(lost) = error.lost()
        {
            self.watch_lost(request.clone(), lost.clone());
        }
        result
    }

    /// Waits, at most `within`, until no submission of this client is under way (see
    /// [`in_flight`](Self::in_flight)); whether none is. For a service's shutdown: after the
    /// server stops taking requests, and before the runtime ends.
    ///
    /// ```no_run
    /// # async fn run(client: gptimage_transport::Client) {
    /// use std::time::Duration;
    /// // axum::serve(…).with_graceful_shutdown(…).await; then:
    /// if !client.drain(Duration::from_secs(90)).await {
    ///     eprintln!("{} submissions still under way", client.in_flight());
    /// }
    /// # }
    /// ```
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = crate::core::later(now(), within);
        while self.in_flight() > 0 {
            if now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Tells the sink and the log what a sent submission came to.
    fn reported(&self, request: &GenerateRequest, result: &Result<CreatedTask>, abandoned: bool) {
        let sink = self.config().on_submission.as_ref();
        match result {
            Ok(created) => progress::report(
                sink,
                &Submission::Created {
                    request,
                    task_id: &created.task_id,
                    abandoned,
                },
            ),
            Err(error) if error.kind() == crate::ErrorKind::OutcomeUnknown => progress::report(
                sink,
                &Submission::Unknown {
                    request,
                    error,
                    abandoned,
                },
            ),
            Err(_) => {}
        }
    }

    /// Watches a lost submission's callback token on a task of its own, for at most the wait
    /// timeout: each task id a callback names is asked for once, and the first whose status
    /// echoes this submission's callback URL and prompt is the recovered task (reported to
    /// the sink, and to [`recover`](Self::recover)).
    fn watch_lost(&self, request: GenerateRequest, lost: crate::webhook::Lost) {
        let client = self.clone();
        tokio::spawn(async move {
            let deadline = crate::core::later(now(), client.config().wait_timeout());
            let mut seen = 0;
            loop {
                let next = tokio::time::timeout_at(deadline.into(), lost.next_candidate(seen));
                if next.await.is_err() {
                    lost.give_up();
                    return;
                }
                for candidate in lost.candidates(seen) {
                    seen += 1;
                    let Ok(info) = client.status(&candidate).await else {
                        continue;
                    };
                    if drive::confirms(&lost, &request, &info) {
                        lost.found(&candidate);
                        progress::report(
                            client.config().on_submission.as_ref(),
                            &Submission::Recovered {
                                request: &request,
                                task_id: &candidate,
                            },
                        );
                        return;
                    }
                }
            }
        });
    }

    /// The task of a submission whose answer was lost (`err` an
    /// [`OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown) from this client), once its
    /// callback has named it and a status request has confirmed it (the task exists under this
    /// key and echoes the submission's own callback URL and prompt); `None` if the client has
    /// no webhooks, the error is another, or no confirmed callback came within the wait
    /// timeout. What is confirmed is the task's existence and its origin; a callback alone
    /// never is. Nothing is ever resubmitted.
    ///
    /// ```no_run
    /// # async fn run(client: gptimage_transport::Client, request: gptimage_types::GenerateRequest) -> Result<(), gptimage_transport::Error> {
    /// let created = match client.submit(&request).await {
    ///     Ok(created) => created,
    ///     Err(lost) if lost.may_have_created_task() => match client.recover(&lost).await? {
    ///         Some(found) => found, // the same task: nothing paid twice
    ///         None => return Err(lost), // check the account before sending it again
    ///     },
    ///     Err(other) => return Err(other),
    /// };
    /// # let _ = created;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recover(&self, err: &Error) -> Result<Option<CreatedTask>> {
        match err.lost() {
            Some(lost) => Ok(self.recovered(lost).await),
            None => Ok(None),
        }
    }

    /// The recovered task of a lost submission, once its watch is over (at most the wait
    /// timeout).
    pub(crate) async fn recovered(&self, lost: &crate::webhook::Lost) -> Option<CreatedTask> {
        let wait = tokio::time::timeout(self.config().wait_timeout(), lost.outcome());
        wait.await
            .ok()
            .flatten()
            .map(|task_id| CreatedTask::new(task_id, gptimage_types::TaskStatus::Pending))
    }

    /// Takes a turn of this client's pacer for one submission, waiting for it if the client is
    /// paced (a configured rate, or 429s seen), at most the wait timeout; a [`NotSent`] error if
    /// none came. With [`submit_fenced`](Self::submit_fenced), it lets a caller record a
    /// submission durably *after* its turn came and *before* it is sent, so that nothing stands
    /// between the record and the request but the caller's own commit.
    ///
    /// [`NotSent`]: crate::ErrorKind::NotSent
    pub async fn pacer_turn(&self) -> Result<Turn> {
        let turn = TurnMachine::new(self.config(), &self.inner.pacer);
        self.drive(turn, None).await.map(|()| Turn { _taken: () })
    }

    /// Submits `request` in a `turn` of the pacer already taken, sending no attempt after
    /// `send_by`: for a caller who recorded the submission (a database row saying "about to
    /// send") and must know that nothing leaves once its record may have been taken over (by
    /// another worker, after a lock or lease it held expired). An attempt that could not start
    /// by `send_by`, or a retry that would start after it, ends the call [`NotSent`]; a 429 ends
    /// it too, with the service's answer (no task was made either way; the caller decides when
    /// to send again). Each attempt's bytes leave within the request timeout of its start, so
    /// nothing is sent after `send_by` plus the request timeout.
    ///
    /// ```no_run
    /// use std::time::{Duration, Instant};
    /// # async fn record_as_sending() -> Result<(), std::io::Error> { Ok(()) }
    ///
    /// # async fn run(client: gptimage_transport::Client, request: gptimage_types::GenerateRequest) -> Result<(), Box<dyn std::error::Error>> {
    /// let turn = client.pacer_turn().await?;
    /// let recording = Instant::now();
    /// record_as_sending().await?; // the durable record; nothing is sent if it fails
    /// let created = client
    ///     .submit_fenced(&request, turn, recording + Duration::from_secs(2))
    ///     .await?;
    /// # let _ = created;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`NotSent`]: crate::ErrorKind::NotSent
    pub async fn submit_fenced(
        &self,
        request: &GenerateRequest,
        turn: Turn,
        send_by: Instant,
    ) -> Result<CreatedTask> {
        let Turn { _taken: () } = turn;
        let watch = drive::watch(self.config(), request)?;
        let callback = watch.as_ref().map(|w| w.url.as_str());
        let pacer = &self.inner.pacer;
        let submit = CallMachine::submit(self.config(), request, callback, pacer, drive::seed())
            .fenced(send_by);
        let result = self.drive(submit, None).await;
        let result = drive::settle(self.config(), watch, result);
        self.reported(request, &result, false);
        if let Err(error) = &result
            && let Some(lost) = error.lost()
        {
            self.watch_lost(request.clone(), lost.clone());
        }
        result
    }

    /// Submits `request`; an unknown outcome is recovered from its callback if one confirms
    /// it within the wait timeout (with webhooks), else returned. With the task, the client to
    /// wait for it with: one whose wait timeout is what the recovery left of it, so that a
    /// generation never waits longer than its deadline in all.
    async fn submit_or_recover(&self, request: &GenerateRequest) -> Result<(CreatedTask, Client)> {
        let started = tokio::time::Instant::now();
        match self.submit(request).await {
            Err(error) if error.lost().is_some() => match self.recover(&error).await? {
                Some(found) => {
                    let left = self
                        .config()
                        .wait_timeout()
                        .saturating_sub(started.elapsed());
                    let options = crate::CallOptions::new().wait_timeout(left);
                    Ok((found, self.with_options(&options)?))
                }
                None => Err(error),
            },
            Err(error) => Err(error),
            Ok(created) => Ok((created, self.clone())),
        }
    }

    /// Reports a task once.
    pub async fn status(&self, task_id: &str) -> Result<TaskInfo> {
        self.drive(
            CallMachine::status(self.config(), task_id, drive::seed())?,
            None,
        )
        .await
    }

    /// Waits until the task ends, polling on the configured schedule, and returns it if it
    /// succeeded. A failed task is [`ErrorKind::TaskFailed`](crate::ErrorKind); a wait longer
    /// than the configured timeout is [`ErrorKind::DeadlinePassed`](crate::ErrorKind), with the
    /// task id, so the wait can be resumed. No request or pause reaches past the deadline.
    pub async fn wait(&self, task_id: &str) -> Result<TaskInfo> {
        self.wait_with(task_id, |_| {}).await
    }

    /// Like [`wait`](Self::wait), calling `on_update` with every status seen (for progress).
    pub async fn wait_with(
        &self,
        task_id: &str,
        on_update: impl FnMut(&TaskInfo) + Send,
    ) -> Result<TaskInfo> {
        let hints = drive::hints(self.config(), task_id);
        let mut wait = WaitMachine::new(self.config(), task_id, drive::seed(), on_update)?;
        if hints.is_some() {
            wait = wait.expecting_callback();
        }
        let result = self.drive(wait, hints).await;
        drive::waited(self.config(), task_id, &result);
        result
    }

    /// Submits `request` and waits for it to end. An error after the submission carries the
    /// task id ([`Error::task_id`]), so the wait can be resumed with [`wait`](Self::wait).
    ///
    /// Dropping the future cancels it. Dropped during the submission, a task may have been
    /// created (the request may have reached the service) and its id is lost: to store the id
    /// the moment it is known, use [`generate_with`](Self::generate_with). Dropped during the
    /// wait, the task goes on at the service.
    pub async fn generate(&self, request: &GenerateRequest) -> Result<TaskInfo> {
        let (created, waiting) = self.submit_or_recover(request).await?;
        waiting
            .wait(&created.task_id)
            .await
            .map_err(|e| e.with_task_id(&created.task_id))
    }

    /// Like [`generate`](Self::generate), reporting as it goes: the task id the moment the
    /// service names it ([`Progress::Submitted`]: store it before the wait, so a crash while
    /// waiting loses nothing), then each status change ([`Progress::Changed`]).
    ///
    /// ```no_run
    /// use gptimage_transport::{Client, Progress};
    /// use gptimage_types::GenerateRequest;
    ///
    /// # async fn run(client: Client) -> Result<(), gptimage_transport::Error> {
    /// let request = GenerateRequest::text_to_image("a lighthouse").build()?;
    /// let task = client
    ///     .generate_with(&request, |progress| match progress {
    ///         Progress::Submitted(created) => println!("task {}", created.task_id), // store it
    ///         Progress::Changed(info) => println!("now {}", info.status),
    ///         _ => {}
    ///     })
    ///     .await?;
    /// # let _ = task;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn generate_with(
        &self,
        request: &GenerateRequest,
        mut on_progress: impl FnMut(Progress<'_>) + Send,
    ) -> Result<TaskInfo> {
        let (created, waiting) = self.submit_or_recover(request).await?;
        on_progress(Progress::Submitted(&created));
        let on_change = |info: &TaskInfo| on_progress(Progress::Changed(info));
        let ended = waiting.follow(&created.task_id, on_change, None).await;
        ended
            .unwrap_or_else(|| Err(Error::deadline(&created.task_id, Duration::ZERO)))
            .map_err(|e| e.with_task_id(&created.task_id))
    }

    /// The task's status changes as a stream: each change once (not every poll), ending with
    /// the terminal status, a failed task's included (a status, not an error); a deadline
    /// passed (the client's wait timeout, from the first poll) or an error ends it as an
    /// `Err`. Webhook hints work as in [`wait`](Self::wait). Dropping the stream stops
    /// watching; the task goes on at the service.
    ///
    /// It is a [`Stream`](futures_core::Stream), and has an inherent `next` for use without a
    /// stream library:
    ///
    /// ```no_run
    /// # async fn run(client: gptimage_transport::Client) -> Result<(), gptimage_transport::Error> {
    /// let mut changes = client.watch("task-123");
    /// while let Some(status) = changes.next().await {
    ///     println!("{}", status?.status);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self, task_id: &str) -> TaskWatch {
        let (client, task_id) = (self.clone(), task_id.to_owned());
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let steps = Arc::clone(&queue);
        let driving = async move {
            let push = |step| lock(&steps).push_back(step);
            let config = client.config();
            let (mut machine, mut hints) = match drive::watch_machine(config, &task_id) {
                Ok(watch) => watch,
                Err(error) => return push(Err(error)),
            };
            loop {
                let step = client.drive_mut(&mut machine, &mut hints).await;
                let last = progress::is_last(&step);
                if last {
                    drive::watched(config, &task_id, &step);
                }
                push(step);
                if last {
                    return;
                }
            }
        };
        TaskWatch {
            queue,
            driving: Some(Box::pin(driving)),
        }
    }

    /// Generates many tasks at once: at most `concurrency` in flight (at least 1), sharing
    /// this client's pacer (so they keep to its rate together) and webhooks. Events come as
    /// they happen, each with its request's index: [`ManyEvent::Submitted`] when a task id is
    /// known, [`ManyEvent::Finished`] at each end. [`ManyTasks::stopper`] stops it cleanly
    /// (see [`Stopper`]).
    ///
    /// It runs on tasks of the current tokio runtime, so call it inside one. Its memory is
    /// bounded by `concurrency`, not by how many requests there are: events wait for the
    /// reader (a slow reader slows the work), and nothing finished is kept.
    ///
    /// Dropping the stream stops it (as [`Stopper::stop`] does) and lets go of it: nothing
    /// more is sent, and a submission on the wire still finishes, its task id (or unknown
    /// outcome) going to the client's [`on_submission`](crate::ClientBuilder::on_submission)
    /// sink and to a `tracing` event, so nothing paid for is forgotten. [`ManyTasks::abort`]
    /// ends everything at once instead.
    ///
    /// ```no_run
    /// use gptimage_transport::{Client, ManyEvent};
    /// use gptimage_types::GenerateRequest;
    ///
    /// # async fn run(client: Client) -> Result<(), gptimage_transport::Error> {
    /// let requests = ["a fox", "an owl", "a heron"]
    ///     .map(|prompt| GenerateRequest::text_to_image(prompt).build())
    ///     .into_iter()
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let mut events = client.generate_many(requests, 8);
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         ManyEvent::Submitted { index, task_id } => println!("{index}: task {task_id}"),
    ///         ManyEvent::Finished { index, result } => println!("{index}: {:?}", result.map(|t| t.images().len())),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn generate_many<I>(&self, requests: I, concurrency: usize) -> ManyTasks
    where
        I: IntoIterator<Item = GenerateRequest>,
        I::IntoIter: Send + 'static,
    {
        let concurrency = concurrency.max(1);
        let (events, receiver) = tokio::sync::mpsc::channel(concurrency.saturating_mul(2));
        let stopper = Stopper::new();
        let driver = tokio::spawn(many(
            self.clone(),
            requests.into_iter(),
            concurrency,
            events,
            stopper.clone(),
        ));
        ManyTasks {
            events: receiver,
            driver,
            stopper,
        }
    }

    /// Follows a task to its end, calling `on_change` with each status change (the terminal
    /// one included); `None` if `stop` came first.
    async fn follow(
        &self,
        task_id: &str,
        mut on_change: impl FnMut(&TaskInfo) + Send,
        stop: Option<&Stopper>,
    ) -> Option<Result<TaskInfo>> {
        let (mut machine, mut hints) = match drive::watch_machine(self.config(), task_id) {
            Ok(watch) => watch,
            Err(error) => return Some(Err(error)),
        };
        loop {
            let step = self.drive_mut(&mut machine, &mut hints);
            let step = match stop {
                None => step.await,
                Some(stop) => {
                    let mut step = std::pin::pin!(step);
                    let mut stopped = std::pin::pin!(stop.stopped());
                    let either = std::future::poll_fn(|cx| {
                        if let Poll::Ready(step) = step.as_mut().poll(cx) {
                            return Poll::Ready(Some(step));
                        }
                        stopped.as_mut().poll(cx).map(|()| None)
                    });
                    either.await?
                }
            };
            if let Ok(info) = &step {
                on_change(info);
            }
            if progress::is_last(&step) {
                drive::watched(self.config(), task_id, &step);
                return Some(drive::as_wait(step));
            }
        }
    }

    /// Downloads a finished task's images into memory, through the same HTTP stack, without the
    /// API key, within the configured size limit; each must be an image.
    pub async fn download(&self, task: &TaskInfo) -> Result<Vec<Image>> {
        let mut images = Vec::with_capacity(task.images().len());
        for url in task.images() {
            let download = DownloadMachine::new(self.config(), url, drive::seed())?;
            images.push(self.drive(download, None).await?);
        }
        Ok(images)
    }

    /// Downloads a finished task's images and keeps them in `store` (a folder, or a bucket:
    /// see [`hosting::ResultStore`](crate::hosting::ResultStore)) as `{stem}-{n}.{ext}`, each
    /// whole or not at all, and not written again if the same content is there; where each
    /// went.
    ///
    /// ```no_run
    /// # async fn run(client: gptimage_transport::Client, task: gptimage_types::TaskInfo) -> gptimage_transport::Result<()> {
    /// use gptimage_transport::hosting::FolderResults;
    ///
    /// for stored in client.save(&task, &FolderResults::new("out"), &task.task_id).await? {
    ///     println!("{}", stored.location);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn save(
        &self,
        task: &TaskInfo,
        store: &dyn crate::hosting::ResultStore,
        stem: &str,
    ) -> Result<Vec<crate::hosting::Stored>> {
        let images = self.download(task).await?;
        let mut stored = Vec::with_capacity(images.len());
        for (index, image) in images.iter().enumerate() {
            // Named as `download_to_dir_as` names files: the stem made safe, counted from 1.
            let key = files::file_name(stem, index, image.extension);
            let kept = store
                .put(&key, &image.bytes, image.extension)
                .await
                .map_err(|e| e.with_task_id(&task.task_id))?;
            stored.push(kept);
        }
        Ok(stored)
    }

    /// Downloads a finished task's images into `dir` as `{task_id}-{n}.{ext}`, each written
    /// atomically, and returns their paths.
    pub async fn download_to_dir(
        &self,
        task: &TaskInfo,
        dir: impl AsRef<Path>,
    ) -> Result<Vec<PathBuf>> {
        self.download_to_dir_as(task, dir, &task.task_id).await
    }

    /// Like [`download_to_dir`](Self::download_to_dir), naming the files `{stem}-{n}.{ext}`.
    pub async fn download_to_dir_as(
        &self,
        task: &TaskInfo,
        dir: impl AsRef<Path>,
        stem: &str,
    ) -> Result<Vec<PathBuf>> {
        let images = self.download(task).await?;
        let (dir, stem) = (dir.as_ref().to_path_buf(), stem.to_owned());
        files::on_a_thread("the writing thread", move || {
            files::save_all(&images, &dir, &stem)
        })
        .await
    }

    /// The drive loop of a submission: like [`drive`](Self::drive), except that a pause (a
    /// pacer wait, a backoff after a 429) ends the moment `caller` goes or `stop` comes, and no
    /// attempt starts after that: the submission ends [`NotSent`](crate::ErrorKind::NotSent).
    /// An attempt already on the wire runs to its answer. (The machine pauses or retries only
    /// while no task can have been made, so leaving then is provably free.)
    async fn drive_submission<M: Machine<Output = CreatedTask>>(
        &self,
        mut machine: M,
        caller: &Stopper,
        stop: Option<&Stopper>,
    ) -> Result<CreatedTask> {
        let left = || caller.is_stopped() || stop.is_some_and(Stopper::is_stopped);
        let unsent = || {
            Error::not_sent(
                "it was stopped, or its caller went away, before it was sent",
                None,
            )
        };
        #[cfg(feature = "tracing")]
        let span = machine.span();
        let run = async move {
            loop {
                match machine.poll(now()) {
                    Next::Done(result) => return result,
                    Next::SleepUntil(until) => {
                        let sleep = tokio::time::sleep_until(until.into());
                        if left() || sleep_or_stopped(sleep, caller, stop).await {
                            return Err(unsent());
                        }
                    }
                    Next::Send(request, options, op) => {
                        if left() {
                            return Err(unsent());
                        }
                        let answer = self.send(request, options, op).await;
                        machine.handle(now(), answer);
                    }
                }
            }
        };
        #[cfg(feature = "tracing")]
        let run = tracing::Instrument::instrument(run, span);
        run.await
    }

    /// Sends one request a machine asked for, in its operation's span (with `tracing`).
    async fn send(
        &self,
        request: crate::transport::HttpRequest,
        options: crate::transport::SendOptions,
        _op: crate::core::request::Op,
    ) -> std::result::Result<crate::transport::HttpResponse, crate::transport::TransportError> {
        let send = self.inner.transport.send(request, options);
        #[cfg(feature = "tracing")]
        let send = tracing::Instrument::instrument(send, drive::span(_op));
        send.await
    }

    /// The one loop: asks the machine what to do, does it on tokio, and reports back; a pause
    /// ends early when a hint comes.
    async fn drive<M: Machine>(
        &self,
        mut machine: M,
        mut hints: Option<Hints>,
    ) -> Result<M::Output> {
        self.drive_mut(&mut machine, &mut hints).await
    }

    /// [`drive`](Self::drive) on a machine kept for more steps (a watch's).
    async fn drive_mut<M: Machine>(
        &self,
        machine: &mut M,
        hints: &mut Option<Hints>,
    ) -> Result<M::Output> {
        #[cfg(feature = "tracing")]
        let span = machine.span();
        let run = async move {
            loop {
                match machine.poll(now()) {
                    Next::Done(result) => return result,
                    Next::SleepUntil(until) => match hints.as_mut() {
                        None => tokio::time::sleep_until(until.into()).await,
                        Some(hints) => {
                            if sleep_or_hint(until, hints).await {
                                machine.hint(now());
                            }
                        }
                    },
                    Next::Send(request, options, op) => {
                        let answer = self.send(request, options, op).await;
                        machine.handle(now(), answer);
                    }
                }
            }
        };
        #[cfg(feature = "tracing")]
        let run = tracing::Instrument::instrument(run, span);
        run.await
    }
}

/// A turn of a client's pacer, taken by [`Client::pacer_turn`] for one
/// [`submit_fenced`](Client::submit_fenced).
#[derive(Debug)]
#[must_use = "a turn is for one submission: give it to submit_fenced"]
pub struct Turn {
    _taken: (),
}

/// The stream of [`Client::watch`]: a task's status changes. A [`Stream`](futures_core::Stream),
/// with an inherent [`next`](Self::next).
pub struct TaskWatch {
    queue: Arc<Mutex<VecDeque<Result<TaskInfo>>>>,
    /// The watch itself, driven by whoever polls the stream; `None` once over.
    driving: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for TaskWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskWatch")
            .field("over", &self.driving.is_none())
            .finish_non_exhaustive()
    }
}

impl TaskWatch {
    /// The next change; `None` once the watch is over.
    pub async fn next(&mut self) -> Option<Result<TaskInfo>> {
        std::future::poll_fn(|cx| self.poll_step(cx)).await
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<TaskInfo>>> {
        loop {
            if let Some(step) = lock(&self.queue).pop_front() {
                return Poll::Ready(Some(step));
            }
            let Some(driving) = self.driving.as_mut() else {
                return Poll::Ready(None);
            };
            match driving.as_mut().poll(cx) {
                Poll::Ready(()) => self.driving = None,
                // A step may have come during that poll.
                Poll::Pending => {
                    return match lock(&self.queue).pop_front() {
                        Some(step) => Poll::Ready(Some(step)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

impl futures_core::Stream for TaskWatch {
    type Item = Result<TaskInfo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_step(cx)
    }
}

/// The events of [`Client::generate_many`]. A [`Stream`](futures_core::Stream), with an
/// inherent [`next`](Self::next); dropping it stops the work and lets it finish on its own
/// (see [`Client::generate_many`]).
#[derive(Debug)]
pub struct ManyTasks {
    events: tokio::sync::mpsc::Receiver<ManyEvent>,
    driver: tokio::task::JoinHandle<()>,
    stopper: Stopper,
}

impl ManyTasks {
    /// The next event; `None` once every request is over (or, after a stop, once every
    /// submission on its way has reported).
    pub async fn next(&mut self) -> Option<ManyEvent> {
        self.events.recv().await
    }

    /// The signal that stops it cleanly, to give from anywhere.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Ends everything at once, without waiting for any answer: the old behaviour of dropping
    /// the stream. A submission on the wire is dropped with its answer, so a task may exist
    /// whose id nobody hears: prefer [`Stopper::stop`], or dropping the stream.
    pub fn abort(self) {
        self.stopper.stop();
        self.driver.abort();
    }
}

impl futures_core::Stream for ManyTasks {
    type Item = ManyEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ManyEvent>> {
        self.get_mut().events.poll_recv(cx)
    }
}

impl Drop for ManyTasks {
    fn drop(&mut self) {
        // Stopped, not aborted: what is on the wire finishes and reports to the sink.
        self.stopper.stop();
    }
}

/// The driver of [`Client::generate_many`]: keeps `limit` requests in flight until the input
/// ends or the stop comes, then lets those in flight report.
async fn many(
    client: Client,
    requests: impl Iterator<Item = GenerateRequest>,
    limit: usize,
    events: tokio::sync::mpsc::Sender<ManyEvent>,
    stop: Stopper,
) {
    let mut requests = requests.enumerate();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < limit && !stop.is_stopped() {
            let Some((index, request)) = requests.next() else {
                break;
            };
            let (client, events, stop) = (client.clone(), events.clone(), stop.clone());
            running.spawn(async move { client.one_of_many(index, request, events, stop).await });
        }
        if running.join_next().await.is_none() {
            return;
        }
    }
}

impl Client {
    /// One request of [`generate_many`](Self::generate_many): a stop before its request is on
    /// the wire leaves it unsent ([`NotSent`](crate::ErrorKind::NotSent)); a submission sent
    /// always reports (a lost answer recovered from its callback first, with webhooks); its
    /// wait ends at the stop.
    async fn one_of_many(
        &self,
        index: usize,
        request: GenerateRequest,
        events: tokio::sync::mpsc::Sender<ManyEvent>,
        stop: Stopper,
    ) {
        let submitted = match self
            .submission(&request, &Stopper::new(), Some(&stop))
            .await
        {
            Err(error) if error.lost().is_some() => {
                // Recovered unless the stop comes first.
                let found = tokio::select! {
                    biased;
                    () = stop.stopped() => None,
                    found = self.recover(&error) => found.ok().flatten(),
                };
                found.ok_or(error)
            }
            other => other,
        };
        let created = match submitted {
            Ok(created) => created,
            Err(error) => {
                let _ = events
                    .send(ManyEvent::Finished {
                        index,
                        result: Err(error),
                    })
                    .await;
                return;
            }
        };
        let task_id = created.task_id;
        let _ = events
            .send(ManyEvent::Submitted {
                index,
                task_id: task_id.clone(),
            })
            .await;
        let event = match self.follow(&task_id, |_| {}, Some(&stop)).await {
            Some(result) => ManyEvent::Finished {
                index,
                result: result.map_err(|e| e.with_task_id(&task_id)),
            },
            None => ManyEvent::Stopped { index, task_id },
        };
        let _ = events.send(event).await;
    }
}

/// The instant the machines read: tokio's clock, so that a test under paused time
/// (`#[tokio::test(start_paused = true)]`) runs a ten-minute wait in no time, deadlines, pacer
/// waits and `Retry-After` included. Outside paused time it is the system's monotonic clock.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps, or less if `caller` goes or `stop` comes first; whether one of them did.
async fn sleep_or_stopped(
    sleep: impl Future<Output = ()>,
    caller: &Stopper,
    stop: Option<&Stopper>,
) -> bool {
    let mut sleep = std::pin::pin!(sleep);
    let mut gone = std::pin::pin!(caller.stopped());
    let mut stopped = stop.map(|s| Box::pin(s.stopped()));
    std::future::poll_fn(|cx| {
        if gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if let Some(stopped) = stopped.as_mut()
            && stopped.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(true);
        }
        sleep.as_mut().poll(cx).map(|()| false)
    })
    .await
}

/// Gives its signal when dropped: a caller's future that is dropped says it is gone.
struct GoneOnDrop(Stopper);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Sleeps until `until`, or less if a hint comes first; whether one came.
async fn sleep_or_hint(until: Instant, hints: &mut Hints) -> bool {
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(until.into()));
    let mut hint = std::pin::pin!(hints.next());
    std::future::poll_fn(|cx| {
        if hint.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(true);
        }
        sleep.as_mut().poll(cx).map(|()| false)
    })
    .await
}
