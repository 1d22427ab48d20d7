//! Webhooks through both clients, against the emulator's real deliveries over loopback: a
//! genuine callback ends a wait long before its next poll; a forged one is refused and changes
//! nothing; a callback's body is never believed; a lost one is covered by polling; duplicates
//! give one result.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind};
use gptimage_transport::PollSchedule;
use gptimage_transport::webhook::{Listener, Receiver};
use gptimage_types::{GenerateRequest, Quality, TaskStatus};
use support::{Driver, Settings};

both_clients!(
    a_genuine_callback_ends_the_wait_long_before_the_next_poll,
    a_forged_callback_is_refused_and_changes_nothing,
    a_callbacks_body_is_never_believed,
    a_lost_callback_is_covered_by_polling,
    duplicate_callbacks_give_one_result,
    a_callback_that_comes_before_the_wait_ends_its_first_pause,
    a_deadline_shorter_than_the_fallback_still_asks_for_the_status,
);

fn request(prompt: &str) -> GenerateRequest {
    GenerateRequest::text_to_image(prompt)
        .quality(Quality::Low)
        .build()
        .unwrap()
}

/// An emulator whose tasks run for `running`, a receiver listening on loopback, and a client
/// that polls every `poll` and waits at most 15 s.
fn setup<D: Driver>(
    running: Duration,
    poll: Duration,
    faults: &[Fault],
) -> (Emulator, Listener, D) {
    let mut config = Config::instant().with_timings(Duration::ZERO, running);
    for fault in faults {
        config = config.with_fault(fault.clone());
    }
    let emulator = Emulator::spawn(config).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = Receiver::new(&format!("http://127.0.0.1:{port}/hooks/")).unwrap();
    let listener = receiver.listen(("127.0.0.1", port)).unwrap();
    let mut settings = Settings::new(emulator.base_url(), emulator.api_key());
    settings.poll = PollSchedule::fixed(poll);
    settings.wait_timeout = Duration::from_secs(15);
    settings.webhooks = Some(receiver);
    (emulator, listener, D::connect(&settings).unwrap())
}

/// Waits (at most 5 s) until `done` holds.
fn eventually(mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(5), "not within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// POSTs `body` to `path` on `addr`; the answer's status.
fn post(addr: SocketAddr, path: &str, body: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer[9..12].parse().unwrap()
}

/// The path of the callback URL a task was submitted with.
fn callback_path(emulator: &Emulator, task_id: &str) -> String {
    let request = emulator.task_request(task_id).unwrap();
    let url = request
        .callback_url()
        .expect("the client gave the task a callback URL");
    url.split_once("/hooks/")
        .map(|(_, token)| format!("/hooks/{token}"))
        .unwrap()
}

fn a_genuine_callback_ends_the_wait_long_before_the_next_poll<D: Driver>() {
    let (emulator, _listener, client) =
        setup::<D>(Duration::from_millis(800), Duration::from_secs(20), &[]);
    let started = Instant::now();
    let task = client.generate(&request("called back")).unwrap();
    let took = started.elapsed();
    assert_eq!(task.status, TaskStatus::Success);
    assert!(
        took < Duration::from_secs(5),
        "a 20 s poll interval, done in {took:?}"
    );
    // The emulator counts a delivery once it reads the receiver's answer, which may be after
    // the wait has ended.
    eventually(|| emulator.counters().webhooks_delivered == 1);
    let counters = emulator.counters();
    assert!(
        counters.status_requests <= 3,
        "{} status requests",
        counters.status_requests
    );
}

fn a_forged_callback_is_refused_and_changes_nothing<D: Driver>() {
    let (emulator, listener, client) =
        setup::<D>(Duration::from_secs(2), Duration::from_secs(20), &[]);
    let created = client.submit(&request("forged")).unwrap();
    let genuine = callback_path(&emulator, &created.task_id);
    let waiting = {
        let (client, id) = (client.clone(), created.task_id.clone());
        std::thread::spawn(move || client.wait(&id))
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = emulator.counters().status_requests;
    let mut forged = genuine.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(post(listener.local_addr(), &forged, "{}"), 404);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        emulator.counters().status_requests,
        before,
        "no status request for a forgery"
    );
    let task = waiting.join().unwrap().unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Success,
        "the genuine callback still ends it"
    );
}

fn a_callbacks_body_is_never_believed<D: Driver>() {
    // A host that must never be asked for anything.
    let evil = TcpListener::bind("127.0.0.1:0").unwrap();
    let evil_addr = evil.local_addr().unwrap();
    let evil_hits = Arc::new(AtomicUsize::new(0));
    let hits = evil_hits.clone();
    std::thread::spawn(move || {
        for stream in evil.incoming().take(10) {
            hits.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let (emulator, listener, client) =
        setup::<D>(Duration::from_secs(2), Duration::from_secs(20), &[]);
    let created = client.submit(&request("believed?")).unwrap();
    let path = callback_path(&emulator, &created.task_id);
    let waiting = {
        let (client, id) = (client.clone(), created.task_id.clone());
        std::thread::spawn(move || {
            let task = client.wait(&id)?;
            client.download(&task).map(|images| (task, images))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let lie = format!(
        r#"{{"code":200,"data":{{"task_id":"{}","status":"SUCCESS","response":["http://{evil_addr}/evil.png"]}}}}"#,
        created.task_id
    );
    let before = emulator.counters().status_requests;
    assert_eq!(
        post(listener.local_addr(), &path, &lie),
        200,
        "a genuine token is accepted"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        emulator.counters().status_requests,
        before + 1,
        "the hint is confirmed by one status request, which says the task still runs"
    );
    assert!(!waiting.is_finished(), "the body's claim ended nothing");
    let (task, images) = waiting.join().unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert!(
        images[0].url.starts_with(emulator.origin()),
        "{}",
        images[0].url
    );
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "the body's URL was never fetched"
    );
}

fn a_lost_callback_is_covered_by_polling<D: Driver>() {
    let lost = Fault::new(FaultKind::DropConnection).on(Endpoint::Webhook);
    let (emulator, _listener, client) = setup::<D>(
        Duration::from_millis(300),
        Duration::from_millis(200),
        &[lost],
    );
    let task = client.generate(&request("lost in the post")).unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert_eq!(emulator.counters().webhooks_dropped, 1);
}

fn duplicate_callbacks_give_one_result<D: Driver>() {
    let echo = Fault::new(FaultKind::Duplicate(4)).on(Endpoint::Webhook);
    let (emulator, _listener, client) =
        setup::<D>(Duration::from_millis(500), Duration::from_secs(20), &[echo]);
    let started = Instant::now();
    let task = client.generate(&request("echo")).unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Let every duplicate land: none of them starts anything.
    eventually(|| emulator.counters().webhooks_delivered == 5);
    std::thread::sleep(Duration::from_millis(100));
    let counters = emulator.counters();
    assert!(
        counters.status_requests <= 3,
        "{} status requests",
        counters.status_requests
    );
}

/// A client with the default schedule (so, with webhooks, the 20 s fallback) and a wait
/// deadline of `deadline`, against an emulator whose tasks run for `running`.
fn setup_default_poll<D: Driver>(
    running: Duration,
    deadline: Duration,
    faults: &[Fault],
) -> (Emulator, Listener, D) {
    let mut config = Config::instant().with_timings(Duration::ZERO, running);
    for fault in faults {
        config = config.with_fault(fault.clone());
    }
    let emulator = Emulator::spawn(config).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = Receiver::new(&format!("http://127.0.0.1:{port}/hooks/")).unwrap();
    let listener = receiver.listen(("127.0.0.1", port)).unwrap();
    let mut settings = Settings::new(emulator.base_url(), emulator.api_key());
    settings.default_poll = true;
    settings.wait_timeout = deadline;
    settings.webhooks = Some(receiver);
    (emulator, listener, D::connect(&settings).unwrap())
}

fn a_callback_that_comes_before_the_wait_ends_its_first_pause<D: Driver>() {
    // As the docs advise: submit, store the id, then wait. The callback comes in between.
    let (emulator, _listener, client) =
        setup_default_poll::<D>(Duration::from_millis(100), Duration::from_secs(60), &[]);
    let created = client.submit(&request("early bird")).unwrap();
    eventually(|| emulator.counters().webhooks_delivered == 1);
    let started = Instant::now();
    let task = client.wait(&created.task_id).unwrap();
    let took = started.elapsed();
    assert_eq!(task.status, TaskStatus::Success);
    assert!(
        took < Duration::from_secs(2),
        "a 20 s fallback, done in {took:?}"
    );
}

fn a_deadline_shorter_than_the_fallback_still_asks_for_the_status<D: Driver>() {
    // The callback is lost; the task ends after 0.5 s; the wait may last 2 s, the fallback
    // poll would come after 20 s.
    let lost = Fault::new(FaultKind::DropConnection).on(Endpoint::Webhook);
    let (emulator, _listener, client) =
        setup_default_poll::<D>(Duration::from_millis(500), Duration::from_secs(2), &[lost]);
    let started = Instant::now();
    let task = client.generate(&request("short deadline")).unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(emulator.counters().status_requests >= 1);
}
