//! A dry run: what a batch would submit and cost now, given what its state already holds; reads
//! the file once and the state a page at a time, and sends nothing.

use std::path::Path;

use gptimage::types::CREDITS_PER_TASK;

use crate::machine::LineState;
use crate::{Error, OutcomeToken, Source, StateUrl, Store};

/// How many invalid lines a plan quotes whole; it counts them all.
pub const QUOTED_INVALID: usize = 100;

/// Rows of the state read at a time, and pages buffered between the reader and the scan.
const PAGE: u64 = 10_000;

/// What a run of the batch would do now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// Non-blank lines in the file.
    pub lines: u64,
    /// Lines that would be submitted (never sent, or refused before, and the unknown outcomes
    /// whose tokens were given), before the budget.
    pub would_submit: u64,
    /// What they would cost, at 10 credits a task.
    pub credits: u64,
    /// The batch's stored budget, and the credits it has committed: a run submits no more
    /// than `budget - committed` allows.
    pub budget: Option<u64>,
    /// Credits the batch has committed so far.
    pub committed: u64,
    /// Lines left out because an earlier run already submitted them (or they await the user).
    pub already_submitted: u64,
    /// How many lines cannot be sent.
    pub invalid: u64,
    /// The first [`QUOTED_INVALID`] of them: their 1-based line number and what is wrong.
    pub first_invalid: Vec<(u64, String)>,
}

/// What the state holds of one claimed line, as the plan needs it.
struct Row {
    item: u64,
    state: LineState,
    token: Option<OutcomeToken>,
}

/// Plans a run of `file` against the state at `state` (which may not exist yet: then every
/// line is new), counting as sendable the unknown outcomes that `resubmit` names. Refuses a
/// state that belongs to another file. Memory stays flat however large the file or the state:
/// both are read as they are merged.
///
/// ```no_run
/// # async fn run() -> Result<(), gptimage_batch::Error> {
/// let state = gptimage_batch::StateUrl::in_folder("results".as_ref());
/// let plan = gptimage_batch::plan("prompts.jsonl", &state, &[]).await?;
/// println!("{} tasks, {} credits", plan.would_submit, plan.credits);
/// # Ok(())
/// # }
/// ```
pub async fn plan(
    file: impl AsRef<Path>,
    state: &StateUrl,
    resubmit: &[OutcomeToken],
) -> Result<Plan, Error> {
    let path = file.as_ref().to_path_buf();
    let source = tokio::task::spawn_blocking(move || Source::open(path))
        .await
        .map_err(|e| Error::Panicked(e.to_string()))??;
    let store = match Store::open_existing(state).await {
        Ok(store) => Some(store),
        Err(Error::NoState { .. }) => None,
        Err(error) => return Err(error),
    };
    let mut plan = Plan {
        lines: source.len(),
        ..Plan::default()
    };
    // The state's rows, a page at a time, in item order, to merge with the file's lines.
    let (pages, mut rows) = tokio::sync::mpsc::channel::<Result<Vec<Row>, Error>>(2);
    let reader = match store {
        Some(store) => {
            let progress = store.progress().await?;
            if progress.batch_id != source.id() {
                return Err(Error::OtherBatch {
                    url: state.clone(),
                    file: source.path().to_path_buf(),
                    theirs: progress.file_name,
                    their_lines: progress.lines,
                });
            }
            plan.budget = progress.budget;
            plan.committed = progress.committed;
            Some(tokio::spawn(async move {
                let mut after = None;
                loop {
                    let page = match store.lines(after, PAGE).await {
                        Ok(page) => page,
                        Err(error) => {
                            let _ = pages.send(Err(error)).await;
                            break;
                        }
                    };
                    let Some(last) = page.last() else { break };
                    after = Some(last.item);
                    let page = page
                        .into_iter()
                        .map(|r| Row {
                            item: r.item,
                            state: r.state,
                            token: r.outcome_token(),
                        })
                        .collect();
                    if pages.send(Ok(page)).await.is_err() {
                        break;
                    }
                }
                store.close().await;
            }))
        }
        None => {
            // No state: no rows, and the scan must not wait for any.
            drop(pages);
            None
        }
    };
    let resubmit = resubmit.to_vec();
    let source = std::sync::Arc::new(source);
    let plan = tokio::task::spawn_blocking(move || {
        let mut page = Vec::new().into_iter().peekable();
        let mut failed = None;
        // Lines may name local input files: checked (read once each), never uploaded.
        let folder = source
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut stand_ins = crate::inputs::StandIns::default();
        let mut parse =
            |line: &crate::source::RawLine| stand_ins.apply(line, &folder).and_then(|l| l.parse());
        source.scan(|line| {
            while failed.is_none() && page.peek().is_none() {
                match rows.blocking_recv() {
                    Some(Ok(next)) => page = next.into_iter().peekable(),
                    Some(Err(error)) => failed = Some(error),
                    None => break,
                }
            }
            let row = match page.peek() {
                Some(row) if row.item == line.item => page.next(),
                _ => None,
            };
            let state = row.as_ref().map(|r| r.state);
            let sendable = match &row {
                None => true,
                Some(row) => match row.state {
                    LineState::Pending | LineState::Refused => true,
                    LineState::Unknown => row.token.is_some_and(|t| resubmit.contains(&t)),
                    _ => false,
                },
            };
            if !sendable {
                plan.already_submitted += u64::from(state != Some(LineState::Invalid));
                if state == Some(LineState::Invalid)
                    && let Err(reason) = parse(&line)
                {
                    note_invalid(&mut plan, line.number, reason);
                }
                return;
            }
            match parse(&line) {
                Ok(_) => {
                    plan.would_submit += 1;
                    plan.credits += CREDITS_PER_TASK;
                }
                Err(reason) => note_invalid(&mut plan, line.number, reason),
            }
        })?;
        match failed {
            Some(error) => Err(error),
            None => Ok(plan),
        }
    })
    .await
    .map_err(|e| Error::Panicked(e.to_string()))?;
    if let Some(reader) = reader {
        reader.abort();
    }
    plan
}

fn note_invalid(plan: &mut Plan, line: u64, reason: String) {
    plan.invalid += 1;
    if plan.first_invalid.len() < QUOTED_INVALID {
        plan.first_invalid.push((line, reason));
    }
}
