//! Tests of the core, without IO and without sleeping: the never-pay-twice table over every kind
//! of answer, and the machines step by step with the time as an argument.

use std::time::{Duration, Instant};

use gptimage_types::{ApiCode, GenerateRequest, TaskInfo, TaskStatus};
use http::HeaderMap;

use super::answer::{self, Came, Judged, judge, read_status, read_submit, sniff_image};
use super::machine::{CallMachine, DownloadMachine, Machine, Next, WaitMachine};
use super::request::Call;
use super::schedule::{Jitter, backoff, retry_after};
use crate::config::{ClientBuilder, Config, PollSchedule, RetryPolicy};
use crate::error::{ErrorKind, RequestSent, Result, TransportError, TransportErrorKind};
use crate::transport::HttpResponse;

struct Nothing;
impl crate::config::sealed::Sealed for Nothing {}
impl crate::config::FromConfig for Nothing {
    fn from_config(_: Config) -> Result<Self> {
        Ok(Nothing)
    }
}

/// A client configuration for tests: a remote API, a 60 s wait, 5 s to 10 s polls.
pub(crate) fn config() -> Config {
    builder().config().unwrap()
}

fn builder() -> ClientBuilder<Nothing> {
    ClientBuilder::<Nothing>::new()
        .api_key("sk-secret-key")
        .base_url("https://api.example/api")
        .wait_timeout(Duration::from_secs(60))
}

fn answer(
    status: u16,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::result::Result<HttpResponse, TransportError> {
    let mut response = http::Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    Ok(response.body(body.to_vec()).unwrap())
}

fn broken(
    kind: TransportErrorKind,
    sent: RequestSent,
) -> std::result::Result<HttpResponse, TransportError> {
    Err(TransportError::new(kind, sent, "boom"))
}

fn status_body(status: &str) -> Vec<u8> {
    serde_json::to_vec(&gptimage_types::StatusResponse::success(TaskInfo::new(
        "t1",
        TaskStatus::parse(status),
    )))
    .unwrap()
}

fn submit_call(config: &Config) -> Call {
    let request = GenerateRequest::text_to_image("a cat").build().unwrap();
    Call::submit(config, &request, None)
}

/// (retried, error kind, retry-after) of a failed attempt.
fn judged<T: std::fmt::Debug>(call: &Call, came: Came<T>) -> (bool, ErrorKind, Option<Duration>) {
    match judge(call, came) {
        Judged::Retry {
            error, retry_after, ..
        } => (true, error.kind(), retry_after),
        Judged::Fail(error) => (false, error.kind(), error.retry_after()),
        Judged::Done(v) => panic!("expected a failure, got {v:?}"),
    }
}

#[test]
fn which_submission_failures_are_retried() {
    let config = config();
    let call = submit_call(&config);
    let envelope_500 = br#"{"code":500,"message":"Internal Server Error","data":null}"#;
    let envelope_400 =
        br#"{"code":400,"message":"Bad Request: 'prompt' is required.","data":null}"#;
    let cases: Vec<(
        std::result::Result<HttpResponse, TransportError>,
        bool,
        ErrorKind,
    )> = vec![
        // Cannot have created a task: retried.
        (
            broken(TransportErrorKind::Connect, RequestSent::No),
            true,
            ErrorKind::Transport,
        ),
        (answer(500, envelope_500, &[]), true, ErrorKind::Api),
        (answer(200, envelope_500, &[]), true, ErrorKind::Api),
        (
            answer(429, b"", &[("retry-after", "3")]),
            true,
            ErrorKind::Api,
        ),
        (
            answer(429, br#"{"code":429,"message":"slow","data":null}"#, &[]),
            true,
            ErrorKind::Api,
        ),
        // Refused: not retried, nothing was created.
        (answer(400, envelope_400, &[]), false, ErrorKind::Api),
        (answer(200, envelope_400, &[]), false, ErrorKind::Api),
        (
            answer(
                401,
                br#"{"code":401,"message":"Unauthorized","data":null}"#,
                &[],
            ),
            false,
            ErrorKind::Api,
        ),
        (
            answer(
                402,
                br#"{"code":402,"message":"Insufficient credits","data":null}"#,
                &[],
            ),
            false,
            ErrorKind::Api,
        ),
        (
            answer(403, b"<html>forbidden</html>", &[]),
            false,
            ErrorKind::Api,
        ),
        (
            answer(302, b"", &[("location", "https://evil.example/")]),
            false,
            ErrorKind::InvalidResponse,
        ),
        // May have created a task: never retried, and said so.
        (
            broken(TransportErrorKind::Timeout, RequestSent::Maybe),
            false,
            ErrorKind::OutcomeUnknown,
        ),
        (
            broken(TransportErrorKind::Reset, RequestSent::Maybe),
            false,
            ErrorKind::OutcomeUnknown,
        ),
        (
            broken(TransportErrorKind::BodyTooLarge, RequestSent::Maybe),
            false,
            ErrorKind::OutcomeUnknown,
        ),
        (
            answer(502, b"<html>Bad Gateway</html>", &[]),
            false,
            ErrorKind::OutcomeUnknown,
        ),
        (answer(504, b"", &[]), false, ErrorKind::OutcomeUnknown),
        (answer(500, b"oops", &[]), false, ErrorKind::OutcomeUnknown),
        (answer(200, b"", &[]), false, ErrorKind::OutcomeUnknown),
        (
            answer(200, b"{\"code\":200,\"data\":{\"task", &[]),
            false,
            ErrorKind::OutcomeUnknown,
        ),
        (
            answer(200, br#"{"code":200,"data":null}"#, &[]),
            false,
            ErrorKind::OutcomeUnknown,
        ),
    ];
    for (i, (result, retried, kind)) in cases.into_iter().enumerate() {
        let (r, k, _) = judged(&call, read_submit(&call, &config, result));
        assert_eq!((r, k), (retried, kind), "case {i}");
    }
}

#[test]
fn status_failures_are_retried_freely() {
    let config = config();
    let call = Call::status(&config, "t1").unwrap();
    for result in [
        broken(TransportErrorKind::Timeout, RequestSent::Maybe),
        broken(TransportErrorKind::Reset, RequestSent::Maybe),
        broken(TransportErrorKind::Connect, RequestSent::No),
        answer(502, b"<html>", &[]),
        answer(503, b"", &[]),
        answer(500, br#"{"code":500,"message":"x","data":null}"#, &[]),
        answer(429, b"", &[]),
        answer(200, b"garbage", &[]),
        answer(200, br#"{"code":200,"data":null}"#, &[]),
    ] {
        let (retried, _, _) = judged(&call, read_status(&call, &config, result));
        assert!(retried);
    }
    let not_found = answer(
        404,
        br#"{"code":404,"message":"Not Found","data":null}"#,
        &[],
    );
    let (retried, kind, _) = judged(&call, read_status(&call, &config, not_found));
    assert_eq!((retried, kind), (false, ErrorKind::Api));
    match judge(
        &call,
        read_status(&call, &config, answer(200, &status_body("SUCCESS"), &[])),
    ) {
        Judged::Done(info) => assert_eq!(info.status, TaskStatus::Success),
        other => panic!("{other:?}"),
    }
}

#[test]
fn download_failures() {
    let config = config();
    let call = Call::download("https://cdn.example/a.png").unwrap();
    let read = |result| answer::read_download(&call, &config, result);
    for (result, retried) in [
        (broken(TransportErrorKind::Reset, RequestSent::Maybe), true),
        (broken(TransportErrorKind::Connect, RequestSent::No), true),
        (
            broken(TransportErrorKind::BodyTooLarge, RequestSent::Maybe),
            false,
        ),
        (answer(503, b"", &[]), true),
        (answer(429, b"", &[]), true),
        (answer(404, b"", &[]), false),
        (answer(200, b"<html>not an image</html>", &[]), false),
    ] {
        let (r, kind, _) = judged(&call, read(result));
        assert_eq!((r, kind), (retried, ErrorKind::Download));
    }
}

#[test]
fn api_errors_keep_code_status_message_and_retry_after() {
    let config = config();
    let call = submit_call(&config);
    let slow = answer(
        429,
        br#"{"code":429,"message":"slow down","data":null}"#,
        &[("retry-after", "7")],
    );
    let (_, _, retry_after) = judged(&call, read_submit(&call, &config, slow));
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    let broke = answer(
        200,
        br#"{"code":402,"message":"Insufficient credits","data":null}"#,
        &[],
    );
    let Judged::Fail(err) = judge(&call, read_submit(&call, &config, broke)) else {
        panic!()
    };
    assert_eq!(err.code(), Some(402));
    assert_eq!(err.api_code(), Some(ApiCode::InsufficientCredits));
    assert_eq!(err.http_status(), Some(200));
    assert_eq!(err.server_message(), Some("Insufficient credits"));
    assert!(err.to_string().contains("out of credits"), "{err}");
}

#[test]
fn excerpts_are_bounded_and_never_show_the_key() {
    let config = config();
    let call = Call::status(&config, "t1").unwrap();
    let body = format!("<html>{} sk-secret-key</html>", "x".repeat(1000));
    let Judged::Retry { error, .. } = judge(
        &call,
        read_status(&call, &config, answer(200, body.as_bytes(), &[])),
    ) else {
        panic!()
    };
    assert!(error.body_excerpt().unwrap().chars().count() <= 201);
    let echo = "sk-secret-key".repeat(3);
    let Judged::Retry { error, .. } = judge(
        &call,
        read_status(&call, &config, answer(500, echo.as_bytes(), &[])),
    ) else {
        panic!()
    };
    let all = format!("{error} {error:?}");
    assert!(!all.contains("sk-secret-key"), "{all}");
}

#[test]
fn backoff_doubles_with_jitter_and_a_cap() {
    let policy = RetryPolicy::default();
    for (retries, low, high) in [(0, 0.25, 0.5), (1, 0.5, 1.0), (2, 1.0, 2.0), (10, 4.0, 8.0)] {
        for jitter in [0.0, 0.5, 0.999] {
            let d = backoff(&policy, retries, jitter).as_secs_f64();
            assert!((low..=high).contains(&d), "{retries} {jitter} {d}");
        }
    }
    let mut jitter = Jitter::new(7);
    let values: Vec<f64> = (0..100).map(|_| jitter.next()).collect();
    assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
    assert!(values.windows(2).all(|w| w[0] != w[1]));
    assert_eq!(
        Jitter::new(7).next(),
        values[0],
        "a seed repeats its sequence"
    );
}

#[test]
fn retry_after_forms() {
    let headers = |pairs: &[(&str, &str)]| {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    };
    assert_eq!(
        retry_after(&headers(&[("retry-after", "12")])),
        Some(Duration::from_secs(12))
    );
    let dated = headers(&[
        ("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT"),
        ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]);
    assert_eq!(retry_after(&dated), Some(Duration::from_secs(30)));
    // The three forms of RFC 9110 §5.6.7, in either header.
    for (after, date) in [
        (
            "Sunday, 06-Nov-94 08:50:07 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT",
        ),
        ("Sun Nov  6 08:50:07 1994", "Sunday, 06-Nov-94 08:49:37 GMT"),
        ("Sun, 06 Nov 1994 08:50:07 GMT", "Sun Nov  6 08:49:37 1994"),
    ] {
        let dated = headers(&[("retry-after", after), ("date", date)]);
        assert_eq!(
            retry_after(&dated),
            Some(Duration::from_secs(30)),
            "{after} / {date}"
        );
    }
    // A date already past is no wait at all.
    let past = headers(&[
        ("retry-after", "Sun, 06 Nov 1994 08:49:00 GMT"),
        ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]);
    assert_eq!(retry_after(&past), Some(Duration::ZERO));
    assert_eq!(
        retry_after(&headers(&[(
            "retry-after",
            "Sun, 06 Nov 1994 08:50:07 GMT"
        )])),
        None
    );
    assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
    assert_eq!(retry_after(&headers(&[])), None);
}

#[test]
fn images_are_recognised() {
    assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("png"));
    assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("jpg"));
    assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
    assert_eq!(sniff_image(b"<html>"), None);
    assert_eq!(sniff_image(b""), None);
}

// The machines, step by step. `t(s)` is `s` seconds after a fixed start.

fn at(start: Instant, seconds: f64) -> Instant {
    start + Duration::from_secs_f64(seconds)
}

/// The timeout of the request the machine asks to send now.
fn sends<M: Machine>(machine: &mut M, now: Instant) -> (http::Request<Vec<u8>>, Duration) {
    match machine.poll(now) {
        Next::Send(request, options, _) => (request, options.timeout),
        Next::SleepUntil(until) => panic!("expected a send, got a sleep until {until:?}"),
        Next::Done(result) => panic!("expected a send, got the end: {:?}", result.err()),
    }
}

fn sleeps<M: Machine>(machine: &mut M, now: Instant) -> Instant {
    match machine.poll(now) {
        Next::SleepUntil(until) => until,
        Next::Send(request, ..) => panic!("expected a sleep, got a send to {}", request.uri()),
        Next::Done(result) => panic!("expected a sleep, got the end: {:?}", result.err()),
    }
}

fn ends<M: Machine>(machine: &mut M, now: Instant) -> Result<M::Output> {
    match machine.poll(now) {
        Next::Done(result) => result,
        Next::SleepUntil(until) => panic!("expected the end, got a sleep until {until:?}"),
        Next::Send(request, ..) => panic!("expected the end, got a send to {}", request.uri()),
    }
}

const SERVER_ERROR: &[u8] = br#"{"code":500,"message":"x","data":null}"#;

#[test]
fn a_call_retries_within_its_budget_with_backoff() {
    let config = config(); // 2 retries, 0.5 s doubling
    let start = Instant::now();
    let mut call = CallMachine::status(&config, "t1", 1).unwrap();
    let (_, timeout) = sends(&mut call, start);
    assert_eq!(
        timeout, config.request_timeout,
        "no deadline: the full request timeout"
    );
    call.handle(start, answer(500, SERVER_ERROR, &[]));
    let first = sleeps(&mut call, start) - start;
    assert!((0.25..=0.5).contains(&first.as_secs_f64()), "{first:?}");
    assert_eq!(
        sleeps(&mut call, at(start, 0.1)) - start,
        first,
        "not before its time"
    );
    sends(&mut call, start + first);
    call.handle(start + first, answer(500, SERVER_ERROR, &[]));
    let second = sleeps(&mut call, start + first) - (start + first);
    assert!((0.5..=1.0).contains(&second.as_secs_f64()), "{second:?}");
    sends(&mut call, at(start, 2.0));
    call.handle(at(start, 2.0), answer(500, SERVER_ERROR, &[]));
    let error = ends(&mut call, at(start, 2.0)).unwrap_err();
    assert_eq!(error.code(), Some(500), "the budget (2 retries) is spent");
}

#[test]
fn retry_after_is_honoured_up_to_its_cap() {
    let config = config();
    let start = Instant::now();
    let mut call = CallMachine::status(&config, "t1", 1).unwrap();
    sends(&mut call, start);
    call.handle(start, answer(429, b"", &[("retry-after", "30")]));
    assert_eq!(sleeps(&mut call, start), at(start, 30.0));
    sends(&mut call, at(start, 30.0));
    call.handle(at(start, 30.0), answer(429, b"", &[("retry-after", "121")]));
    let error = ends(&mut call, at(start, 30.0)).unwrap_err();
    assert_eq!(
        error.retry_after(),
        Some(Duration::from_secs(121)),
        "not waited out"
    );
}

#[test]
fn a_submission_that_may_have_arrived_is_never_sent_again() {
    let config = config();
    let request = GenerateRequest::text_to_image("a cat").build().unwrap();
    let start = Instant::now();
    let pacer = std::sync::Mutex::new(super::pace::Pacer::new(None));
    let mut call = CallMachine::submit(&config, &request, None, &pacer, 1);
    let (sent, _) = sends(&mut call, start);
    assert_eq!(sent.method(), http::Method::POST);
    call.handle(
        at(start, 5.0),
        broken(TransportErrorKind::Timeout, RequestSent::Maybe),
    );
    let error = ends(&mut call, at(start, 5.0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
    // Polling again, however often, never sends it again.
    assert!(matches!(call.poll(at(start, 6.0)), Next::Done(Err(_))));
}

fn wait_config(wait: f64, poll: f64) -> Config {
    builder()
        .wait_timeout(Duration::from_secs_f64(wait))
        .poll(PollSchedule::fixed(Duration::from_secs_f64(poll)))
        .config()
        .unwrap()
}

#[test]
fn the_deadline_cuts_a_requests_timeout_and_a_sleep_short() {
    let config = wait_config(2.0, 1.0); // request timeout 60 s, deadline 2 s
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut wait = WaitMachine::new(&config, "t1", 1, |info: &TaskInfo| {
        seen.push(info.status.clone())
    })
    .unwrap();
    let (request, timeout) = sends(&mut wait, start);
    assert!(request.uri().to_string().ends_with("/status?task_id=t1"));
    assert_eq!(
        timeout,
        Duration::from_secs(2),
        "the first poll may take what is left"
    );
    wait.handle(
        at(start, 0.2),
        answer(200, &status_body("IN_PROGRESS"), &[]),
    );
    assert_eq!(
        sleeps(&mut wait, at(start, 0.2)),
        at(start, 1.2),
        "the poll interval"
    );
    let (_, timeout) = sends(&mut wait, at(start, 1.2));
    assert_eq!(timeout, Duration::from_secs_f64(0.8), "cut to the deadline");
    wait.handle(at(start, 1.5), answer(200, &status_body("PENDING"), &[]));
    assert_eq!(
        sleeps(&mut wait, at(start, 1.5)),
        at(start, 2.0),
        "never past the deadline"
    );
    let error = ends(&mut wait, at(start, 2.0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DeadlinePassed);
    assert_eq!(error.task_id(), Some("t1"));
    drop(wait);
    assert_eq!(seen, [TaskStatus::InProgress, TaskStatus::Pending]);
}

#[test]
fn a_status_request_hanging_past_the_deadline_ends_the_wait_on_time() {
    let config = wait_config(2.0, 1.0);
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
    let (_, timeout) = sends(&mut wait, start);
    assert_eq!(timeout, Duration::from_secs(2));
    // The transport gives up at the timeout the machine set: the deadline.
    wait.handle(
        at(start, 2.0),
        broken(TransportErrorKind::Timeout, RequestSent::Maybe),
    );
    let error = ends(&mut wait, at(start, 2.0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DeadlinePassed);
    assert_eq!(error.task_id(), Some("t1"));
}

#[test]
fn a_retry_pause_past_the_deadline_is_cut_to_it() {
    let config = wait_config(2.0, 1.0);
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
    sends(&mut wait, start);
    wait.handle(at(start, 0.5), answer(429, b"", &[("retry-after", "10")]));
    assert_eq!(sleeps(&mut wait, at(start, 0.5)), at(start, 2.0));
    let error = ends(&mut wait, at(start, 2.0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DeadlinePassed);
}

#[test]
fn a_wait_ends_on_success_on_failure_and_goes_on_through_unknown_statuses() {
    let config = wait_config(60.0, 5.0);
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
    sends(&mut wait, start);
    wait.handle(start, answer(200, &status_body("REVIEWING"), &[]));
    assert_eq!(
        sleeps(&mut wait, start),
        at(start, 5.0),
        "an unknown status keeps waiting"
    );
    sends(&mut wait, at(start, 5.0));
    wait.handle(at(start, 5.0), answer(200, &status_body("SUCCESS"), &[]));
    assert_eq!(
        ends(&mut wait, at(start, 5.0)).unwrap().status,
        TaskStatus::Success
    );

    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
    sends(&mut wait, start);
    let failed = br#"{"code":200,"data":{"task_id":"t1","status":"FAILED","error_message":"Content policy violation detected"}}"#;
    wait.handle(start, answer(200, failed, &[]));
    let error = ends(&mut wait, start).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TaskFailed);
    assert_eq!(
        error.server_message(),
        Some("Content policy violation detected")
    );
    assert_eq!(error.task_id(), Some("t1"));

    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
    sends(&mut wait, start);
    wait.handle(
        start,
        answer(
            404,
            br#"{"code":404,"message":"Not Found","data":null}"#,
            &[],
        ),
    );
    let error = ends(&mut wait, start).unwrap_err();
    assert_eq!(
        (error.kind(), error.task_id()),
        (ErrorKind::Api, Some("t1"))
    );
}

#[test]
fn downloads_follow_redirects_without_the_key_and_not_forever() {
    let config = config();
    let start = Instant::now();
    let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
    let mut download = DownloadMachine::new(&config, "https://api.example/files/a.png", 1).unwrap();
    let (first, _) = sends(&mut download, start);
    assert!(first.headers().get("authorization").is_none());
    download.handle(
        start,
        answer(302, b"", &[("location", "https://cdn.example/b.png")]),
    );
    let (second, _) = sends(&mut download, start);
    assert_eq!(second.uri(), "https://cdn.example/b.png");
    assert!(second.headers().get("authorization").is_none());
    download.handle(start, answer(200, &png, &[]));
    let image = ends(&mut download, start).unwrap();
    assert_eq!(
        (image.url.as_str(), image.extension),
        ("https://api.example/files/a.png", "png")
    );

    let mut looping = DownloadMachine::new(&config, "https://cdn.example/0.png", 1).unwrap();
    for hop in 1..=6 {
        sends(&mut looping, start);
        let next = format!("/{hop}.png");
        looping.handle(start, answer(302, b"", &[("location", &next)]));
    }
    let error = ends(&mut looping, start).unwrap_err();
    assert!(
        error.to_string().contains("redirected too many times"),
        "{error}"
    );
}

#[test]
fn a_hint_makes_a_waiting_wait_poll_at_once() {
    // No schedule chosen: with a callback expected, the first poll waits for the fallback's
    // first interval (20 s for a remote API), and a hint brings it forward.
    let receiver = crate::webhook::Receiver::new("https://hooks.example/").unwrap();
    let config = builder().webhooks(receiver).config().unwrap();
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {})
        .unwrap()
        .expecting_callback();
    assert_eq!(sleeps(&mut wait, start), at(start, 20.0));
    wait.hint(at(start, 3.0));
    sends(&mut wait, at(start, 3.0));
    wait.handle(
        at(start, 3.1),
        answer(200, &status_body("IN_PROGRESS"), &[]),
    );
    // Then the fallback schedule (20 s, growing to 60 s); a hint that finds the task running
    // changes nothing else.
    assert_eq!(sleeps(&mut wait, at(start, 3.1)), at(start, 23.1));
    wait.hint(at(start, 10.0));
    sends(&mut wait, at(start, 10.0));
    wait.handle(at(start, 10.0), answer(200, &status_body("SUCCESS"), &[]));
    assert_eq!(
        ends(&mut wait, at(start, 10.0)).unwrap().status,
        TaskStatus::Success
    );

    // A schedule the caller chose is kept, first poll at once.
    let receiver = crate::webhook::Receiver::new("https://hooks.example/").unwrap();
    let config = builder()
        .webhooks(receiver)
        .poll_interval(Duration::from_secs(7))
        .config()
        .unwrap();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {})
        .unwrap()
        .expecting_callback();
    sends(&mut wait, start);
    wait.handle(start, answer(200, &status_body("PENDING"), &[]));
    assert_eq!(sleeps(&mut wait, start), at(start, 7.0));
}

#[test]
fn submissions_take_their_turn_and_a_429_has_its_own_budget() {
    use super::pace::Pacer;
    use crate::config::Rate;
    // No ordinary retries at all: 429s are counted apart.
    let config = builder()
        .retry(RetryPolicy::none().max_rate_limited(2))
        .config()
        .unwrap();
    let pacer = std::sync::Mutex::new(Pacer::new(Some(Rate::new(2, Duration::from_secs(1)))));
    let request = GenerateRequest::text_to_image("a cat").build().unwrap();
    let start = Instant::now();
    let mut first = CallMachine::submit(&config, &request, None, &pacer, 1);
    let mut second = CallMachine::submit(&config, &request, None, &pacer, 2);
    sends(&mut first, start);
    assert_eq!(
        sleeps(&mut second, start),
        at(start, 0.5),
        "one every half second"
    );
    sends(&mut second, at(start, 0.5));
    // A bare 429 to the first: the rate slows (0.5 s → 0.75 s a slot), and it goes again in
    // the next free slot, after the second's.
    first.handle(at(start, 0.1), answer(429, b"", &[]));
    let turn = sleeps(&mut first, at(start, 0.1));
    assert_eq!(turn, at(start, 1.0), "the next free slot");
    sends(&mut first, turn);
    first.handle(
        turn,
        answer(429, br#"{"code":429,"message":"slow","data":null}"#, &[]),
    );
    let turn = sleeps(&mut first, turn);
    sends(&mut first, turn);
    first.handle(turn, answer(429, b"", &[]));
    let error = ends(&mut first, turn).unwrap_err();
    assert_eq!(error.code(), Some(429), "the 429 budget (2) is spent");
    second.handle(
        at(start, 0.6),
        answer(
            200,
            br#"{"code":200,"data":{"task_id":"t2","status":"PENDING"}}"#,
            &[],
        ),
    );
    assert_eq!(ends(&mut second, at(start, 0.6)).unwrap().task_id, "t2");
    assert_eq!(pacer.lock().unwrap().pacing().pushbacks, 3);
}

#[test]
fn a_watch_reports_each_change_once_and_ends_with_the_terminal_status() {
    let config = wait_config(60.0, 1.0);
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {})
        .unwrap()
        .watching();
    sends(&mut wait, start);
    wait.handle(at(start, 0.1), answer(200, &status_body("PENDING"), &[]));
    let step = ends(&mut wait, at(start, 0.1)).unwrap();
    assert_eq!(step.status, TaskStatus::Pending);
    // The same status again is no step: the watch sleeps on its schedule.
    assert_eq!(sleeps(&mut wait, at(start, 0.1)), at(start, 1.1));
    sends(&mut wait, at(start, 1.1));
    wait.handle(at(start, 1.2), answer(200, &status_body("PENDING"), &[]));
    assert_eq!(sleeps(&mut wait, at(start, 1.2)), at(start, 2.2));
    sends(&mut wait, at(start, 2.2));
    wait.handle(
        at(start, 2.3),
        answer(200, &status_body("IN_PROGRESS"), &[]),
    );
    assert_eq!(
        ends(&mut wait, at(start, 2.3)).unwrap().status,
        TaskStatus::InProgress
    );
    assert_eq!(sleeps(&mut wait, at(start, 2.3)), at(start, 3.3));
    sends(&mut wait, at(start, 3.3));
    wait.handle(at(start, 3.4), answer(200, &status_body("FAILED"), &[]));
    // A failed task is its last status, not an error; then the watch is over.
    assert_eq!(
        ends(&mut wait, at(start, 3.4)).unwrap().status,
        TaskStatus::Failed
    );
    assert!(ends(&mut wait, at(start, 3.5)).is_err());
}

#[test]
fn a_watch_keeps_one_deadline_across_its_steps() {
    let config = wait_config(2.0, 1.0);
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {})
        .unwrap()
        .watching();
    sends(&mut wait, start);
    wait.handle(at(start, 0.1), answer(200, &status_body("PENDING"), &[]));
    ends(&mut wait, at(start, 0.1)).unwrap();
    sends(&mut wait, at(start, 1.1));
    wait.handle(
        at(start, 1.2),
        answer(200, &status_body("IN_PROGRESS"), &[]),
    );
    ends(&mut wait, at(start, 1.2)).unwrap();
    // The next turn (2.2) is past the deadline: one last ask before it, then the end.
    assert_eq!(sleeps(&mut wait, at(start, 1.2)), at(start, 1.5));
    sends(&mut wait, at(start, 1.5));
    wait.handle(
        at(start, 1.6),
        answer(200, &status_body("IN_PROGRESS"), &[]),
    );
    assert_eq!(sleeps(&mut wait, at(start, 1.6)), at(start, 2.0));
    let error = ends(&mut wait, at(start, 2.0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DeadlinePassed);
}

#[test]
fn a_retry_after_of_a_day_or_of_10_19_seconds_ends_the_submission_and_holds_the_others_at_most_the_cap()
 {
    // Honours Retry-After up to 120 s; a submission may wait its turn up to 10 minutes.
    let config = builder()
        .wait_timeout(Duration::from_secs(600))
        .config()
        .unwrap();
    let request = GenerateRequest::text_to_image("a cat").build().unwrap();
    let start = Instant::now();
    for asked in ["86400", "10000000000000000000", "18446744073709551615"] {
        let pacer = std::sync::Mutex::new(super::pace::Pacer::new(None));
        let mut call = CallMachine::submit(&config, &request, None, &pacer, 1);
        sends(&mut call, start);
        call.handle(start, answer(429, b"", &[("retry-after", asked)]));
        let error = ends(&mut call, start).unwrap_err();
        assert_eq!(error.code(), Some(429), "{asked}");
        assert!(error.retry_after().is_some(), "{asked}: {error}");
        // The next submission of the client is held for the cap, not for what was asked.
        let mut next = CallMachine::submit(&config, &request, None, &pacer, 2);
        let held = sleeps(&mut next, start);
        assert_eq!(held, at(start, 120.0), "{asked}");
        sends(&mut next, held);
    }
}

#[test]
fn a_retry_after_date_in_2999_is_capped_too() {
    let config = config();
    let start = Instant::now();
    let mut call = CallMachine::status(&config, "t1", 1).unwrap();
    sends(&mut call, start);
    let headers = [
        ("retry-after", "Tue, 01 Jan 2999 00:00:00 GMT"),
        ("date", "Sat, 05 Dec 2026 09:00:00 GMT"),
    ];
    call.handle(start, answer(429, b"", &headers));
    let error = ends(&mut call, start).unwrap_err();
    assert!(error.retry_after().unwrap() > Duration::from_secs(365 * 24 * 3600));
}

#[test]
fn a_wait_timeout_of_duration_max_is_no_deadline() {
    let config = builder()
        .wait_timeout(Duration::MAX)
        .poll(PollSchedule::fixed(Duration::from_secs(5)))
        .config()
        .unwrap();
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
    let (_, timeout) = sends(&mut wait, start);
    assert_eq!(timeout, config.request_timeout);
    wait.handle(start, answer(200, &status_body("IN_PROGRESS"), &[]));
    assert_eq!(sleeps(&mut wait, start), at(start, 5.0));
    // A day later, still waiting.
    let later = at(start, 86_400.0);
    sends(&mut wait, later);
    wait.handle(later, answer(200, &status_body("SUCCESS"), &[]));
    assert!(ends(&mut wait, later).is_ok());
}

#[test]
fn a_deadline_shorter_than_the_fallback_interval_still_asks_before_it_gives_up() {
    // Webhooks expected: the first poll waits the 20 s fallback, but the deadline is 3 s.
    let config = builder()
        .wait_timeout(Duration::from_secs(3))
        .config()
        .unwrap();
    let start = Instant::now();
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {})
        .unwrap()
        .expecting_callback();
    assert_eq!(
        sleeps(&mut wait, start),
        at(start, 2.25),
        "one last ask, a quarter of the wait before the deadline"
    );
    let (_, timeout) = sends(&mut wait, at(start, 2.25));
    assert_eq!(timeout, Duration::from_secs_f64(0.75));
    wait.handle(at(start, 2.3), answer(200, &status_body("SUCCESS"), &[]));
    assert!(ends(&mut wait, at(start, 2.3)).is_ok());

    // Still running at the last ask: the wait gives up at its deadline, without asking again.
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {})
        .unwrap()
        .expecting_callback();
    sleeps(&mut wait, start);
    sends(&mut wait, at(start, 2.25));
    wait.handle(
        at(start, 2.3),
        answer(200, &status_body("IN_PROGRESS"), &[]),
    );
    assert_eq!(sleeps(&mut wait, at(start, 2.3)), at(start, 3.0));
    let error = ends(&mut wait, at(start, 3.0)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::DeadlinePassed);

    // A short deadline with fast polls polls to its end.
    let config = wait_config(0.3, 0.02);
    let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
    let mut now = start;
    let mut polls = 0;
    loop {
        match wait.poll(now) {
            Next::Send(..) => {
                polls += 1;
                wait.handle(now, answer(200, &status_body("IN_PROGRESS"), &[]));
            }
            Next::SleepUntil(until) => now = until,
            Next::Done(result) => {
                assert_eq!(result.unwrap_err().kind(), ErrorKind::DeadlinePassed);
                break;
            }
        }
    }
    assert!(polls >= 10, "{polls} polls in 0.3 s at 20 ms");
}

#[test]
fn a_fenced_submission_sends_nothing_after_its_window() {
    let config = config(); // 2 retries, backoff from 0.5 s
    let request = GenerateRequest::text_to_image("a cat").build().unwrap();
    let start = Instant::now();
    let pacer = std::sync::Mutex::new(super::pace::Pacer::new(None));
    // Within the window: sent at once (its turn was taken), and a refused connection retried
    // while the retry can still start in time.
    let mut call = CallMachine::submit(&config, &request, None, &pacer, 1).fenced(at(start, 0.6));
    sends(&mut call, start);
    call.handle(start, broken(TransportErrorKind::Connect, RequestSent::No));
    let retry = sleeps(&mut call, start);
    assert!(
        retry <= at(start, 0.5),
        "the first backoff is at most 0.5 s"
    );
    sends(&mut call, retry);
    call.handle(retry, broken(TransportErrorKind::Connect, RequestSent::No));
    // The next retry (0.5 s to 1 s later) would start after the window: never sent again, and
    // never sent at all.
    let error = ends(&mut call, retry).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotSent, "{error}");
    assert!(error.to_string().contains("no task was made"), "{error}");

    // A first attempt that could not start in time is not made.
    let mut late = CallMachine::submit(&config, &request, None, &pacer, 2).fenced(at(start, 2.0));
    assert_eq!(
        ends(&mut late, at(start, 2.5)).unwrap_err().kind(),
        ErrorKind::NotSent
    );

    // A 429 ends it with the service's answer: the caller decides when to send again.
    let mut refused =
        CallMachine::submit(&config, &request, None, &pacer, 3).fenced(at(start, 60.0));
    sends(&mut refused, start);
    refused.handle(start, answer(429, b"", &[("retry-after", "1")]));
    let error = ends(&mut refused, start).unwrap_err();
    assert_eq!(error.code(), Some(429));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
}

#[test]
fn a_pacer_turn_is_waited_for_within_the_wait_timeout_and_never_sends() {
    let config = config(); // a 60 s wait timeout
    let start = Instant::now();
    let pacer = std::sync::Mutex::new(super::pace::Pacer::new(None));
    let mut turn = super::machine::TurnMachine::new(&config, &pacer);
    assert!(matches!(turn.poll(start), Next::Done(Ok(()))));
    pacer
        .lock()
        .unwrap()
        .refused(start, Some(Duration::from_secs(10)));
    let mut turn = super::machine::TurnMachine::new(&config, &pacer);
    assert_eq!(sleeps(&mut turn, start), at(start, 10.0));
    assert!(matches!(turn.poll(at(start, 10.0)), Next::Done(Ok(()))));
    pacer
        .lock()
        .unwrap()
        .refused(start, Some(Duration::from_secs(100)));
    let mut turn = super::machine::TurnMachine::new(&config, &pacer);
    let error = ends(&mut turn, start).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotSent);
}

#[test]
fn a_redirect_to_what_no_request_line_can_carry_is_an_error_not_a_panic() {
    // Found by the fuzz target `api_answer`: the url crate accepts this, http's URI does not.
    let config = config();
    let start = Instant::now();
    let mut download = DownloadMachine::new(&config, "https://cdn.example/a.png", 1).unwrap();
    sends(&mut download, start);
    let location = "http://127.0.0.1start_a1,\"mt_a1,\"mesae.hperng.png";
    download.handle(start, answer(302, b"", &[("location", location)]));
    let error = ends(&mut download, start).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Download, "{error}");
}

#[test]
fn schedules_and_policies_of_any_length_never_panic() {
    let start = Instant::now();
    for huge in [Duration::MAX, Duration::from_secs(u64::MAX / 3)] {
        let schedule = PollSchedule::fixed(huge);
        assert!(schedule.delay(0) <= huge && schedule.delay(0) >= huge / 2);
        assert!(PollSchedule::exponential(huge, huge, 10.0).delay(9) <= huge);
        let policy = RetryPolicy::default().backoff(huge, huge);
        assert!(backoff(&policy, 3, 0.5) <= huge);
        // A wait that never polls again but for its deadline: it asks once, then before the end.
        let config = builder()
            .poll(schedule)
            .wait_timeout(Duration::from_secs(5))
            .config()
            .unwrap();
        let mut wait = WaitMachine::new(&config, "t1", 1, |_: &TaskInfo| {}).unwrap();
        sends(&mut wait, start);
        wait.handle(start, answer(200, &status_body("IN_PROGRESS"), &[]));
        let next = sleeps(&mut wait, start);
        assert!(next <= at(start, 5.0), "{next:?}");
    }
}
