//! Services that never lose a paid task, against the emulator over loopback: a submission
//! whose caller went away after its POST was written still reports its task; a stop or a
//! departed caller before the POST sends nothing; `generate_many` dropped mid-flight forgets
//! no POST it sent (and the blocking one returns at once); a lost answer is recovered from
//! its callback, confirmed by one status request, never resubmitted, while a forged callback
//! on the same token recovers nothing; the tracker pays once per key and answers from its
//! cache.
#![cfg(all(feature = "async", feature = "blocking", feature = "listener"))]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind};
use gptimage_transport::webhook::{Listener, Receiver};
use gptimage_transport::{
    Client, ClientBuilder, ErrorKind, ManyEvent, PollSchedule, Rate, Submission, Tracker, blocking,
};
use gptimage_types::{GenerateRequest, Quality, TaskStatus};

fn request(prompt: &str) -> GenerateRequest {
    GenerateRequest::text_to_image(prompt)
        .quality(Quality::Low)
        .build()
        .unwrap()
}

/// What the client's submission sink heard: `created:ID` (with `!` when abandoned),
/// `unknown`, `recovered:ID`.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Vec<String>>>);

impl Ledger {
    fn sink(&self) -> impl Fn(&Submission<'_>) + Send + Sync + 'static {
        let entries = Arc::clone(&self.0);
        move |outcome| {
            let entry = match outcome {
                Submission::Created {
                    task_id, abandoned, ..
                } => format!("created:{task_id}{}", if *abandoned { "!" } else { "" }),
                Submission::Unknown { .. } => "unknown".to_owned(),
                Submission::Recovered { task_id, .. } => format!("recovered:{task_id}"),
                _ => "other".to_owned(),
            };
            entries.lock().unwrap().push(entry);
        }
    }

    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn created(&self) -> usize {
        self.entries()
            .iter()
            .filter(|e| e.starts_with("created:"))
            .count()
    }
}

fn builder<C: gptimage_transport::FromConfig>(
    emulator: &Emulator,
    ledger: &Ledger,
) -> ClientBuilder<C> {
    ClientBuilder::new()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .poll(PollSchedule::fixed(Duration::from_millis(50)))
        .wait_timeout(Duration::from_secs(20))
        .on_submission(ledger.sink())
}

/// Waits (at most 10 s) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn eventually_async(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every POST is answered after `latency` (the task is made at once).
fn slow_posts(latency: Duration) -> Emulator {
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_millis(200))
        .with_fault(Fault::new(FaultKind::Latency(latency)).on(Endpoint::Generate));
    Emulator::spawn(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_whose_caller_went_away_after_its_post_still_reports_its_task() {
    let emulator = slow_posts(Duration::from_millis(1500));
    let ledger = Ledger::default();
    let client: Client = builder(&emulator, &ledger).build().unwrap();
    // The handler's future is dropped once its POST has reached the service.
    let dropped_request = request("a dropped handler");
    let handler = client.submit(&dropped_request);
    let dropped = tokio::time::timeout(Duration::from_millis(600), handler).await;
    assert!(dropped.is_err(), "the handler was dropped mid-request");
    assert_eq!(emulator.counters().generate_requests, 1);
    eventually_async("the task reaches the sink", || ledger.created() == 1).await;
    let made = emulator.task_ids_for("a dropped handler");
    assert_eq!(made.len(), 1);
    assert_eq!(ledger.entries(), [format!("created:{}!", made[0])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_whose_caller_went_away_before_it_was_sent_sends_nothing() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let ledger = Ledger::default();
    // One submission in 10 s: the second waits for the pacer (within the wait timeout).
    let client: Client = builder(&emulator, &ledger)
        .rate_limit(Rate::new(1, Duration::from_secs(10)))
        .build()
        .unwrap();
    client.submit(&request("the first")).await.unwrap();
    let second = request("the second");
    let waiting = client.submit(&second);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(emulator.counters().generate_requests, 1, "never sent");
    assert_eq!(ledger.created(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_pays_once_when_a_dropped_handlers_user_clicks_again() {
    let emulator = slow_posts(Duration::from_millis(1500));
    let ledger = Ledger::default();
    let submitted = Arc::new(Mutex::new(Vec::new()));
    let hooked = Arc::clone(&submitted);
    let tracker = Tracker::builder(builder(&emulator, &ledger).build().unwrap())
        .on_submitted(move |created| {
            let hooked = Arc::clone(&hooked);
            async move { hooked.lock().unwrap().push(created.task_id) }
        })
        .build();
    let clicked = request("clicked twice");
    let first = tracker.submit_keyed("user-1:click-1", &clicked);
    assert!(
        tokio::time::timeout(Duration::from_millis(600), first)
            .await
            .is_err()
    );
    // The user clicks again while the first POST is still on the wire.
    let again = tracker
        .submit_keyed("user-1:click-1", &request("clicked twice"))
        .await
        .unwrap();
    assert_eq!(emulator.counters().tasks_created, 1, "one task for one key");
    assert_eq!(
        emulator.task_ids_for("clicked twice"),
        vec![again.task_id.clone()]
    );
    assert_eq!(*submitted.lock().unwrap(), vec![again.task_id.clone()]);
    // Followed to its end; a GET is the cache's.
    eventually_async("the task ends", || {
        tracker
            .get(&again.task_id)
            .is_some_and(|t| t.status == TaskStatus::Success)
    })
    .await;
    let asked = emulator.counters().status_requests;
    for _ in 0..10 {
        assert!(tracker.get(&again.task_id).is_some());
    }
    assert_eq!(emulator.counters().status_requests, asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_pacer_wait_or_a_backoff_sends_nothing_after_it() {
    // A 429 with Retry-After: 5 s to the first POST; the others wait for the pacer.
    let config = Config::instant().with_fault(
        Fault::new(FaultKind::RateLimited {
            retry_after_secs: 5,
        })
        .on(Endpoint::Generate)
        .times(1),
    );
    let emulator = Emulator::spawn(config).unwrap();
    let ledger = Ledger::default();
    let client: Client = builder(&emulator, &ledger)
        .rate_limit(Rate::new(1, Duration::from_secs(10)))
        .build()
        .unwrap();
    let requests = (0..3).map(|n| request(&format!("stopped {n}")));
    let mut many = client.generate_many(requests, 3);
    eventually_async("the 429 was answered", || {
        emulator.counters().generate_requests >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = emulator.counters().generate_requests;
    many.stopper().stop();
    let mut not_sent = 0;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), many.next())
        .await
        .expect("the events end soon after the stop")
    {
        if let ManyEvent::Finished { result: Err(e), .. } = &event
            && e.kind() == ErrorKind::NotSent
        {
            not_sent += 1;
        }
    }
    assert_eq!(
        not_sent, 3,
        "every request waiting to be sent reports it was not"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        emulator.counters().generate_requests,
        before,
        "nothing after the stop"
    );
    assert_eq!(emulator.counters().tasks_created, 0);
}

#[test]
fn a_blocking_stop_during_a_backoff_sends_nothing_after_it() {
    let config = Config::instant().with_fault(
        Fault::new(FaultKind::RateLimited {
            retry_after_secs: 5,
        })
        .on(Endpoint::Generate)
        .times(1),
    );
    let emulator = Emulator::spawn(config).unwrap();
    let ledger = Ledger::default();
    let client: blocking::Client = builder(&emulator, &ledger).build().unwrap();
    let mut many = client.generate_many(vec![request("stopped blocking")], 1);
    eventually("the 429 was answered", || {
        emulator.counters().generate_requests >= 1
    });
    let stop = many.stopper();
    let stopped = Instant::now();
    stop.stop();
    let event = many.next().expect("the request reports");
    assert!(stopped.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(&event, ManyEvent::Finished { result: Err(e), .. } if e.kind() == ErrorKind::NotSent),
        "{event:?}"
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(emulator.counters().generate_requests, 1, "nothing after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_many_dropped_mid_flight_forgets_no_post_it_sent() {
    let emulator = slow_posts(Duration::from_millis(800));
    let ledger = Ledger::default();
    let client: Client = builder(&emulator, &ledger).build().unwrap();
    let requests = (0..8).map(|n| request(&format!("dropped many {n}")));
    let many = client.generate_many(requests, 4);
    eventually_async("four POSTs on the wire", || {
        emulator.counters().generate_requests >= 4
    })
    .await;
    drop(many);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counters = emulator.counters();
    assert_eq!(counters.generate_requests, 4, "nothing sent after the drop");
    assert_eq!(counters.tasks_created, 4);
    assert_eq!(ledger.created(), 4, "every task sent reached the sink");
}

#[test]
fn a_blocking_generate_many_dropped_mid_flight_returns_at_once_and_forgets_nothing() {
    let emulator = slow_posts(Duration::from_millis(800));
    let ledger = Ledger::default();
    let client: blocking::Client = builder(&emulator, &ledger).build().unwrap();
    let requests: Vec<_> = (0..8)
        .map(|n| request(&format!("blocking dropped {n}")))
        .collect();
    let many = client.generate_many(requests, 4);
    eventually("four POSTs on the wire", || {
        emulator.counters().generate_requests >= 4
    });
    let dropping = Instant::now();
    drop(many);
    assert!(
        dropping.elapsed() < Duration::from_secs(1),
        "the drop returned in {:?}",
        dropping.elapsed()
    );
    eventually("every task sent reached the sink", || ledger.created() == 4);
    std::thread::sleep(Duration::from_millis(500));
    let counters = emulator.counters();
    assert_eq!(counters.generate_requests, 4);
    assert_eq!(counters.tasks_created, 4);
}

/// A receiver listening on loopback, for the emulator's real deliveries.
fn listening() -> (Receiver, Listener) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = Receiver::new(&format!("http://127.0.0.1:{port}/hooks/")).unwrap();
    let listener = receiver.listen(("127.0.0.1", port)).unwrap();
    (receiver, listener)
}

/// The answer to the first POST is lost (the task is made, then the connection dropped);
/// the task ends after `running`, and its callback is delivered (unless `deliver` is off).
fn losing_the_answer(running: Duration, deliver: bool) -> Emulator {
    let mut config = Config::instant()
        .with_timings(Duration::ZERO, running)
        .with_fault(
            Fault::new(FaultKind::DropConnection)
                .on(Endpoint::Generate)
                .times(1),
        );
    if !deliver {
        config = config.with_fault(Fault::new(FaultKind::DropConnection).on(Endpoint::Webhook));
    }
    Emulator::spawn(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_recovered_from_its_callback_and_never_resubmitted() {
    let emulator = losing_the_answer(Duration::from_millis(300), true);
    let (receiver, _listener) = listening();
    let ledger = Ledger::default();
    let client: Client = builder(&emulator, &ledger)
        .webhooks(receiver)
        .build()
        .unwrap();
    let task = client.generate(&request("a lost answer")).await.unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    let counters = emulator.counters();
    assert_eq!(counters.generate_requests, 1, "never resubmitted");
    assert_eq!(counters.tasks_created, 1);
    assert_eq!(
        emulator.task_ids_for("a lost answer"),
        vec![task.task_id.clone()]
    );
    assert_eq!(
        ledger.entries(),
        ["unknown".to_owned(), format!("recovered:{}", task.task_id)]
    );
}

#[test]
fn a_blocking_lost_answer_is_recovered_too() {
    let emulator = losing_the_answer(Duration::from_millis(300), true);
    let (receiver, _listener) = listening();
    let ledger = Ledger::default();
    let client: blocking::Client = builder(&emulator, &ledger)
        .webhooks(receiver)
        .build()
        .unwrap();
    let task = client.generate(&request("a blocking lost answer")).unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert_eq!(emulator.counters().generate_requests, 1);
    assert_eq!(
        ledger.entries(),
        ["unknown".to_owned(), format!("recovered:{}", task.task_id)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_callback_on_a_lost_token_recovers_nothing() {
    // The lost task's own callback never comes; someone who has its token names another task.
    let emulator = losing_the_answer(Duration::from_millis(100), false);
    let (receiver, listener) = listening();
    let ledger = Ledger::default();
    let client: Client = builder(&emulator, &ledger)
        .webhooks(receiver)
        .wait_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let lost = client.submit(&request("lost for good")).await.unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::OutcomeUnknown);
    assert!(lost.may_have_created_task() && !lost.is_retryable());
    let decoy = client.generate(&request("a decoy")).await.unwrap();
    let lost_id = emulator.task_ids_for("lost for good").remove(0);
    let token_url = emulator
        .task_request(&lost_id)
        .and_then(|r| r.callback_url().map(str::to_owned))
        .unwrap();
    let path = url::Url::parse(&token_url).unwrap().path().to_owned();
    let forged = format!(
        r#"{{"code":200,"data":{{"task_id":"{}","status":"SUCCESS"}}}}"#,
        decoy.task_id
    );
    let answer = post(listener.local_addr(), &path, &forged);
    assert_eq!(
        answer, 200,
        "the token is genuine, so the delivery is accepted"
    );
    let recovered = client.recover(&lost).await.unwrap();
    assert!(
        recovered.is_none(),
        "the decoy does not echo the lost callback URL"
    );
    assert!(
        !ledger.entries().iter().any(|e| e.starts_with("recovered")),
        "{:?}",
        ledger.entries()
    );
    assert_eq!(emulator.counters().tasks_created, 2, "nothing resubmitted");
}

/// POSTs `body` to `path` on `addr`; the answer's status.
fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_with_webhooks_costs_one_status_request_per_task() {
    // Tasks run 300 ms; the wait's fallback poll (the first after 20 s) is long after that,
    // so each task is asked about once: after its callback.
    let emulator =
        Emulator::spawn(Config::instant().with_timings(Duration::ZERO, Duration::from_millis(300)))
            .unwrap();
    let (receiver, _listener) = listening();
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .webhooks(receiver)
        .build()
        .unwrap();
    let tracker = Tracker::new(client);
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(
            tracker
                .submit(&request(&format!("tracked {n}")))
                .await
                .unwrap()
                .task_id,
        );
    }
    eventually_async("every task ended", || {
        ids.iter().all(|id| {
            tracker
                .get(id)
                .is_some_and(|t| t.status == TaskStatus::Success)
        })
    })
    .await;
    // Every GET from the cache: none reaches the service.
    let asked = emulator.counters().status_requests;
    for id in &ids {
        assert!(!tracker.get(id).unwrap().images().is_empty());
    }
    assert_eq!(emulator.counters().status_requests, asked);
    assert_eq!(asked, 50, "one status request per task, after its callback");
    // A subscription to an ended task: its last status, then the end.
    let mut updates = tracker.subscribe(&ids[0]).unwrap();
    assert_eq!(updates.next().await.unwrap().status, TaskStatus::Success);
    assert!(updates.next().await.is_none());
}
