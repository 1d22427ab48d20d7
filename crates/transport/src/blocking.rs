//! The blocking client: one loop that drives the core's machines over a [`BlockingTransport`](crate::transport::BlockingTransport)
//! and the thread's sleep; every method is a thin wrapper over it. No async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::config::{ClientBuilder, Config, FromConfig, sealed};
use crate::core::{CallMachine, DownloadMachine, Image, Machine, Next, WaitMachine};
use crate::error::Result;
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
}

drive::client_shell!(BlockingTransport, UreqTransport);

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
        #[cfg(feature = "tracing")]
        let _span = machine.span().entered();
        loop {
            match machine.poll(Instant::now()) {
                Next::Done(result) => return result,
                Next::SleepUntil(until) => match hints.as_mut() {
                    None => std::thread::sleep(until.saturating_duration_since(Instant::now())),
                    Some(hints) => {
                        if hints.wait_until(until) {
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
