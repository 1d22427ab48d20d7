//! What a command says about a task: one JSON object for scripts, or lines for people; and the
//! exit code each outcome maps to.

use crate::say::{out, say};
use std::path::{Path, PathBuf};

use gptimage::{ApiCode, Error, ErrorKind, TaskInfo};
use serde_json::{Value, json};

/// Exit codes, as the help lists them.
pub(crate) mod code {
    pub(crate) const OK: u8 = 0;
    pub(crate) const TASK_FAILED: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const REFUSED: u8 = 3;
    pub(crate) const TRANSPORT: u8 = 4;
    pub(crate) const DEADLINE: u8 = 5;
    pub(crate) const INTERRUPTED: u8 = 130;
}

/// The exit code of an error.
pub(crate) fn exit_code(error: &Error) -> u8 {
    match error.kind() {
        ErrorKind::InvalidRequest | ErrorKind::Config => code::USAGE,
        ErrorKind::TaskFailed => code::TASK_FAILED,
        ErrorKind::DeadlinePassed => code::DEADLINE,
        ErrorKind::Api => match error.api_code() {
            Some(ApiCode::RateLimited | ApiCode::ServerError(_)) => code::TRANSPORT,
            _ => code::REFUSED,
        },
        _ => code::TRANSPORT,
    }
}

/// An error as a person reads it: the error, its causes, and what to do next.
pub(crate) fn describe(error: &Error, out: Option<&Path>) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    match (error.kind(), error.task_id()) {
        (ErrorKind::DeadlinePassed, Some(id)) => {
            let out = out.map(|o| format!(" --out {}", o.display())).unwrap_or_default();
            text.push_str(&format!("\n  resume with: gptimage wait {id}{out}"));
        }
        (ErrorKind::Transport | ErrorKind::Api | ErrorKind::InvalidResponse, Some(id)) => {
            text.push_str(&format!("\n  the task may still finish: gptimage wait {id}"));
        }
        (ErrorKind::OutcomeUnknown, _) => text.push_str(
            "\n  the API has no way to list tasks: check the account's usage before submitting again",
        ),
        _ => {}
    }
    text
}

/// What one command (or one batch line) reports about its task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) line: Option<usize>,
    pub(crate) name: Option<String>,
    pub(crate) task_id: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) images: Vec<String>,
    pub(crate) files: Vec<PathBuf>,
    /// The images kept in a bucket (`--out s3://…`).
    pub(crate) objects: Vec<Object>,
    pub(crate) credits: Option<u64>,
    pub(crate) error: Option<(String, String, u8)>,
    /// A batch line of unknown outcome: the token that names it for `--resubmit-unknown`.
    pub(crate) token: Option<String>,
    /// A batch line of unknown outcome not yet settled: seconds until what its worker sent can
    /// no longer reach the service (its token is given then).
    pub(crate) settles_in: Option<u64>,
    /// A batch line held back until a later run.
    pub(crate) held: bool,
    /// A batch line's state in the batch (`pending`, `submitting`, `unknown`, …).
    pub(crate) state: Option<&'static str>,
    /// A batch line's prompt: what to look for in the account before resending an unknown
    /// outcome.
    pub(crate) prompt: Option<String>,
}

/// An image kept in a bucket.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    /// `s3://bucket/prefix/key`.
    pub(crate) location: String,
    /// Its name under the prefix.
    pub(crate) key: String,
    /// Its content's SHA-256, as hex.
    pub(crate) sha256: String,
    /// Whether this run wrote it (`false`: the same content was there already).
    pub(crate) written: bool,
    /// A signed GET URL, when `--sign-for` asked for one: a secret, shown in `--json` only.
    pub(crate) url: Option<String>,
}

impl Report {
    pub(crate) fn task(info: &TaskInfo, files: Vec<PathBuf>) -> Self {
        Self {
            task_id: Some(info.task_id.clone()),
            status: Some(info.status.to_string()),
            images: info.images().to_vec(),
            files,
            credits: info.consumed_credits,
            ..Self::default()
        }
    }

    pub(crate) fn failure(task_id: Option<&str>, error: &Error) -> Self {
        let status = (error.kind() == ErrorKind::TaskFailed).then(|| "FAILED".to_owned());
        let credits = (error.kind() == ErrorKind::TaskFailed).then_some(0);
        Self {
            task_id: task_id.or(error.task_id()).map(str::to_owned),
            status,
            credits,
            error: Some((
                error.kind().as_str().to_owned(),
                error.to_string(),
                exit_code(error),
            )),
            ..Self::default()
        }
    }

    pub(crate) fn exit_code(&self) -> u8 {
        self.error.as_ref().map_or(code::OK, |(_, _, code)| *code)
    }

    /// The JSON object for `--json`: `task_id`, `status`, `images`, `files` (or `objects`: each
    /// image in a bucket, its `location`, `key` and `sha256`, and `url` once printed), `credits`, `error`
    /// (and `line`, `name`, `held`, `state`, `prompt` and, for an unknown outcome, `token`, or
    /// `settles_in_secs` while it is not yet settled, for batch lines).
    pub(crate) fn to_json(&self) -> Value {
        let mut object = json!({
            "task_id": self.task_id,
            "status": self.status,
            "images": self.images,
            "files": self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "credits": self.credits,
            "error": self.error.as_ref().map(|(kind, message, _)| json!({"kind": kind, "message": message})),
        });
        if !self.objects.is_empty() {
            object["objects"] = self
                .objects
                .iter()
                .map(|o| {
                    json!({"location": o.location, "key": o.key, "sha256": o.sha256, "written": o.written})
                })
                .collect();
        }
        if let Some(line) = self.line {
            object["line"] = json!(line);
            object["name"] = json!(self.name);
            object["held"] = json!(self.held);
            if let Some(state) = self.state {
                object["state"] = json!(state);
            }
            if let Some(prompt) = &self.prompt {
                object["prompt"] = json!(prompt);
            }
            if let Some(token) = &self.token {
                object["token"] = json!(token);
            }
            if let Some(seconds) = self.settles_in {
                object["settles_in_secs"] = json!(seconds);
            }
        }
        object
    }

    /// Prints the report: JSON on stdout, or files on stdout and the rest on stderr.
    pub(crate) fn print(&self, json_mode: bool, quiet: bool) {
        if json_mode {
            if self.objects.is_empty() {
                out!("{}", self.to_json());
            } else {
                let objects: Vec<(&str, Option<&str>)> = self
                    .objects
                    .iter()
                    .map(|o| (o.location.as_str(), o.url.as_deref()))
                    .collect();
                crate::say::out_json_with_objects(&self.to_json(), &objects);
            }
            return;
        }
        for file in &self.files {
            out!("{}", file.display());
        }
        for object in &self.objects {
            crate::say::out_location(&object.location);
        }
        if quiet {
            return;
        }
        if let (Some(id), Some(status)) = (&self.task_id, &self.status) {
            let credits = self
                .credits
                .map(|c| format!(", {c} credits"))
                .unwrap_or_default();
            say!("task {id}: {status}{credits}");
            if self.files.is_empty() && self.objects.is_empty() {
                for image in &self.images {
                    say!("  {image}");
                }
            }
        }
    }
}
