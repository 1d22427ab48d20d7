//! What services expect of the SDK, through both clients against the emulator: watching a
//! task's changes, a generation that reports its task id before it waits, many tasks at once
//! with a bound and a clean stop, and per-call options that share the client's pacer.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::{CallOptions, ErrorKind, ManyEvent, PollSchedule, Rate, RetryPolicy};
use gptimage_types::{GenerateRequest, Quality};
use support::{Driver, Settings};

both_clients!(
    a_watch_reports_each_change_once_and_ends_with_the_terminal_status,
    a_watch_reports_a_failed_task_as_its_last_status,
    a_watch_ends_at_its_deadline_and_on_a_bad_task_id,
    generate_with_reports_the_task_id_before_it_waits,
    generate_many_bounds_what_is_in_flight_and_reports_every_request,
    a_stop_submits_nothing_new_and_every_submission_sent_reports,
    per_call_options_change_one_call_and_share_the_pacer,
);

fn request(prompt: &str) -> GenerateRequest {
    GenerateRequest::text_to_image(prompt)
        .quality(Quality::Low)
        .build()
        .unwrap()
}

/// An emulator whose tasks are pending for `pending`, then running for `running`, and a
/// client that polls every 50 ms.
fn setup<D: Driver>(pending: Duration, running: Duration) -> (Emulator, D) {
    let emulator = Emulator::spawn(Config::instant().with_timings(pending, running)).unwrap();
    let mut settings = Settings::new(emulator.base_url(), emulator.api_key());
    settings.poll = PollSchedule::fixed(Duration::from_millis(50));
    (emulator, D::connect(&settings).unwrap())
}

fn statuses(steps: &[Result<gptimage_types::TaskInfo, gptimage_transport::Error>]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s {
            Ok(info) => info.status.to_string(),
            Err(e) => format!("error {:?}", e.kind()),
        })
        .collect()
}

fn a_watch_reports_each_change_once_and_ends_with_the_terminal_status<D: Driver>() {
    let (emulator, client) = setup::<D>(Duration::from_millis(400), Duration::from_millis(400));
    let task = client.submit(&request("a watched kettle")).unwrap();
    let steps = client.watch(&task.task_id);
    assert_eq!(
        statuses(&steps),
        ["PENDING", "IN_PROGRESS", "SUCCESS"],
        "each change once"
    );
    let polls = emulator.counters().status_requests;
    assert!(polls > 6, "it polled {polls} times but reported 3 changes");
    let last = steps.last().unwrap().as_ref().unwrap();
    assert!(
        !last.images().is_empty(),
        "the terminal status has the images"
    );
}

fn a_watch_reports_a_failed_task_as_its_last_status<D: Driver>() {
    let (_emulator, client) = setup::<D>(Duration::ZERO, Duration::from_millis(200));
    let task = client.submit(&request("a policy-violation")).unwrap();
    let steps = client.watch(&task.task_id);
    let shown = statuses(&steps);
    assert_eq!(
        shown.last().map(String::as_str),
        Some("FAILED"),
        "{shown:?}"
    );
    assert!(steps.iter().all(Result::is_ok), "{shown:?}");
}

fn a_watch_ends_at_its_deadline_and_on_a_bad_task_id<D: Driver>() {
    let (emulator, client) = setup::<D>(Duration::ZERO, Duration::from_secs(60));
    let client = client
        .with_options(&CallOptions::new().wait_timeout(Duration::from_millis(600)))
        .unwrap();
    let task = client.submit(&request("a slow one")).unwrap();
    let started = Instant::now();
    let steps = client.watch(&task.task_id);
    assert!(started.elapsed() < Duration::from_secs(3));
    let shown = statuses(&steps);
    assert_eq!(shown.last().unwrap(), "error DeadlinePassed", "{shown:?}");
    assert_eq!(
        shown[shown.len() - 2],
        "IN_PROGRESS",
        "the changes, then the deadline: {shown:?}"
    );
    assert!(shown.len() <= 3, "each change once: {shown:?}");
    let error = steps.last().unwrap().as_ref().unwrap_err();
    assert_eq!(error.task_id(), Some(task.task_id.as_str()));
    // A task id that cannot be asked for is one error, and no request.
    let before = emulator.counters().status_requests;
    let steps = client.watch("");
    assert_eq!(steps.len(), 1);
    assert!(steps[0].is_err());
    assert_eq!(emulator.counters().status_requests, before);
}

fn generate_with_reports_the_task_id_before_it_waits<D: Driver>() {
    let (emulator, client) = setup::<D>(Duration::from_millis(200), Duration::from_millis(200));
    let (seen, end) = client.generate_with(&request("a reported fox"));
    let task = end.unwrap();
    assert_eq!(
        seen,
        [
            format!("submitted {}", task.task_id),
            "changed PENDING".to_owned(),
            "changed IN_PROGRESS".to_owned(),
            "changed SUCCESS".to_owned(),
        ]
    );
    assert_eq!(emulator.counters().generate_requests, 1);
    // A failed task is an error, as with `generate`, after its id was reported.
    let (seen, end) = client.generate_with(&request("a policy-violation"));
    let error = end.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TaskFailed);
    assert!(seen[0].starts_with("submitted "), "{seen:?}");
    assert_eq!(seen.last().unwrap(), "changed FAILED");
    assert_eq!(
        error.task_id(),
        seen[0].strip_prefix("submitted "),
        "the error names the task"
    );
}

fn generate_many_bounds_what_is_in_flight_and_reports_every_request<D: Driver>() {
    let (emulator, client) = setup::<D>(Duration::ZERO, Duration::from_millis(300));
    let mut requests: Vec<_> = (0..9).map(|i| request(&format!("bird {i}"))).collect();
    requests.insert(4, request("a policy-violation"));
    let events = client.generate_many(requests, 3, None);
    let (mut in_flight, mut most) = (0usize, 0usize);
    let mut submitted = BTreeMap::new();
    let mut finished = BTreeMap::new();
    for event in &events {
        match event {
            ManyEvent::Submitted { index, task_id } => {
                assert!(submitted.insert(*index, task_id.clone()).is_none());
                in_flight += 1;
                most = most.max(in_flight);
            }
            ManyEvent::Finished { index, result } => {
                assert!(submitted.contains_key(index), "submitted before finished");
                assert!(finished.insert(*index, result.is_ok()).is_none());
                in_flight -= 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(finished.len(), 10, "every request reported once");
    assert_eq!(
        finished
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(i, _)| *i)
            .collect::<Vec<_>>(),
        [4],
        "the failing one is the one at index 4"
    );
    assert!(most <= 3, "at most 3 in flight, saw {most}");
    assert!(most >= 2, "ran side by side");
    assert_eq!(emulator.counters().generate_requests, 10, "each paid once");
}

fn a_stop_submits_nothing_new_and_every_submission_sent_reports<D: Driver>() {
    let (emulator, client) = setup::<D>(Duration::ZERO, Duration::from_secs(30));
    let requests: Vec<_> = (0..20).map(|i| request(&format!("long {i}"))).collect();
    let started = Instant::now();
    let events = client.generate_many(requests, 4, Some(2));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the stop ended it: {took:?}"
    );
    let posts = emulator.counters().generate_requests;
    let submitted: BTreeSet<usize> = events
        .iter()
        .filter_map(|e| match e {
            ManyEvent::Submitted { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    let stopped: BTreeSet<usize> = events
        .iter()
        .filter_map(|e| match e {
            ManyEvent::Stopped { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(
        submitted.len() as u64,
        posts,
        "every submission sent reported its task id"
    );
    assert!(posts <= 4, "nothing new after the stop: {posts} sent");
    assert_eq!(
        stopped, submitted,
        "each wait ended at the stop with its task id"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ManyEvent::Finished { .. })),
        "{events:?}"
    );
}

fn per_call_options_change_one_call_and_share_the_pacer<D: Driver>() {
    let emulator = Emulator::spawn(
        Config::instant()
            .with_timings(Duration::ZERO, Duration::from_secs(60))
            .with_bare_rate_limit(1, Duration::from_secs(30)),
    )
    .unwrap();
    let mut settings = Settings::new(emulator.base_url(), emulator.api_key());
    settings.rate = Some(Rate::new(10, Duration::from_secs(1)));
    settings.retry = RetryPolicy::default()
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .max_rate_limited(0);
    let client = D::connect(&settings).unwrap();
    let impatient = client
        .with_options(
            &CallOptions::new()
                .wait_timeout(Duration::from_millis(300))
                .poll(PollSchedule::fixed(Duration::from_millis(50))),
        )
        .unwrap();
    // The per-call wait ends at its own deadline; the client's own is 20 s.
    let task = impatient.submit(&request("a slow task")).unwrap();
    let started = Instant::now();
    let error = impatient.wait(&task.task_id).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DeadlinePassed);
    assert!(started.elapsed() < Duration::from_secs(3));
    // The service pushes back on the client's next submission: the pacer both share slowed.
    assert_eq!(impatient.pacing().pushbacks, 0);
    let refused = client.submit(&request("one too many")).unwrap_err();
    assert_eq!(refused.http_status(), Some(429), "{refused}");
    assert_eq!(impatient.pacing().pushbacks, 1, "one pacer");
    assert_eq!(client.pacing(), impatient.pacing());
    // Options are checked as the builder checks them.
    let error = client
        .with_options(&CallOptions::new().request_timeout(Duration::ZERO))
        .unwrap_err();
    assert!(error.to_string().contains("request timeout"), "{error}");
}
