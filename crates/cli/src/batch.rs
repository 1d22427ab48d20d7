//! `gptimage batch` and `gptimage batch-status`: a thin front over `gptimage-batch`, which keeps
//! each line's state in SQLite or PostgreSQL so no line is ever paid for twice.

use std::path::Path;

use gptimage_batch::{Batch, Error, LineRecord, LineState, Options, Progress, StateUrl, Store};
use serde_json::json;

use crate::cli::{Batch as BatchArgs, BatchStatus};
use crate::commands::Context;
use crate::progress;
use crate::report::{Report, code};

/// Lines of the state read at a time by `batch-status`.
const PAGE: u64 = 1000;

pub(crate) async fn run(context: &Context, args: &BatchArgs) -> u8 {
    let out = &args.output.out;
    let state = match state_url(args.state.state.as_deref(), out) {
        Ok(state) => state,
        Err(code) => return code,
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: could not create {}: {e}", out.display());
        return code::USAGE;
    }
    let batch = match Batch::open(&args.file, &state).await {
        Ok(batch) => batch,
        Err(error) => return fail(&error),
    };
    let before = match batch.store().progress().await {
        Ok(progress) => progress,
        Err(error) => return fail(&error),
    };
    let bar = progress::bar(before.lines, progress::enabled(context.quiet));
    bar.set_position(settled(&before));
    let options = Options {
        out: out.clone(),
        concurrency: usize::from(args.concurrency),
        resubmit_unknown: args.resubmit_unknown,
        max_credits: args.max_credits,
    };
    let (mut done, mut not_done) = (0u64, 0u64);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
        bar.suspend(|| {
            eprintln!("interrupted: finishing the submissions under way; the state is safe")
        });
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
                    eprintln!("line {}: {message}", line.line);
                }
                report(line).print(args.output.json, true);
            });
        })
        .await;
    bar.finish_and_clear();
    if let Err(error) = gptimage_batch::write_index(batch.store(), out).await {
        eprintln!("warning: could not write index.html: {error}");
    }
    batch.store().close().await;
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => return fail(&error),
    };
    let progress = &summary.progress;
    if !context.quiet {
        eprintln!(
            "{}, {} credits spent{}; images and index.html in {}",
            counts(progress),
            progress.credits,
            if summary.interrupted {
                ", interrupted"
            } else {
                ""
            },
            out.display()
        );
        advise(progress, &state);
    }
    if summary.over_budget {
        eprintln!(
            "{} line(s) not submitted: --max-credits {} allows no more ({} credits committed); \
             run again with a larger budget to continue",
            progress.count(LineState::Pending),
            args.max_credits.unwrap_or_default(),
            progress.committed
        );
    }
    if summary.interrupted {
        eprintln!("run the same command again to resume: no line is submitted twice");
        code::INTERRUPTED
    } else if progress.all_done() {
        code::OK
    } else {
        code::TASK_FAILED
    }
}

/// `gptimage batch --dry-run`: what a run would submit and cost now; sends nothing.
pub(crate) async fn dry_run(args: &BatchArgs) -> u8 {
    let state = match state_url(args.state.state.as_deref(), &args.output.out) {
        Ok(state) => state,
        Err(code) => return code,
    };
    let plan = match gptimage_batch::plan(&args.file, &state, args.resubmit_unknown).await {
        Ok(plan) => plan,
        Err(error) => return fail(&error),
    };
    if args.output.json {
        let invalid: Vec<_> = plan
            .invalid
            .iter()
            .map(|(line, reason)| json!({"line": line, "error": reason}))
            .collect();
        println!(
            "{}",
            json!({
                "dry_run": true,
                "lines": plan.lines,
                "would_submit": plan.would_submit,
                "credits": plan.credits,
                "already_submitted": plan.already_submitted,
                "invalid": invalid,
            })
        );
    } else {
        for (line, reason) in &plan.invalid {
            eprintln!("line {line}: {reason}");
        }
        eprintln!(
            "{} of {} lines would be submitted, costing {} credits ({} already submitted, {} \
             invalid); nothing was sent",
            plan.would_submit,
            plan.lines,
            plan.credits,
            plan.already_submitted,
            plan.invalid.len()
        );
    }
    if plan.invalid.is_empty() {
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
    let progress = match store.progress().await {
        Ok(progress) => progress,
        Err(error) => return fail(&error),
    };
    let not_done = match unfinished(&store).await {
        Ok(lines) => lines,
        Err(error) => return fail(&error),
    };
    store.close().await;
    if args.json {
        let lines: Vec<_> = not_done.iter().map(|l| report(l).to_json()).collect();
        let object = json!({
            "state": state.to_string(),
            "batch_id": progress.batch_id,
            "file": progress.file_name,
            "lines": progress.lines,
            "states": progress.states,
            "credits": progress.credits,
            "committed": progress.committed,
            "workers": progress.workers,
            "not_done": lines,
        });
        println!("{object}");
    } else {
        println!(
            "batch {} (sha256 {}…), state {state}",
            progress.file_name,
            &progress.batch_id[..progress.batch_id.len().min(12)]
        );
        println!("  {}", counts(&progress));
        println!(
            "  {} credits spent ({} committed), {} worker(s) running",
            progress.credits, progress.committed, progress.workers
        );
        if !not_done.is_empty() {
            println!("not done:");
            for line in &not_done {
                let (kind, message) = line.error.clone().unwrap_or_default();
                let task = line
                    .task_id
                    .as_deref()
                    .map(|t| format!(" task {t}"))
                    .unwrap_or_default();
                println!(
                    "  line {} ({}{}{task}): {message}",
                    line.line,
                    line.state,
                    if kind.is_empty() {
                        String::new()
                    } else {
                        format!(", {kind}")
                    }
                );
            }
        }
        advise(&progress, &state);
    }
    code::OK
}

/// Every claimed line that is not done, in file order, a page at a time.
async fn unfinished(store: &Store) -> Result<Vec<LineRecord>, Error> {
    let mut lines = Vec::new();
    let mut pages = store.pages(PAGE);
    while let Some(page) = pages.next().await? {
        lines.extend(
            page.into_iter()
                .filter(|l| l.state != LineState::Done && l.state != LineState::Pending),
        );
    }
    Ok(lines)
}

/// The state `--state` names, or the SQLite file in `out`.
fn state_url(state: Option<&str>, out: &Path) -> Result<StateUrl, u8> {
    match state {
        None => Ok(StateUrl::in_folder(out)),
        Some(text) => text.parse().map_err(|e: Error| {
            eprintln!("error: {e}");
            code::USAGE
        }),
    }
}

/// Reports an error that stopped the batch; its exit code.
fn fail(error: &Error) -> u8 {
    eprintln!("error: {error}");
    match error {
        Error::Source { .. } | Error::BadStateUrl(_) | Error::OtherBatch { .. } => code::USAGE,
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

/// "4 of 6 lines done, 1 failed, 1 unknown".
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
    text
}

/// What to do about lines that need the user.
fn advise(progress: &Progress, state: &StateUrl) {
    let unknown = progress.count(LineState::Unknown);
    if unknown > 0 {
        eprintln!(
            "{unknown} line(s) may have made a task whose id was never learned: they are not sent \
             again by themselves. Check the account's usage; to send them again anyway, run the \
             batch with --resubmit-unknown (details: gptimage batch-status --state {state})"
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
        credits: line.credits,
        error: line
            .error
            .clone()
            .map(|(kind, message)| (kind, message, code::TASK_FAILED)),
    }
}
