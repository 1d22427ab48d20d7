//! `gptimage batch` and `gptimage batch-status`: a thin front over `gptimage-batch`, which keeps
//! each line's state in SQLite or PostgreSQL so no line is ever paid for twice.

use crate::say::{out, say};
use std::io::Write;
use std::path::Path;

use gptimage_batch::{
    Batch, Error, LineRecord, LineState, Options, Progress, Reason, ResultsStore, StateUrl, Store,
};
use serde_json::json;

use crate::cli::{Batch as BatchArgs, BatchStatus};
use crate::commands::{Context, Destination, Out};
use crate::progress;
use crate::report::{Report, code};

/// Lines of the state read at a time by `batch-status --json`.
const PAGE: u64 = 1000;
/// Lines quoted for each reason, and unknown-outcome tokens listed, by `batch-status` and the
/// summary after a run; `--json` lists every line.
const QUOTED: u64 = 5;
const TOKENS_LISTED: u64 = 100;

pub(crate) async fn run(context: &Context, args: &BatchArgs) -> u8 {
    let out = &args.output.out;
    // A bucket is opened (and a bad URL refused) before anything else.
    if args.output.sign_for.is_some() {
        say!(
            "error: --sign-for is for generate and wait; a batch's gallery (index.html in the \
             bucket) links its pictures through URLs signed for a week, and \
             `gptimage batch-status --write-index` signs them afresh"
        );
        return code::USAGE;
    }
    let destination = match crate::commands::destination(context, &args.output).await {
        Ok(destination) => destination,
        Err((message, exit)) => {
            say!("error: {message}");
            return exit;
        }
    };
    let state = match state_url(args.state.state.as_deref(), out) {
        Ok(state) => state,
        Err(code) => return code,
    };
    let folder = match (&destination, &state) {
        (Destination::Folder(folder), _) => Some(folder.clone()),
        (Destination::Bucket(_), StateUrl::Sqlite(path)) => path.parent().map(Path::to_path_buf),
        (Destination::Bucket(_), _) => None,
    };
    if let Some(folder) = &folder
        && let Err(e) = std::fs::create_dir_all(folder)
    {
        say!("error: could not create {}: {e}", folder.display());
        return code::USAGE;
    }
    if let (Destination::Bucket(_), StateUrl::Sqlite(path), None) =
        (&destination, &state, &args.state.state)
        && !context.quiet
    {
        say!(
            "the batch's state is the SQLite file {} (the images go to the bucket); for workers \
             on several machines, give every one --state postgres://…",
            path.display()
        );
    }
    let results = match &destination {
        Destination::Bucket(bucket) => Some(ResultsStore(bucket.clone())),
        Destination::Folder(_) => None,
    };
    let open = gptimage_batch::OpenOptions::new().accept_async_replicas(args.accept_async_replicas);
    let batch = match Batch::open_with(&args.file, &state, &open).await {
        Ok(batch) => batch,
        Err(error) => return fail(&error),
    };
    if let Err(error) = settle_the_users_word(batch.store(), args).await {
        return fail(&error);
    }
    let before = match batch.store().progress().await {
        Ok(progress) => progress,
        Err(error) => return fail(&error),
    };
    let bar = progress::bar(before.lines, progress::enabled(context.quiet));
    bar.set_position(settled(&before));
    let image_host = match context.image_host_if_any(args.image_host.as_deref()) {
        Ok(host) => host.map(|host| gptimage_batch::InputHost(host.into())),
        Err((message, exit)) => {
            say!("error: {message}");
            return exit;
        }
    };
    let options = Options {
        out: match &destination {
            Destination::Folder(folder) => folder.clone(),
            Destination::Bucket(_) => out.clone(),
        },
        results: results.clone(),
        concurrency: usize::from(args.concurrency),
        // Both were settled above, where what they did could be said at once.
        resubmit_unknown: Vec::new(),
        max_credits: None,
        image_host,
    };
    let (mut done, mut not_done) = (0u64, 0u64);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
        bar.suspend(|| say!("interrupted: finishing the submissions under way; the state is safe"));
    };
    let result = batch
        .run(&context.client, &options, stop, |line| {
            if line.state == LineState::Done {
                done += 1;
            } else {
                not_done += 1;
            }
            bar.inc(1);
            let pacing = context.client.pacing();
            let pushback = match (pacing.pushbacks, pacing.per_second) {
                (0, _) => String::new(),
                (n, Some(rate)) => {
                    format!("; the service pushes back ({n}× 429), pacing {rate:.2}/s")
                }
                (n, None) => format!("; the service pushed back ({n}× 429)"),
            };
            bar.set_message(format!("{done} done, {not_done} not done{pushback}"));
            bar.suspend(|| {
                if let Some((_, message)) = &line.error {
                    say!("line {}: {message}", line.line);
                }
                report(line).print(args.output.json, true);
            });
        })
        .await;
    bar.finish_and_clear();
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => {
            // A state that failed cannot be read for an index either; anything else can.
            if !error.is_state() {
                write_index(batch.store(), &destination, context.quiet).await;
                batch.store().close().await;
            }
            return fail(&error);
        }
    };
    write_index(batch.store(), &destination, context.quiet).await;
    let reasons = batch.store().reasons(QUOTED).await;
    batch.store().close().await;
    let progress = &summary.progress;
    if !context.quiet {
        say!(
            "{}, {} credits spent{}; images, index.html and results.jsonl in {}",
            counts(progress),
            progress.credits,
            if summary.interrupted {
                ", interrupted"
            } else {
                ""
            },
            out.display()
        );
        advise(progress, &state, &args.file);
    }
    if summary.over_budget {
        say!(
            "{} line(s) not submitted: the batch's budget of {} credits allows no more ({} \
             credits committed); run again with a larger --max-credits to continue",
            progress.count(LineState::Pending),
            progress.budget.unwrap_or_default(),
            progress.committed
        );
    }
    if summary.interrupted {
        say!("run the same command again to resume: no line is submitted twice");
        return code::INTERRUPTED;
    }
    if progress.all_done() {
        return code::OK;
    }
    match reasons {
        Ok(reasons) => exit_code(progress, &reasons),
        Err(_) => code::TASK_FAILED,
    }
}

/// What the user said for this batch as a whole, done before the run so it can be said at
/// once: the budget stored with the batch, and the unknown outcomes checked and sent again.
async fn settle_the_users_word(store: &Store, args: &BatchArgs) -> Result<(), Error> {
    if let Some(credits) = args.max_credits {
        let before = store.set_budget(credits).await?;
        if before != Some(credits) {
            let was = before.map_or("none".to_owned(), |b| format!("{b} credits"));
            say!(
                "the batch's budget is now {credits} credits (it was {was}); every worker obeys it"
            );
        }
    }
    if !args.resubmit_unknown.is_empty() {
        let unmatched = store.resubmit_unknown(&args.resubmit_unknown).await?;
        let sent = args.resubmit_unknown.len() - unmatched.len();
        if sent > 0 {
            say!("{sent} line(s) of unknown outcome will be sent again, as you checked");
        }
        for token in unmatched {
            say!(
                "token {token} names no line of unknown outcome now (its line moved on, or its \
                 outcome is unknown again under a new token: see gptimage batch-status); \
                 nothing is sent for it"
            );
        }
    }
    Ok(())
}

/// The exit code of a run that left lines not done: 1 when a task failed or a line is
/// invalid; else 3 when the service refused a line or no longer knows its task, 5 when lines
/// only wait for tasks still running, and 4 otherwise (unknown outcomes, a service or image
/// host that kept failing).
fn exit_code(progress: &Progress, reasons: &[Reason]) -> u8 {
    if progress.count(LineState::Failed) + progress.count(LineState::Invalid) > 0 {
        return code::TASK_FAILED;
    }
    if reasons.is_empty() {
        // Only pending lines are left: the budget held them back.
        code::TASK_FAILED
    } else if reasons
        .iter()
        .any(|r| r.state == LineState::Refused || r.kind == "task_unknown")
    {
        code::REFUSED
    } else if reasons.iter().all(|r| r.kind == "deadline") {
        code::DEADLINE
    } else {
        code::TRANSPORT
    }
}

/// `batch-status --write-index`: the gallery and the manifest written again into `out`.
async fn write_index_again(store: &Store, out: &Path) -> u8 {
    // A bucket is reached through the HTTP stack a client would use; no request goes to the
    // API, so no key is needed.
    let config = match gptimage::Client::builder().api_key("sk-unused").build() {
        Ok(client) => client.config().clone(),
        Err(error) => {
            say!("error: {}", crate::report::describe(&error, None));
            return code::USAGE;
        }
    };
    let destination = match Destination::of(out, &config) {
        Ok(destination) => destination,
        Err((message, exit)) => {
            say!("error: {message}");
            return exit;
        }
    };
    match write_gallery(store, &destination).await {
        Ok(location) => {
            say!("wrote {location} and results.jsonl beside it");
            code::OK
        }
        Err(error) => fail(&error),
    }
}

/// Writes `index.html` and `results.jsonl` where `destination` keeps the images; the
/// gallery's location.
async fn write_gallery(store: &Store, destination: &Destination) -> Result<String, Error> {
    match destination {
        Destination::Folder(folder) => gptimage_batch::write_index(store, folder)
            .await
            .map(|()| folder.join("index.html").display().to_string()),
        Destination::Bucket(bucket) => {
            gptimage_batch::write_index_to(
                store,
                &ResultsStore(bucket.clone()),
                &std::env::temp_dir(),
                gptimage_batch::GALLERY_VALIDITY,
            )
            .await
        }
    }
}

/// Writes the gallery and the manifest where the images are; a failure is a warning (the
/// images are safe, and `batch-status --write-index` writes them again).
async fn write_index(store: &Store, destination: &Destination, quiet: bool) {
    match write_gallery(store, destination).await {
        Ok(location) if !quiet && matches!(destination, Destination::Bucket(_)) => say!(
            "the gallery is {location} (its pictures' signed links last a week; \
             gptimage batch-status --write-index writes a fresh one)"
        ),
        Ok(_) => {}
        Err(error) => {
            let why = match &error {
                Error::Output { message, .. } => message.clone(),
                other => other.to_string(),
            };
            say!(
                "warning: could not write index.html and results.jsonl: {why}; the images are \
                 safe: gptimage batch-status --write-index writes them again"
            );
        }
    }
}

/// `gptimage batch --dry-run`: what a run would submit and cost now; sends nothing.
pub(crate) async fn dry_run(args: &BatchArgs) -> u8 {
    let state = match state_url(args.state.state.as_deref(), &args.output.out) {
        Ok(state) => state,
        Err(code) => return code,
    };
    let plan = match gptimage_batch::plan(&args.file, &state, &args.resubmit_unknown).await {
        Ok(plan) => plan,
        Err(error) => return fail(&error),
    };
    let budget = args.max_credits.or(plan.budget);
    if args.output.json {
        let invalid: Vec<_> = plan
            .first_invalid
            .iter()
            .map(|(line, reason)| json!({"line": line, "error": reason}))
            .collect();
        out!(
            "{}",
            json!({
                "dry_run": true,
                "lines": plan.lines,
                "would_submit": plan.would_submit,
                "credits": plan.credits,
                "budget": budget,
                "committed": plan.committed,
                "already_submitted": plan.already_submitted,
                "invalid_lines": plan.invalid,
                "invalid": invalid,
            })
        );
    } else {
        for (line, reason) in &plan.first_invalid {
            say!("line {line}: {reason}");
        }
        let quoted = plan.first_invalid.len() as u64;
        if plan.invalid > quoted {
            say!(
                "… and {} more invalid line(s) (--json lists the first {quoted})",
                plan.invalid - quoted
            );
        }
        say!(
            "{} of {} lines would be submitted, costing {} credits ({} already submitted, {} \
             invalid); nothing was sent",
            plan.would_submit,
            plan.lines,
            plan.credits,
            plan.already_submitted,
            plan.invalid
        );
        if let Some(budget) = budget {
            let room = budget.saturating_sub(plan.committed);
            if room < plan.credits {
                say!(
                    "the budget of {budget} credits ({} committed) allows {} of them",
                    plan.committed,
                    room / gptimage::types::CREDITS_PER_TASK
                );
            }
        }
    }
    if plan.invalid == 0 {
        code::OK
    } else {
        code::USAGE
    }
}

/// `gptimage batch-status`: the batch as it stands, read without changing anything.
pub(crate) async fn status(args: &BatchStatus) -> u8 {
    let state = match state_url(args.state.state.as_deref(), &args.out) {
        Ok(state) => state,
        Err(code) => return code,
    };
    let store = match Store::open_existing(&state).await {
        Ok(store) => store,
        Err(error) => return fail(&error),
    };
    if args.write_index {
        let written = write_index_again(&store, &args.out).await;
        if written != code::OK {
            store.close().await;
            return written;
        }
    }
    let shown = if args.json {
        status_json(&store, &state).await
    } else {
        status_text(&store, &state).await
    };
    store.close().await;
    match shown {
        Ok(()) => code::OK,
        Err(error) => fail(&error),
    }
}

/// `batch-status --json`: one object, whose `not_done` lists every line that is not done,
/// written a page at a time (a million failed lines take no more memory than ten).
async fn status_json(store: &Store, state: &StateUrl) -> Result<(), Error> {
    let progress = store.progress().await?;
    let head = json!({
        "state": state.to_string(),
        "batch_id": progress.batch_id,
        "file": progress.file_name,
        "lines": progress.lines,
        "states": progress.states,
        "credits": progress.credits,
        "committed": progress.committed,
        "budget": progress.budget,
        "held": progress.held,
        "workers": progress.workers,
    })
    .to_string();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let io = |e: std::io::Error| Error::Source {
        path: "standard output".into(),
        source: e.into(),
    };
    // The head's closing brace gives way to the streamed array.
    let head = crate::say::shown(&head);
    write!(stdout, "{},\"not_done\":[", &head[..head.len() - 1]).map_err(io)?;
    let mut first = true;
    let mut pages = store.pages_not_done(PAGE);
    while let Some(page) = pages.next().await? {
        for line in &page {
            if !first {
                stdout.write_all(b",").map_err(io)?;
            }
            first = false;
            let line = crate::say::shown(&report(line).to_json().to_string());
            write!(stdout, "{line}").map_err(io)?;
        }
    }
    writeln!(stdout, "]}}").map_err(io)?;
    stdout.flush().map_err(io)
}

/// `batch-status` for people: counts, then the lines that are not done by reason (how many,
/// and the first few), then the tokens of unknown outcomes.
async fn status_text(store: &Store, state: &StateUrl) -> Result<(), Error> {
    let progress = store.progress().await?;
    let reasons = store.reasons(QUOTED).await?;
    out!(
        "batch {} (sha256 {}…), state {state}",
        progress.file_name,
        &progress.batch_id[..progress.batch_id.len().min(12)]
    );
    out!("  {}", counts(&progress));
    let budget = progress
        .budget
        .map(|b| format!(" of a {b}-credit budget"))
        .unwrap_or_default();
    out!(
        "  {} credits spent ({} committed{budget}), {} worker(s) running",
        progress.credits,
        progress.committed,
        progress.workers
    );
    if !reasons.is_empty() {
        out!("not done:");
    }
    for reason in &reasons {
        let kind = if reason.kind.is_empty() {
            String::new()
        } else {
            format!(", {}", reason.kind)
        };
        out!("  {} line(s) {}{kind}:", reason.count, reason.state);
        for line in &reason.first {
            out!("    {}", describe_line(line));
        }
        if reason.count > reason.first.len() as u64 {
            out!(
                "    … and {} more (gptimage batch-status --json lists every line)",
                reason.count - reason.first.len() as u64
            );
        }
    }
    let unknown = progress.count(LineState::Unknown);
    if unknown > 0 {
        let first = store.pages_unknown(TOKENS_LISTED).next().await?;
        let first = first.unwrap_or_default();
        let tokens: Vec<String> = first
            .iter()
            .filter_map(|line| line.outcome_token().map(|t| t.to_string()))
            .collect();
        let unsettled: Vec<_> = first.iter().filter_map(|line| line.settles_in).collect();
        out!("unknown outcomes (check the account for each before sending it again):");
        out!("  tokens: {}", tokens.join(","));
        if let Some(longest) = unsettled.iter().max() {
            out!(
                "  {} not yet settled: what their worker sent may still reach the service for up \
                 to {} s; check the account after that (their tokens are shown then)",
                unsettled.len(),
                longest.as_secs().max(1)
            );
        }
        if unknown > (tokens.len() + unsettled.len()) as u64 {
            out!(
                "  … and {} more (gptimage batch-status --json gives each line's token)",
                unknown - (tokens.len() + unsettled.len()) as u64
            );
        }
    }
    advise(&progress, state, Path::new(&progress.file_name));
    Ok(())
}

/// One line that is not done, for people: where it is, its task, and what to do.
fn describe_line(line: &LineRecord) -> String {
    let (_, message) = line.error.clone().unwrap_or_default();
    let task = line
        .task_id
        .as_deref()
        .map(|t| format!(", task {t}"))
        .unwrap_or_default();
    let token = match (line.outcome_token(), line.settles_in) {
        (Some(t), _) => format!(", token {t}"),
        (None, Some(wait)) => format!(
            ", not settled for {} s more (what was sent may still arrive; its token is shown then)",
            wait.as_secs().max(1)
        ),
        (None, None) => String::new(),
    };
    let held = if line.held {
        ", held until a later run"
    } else {
        ""
    };
    format!("line {}{task}{token}{held}: {message}", line.line)
}

/// The state `--state` names, or the SQLite file in `out`; for `--out` naming a bucket, the
/// SQLite file in a folder of the current one named after the bucket's URL and a hash of it
/// (`gptimage-state-s3-bucket-run-7-1a2b3c4d/`: two URLs never share one), which
/// `batch-status --out` with the same URL finds.
fn state_url(state: Option<&str>, out: &Path) -> Result<StateUrl, u8> {
    match (state, Out::of(out)) {
        (Some(text), _) => text.parse().map_err(|e: Error| {
            say!("error: {e}");
            code::USAGE
        }),
        (None, Out::Folder(folder)) => Ok(StateUrl::in_folder(&folder)),
        (None, Out::Bucket(url)) => {
            let named: String = url
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
                .split('-')
                .filter(|part| !part.is_empty())
                .take(12)
                .collect::<Vec<_>>()
                .join("-");
            // FNV-1a: a short, stable name for the exact URL.
            let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            Ok(StateUrl::in_folder(Path::new(&format!(
                "gptimage-state-{named}-{:08x}",
                hash >> 32
            ))))
        }
    }
}

/// Reports an error that stopped the batch; its exit code.
fn fail(error: &Error) -> u8 {
    say!("error: {error}");
    match error {
        Error::Source { .. }
        | Error::BadStateUrl(_)
        | Error::OtherBatch { .. }
        | Error::BadToken(_)
        | Error::ForeignToken { .. }
        | Error::Unsettled { .. }
        | Error::NewerState { .. }
        | Error::Replication { .. }
        | Error::NetworkFileSystem { .. }
        | Error::ImageHost { .. }
        | Error::Pooled { .. } => code::USAGE,
        Error::Refused { .. } => code::REFUSED,
        _ => code::TRANSPORT,
    }
}

/// Lines that need nothing more from a worker.
fn settled(progress: &Progress) -> u64 {
    LineState::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| progress.count(s))
        .sum()
}

/// "4 of 6 lines done, 1 failed, 1 unknown, 2 held until a later run".
fn counts(progress: &Progress) -> String {
    let mut text = format!(
        "{} of {} lines done",
        progress.count(LineState::Done),
        progress.lines
    );
    for state in LineState::ALL {
        let n = progress.count(state);
        if state != LineState::Done && n > 0 {
            text.push_str(&format!(", {n} {state}"));
        }
    }
    if progress.held > 0 {
        text.push_str(&format!(
            " ({} held until a later run: they could not progress in this one)",
            progress.held
        ));
    }
    text
}

/// What to do about lines that need the user.
fn advise(progress: &Progress, state: &StateUrl, file: &Path) {
    let unknown = progress.count(LineState::Unknown);
    if unknown > 0 {
        say!(
            "{unknown} line(s) may have made a task whose id was never learned: they are never \
             sent again by themselves. Check the account's usage for each; to send the ones you \
             checked again, name their tokens (listed by: gptimage batch-status --state {state}):\n  \
             gptimage batch {} --state {state} --resubmit-unknown TOKEN,TOKEN,…",
            file.display()
        );
    }
    if progress.held > 0 {
        say!(
            "{} line(s) could not progress in this run and are held with their task id and \
             reason (gptimage batch-status --state {state}); run the same command again later \
             to try them again: nothing is resubmitted",
            progress.held
        );
    }
}

/// One line as the `--json` object and the stderr lines of other commands.
fn report(line: &LineRecord) -> Report {
    let status = match line.state {
        LineState::Done => Some("SUCCESS".to_owned()),
        LineState::Failed => Some("FAILED".to_owned()),
        LineState::Submitted => Some("IN_PROGRESS".to_owned()),
        _ => None,
    };
    Report {
        line: Some(line.line as usize),
        name: line.name.clone(),
        task_id: line.task_id.clone(),
        status,
        images: line.images.clone(),
        files: line.files.clone(),
        objects: Vec::new(),
        credits: line.credits,
        error: line
            .error
            .clone()
            .map(|(kind, message)| (kind, message, code::TASK_FAILED)),
        token: line.outcome_token().map(|t| t.to_string()),
        settles_in: line.settles_in.map(|d| d.as_secs().max(1)),
        held: line.held,
        state: Some(line.state.as_str()),
        prompt: Some(line.prompt.clone()),
    }
}
