//! One worker of a batch: claim a line, take it through its life one committed step at a time,
//! and keep at most `concurrency` lines in hand; read lines only as they are claimed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gptimage::{Client, ErrorKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::machine::LineState;
use crate::source::{Source, stem};
use crate::store::{Claim, LineRecord, Progress, StateUrl, Store, Submitting, Worker};
use crate::{Error, error_kind_name};

/// How often a worker looks for dead workers, and for lines others let go, while it has
/// nothing to claim.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often a busy worker looks for dead workers.
const REAP_EVERY: Duration = Duration::from_secs(2);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where images go.
    pub out: PathBuf,
    /// How many lines this worker holds at once (submitting, or waiting for their task).
    pub concurrency: usize,
    /// Send lines whose earlier submission had an unknown outcome again. Only for a user who
    /// checked that the account holds no task for them: otherwise they may be paid twice.
    pub resubmit_unknown: bool,
    /// The most credits this batch may commit, counting every run and worker (10 a task; a
    /// failed task's are given back). Lines beyond it are left pending for a run with a larger
    /// budget.
    pub max_credits: Option<u64>,
}

impl Options {
    /// Images into `out`, four lines at a time.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            concurrency: 4,
            resubmit_unknown: false,
            max_credits: None,
        }
    }
}

/// How a worker's run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The batch as a whole when this worker left it.
    pub progress: Progress,
    /// Lines this worker took to an end (or to a reported stop).
    pub handled: u64,
    /// Whether the run was stopped before the batch ended.
    pub interrupted: bool,
    /// Whether the credit budget left lines unsent.
    pub over_budget: bool,
}

/// A batch file bound to its state: what workers run.
///
/// ```no_run
/// use gptimage_batch::{Batch, Options, StateUrl};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = gptimage::Client::from_env()?;
/// let state: StateUrl = "sqlite:results/gptimage-batch.sqlite".parse()?;
/// let batch = Batch::open("prompts.jsonl", &state).await?;
/// let summary = batch
///     .run(&client, &Options::new("results"), tokio::signal::ctrl_c(), |line| {
///         println!("line {}: {}", line.line, line.state);
///     })
///     .await?;
/// println!("{} of {} lines done", summary.progress.count(gptimage_batch::LineState::Done), summary.progress.lines);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Batch {
    source: Arc<Source>,
    store: Store,
}

impl Batch {
    /// Reads `file` (once, to identify it) and opens its state at `state`, refusing a state that
    /// belongs to another file.
    pub async fn open(file: impl AsRef<Path>, state: &StateUrl) -> Result<Self, Error> {
        let file = file.as_ref().to_path_buf();
        let source = tokio::task::spawn_blocking(move || Source::open(file))
            .await
            .map_err(|e| Error::Panicked(e.to_string()))??;
        let store = Store::open(state).await?;
        store.bind(&source).await?;
        Ok(Self {
            source: Arc::new(source),
            store,
        })
    }

    /// The file.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The state.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs one worker until no line is left for it (and no other live worker holds one it
    /// might have to take over), or until `stop` completes. Submissions already on the wire
    /// when `stop` fires are finished and recorded; waits are let go, for a later run. Each line
    /// this worker finishes, or stops on, is passed to `on_line`.
    ///
    /// An error from the state store stops the worker: nothing is sent after it.
    pub async fn run(
        &self,
        client: &Client,
        options: &Options,
        stop: impl Future<Output = impl Sized>,
        mut on_line: impl FnMut(&LineRecord),
    ) -> Result<Summary, Error> {
        let store = &self.store;
        let worker = Arc::new(store.join(&options.out).await?);
        let result = self
            .work(client, options, stop, &mut on_line, &worker)
            .await;
        let left = store.leave(&worker).await;
        let (handled, interrupted, over_budget) = result?;
        left?;
        Ok(Summary {
            progress: store.progress().await?,
            handled,
            interrupted,
            over_budget,
        })
    }

    async fn work(
        &self,
        client: &Client,
        options: &Options,
        stop: impl Future<Output = impl Sized>,
        on_line: &mut impl FnMut(&LineRecord),
        worker: &Arc<Worker>,
    ) -> Result<(u64, bool, bool), Error> {
        let store = &self.store;
        store.retry_refused().await?;
        if options.resubmit_unknown {
            store.resubmit_unknown().await?;
        }
        store.reap(worker).await?;
        let (cancel, cancelled) = watch::channel(false);
        let mut jobs = JoinSet::new();
        let mut reap = tokio::time::interval(REAP_EVERY);
        let (mut handled, mut stopping, mut failure) = (0u64, false, None::<Error>);
        // Set by a line the budget refused: nothing more is claimed, what is under way ends.
        let over_budget = Arc::new(AtomicBool::new(false));
        // The first failure stops the worker: nothing new is claimed or sent, waits are let go,
        // and a submission already on the wire still gets its answer recorded (or printed).
        let halt = |error: Error, failure: &mut Option<Error>, stopping: &mut bool| {
            failure.get_or_insert(error);
            *stopping = true;
            let _ = cancel.send(true);
        };
        tokio::pin!(stop);
        loop {
            while !stopping
                && !over_budget.load(Ordering::SeqCst)
                && jobs.len() < options.concurrency.max(1)
            {
                let claim = match store.claim(worker).await {
                    Ok(Some(claim)) => claim,
                    Ok(None) => break,
                    Err(error) => {
                        halt(error, &mut failure, &mut stopping);
                        break;
                    }
                };
                let job = Job {
                    client: client.clone(),
                    store: store.clone(),
                    source: self.source.clone(),
                    worker: worker.clone(),
                    out: options.out.clone(),
                    budget: options.max_credits,
                    over_budget: over_budget.clone(),
                };
                let cancelled = cancelled.clone();
                jobs.spawn(async move { job.run(claim, cancelled).await });
            }
            if jobs.is_empty() {
                if stopping
                    || over_budget.load(Ordering::SeqCst)
                    || !store.others_busy(worker).await?
                {
                    break;
                }
                // Others still hold lines: wait, in case one of them dies and leaves them.
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = &mut stop => stopping = true,
                }
                store.reap(worker).await?;
                continue;
            }
            tokio::select! {
                joined = jobs.join_next() => match joined.expect("jobs is not empty") {
                    Ok(Ok(Some(record))) => {
                        handled += 1;
                        on_line(&record);
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => halt(error, &mut failure, &mut stopping),
                    Err(join) => halt(Error::Panicked(join.to_string()), &mut failure, &mut stopping),
                },
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    let _ = cancel.send(true);
                }
                _ = reap.tick(), if !stopping => {
                    if let Err(error) = store.reap(worker).await {
                        halt(error, &mut failure, &mut stopping);
                    }
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok((handled, stopping, over_budget.load(Ordering::SeqCst))),
        }
    }
}

/// One line in a worker's hands.
struct Job {
    client: Client,
    store: Store,
    source: Arc<Source>,
    worker: Arc<Worker>,
    out: PathBuf,
    budget: Option<u64>,
    over_budget: Arc<AtomicBool>,
}

impl Job {
    /// Takes the line from where the state left it to an end. `Ok(None)`: the worker was
    /// stopped and let the line go for a later run.
    async fn run(
        &self,
        claim: Claim,
        mut cancelled: watch::Receiver<bool>,
    ) -> Result<Option<LineRecord>, Error> {
        let (store, worker, item) = (&self.store, &*self.worker, claim.item);
        let number = self
            .source
            .line_number(item)
            .ok_or_else(|| Error::Changed {
                path: self.source.path().to_path_buf(),
            })?;
        let mut record = LineRecord {
            item,
            line: number,
            state: claim.state,
            name: claim.name.clone(),
            prompt: claim.prompt.clone(),
            task_id: claim.task_id.clone(),
            images: Vec::new(),
            files: Vec::new(),
            credits: None,
            error: None,
        };
        if claim.state == LineState::Pending {
            if *cancelled.borrow() {
                store.release(worker, item, None).await?;
                return Ok(None);
            }
            let source = self.source.clone();
            let raw = tokio::task::spawn_blocking(move || source.read(item))
                .await
                .map_err(|e| Error::Panicked(e.to_string()))??;
            let parsed = match raw.parse() {
                Ok(parsed) => parsed,
                Err(reason) => {
                    record.prompt = raw.prompt_hint();
                    store
                        .invalid(worker, item, number, &record.prompt, &reason)
                        .await?;
                    record.state = LineState::Invalid;
                    record.error = Some(("invalid_request".into(), reason));
                    return Ok(Some(record));
                }
            };
            record.prompt = parsed.request.prompt().to_owned();
            pause_at("claimed");
            let base = stem(parsed.name.as_deref(), number);
            let names = [
                base.clone(),
                format!("{base}-line-{number}"),
                format!("line-{number}-item-{item}"),
            ];
            store.still_alive(worker).await?;
            let submitting = store
                .start_submitting(worker, item, number, &names, &record.prompt, self.budget)
                .await?;
            let name = match submitting {
                Submitting::Named(name) => name,
                Submitting::OverBudget => {
                    self.over_budget.store(true, Ordering::SeqCst);
                    store.release(worker, item, None).await?;
                    let budget = self.budget.unwrap_or_default();
                    record.error = Some((
                        "over_budget".into(),
                        format!(
                            "not submitted: the budget of {budget} credits allows no more tasks \
                             (run again with a larger --max-credits to continue)"
                        ),
                    ));
                    return Ok(Some(record));
                }
            };
            record.name = Some(name);
            pause_at("before-post");
            match self.client.submit(&parsed.request).await {
                Ok(created) => {
                    pause_at("after-post");
                    if let Err(error) = store.submitted(worker, item, &created.task_id).await {
                        // The task exists but the state could not say so: say it here, where it
                        // is the only record. The line stays `submitting`, and becomes
                        // `unknown`: never sent again without the user.
                        eprintln!(
                            "line {number} was submitted as task {} but the state could not \
                             record it; fetch it with: gptimage wait {}",
                            created.task_id, created.task_id
                        );
                        return Err(error);
                    }
                    pause_at("submitted");
                    record.state = LineState::Submitted;
                    record.task_id = Some(created.task_id);
                }
                Err(error) => {
                    let state = if error.kind() == ErrorKind::OutcomeUnknown {
                        LineState::Unknown
                    } else {
                        LineState::Refused
                    };
                    let (kind, message) = (error_kind_name(&error), error.to_string());
                    store
                        .not_submitted(worker, item, state, kind, &message)
                        .await?;
                    record.state = state;
                    record.error = Some((kind.to_owned(), message));
                    return Ok(Some(record));
                }
            }
        }
        let task_id = record.task_id.clone().unwrap_or_default();
        let name = record.name.clone().unwrap_or_else(|| stem(None, number));
        let waited = tokio::select! {
            waited = self.client.wait(&task_id) => waited,
            _ = async { cancelled.wait_for(|c| *c).await.is_ok() } => {
                store.release(worker, item, None).await?;
                return Ok(None);
            }
        };
        let finished = match waited {
            Ok(task) => {
                pause_at("downloading");
                record.images = task.images().to_vec();
                record.credits = task.consumed_credits;
                self.client
                    .download_to_dir_as(&task, &self.out, &name)
                    .await
            }
            Err(error) => Err(error),
        };
        match finished {
            Ok(files) => {
                store
                    .done(worker, item, &record.images, &files, record.credits)
                    .await?;
                record.state = LineState::Done;
                record.files = files;
            }
            Err(error) if error.kind() == ErrorKind::TaskFailed => {
                let message = error.server_message().unwrap_or_default().to_owned();
                store.failed(worker, item, &message, Some(0)).await?;
                record.state = LineState::Failed;
                record.credits = Some(0);
                record.error = Some(("task_failed".into(), message));
            }
            Err(error) => {
                // No outcome yet (deadline, network, download): the line stays submitted, for a
                // later run to wait for again. Nothing is resubmitted.
                let (kind, message) = (error_kind_name(&error), error.to_string());
                store.release(worker, item, Some((kind, &message))).await?;
                record.error = Some((kind.to_owned(), message));
            }
        }
        Ok(Some(record))
    }
}

/// A test hook: with `GPTIMAGE_BATCH_PAUSE_AT` naming this point, the worker says so on stderr
/// and stops there for `GPTIMAGE_BATCH_PAUSE_SECS` (default 60, at most 600), so a test can kill
/// the process, or break its state, at an exact step of a line's life. Points: `claimed`,
/// `before-post`, `after-post`, `submitted`, `downloading`.
fn pause_at(point: &str) {
    // Read once: the hook is asked at every step of every line.
    static HOOK: std::sync::OnceLock<Option<(std::ffi::OsString, u64)>> =
        std::sync::OnceLock::new();
    let hook = HOOK.get_or_init(|| {
        let at = std::env::var_os("GPTIMAGE_BATCH_PAUSE_AT")?;
        let seconds = std::env::var("GPTIMAGE_BATCH_PAUSE_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(60)
            .min(600);
        Some((at, seconds))
    });
    if let Some((at, seconds)) = hook
        && at == point
    {
        eprintln!("gptimage-batch: paused at {point}");
        std::thread::sleep(Duration::from_secs(*seconds));
    }
}
