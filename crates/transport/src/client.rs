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
use crate::progress::{self, ManyEvent, Progress, Stopper};
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
    /// unknown, the error says so ([`ErrorKind::OutcomeUnknown`](crate::ErrorKind)).
    ///
    /// Dropping the future cancels the call; dropped once the request is on its way, it may
    /// have reached the service, so a task may exist, and its id is lost with the answer.
    pub async fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask> {
        let watch = drive::watch(self.config(), request)?;
        let callback = watch.as_ref().map(|w| w.url.as_str());
        let pacer = &self.inner.pacer;
        let submit = CallMachine::submit(self.config(), request, callback, pacer, drive::seed());
        let result = self.drive(submit, None).await;
        drive::settle(self.config(), watch, &result);
        result
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
        drive::settle(self.config(), watch, &result);
        result
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
        let created = self.submit(request).await?;
        self.wait(&created.task_id)
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
        let created = self.submit(request).await?;
        on_progress(Progress::Submitted(&created));
        let on_change = |info: &TaskInfo| on_progress(Progress::Changed(info));
        let ended = self.follow(&created.task_id, on_change, None).await;
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
    /// It runs on tasks of the current tokio runtime, so call it inside one. Dropping the
    /// stream cancels everything at once: a submission then on its way may have created a
    /// task whose id you never see, so stop first when that matters.
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
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let stopper = Stopper::new();
        let driver = tokio::spawn(many(
            self.clone(),
            requests.into_iter(),
            concurrency.max(1),
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
        tokio::task::spawn_blocking(move || files::save_all(&images, &dir, &stem))
            .await
            .map_err(|e| Error::download("the writing thread failed", Some(Box::new(e))))?
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
                match machine.poll(Instant::now()) {
                    Next::Done(result) => return result,
                    Next::SleepUntil(until) => match hints.as_mut() {
                        None => tokio::time::sleep_until(until.into()).await,
                        Some(hints) => {
                            if sleep_or_hint(until, hints).await {
                                machine.hint(Instant::now());
                            }
                        }
                    },
                    Next::Send(request, options, _op) => {
                        let send = self.inner.transport.send(request, options);
                        #[cfg(feature = "tracing")]
                        let send = tracing::Instrument::instrument(send, drive::span(_op));
                        let answer = send.await;
                        machine.handle(Instant::now(), answer);
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
/// inherent [`next`](Self::next); dropping it cancels everything.
#[derive(Debug)]
pub struct ManyTasks {
    events: tokio::sync::mpsc::UnboundedReceiver<ManyEvent>,
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
}

impl futures_core::Stream for ManyTasks {
    type Item = ManyEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ManyEvent>> {
        self.get_mut().events.poll_recv(cx)
    }
}

impl Drop for ManyTasks {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The driver of [`Client::generate_many`]: keeps `limit` requests in flight until the input
/// ends or the stop comes, then lets those in flight report.
async fn many(
    client: Client,
    requests: impl Iterator<Item = GenerateRequest>,
    limit: usize,
    events: tokio::sync::mpsc::UnboundedSender<ManyEvent>,
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
    /// One request of [`generate_many`](Self::generate_many): its submission always reports;
    /// its wait ends at the stop.
    async fn one_of_many(
        &self,
        index: usize,
        request: GenerateRequest,
        events: tokio::sync::mpsc::UnboundedSender<ManyEvent>,
        stop: Stopper,
    ) {
        let created = match self.submit(&request).await {
            Ok(created) => created,
            Err(error) => {
                let _ = events.send(ManyEvent::Finished {
                    index,
                    result: Err(error),
                });
                return;
            }
        };
        let task_id = created.task_id;
        let _ = events.send(ManyEvent::Submitted {
            index,
            task_id: task_id.clone(),
        });
        let event = match self.follow(&task_id, |_| {}, Some(&stop)).await {
            Some(result) => ManyEvent::Finished {
                index,
                result: result.map_err(|e| e.with_task_id(&task_id)),
            },
            None => ManyEvent::Stopped { index, task_id },
        };
        let _ = events.send(event);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
