//! `gptimage batch` workers sharing one batch through a real PostgreSQL cluster started by the
//! test: three at once submit every line exactly once and leave every picture on disk somewhere;
//! a worker killed mid-batch has its lines settled by another; a worker whose state refuses a
//! write mid-batch sends nothing more.

mod common;
#[path = "../../batch/tests/support/postgres.rs"]
#[allow(unreachable_pub, dead_code)]
mod postgres;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gptimage_emulator::{Config, Emulator};

fn worker(
    emulator: &Emulator,
    file: &std::path::Path,
    out: &std::path::Path,
    state: &str,
) -> Child {
    against(emulator)
        .args(["--request-timeout", "3"])
        .arg("batch")
        .arg(file)
        .arg("--out")
        .arg(out)
        .args(["--state", state, "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn three_workers_on_postgres_submit_each_line_once() {
    let cluster = postgres::Postgres::start();
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(300));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(24, "many machines"));
    let state = cluster.create_database("three");

    let workers: Vec<Child> = (0..3)
        .map(|w| {
            worker(
                &emulator,
                &file,
                &dir.path().join(format!("out-{w}")),
                &state,
            )
        })
        .collect();
    for child in workers {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_eq!(emulator.counters().tasks_created, 24, "one task per line");
    let pictures: usize = (0..3)
        .map(|w| pngs(&dir.path().join(format!("out-{w}"))).len())
        .sum();
    assert_eq!(pictures, 24, "every picture on disk somewhere");
    let status = batch_status(&state);
    assert_eq!(count(&status, "done"), 24, "{status}");
    assert_eq!(status["credits"], 240);

    // A late worker finds the batch finished: it sends nothing and says so.
    let late = worker(&emulator, &file, &dir.path().join("late"), &state)
        .wait_with_output()
        .unwrap();
    assert_eq!(late.status.code(), Some(0), "{}", stderr(&late));
    assert!(
        stderr(&late).contains("24 of 24 lines done"),
        "{}",
        stderr(&late)
    );
    assert_eq!(emulator.counters().generate_requests, 24);
}

#[test]
fn a_killed_workers_lines_are_finished_by_another() {
    let cluster = postgres::Postgres::start();
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_secs(2));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(8, "takeover"));
    let state = cluster.create_database("takeover");

    let mut doomed = worker(&emulator, &file, &dir.path().join("doomed"), &state);
    let started = Instant::now();
    while try_batch_status(&state).is_none_or(|s| count(&s, "submitted") < 4) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing was submitted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivor = worker(&emulator, &file, &dir.path().join("survivor"), &state);
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let output = survivor.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 8, "one task per line");
    assert_eq!(count(&batch_status(&state), "done"), 8);
    assert_eq!(pngs(&dir.path().join("survivor")).len(), 8);
}

#[test]
fn a_state_that_refuses_the_submitting_commit_sends_nothing() {
    let cluster = postgres::Postgres::start();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "unrecordable"));
    let state = cluster.create_database("refusing");

    // The worker claims a line and pauses before committing it as submitting; meanwhile the
    // database starts refusing exactly that commit (every other statement still works).
    let mut child = against(&emulator)
        .arg("batch")
        .arg(&file)
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["--state", &state, "--concurrency", "1"])
        .env("GPTIMAGE_BATCH_PAUSE_AT", "claimed")
        .env("GPTIMAGE_BATCH_PAUSE_SECS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let paused = stderr_lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("paused at claimed"));
    assert!(paused, "the worker never reached the pause");
    cluster.sql(
        "refusing",
        "CREATE FUNCTION refuse_submitting() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.state = 'submitting' THEN RAISE EXCEPTION 'could not extend file: No space left \
         on device'; END IF; RETURN NEW; END $$",
    );
    cluster.sql(
        "refusing",
        "CREATE TRIGGER refuse BEFORE UPDATE ON gptimage_lines FOR EACH ROW \
         EXECUTE FUNCTION refuse_submitting()",
    );
    let rest: Vec<String> = stderr_lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("the batch state postgres://") && l.contains("No space left")),
        "the error names the state store: {rest:?}"
    );
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");
}

#[test]
fn every_session_is_durable_and_bounded_whatever_the_server_defaults() {
    // A server whose defaults are the opposite of what a batch needs: commits that return
    // before they are durable, no bound on a stuck transaction or on a vanished client.
    let cluster = postgres::Postgres::start_with(&postgres::Setup {
        settings: vec![
            "synchronous_commit=off".into(),
            "log_statement=all".into(),
            "log_connections=on".into(),
            "tcp_keepalives_idle=7200".into(),
        ],
        ..postgres::Setup::default()
    });
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "durable"));
    let state = cluster.create_database("durable");
    let output = worker(&emulator, &file, &dir.path().join("out"), &state)
        .wait_with_output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // Every session the worker opened (its pool and its liveness session) said so first.
    let log = cluster.log();
    let sessions = log.matches("connection authorized").count();
    let configured = log.matches("SET synchronous_commit = on").count();
    assert!(sessions >= 2, "{log}");
    assert!(
        configured + 1 >= sessions,
        "{configured} of {sessions} sessions set synchronous_commit (the test's psql is one)"
    );
    for setting in [
        "SET idle_in_transaction_session_timeout = '30s'",
        "SET lock_timeout = '90s'",
        "SET tcp_keepalives_idle = 10",
        "SET tcp_keepalives_interval = 5",
        "SET tcp_keepalives_count = 3",
        "SET tcp_user_timeout = 25000",
    ] {
        assert!(log.contains(setting), "no {setting:?} in the server's log");
    }
}

#[test]
fn a_worker_whose_liveness_session_ends_stops_and_its_lines_pass_on() {
    let cluster = postgres::Postgres::start();
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_secs(3));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(8, "orphaned"));
    let state = cluster.create_database("orphaned");
    let mut first = worker(&emulator, &file, &dir.path().join("first"), &state);
    let started = Instant::now();
    while try_batch_status(&state).is_none_or(|s| count(&s, "submitted") < 2) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing submitted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server ends the worker's liveness session: a restart, a pooler, an administrator.
    cluster.sql(
        "orphaned",
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND classid = 1735423081 AND objsubid = 2",
    );
    let cut = Instant::now();
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "the worker went on without its liveness lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut first.stderr.take().unwrap(), &mut text).unwrap();
    assert_eq!(status.code(), Some(4), "{text}");
    assert!(
        text.contains("lost its hold on the batch state postgres://"),
        "{text}"
    );
    let sent = emulator.counters().generate_requests;
    assert!(sent < 8, "the batch was over before the cut: {sent}");
    // Another worker finishes every line; nothing is sent twice.
    let output = worker(&emulator, &file, &dir.path().join("second"), &state)
        .wait_with_output()
        .unwrap();
    let status = batch_status(&state);
    assert_eq!(
        count(&status, "done") + count(&status, "unknown"),
        8,
        "{status}: {}",
        stderr(&output)
    );
    let counters = emulator.counters();
    assert_eq!(counters.generate_requests, counters.tasks_created);
    assert!(
        counters.tasks_created <= 8,
        "a line was paid for twice: {counters:?}"
    );
}

#[test]
fn a_transaction_pooler_is_refused_and_a_session_pool_works() {
    let cluster = postgres::Postgres::start();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(3, "pooled"));
    cluster.create_database("pooled");
    // Through pgbouncer in transaction mode, a worker's liveness lock would sit on a server
    // connection other clients share: refused before anything is sent, saying why.
    let transaction = cluster.pooler("transaction");
    let output = worker(
        &emulator,
        &file,
        &dir.path().join("out"),
        &transaction.url("pooled"),
    )
    .wait_with_output()
    .unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("connection pooler"), "{text}");
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");
    // A pool in session mode gives each worker a session of its own: it works.
    let session = cluster.pooler("session");
    let output = worker(
        &emulator,
        &file,
        &dir.path().join("out"),
        &session.url("pooled"),
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 3);
}

#[test]
fn workers_blocked_behind_a_long_lock_keep_their_heartbeat_and_finish() {
    // Someone holds the batch's row lock for longer than a heartbeat may go stale (a slow
    // migration, a long report in a transaction): every claim waits on it. The workers' liveness
    // runs beside their claims, so none is counted out, and both finish.
    let cluster = postgres::Postgres::start();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(6, "behind a lock"));
    let state = cluster.create_database("locked");
    // The state exists (one line done) before the lock is taken.
    let first = against(&emulator)
        .arg("batch")
        .arg(&file)
        .arg("--out")
        .arg(dir.path().join("first"))
        .args(["--state", &state, "--max-credits", "10"])
        .output()
        .unwrap();
    assert_eq!(
        count(&batch_status(&state), "done"),
        1,
        "{}",
        stderr(&first)
    );
    let holder = {
        let statement = "BEGIN; UPDATE gptimage_batch SET committed = committed WHERE one = 1; \
                         SELECT pg_sleep(30); COMMIT;";
        let cluster = &cluster;
        std::thread::scope(|scope| {
            let holder = scope.spawn(move || cluster.try_sql("locked", statement));
            std::thread::sleep(Duration::from_millis(500));
            let workers: Vec<Child> = (0..2)
                .map(|w| {
                    against(&emulator)
                        .args(["--request-timeout", "3", "batch"])
                        .arg(&file)
                        .arg("--out")
                        .arg(dir.path().join(format!("out-{w}")))
                        .args(["--state", &state, "--max-credits", "60"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for child in workers {
                let output = child.wait_with_output().unwrap();
                assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            }
            holder.join().unwrap()
        })
    };
    assert!(holder.is_ok(), "the lock was held its 30 s: {holder:?}");
    assert_eq!(
        cluster.query(
            "locked",
            "SELECT COUNT(*) FROM gptimage_workers WHERE status = 'dead'"
        ),
        "0",
        "no live worker was counted out"
    );
    assert_eq!(count(&batch_status(&state), "done"), 6);
    assert_eq!(emulator.counters().tasks_created, 6, "one task per line");
}

#[test]
fn three_workers_put_a_whole_batch_in_one_bucket_with_its_gallery_and_manifest() {
    let cluster = postgres::Postgres::start();
    let s3 = S3::start("fleet");
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(200));
    let emulator = Emulator::spawn(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(18, "one bucket for all"));
    let state = cluster.create_database("fleet");
    let workers: Vec<Child> = (0..3)
        .map(|_| {
            let mut command = against(&emulator);
            command
                .current_dir(dir.path())
                .args(["--request-timeout", "3", "batch"])
                .arg(&file)
                .args(["--out", "s3://fleet/run-7", "--state", &state])
                .args(["--concurrency", "3"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            s3.credentials(&mut command).spawn().unwrap()
        })
        .collect();
    for child in workers {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_eq!(emulator.counters().tasks_created, 18, "one task per line");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("s3")),
        "nothing was left in a local folder named after the bucket"
    );

    // Every line's image under the prefix exactly once, beside the gallery and the manifest.
    let keys = s3.0.keys("fleet", "run-7/");
    let mut expected: Vec<String> = (0..18).map(|i| format!("run-7/p{i}-1.png")).collect();
    expected.extend([
        "run-7/.gptimage-write-check".to_owned(),
        "run-7/index.html".to_owned(),
        "run-7/results.jsonl".to_owned(),
    ]);
    expected.sort();
    assert_eq!(keys, expected);

    let (_, _, manifest) = s3.0.get("/fleet/run-7/results.jsonl");
    let manifest: Vec<serde_json::Value> = String::from_utf8(manifest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(manifest.len(), 18);
    for (n, line) in manifest.iter().enumerate() {
        assert_eq!(line["line"], n as u64 + 1);
        assert_eq!(line["state"], "done");
        assert_eq!(line["credits"], 10);
        assert_eq!(line["objects"][0], format!("p{n}-1.png"), "{line}");
        assert_eq!(line["prompt"], format!("one bucket for all {n}"));
        assert!(line["task_id"].is_string());
    }

    // The gallery, as the bucket serves it: every line's picture, whose signed link fetches
    // that line's PNG.
    let gallery = gallery_from(&s3, "fleet", "run-7", dir.path(), &state);
    let sources: Vec<&str> = gallery
        .split("<img src=\"")
        .skip(1)
        .map(|rest| rest.split_once('"').unwrap().0)
        .collect();
    assert_eq!(sources.len(), 18, "{gallery}");
    for n in 0..18 {
        let caption = format!("line {}: one bucket for all {n}", n + 1);
        assert!(gallery.contains(&caption), "{caption}");
    }
    for source in sources {
        let source = source.replace("&amp;", "&");
        assert!(source.contains("X-Amz-Signature="), "{source}");
        let path = source.split_once("127.0.0.1").unwrap().1;
        let (status, content_type, body) = s3.0.get(&path[path.find('/').unwrap()..]);
        assert_eq!(
            (status, content_type.as_str()),
            (200, "image/png"),
            "{source}"
        );
        assert!(body.starts_with(b"\x89PNG"));
    }
}

/// `batch-status --write-index` writes the gallery again; the page as its signed link serves it.
fn gallery_from(s3: &S3, bucket: &str, prefix: &str, dir: &std::path::Path, state: &str) -> String {
    let mut command = gptimage();
    command
        .current_dir(dir)
        .args(["batch-status", "--write-index", "--state", state])
        .args(["--out", &format!("s3://{bucket}/{prefix}")]);
    let output = run(s3.credentials(&mut command));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("wrote s3://{bucket}/{prefix}/index.html")),
        "{}",
        stderr(&output)
    );
    // The page through a signed link of its own, as the user would hand it to a browser.
    use gptimage::hosting::{ObjectStoreResults, ResultStore};
    let endpoint = s3.0.endpoint();
    let settings = [
        ("aws_access_key_id", "test-key"),
        ("aws_secret_access_key", "test-secret"),
        ("aws_region", "us-east-1"),
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
    ];
    let client = gptimage::Client::builder()
        .api_key("sk-unused-here")
        .build()
        .unwrap();
    let store = ObjectStoreResults::from_url_with(
        &format!("s3://{bucket}/{prefix}"),
        &settings,
        client.config(),
    )
    .unwrap();
    let link = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.signed_url("index.html", Duration::from_secs(600)))
        .unwrap();
    let link = link.expose();
    assert!(link.contains("X-Amz-Signature="), "{link}");
    let path = link.split_once("127.0.0.1").unwrap().1;
    let (status, content_type, page) = s3.0.get(&path[path.find('/').unwrap()..]);
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    String::from_utf8(page).unwrap()
}
