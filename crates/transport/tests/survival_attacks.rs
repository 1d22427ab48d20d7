//! Survival under the attacks an outside review wrote: a callback that comes while the POST
//! still waits for its answer, a hook or a sink that panics, a stop during a recovery, a
//! recovery asked for twice, a deadline passed and resumed. Each was a defect; each test
//! failed before its fix.
#![cfg(all(feature = "async", feature = "blocking", feature = "test-util"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gptimage_transport::test_util::{Endpoint, Scripted};
use gptimage_transport::webhook::Receiver;
use gptimage_transport::{
    Client, ErrorKind, ManyEvent, PollSchedule, Submission, Tracker, blocking,
};
use gptimage_types::GenerateRequest;

fn request() -> GenerateRequest {
    GenerateRequest::text_to_image("a fox in the snow")
        .build()
        .unwrap()
}

/// A callback that arrives while the POST is still hanging (the task was made and even ended
/// before the client gave up on the answer) is kept: recovery finds it.
#[test]
fn a_callback_during_the_hung_post_is_kept_and_recovers_the_task() {
    let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
    let config = Scripted::builder::<blocking::Client>()
        .webhooks(receiver.clone())
        .request_timeout(Duration::from_millis(800))
        .wait_timeout(Duration::from_secs(2))
        .config()
        .unwrap();
    let script = Scripted::new()
        .hung(Endpoint::Submit)
        .succeeded(["https://cdn.test/1.png"]);
    let client = blocking::Client::with_transport(config, script.clone());
    let submitting = {
        let client = client.clone();
        std::thread::spawn(move || client.submit(&request()))
    };
    while script.count(Endpoint::Submit) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The service made task-7 and called back while our POST is still waiting for its answer.
    assert!(
        script.deliver_lost_callback(&receiver, "task-7"),
        "the token is genuine"
    );
    let lost = submitting.join().unwrap().unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::OutcomeUnknown);
    // The status would confirm it (it echoes our callback URL and prompt).
    let started = Instant::now();
    let recovered = client.recover(&request(), &lost).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        recovered.is_some(),
        "the callback named task-7 before the answer was declared lost; recovery lost it"
    );
}

/// Same, through the async client's generate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_generate_recovers_from_a_callback_during_the_hung_post() {
    let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
    let config = Scripted::builder::<Client>()
        .webhooks(receiver.clone())
        .request_timeout(Duration::from_millis(800))
        .wait_timeout(Duration::from_secs(2))
        .poll(PollSchedule::fixed(Duration::from_millis(20)))
        .config()
        .unwrap();
    let script = Scripted::new()
        .hung(Endpoint::Submit)
        .succeeded(["https://cdn.test/1.png"]);
    let client = Client::with_transport(config, script.clone());
    let generating = {
        let client = client.clone();
        tokio::spawn(async move { client.generate(&request()).await })
    };
    while script.count(Endpoint::Submit) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(script.deliver_lost_callback(&receiver, "task-7"));
    let started = Instant::now();
    let result = generating.await.unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A deadline passed: subscribers' streams end, and `resume` follows the task again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_resume_after_a_deadline_follows_the_task_again_and_subscribers_end() {
    let config = Scripted::builder::<Client>()
        .wait_timeout(Duration::from_millis(300))
        .poll(PollSchedule::fixed(Duration::from_millis(20)))
        .config()
        .unwrap();
    let script = Scripted::new().created("t1").running();
    let client = Client::with_transport(config, script.clone());
    let ended = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&ended);
    let tracker = Tracker::builder(client)
        .on_ended(move |e| {
            let seen = Arc::clone(&seen);
            async move {
                assert_eq!(
                    e.result.map_err(|e| e.kind()).err(),
                    Some(ErrorKind::DeadlinePassed)
                );
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    let created = tracker.submit(&request()).await.unwrap();
    while ended.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = script.count(Endpoint::Status);
    tracker.resume([created.task_id.clone()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = script.count(Endpoint::Status);
    assert!(
        after > asked,
        "resume asked nothing: the task is not followed again"
    );
    // Once that wait ends too, a subscriber's stream ends with it: it never hangs.
    while ended.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut updates = tracker.subscribe(&created.task_id).unwrap();
    let first = updates.next().await;
    assert!(first.is_some());
    let second = tokio::time::timeout(Duration::from_millis(500), updates.next()).await;
    assert!(matches!(second, Ok(None)), "the stream ended: {second:?}");
}

/// A panicking on_submitted hook is the hook's own failure: the key's submission still made
/// its task, and a retry with the key gets it (it used to spin for ever).
#[test]
fn a_panicking_hook_changes_nothing_of_a_keyed_submission() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let script = Scripted::new().created("t1").running();
    let tracker = runtime.block_on(async {
        let client = Client::with_transport(Scripted::config(), script.clone());
        Tracker::builder(client)
            .on_submitted(|_| async { panic!("the database is down") })
            .build()
    });
    let first = runtime.block_on(tracker.submit_keyed("k", &request()));
    assert_eq!(first.as_ref().map(|c| c.task_id.as_str()).ok(), Some("t1"));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t = tracker.clone();
    let handle = runtime.handle().clone();
    std::thread::spawn(move || {
        let second = handle.block_on(t.submit_keyed("k", &request()));
        let _ = done_tx.send(second.map_err(|e| e.kind()));
    });
    let second = done_rx.recv_timeout(Duration::from_secs(3));
    assert!(
        second.is_ok(),
        "the second submit_keyed with the same key never returned"
    );
    assert!(second.unwrap().is_ok());
    assert_eq!(script.count(Endpoint::Submit), 1, "one task for one key");
}

/// A panicking on_submission sink loses its own record, never the task the caller gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_sink_loses_nothing_of_the_created_task() {
    let config = Scripted::builder::<Client>()
        .on_submission(|s| {
            if let Submission::Created { .. } = s {
                panic!("sink bug")
            }
        })
        .config()
        .unwrap();
    let script = Scripted::new().created("t1");
    let client = Client::with_transport(config, script.clone());
    let result = client.submit(&request()).await;
    assert_eq!(result.map(|c| c.task_id).ok().as_deref(), Some("t1"));
}

/// A stop during a recovery wait ends the stream at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_generate_manys_recovery_wait() {
    let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
    let config = Scripted::builder::<Client>()
        .webhooks(receiver.clone())
        .wait_timeout(Duration::from_secs(4))
        .config()
        .unwrap();
    let script = Scripted::new().dropped(Endpoint::Submit);
    let client = Client::with_transport(config, script.clone());
    let mut many = client.generate_many(vec![request()], 1);
    let stopper = many.stopper();
    while script.count(Endpoint::Submit) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stopper.stop();
    let started = Instant::now();
    while let Some(event) = many.next().await {
        if let ManyEvent::Finished { result, .. } = &event {
            assert_eq!(
                result.as_ref().map_err(|e| e.kind()).err(),
                Some(ErrorKind::OutcomeUnknown)
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the stop did not stop"
    );
}

/// A second recovery of an error already recovered answers at once, with the same task.
#[test]
fn a_recovery_asked_for_twice_gives_the_same_task_at_once() {
    let receiver = Receiver::new("https://hooks.test/gptimage/").unwrap();
    let config = Scripted::builder::<blocking::Client>()
        .webhooks(receiver.clone())
        .wait_timeout(Duration::from_secs(2))
        .config()
        .unwrap();
    let script = Scripted::new().dropped(Endpoint::Submit).running();
    let client = blocking::Client::with_transport(config, script.clone());
    let lost = client.submit(&request()).unwrap_err();
    assert!(script.deliver_lost_callback(&receiver, "task-7"));
    let first = client.recover(&request(), &lost).unwrap();
    let started = Instant::now();
    let second = client.recover(&request(), &lost).unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(first.is_some());
    assert_eq!(first.map(|t| t.task_id), second.map(|t| t.task_id));
}

/// A key names one piece of work: the same key with another request is refused, never
/// answered with the first request's task; a key of unknown outcome is released by the user's
/// word alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_names_one_request_and_an_unknown_one_is_released_only_by_the_user() {
    // The first submission's answer is lost (the next POST's connection drops after it is
    // written); the others are answered.
    let script = Scripted::new()
        .dropped(Endpoint::Submit)
        .created("t1")
        .created("t2")
        .running();
    let tracker = Tracker::new(Client::with_transport(Scripted::config(), script.clone()));
    let other = GenerateRequest::text_to_image("another picture")
        .build()
        .unwrap();
    // Its key answers "unknown", and sends nothing more.
    let lost = tracker.submit_keyed("k2", &other).await.unwrap_err();
    assert_eq!(lost.kind(), ErrorKind::OutcomeUnknown);
    let again = tracker.submit_keyed("k2", &other).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::OutcomeUnknown);
    assert_eq!(script.count(Endpoint::Submit), 1);
    let first = tracker.submit_keyed("k", &request()).await.unwrap();
    assert_eq!(first.task_id, "t1");
    let refused = tracker.submit_keyed("k", &other).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidRequest);
    assert!(refused.to_string().contains("another request"), "{refused}");
    assert_eq!(script.count(Endpoint::Submit), 2);
    // The user checked the account and found nothing: the key is theirs to use again.
    tracker.forget_key("k2");
    let fresh = tracker.submit_keyed("k2", &other).await.unwrap();
    assert_eq!(fresh.task_id, "t2");
    assert_eq!(script.count(Endpoint::Submit), 3);
}
