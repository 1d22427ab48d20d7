//! A POST leaves only while its worker still owns its line, whatever happens to the worker and
//! whatever the user does after `batch-status` reports a line: real PostgreSQL clusters (a
//! standby among them) started by the tests, real worker processes, and the emulator counting
//! the tasks made for each prompt. The user is played as the README advises: a line reported of
//! unknown outcome is checked against the account (the emulator's tasks for its prompt) and
//! resent by its token only if no task was made for it.

mod common;
#[path = "../../batch/tests/support/postgres.rs"]
#[allow(unreachable_pub, dead_code)]
mod postgres;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind};
use serde_json::Value;

/// A batch worker on `state`, its requests timing out after 3 s (so `S`, the send window and
/// twice the request timeout, is 8 s, and a submission's lock-delay 9.8 s).
fn worker(
    emulator: &Emulator,
    file: &std::path::Path,
    out: &std::path::Path,
    state: &str,
    extra: &[&str],
) -> Command {
    let mut command = against(emulator);
    command
        .args(["--request-timeout", "3", "batch"])
        .arg(file)
        .arg("--out")
        .arg(out)
        .args(["--state", state])
        .args(extra);
    command
}

/// The user's part, as the README advises: every line `batch-status` reports of unknown outcome
/// is checked against the account (the tasks made for its prompt), and resent by its token only
/// if the account holds none. Returns the tokens resent.
fn check_and_resend(
    emulator: &Emulator,
    file: &std::path::Path,
    out: &std::path::Path,
    state: &str,
) -> Vec<String> {
    let status = settled_status(state);
    let mut tokens = Vec::new();
    for line in status["not_done"].as_array().into_iter().flatten() {
        let (Some(token), Some(prompt)) = (line["token"].as_str(), line["prompt"].as_str()) else {
            continue;
        };
        let made = emulator
            .counters()
            .tasks_created_by_prompt
            .get(prompt)
            .copied()
            .unwrap_or(0);
        if made == 0 {
            tokens.push(token.to_owned());
        }
    }
    if !tokens.is_empty() {
        let output = run(&mut worker(
            emulator,
            file,
            out,
            state,
            &["--resubmit-unknown", &tokens.join(",")],
        ));
        assert!(
            matches!(output.status.code(), Some(0 | 4)),
            "{}",
            stderr(&output)
        );
    }
    tokens
}

/// Every prompt of the batch paid for at most once: counted per prompt, not in total.
fn at_most_one_task_per_prompt(emulator: &Emulator, what: &str) {
    let counters = emulator.counters();
    let twice: Vec<_> = counters
        .tasks_created_by_prompt
        .iter()
        .filter(|(_, n)| **n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{what}: prompts paid for twice: {twice:?}"
    );
}

/// Ends every session of `database` but the caller's, as the server does to a client it cannot
/// hear from (or an operator's kill).
fn end_sessions(cluster: &postgres::Postgres, database: &str) {
    cluster.sql(
        database,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' \
             AND pid <> pg_backend_pid()"
        ),
    );
}

/// Waits (at most `limit`) until `done` holds; whether it did.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_429_and_then_a_count_out_never_send_a_line_behind_the_users_back() {
    // The scenario: worker A's first POST is answered 429 (Retry-After 8), then A's
    // sessions end; another worker counts A out, and the user resends what is reported unknown
    // and not in the account. Before, A retried its POST 8 s later, under its old commit.
    let cluster = postgres::Postgres::start();
    let state = cluster.create_database("fence429");
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_millis(300))
        .with_fault(
            Fault::new(FaultKind::RateLimited {
                retry_after_secs: 8,
            })
            .on(Endpoint::Generate)
            .times(1),
        );
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "refused first"));
    let a = Running::start(&mut worker(
        &emulator,
        &file,
        &dir.path().join("a"),
        &state,
        &["--concurrency", "1"],
    ));
    assert!(
        within(Duration::from_secs(20), || emulator
            .counters()
            .generate_requests
            >= 1),
        "A never sent"
    );
    end_sessions(&cluster, "fence429");
    let (code, text) = a.wait(Duration::from_secs(30));
    assert!(code.is_some(), "A ended by itself: {text}");
    let sent_by_a = emulator.counters().generate_requests;
    // Another worker, and the user, finish the batch.
    let b = run(&mut worker(
        &emulator,
        &file,
        &dir.path().join("b"),
        &state,
        &[],
    ));
    assert!(matches!(b.status.code(), Some(0 | 4)), "{}", stderr(&b));
    check_and_resend(&emulator, &file, &dir.path().join("b"), &state);
    // Long enough for any retry A could have had in mind (Retry-After 8 s).
    std::thread::sleep(Duration::from_secs(9));
    at_most_one_task_per_prompt(&emulator, "429 then a count-out");
    let counters = emulator.counters();
    assert_eq!(counters.tasks_created, 2, "{counters:?}");
    assert!(sent_by_a <= 2, "A sent {sent_by_a} times");
    let status = batch_status(&state);
    assert_eq!(count(&status, "done"), 2, "{status}");
}

#[test]
fn a_count_out_during_a_pacer_wait_sends_nothing_after_it() {
    // A's rate allows one task a minute: its second line waits for a turn, then A's sessions
    // end. A must send nothing more; B sends the second line, once.
    let cluster = postgres::Postgres::start();
    let state = cluster.create_database("fencepacer");
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(200));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "paced"));
    let a = Running::start(&mut worker(
        &emulator,
        &file,
        &dir.path().join("a"),
        &state,
        &["--concurrency", "2", "--rate", "1/60"],
    ));
    assert!(within(Duration::from_secs(20), || {
        emulator.counters().generate_requests >= 1
    }));
    std::thread::sleep(Duration::from_millis(500));
    end_sessions(&cluster, "fencepacer");
    let (code, text) = a.wait(Duration::from_secs(30));
    assert!(code.is_some(), "A ended by itself: {text}");
    assert_eq!(
        emulator.counters().generate_requests,
        1,
        "A's waiting line was never sent"
    );
    let b = run(&mut worker(
        &emulator,
        &file,
        &dir.path().join("b"),
        &state,
        &[],
    ));
    assert!(matches!(b.status.code(), Some(0 | 4)), "{}", stderr(&b));
    check_and_resend(&emulator, &file, &dir.path().join("b"), &state);
    at_most_one_task_per_prompt(&emulator, "a count-out in a pacer wait");
    assert_eq!(emulator.counters().tasks_created, 2);
}

#[test]
fn ctrl_c_during_a_slow_post_drains_within_its_bound_and_sends_nothing_after() {
    let cluster = postgres::Postgres::start();
    let state = cluster.create_database("fencestop");
    // Every POST is answered 2 s late (the task is made at once).
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_millis(200))
        .with_fault(Fault::new(FaultKind::Latency(Duration::from_secs(2))).on(Endpoint::Generate));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(6, "stopped"));
    let a = Running::start(&mut worker(
        &emulator,
        &file,
        &dir.path().join("a"),
        &state,
        &["--concurrency", "2", "--rate", "1/1"],
    ));
    assert!(within(Duration::from_secs(20), || {
        emulator.counters().generate_requests >= 1
    }));
    let stopped = Instant::now();
    a.signal("INT");
    let (code, text) = a.wait(Duration::from_secs(30));
    let took = stopped.elapsed();
    assert_eq!(code, Some(130), "{text}");
    // The drain: the send window (2 s), the request timeout (3 s) and a margin (2 s).
    assert!(took < Duration::from_secs(8), "the drain took {took:?}");
    let after_exit = emulator.counters().generate_requests;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        emulator.counters().generate_requests,
        after_exit,
        "nothing after the exit"
    );
    // A rerun finishes; nothing is paid for twice.
    let b = run(&mut worker(
        &emulator,
        &file,
        &dir.path().join("b"),
        &state,
        &[],
    ));
    assert!(matches!(b.status.code(), Some(0 | 4)), "{}", stderr(&b));
    check_and_resend(&emulator, &file, &dir.path().join("b"), &state);
    at_most_one_task_per_prompt(&emulator, "Ctrl-C during a slow POST");
}

#[test]
fn a_state_with_asynchronous_standbys_only_is_refused_up_front() {
    let primary = postgres::Postgres::start();
    let state = primary.create_database("asyncfailover");
    let _standby = primary.standby("standby1");
    assert!(within(Duration::from_secs(20), || {
        primary.query("postgres", "SELECT COUNT(*) FROM pg_stat_replication") == "1"
    }));
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "async"));
    let output = run(&mut worker(
        &emulator,
        &file,
        &dir.path().join("a"),
        &state,
        &[],
    ));
    exits_saying(&output, 2, "all asynchronous");
    assert!(
        stderr(&output).contains("--accept-async-replicas"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");
    // Accepting the risk in so many words runs the batch.
    let output = run(&mut worker(
        &emulator,
        &file,
        &dir.path().join("a"),
        &state,
        &["--accept-async-replicas"],
    ));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn a_failover_to_a_synchronous_standby_pays_no_line_twice() {
    let primary = postgres::Postgres::start();
    let state = primary.create_database("failover");
    let standby = primary.standby("standby1");
    primary.synchronous("standby1");
    assert!(within(Duration::from_secs(20), || {
        primary.query(
            "postgres",
            "SELECT COUNT(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        ) == "1"
    }));
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(200));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(3, "failover"));
    // A sends its first line and is stopped before it records the answer; the primary
    // crashes; the standby is promoted.
    let mut paused = worker(
        &emulator,
        &file,
        &dir.path().join("a"),
        &state,
        &["--concurrency", "1"],
    );
    paused.env("GPTIMAGE_BATCH_PAUSE_AT", "after-post");
    let mut a = Running::start(&mut paused);
    a.wait_for("paused at after-post");
    assert_eq!(emulator.counters().tasks_created, 1);
    primary.stop_immediately();
    standby.promote();
    a.kill();
    // B, on the new primary, finds the line recorded as being sent: never sent again.
    let promoted = standby.url("failover");
    let b = run(&mut worker(
        &emulator,
        &file,
        &dir.path().join("b"),
        &promoted,
        &[],
    ));
    assert_eq!(b.status.code(), Some(4), "{}", stderr(&b));
    let status = batch_status(&promoted);
    assert_eq!(count(&status, "unknown"), 1, "{status}");
    assert_eq!(count(&status, "done"), 2, "{status}");
    check_and_resend(&emulator, &file, &dir.path().join("b"), &promoted);
    at_most_one_task_per_prompt(&emulator, "a failover");
    assert_eq!(emulator.counters().tasks_created, 3);
}

#[test]
fn twenty_restarts_of_a_failing_run_make_requests_at_the_earned_spacing() {
    // One line's task is unknown to the service for ever (404: held), another is refused for
    // ever (400: refused); a supervisor restarts the run twenty times in a row.
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_millis(100))
        .with_fault(Fault::new(FaultKind::Refuse(404)).on(Endpoint::Status))
        .with_fault(
            Fault::new(FaultKind::Refuse(400))
                .on(Endpoint::Generate)
                .after(1),
        );
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "supervised"));
    let out = dir.path().join("out");
    let mut codes = Vec::new();
    for _ in 0..20 {
        let output = run(&mut batch(&emulator, &file, &out, &["--concurrency", "1"]));
        codes.push(output.status.code());
    }
    let counters = emulator.counters();
    eprintln!(
        "20 restarts: {} POSTs, {} status requests; exit codes {codes:?}",
        counters.generate_requests, counters.status_requests
    );
    assert!(codes.iter().all(|c| *c == Some(3)), "{codes:?}");
    // The first run, then the first restart (held and refused lines are retried at once the
    // first time), then nothing for 30 s: not twenty rounds.
    assert!(counters.generate_requests <= 3, "{counters:?}");
    assert!(counters.status_requests <= 6, "{counters:?}");
    let status = batch_status(out.to_str().unwrap());
    assert_eq!(
        count(&status, "refused") + count(&status, "submitted"),
        2,
        "{status}"
    );
}

/// The `faketime` program (Debian's `faketime`), which `.ci/run` installs.
fn faketime() -> std::path::PathBuf {
    ["/usr/bin/faketime", "/usr/local/bin/faketime"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("faketime is needed: install Debian's `faketime` package (.ci/run does)")
}

#[test]
fn a_worker_whose_clock_is_an_hour_ahead_does_not_keep_the_others_waiting() {
    // A's clock is an hour ahead; its wait for a line fails, the line is set back, and A is
    // killed. Before, the setback was an instant on A's clock, and B polled for an hour; now
    // every time is the database's.
    let cluster = postgres::Postgres::start();
    let state = cluster.create_database("clocks");
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_millis(200))
        .with_fault(
            Fault::new(FaultKind::ServerError)
                .on(Endpoint::Status)
                .times(3),
        );
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(1, "clocks"));
    let mut ahead = Command::new(faketime());
    ahead
        .args(["-f", "+1h"])
        .arg(assert_cmd::cargo::cargo_bin!("gptimage"))
        .env_remove("GPTIMAGE_BASE_URL")
        .env("GPTIMAGE_API_KEY", emulator.api_key())
        .args(["--base-url", emulator.base_url(), "--poll-interval", "5"])
        .args(["--request-timeout", "3", "batch"])
        .arg(&file)
        .arg("--out")
        .arg(dir.path().join("a"))
        .args(["--state", &state]);
    let a = Running::start(&mut ahead);
    let set_back = || {
        try_batch_status(&state).is_some_and(|status| {
            status["not_done"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|line| line["state"] == "submitted" && line["error"].is_object())
        })
    };
    assert!(
        within(Duration::from_secs(20), set_back),
        "A never set the line back"
    );
    a.kill();
    let b_started = Instant::now();
    let b = Running::start(&mut worker(
        &emulator,
        &file,
        &dir.path().join("b"),
        &state,
        &[],
    ));
    let (code, text) = b.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "B did not end by itself: {text}");
    assert!(
        b_started.elapsed() < Duration::from_secs(30),
        "B took {:?}",
        b_started.elapsed()
    );
    at_most_one_task_per_prompt(&emulator, "clocks");
    let status: Value = batch_status(&state);
    assert_eq!(count(&status, "done"), 1, "{status}");
}
