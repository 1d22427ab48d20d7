//! The test kit's own tests (feature `test-util`): each part of `test_util::Scripted` proven
//! through the real clients: headers on answers (Retry-After), statuses per task under
//! concurrent waits, strict mode and `verify`, latency and hangs ended by the request timeout,
//! recorded headers with the key kept out of `Debug`, callbacks delivered to a webhook
//! receiver, and long waits run on tokio's paused clock in no wall time.

#![cfg(all(feature = "async", feature = "blocking", feature = "test-util"))]

use std::time::{Duration, Instant};

use gptimage_transport::test_util::{Endpoint, Reply, Scripted, TINY_PNG, UNSCRIPTED_STATUS};
use gptimage_transport::webhook::Receiver;
use gptimage_transport::{Client, ErrorKind, PollSchedule, blocking};
use gptimage_types::{GenerateRequest, TaskStatus};

fn request() -> GenerateRequest {
    GenerateRequest::text_to_image("a fox in the snow")
        .build()
        .unwrap()
}

fn blocking_client(script: &Scripted) -> blocking::Client {
    blocking::Client::with_transport(Scripted::config(), script.clone())
}

fn async_client(script: &Scripted) -> Client {
    Client::with_transport(Scripted::config(), script.clone())
}

/// The error's whole text, its sources included.
fn chain(error: &gptimage_transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

// 1. Headers on answers.

#[test]
fn a_retry_after_on_a_submission_reaches_the_client() {
    // Longer than the policy honours (120 s by default): the client gives up at once, and
    // says how long the service asked for. Without the header it would try again.
    let script = Scripted::strict().rate_limited(300).created("never");
    let error = blocking_client(&script).submit(&request()).unwrap_err();
    assert_eq!(error.http_status(), Some(429));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(300)));
    assert_eq!(script.count(Endpoint::Submit), 1);
    // Within the policy: the submission is sent again, once the time asked has passed.
    let script = Scripted::strict().rate_limited(1).created("task-1");
    let created = blocking_client(&script).submit(&request()).unwrap();
    assert_eq!(created.task_id, "task-1");
    let sent = script.requests();
    assert_eq!(sent.len(), 2);
    assert!(sent[1].at - sent[0].at >= Duration::from_secs(1));
    script.assert_verified();
}

#[test]
fn a_retry_after_on_a_status_reaches_the_client() {
    let script = Scripted::strict()
        .status_rate_limited(121)
        .succeeded(["https://cdn.test/a.png"]);
    let error = blocking_client(&script).status("task-1").unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(121)));
    assert_eq!(
        script.count(Endpoint::Status),
        1,
        "a Retry-After too long is not waited"
    );
    // The same for one task's script, and a header added to any answer with `with_header`.
    let script = Scripted::strict();
    script
        .task("task-2")
        .status_refused(503, "busy")
        .with_header("retry-after", "200")
        .running();
    let error = blocking_client(&script).status("task-2").unwrap_err();
    assert_eq!(error.http_status(), Some(503));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(200)));
}

#[test]
fn a_reply_carries_any_status_headers_and_body() {
    // A download redirected by its `Location`, then the image itself.
    let script = Scripted::strict()
        .answer(
            Endpoint::Download,
            Reply::new(302).header("location", "https://cdn.test/moved.png"),
        )
        .image("https://cdn.test/moved.png", TINY_PNG);
    let client = blocking_client(&script);
    let mut task = gptimage_types::TaskInfo::new("t", TaskStatus::Success);
    task.response = Some(vec!["https://cdn.test/first.png".to_owned()]);
    let images = client.download(&task).unwrap();
    assert_eq!(images[0].bytes, TINY_PNG);
    let urls: Vec<String> = script.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(
        urls,
        ["https://cdn.test/first.png", "https://cdn.test/moved.png"]
    );
    script.assert_verified();
    // An expired result URL, by URL.
    let script =
        Scripted::strict().answer_url("https://cdn.test/first.png", Reply::new(404).body("gone"));
    let error = blocking_client(&script).download(&task).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Download);
    assert_eq!(error.http_status(), Some(404));
}

// 2. Statuses per task.

#[tokio::test]
async fn each_of_three_concurrent_waits_gets_its_own_tasks_statuses() {
    let script = Scripted::strict();
    script
        .task("a")
        .running()
        .running()
        .succeeded(["https://cdn.test/a.png"]);
    script
        .task("b")
        .pending()
        .failed("Content policy violation");
    script
        .task("c")
        .running()
        .status_refused(404, "task not found");
    let client = async_client(&script);
    let (a, b, c) = tokio::join!(client.wait("a"), client.wait("b"), client.wait("c"));
    let a = a.unwrap();
    assert_eq!(
        (a.task_id.as_str(), a.images()),
        ("a", &["https://cdn.test/a.png".to_owned()][..])
    );
    let b = b.unwrap_err();
    assert_eq!(b.kind(), ErrorKind::TaskFailed);
    assert_eq!(b.server_message(), Some("Content policy violation"));
    let c = c.unwrap_err();
    assert_eq!(c.http_status(), Some(404));
    let asked = |task: &str| {
        script
            .requests()
            .iter()
            .filter(|r| r.task_id.as_deref() == Some(task))
            .count()
    };
    assert_eq!((asked("a"), asked("b"), asked("c")), (3, 2, 2));
    // The last status of a task repeats, as the shared one does.
    assert_eq!(
        client.status("a").await.unwrap().status,
        TaskStatus::Success
    );
    script.assert_verified();
}

#[test]
fn per_task_scripts_hold_across_threads_and_leave_the_shared_queue_to_others() {
    let script = Scripted::strict().failed("shared");
    for task in ["t1", "t2", "t3"] {
        script
            .task(task)
            .running()
            .succeeded([format!("https://cdn.test/{task}.png")]);
    }
    let client = blocking_client(&script);
    let waits: Vec<_> = ["t1", "t2", "t3", "other"]
        .into_iter()
        .map(|task| {
            let client = client.clone();
            std::thread::spawn(move || client.wait(task))
        })
        .collect();
    let results: Vec<_> = waits.into_iter().map(|w| w.join().unwrap()).collect();
    for (task, result) in ["t1", "t2", "t3"].iter().zip(&results) {
        let info = result.as_ref().unwrap();
        assert_eq!(info.images(), [format!("https://cdn.test/{task}.png")]);
    }
    let other = results[3].as_ref().unwrap_err();
    assert_eq!(other.kind(), ErrorKind::TaskFailed);
    assert_eq!(other.server_message(), Some("shared"));
}

// 3. Strict mode and `verify`.

#[test]
fn strict_mode_fails_a_missing_script_at_once_where_a_lenient_one_retries() {
    // Lenient: the unscripted status is a connection refused, retried twice.
    let lenient = Scripted::new();
    let error = blocking_client(&lenient).status("task-1").unwrap_err();
    assert!(error.is_connect());
    assert_eq!(lenient.count(Endpoint::Status), 3);
    // Strict: a final answer, not retried, that names what to script.
    let strict = Scripted::strict();
    let error = blocking_client(&strict).status("task-1").unwrap_err();
    assert_eq!(error.http_status(), Some(UNSCRIPTED_STATUS));
    assert_eq!(strict.count(Endpoint::Status), 1);
    assert!(
        chain(&error).contains("Scripted::running"),
        "{}",
        chain(&error)
    );
    // A strict submission with no answer is no unknown outcome either: nothing was paid for.
    let error = blocking_client(&strict).submit(&request()).unwrap_err();
    assert_ne!(error.kind(), ErrorKind::OutcomeUnknown);
    assert_eq!(strict.count(Endpoint::Submit), 1);
    // Both scripts report the unscripted requests.
    let report = lenient.verify().unwrap_err();
    assert!(
        report.contains("unscripted: GET /status for task task-1"),
        "{report}"
    );
    let report = strict.verify().unwrap_err();
    assert!(report.contains("unscripted: POST /generate"), "{report}");
}

#[test]
fn verify_lists_every_answer_never_given() {
    let script = Scripted::strict()
        .created("task-1")
        .created("task-2")
        .running()
        .succeeded(["https://cdn.test/a.png"])
        .image("https://cdn.test/a.png", TINY_PNG)
        .dropped(Endpoint::Status);
    script.task("t9").failed("never asked");
    let client = blocking_client(&script);
    client.submit(&request()).unwrap();
    let report = script.verify().unwrap_err();
    for expected in [
        "a submission answer, created task-2",
        "a shared status answer, status IN_PROGRESS",
        "a shared status answer, status SUCCESS",
        "an answer for task t9, status FAILED",
        "a download answer, the image https://cdn.test/a.png",
        "1 drop(s) of Status",
    ] {
        assert!(report.contains(expected), "{expected:?} in {report}");
    }
    assert!(!report.contains("created task-1"), "{report}");
    // Used up, the script verifies; the last status counts once given.
    client.submit(&request()).unwrap();
    let task = client.wait("task-2").unwrap();
    client.download(&task).unwrap();
    client.status("task-2").unwrap(); // the repeating last one, again: still fine
    script.task("t9").end();
    assert!(script.verify().unwrap_err().contains("task t9"));
    client.wait("t9").unwrap_err();
    script.assert_verified();
    // `assert_verified` panics with the list.
    let unused = Scripted::new().running();
    let panic = std::panic::catch_unwind(|| unused.assert_verified()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("status IN_PROGRESS"), "{message}");
}

// 4. Latency and hangs (real time; see `paused_time` for tokio's clock).

#[test]
fn a_latency_delays_the_answer_and_one_past_the_timeout_is_a_timeout() {
    let script = Scripted::strict()
        .created("task-1")
        .latency(Duration::from_millis(60));
    let started = Instant::now();
    blocking_client(&script).submit(&request()).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(60));
    // Slower than the request timeout: that timeout's error, after the timeout, not the latency.
    let script = Scripted::strict()
        .created("late")
        .latency(Duration::from_secs(30));
    let config = Scripted::builder::<blocking::Client>()
        .request_timeout(Duration::from_millis(50))
        .config()
        .unwrap();
    let started = Instant::now();
    let error = blocking::Client::with_transport(config, script.clone())
        .submit(&request())
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
    assert!(error.is_timeout());
}

#[test]
fn a_hung_submission_is_ended_by_the_request_timeout_as_an_unknown_outcome() {
    let script = Scripted::strict()
        .hung(Endpoint::Submit)
        .created("never-sent");
    let config = Scripted::builder::<blocking::Client>()
        .request_timeout(Duration::from_millis(80))
        .config()
        .unwrap();
    let started = Instant::now();
    let error = blocking::Client::with_transport(config, script.clone())
        .submit(&request())
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(80) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The body was written: a task may exist, so it is never sent again.
    assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
    assert!(error.is_timeout());
    assert_eq!(script.count(Endpoint::Submit), 1);
}

#[tokio::test]
async fn a_hung_status_is_ended_by_the_request_timeout_and_asked_again() {
    let script = Scripted::strict()
        .answer(Endpoint::Status, Reply::hang())
        .running();
    let config = Scripted::builder::<Client>()
        .request_timeout(Duration::from_millis(80))
        .config()
        .unwrap();
    let started = Instant::now();
    let info = Client::with_transport(config, script.clone())
        .status("task-1")
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(80));
    assert_eq!(info.status, TaskStatus::InProgress);
    assert_eq!(script.count(Endpoint::Status), 2);
    script.assert_verified();
}

// 5. Recorded headers.

#[test]
fn recorded_requests_carry_their_headers_and_their_debug_hides_the_key() {
    let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
    let config = Scripted::builder::<blocking::Client>()
        .webhooks(receiver)
        .config()
        .unwrap();
    let script = Scripted::strict()
        .created("task-1")
        .succeeded(["https://cdn.test/a.png"])
        .image("https://cdn.test/a.png", TINY_PNG);
    let client = blocking::Client::with_transport(config, script.clone());
    let task = client.generate(&request()).unwrap();
    client.download(&task).unwrap();
    let sent = script.requests();
    let (submit, status, download) = (&sent[0], &sent[1], &sent[2]);
    assert_eq!(submit.header("authorization"), Some("Bearer sk-scripted"));
    assert_eq!(submit.header("content-type"), Some("application/json"));
    assert!(
        submit
            .header("user-agent")
            .unwrap()
            .starts_with("gptimage-rust/")
    );
    assert_eq!(status.header("Authorization"), Some("Bearer sk-scripted"));
    assert_eq!(download.header("authorization"), None, "the key stays home");
    let token = script.callback_url("task-1").unwrap();
    let token = &token[token.len() - 32..];
    for request in &sent {
        let shown = format!("{request:?}");
        assert!(!shown.contains("sk-scripted"), "{shown}");
        assert!(!shown.contains(token), "the callback's secret: {shown}");
    }
    let shown = format!("{script:?}");
    assert!(
        !shown.contains("sk-scripted") && !shown.contains(token),
        "{shown}"
    );
    let shown = format!("{submit:?}");
    assert!(
        shown.contains("\"authorization\": \"<redacted>\""),
        "{shown}"
    );
    assert!(shown.contains("a fox in the snow"), "{shown}");
}

// 6. Callbacks.

#[tokio::test]
async fn a_delivered_callback_ends_a_wait_long_before_its_next_poll() {
    let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
    let config = Scripted::builder::<Client>()
        .webhooks(receiver.clone())
        .poll(PollSchedule::fixed(Duration::from_secs(60)))
        .config()
        .unwrap();
    let script = Scripted::strict().created("task-1");
    script
        .task("task-1")
        .running()
        .succeeded(["https://cdn.test/a.png"]);
    let client = Client::with_transport(config, script.clone());
    let created = client.submit(&request()).await.unwrap();
    let started = Instant::now();
    let wait = tokio::spawn({
        let client = client.clone();
        async move { client.wait(&created.task_id).await }
    });
    while script.count(Endpoint::Status) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A forgery is refused and wakes nothing.
    assert!(!script.deliver_forged_callback(&receiver, "task-1"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!wait.is_finished());
    assert_eq!(script.count(Endpoint::Status), 1);
    // The genuine one ends the wait with one status request.
    assert!(script.deliver_callback(&receiver, "task-1"));
    let task = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the callback ended the wait")
        .unwrap()
        .unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(script.count(Endpoint::Status), 2);
    script.assert_verified();
}

#[test]
fn a_delivered_callback_wakes_the_blocking_client_too() {
    let receiver = Receiver::with_local_path("https://hooks.test/public/", "/local/").unwrap();
    let config = Scripted::builder::<blocking::Client>()
        .webhooks(receiver.clone())
        .poll(PollSchedule::fixed(Duration::from_secs(60)))
        .wait_timeout(Duration::from_secs(10)) // without the callback: a deadline, not a poll
        .config()
        .unwrap();
    let script = Scripted::strict()
        .created("task-1")
        .running()
        .succeeded(["https://cdn.test/a.png"]);
    let client = blocking::Client::with_transport(config, script.clone());
    let created = client.submit(&request()).unwrap();
    assert!(
        script
            .callback_url("task-1")
            .unwrap()
            .starts_with("https://hooks.test/public/")
    );
    let started = Instant::now();
    let wait = std::thread::spawn(move || client.wait(&created.task_id));
    while script.count(Endpoint::Status) < 1 {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(script.deliver_callback(&receiver, "task-1"));
    let task = wait.join().unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Late and duplicate deliveries are still welcome.
    assert!(script.deliver_callback(&receiver, "task-1"));
}

#[test]
fn statuses_echo_the_submission_and_a_lost_one_is_named_by_its_callback() {
    let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
    let config = Scripted::builder::<blocking::Client>()
        .webhooks(receiver.clone())
        .config()
        .unwrap();
    let script = Scripted::strict().created("task-1").running();
    let client = blocking::Client::with_transport(config, script.clone());
    // A created task's statuses echo the request that made it, as the service's do.
    client.submit(&request()).unwrap();
    let sent = script.requests()[0].json();
    assert!(sent["callback_url"].is_string());
    let status = client.status("task-1").unwrap();
    assert_eq!(status.request.as_ref(), Some(&sent));
    // A lost answer (a drop is owed to the next submission): the service's callback names the
    // task it made.
    let script = script.dropped(Endpoint::Submit);
    let error = client.submit(&request()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
    let lost = script.requests()[2].json();
    assert_ne!(lost["callback_url"], sent["callback_url"]);
    let _accepted = script.deliver_lost_callback(&receiver, "task-7");
    assert_eq!(
        script.callback_url("task-7").as_deref(),
        lost["callback_url"].as_str()
    );
    let status = client.status("task-7").unwrap();
    assert_eq!(status.request.as_ref(), Some(&lost));
}

#[test]
#[should_panic(expected = "carried a callback URL")]
fn a_callback_for_a_client_without_webhooks_says_what_is_missing() {
    let script = Scripted::strict().created("task-1");
    blocking_client(&script).submit(&request()).unwrap();
    let receiver = Receiver::new("https://hooks.test/").unwrap();
    script.deliver_callback(&receiver, "task-1");
}

// 7. Paused time: the async client's clock is tokio's (tokio's `test-util` feature, on in this
// crate's dev-dependencies).
mod paused_time {
    use super::*;
    use gptimage_transport::RetryPolicy;

    /// A client as in production (the real 5-to-10-second poll schedule and retry policy) over
    /// a script, with a ten-minute wait.
    fn real_pace(script: &Scripted) -> Client {
        let config = Scripted::builder::<Client>()
            .poll(PollSchedule::default())
            .retry(RetryPolicy::default())
            .wait_timeout(Duration::from_secs(600))
            .config()
            .unwrap();
        Client::with_transport(config, script.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_and_a_ten_minute_deadline_take_no_wall_time() {
        let wall = Instant::now();
        let virtual_start = tokio::time::Instant::now();
        let script = Scripted::strict().rate_limited(120).created("task-1");
        script.task("task-1").running(); // for ever
        let error = real_pace(&script).generate(&request()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::DeadlinePassed);
        assert_eq!(error.task_id(), Some("task-1"));
        let sent = script.requests();
        assert!(
            sent[1].at - sent[0].at >= Duration::from_secs(120),
            "Retry-After honoured"
        );
        let waited = tokio::time::Instant::now() - virtual_start;
        assert!(waited >= Duration::from_secs(720), "{waited:?}");
        assert!(waited < Duration::from_secs(740), "{waited:?}");
        // Polled every 5 to 10 s for 10 minutes.
        let polls = script.count(Endpoint::Status);
        assert!((60..=120).contains(&polls), "{polls}");
        assert!(
            wall.elapsed() < Duration::from_secs(1),
            "{:?}",
            wall.elapsed()
        );
        script.assert_verified();
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_and_a_long_task_that_succeeds_take_no_wall_time() {
        let wall = Instant::now();
        let virtual_start = tokio::time::Instant::now();
        let script = Scripted::strict().rate_limited(120).created("task-1");
        let mut task = script.task("task-1");
        for _ in 0..30 {
            task = task.running();
        }
        task.succeeded(["https://cdn.test/a.png"]);
        let info = real_pace(&script).generate(&request()).await.unwrap();
        assert_eq!(info.images(), ["https://cdn.test/a.png"]);
        assert_eq!(script.count(Endpoint::Status), 31);
        let sent = script.requests();
        assert!(
            sent[1].at - sent[0].at >= Duration::from_secs(120),
            "Retry-After honoured"
        );
        let waited = tokio::time::Instant::now() - virtual_start;
        // 120 s held, then 30 pauses of 5 s growing to 10 s.
        assert!(waited >= Duration::from_secs(120 + 5 * 30), "{waited:?}");
        assert!(
            wall.elapsed() < Duration::from_secs(1),
            "{:?}",
            wall.elapsed()
        );
        script.assert_verified();
    }

    #[tokio::test(start_paused = true)]
    async fn a_latency_is_observed_on_the_virtual_clock() {
        let wall = Instant::now();
        let script = Scripted::strict()
            .running()
            .latency(Duration::from_secs(45));
        let started = tokio::time::Instant::now();
        async_client(&script).status("task-1").await.unwrap();
        let took = tokio::time::Instant::now() - started;
        assert!(
            took >= Duration::from_secs(45) && took < Duration::from_secs(46),
            "{took:?}"
        );
        assert!(wall.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hang_lasts_exactly_the_request_timeout_on_the_virtual_clock() {
        let wall = Instant::now();
        let script = Scripted::strict()
            .answer(Endpoint::Submit, Reply::hang())
            .created("never-sent");
        let started = tokio::time::Instant::now();
        // The default request timeout: 60 s.
        let error = real_pace(&script).submit(&request()).await.unwrap_err();
        assert_eq!(
            tokio::time::Instant::now() - started,
            Duration::from_secs(60)
        );
        assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
        assert!(error.is_timeout());
        assert_eq!(script.count(Endpoint::Submit), 1);
        assert!(wall.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_callback_ends_a_wait_whose_next_poll_is_a_minute_away() {
        let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
        let config = Scripted::builder::<Client>()
            .webhooks(receiver.clone())
            .poll(PollSchedule::fixed(Duration::from_secs(60)))
            .config()
            .unwrap();
        let script = Scripted::strict().created("task-1");
        script
            .task("task-1")
            .running()
            .succeeded(["https://cdn.test/a.png"]);
        let client = Client::with_transport(config, script.clone());
        let created = client.submit(&request()).await.unwrap();
        let started = tokio::time::Instant::now();
        let wait = tokio::spawn(async move { client.wait(&created.task_id).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(script.deliver_callback(&receiver, "task-1"));
        let task = wait.await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Success);
        let took = tokio::time::Instant::now() - started;
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(script.count(Endpoint::Status), 2);
    }
}
