//! The blocking client: a short driver that runs the core's decisions over a
//! [`BlockingTransport`] and the thread's sleep. It pulls in no async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gptimage_types::{CreatedTask, GenerateRequest, TaskInfo};

use crate::config::{ClientBuilder, Config, FromConfig, sealed};
use crate::core::{self, Call, Fetched, Image, MAX_DOWNLOAD_REDIRECTS, Outcome, Step, WaitStep};
use crate::error::{Error, Result, TransportError};
use crate::files;
use crate::transport::{BlockingTransport, HttpResponse};
use crate::ureq_transport::UreqTransport;

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

struct Inner {
    config: Config,
    transport: Box<dyn BlockingTransport>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl sealed::Sealed for Client {}

impl FromConfig for Client {
    fn from_config(config: Config) -> Result<Self> {
        let transport = UreqTransport::new(&config)?;
        Ok(Self::with_transport(config, transport))
    }
}

impl Client {
    /// A builder with every default and no key.
    pub fn builder() -> ClientBuilder<Self> {
        ClientBuilder::new()
    }

    /// A client configured from `GPTIMAGE_API_KEY` and `GPTIMAGE_BASE_URL`.
    pub fn from_env() -> Result<Self> {
        ClientBuilder::from_env().build()
    }

    /// A client over another transport: another HTTP stack, or a function in a test.
    pub fn with_transport(config: Config, transport: impl BlockingTransport) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                transport: Box::new(transport),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Starts a task. Retried only when no task can have been created; when the outcome is
    /// unknown, the error says so ([`ErrorKind::OutcomeUnknown`](crate::ErrorKind)).
    pub fn submit(&self, request: &GenerateRequest) -> Result<CreatedTask> {
        let call = Call::submit(self.config(), request);
        self.run(&call, None, |result| {
            core::read_submit(&call, self.config(), result)
        })
    }

    /// Reports a task once.
    pub fn status(&self, task_id: &str) -> Result<TaskInfo> {
        self.status_within(task_id, None)
    }

    fn status_within(&self, task_id: &str, time_left: Option<Duration>) -> Result<TaskInfo> {
        let call = Call::status(self.config(), task_id)?;
        self.run(&call, time_left, |result| {
            core::read_status(&call, self.config(), result, task_id)
        })
    }

    /// Waits until the task ends, polling on the configured schedule, and returns it if it
    /// succeeded. A failed task is [`ErrorKind::TaskFailed`](crate::ErrorKind); a wait longer
    /// than the configured timeout is [`ErrorKind::DeadlinePassed`](crate::ErrorKind), with the
    /// task id, so the wait can be resumed.
    pub fn wait(&self, task_id: &str) -> Result<TaskInfo> {
        self.wait_with(task_id, |_| {})
    }

    /// Like [`wait`](Self::wait), calling `on_update` with every status seen (for progress).
    pub fn wait_with(
        &self,
        task_id: &str,
        mut on_update: impl FnMut(&TaskInfo),
    ) -> Result<TaskInfo> {
        let started = Instant::now();
        let deadline = self.config().wait_timeout;
        #[cfg(feature = "tracing")]
        let _span = tracing::debug_span!("gptimage.wait", task_id).entered();
        for polls in 0.. {
            let time_left = deadline.saturating_sub(started.elapsed());
            let info = self
                .status_within(task_id, Some(time_left))
                .map_err(|e| e.with_task_id(task_id))?;
            on_update(&info);
            match core::after_poll(self.config(), info, polls, started.elapsed()) {
                WaitStep::Finished(result) => return result,
                WaitStep::PollAfter(delay) => std::thread::sleep(delay),
            }
        }
        unreachable!("the poll counter does not run out")
    }

    /// Submits `request` and waits for it to end. An error after the submission carries the
    /// task id ([`Error::task_id`]), so the wait can be resumed with [`wait`](Self::wait).
    pub fn generate(&self, request: &GenerateRequest) -> Result<TaskInfo> {
        let created = self.submit(request)?;
        self.wait(&created.task_id)
            .map_err(|e| e.with_task_id(&created.task_id))
    }

    /// Downloads a finished task's images into memory, through the same HTTP stack, without the
    /// API key, within the configured size limit; each must be an image.
    pub fn download(&self, task: &TaskInfo) -> Result<Vec<Image>> {
        let mut images = Vec::with_capacity(task.images().len());
        for url in task.images() {
            images.push(self.download_one(url)?);
        }
        Ok(images)
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
        let images = self.download(task)?;
        files::save_all(&images, dir.as_ref(), stem)
    }

    fn download_one(&self, url: &str) -> Result<Image> {
        let mut current = url.to_owned();
        for _ in 0..=MAX_DOWNLOAD_REDIRECTS {
            let call = Call::download(&current)?;
            match self.run(&call, None, |result| core::read_download(&call, result))? {
                Fetched::Bytes(bytes, extension) => {
                    return Ok(Image {
                        url: url.to_owned(),
                        bytes,
                        extension,
                    });
                }
                Fetched::Redirect(next) => current = next,
            }
        }
        Err(Error::download(
            format!("{url} redirected too many times"),
            None,
        ))
    }

    /// Runs one call: attempts, reads each answer, and sleeps between retries as the core decides.
    fn run<T>(
        &self,
        call: &Call,
        time_left: Option<Duration>,
        read: impl Fn(std::result::Result<HttpResponse, TransportError>) -> Outcome<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let config = self.config();
        #[cfg(feature = "tracing")]
        let _span =
            tracing::debug_span!("gptimage.request", op = ?call.op, to = %call.destination())
                .entered();
        for retries in 0.. {
            let sent = self
                .inner
                .transport
                .send(call.to_http(config), call.options(config));
            let left = time_left.map(|t| t.saturating_sub(started.elapsed()));
            match core::decide(&config.retry, retries, read(sent), files::jitter(), left) {
                Step::Return(result) => return result,
                Step::Sleep(delay) => std::thread::sleep(delay),
            }
        }
        unreachable!("the retry budget ends the loop")
    }
}
