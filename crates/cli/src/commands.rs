//! The single-task commands: `generate`, `status` and `wait`, and the client they share.

use std::path::Path;
use std::time::Duration;

use gptimage::{
    Client, Error, GenerateRequest, InputFidelity, PollSchedule, Quality, Size, TaskInfo,
    ValidationError,
};
#[cfg(feature = "emulator")]
use gptimage_emulator::Emulator;

use crate::cli::{Generate, Global, Listen, Status, Wait};
use crate::progress;
use crate::report::{Report, code, describe};

/// The client a command runs with, and the emulator behind it when `--emulator` is given.
pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) quiet: bool,
    pub(crate) verbose: bool,
    _listener: Option<gptimage::webhook::Listener>,
    #[cfg(feature = "emulator")]
    _emulator: Option<Emulator>,
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
                eprintln!("using the local emulator at {}", emulator.base_url());
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
                let receiver = gptimage::webhook::Receiver::new(&public)
                    .map_err(|e| (describe(&e, None), code::USAGE))?;
                let listener = receiver
                    .listen_with(addr, &options)
                    .map_err(|e| (format!("could not listen on {addr}: {e}"), code::USAGE))?;
                if global.verbose {
                    eprintln!("receiving callbacks on {addr} for {}", receiver.base_url());
                }
                builder = builder.webhooks(receiver);
                Some(listener)
            }
        };
        let client = builder
            .build()
            .map_err(|e| (describe(&e, None), code::USAGE))?;
        if global.verbose {
            eprintln!("API: {}", client.config().base_url());
        }
        Ok(Self {
            client,
            quiet: global.quiet,
            verbose: global.verbose,
            _listener: listener,
            #[cfg(feature = "emulator")]
            _emulator: emulator,
        })
    }

    /// Waits for a task with a spinner, then downloads its images into `out`. Ctrl-C stops the
    /// wait (the task goes on): the report then carries exit code 130.
    pub(crate) async fn finish(
        &self,
        task_id: &str,
        out: &Path,
        stem: Option<&str>,
    ) -> Result<Report, Error> {
        let spinner = progress::spinner(progress::enabled(self.quiet));
        spinner.set_message(format!("task {task_id}: waiting"));
        let waited = {
            let wait = self.client.wait_with(task_id, |task: &TaskInfo| {
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
            eprintln!("{message}");
            return Ok(Report {
                task_id: Some(task_id.to_owned()),
                error: Some(("interrupted".into(), message, code::INTERRUPTED)),
                ..Report::default()
            });
        };
        let task = task?;
        let files = match stem {
            Some(stem) => self.client.download_to_dir_as(&task, out, stem).await?,
            None => self.client.download_to_dir(&task, out).await?,
        };
        Ok(Report::task(&task, files))
    }
}

/// Builds the request `generate` describes, accepting friendly spellings.
pub(crate) fn request(args: &Generate) -> Result<GenerateRequest, ValidationError> {
    let mut builder = if args.images.is_empty() {
        GenerateRequest::text_to_image(args.prompt.clone())
    } else {
        GenerateRequest::image_to_image(args.prompt.clone(), args.images.clone())
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

pub(crate) async fn generate(
    context: &Context,
    args: &Generate,
    request: GenerateRequest,
) -> Report {
    let created = match context.client.submit(&request).await {
        Ok(created) => created,
        Err(error) => return failure(None, &error, &args.output.out),
    };
    if context.verbose || (args.no_wait && !context.quiet && !args.output.json) {
        eprintln!("submitted task {}", created.task_id);
    }
    if args.no_wait {
        return Report {
            task_id: Some(created.task_id),
            status: Some(created.status.to_string()),
            ..Report::default()
        };
    }
    match context
        .finish(&created.task_id, &args.output.out, None)
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
    match context.finish(&args.task_id, &args.output.out, None).await {
        Ok(report) => report,
        Err(error) => failure(Some(&args.task_id), &error, &args.output.out),
    }
}

/// Reports an error: always on stderr, and in the report for `--json`.
fn failure(task_id: Option<&str>, error: &Error, out: &Path) -> Report {
    eprintln!("error: {}", describe(error, Some(out)));
    Report::failure(task_id, error)
}
