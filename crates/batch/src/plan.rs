//! A dry run: what a batch would submit and cost now, given what its state already holds; reads
//! the file once and the state a page at a time, and sends nothing.

use std::path::Path;

use gptimage::types::CREDITS_PER_TASK;

use crate::machine::LineState;
use crate::{Error, LineRecord, Source, StateUrl, Store};

/// What a run of the batch would do now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// Non-blank lines in the file.
    pub lines: u64,
    /// Lines that would be submitted (never sent, or refused before; with `resubmit_unknown`,
    /// also those of unknown outcome).
    pub would_submit: u64,
    /// What they would cost, at 10 credits a task.
    pub credits: u64,
    /// Lines left out because an earlier run already submitted them (or they await the user).
    pub already_submitted: u64,
    /// Lines that cannot be sent: their 1-based line number and what is wrong.
    pub invalid: Vec<(u64, String)>,
}

/// Plans a run of `file` against the state at `state` (which may not exist yet: then every
/// line is new). Refuses a state that belongs to another file.
///
/// ```no_run
/// # async fn run() -> Result<(), gptimage_batch::Error> {
/// let state = gptimage_batch::StateUrl::in_folder("results".as_ref());
/// let plan = gptimage_batch::plan("prompts.jsonl", &state, false).await?;
/// println!("{} tasks, {} credits", plan.would_submit, plan.credits);
/// # Ok(())
/// # }
/// ```
pub async fn plan(
    file: impl AsRef<Path>,
    state: &StateUrl,
    resubmit_unknown: bool,
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
    // The state's rows, in item order, merged with the file's lines as they are read.
    let mut rows = Vec::new();
    if let Some(store) = &store {
        let progress = store.progress().await?;
        if progress.batch_id != source.id() {
            return Err(Error::OtherBatch {
                url: state.clone(),
                file: source.path().to_path_buf(),
                theirs: progress.file_name,
                their_lines: progress.lines,
            });
        }
        let mut pages = store.pages(10_000);
        while let Some(page) = pages.next().await? {
            rows.extend(page.into_iter().map(|r: LineRecord| (r.item, r.state)));
        }
        store.close().await;
    }
    let source = std::sync::Arc::new(source);
    tokio::task::spawn_blocking(move || {
        let mut plan = Plan {
            lines: source.len(),
            ..Plan::default()
        };
        let mut rows = rows.into_iter().peekable();
        source.scan(|line| {
            let state = match rows.peek() {
                Some((item, state)) if *item == line.item => {
                    let state = *state;
                    rows.next();
                    Some(state)
                }
                _ => None,
            };
            let sendable = match state {
                None | Some(LineState::Pending | LineState::Refused) => true,
                Some(LineState::Unknown) => resubmit_unknown,
                Some(_) => false,
            };
            if !sendable {
                plan.already_submitted += u64::from(state != Some(LineState::Invalid));
                if state == Some(LineState::Invalid)
                    && let Err(reason) = line.parse()
                {
                    plan.invalid.push((line.number, reason));
                }
                return;
            }
            match line.parse() {
                Ok(_) => {
                    plan.would_submit += 1;
                    plan.credits += CREDITS_PER_TASK;
                }
                Err(reason) => plan.invalid.push((line.number, reason)),
            }
        })?;
        Ok(plan)
    })
    .await
    .map_err(|e| Error::Panicked(e.to_string()))?
}
