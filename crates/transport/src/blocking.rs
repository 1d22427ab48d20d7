//! The blocking client: one loop that drives the core's machines over a [`BlockingTransport`](crate::transport::BlockingTransport)
//! and the thread's sleep; every method is a thin wrapper over it. No async runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::config::{ClientBuilder, Config, FromConfig, sealed};
use crate::core::{CallMachine, DownloadMachine, Image, Machine, Next, WaitMachine};
use crate::error::{Error, Result};
use crate::progress::{self, ManyEvent, Progress, Stopper};
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
    /// unknown, the error says so ([`ErrorKind::OutcomeUnknown`](crate::ErrorKind)).
    pub fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask> {
        let watch = drive::watch(self.config(), request)?;
        let callback = watch.as_ref().map(|w| w.url.as_str());
        let pacer = &self.inner.pacer;
        let submit = CallMachine::submit(self.config(), request, callback, pacer, drive::seed());
        let result = self.drive(submit, None);
        drive::settle(self.config(), watch, &result);
        result
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
        let created = self.submit(request)?;
        self.wait(&created.task_id)
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
        let created = self.submit(request)?;
        on_progress(Progress::Submitted(&created));
        let on_change = |info: &TaskInfo| on_progress(Progress::Changed(info));
        self.follow(&created.task_id, on_change, None)
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
        let (events, receiver) = std::sync::mpsc::channel();
        let stopper = Stopper::new();
        let workers = (0..concurrency.max(1))
            .filter_map(|n| {
                let (client, requests) = (self.clone(), Arc::clone(&requests));
                let (events, stop) = (events.clone(), stopper.clone());
                std::thread::Builder::new()
                    .name(format!("gptimage-many-{n}"))
                    .spawn(move || {
                        while !stop.is_stopped() {
                            let next = requests.lock().unwrap_or_else(|e| e.into_inner()).next();
                            let Some((index, request)) = next else { break };
                            if !client.one_of_many(index, &request, &events, &stop) {
                                break;
                            }
                        }
                    })
                    .ok()
            })
            .collect();
        ManyTasks {
            events: receiver,
            workers,
            stopper,
        }
    }

    /// One request of [`generate_many`](Self::generate_many): its submission always reports;
    /// its wait ends at the stop. Whether anyone still listens.
    fn one_of_many(
        &self,
        index: usize,
        request: &GenerateRequest,
        events: &std::sync::mpsc::Sender<ManyEvent>,
        stop: &Stopper,
    ) -> bool {
        let created = match self.submit(request) {
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

/// The events of [`Client::generate_many`], as an iterator; dropping it stops the work and
/// waits for its threads.
#[derive(Debug)]
pub struct ManyTasks {
    events: std::sync::mpsc::Receiver<ManyEvent>,
    workers: Vec<std::thread::JoinHandle<()>>,
    stopper: Stopper,
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
        // Every worker holds a sender; the channel ends when the last one is done.
        self.events.recv().ok()
    }
}

impl Drop for ManyTasks {
    fn drop(&mut self) {
        self.stopper.stop();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
