//! The blocking client: one loop that drives the core's machines over a [`BlockingTransport`](crate::transport::BlockingTransport)
//! and the thread's sleep; every method is a thin wrapper over it. No async runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::config::{ClientBuilder, Config, FromConfig, sealed};
use crate::core::{CallMachine, DownloadMachine, Image, Machine, Next, WaitMachine};
use crate::error::{Error, Result};
use crate::progress::{self, ManyEvent, Progress, Stopper, Submission};
use crate::transport::BlockingTransport;
use crate::ureq_transport::UreqTransport;
use crate::webhook::Hints;
use crate::{drive, files};

/// The blocking client of the GPT Image 1.5 API, for synchronous programs.
///
/// Cheap to clone (clones share one connection pool), `Send` and `Sync`. Every call is bounded
/// in time; submissions are never retried when a task may already exist.
///
/// ```no_run
/// use gptimage_transport::blocking::Client;
/// use gptimage_types::{GenerateRequest, Size};
///
/// let client = Client::from_env()?; // GPTIMAGE_API_KEY, and GPTIMAGE_BASE_URL if set
/// let request = GenerateRequest::text_to_image("a lighthouse at dawn")
///     .size(Size::Landscape)
///     .build()?;
/// let task = client.generate(&request)?; // submit, then wait for the end
/// let paths = client.download_to_dir(&task, "out")?;
/// println!("saved {paths:?}");
/// # Ok::<(), gptimage_transport::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// This handle's settings: the client's, or a per-call variant ([`Client::with_options`]).
    config: Arc<Config>,
}

drive::client_shell!(BlockingTransport, UreqTransport, "blocking::Client");

impl Client {
    /// Starts a task. Retried only when no task can have been created; when the outcome is
    /// unknown, the error says so ([`ErrorKind::OutcomeUnknown`](crate::ErrorKind)), and, if
    /// the client has webhooks, the task can still be recovered from its callback
    /// ([`recover`](Self::recover)). Its outcome also goes to the client's
    /// [`on_submission`](crate::ClientBuilder::on_submission) sink.
    pub fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask> {
        self.submission(request, None)
    }

    /// One submission, left unsent if `stop` comes before its request is on the wire; its
    /// outcome reported to the sink.
    fn submission(&self, request: &GenerateRequest, stop: Option<&Stopper>) -> Result<CreatedTask> {
        let _counted = Submitting::new(&self.inner.submitting);
        let watch = drive::watch(self.config(), request)?;
        let callback = watch.as_ref().map(|w| w.url.as_str());
        let pacer = &self.inner.pacer;
        let submit = CallMachine::submit(self.config(), request, callback, pacer, drive::seed());
        let result = self.drive_submission(submit, stop);
        let result = drive::settle(self.config(), watch, result);
        let sink = self.config().on_submission.as_ref();
        match &result {
            Ok(created) => progress::report(
                sink,
                &Submission::Created {
                    request,
                    task_id: &created.task_id,
                    abandoned: false,
                },
            ),
            Err(error) if error.kind() == crate::ErrorKind::OutcomeUnknown => progress::report(
                sink,
                &Submission::Unknown {
                    request,
                    error,
                    abandoned: false,
                },
            ),
            Err(_) => {}
        }
        result
    }

    /// Waits, at most `within`, until no submission of this client is under way (see
    /// [`in_flight`](Self::in_flight)), those of a dropped `generate_many` included; whether
    /// none is. For a program's shutdown, before it exits.
    pub fn drain(&self, within: Duration) -> bool {
        let deadline = crate::core::later(Instant::now(), within);
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The task of a submission whose answer was lost (`err` an
    /// [`OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown) of this client's `submit` of
    /// `request`), once its callback has named it and a status request has confirmed it (the
    /// task exists under this key and echoes the submission's own callback URL and prompt),
    /// waiting at most the wait timeout; `None` if the client has no webhooks, the error is
    /// another, or no confirmed callback came. Nothing is ever resubmitted.
    ///
    /// ```no_run
    /// # fn run(client: gptimage_transport::blocking::Client, request: gptimage_types::GenerateRequest) -> Result<(), gptimage_transport::Error> {
    /// let created = match client.submit(&request) {
    ///     Ok(created) => created,
    ///     Err(lost) if lost.may_have_created_task() => match client.recover(&request, &lost)? {
    ///         Some(found) => found,
    ///         None => return Err(lost), // check the account before sending it again
    ///     },
    ///     Err(other) => return Err(other),
    /// };
    /// # let _ = created;
    /// # Ok(())
    /// # }
    /// ```
    pub fn recover(&self, request: &GenerateRequest, err: &Error) -> Result<Option<CreatedTask>> {
        Ok(self.recover_until(request, err, None))
    }

    /// [`recover`](Self::recover), ended early by `stop`.
    fn recover_until(
        &self,
        request: &GenerateRequest,
        err: &Error,
        stop: Option<&Stopper>,
    ) -> Option<CreatedTask> {
        let lost = err.lost()?;
        if let Some(task_id) = lost.recovered() {
            return Some(CreatedTask::new(
                task_id,
                gptimage_types::TaskStatus::Pending,
            ));
        }
        let deadline = crate::core::later(Instant::now(), self.config().wait_timeout());
        let mut seen = 0;
        loop {
            if stop.is_some_and(Stopper::is_stopped) || Instant::now() >= deadline {
                lost.give_up();
                return None;
            }
            let slice = match stop {
                Some(_) => deadline.min(Instant::now() + STOP_SLICE),
                None => deadline,
            };
            if !lost.wait_candidate(seen, slice) {
                continue;
            }
            for candidate in lost.candidates(seen) {
                seen += 1;
                let Ok(info) = self.status(&candidate) else {
                    continue;
                };
                if drive::confirms(lost, request, &info) {
                    lost.found(&candidate);
                    progress::report(
                        self.config().on_submission.as_ref(),
                        &Submission::Recovered {
                            request,
                            task_id: &candidate,
                        },
                    );
                    return Some(CreatedTask::new(
                        candidate,
                        gptimage_types::TaskStatus::Pending,
                    ));
                }
            }
        }
    }

    /// Submits `request`; an unknown outcome is recovered from its callback if one confirms
    /// it within the wait timeout (with webhooks), else returned. With the task, the client to
    /// wait for it with: one whose wait timeout is what the recovery left of it.
    fn submit_or_recover(&self, request: &GenerateRequest) -> Result<(CreatedTask, Client)> {
        let started = Instant::now();
        match self.submit(request) {
            Err(error) if error.lost().is_some() => {
                let found = self.recover_until(request, &error, None).ok_or(error)?;
                let left = self
                    .config()
                    .wait_timeout()
                    .saturating_sub(started.elapsed());
                let options = crate::CallOptions::new().wait_timeout(left);
                Ok((found, self.with_options(&options)?))
            }
            Err(error) => Err(error),
            Ok(created) => Ok((created, self.clone())),
        }
    }

    /// Reports a task once.
    pub fn status(&self, task_id: &str) -> Result<TaskInfo> {
        self.drive(
            CallMachine::status(self.config(), task_id, drive::seed())?,
            None,
        )
    }

    /// Waits until the task ends, polling on the configured schedule, and returns it if it
    /// succeeded. A failed task is [`ErrorKind::TaskFailed`](crate::ErrorKind); a wait longer
    /// than the configured timeout is [`ErrorKind::DeadlinePassed`](crate::ErrorKind), with the
    /// task id. No request or pause reaches past the deadline.
    pub fn wait(&self, task_id: &str) -> Result<TaskInfo> {
        self.wait_with(task_id, |_| {})
    }

    /// Like [`wait`](Self::wait), calling `on_update` with every status seen (for progress).
    pub fn wait_with(&self, task_id: &str, on_update: impl FnMut(&TaskInfo)) -> Result<TaskInfo> {
        let hints = drive::hints(self.config(), task_id);
        let mut wait = WaitMachine::new(self.config(), task_id, drive::seed(), on_update)?;
        if hints.is_some() {
            wait = wait.expecting_callback();
        }
        let result = self.drive(wait, hints);
        drive::waited(self.config(), task_id, &result);
        result
    }

    /// Submits `request` and waits for it to end. An error after the submission carries the
    /// task id ([`Error::task_id`](crate::Error::task_id)), so the wait can be resumed with [`wait`](Self::wait).
    pub fn generate(&self, request: &GenerateRequest) -> Result<TaskInfo> {
        let (created, waiting) = self.submit_or_recover(request)?;
        waiting
            .wait(&created.task_id)
            .map_err(|e| e.with_task_id(&created.task_id))
    }

    /// Like [`generate`](Self::generate), reporting as it goes: the task id the moment the
    /// service names it ([`Progress::Submitted`]: store it before the wait, so a crash while
    /// waiting loses nothing), then each status change ([`Progress::Changed`]).
    ///
    /// ```no_run
    /// use gptimage_transport::{Progress, blocking::Client};
    /// use gptimage_types::GenerateRequest;
    ///
    /// # fn run(client: Client) -> Result<(), gptimage_transport::Error> {
    /// let request = GenerateRequest::text_to_image("a lighthouse").build()?;
    /// let task = client.generate_with(&request, |progress| match progress {
    ///     Progress::Submitted(created) => println!("task {}", created.task_id), // store it
    ///     Progress::Changed(info) => println!("now {}", info.status),
    ///     _ => {}
    /// })?;
    /// # let _ = task;
    /// # Ok(())
    /// # }
    /// ```
    pub fn generate_with(
        &self,
        request: &GenerateRequest,
        mut on_progress: impl FnMut(Progress<'_>),
    ) -> Result<TaskInfo> {
        let (created, waiting) = self.submit_or_recover(request)?;
        on_progress(Progress::Submitted(&created));
        let on_change = |info: &TaskInfo| on_progress(Progress::Changed(info));
        waiting
            .follow(&created.task_id, on_change, None)
            .unwrap_or_else(|| Err(Error::deadline(&created.task_id, Duration::ZERO)))
            .map_err(|e| e.with_task_id(&created.task_id))
    }

    /// The task's status changes, as an iterator: each change once (not every poll), ending
    /// with the terminal status, a failed task's included (a status, not an error); a deadline
    /// passed (the client's wait timeout, from the first poll) or an error ends it as an
    /// `Err`. Webhook hints work as in [`wait`](Self::wait). Each `next` blocks until the next
    /// change; dropping the iterator stops watching (the task goes on at the service).
    ///
    /// ```no_run
    /// # fn run(client: gptimage_transport::blocking::Client) -> Result<(), gptimage_transport::Error> {
    /// for status in client.watch("task-123") {
    ///     println!("{}", status?.status);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self, task_id: &str) -> TaskWatch<'_> {
        let (machine, hints, first) = match drive::watch_machine(self.config(), task_id) {
            Ok((machine, hints)) => (Some(machine), hints, None),
            Err(error) => (None, None, Some(error)),
        };
        TaskWatch {
            client: self,
            task_id: task_id.to_owned(),
            machine,
            hints,
            first,
        }
    }

    /// Generates many tasks at once on `concurrency` threads of its own (at least 1), sharing
    /// this client's pacer (so they keep to its rate together) and webhooks. Events come as
    /// they happen, each with its request's index: [`ManyEvent::Submitted`] when a task id is
    /// known, [`ManyEvent::Finished`] at each end. [`ManyTasks::stopper`] stops it cleanly (see
    /// [`Stopper`]); dropping the iterator stops it too, and returns once its threads have
    /// ended (each submission on its way finishes first).
    ///
    /// ```no_run
    /// use gptimage_transport::{ManyEvent, blocking::Client};
    /// use gptimage_types::GenerateRequest;
    ///
    /// # fn run(client: Client) -> Result<(), gptimage_transport::Error> {
    /// let requests = ["a fox", "an owl", "a heron"]
    ///     .map(|prompt| GenerateRequest::text_to_image(prompt).build())
    ///     .into_iter()
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// for event in client.generate_many(requests, 8) {
    ///     if let ManyEvent::Finished { index, result } = event {
    ///         println!("{index}: {:?}", result.map(|t| t.images().len()));
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
        let requests: Arc<Mutex<Queue>> =
            Arc::new(Mutex::new(Box::new(requests.into_iter().enumerate())));
        let threads = concurrency.clamp(1, MAX_THREADS);
        // Events wait for the reader: memory is bounded by the threads, not the requests.
        let (events, receiver) = std::sync::mpsc::sync_channel(threads.saturating_mul(2));
        let stopper = Stopper::new();
        let mut refused = None;
        for n in 0..threads {
            let (client, queue) = (self.clone(), Arc::clone(&requests));
            let (events, stop) = (events.clone(), stopper.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("gptimage-many-{n}"))
                .spawn(move || {
                    while !stop.is_stopped() {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some((index, request)) = next else { break };
                        if !client.one_of_many(index, &request, &events, &stop) {
                            break;
                        }
                    }
                });
            if let Err(error) = spawned {
                // Fewer threads do the same work; with none, every request says why.
                refused = (n == 0).then(|| error.to_string());
                break;
            }
        }
        ManyTasks {
            events: receiver,
            stopper,
            unstarted: refused.map(|why| (requests, why)),
        }
    }

    /// One request of [`generate_many`](Self::generate_many): a stop before its request is on
    /// the wire leaves it unsent ([`NotSent`](crate::ErrorKind::NotSent)); a submission sent
    /// always reports (a lost answer recovered from its callback first, with webhooks), to the
    /// events or, once nobody reads them, to the client's sink; its wait ends at the stop.
    /// Whether anyone still listens.
    fn one_of_many(
        &self,
        index: usize,
        request: &GenerateRequest,
        events: &std::sync::mpsc::SyncSender<ManyEvent>,
        stop: &Stopper,
    ) -> bool {
        let submitted = match self.submission(request, Some(stop)) {
            Err(error) if error.lost().is_some() && !stop.is_stopped() => {
                self.recover_until(request, &error, Some(stop)).ok_or(error)
            }
            other => other,
        };
        let created = match submitted {
            Ok(created) => created,
            Err(error) => {
                let result = Err(error);
                return events.send(ManyEvent::Finished { index, result }).is_ok();
            }
        };
        let task_id = created.task_id;
        let submitted = ManyEvent::Submitted {
            index,
            task_id: task_id.clone(),
        };
        if events.send(submitted).is_err() {
            return false;
        }
        let event = match self.follow(&task_id, |_| {}, Some(stop)) {
            Some(result) => ManyEvent::Finished {
                index,
                result: result.map_err(|e| e.with_task_id(&task_id)),
            },
            None => ManyEvent::Stopped { index, task_id },
        };
        events.send(event).is_ok()
    }

    /// Follows a task to its end, calling `on_change` with each status change (the terminal
    /// one included); `None` if `stop` came first.
    fn follow(
        &self,
        task_id: &str,
        mut on_change: impl FnMut(&TaskInfo),
        stop: Option<&Stopper>,
    ) -> Option<Result<TaskInfo>> {
        let (mut machine, mut hints) = match drive::watch_machine(self.config(), task_id) {
            Ok(watch) => watch,
            Err(error) => return Some(Err(error)),
        };
        loop {
            let step = self.drive_until(&mut machine, &mut hints, stop)?;
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
    pub fn download(&self, task: &TaskInfo) -> Result<Vec<Image>> {
        task.images()
            .iter()
            .map(|url| {
                self.drive(
                    DownloadMachine::new(self.config(), url, drive::seed())?,
                    None,
                )
            })
            .collect()
    }

    /// Downloads a finished task's images into `dir` as `{task_id}-{n}.{ext}`, each written
    /// atomically, and returns their paths.
    pub fn download_to_dir(&self, task: &TaskInfo, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        self.download_to_dir_as(task, dir, &task.task_id)
    }

    /// Like [`download_to_dir`](Self::download_to_dir), naming the files `{stem}-{n}.{ext}`.
    pub fn download_to_dir_as(
        &self,
        task: &TaskInfo,
        dir: impl AsRef<Path>,
        stem: &str,
    ) -> Result<Vec<PathBuf>> {
        files::save_all(&self.download(task)?, dir.as_ref(), stem)
    }

    /// The one loop: asks the machine what to do, does it on this thread, and reports back; a
    /// pause ends early when a hint comes.
    fn drive<M: Machine>(&self, mut machine: M, mut hints: Option<Hints>) -> Result<M::Output> {
        self.drive_mut(&mut machine, &mut hints)
    }

    /// [`drive`](Self::drive) on a machine kept for more steps (a watch's).
    fn drive_mut<M: Machine>(
        &self,
        machine: &mut M,
        hints: &mut Option<Hints>,
    ) -> Result<M::Output> {
        self.drive_until(machine, hints, None)
            .expect("without a stop signal, a drive always ends with the machine")
    }

    /// The drive loop of a submission: like [`drive`](Self::drive), except that a pause (a
    /// pacer wait, a backoff after a 429) ends the moment `stop` comes, and no attempt starts
    /// after it: the submission ends [`NotSent`](crate::ErrorKind::NotSent). An attempt on the
    /// wire runs to its answer. (The machine pauses or retries only while no task can have been
    /// made, so leaving then is provably free.)
    fn drive_submission<M: Machine<Output = CreatedTask>>(
        &self,
        mut machine: M,
        stop: Option<&Stopper>,
    ) -> Result<CreatedTask> {
        #[cfg(feature = "tracing")]
        let _span = machine.span().entered();
        let unsent = || Error::not_sent("it was stopped before it was sent", None);
        loop {
            match machine.poll(Instant::now()) {
                Next::Done(result) => return result,
                Next::SleepUntil(until) => match stop {
                    None => std::thread::sleep(until.saturating_duration_since(Instant::now())),
                    Some(stop) => {
                        if stop.sleep_until(until) {
                            return Err(unsent());
                        }
                    }
                },
                Next::Send(request, options, _op) => {
                    if stop.is_some_and(Stopper::is_stopped) {
                        return Err(unsent());
                    }
                    #[cfg(feature = "tracing")]
                    let _span = drive::span(_op).entered();
                    let answer = self.inner.transport.send(request, options);
                    machine.handle(Instant::now(), answer);
                }
            }
        }
    }

    /// [`drive_mut`](Self::drive_mut), whose pauses also end at `stop`: `None` if it came.
    /// (With webhooks, a pause looks at the stop every 100 ms: the hint and the stop are two
    /// condition variables.)
    fn drive_until<M: Machine>(
        &self,
        machine: &mut M,
        hints: &mut Option<Hints>,
        stop: Option<&Stopper>,
    ) -> Option<Result<M::Output>> {
        #[cfg(feature = "tracing")]
        let _span = machine.span().entered();
        loop {
            if stop.is_some_and(Stopper::is_stopped) {
                return None;
            }
            match machine.poll(Instant::now()) {
                Next::Done(result) => return Some(result),
                Next::SleepUntil(until) => match (hints.as_mut(), stop) {
                    (None, None) => {
                        std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    }
                    (None, Some(stop)) => {
                        if stop.sleep_until(until) {
                            return None;
                        }
                    }
                    (Some(hints), stop) => {
                        let slice = match stop {
                            Some(_) => until.min(Instant::now() + STOP_SLICE),
                            None => until,
                        };
                        if hints.wait_until(slice) {
                            machine.hint(Instant::now());
                        }
                    }
                },
                Next::Send(request, options, _op) => {
                    #[cfg(feature = "tracing")]
                    let _span = drive::span(_op).entered();
                    let answer = self.inner.transport.send(request, options);
                    machine.handle(Instant::now(), answer);
                }
            }
        }
    }
}

/// The requests of [`Client::generate_many`] not yet taken, with their indexes.
type Queue = Box<dyn Iterator<Item = (usize, GenerateRequest)> + Send>;

/// How often a pause that waits for webhook hints looks at a stop signal.
const STOP_SLICE: Duration = Duration::from_millis(100);

/// The iterator of [`Client::watch`]: a task's status changes.
pub struct TaskWatch<'c> {
    client: &'c Client,
    task_id: String,
    machine: Option<drive::Watching<'c>>,
    hints: Option<Hints>,
    /// An error to report first (the task id could not be asked for).
    first: Option<Error>,
}

impl std::fmt::Debug for TaskWatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskWatch")
            .field("task_id", &self.task_id)
            .field("over", &self.machine.is_none())
            .finish_non_exhaustive()
    }
}

impl Iterator for TaskWatch<'_> {
    type Item = Result<TaskInfo>;

    fn next(&mut self) -> Option<Result<TaskInfo>> {
        if let Some(error) = self.first.take() {
            return Some(Err(error));
        }
        let machine = self.machine.as_mut()?;
        let step = self.client.drive_mut(machine, &mut self.hints);
        if progress::is_last(&step) {
            self.machine = None;
            drive::watched(self.client.config(), &self.task_id, &step);
        }
        Some(step)
    }
}

/// The most threads [`Client::generate_many`] starts, whatever concurrency it is asked for:
/// each is a whole thread with its own stack. For more in flight, use the async client.
pub const MAX_THREADS: usize = 128;

/// The events of [`Client::generate_many`], as an iterator. Dropping it stops the work and
/// returns at once: nothing more is sent, and a submission on the wire finishes on its thread,
/// its task id (or unknown outcome) going to the client's
/// [`on_submission`](crate::ClientBuilder::on_submission) sink and to a `tracing` event.
pub struct ManyTasks {
    events: std::sync::mpsc::Receiver<ManyEvent>,
    stopper: Stopper,
    /// When no thread could be started: the requests, each reported as not sent, and why.
    unstarted: Option<(Arc<Mutex<Queue>>, String)>,
}

impl std::fmt::Debug for ManyTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManyTasks")
            .field("stopped", &self.stopper.is_stopped())
            .finish_non_exhaustive()
    }
}

impl ManyTasks {
    /// The signal that stops it cleanly, to give from any thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }
}

impl Iterator for ManyTasks {
    type Item = ManyEvent;

    /// The next event; `None` once every request is over (or, after a stop, once every
    /// submission on its way has reported).
    fn next(&mut self) -> Option<ManyEvent> {
        if let Some((queue, why)) = &self.unstarted {
            let (index, _) = queue.lock().unwrap_or_else(|e| e.into_inner()).next()?;
            let why = format!("no thread could be started for it ({why})");
            return Some(ManyEvent::Finished {
                index,
                result: Err(Error::not_sent(why, None)),
            });
        }
        // Every worker holds a sender; the channel ends when the last one is done.
        self.events.recv().ok()
    }
}

impl Drop for ManyTasks {
    fn drop(&mut self) {
        // Stopped, not joined: a thread with a request on the wire finishes it and reports to
        // the sink; every other thread ends at once (its pauses wake on the stop).
        self.stopper.stop();
    }
}
