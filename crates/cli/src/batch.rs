//! `gptimage batch`: many requests from a JSON-lines file, with bounded concurrency, a durable
//! journal that makes a rerun resume without submitting any line twice, and an `index.html`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gptimage::{
    Error, ErrorKind, GenerateRequest, InputFidelity, Quality, RawGenerateRequest, Size,
};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::cli::Batch;
use crate::commands::Context;
use crate::progress;
use crate::report::{Report, code, describe, exit_code, kind_name};

/// The journal's file name inside `--out`.
pub(crate) const JOURNAL: &str = "gptimage-batch.journal";

/// One line of the batch file.
struct Line {
    number: usize,
    fingerprint: String,
    stem: String,
    prompt: String,
    request: Result<GenerateRequest, String>,
}

/// What the journal knows of a line from earlier runs.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// Nothing: submit it.
    Nothing,
    /// A submission began, and its answer was never recorded: a task may exist.
    Unknown(String),
    /// Submitted as this task: wait for it.
    Submitted(String),
    /// Finished, its files written.
    Done(String, Vec<PathBuf>),
    /// The task ended FAILED.
    Failed(String, String),
}

pub(crate) async fn run(context: &Context, args: &Batch) -> u8 {
    let out = &args.output.out;
    let lines = match read_lines(&args.file) {
        Ok(lines) => lines,
        Err(message) => {
            eprintln!("error: {message}");
            return code::USAGE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: could not create {}: {e}", out.display());
        return code::USAGE;
    }
    let journal = match Journal::open(&out.join(JOURNAL)) {
        Ok(journal) => Arc::new(journal),
        Err(e) => {
            eprintln!(
                "error: could not open the journal in {}: {e}",
                out.display()
            );
            return code::USAGE;
        }
    };

    let bar = progress::bar(lines.len() as u64, progress::enabled(context.quiet));
    let (cancel, cancelled) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(usize::from(args.concurrency)));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    let mut reports: BTreeMap<usize, (Report, String)> = BTreeMap::new();
    let (mut done, mut failed) = (0usize, 0usize);

    for line in lines {
        let request = match line.request {
            Ok(request) => request,
            Err(message) => {
                let report = Report {
                    line: Some(line.number),
                    name: Some(line.stem.clone()),
                    error: Some((
                        "invalid_request".into(),
                        format!("line {}: {message}", line.number),
                        code::USAGE,
                    )),
                    ..Report::default()
                };
                bar.suspend(|| {
                    eprintln!("line {}: {message}; skipped", line.number);
                    if args.output.json {
                        println!("{}", report.to_json());
                    }
                });
                failed += 1;
                bar.inc(1);
                reports.insert(line.number, (report, line.prompt));
                continue;
            }
        };
        let known = journal.known(line.number, &line.fingerprint);
        let job = Job {
            client: context.client.clone(),
            journal: journal.clone(),
            out: out.clone(),
            number: line.number,
            fingerprint: line.fingerprint,
            stem: line.stem,
            request,
        };
        let (permits, mut cancelled, in_flight) =
            (permits.clone(), cancelled.clone(), in_flight.clone());
        let prompt = line.prompt;
        workers.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            if *cancelled.borrow() {
                return (job.number, prompt, None);
            }
            in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let report = job.run(known, &mut cancelled).await;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            (job.number, prompt, report)
        });
    }

    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let joined = tokio::select! {
            joined = workers.join_next() => joined,
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                let _ = cancel.send(true);
                bar.suspend(|| eprintln!("interrupted: finishing the submissions under way; the journal is safe"));
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let Ok((number, prompt, report)) = joined else {
            continue;
        };
        let Some(mut report) = report else { continue };
        report.line = Some(number);
        if report.error.is_some() {
            failed += 1;
        } else {
            done += 1;
        }
        bar.inc(1);
        let flying = in_flight.load(std::sync::atomic::Ordering::Relaxed);
        bar.set_message(format!("{done} done, {failed} failed, {flying} in flight"));
        bar.suspend(|| {
            if let Some((_, message, _)) = &report.error {
                eprintln!("line {number}: {message}");
            }
            report.print(args.output.json, true);
        });
        reports.insert(number, (report, prompt));
    }
    bar.finish_and_clear();

    if let Err(e) = write_index(out, &reports) {
        eprintln!("warning: could not write index.html: {e}");
    }
    if !context.quiet {
        eprintln!(
            "{done} done, {failed} failed{}; images and index.html in {}",
            if interrupted { ", interrupted" } else { "" },
            out.display()
        );
    }
    if interrupted {
        eprintln!("run the same command again to resume: no line is submitted twice");
        code::INTERRUPTED
    } else if failed > 0 {
        code::TASK_FAILED
    } else {
        code::OK
    }
}

/// One line's work.
struct Job {
    client: gptimage::Client,
    journal: Arc<Journal>,
    out: PathBuf,
    number: usize,
    fingerprint: String,
    stem: String,
    request: GenerateRequest,
}

impl Job {
    /// Runs the line from where the journal left it; `None` if cancelled before it could end.
    async fn run(&self, known: Known, cancelled: &mut watch::Receiver<bool>) -> Option<Report> {
        let task_id = match known {
            Known::Done(task_id, files) if files.iter().all(|f| f.exists()) => {
                return Some(self.named(Report {
                    task_id: Some(task_id),
                    status: Some("SUCCESS".into()),
                    files,
                    ..Report::default()
                }));
            }
            Known::Done(task_id, _) | Known::Submitted(task_id) => task_id,
            Known::Failed(task_id, message) => {
                let report = Report {
                    task_id: Some(task_id),
                    status: Some("FAILED".into()),
                    credits: Some(0),
                    error: Some(("task_failed".into(), message, code::TASK_FAILED)),
                    ..Report::default()
                };
                return Some(self.named(report));
            }
            Known::Unknown(message) => {
                let message = format!(
                    "an earlier run's submission of this line had an unknown outcome ({message}); \
                     it is not resubmitted: check the account, then remove line {} from {JOURNAL} \
                     to submit it again",
                    self.number
                );
                return Some(self.named(Report {
                    error: Some(("outcome_unknown".into(), message, code::TRANSPORT)),
                    ..Report::default()
                }));
            }
            Known::Nothing => {
                self.record(json!({"event": "submitting"}));
                match self.client.submit(&self.request).await {
                    Ok(created) => {
                        self.record(json!({"event": "submitted", "task_id": created.task_id}));
                        created.task_id
                    }
                    Err(error) => {
                        let event = if error.kind() == ErrorKind::OutcomeUnknown {
                            "unknown"
                        } else {
                            "refused"
                        };
                        self.record(json!({"event": event, "message": error.to_string()}));
                        return Some(self.failure(None, &error));
                    }
                }
            }
        };
        let waited = tokio::select! {
            waited = self.client.wait(&task_id) => waited,
            _ = cancelled.wait_for(|c| *c) => return None,
        };
        let result = match waited {
            Ok(task) => self
                .client
                .download_to_dir_as(&task, &self.out, &self.stem)
                .await
                .map(|files| (task, files)),
            Err(error) => Err(error),
        };
        match result {
            Ok((task, files)) => {
                self.record(json!({"event": "done", "task_id": task.task_id, "files": files}));
                Some(self.named(Report::task(&task, files)))
            }
            Err(error) => {
                if error.kind() == ErrorKind::TaskFailed {
                    let message = error.server_message().unwrap_or_default().to_owned();
                    self.record(json!({"event": "failed", "task_id": task_id, "message": message}));
                }
                Some(self.failure(Some(&task_id), &error))
            }
        }
    }

    fn named(&self, mut report: Report) -> Report {
        report.name = Some(self.stem.clone());
        report
    }

    fn failure(&self, task_id: Option<&str>, error: &Error) -> Report {
        let mut report = self.named(Report::failure(task_id, error));
        report.error = Some((
            kind_name(error).into(),
            describe(error, Some(&self.out)),
            exit_code(error),
        ));
        report
    }

    fn record(&self, mut event: Value) {
        event["line"] = json!(self.number);
        event["fingerprint"] = json!(self.fingerprint);
        if let Err(e) = self.journal.append(&event) {
            eprintln!("warning: could not write the journal: {e}");
        }
    }
}

/// The append-only journal: one JSON object per event, each synced to disk before the work it
/// records goes on.
struct Journal {
    file: Mutex<File>,
    known: HashMap<(usize, String), Known>,
}

impl Journal {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut known = HashMap::new();
        if let Ok(file) = File::open(path) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                // A line cut short by a crash is ignored: the event it began was not recorded.
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let (Some(number), Some(fingerprint)) =
                    (event["line"].as_u64(), event["fingerprint"].as_str())
                else {
                    continue;
                };
                let key = (number as usize, fingerprint.to_owned());
                let task_id = event["task_id"].as_str().unwrap_or_default().to_owned();
                let state = match event["event"].as_str() {
                    Some("submitting") => {
                        Known::Unknown("the run stopped during the submission".into())
                    }
                    Some("unknown") => {
                        Known::Unknown(event["message"].as_str().unwrap_or_default().into())
                    }
                    Some("refused") => Known::Nothing,
                    Some("submitted") => Known::Submitted(task_id),
                    Some("done") => Known::Done(
                        task_id,
                        event["files"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|f| f.as_str().map(PathBuf::from))
                            .collect(),
                    ),
                    Some("failed") => Known::Failed(
                        task_id,
                        event["message"].as_str().unwrap_or_default().into(),
                    ),
                    _ => continue,
                };
                known.insert(key, state);
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
            known,
        })
    }

    fn known(&self, number: usize, fingerprint: &str) -> Known {
        self.known
            .get(&(number, fingerprint.to_owned()))
            .cloned()
            .unwrap_or(Known::Nothing)
    }

    fn append(&self, event: &Value) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = event.to_string();
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.sync_data()
    }
}

/// Reads the batch file: each non-blank line a JSON object with the API's fields and an
/// optional `name`. A line that does not parse or validate is kept, with its reason.
fn read_lines(path: &Path) -> Result<Vec<Line>, String> {
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut stems = HashSet::new();
    let mut lines = Vec::new();
    for (index, text) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let text =
            text.map_err(|e| format!("cannot read {} at line {number}: {e}", path.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(&text);
        let prompt = parsed
            .as_ref()
            .map(|(_, r)| r.prompt().to_owned())
            .unwrap_or_default();
        let name = parsed.as_ref().ok().and_then(|(name, _)| name.clone());
        let mut stem = name
            .map(|n| safe_stem(&n))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("line-{number}"));
        if !stems.insert(stem.clone()) {
            stem = format!("{stem}-line-{number}");
            stems.insert(stem.clone());
        }
        lines.push(Line {
            number,
            fingerprint: fingerprint(text.trim()),
            stem,
            prompt,
            request: parsed.map(|(_, request)| request),
        });
    }
    Ok(lines)
}

fn parse_line(text: &str) -> Result<(Option<String>, GenerateRequest), String> {
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let object = value.as_object_mut().ok_or("not a JSON object")?;
    let name = match object.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err("'name' must be a string".into()),
    };
    // Friendly spellings (`landscape`, `1536x1024`, `HIGH`) become the documented ones.
    for (field, normalize) in [
        (
            "size",
            (|s: &str| s.parse::<Size>().map(|v| v.as_str()))
                as fn(&str) -> Result<&'static str, _>,
        ),
        ("quality", |s: &str| {
            s.parse::<Quality>().map(|v| v.as_str())
        }),
        ("input_fidelity", |s: &str| {
            s.parse::<InputFidelity>().map(|v| v.as_str())
        }),
    ] {
        if let Some(Value::String(raw)) = object.get(field) {
            let documented = normalize(raw).map_err(|e| e.to_string())?;
            object.insert(field.to_owned(), Value::from(documented));
        }
    }
    let raw: RawGenerateRequest =
        serde_json::from_value(value).map_err(|e| format!("a field has the wrong type ({e})"))?;
    let request = raw.validate().map_err(|e| e.to_string())?;
    Ok((name, request))
}

fn safe_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect()
}

/// A stable fingerprint of a line's text (FNV-1a), so an edited line is not mistaken for the old.
fn fingerprint(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Writes `index.html`: every result as a picture with its prompt, every failure with its reason.
fn write_index(out: &Path, reports: &BTreeMap<usize, (Report, String)>) -> std::io::Result<()> {
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gptimage batch</title>\n<style>\
         body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}\
         .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}\
         figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}\
         img{width:100%;display:block}figcaption{padding:.5rem;font-size:.9rem}\
         .failed{color:#a00}</style></head><body>\n<h1>gptimage batch</h1>\n<div class=\"grid\">\n",
    );
    let mut failures = String::new();
    for (number, (report, prompt)) in reports {
        match &report.error {
            None => {
                for file in &report.files {
                    let src = file.strip_prefix(out).unwrap_or(file).display().to_string();
                    html.push_str(&format!(
                        "<figure><img src=\"{}\" alt=\"{}\" loading=\"lazy\"><figcaption>line {number}: {}</figcaption></figure>\n",
                        escape(&src),
                        escape(prompt),
                        escape(prompt)
                    ));
                }
            }
            Some((kind, message, _)) => failures.push_str(&format!(
                "<li class=\"failed\">line {number} ({}): {} &mdash; {}</li>\n",
                escape(kind),
                escape(if prompt.is_empty() {
                    "no prompt"
                } else {
                    prompt
                }),
                escape(message)
            )),
        }
    }
    html.push_str("</div>\n");
    if !failures.is_empty() {
        html.push_str(&format!("<h2>Failures</h2>\n<ul>\n{failures}</ul>\n"));
    }
    html.push_str("</body></html>\n");
    let mut file = tempfile::Builder::new()
        .prefix(".index-")
        .tempfile_in(out)?;
    file.write_all(html.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    file.as_file().sync_all()?;
    file.persist(out.join("index.html")).map_err(|e| e.error)?;
    Ok(())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
