//! The command line: commands, options and their help, as clap reads them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  gptimage generate \"a lighthouse at dawn\" --size landscape --quality high
  gptimage generate \"make it night\" --image https://example.com/day.png --fidelity high
  gptimage generate \"make it night\" --image ./day.png --image-host s3://my-bucket/inputs
  gptimage generate \"make it night\" --image ./day.png --emulator
  gptimage generate \"a red fox\" --emulator              (offline, no key needed)
  gptimage generate \"a red fox\" --no-wait --json        (prints the task id and returns)
  gptimage wait n36abc123def456gptimg --out images/       (resume waiting for a task)
  gptimage status n36abc123def456gptimg --json
  gptimage batch prompts.jsonl --out results/ --concurrency 4
  gptimage batch prompts.jsonl --state postgres://batch@db/images   (one of many workers)
  gptimage batch-status --out results/                   (from another terminal)
  gptimage generate \"a red fox\" --listen 0.0.0.0:8787 --public-url https://me.example/hooks/
                                  (end the wait on the service's callback; polling stays on)

The API key comes from --api-key or GPTIMAGE_API_KEY; --emulator needs none.
Exit codes: 0 success, 1 task failed, 2 usage or validation error (nothing sent),
3 the API refused the request, 4 transport or server error (or unknown outcome),
5 wait deadline passed, 130 interrupted.";

/// Generate and edit images with the GPT Image 1.5 API from a terminal or a script.
#[derive(Debug, Parser)]
#[command(name = "gptimage", version, about, after_help = EXAMPLES, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The secrets this command line carries, which nothing it prints may show: the key, and
    /// the password of a state URL or of an image host's URL (in any form the URL gives it).
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = self.global.api_key.iter().cloned().collect();
        let urls = match &self.command {
            Command::Batch(batch) => vec![batch.state.state.clone(), batch.image_host.clone()],
            Command::BatchStatus(status) => vec![status.state.state.clone()],
            Command::Generate(generate) => {
                // A callback URL the user gives is a secret as a whole (its token may have any
                // shape).
                secrets.extend(generate.callback_url.clone());
                vec![generate.image_host.clone()]
            }
            _ => Vec::new(),
        };
        for url in urls.into_iter().flatten() {
            secrets.extend(written_password(&url));
            if let Ok(parsed) = url::Url::parse(&url) {
                if let Some(password) = parsed.password() {
                    secrets.push(password.to_owned());
                    secrets.extend(
                        percent_encoding::percent_decode_str(password)
                            .decode_utf8()
                            .ok()
                            .map(|p| p.into_owned()),
                    );
                }
                secrets.extend(
                    parsed
                        .query_pairs()
                        .filter(|(k, _)| k.contains("password"))
                        .map(|(_, v)| v.into_owned()),
                );
            }
        }
        secrets
    }
}

/// The password as the URL `text` spells it, whether or not the URL parses (a `#` or `?` in a
/// password makes it no URL at all): between `USER:` after `://` and the last `@` before the
/// first white space.
fn written_password(text: &str) -> Option<String> {
    let (_, after) = text.split_once("://")?;
    let span = after.split(char::is_whitespace).next()?;
    let (userinfo, _) = span.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The API key (prefer the environment variable: command lines are visible to other users).
    #[arg(long, env = "GPTIMAGE_API_KEY", global = true, hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// The API's base URL.
    #[arg(long, env = "GPTIMAGE_BASE_URL", global = true, hide_env_values = true)]
    pub(crate) base_url: Option<String>,
    /// Give up waiting for a task after this many seconds (the task goes on; resume with `wait`).
    #[arg(long, value_name = "SECONDS", global = true, value_parser = seconds)]
    pub(crate) timeout: Option<f64>,
    /// Timeout of each HTTP request, in seconds.
    #[arg(long, value_name = "SECONDS", global = true, value_parser = seconds)]
    pub(crate) request_timeout: Option<f64>,
    /// Seconds between status polls (fractions allowed).
    #[arg(long, value_name = "SECONDS", global = true, value_parser = seconds)]
    pub(crate) poll_interval: Option<f64>,
    /// Allow plain http to a host that is not this machine (an internal gateway or a test
    /// network): the key then crosses that network unencrypted. Loopback never needs it.
    #[arg(long, global = true)]
    pub(crate) allow_insecure_http: bool,
    /// Run against a local emulator started in-process: offline, free, no key needed.
    #[arg(long, global = true)]
    pub(crate) emulator: bool,
    /// Print nothing on stderr but errors, and draw no progress.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Say more about what is happening.
    #[arg(long, short, global = true)]
    pub(crate) verbose: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Submit a text-to-image or image-to-image task, wait for it and download its images.
    Generate(Generate),
    /// Print a task's status (one request).
    Status(Status),
    /// Wait for an existing task and download its images (how to resume after an interruption).
    Wait(Wait),
    /// Run many requests from a JSON-lines file, resumably, with bounded concurrency; several
    /// workers may share one batch.
    Batch(Batch),
    /// Show a batch's progress without touching it: counts by state, failures, unknown outcomes.
    BatchStatus(BatchStatus),
    /// Print a shell completion script.
    Completions(Completions),
}

#[derive(Debug, Args)]
pub(crate) struct Generate {
    /// What to draw (at most 2000 characters).
    pub(crate) prompt: String,
    /// 1024*1024, 1024*1536, 1536*1024, or square, portrait, landscape (also 1536x1024).
    #[arg(long)]
    pub(crate) size: Option<String>,
    /// low, medium or high.
    #[arg(long)]
    pub(crate) quality: Option<String>,
    /// An image to edit (repeat for several); makes the task image-to-image. A URL the service
    /// can fetch, or a local PNG, JPEG or WebP file (at most 20 MiB), uploaded to --image-host
    /// (with --emulator, to the emulator) under its content hash.
    #[arg(long = "image", value_name = "URL|FILE")]
    pub(crate) images: Vec<String>,
    /// Where local --image files are put for the service to fetch, as signed URLs:
    /// s3://bucket/prefix (or an S3-compatible store with AWS_ENDPOINT), gs://bucket/prefix or
    /// az://container/prefix, with credentials from the environment as each store's own tools
    /// read them; or an http(s) URL that takes a PUT of each file. With --emulator, the
    /// emulator's own host by default.
    #[arg(
        long,
        value_name = "URL",
        env = "GPTIMAGE_IMAGE_HOST",
        hide_env_values = true
    )]
    pub(crate) image_host: Option<String>,
    /// How closely an edit follows its input: low or high.
    #[arg(long)]
    pub(crate) fidelity: Option<String>,
    /// A webhook URL the service notifies when the task ends (your own receiver; see --listen
    /// to have this command receive it).
    #[arg(long, value_name = "URL", conflicts_with = "listen")]
    pub(crate) callback_url: Option<String>,
    #[command(flatten)]
    pub(crate) listen: Listen,
    /// Print the task id and return without waiting.
    #[arg(long)]
    pub(crate) no_wait: bool,
    #[command(flatten)]
    pub(crate) output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct Status {
    /// The task id `generate` printed.
    pub(crate) task_id: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Wait {
    /// The task id `generate` printed.
    pub(crate) task_id: String,
    #[command(flatten)]
    pub(crate) output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct Batch {
    /// A file of JSON lines, one request per line: prompt, size, quality, images,
    /// input_fidelity, callback_url, and an optional name for the output files.
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) output: Output,
    /// How many tasks are in flight at once (submitted and not yet finished). Waiting is cheap;
    /// the service's limit on new tasks (often about 20 per 10 s) and its task time (tens of
    /// seconds) make a few dozen to a few hundred useful.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) concurrency: u16,
    /// The starting rate of new tasks, COUNT/SECONDS. The command slows down by itself when the
    /// service answers 429 (which never fails a line) and speeds up again, never above this.
    #[arg(long, value_name = "COUNT/SECONDS", default_value = "20/10")]
    pub(crate) rate: gptimage::Rate,
    #[command(flatten)]
    pub(crate) listen: Listen,
    #[command(flatten)]
    pub(crate) state: State,
    /// Accept a PostgreSQL state whose standbys are all asynchronous. A failover to one of them
    /// can lose the last commits, a line recorded as being sent among them, which would then be
    /// paid for twice; without this, such a state is refused (make a standby synchronous
    /// instead, and every commit waits until it is applied there).
    #[arg(long)]
    pub(crate) accept_async_replicas: bool,
    /// Send again the lines of unknown outcome that these tokens name (comma-separated, as
    /// `gptimage batch-status` prints them, such as a1b2c3.12.1,a1b2c3.40.2: the state, the
    /// line, its submission), after checking the account holds no task for them: each may
    /// already have made (and charged) one. A line whose outcome is unknown again since has a
    /// new token, so repeating the same command never resends it; a token of another state
    /// (one since recreated) is refused.
    #[arg(long, value_name = "TOKENS", value_delimiter = ',', num_args = 1..)]
    pub(crate) resubmit_unknown: Vec<gptimage_batch::OutcomeToken>,
    /// Never commit more than this many credits to the batch, counting earlier runs and every
    /// worker (10 a task; failed tasks are refunded). The budget is stored with the batch: every
    /// worker obeys it, given this option or not, until a run sets another. Lines beyond it
    /// wait for a run with a larger budget.
    #[arg(long, value_name = "CREDITS")]
    pub(crate) max_credits: Option<u64>,
    /// Check every line and say how many tasks a run would submit now and what they would cost;
    /// send nothing (exit 2 if a line is invalid).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Where input images that lines name as local files (relative to the batch file) are put
    /// for the service to fetch: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix,
    /// or an http(s) URL that takes a PUT; the emulator's own with --emulator. Each distinct
    /// file is uploaded once, and its URL kept in the batch's state for later lines and runs.
    #[arg(
        long,
        value_name = "URL",
        env = "GPTIMAGE_IMAGE_HOST",
        hide_env_values = true
    )]
    pub(crate) image_host: Option<String>,
}

/// Receiving the service's callbacks, so each wait ends soon after its task does.
#[derive(Debug, Args, Clone)]
pub(crate) struct Listen {
    /// Receive the service's callbacks on ADDR (such as 0.0.0.0:8787) and end each wait soon
    /// after its task's callback; polling goes on as a fallback. Useful only on a machine the
    /// service can reach. Each task gets its own secret callback URL: treat it like the key.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// The public URL that reaches --listen (behind a proxy or NAT); by default http://ADDR/,
    /// or https://ADDR/ with --listen-cert.
    #[arg(long, value_name = "URL", requires = "listen")]
    pub(crate) public_url: Option<String>,
    /// The path at which callbacks arrive at --listen, when a proxy in front strips a prefix
    /// of --public-url's path (--public-url https://me.example.com/gptimage/hooks/
    /// --listen-path /hooks/); by default --public-url's own path.
    #[arg(long, value_name = "PATH", requires = "public_url")]
    pub(crate) listen_path: Option<String>,
    /// Serve --listen over HTTPS with this PEM certificate chain (the server's certificate
    /// first); needs --listen-key.
    #[arg(long, value_name = "FILE", requires_all = ["listen", "listen_key"])]
    pub(crate) listen_cert: Option<std::path::PathBuf>,
    /// The PEM private key (PKCS #8, PKCS #1 or SEC1) of --listen-cert.
    #[arg(long, value_name = "FILE", requires = "listen_cert")]
    pub(crate) listen_key: Option<std::path::PathBuf>,
}

/// Where a batch's state lives.
#[derive(Debug, Args)]
pub(crate) struct State {
    /// Where the batch's state lives: sqlite:PATH (default: gptimage-batch.sqlite in --out) or
    /// postgres://USER@HOST/DB, shared by every worker of the batch on any machine. A password
    /// given here is visible to other users in the process list: prefer GPTIMAGE_BATCH_STATE,
    /// or PostgreSQL's own PGPASSWORD or ~/.pgpass.
    #[arg(
        long,
        value_name = "URL",
        env = "GPTIMAGE_BATCH_STATE",
        hide_env_values = true
    )]
    pub(crate) state: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BatchStatus {
    #[command(flatten)]
    pub(crate) state: State,
    /// The batch's output folder (whose gptimage-batch.sqlite is the state when --state is not
    /// given), or its bucket.
    #[arg(long, value_name = "DIR|BUCKET", default_value = ".")]
    pub(crate) out: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write index.html and results.jsonl into --out again from the state (a bucket's gallery
    /// with fresh signed links), whoever ran which line.
    #[arg(long)]
    pub(crate) write_index: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Output {
    /// Where images (and a batch's index.html and results.jsonl) go: a folder, or a bucket
    /// (s3://bucket/prefix, gs://bucket/prefix, az://container/prefix), with credentials as
    /// for --image-host.
    #[arg(long, value_name = "DIR|BUCKET", default_value = ".")]
    pub(crate) out: PathBuf,
    /// With --out naming a bucket: a signed GET URL for each image, valid this many seconds
    /// (at most 604800, a week), in --json's `objects`. A signed URL is a secret: it is never
    /// printed anywhere else.
    #[arg(long, value_name = "SECONDS", value_parser = sign_seconds)]
    pub(crate) sign_for: Option<f64>,
    /// Print one JSON object per task on stdout, and nothing else there.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Completions {
    /// The shell.
    pub(crate) shell: Shell,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

fn sign_seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if value.is_finite() && (1.0..=604_800.0).contains(&value) {
        Ok(value)
    } else {
        Err("give a number of seconds from 1 to 604800 (a week: the most S3 signs for)".to_owned())
    }
}

fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(value)
    } else {
        Err("give a number of seconds above 0 and at most 86400".to_owned())
    }
}
