//! `gptimage batch` run as a user would, against the emulator over loopback: reports and
//! index.html, and the never-pay-twice promise under faults: a real kill at every step of a
//! line's life, a state that cannot be written, several workers on one SQLite file, and Ctrl-C.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind};
use serde_json::Value;

#[test]
fn a_batch_reports_each_line_and_writes_an_index() {
    let emulator = Emulator::spawn(Config::instant().with_fail_phrase("forbidden")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(
        dir.path(),
        &[
            r#"{"prompt": "a cat", "name": "cat", "size": "landscape"}"#.into(),
            r#"{"prompt": ""}"#.into(),
            r#"{"prompt": "something forbidden"}"#.into(),
            r#"{"prompt": "a dog", "quality": "low"}"#.into(),
        ],
    );
    let out = dir.path().join("out");
    let output = run(against(&emulator)
        .arg("batch")
        .arg(&file)
        .arg("--json")
        .arg("--out")
        .arg(&out));
    assert_eq!(
        output.status.code(),
        Some(1),
        "a line failed: {}",
        stderr(&output)
    );
    let reports: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 4);
    let by_line = |n: u64| reports.iter().find(|r| r["line"] == n).unwrap();
    assert_eq!(by_line(1)["status"], "SUCCESS");
    assert_eq!(
        png_size(Path::new(by_line(1)["files"][0].as_str().unwrap())),
        (1536, 1024)
    );
    assert!(
        by_line(1)["files"][0]
            .as_str()
            .unwrap()
            .ends_with("cat-1.png")
    );
    assert_eq!(by_line(2)["error"]["kind"], "invalid_request");
    assert!(stderr(&output).contains("line 2: 'prompt' is blank"));
    assert_eq!(by_line(3)["error"]["kind"], "task_failed");
    assert_eq!(by_line(4)["status"], "SUCCESS");
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [out.join("index.html"), out.join("cat-1.png")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", file.display());
        }
    }
    assert_eq!(index.matches("<img").count(), 2);
    assert!(index.contains("a cat") && index.contains("Content policy violation detected"));
    assert_eq!(emulator.counters().tasks_created, 3);

    // A rerun sends neither the failed line nor the invalid one again, and still says so.
    let output = run(against(&emulator)
        .arg("batch")
        .arg(&file)
        .arg("--out")
        .arg(&out));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("2 of 4 lines done, 1 failed, 1 invalid"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().generate_requests, 3);
}

#[test]
fn a_killed_batch_resumes_without_submitting_any_line_twice() {
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(1500));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(6, "picture"));
    let out = dir.path().join("out");

    // Start, let a few lines be submitted, then kill the process outright (SIGKILL).
    let running = Running::start(&mut batch(&emulator, &file, &out, &["--concurrency", "3"]));
    wait_until("three lines submitted", || {
        try_batch_status(out.to_str().unwrap()).is_some_and(|s| count(&s, "submitted") >= 3)
    });
    running.kill();
    let before = emulator.counters().tasks_created;
    assert!(
        (3..6).contains(&before),
        "the kill came part way: {before} tasks"
    );

    // Run the same command again: it finishes every line, and submits only the missing ones.
    let output = run(&mut batch(&emulator, &file, &out, &[]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    for i in 0..6 {
        assert_eq!(png_size(&out.join(format!("p{i}-1.png"))), (1024, 1024));
    }
    let counters = emulator.counters();
    assert_eq!(counters.tasks_created, 6, "exactly one task per line");
    assert_eq!(counters.generate_requests, 6);

    // A third run does nothing new.
    let output = run(&mut batch(&emulator, &file, &out, &[]));
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(emulator.counters().tasks_created, 6);
}

/// Whether the emulator shows a worker held at a step (a fault's request has arrived).
type Arrived = fn(&Emulator) -> bool;

/// What a kill at one step of a line's life leaves, once the batch is run again.
struct Step {
    /// The pause point the worker is killed at, or `None` for a kill driven by the server.
    pause: Option<&'static str>,
    /// A fault that holds the worker at the step instead, and the counter that shows it is
    /// there.
    fault: Option<(Fault, Arrived)>,
    /// Whether the killed line's task was created (so it must never be created again).
    created: bool,
    /// Whether the rerun can finish the line by itself (no unknown outcome).
    resumes: bool,
}

#[test]
fn a_kill_at_every_step_of_a_line_never_pays_twice() {
    let steps = [
        // Claimed, read, not yet committed as submitting: nothing was sent.
        Step {
            pause: Some("claimed"),
            fault: None,
            created: false,
            resumes: true,
        },
        // Committed as submitting, the POST not yet sent: unknown to the state.
        Step {
            pause: Some("before-post"),
            fault: None,
            created: false,
            resumes: false,
        },
        // The POST is on the wire: the service made the task, the answer never came back.
        Step {
            pause: None,
            fault: Some((
                Fault::new(FaultKind::Latency(Duration::from_secs(30)))
                    .on(Endpoint::Generate)
                    .times(1),
                |e| e.counters().tasks_created >= 1,
            )),
            created: true,
            resumes: false,
        },
        // Answered, the task id not yet recorded.
        Step {
            pause: Some("after-post"),
            fault: None,
            created: true,
            resumes: false,
        },
        // Recorded as submitted.
        Step {
            pause: Some("submitted"),
            fault: None,
            created: true,
            resumes: true,
        },
        // Finished, about to download.
        Step {
            pause: Some("downloading"),
            fault: None,
            created: true,
            resumes: true,
        },
        // The download is on the wire.
        Step {
            pause: None,
            fault: Some((
                Fault::new(FaultKind::Latency(Duration::from_secs(30)))
                    .on(Endpoint::Files)
                    .times(1),
                |e| e.counters().file_requests >= 1,
            )),
            created: true,
            resumes: true,
        },
    ];
    for step in steps {
        let name = step.pause.unwrap_or(if step.created && step.resumes {
            "download"
        } else {
            "post"
        });
        let mut config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(50));
        if let Some((fault, _)) = &step.fault {
            config = config.with_fault(fault.clone());
        }
        let emulator = Emulator::spawn(config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = write_batch(dir.path(), &numbered_lines(3, name));
        let out = dir.path().join("out");
        let mut command = batch(&emulator, &file, &out, &["--concurrency", "1"]);
        if let Some(point) = step.pause {
            command.env("GPTIMAGE_BATCH_PAUSE_AT", point);
        }
        let mut running = Running::start(&mut command);
        match (&step.pause, &step.fault) {
            (Some(point), _) => running.wait_for(&format!("paused at {point}")),
            (None, Some((_, there))) => wait_until(name, || there(&emulator)),
            (None, None) => unreachable!(),
        }
        running.kill();
        let created = emulator.counters().tasks_created;
        assert_eq!(
            created,
            u64::from(step.created),
            "{name}: tasks when killed"
        );

        let output = run(&mut batch(&emulator, &file, &out, &[]));
        let counters = emulator.counters();
        let status = settled_status(out.to_str().unwrap());
        if step.resumes {
            assert_eq!(output.status.code(), Some(0), "{name}: {}", stderr(&output));
            assert_eq!(counters.tasks_created, 3, "{name}: one task per line");
            assert_eq!(count(&status, "done"), 3, "{name}: {status}");
        } else {
            // The killed line may have made a task: it is reported, never sent again.
            assert_eq!(output.status.code(), Some(4), "{name}: {}", stderr(&output));
            assert!(
                stderr(&output).contains("--resubmit-unknown"),
                "{name}: {}",
                stderr(&output)
            );
            assert_eq!(count(&status, "unknown"), 1, "{name}: {status}");
            assert_eq!(count(&status, "done"), 2, "{name}: {status}");
            assert_eq!(
                counters.tasks_created,
                2 + u64::from(step.created),
                "{name}"
            );
            assert_eq!(
                counters.generate_requests,
                2 + u64::from(step.created),
                "{name}: the unknown line was not sent again"
            );
            // Only the user's explicit word sends it again; its credits were counted until then.
            assert_eq!(status["committed"], 30, "{name}: {status}");
            // They name the outcome they checked by its token, as batch-status gives it.
            let unknown = status["not_done"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["token"].is_string())
                .unwrap_or_else(|| panic!("{name}: no token in {status}"));
            let token = unknown["token"].as_str().unwrap();
            let output = run(&mut batch(
                &emulator,
                &file,
                &out,
                &["--resubmit-unknown", token],
            ));
            assert_eq!(output.status.code(), Some(0), "{name}: {}", stderr(&output));
            let status = batch_status(out.to_str().unwrap());
            assert_eq!(count(&status, "done"), 3);
            assert_eq!(status["committed"], 30, "{name}: counted once: {status}");
        }
        assert_eq!(pngs(&out).len(), 3, "{name}: one picture per line");
    }
}

#[test]
fn a_state_that_cannot_be_written_sends_nothing() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "unrecorded"));
    let out = dir.path().join("out");
    // The process may write no byte to any file: neither a new state nor an existing one.
    let limited = |extra: &[&str]| {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("ulimit -f 0 && exec \"$@\"")
            .arg("sh")
            .arg(batch(&emulator, &file, &out, extra).get_program())
            .args(batch(&emulator, &file, &out, extra).get_args())
            .env("GPTIMAGE_API_KEY", emulator.api_key())
            .env("GPTIMAGE_BASE_URL", emulator.base_url())
            .stdin(Stdio::null());
        run(&mut command)
    };
    let output = limited(&[]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("the batch state sqlite:"), "{text}");
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");

    // A state that exists (a run with one line refused by a bad key) and then cannot grow.
    let mut refused = batch(&emulator, &file, &out, &[]);
    refused.env("GPTIMAGE_API_KEY", "sk-wrong");
    assert_eq!(run(&mut refused).status.code(), Some(3));
    let output = limited(&[]);
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("the batch state sqlite:"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().tasks_created, 0, "nothing was paid for");
}

#[test]
fn several_workers_on_one_sqlite_file_submit_each_line_once() {
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(300));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(12, "shared"));
    // Two identical commands on one folder (and so one state), then three workers with a
    // folder each sharing a state named with --state.
    let shared = dir.path().join("same-out");
    let separate = format!("sqlite:{}", dir.path().join("state.sqlite").display());
    for (workers, state) in [(2usize, None), (3, Some(separate.as_str()))] {
        let out = |w: usize| match state {
            None => shared.clone(),
            Some(_) => dir.path().join(format!("out-{w}")),
        };
        let before = emulator.counters().tasks_created;
        let children: Vec<Child> = (0..workers)
            .map(|w| {
                let mut command = batch(&emulator, &file, &out(w), &["--concurrency", "3"]);
                if let Some(state) = state {
                    command.args(["--state", state]);
                }
                command
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        }
        assert_eq!(
            emulator.counters().tasks_created - before,
            12,
            "{workers} workers: one task per line"
        );
        let pictures: usize = match state {
            None => pngs(&shared).len(),
            Some(_) => (0..workers).map(|w| pngs(&out(w)).len()).sum(),
        };
        assert_eq!(
            pictures, 12,
            "{workers} workers: every picture on disk somewhere"
        );
        let status = batch_status(state.unwrap_or(shared.to_str().unwrap()));
        assert_eq!(count(&status, "done"), 12, "{status}");
    }
}

#[test]
fn another_file_on_the_same_state_is_refused() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = write_batch(dir.path(), &numbered_lines(1, "first"));
    assert_eq!(
        run(&mut batch(&emulator, &first, &out, &[])).status.code(),
        Some(0)
    );
    let second = dir.path().join("second.jsonl");
    std::fs::write(&second, r#"{"prompt": "second"}"#).unwrap();
    let output = run(&mut batch(&emulator, &second, &out, &[]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("belongs to another batch file"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().generate_requests, 1);

    // Looking needs a state that exists; a bad URL is a usage error.
    let output = run(gptimage().args(["batch-status", "--out"]).arg(dir.path()));
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("there is no batch state"),
        "{}",
        stderr(&output)
    );
    let output = run(gptimage().args(["batch-status", "--state", "mysql://x/y"]));
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn ctrl_c_stops_a_batch_with_130_and_it_resumes() {
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_secs(2));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(3, "slow"));
    let out = dir.path().join("out");
    let mut running = Running::start(&mut batch(&emulator, &file, &out, &[]));
    wait_until("three lines submitted", || {
        try_batch_status(out.to_str().unwrap()).is_some_and(|s| count(&s, "submitted") >= 3)
    });
    let interrupted = Command::new("kill")
        .args(["-INT", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    running.wait_for("run the same command again");
    let status = running.child.wait().unwrap();
    assert_eq!(status.code(), Some(130));

    let output = run(&mut batch(&emulator, &file, &out, &[]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 3);
}

#[test]
fn a_batch_with_listen_ends_each_wait_on_its_callback() {
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(500));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(4, "called back"));
    let out = dir.path().join("out");
    let listen = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let mut command = batch(&emulator, &file, &out, &["--listen", &listen]);
    command.args(["--poll-interval", "20"]);
    let output = run(&mut command);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Counted once the emulator reads the receiver's answer, which may follow the wait's end.
    wait_until("four deliveries counted", || {
        emulator.counters().webhooks_delivered == 4
    });
    let counters = emulator.counters();
    assert!(
        counters.status_requests <= 12,
        "{} status requests",
        counters.status_requests
    );
    assert_eq!(pngs(&out).len(), 4);
}

#[test]
fn a_batch_line_whose_answer_was_lost_is_settled_by_its_callback() {
    // Two answers lost (the tasks made, the connections dropped): with --listen, each line's
    // callback names its task, a status request confirms it, and the line is done. Nothing is
    // resent, and nothing is left for the user to check.
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_millis(300))
        .with_fault(
            Fault::new(FaultKind::DropConnection)
                .on(Endpoint::Generate)
                .times(2),
        );
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(4, "lost and found"));
    let out = dir.path().join("out");
    let listen = format!("127.0.0.1:{}", free_port());
    let output = run(&mut batch(&emulator, &file, &out, &["--listen", &listen]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let counters = emulator.counters();
    assert_eq!(counters.generate_requests, 4, "never resent");
    assert_eq!(counters.tasks_created, 4);
    assert!(
        counters.tasks_created_by_prompt.values().all(|n| *n == 1),
        "{:?}",
        counters.tasks_created_by_prompt
    );
    let status = batch_status(out.to_str().unwrap());
    assert_eq!(count(&status, "done"), 4, "{status}");
    assert_eq!(count(&status, "unknown"), 0, "{status}");
    assert_eq!(pngs(&out).len(), 4);
}

#[test]
fn max_credits_submits_exactly_what_the_budget_allows_across_reruns() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(5, "budgeted"));
    let out = dir.path().join("out");
    let output = run(&mut batch(&emulator, &file, &out, &["--max-credits", "25"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("3 line(s) not submitted"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        emulator.counters().tasks_created,
        2,
        "25 credits buy two tasks"
    );
    let output = run(&mut batch(&emulator, &file, &out, &["--max-credits", "40"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        emulator.counters().tasks_created,
        4,
        "earlier runs' spending counts"
    );
    let output = run(&mut batch(&emulator, &file, &out, &["--max-credits", "50"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("50 credits spent"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().tasks_created, 5);
    let status = batch_status(out.to_str().unwrap());
    assert_eq!(
        (status["credits"].as_u64(), status["committed"].as_u64()),
        (Some(50), Some(50))
    );
}

#[test]
fn dry_run_sends_nothing_and_states_the_cost() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(4, "planned"));
    let out = dir.path().join("out");
    // No key needed, nothing sent, no state created.
    let output = run(gptimage()
        .arg("batch")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .args(["--dry-run", "--json"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let plan = json(&output);
    assert_eq!(
        (plan["would_submit"].as_u64(), plan["credits"].as_u64()),
        (Some(4), Some(40))
    );
    assert!(!out.join("gptimage-batch.sqlite").exists());
    // After two lines were submitted, only the rest would be.
    let output = run(&mut batch(&emulator, &file, &out, &["--max-credits", "20"]));
    assert_eq!(output.status.code(), Some(1));
    let output = run(&mut batch(&emulator, &file, &out, &["--dry-run"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("2 of 4 lines would be submitted, costing 20 credits (2 already submitted"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        emulator.counters().generate_requests,
        2,
        "the dry runs sent nothing"
    );
    // An invalid line is named, and exits 2.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"fine\"}\n{\"prompt\": \"\"}\n").unwrap();
    let output = run(gptimage()
        .arg("batch")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("bad"))
        .arg("--dry-run"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("line 2: 'prompt' is blank"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bare_429s_never_fail_a_batch_line() {
    // 4 new tasks per 2 s, refused with bare 429s: the batch's starting rate (2 a second) is the
    // limit, and the pacer learns the rest.
    let config = Config::instant().with_bare_rate_limit(4, Duration::from_secs(2));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(16, "paced"));
    let out = dir.path().join("out");
    let output = run(&mut batch(
        &emulator,
        &file,
        &out,
        &["--concurrency", "8", "--json"],
    ));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let counters = emulator.counters();
    assert_eq!(counters.tasks_created, 16, "every line done, once");
    let refused = counters.generate_requests - counters.tasks_created;
    assert!(
        refused <= 8,
        "{refused} answers of 429 for 16 lines: the pacer did not learn"
    );
    assert_eq!(count(&batch_status(out.to_str().unwrap()), "done"), 16);
}
