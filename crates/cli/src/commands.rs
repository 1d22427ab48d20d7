//! The single-task commands: `generate`, `status` and `wait`, and the client they share.

use crate::say::say;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gptimage::hosting::{
    ImageHost, LocalImage, ObjectStoreHost, ObjectStoreResults, PutHost, ResultStore, names_a_file,
};
use gptimage::{
    Client, Error, GenerateRequest, InputFidelity, PollSchedule, Quality, Size, TaskInfo,
    ValidationError,
};
#[cfg(feature = "emulator")]
use gptimage_emulator::Emulator;

use crate::cli::{Generate, Global, Listen, Output, Status, Wait};
use crate::progress;
use crate::report::{Object, Report, code, describe};

/// The client a command runs with, and the emulator behind it when `--emulator` is given.
pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) quiet: bool,
    pub(crate) verbose: bool,
    listener: Option<gptimage::webhook::Listener>,
    #[cfg(feature = "emulator")]
    emulator: Option<Emulator>,
}

/// The message of a missing key, which names both ways out.
const NO_KEY: &str = "no API key: set GPTIMAGE_API_KEY (or pass --api-key), or add --emulator to \
                      try everything against a local emulator without one";

impl Context {
    /// The client of a command; `rate`, for a batch: its pace, and a 429 that never fails a
    /// submission (it waits its turn, up to the wait timeout).
    pub(crate) async fn new(
        global: &Global,
        listen: Option<&Listen>,
        rate: Option<gptimage::Rate>,
    ) -> Result<Self, (String, u8)> {
        let mut builder = Client::builder();
        #[cfg(not(feature = "emulator"))]
        if global.emulator {
            return Err((
                "--emulator: this gptimage was built without its `emulator` feature; install it \
                 with the defaults (cargo install gptimage-cli), or run the gptimage-emulator \
                 binary and point --base-url at it"
                    .to_owned(),
                code::USAGE,
            ));
        }
        #[cfg(feature = "emulator")]
        let emulator = if global.emulator {
            let config = gptimage_emulator::Config::default()
                .with_timings(Duration::from_millis(200), Duration::from_millis(600));
            let emulator = Emulator::start(config).await.map_err(|e| {
                (
                    format!("the emulator could not start: {e}"),
                    code::TRANSPORT,
                )
            })?;
            builder = builder
                .api_key(emulator.api_key())
                .base_url(emulator.base_url());
            if global.verbose {
                say!("using the local emulator at {}", emulator.base_url());
            }
            Some(emulator)
        } else {
            None
        };
        if !global.emulator {
            let key = global.api_key.as_deref().filter(|k| !k.trim().is_empty());
            builder = builder.api_key(key.ok_or((NO_KEY.to_owned(), code::USAGE))?);
            if let Some(base) = &global.base_url {
                builder = builder.base_url(base);
            }
        }
        if let Some(timeout) = global.timeout {
            builder = builder.wait_timeout(Duration::from_secs_f64(timeout));
        }
        if let Some(rate) = rate {
            builder = builder
                .rate_limit(rate)
                .retry(gptimage::RetryPolicy::default().max_rate_limited(u32::MAX));
        }
        if global.allow_insecure_http {
            builder = builder.allow_insecure_http(true);
        }
        if let Some(timeout) = global.request_timeout {
            builder = builder.request_timeout(Duration::from_secs_f64(timeout));
        }
        if let Some(interval) = global.poll_interval {
            builder = builder.poll(PollSchedule::fixed(Duration::from_secs_f64(interval)));
        }
        let listener = match listen.and_then(|l| l.listen.map(|addr| (addr, l))) {
            None => None,
            Some((addr, listen)) => {
                let mut options = gptimage::webhook::ListenOptions::new();
                if let (Some(cert), Some(key)) = (&listen.listen_cert, &listen.listen_key) {
                    let tls = gptimage::webhook::ServerTls::from_pem_files(cert, key)
                        .map_err(|e| (describe(&e, None), code::USAGE))?;
                    options = options.tls(tls);
                }
                let scheme = if listen.listen_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                let public = match &listen.public_url {
                    Some(url) => url.clone(),
                    None if addr.ip().is_unspecified() || addr.port() == 0 => {
                        return Err((
                            format!(
                                "--listen {addr} needs --public-url: the address the service \
                                 should send callbacks to"
                            ),
                            code::USAGE,
                        ));
                    }
                    None => format!("{scheme}://{addr}/"),
                };
                let receiver = match &listen.listen_path {
                    Some(path) => gptimage::webhook::Receiver::with_local_path(&public, path),
                    None => gptimage::webhook::Receiver::new(&public),
                }
                .map_err(|e| (describe(&e, None), code::USAGE))?;
                let listener = receiver
                    .listen_with(addr, &options)
                    .map_err(|e| (format!("could not listen on {addr}: {e}"), code::USAGE))?;
                if global.verbose {
                    say!("receiving callbacks on {addr} for {}", receiver.base_url());
                }
                builder = builder.webhooks(receiver);
                Some(listener)
            }
        };
        let client = builder
            .build()
            .map_err(|e| (describe(&e, None), code::USAGE))?;
        if global.verbose {
            say!("API: {}", client.config().base_url());
        }
        Ok(Self {
            client,
            quiet: global.quiet,
            verbose: global.verbose,
            listener,
            #[cfg(feature = "emulator")]
            emulator,
        })
    }

    /// Where local input images go, if anywhere: `--image-host`, or the emulator's own host.
    pub(crate) fn image_host_if_any(
        &self,
        named: Option<&str>,
    ) -> Result<Option<Box<dyn ImageHost>>, (String, u8)> {
        #[cfg(feature = "emulator")]
        let offline = self.emulator.is_some();
        #[cfg(not(feature = "emulator"))]
        let offline = false;
        if named.is_none() && !offline {
            return Ok(None);
        }
        self.image_host(named).map(Some)
    }

    /// Where local input images go: `--image-host`, or the emulator's own host.
    fn image_host(&self, named: Option<&str>) -> Result<Box<dyn ImageHost>, (String, u8)> {
        let usage = |e: gptimage::Error| (describe(&e, None), code::USAGE);
        let config = self.client.config();
        match named {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Ok(Box::new(PutHost::new(config, url).map_err(usage)?))
            }
            Some(url) => Ok(Box::new(
                ObjectStoreHost::from_url(url, config).map_err(usage)?,
            )),
            #[cfg(feature = "emulator")]
            None if self.emulator.is_some() => {
                let uploads = self.emulator.as_ref().map(|e| e.uploads_url());
                Ok(Box::new(
                    PutHost::new(config, &uploads.unwrap_or_default()).map_err(usage)?,
                ))
            }
            None => Err((
                "a local --image needs somewhere the service can fetch it from: \
                 --image-host s3://bucket/prefix (or gs://, az://), or --emulator"
                    .to_owned(),
                code::USAGE,
            )),
        }
    }

    /// Puts the local files among `inputs` on the image host (each distinct file once) and
    /// returns the request's image URLs, in order.
    pub(crate) async fn host_inputs(
        &self,
        inputs: Vec<Input>,
        host: Option<&str>,
    ) -> Result<Vec<String>, (String, u8)> {
        let named = host;
        let mut host: Option<Box<dyn ImageHost>> = None;
        let valid_for = self.client.config().wait_timeout();
        let mut hosted: HashMap<String, String> = HashMap::new();
        let mut urls = Vec::with_capacity(inputs.len());
        for input in inputs {
            match input {
                Input::Url(url) => urls.push(url),
                Input::File(file) => {
                    if let Some(url) = hosted.get(file.sha256()) {
                        urls.push(url.clone());
                        continue;
                    }
                    let host = match &mut host {
                        Some(host) => host,
                        None => host.insert(self.image_host(named)?),
                    };
                    let url = host
                        .host(&file, valid_for)
                        .await
                        .map_err(|e| (describe(&e, None), code::USAGE))?;
                    if self.verbose {
                        say!("{} is at {url}", file.path().display());
                    }
                    hosted.insert(file.sha256().to_owned(), url.expose().to_owned());
                    urls.push(url.expose().to_owned());
                }
            }
        }
        Ok(urls)
    }

    /// Where `--out` puts images: a bucket for a URL (`s3://`, `gs://`, `az://`…); a folder
    /// otherwise (`file://` included).
    pub(crate) fn destination(&self, out: &Path) -> Result<Destination, (String, u8)> {
        Destination::of(out, self.client.config())
    }

    /// Waits for a task with a spinner, then puts its images where `destination` says. Ctrl-C
    /// stops the wait (the task goes on): the report then carries exit code 130.
    pub(crate) async fn finish(
        &self,
        task_id: &str,
        destination: &Destination,
        sign_for: Option<f64>,
    ) -> Result<Report, Error> {
        self.finish_within(task_id, destination, sign_for, None)
            .await
    }

    /// [`finish`](Self::finish), the wait given `left` instead of the whole timeout (what a
    /// recovery left of it).
    pub(crate) async fn finish_within(
        &self,
        task_id: &str,
        destination: &Destination,
        sign_for: Option<f64>,
        left: Option<std::time::Duration>,
    ) -> Result<Report, Error> {
        let client = match left {
            Some(left) => self
                .client
                .with_options(&gptimage::CallOptions::new().wait_timeout(left))?,
            None => self.client.clone(),
        };
        let spinner = progress::spinner(progress::enabled(self.quiet));
        spinner.set_message(format!("task {task_id}: waiting"));
        let waited = {
            let wait = client.wait_with(task_id, |task: &TaskInfo| {
                spinner.set_message(format!("task {task_id}: {}", task.status));
            });
            tokio::select! {
                result = wait => Some(result),
                _ = tokio::signal::ctrl_c() => None,
            }
        };
        spinner.finish_and_clear();
        let Some(task) = waited else {
            let message = format!("interrupted; the task goes on: gptimage wait {task_id}");
            say!("{message}");
            return Ok(Report {
                task_id: Some(task_id.to_owned()),
                error: Some(("interrupted".into(), message, code::INTERRUPTED)),
                ..Report::default()
            });
        };
        let task = task?;
        match destination {
            Destination::Folder(out) => {
                let files = self.client.download_to_dir(&task, out).await?;
                Ok(Report::task(&task, files))
            }
            Destination::Bucket(bucket) => {
                let stored = self.client.save(&task, &**bucket, &task.task_id).await?;
                let mut objects = Vec::with_capacity(stored.len());
                for kept in stored {
                    // The images are stored (and paid for): a URL that cannot be signed is
                    // said, never a reason to lose them from the report.
                    let url = match sign_for {
                        Some(seconds) => match bucket
                            .signed_url(&kept.key, Duration::from_secs_f64(seconds))
                            .await
                        {
                            Ok(url) => Some(url.expose().to_owned()),
                            Err(error) => {
                                say!(
                                    "warning: {} is stored, but no URL could be signed for it: {}",
                                    kept.location,
                                    describe(&error, None)
                                );
                                None
                            }
                        },
                        None => None,
                    };
                    objects.push(Object {
                        location: kept.location,
                        key: kept.key,
                        sha256: kept.sha256,
                        written: kept.written,
                        url,
                    });
                }
                let mut report = Report::task(&task, Vec::new());
                report.objects = objects;
                Ok(report)
            }
        }
    }
}

/// Where a command puts a task's images.
pub(crate) enum Destination {
    /// A folder of this machine.
    Folder(PathBuf),
    /// A bucket (S3, Google Cloud Storage, Azure).
    Bucket(std::sync::Arc<ObjectStoreResults>),
}

impl Destination {
    /// Where `out` puts images, a bucket reached through the HTTP stack `config` describes.
    pub(crate) fn of(out: &Path, config: &gptimage::Config) -> Result<Self, (String, u8)> {
        match Out::of(out) {
            Out::Folder(folder) => Ok(Destination::Folder(folder)),
            Out::Bucket(url) => ObjectStoreResults::from_url(&url, config)
                .map(|bucket| Destination::Bucket(std::sync::Arc::new(bucket)))
                .map_err(|e| (describe(&e, None), code::USAGE)),
        }
    }
}

/// What `--out` names: a folder of this machine, or a bucket's URL. One reading for every
/// command, so `batch`, `batch-status` and `generate` agree on it.
pub(crate) enum Out {
    Folder(PathBuf),
    Bucket(String),
}

impl Out {
    pub(crate) fn of(out: &Path) -> Self {
        let text = out.to_string_lossy();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Out::Folder(out.to_path_buf());
        };
        let mut chars = scheme.chars();
        let is_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !is_scheme {
            return Out::Folder(out.to_path_buf());
        }
        if scheme.eq_ignore_ascii_case("file") {
            // file:///x and file://localhost/x are /x.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            return Out::Folder(PathBuf::from(path));
        }
        Out::Bucket(text.into_owned())
    }
}

/// The input images of `generate`: each a URL, or a local file read and checked.
pub(crate) enum Input {
    Url(String),
    File(LocalImage),
}

/// Reads the local files among `--image` (anything that is not a URL), so a file that is
/// missing, unreadable, not an image or too large is refused before anything is sent. A URL of
/// another scheme stays a URL, for the request's own rules to refuse by name.
pub(crate) fn inputs(args: &Generate) -> Result<Vec<Input>, gptimage::Error> {
    args.images
        .iter()
        .map(|image| {
            if names_a_file(image) {
                LocalImage::read(image).map(Input::File)
            } else {
                Ok(Input::Url(image.clone()))
            }
        })
        .collect()
}

/// The URLs to check a request with before its files are hosted: each file's stand-in.
pub(crate) fn stand_ins(inputs: &[Input]) -> Vec<String> {
    inputs
        .iter()
        .map(|input| match input {
            Input::Url(url) => url.clone(),
            Input::File(file) => format!("https://upload.invalid/{}", file.key()),
        })
        .collect()
}

/// Builds the request `generate` describes with these input image URLs, accepting friendly
/// spellings.
pub(crate) fn request(
    args: &Generate,
    images: Vec<String>,
) -> Result<GenerateRequest, ValidationError> {
    let mut builder = if images.is_empty() {
        GenerateRequest::text_to_image(args.prompt.clone())
    } else {
        GenerateRequest::image_to_image(args.prompt.clone(), images)
    };
    if let Some(size) = &args.size {
        builder = builder.size(size.parse::<Size>()?);
    }
    if let Some(quality) = &args.quality {
        builder = builder.quality(quality.parse::<Quality>()?);
    }
    if let Some(fidelity) = &args.fidelity {
        builder = builder.input_fidelity(fidelity.parse::<InputFidelity>()?);
    }
    if let Some(url) = &args.callback_url {
        builder = builder.callback_url(url.clone());
    }
    builder.build()
}

/// Where `output` puts images, refused with a message and an exit code if it cannot be used:
/// a bucket that cannot be opened, `--sign-for` without a bucket.
pub(crate) async fn destination(
    context: &Context,
    output: &Output,
) -> Result<Destination, (String, u8)> {
    let destination = context.destination(&output.out)?;
    if output.sign_for.is_some() && matches!(destination, Destination::Folder(_)) {
        return Err((
            "--sign-for signs URLs of a bucket: give --out s3://bucket/prefix (or gs://, az://)"
                .to_owned(),
            code::USAGE,
        ));
    }
    // A bucket that does not take writes is found now, before anything is paid for.
    if let Destination::Bucket(bucket) = &destination {
        bucket
            .check_writable()
            .await
            .map_err(|e| (describe(&e, None), code::USAGE))?;
    }
    Ok(destination)
}

pub(crate) async fn generate(
    context: &Context,
    args: &Generate,
    request: GenerateRequest,
    destination: &Destination,
) -> Report {
    let started = std::time::Instant::now();
    let mut left = None;
    let created = match context.client.submit(&request).await {
        Ok(created) => created,
        // The answer was lost, but the submission carried our callback URL (--listen): its
        // callback names the task, and a status request confirms it. Nothing is resubmitted.
        Err(error) if error.may_have_created_task() && context.listener.is_some() => {
            if !context.quiet {
                say!(
                    "the submission's answer was lost; waiting for its callback to name its task \
                     (nothing is sent again)"
                );
            }
            match context.client.recover(&error).await {
                Ok(Some(found)) => {
                    if !context.quiet {
                        say!("recovered task {} from its callback", found.task_id);
                    }
                    // One --timeout in all: the wait gets what the recovery left.
                    let timeout = context.client.config().wait_timeout();
                    left = Some(timeout.saturating_sub(started.elapsed()));
                    found
                }
                _ => return failure(None, &error, &args.output.out),
            }
        }
        Err(error) => return failure(None, &error, &args.output.out),
    };
    if context.verbose || (args.no_wait && !context.quiet && !args.output.json) {
        say!("submitted task {}", created.task_id);
    }
    if args.no_wait {
        return Report {
            task_id: Some(created.task_id),
            status: Some(created.status.to_string()),
            ..Report::default()
        };
    }
    match context
        .finish_within(&created.task_id, destination, args.output.sign_for, left)
        .await
    {
        Ok(report) => report,
        Err(error) => failure(Some(&created.task_id), &error, &args.output.out),
    }
}

pub(crate) async fn status(context: &Context, args: &Status) -> Report {
    match context.client.status(&args.task_id).await {
        Ok(task) => {
            let mut report = Report::task(&task, Vec::new());
            if task.status == gptimage::TaskStatus::Failed {
                let message = task.error_message.clone().unwrap_or_default();
                report.error = Some(("task_failed".to_owned(), message, code::TASK_FAILED));
            }
            report
        }
        Err(error) => failure(Some(&args.task_id), &error, Path::new(".")),
    }
}

pub(crate) async fn wait(context: &Context, args: &Wait) -> Report {
    let destination = match destination(context, &args.output).await {
        Ok(destination) => destination,
        Err((message, exit)) => {
            say!("error: {message}");
            return Report {
                task_id: Some(args.task_id.clone()),
                error: Some(("usage".to_owned(), message, exit)),
                ..Report::default()
            };
        }
    };
    match context
        .finish(&args.task_id, &destination, args.output.sign_for)
        .await
    {
        Ok(report) => report,
        Err(error) => failure(Some(&args.task_id), &error, &args.output.out),
    }
}

/// Reports an error: always on stderr, and in the report for `--json`.
fn failure(task_id: Option<&str>, error: &Error, out: &Path) -> Report {
    say!("error: {}", describe(error, Some(out)));
    Report::failure(task_id, error)
}
