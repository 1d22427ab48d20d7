//! One worker of a batch: claim a line, take it through its life one committed step at a time,
//! and keep at most `concurrency` lines in hand; read lines only as they are claimed.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gptimage::{ApiCode, Client, ErrorKind, TaskInfo, TaskStatus};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::Error;
use crate::inputs::{InputHost, Inputs, ResultsStore};
use crate::machine::LineState;
use crate::source::{Source, stem};
use crate::store::{
    Claim, LineRecord, MAX_DEFERRALS, OutcomeToken, Progress, Retry, SEND_WINDOW, StateUrl, Store,
    Submitting, Worker, lock_delay,
};

/// How often a worker looks for dead workers, and for lines others let go, while it has
/// nothing to claim.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How often a busy worker looks for dead workers and confirms its own liveness.
const REAP_EVERY: Duration = Duration::from_secs(2);
/// The longest a line's retries back off to.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// How long a worker that must stop gives the submissions on the wire to get their answers
/// recorded, beyond the longest a submission may take once recorded (`S`: the send window and
/// the request timeout), before it abandons what is left (a state it cannot reach records
/// nothing anyway; a line abandoned while `submitting` becomes `unknown` after its lock-delay).
const GRACE: Duration = Duration::from_secs(2);
/// The longest the worker's own rounds (claims, reaping, leaving) wait for the state: longer
/// than PostgreSQL takes to end a stuck transaction (30 s), so a live state always answers
/// within it; a state that does not is out of reach, and the worker stops.
const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where images go: the folder, unless [`results`](Self::results) names a store. A batch
    /// whose state is SQLite keeps its state file here too by default.
    pub out: PathBuf,
    /// A store the images go to instead of `out` (a bucket: `ObjectStoreResults`), under the
    /// same names. A line is `done` only once its images are stored; a store that refuses them
    /// stops the worker ([`Error::Output`]), the line kept `submitted` with its task id for a
    /// later run to store without a new task.
    pub results: Option<ResultsStore>,
    /// How many lines this worker holds at once (submitting, or waiting for their task).
    pub concurrency: usize,
    /// The unknown outcomes to send again, each named by its token
    /// ([`LineRecord::outcome_token`]): only for a user who checked that the account holds no
    /// task for them, since otherwise they may be paid twice. A line that became unknown again
    /// since has a new token, and is not sent.
    pub resubmit_unknown: Vec<OutcomeToken>,
    /// Sets the batch's budget: the most credits it may commit, counting every run and worker
    /// (10 a task; a failed task's are given back). The budget is stored with the batch, and
    /// every worker obeys it, given this option or not; `None` keeps the stored one. Lines
    /// beyond it are left pending for a run with a larger budget.
    pub max_credits: Option<u64>,
    /// Where input images that lines name as local files (relative to the batch file) are put
    /// for the service to fetch. Each distinct file is hosted once and its URL recorded in the
    /// state, so later lines and runs reuse it. Without one, a line naming a local file stops
    /// the run before anything more is sent ([`Error::ImageHost`]).
    pub image_host: Option<InputHost>,
}

impl Options {
    /// Images into `out`, four lines at a time.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            concurrency: 4,
            resubmit_unknown: Vec::new(),
            max_credits: None,
            image_host: None,
            results: None,
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
    /// Tokens of [`Options::resubmit_unknown`] that named no line of unknown outcome (the line
    /// moved on, or its outcome is unknown again under a new token): nothing was sent for them.
    pub unmatched_tokens: Vec<OutcomeToken>,
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
        Self::open_with(file, state, &crate::OpenOptions::default()).await
    }

    /// Like [`open`](Self::open), opening the state as `options` say.
    pub async fn open_with(
        file: impl AsRef<Path>,
        state: &StateUrl,
        options: &crate::OpenOptions,
    ) -> Result<Self, Error> {
        let file = file.as_ref().to_path_buf();
        let source = tokio::task::spawn_blocking(move || Source::open(file))
            .await
            .map_err(|e| Error::Panicked(e.to_string()))??;
        let store = Store::open_with(state, options).await?;
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

    /// Runs one worker until no line is left that it can progress (and no other live worker
    /// holds one it might have to take over), or until `stop` completes. Submissions already on
    /// the wire when `stop` fires are finished and recorded; waits are let go, for a later run.
    /// Each line this worker finishes, or stops on, is passed to `on_line`.
    ///
    /// The run always ends by itself. A line whose wait or download fails is let go and tried
    /// again later, its retries backing off from the client's first poll interval; one that
    /// cannot progress (the service no longer knows its task, its images are refused even at
    /// fresh URLs, or it could not be followed within the client's wait timeout, counted from
    /// when this run began waiting for it) is held back until a later run, keeping its task id
    /// and the reason. Nothing is ever resubmitted for it.
    ///
    /// Errors stop the worker, which then sends nothing more: the state store failing or
    /// becoming unreachable, the service refusing the account ([`Error::Refused`]: a bad key or
    /// no credits, rather than a refusal for each line of the file), or the output folder
    /// refusing the images ([`Error::Output`]).
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
        let left = match &result {
            // A worker that lost the state cannot tell it it is leaving; the others count it
            // out by its lock.
            Err(error) if error.is_state() => Ok(()),
            _ => self.within(store.leave(&worker)).await,
        };
        let (handled, interrupted, over_budget, unmatched_tokens) = result?;
        left?;
        Ok(Summary {
            progress: store.progress().await?,
            handled,
            interrupted,
            over_budget,
            unmatched_tokens,
        })
    }

    async fn work(
        &self,
        client: &Client,
        options: &Options,
        stop: impl Future<Output = impl Sized>,
        on_line: &mut impl FnMut(&LineRecord),
        worker: &Arc<Worker>,
    ) -> Result<(u64, bool, bool, Vec<OutcomeToken>), Error> {
        let store = &self.store;
        store.start_run().await?;
        let unmatched = if options.resubmit_unknown.is_empty() {
            Vec::new()
        } else {
            store.resubmit_unknown(&options.resubmit_unknown).await?
        };
        if let Some(credits) = options.max_credits {
            store.set_budget(credits).await?;
        }
        self.within(store.reap(worker)).await?;
        let (cancel, cancelled) = watch::channel(false);
        let mut jobs = JoinSet::new();
        // Liveness on tasks of their own: the heartbeat never waits behind a claim, a reap or a
        // slow reader of the output, and the drain's bound never waits behind either.
        let (trouble, mut troubles) = mpsc::channel::<Error>(2);
        let _liveness = self.keep_alive(worker, trouble);
        let (mut handled, mut stopping, mut failure) = (0u64, false, None::<Error>);
        // Set by a line the budget refused: nothing more is claimed, what is under way ends.
        let over_budget = Arc::new(AtomicBool::new(false));
        // When this run began waiting for each line it holds or has set back: whatever fails,
        // a line gets one wait timeout in a run, so every run ends by itself.
        let waiting = Arc::new(Mutex::new(HashMap::new()));
        let inputs = Arc::new(Inputs::new(
            options.image_host.clone(),
            client.config().wait_timeout(),
        ));
        // The first failure stops the worker: nothing new is claimed or sent, waits are let go,
        // and a submission already on the wire still gets its answer recorded (or printed).
        let halt = |error: Error, failure: &mut Option<Error>, stopping: &mut bool| {
            failure.get_or_insert(error);
            *stopping = true;
            let _ = cancel.send(true);
        };
        // Once stopping (for a failure or by the user's word), what is still under way has at
        // most the longest a recorded submission can take, and GRACE, to end: the drain is
        // bounded, and the worker keeps confirming its liveness meanwhile.
        let drain = SEND_WINDOW
            .saturating_add(client.config().request_timeout())
            .saturating_add(GRACE);
        let mut abandon_at = None::<tokio::time::Instant>;
        tokio::pin!(stop);
        loop {
            while !stopping
                && !over_budget.load(Ordering::SeqCst)
                && jobs.len() < options.concurrency.max(1)
            {
                // A claim waits for the state (a lock, a connection): liveness lost meanwhile
                // ends the wait at once.
                let claimed = tokio::select! {
                    biased;
                    Some(error) = troubles.recv() => Err(error),
                    claimed = self.within(store.claim(worker)) => claimed,
                };
                let claim = match claimed {
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
                    results: options.results.clone(),
                    over_budget: over_budget.clone(),
                    waiting: waiting.clone(),
                    inputs: inputs.clone(),
                };
                let cancelled = cancelled.clone();
                jobs.spawn(async move { job.run(claim, cancelled).await });
            }
            if stopping && abandon_at.is_none() {
                let now = tokio::time::Instant::now();
                abandon_at = Some(now.checked_add(drain).unwrap_or(now));
            }
            if jobs.is_empty() {
                if stopping || over_budget.load(Ordering::SeqCst) {
                    break;
                }
                // Lines waiting out a setback come back when it ends; lines others hold may
                // come back if they die. Otherwise nothing is left this worker can progress.
                let looked = async {
                    let next = self.within(store.next_retry(worker)).await?;
                    let others_busy = self.within(store.others_busy(worker)).await?;
                    Ok::<_, Error>((next, others_busy))
                };
                let (next, others_busy) = tokio::select! {
                    biased;
                    Some(error) = troubles.recv() => return Err(error),
                    looked = looked => looked?,
                };
                let pause = match (next, others_busy) {
                    (None, false) => break,
                    (None, true) => IDLE_POLL,
                    (Some(next), busy) => {
                        let pause = next.min(REAP_EVERY);
                        if busy { pause.min(IDLE_POLL) } else { pause }
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = &mut stop => stopping = true,
                    Some(error) = troubles.recv() => halt(error, &mut failure, &mut stopping),
                }
                continue;
            }
            let abandon = async {
                match abandon_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
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
                // Liveness is confirmed while draining too: a worker that loses it then stops
                // its waits at once and sends nothing more.
                Some(error) = troubles.recv(), if failure.is_none() => {
                    halt(error, &mut failure, &mut stopping);
                }
                () = abandon => {
                    // The state could not record what these lines did, and the worker sends
                    // nothing more: a line left `submitting` becomes `unknown` for the others.
                    jobs.abort_all();
                    while jobs.join_next().await.is_some() {}
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok((
                handled,
                stopping,
                over_budget.load(Ordering::SeqCst),
                unmatched,
            )),
        }
    }

    /// The worker's liveness rounds, each on a task of its own, every [`REAP_EVERY`]: its
    /// heartbeat (confirming it still holds its liveness lock, else it must stop sending) and
    /// the reaping of workers that died. The first failure of either is sent on `trouble`; both
    /// end when the returned set is dropped.
    fn keep_alive(&self, worker: &Arc<Worker>, trouble: mpsc::Sender<Error>) -> JoinSet<()> {
        let mut rounds = JoinSet::new();
        let (store, me, report) = (self.store.clone(), worker.clone(), trouble.clone());
        rounds.spawn(async move {
            let mut every = tokio::time::interval(REAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(error) = store.still_alive(&me).await {
                    let _ = report.send(error).await;
                    return;
                }
            }
        });
        let (store, me) = (self.store.clone(), worker.clone());
        rounds.spawn(async move {
            let mut every = tokio::time::interval(REAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let reaped = tokio::time::timeout(STATE_TIMEOUT, store.reap(&me)).await;
                match reaped {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        let _ = trouble.send(error).await;
                        return;
                    }
                    Err(_) => {
                        let _ = trouble
                            .send(Error::LostWorker {
                                url: store.url().clone(),
                            })
                            .await;
                        return;
                    }
                }
            }
        });
        rounds
    }

    /// `operation` on the state, or the worker counts itself out if the state does not answer
    /// within [`STATE_TIMEOUT`] (a partition: its queries would otherwise hang until TCP gives
    /// up, for many minutes).
    async fn within<T>(
        &self,
        operation: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(STATE_TIMEOUT, operation)
            .await
            .unwrap_or_else(|_| {
                Err(Error::LostWorker {
                    url: self.store.url().clone(),
                })
            })
    }
}

/// One line in a worker's hands.
struct Job {
    client: Client,
    store: Store,
    source: Arc<Source>,
    worker: Arc<Worker>,
    out: PathBuf,
    results: Option<ResultsStore>,
    over_budget: Arc<AtomicBool>,
    /// When this run began waiting for each line (shared by the worker's jobs).
    waiting: Arc<Mutex<HashMap<u64, Instant>>>,
    /// The run's hosting of local input images.
    inputs: Arc<Inputs>,
}

impl Job {
    /// Takes the line from where the state left it to an end, or to a setback. `Ok(None)`: the
    /// worker was stopped and let the line go for a later run.
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
            submissions: 0,
            held: false,
            retry_in: None,
            token: None,
            settles_in: None,
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
            // Local input files: hosted (or found hosted) before anything is paid.
            let folder = self.source.path().parent().unwrap_or(Path::new("."));
            let hint = raw.prompt_hint();
            let parsed = match self.inputs.resolve(raw, folder, store).await {
                Ok(resolved) => resolved.and_then(|raw| raw.parse()),
                Err(error) => {
                    store.release(worker, item, None).await?;
                    return Err(error);
                }
            };
            let parsed = match parsed {
                Ok(parsed) => parsed,
                // Not JSON, against a rule of the API, or a local file that cannot be used.
                Err(reason) => {
                    record.prompt = hint;
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
            match self
                .send(&claim, &parsed.request, &names, &mut record, &mut cancelled)
                .await?
            {
                Sent::Submitted => {}
                Sent::Over(record) => return Ok(Some(*record)),
                Sent::LetGo => return Ok(None),
            }
        }
        let task_id = record.task_id.clone().unwrap_or_default();
        let name = record.name.clone().unwrap_or_else(|| stem(None, number));
        let outcome = tokio::select! {
            outcome = self.finish(&task_id, &name, &mut record) => outcome,
            _ = async { cancelled.wait_for(|c| *c).await.is_ok() } => {
                store.release(worker, item, None).await?;
                return Ok(None);
            }
        };
        let outcome = match outcome {
            Ok(files) => Ok(files),
            Err(Stall::Sdk(error)) => Err(error),
            Err(Stall::OutOfTime) => {
                self.stop_waiting(item);
                let message = format!(
                    "task {task_id} could not be followed within the wait timeout; the line \
                     keeps its task id: run the command again later"
                );
                store
                    .set_back(
                        worker,
                        item,
                        ("deadline", &message),
                        (Retry::NextRun, claim.setbacks),
                    )
                    .await?;
                record.held = true;
                record.error = Some(("deadline".into(), message));
                return Ok(Some(record));
            }
        };
        match outcome {
            Ok(files) => {
                store
                    .done(worker, item, &record.images, &files, record.credits)
                    .await?;
                self.stop_waiting(item);
                record.state = LineState::Done;
                record.files = files;
            }
            Err(error) if error.kind() == ErrorKind::TaskFailed => {
                let message = error.server_message().unwrap_or_default().to_owned();
                // What the failed task consumed, if its status said (else nothing: the
                // service gives a failed task's credits back).
                let credits = record.credits.unwrap_or(0);
                store.failed(worker, item, &message, Some(credits)).await?;
                self.stop_waiting(item);
                record.state = LineState::Failed;
                record.credits = Some(credits);
                record.error = Some(("task_failed".into(), message));
            }
            Err(error) if refuses_the_account(&error) => {
                store.release(worker, item, None).await?;
                return Err(account_refused(&error));
            }
            Err(error) if error.is_write() => {
                store.release(worker, item, None).await?;
                return Err(Error::Output {
                    folder: match &self.results {
                        Some(results) => PathBuf::from(results.0.describe()),
                        None => self.out.clone(),
                    },
                    message: describe(&error),
                });
            }
            Err(error) => {
                // No outcome yet: the line stays submitted with its task id, and is tried again
                // after a setback, or in a later run. Nothing is resubmitted.
                let (retry, message) = self.setback(claim.setbacks, item, &task_id, &error);
                if retry == Retry::NextRun {
                    self.stop_waiting(item);
                }
                let kind = setback_kind(&error);
                store
                    .set_back(worker, item, (kind, &message), (retry, claim.setbacks))
                    .await?;
                record.held = retry == Retry::NextRun;
                record.error = Some((kind.to_owned(), message));
            }
        }
        Ok(Some(record))
    }

    /// Sends a pending line, fenced: a turn of the client's pacer first (nothing is recorded
    /// while the pacer holds it back), then `submitting` committed, then the POST, which may
    /// start only within [`SEND_WINDOW`] of when the commit began (and so leaves, or arrives,
    /// within `S`, the window and the request timeout). What no task can have come of (a 429,
    /// a POST never sent) returns the line to `pending`, spaced; only the user resends an
    /// outcome that is unknown.
    async fn send(
        &self,
        claim: &Claim,
        request: &gptimage::GenerateRequest,
        names: &[String],
        record: &mut LineRecord,
        cancelled: &mut watch::Receiver<bool>,
    ) -> Result<Sent, Error> {
        let (store, worker, item, number) = (&self.store, &*self.worker, claim.item, record.line);
        // A stop wins over a turn that is ready at the same moment, and is checked again once
        // the turn is taken: after a stop, no submission is recorded, so none is sent.
        let turn = tokio::select! {
            biased;
            _ = async { cancelled.wait_for(|c| *c).await.is_ok() } => None,
            turn = self.client.pacer_turn() => Some(turn),
        };
        let Some(turn) = turn.filter(|_| !*cancelled.borrow()) else {
            store.release(worker, item, None).await?;
            return Ok(Sent::LetGo);
        };
        let turn = match turn {
            Ok(turn) => turn,
            Err(error) => {
                // No turn within the wait timeout: nothing recorded, nothing sent. Deferred,
                // for as long as the pacer says (its hold), counted: it cannot loop.
                let after = error
                    .retry_after()
                    .unwrap_or_else(|| self.client.config().poll().delay(0))
                    .min(MAX_BACKOFF);
                let reason = ("not_sent", error.to_string());
                store
                    .defer(worker, claim, (reason.0, &reason.1), after)
                    .await?;
                if claim.deferrals.saturating_add(1) < MAX_DEFERRALS {
                    return Ok(Sent::LetGo);
                }
                record.state = LineState::Refused;
                record.error = Some((reason.0.to_owned(), reason.1));
                return Ok(Sent::Over(Box::new(record.clone())));
            }
        };
        store.still_alive(worker).await?;
        if *cancelled.borrow() {
            store.release(worker, item, None).await?;
            return Ok(Sent::LetGo);
        }
        let fence = lock_delay(self.client.config().request_timeout());
        let recording = Instant::now();
        let submitting = store
            .start_submitting(worker, item, number, names, &record.prompt, fence)
            .await?;
        let name = match submitting {
            Submitting::Named(name) => name,
            Submitting::OverBudget { budget } => {
                self.over_budget.store(true, Ordering::SeqCst);
                store.release(worker, item, None).await?;
                record.error = Some((
                    "over_budget".into(),
                    format!(
                        "not submitted: the batch's budget of {budget} credits allows no \
                         more tasks (run again with a larger --max-credits to continue)"
                    ),
                ));
                return Ok(Sent::Over(Box::new(record.clone())));
            }
        };
        record.name = Some(name);
        pause_at("before-post");
        let sent = self
            .client
            .submit_fenced(request, turn, recording + SEND_WINDOW)
            .await;
        match sent {
            Ok(created) => {
                pause_at("after-post");
                if let Err(error) = store.submitted(worker, item, &created.task_id).await {
                    // The task exists but the state could not say so: say it here, where it
                    // is the only record. The line stays `submitting`, and becomes `unknown`:
                    // never sent again without the user.
                    eprintln!(
                        "line {number} was submitted as task {} but the state could not record \
                         it; fetch it with: gptimage wait {}",
                        created.task_id, created.task_id
                    );
                    return Err(error);
                }
                pause_at("submitted");
                record.state = LineState::Submitted;
                record.task_id = Some(created.task_id);
                Ok(Sent::Submitted)
            }
            Err(error) if proves_no_task(&error) => {
                // A 429, or never sent: back to pending, for any worker, after the service's
                // Retry-After (or the pacer's own spacing).
                let after = error
                    .retry_after()
                    .unwrap_or_else(|| self.client.config().poll().delay(0))
                    .min(MAX_BACKOFF);
                let (kind, message) = (error.kind().as_str(), error.to_string());
                store.unsent(worker, claim, (kind, &message), after).await?;
                if claim.deferrals.saturating_add(1) >= MAX_DEFERRALS {
                    record.state = LineState::Refused;
                    record.error = Some((kind.to_owned(), message));
                    return Ok(Sent::Over(Box::new(record.clone())));
                }
                Ok(Sent::LetGo)
            }
            Err(error) => {
                let state = if error.kind() == ErrorKind::OutcomeUnknown {
                    LineState::Unknown
                } else {
                    LineState::Refused
                };
                // An answer lost while the worker listens for callbacks (--listen): the line
                // stays `submitting`, this worker's, while the callback may name its task (a
                // status request confirms it); only if none does is it recorded `unknown`. So
                // no token exists for a line whose task may still be recovered.
                if state == LineState::Unknown
                    && let Some(task_id) = self.recovered(&error, cancelled).await
                {
                    if let Err(error) = store.submitted(worker, item, &task_id).await {
                        eprintln!(
                            "line {number} was recovered as task {task_id} but the state could \
                             not record it; fetch it with: gptimage wait {task_id}"
                        );
                        return Err(error);
                    }
                    record.state = LineState::Submitted;
                    record.task_id = Some(task_id);
                    return Ok(Sent::Submitted);
                }
                let (kind, message) = (error.kind().as_str(), error.to_string());
                store
                    .not_submitted(worker, item, (state, claim.refusals), kind, &message)
                    .await?;
                if state == LineState::Refused && refuses_the_account(&error) {
                    // The same refusal awaits every line: stop here, not at each of them.
                    return Err(account_refused(&error));
                }
                record.state = state;
                record.error = Some((kind.to_owned(), message));
                Ok(Sent::Over(Box::new(record.clone())))
            }
        }
    }

    /// The task of a submission whose answer was lost, if the worker listens for callbacks
    /// (`--listen`) and one confirmed it within the wait timeout; `None` at once otherwise,
    /// and at a stop.
    async fn recovered(
        &self,
        error: &gptimage::Error,
        cancelled: &mut watch::Receiver<bool>,
    ) -> Option<String> {
        tokio::select! {
            biased;
            _ = async { cancelled.wait_for(|c| *c).await.is_ok() } => None,
            found = self.client.recover(error) => found.ok().flatten().map(|t| t.task_id),
        }
    }

    /// Waits for the task and saves its images. An image URL the host refuses (403, 404, 410:
    /// expired, as signed URLs do) is asked for afresh once: services re-sign result URLs.
    /// A line waited for before in this run gets only what is left of its wait timeout.
    async fn finish(
        &self,
        task_id: &str,
        name: &str,
        record: &mut LineRecord,
    ) -> Result<Vec<PathBuf>, Stall> {
        let waited = match self.waiting_since(record.item) {
            // The first wait: the client's own deadline bounds it, and says so.
            None => self.client.wait(task_id).await,
            Some(since) => {
                let left = self
                    .client
                    .config()
                    .wait_timeout()
                    .saturating_sub(since.elapsed());
                tokio::time::timeout(left, self.client.wait(task_id))
                    .await
                    .map_err(|_| Stall::OutOfTime)?
            }
        };
        let task = waited?;
        pause_at("downloading");
        record.images = task.images().to_vec();
        record.credits = task.consumed_credits;
        let saved = self.save(&task, name).await;
        let error = match saved {
            Err(error) if url_refused(&error) => error,
            saved => return Ok(saved?),
        };
        let fresh = self.client.status(task_id).await?;
        if fresh.status != TaskStatus::Success || fresh.images().is_empty() {
            return Err(error.into());
        }
        record.images = fresh.images().to_vec();
        Ok(self.save(&fresh, name).await?)
    }

    /// Puts a finished task's images into the results store, or the output folder: their
    /// object locations, or paths.
    async fn save(&self, task: &TaskInfo, name: &str) -> gptimage::Result<Vec<PathBuf>> {
        match &self.results {
            Some(results) => Ok(self
                .client
                .save(task, &*results.0, name)
                .await?
                .into_iter()
                .map(|stored| PathBuf::from(stored.location))
                .collect()),
            None => self.client.download_to_dir_as(task, &self.out, name).await,
        }
    }

    /// When to try the line again, and what to tell the user, after `error` ended its wait or
    /// download without an outcome.
    fn setback(
        &self,
        setbacks: u32,
        item: u64,
        task_id: &str,
        error: &gptimage::Error,
    ) -> (Retry, String) {
        let error_text = describe(error);
        if forgets_the_task(error) {
            return (
                Retry::NextRun,
                format!(
                    "the service does not know task {task_id} ({error_text}); task ids expire, \
                     and belong to the key that made them. The line keeps its task id and is \
                     never resubmitted: run again with the key that made it"
                ),
            );
        }
        if error.kind() == ErrorKind::DeadlinePassed {
            return (
                Retry::NextRun,
                format!(
                    "task {task_id} had not finished by the wait's deadline; it may still \
                     finish: run the command again to wait for it (nothing is resubmitted)"
                ),
            );
        }
        if url_refused(error) {
            return (
                Retry::NextRun,
                format!(
                    "the image host refused task {task_id}'s images even at fresh URLs \
                     ({error_text}); they may have expired. The line keeps its task id: run \
                     again later, or fetch them with: gptimage wait {task_id}"
                ),
            );
        }
        let timeout = self.client.config().wait_timeout();
        let since = self
            .waiting
            .lock()
            .expect("never poisoned")
            .get(&item)
            .copied();
        if since.is_none_or(|since| since.elapsed() >= timeout) {
            return (
                Retry::NextRun,
                format!(
                    "task {task_id} could not be followed within the wait timeout \
                     ({error_text}); the line keeps its task id: run the command again later"
                ),
            );
        }
        let first = self
            .client
            .config()
            .poll()
            .delay(0)
            .max(Duration::from_millis(10));
        let delay = first
            .saturating_mul(1 << setbacks.min(20))
            .min(MAX_BACKOFF)
            .min(timeout);
        (
            Retry::After(delay),
            format!(
                "{error_text}; the line keeps task {task_id} and is tried again in {delay:.1?}"
            ),
        )
    }

    /// When this run began waiting for the line, if it did before; notes now if not.
    fn waiting_since(&self, item: u64) -> Option<Instant> {
        let mut table = self.waiting.lock().expect("never poisoned");
        match table.get(&item) {
            Some(since) => Some(*since),
            None => {
                table.insert(item, Instant::now());
                None
            }
        }
    }

    /// The run is done with the line: it ended, or is held until a later run.
    fn stop_waiting(&self, item: u64) {
        self.waiting.lock().expect("never poisoned").remove(&item);
    }
}

/// How sending a pending line went.
enum Sent {
    /// The service named its task: go on to wait for it.
    Submitted,
    /// The line ended here (refused, unknown, over budget, no pacer turn): report it.
    Over(Box<LineRecord>),
    /// The line was let go without an outcome (stopped first, or back to pending after a 429):
    /// nothing to report; it is claimed again later.
    LetGo,
}

/// Whether `error` proves the submission made no task: the service answered 429, or the
/// client never sent it.
fn proves_no_task(error: &gptimage::Error) -> bool {
    error.kind() == ErrorKind::NotSent
        || (error.kind() == ErrorKind::Api && error.api_code() == Some(ApiCode::RateLimited))
}

/// Why a line's wait or download ended without an outcome.
enum Stall {
    /// The SDK's error.
    Sdk(gptimage::Error),
    /// The line was waited for earlier in this run, and what was left of its wait timeout ran
    /// out.
    OutOfTime,
}

impl From<gptimage::Error> for Stall {
    fn from(error: gptimage::Error) -> Self {
        Stall::Sdk(error)
    }
}

/// The kind recorded for a line set back by `error`: the SDK's kind, except `task_unknown` for a
/// task the service says it does not know (404), which no retry in this run can change.
fn setback_kind(error: &gptimage::Error) -> &'static str {
    if forgets_the_task(error) {
        "task_unknown"
    } else {
        error.kind().as_str()
    }
}

/// Whether the service says it does not know the task (404): task ids expire, and belong to
/// the key that made them.
fn forgets_the_task(error: &gptimage::Error) -> bool {
    error.kind() == ErrorKind::Api && error.api_code() == Some(ApiCode::NotFound)
}

/// Whether the service refused the account itself (a bad key, no credits): every line would
/// get the same answer.
fn refuses_the_account(error: &gptimage::Error) -> bool {
    error.kind() == ErrorKind::Api
        && matches!(
            error.api_code(),
            Some(ApiCode::Unauthorized | ApiCode::InsufficientCredits)
        )
}

fn account_refused(error: &gptimage::Error) -> Error {
    Error::Refused {
        code: error.code().unwrap_or_default(),
        message: describe(error),
    }
}

/// Whether an image host refused a result URL the way an expired or revoked signed URL is.
fn url_refused(error: &gptimage::Error) -> bool {
    error.kind() == ErrorKind::Download
        && !error.is_write()
        && matches!(error.http_status(), Some(403 | 404 | 410))
}

/// The error and its causes in one line (a cause its text already holds is not repeated).
pub(crate) fn describe(error: &gptimage::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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
