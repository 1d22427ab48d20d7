//! The async client: one loop that drives the core's machines over an [`AsyncTransport`](crate::transport::AsyncTransport) and
//! tokio's timer; every method is a thin wrapper over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::config::{ClientBuilder, Config, FromConfig, sealed};
use crate::core::{CallMachine, DownloadMachine, Image, Machine, Next, WaitMachine};
use crate::error::{Error, Result};
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
}

drive::client_shell!(AsyncTransport, ReqwestTransport);

impl Client {
    /// Starts a task. Retried only when no task can have been created; when the outcome is
    /// unknown, the error says so ([`ErrorKind::OutcomeUnknown`](crate::ErrorKind)).
    pub async fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask> {
        let watch = drive::watch(self.config(), request)?;
        let callback = watch.as_ref().map(|w| w.url.as_str());
        let pacer = &self.inner.pacer;
        let submit = CallMachine::submit(self.config(), request, callback, pacer, drive::seed());
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
    pub async fn generate(&self, request: &GenerateRequest) -> Result<TaskInfo> {
        let created = self.submit(request).await?;
        self.wait(&created.task_id)
            .await
            .map_err(|e| e.with_task_id(&created.task_id))
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

/// Sleeps until `until`, or less if a hint comes first; whether one came.
async fn sleep_or_hint(until: Instant, hints: &mut Hints) -> bool {
    use std::future::Future;
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
