//! A batch always ends by itself, and only the user's word resends a line: `gptimage batch` run
//! as a user would, against an emulator that answers 404 for a task for ever, 403 for its
//! images, 401 or 402 for the account, against an output folder that cannot be written, and
//! with `--resubmit-unknown` repeated as a supervisor would repeat it.

mod common;

use std::borrow::BorrowMut;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind, KeyConfig};
use tempfile::TempDir;

/// Runs `command`, which must end by itself within `limit`: a run that does not is killed and
/// the test fails (today's endless loops end here).
fn run_within(limit: Duration, mut command: impl BorrowMut<Command>) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .borrow_mut()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    while child
        .try_wait()
        .expect("the child can be waited for")
        .is_none()
    {
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the batch did not end by itself within {limit:?}: {}",
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (output, started.elapsed())
}

/// An emulator as `config` says, and a batch file of `lines` numbered lines of `word` in a
/// folder of its own: the emulator, the file, the output folder, and the folder (kept alive).
fn scene(config: Config, lines: usize, word: &str) -> (Emulator, PathBuf, PathBuf, TempDir) {
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(lines, word));
    let out = dir.path().join("out");
    (emulator, file, out, dir)
}

/// The one line the status lists as not done (settled, if its outcome is unknown).
fn only_line(out: &Path) -> serde_json::Value {
    let status = settled_status(out.to_str().unwrap());
    let lines = status["not_done"].as_array().unwrap().clone();
    assert_eq!(lines.len(), 1, "{status}");
    lines[0].clone()
}

#[test]
fn a_task_the_service_no_longer_knows_is_held_not_hammered() {
    // Task ids expire: every status request answers 404, for ever.
    let config =
        Config::instant().with_fault(Fault::new(FaultKind::Refuse(404)).on(Endpoint::Status));
    let (emulator, file, out, _dir) = scene(config, 1, "forgotten");
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--timeout", "20"]),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "the service refused: {text}");
    assert!(text.contains("does not know task"), "{text}");
    assert!(
        text.contains("run again with the key that made it"),
        "{text}"
    );
    let counters = emulator.counters();
    assert_eq!(counters.tasks_created, 1);
    assert!(
        counters.status_requests <= 3,
        "{} status requests for one task the service does not know",
        counters.status_requests
    );
    // It stays submitted with its task id and reason, held for a later run, never resent.
    let line = only_line(&out);
    assert_eq!(line["status"], "IN_PROGRESS", "{line}");
    assert_eq!(line["held"], true, "{line}");
    assert!(line["task_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(line["error"]["kind"], "task_unknown");
    // A later run asks once more (the right key may be back), and ends again.
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--timeout", "20"]),
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 1, "never resubmitted");
    assert!(emulator.counters().status_requests <= 6);
}

#[test]
fn a_wait_that_keeps_failing_backs_off_and_ends_within_the_timeout() {
    // Every status request fails with a 500: the line is retried, backing off, and held once
    // it has failed for a whole wait timeout.
    let config =
        Config::instant().with_fault(Fault::new(FaultKind::ServerError).on(Endpoint::Status));
    let (emulator, file, out, _dir) = scene(config, 1, "unreachable");
    let (output, took) = run_within(
        Duration::from_secs(40),
        batch(
            &emulator,
            &file,
            &out,
            &["--timeout", "4", "--poll-interval", "0.2"],
        ),
    );
    let text = stderr(&output);
    // Held once its wait timeout ran out: the deadline's exit code, with how to resume.
    assert_eq!(output.status.code(), Some(5), "{text}");
    assert!(
        text.contains("tried again in 400.0ms"),
        "backing off: {text}"
    );
    assert!(text.contains("run the same command again later"), "{text}");
    // One wait timeout in all, whatever fails.
    assert!(took < Duration::from_secs(7), "took {took:?}");
    let line = only_line(&out);
    assert_eq!(line["held"], true, "{line}");
    assert_eq!(emulator.counters().tasks_created, 1);
    // Polls at 0.2 s for one timeout of 4 s, each retried twice by the SDK: about 60 at
    // most; a line re-claimed at once would send thousands.
    let polls = emulator.counters().status_requests;
    assert!(polls < 150, "{polls} status requests");
}

#[test]
fn a_line_that_fails_late_in_its_wait_gets_no_second_timeout() {
    // Statuses answer for about two seconds (polls every 0.2 s), then fail for ever: the line
    // is held when its one wait timeout since the run began waiting for it ends, not a whole
    // timeout after its first failure.
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_secs(60))
        .with_fault(
            Fault::new(FaultKind::ServerError)
                .on(Endpoint::Status)
                .after(10),
        );
    let (emulator, file, out, _dir) = scene(config, 1, "late");
    let (output, took) = run_within(
        Duration::from_secs(40),
        batch(
            &emulator,
            &file,
            &out,
            &["--timeout", "6", "--poll-interval", "0.2"],
        ),
    );
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        took < Duration::from_secs(8),
        "the run took {took:?} with --timeout 6: {}",
        stderr(&output)
    );
    assert_eq!(only_line(&out)["held"], true);
}

#[test]
fn an_expired_image_url_is_asked_for_again_once() {
    // The first download is refused as an expired signed URL; a fresh status gives it again.
    let config = Config::instant().with_fault(
        Fault::new(FaultKind::Refuse(403))
            .on(Endpoint::Files)
            .times(1),
    );
    let (emulator, file, out, _dir) = scene(config, 1, "resigned");
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(png_size(&out.join("p0-1.png")), (1024, 1024));
    assert_eq!(emulator.counters().file_requests, 2);
}

#[test]
fn image_urls_refused_for_good_hold_the_line_for_a_later_run() {
    // Refused twice (the URL, then the fresh one): held with its task id; the next run gets it.
    let config = Config::instant().with_fault(
        Fault::new(FaultKind::Refuse(410))
            .on(Endpoint::Files)
            .times(2),
    );
    let (emulator, file, out, _dir) = scene(config, 1, "revoked");
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    assert!(
        text.contains("refused task") && text.contains("gptimage wait"),
        "{text}"
    );
    assert_eq!(
        emulator.counters().file_requests,
        2,
        "one fresh try, no loop"
    );
    let line = only_line(&out);
    assert_eq!(line["held"], true, "{line}");
    assert_eq!(line["error"]["kind"], "download");
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(png_size(&out.join("p0-1.png")), (1024, 1024));
    assert_eq!(emulator.counters().tasks_created, 1, "never resubmitted");
}

#[test]
fn a_refused_key_stops_the_worker_at_once() {
    let (emulator, file, out, _dir) = scene(Config::instant(), 40, "unpaid");
    let mut command = batch(&emulator, &file, &out, &["--concurrency", "2"]);
    command.env("GPTIMAGE_API_KEY", "sk-wrong");
    let (output, _) = run_within(Duration::from_secs(30), &mut command);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(text.contains("the service refused the account"), "{text}");
    let requests = emulator.counters().generate_requests;
    assert!(
        requests <= 2,
        "{requests} submissions: the worker walked the file instead of stopping"
    );
    // Nothing was lost: a run with the right key does every line once.
    let (output, _) = run_within(
        Duration::from_secs(60),
        &mut batch(
            &emulator,
            &file,
            &out,
            &["--concurrency", "8", "--rate", "100/1"],
        ),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 40);
}

#[test]
fn an_empty_account_stops_the_worker_and_keeps_its_waits() {
    // 30 credits: three tasks, then 402 for every submission.
    let config = Config::instant()
        .with_keys([KeyConfig::new("poor", "sk-poor", 30)])
        .with_timings(Duration::ZERO, Duration::from_millis(200));
    let (emulator, file, out, _dir) = scene(config, 20, "broke");
    let mut command = batch(&emulator, &file, &out, &["--concurrency", "1"]);
    command.env("GPTIMAGE_API_KEY", "sk-poor");
    let (output, _) = run_within(Duration::from_secs(30), &mut command);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(text.contains("out of credits"), "{text}");
    let counters = emulator.counters();
    assert_eq!(counters.tasks_created, 3);
    assert_eq!(
        counters.generate_requests, 4,
        "one refusal, then the worker stopped"
    );
    let status = batch_status(out.to_str().unwrap());
    assert_eq!(count(&status, "done"), 3, "{status}");
    assert_eq!(count(&status, "refused"), 1, "{status}");
}

#[test]
fn a_refused_key_while_waiting_lets_every_line_go() {
    // Submissions pass; every status request answers 401 (the key was revoked mid-batch).
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_millis(100))
        .with_fault(Fault::new(FaultKind::Refuse(401)).on(Endpoint::Status));
    let (emulator, file, out, _dir) = scene(config, 10, "revoked");
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--concurrency", "2"]),
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let counters = emulator.counters();
    assert!(counters.tasks_created <= 2, "{counters:?}");
    let status = batch_status(out.to_str().unwrap());
    assert_eq!(
        count(&status, "submitted"),
        counters.tasks_created,
        "{status}"
    );
    assert_eq!(
        status["held"], 0,
        "let go, not held: the line is not at fault"
    );
}

#[test]
fn an_output_folder_that_cannot_be_written_stops_the_run_and_a_rerun_downloads() {
    let (emulator, file, out, dir) = scene(Config::instant(), 3, "blocked");
    let state = format!("sqlite:{}", dir.path().join("state.sqlite").display());
    // The image's name is taken by a folder: no write there can succeed, root or not.
    std::fs::create_dir_all(out.join("p0-1.png")).unwrap();
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(
            &emulator,
            &file,
            &out,
            &["--state", &state, "--concurrency", "1"],
        ),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    assert!(
        text.contains(&format!("the output {} cannot be written", out.display())),
        "{text}"
    );
    assert_eq!(
        emulator.counters().tasks_created,
        1,
        "nothing more was sent"
    );
    let status = batch_status(&state);
    assert_eq!(count(&status, "submitted"), 1, "{status}");
    std::fs::remove_dir(out.join("p0-1.png")).unwrap();
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--state", &state]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(png_size(&out.join("p0-1.png")), (1024, 1024));
    assert_eq!(emulator.counters().tasks_created, 3, "each line once");
}

#[test]
fn a_full_output_disk_stops_the_run_and_a_rerun_downloads() {
    let Some(disk) = TinyDisk::mount() else {
        // Mounting needs root (CI runs as root); the folder test above covers the same path.
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(4, "crowded"));
    let state = format!("sqlite:{}", dir.path().join("state.sqlite").display());
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(
            &emulator,
            &file,
            &disk.path,
            &["--state", &state, "--concurrency", "1"],
        ),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(4), "{text}");
    assert!(text.contains("cannot be written"), "{text}");
    let sent = emulator.counters().tasks_created;
    assert!(
        sent < 4,
        "the run went on after the disk was full: {sent} tasks"
    );
    // No half-written image is left under its final name.
    for png in pngs(&disk.path) {
        assert!(image::open(&png).is_ok(), "{} is whole", png.display());
    }
    let status = batch_status(&state);
    assert_eq!(count(&status, "submitted"), 1, "{status}");
    assert_eq!(count(&status, "done") + 1, sent, "{status}");
}

/// A 12 KiB tmpfs (smaller than any picture), unmounted when dropped; `None` where this process may not mount.
struct TinyDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=12k", "tmpfs"])
            .arg(&path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(TinyDisk { path, _dir: dir })
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn resubmit_unknown_resends_only_the_outcomes_the_user_named() {
    // The first two submissions are processed but their answers lost: unknown outcomes.
    let config = Config::instant().with_fault(
        Fault::new(FaultKind::DropConnection)
            .on(Endpoint::Generate)
            .times(2),
    );
    let (emulator, file, out, _dir) = scene(config, 1, "uncertain");
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--resubmit-unknown TOKEN"),
        "{}",
        stderr(&output)
    );
    // Until what was sent can no longer arrive, the outcome is not settled: no token yet, and
    // the status says when.
    let early = batch_status(out.to_str().unwrap());
    let line = &early["not_done"][0];
    assert!(
        line["token"].is_null() && line["settles_in_secs"].as_u64().is_some_and(|s| s <= 10),
        "{early}"
    );
    let text = run(gptimage().args(["batch-status", "--out"]).arg(&out));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("not yet settled"), "{text}");
    let line = only_line(&out);
    // Tokens name their state (six hex digits), then the line and its submission.
    let first = line["token"].as_str().unwrap().to_owned();
    let state = first
        .strip_suffix(".1.1")
        .expect("line 1, first submission");
    assert!(
        state.len() == 6 && state.bytes().all(|b| b.is_ascii_hexdigit()),
        "{first}"
    );
    let second = format!("{state}.1.2");
    // The status for people lists the token to name.
    let status = run(gptimage().args(["batch-status", "--out"]).arg(&out));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&format!("tokens: {first}")), "{text}");
    // The user checked that outcome and names it: sent again, and lost again (a new token).
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--resubmit-unknown", &first]),
    );
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 2);
    assert_eq!(only_line(&out)["token"], second.as_str());
    // A supervisor repeats the same command: the new outcome was checked by nobody, so nothing.
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--resubmit-unknown", &first]),
    );
    assert!(
        stderr(&output).contains(&format!("token {first} names no line of unknown outcome")),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().tasks_created, 2, "never resent blindly");
    // An older token without its state, and a token of another state, are refused by name.
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--resubmit-unknown", "1.2"]),
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let foreign = format!(
        "{}.1.2",
        if state == "ffffff" {
            "eeeeee"
        } else {
            "ffffff"
        }
    );
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--resubmit-unknown", &foreign]),
    );
    assert!(
        stderr(&output).contains(&format!(
            "the token {foreign} belongs to another batch state"
        )),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().tasks_created, 2, "nothing resent");
    // Naming the new outcome sends it.
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--resubmit-unknown", &second]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 3);
    // A bad token is a usage error.
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--resubmit-unknown", "one"]),
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[test]
fn a_token_kept_from_a_recreated_state_resends_nothing() {
    // A supervisor keeps `--resubmit-unknown TOKEN` in its command; the output folder (and the
    // state in it) is recreated, and line 1 of the new state is unknown too.
    let config = Config::instant().with_fault(
        Fault::new(FaultKind::DropConnection)
            .on(Endpoint::Generate)
            .times(2),
    );
    let (emulator, file, out, _dir) = scene(config, 1, "recreated");
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let kept = only_line(&out)["token"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(&out).unwrap();
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 2);
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--resubmit-unknown", &kept]),
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("belongs to another batch state"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        emulator.counters().tasks_created,
        2,
        "the line nobody checked stays unsent"
    );
}

#[test]
fn the_budget_belongs_to_the_batch_not_to_the_run() {
    let (emulator, file, out, _dir) = scene(Config::instant(), 5, "budgeted");
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--max-credits", "20"]),
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("budget is now 20 credits (it was none)"));
    assert_eq!(emulator.counters().tasks_created, 2);
    // A second worker without the flag obeys the stored budget.
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        emulator.counters().tasks_created,
        2,
        "the stored budget holds"
    );
    assert_eq!(batch_status(out.to_str().unwrap())["budget"], 20);
    // A run that changes it says so.
    let (output, _) = run_within(
        Duration::from_secs(30),
        batch(&emulator, &file, &out, &["--max-credits", "50"]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("budget is now 50 credits (it was 20 credits)"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().tasks_created, 5);
}

#[test]
fn names_differing_only_in_case_never_share_a_file() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(
        dir.path(),
        &[
            r#"{"prompt": "a cat", "name": "Cat", "quality": "low"}"#.into(),
            r#"{"prompt": "a cat again", "name": "cat", "quality": "low"}"#.into(),
        ],
    );
    let out = dir.path().join("out");
    let (output, _) = run_within(
        Duration::from_secs(30),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let mut names: Vec<String> = pngs(&out)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_lowercase())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        2,
        "{names:?}: two files even on a case-insensitive disk"
    );
}

#[test]
fn a_service_that_answers_429_for_ever_ends_the_run_not_loops_in_it() {
    // Every submission is refused with a 429: no task is ever made, so each goes back to
    // pending; six in a row and the line is refused for this run (exit 3), spaced for later.
    let config = Config::instant().with_fault(
        Fault::new(FaultKind::RateLimited {
            retry_after_secs: 1,
        })
        .on(Endpoint::Generate),
    );
    let (emulator, file, out, _dir) = scene(config, 1, "throttled");
    let (output, took) = run_within(
        Duration::from_secs(120),
        &mut batch(&emulator, &file, &out, &[]),
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let counters = emulator.counters();
    assert_eq!(counters.tasks_created, 0);
    assert_eq!(
        counters.generate_requests, 6,
        "six 429s in a row, then the run ended ({took:?})"
    );
    let line = only_line(&out);
    assert_eq!(line["state"], "refused", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("6 times in a row")),
        "{line}"
    );
}
