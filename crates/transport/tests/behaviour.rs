//! The behavioural suite, written once and run through both clients, against the emulator's fault
//! injection and against scripted loopback servers that misbehave on cue.

mod support;

use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind, KeyConfig};
use gptimage_transport::transport::TransportErrorKind;
use gptimage_transport::{ErrorKind, RetryPolicy};
use gptimage_types::{ApiCode, GenerateRequest, TaskStatus};
use support::{Driver, Reply, Scripted, Settings, png};

fn request(prompt: &str) -> GenerateRequest {
    GenerateRequest::text_to_image(prompt)
        .quality(gptimage_types::Quality::Low)
        .build()
        .unwrap()
}

fn emulator(config: Config) -> Emulator {
    Emulator::spawn(config).expect("the emulator starts")
}

fn client<D: Driver>(emulator: &Emulator) -> D {
    D::connect(&Settings::new(emulator.base_url(), emulator.api_key())).unwrap()
}

fn with<D: Driver>(emulator: &Emulator, tweak: impl FnOnce(&mut Settings)) -> D {
    let mut settings = Settings::new(emulator.base_url(), emulator.api_key());
    tweak(&mut settings);
    D::connect(&settings).unwrap()
}

both_clients!(
    generates_downloads_and_saves_a_real_image,
    edits_an_image,
    a_submission_is_retried_when_no_task_can_exist,
    a_refused_connection_is_retried,
    a_dropped_submission_is_not_retried,
    a_timed_out_submission_is_not_retried,
    a_gateway_page_after_submission_is_not_retried,
    status_polling_survives_transient_faults,
    a_failed_task_is_an_error_with_its_message,
    the_wait_deadline_is_honoured_with_the_task_id,
    an_unknown_status_keeps_waiting_until_the_deadline,
    api_errors_are_distinguishable,
    the_envelope_code_wins_over_the_http_status,
    misbehaving_bodies_give_typed_errors,
    an_oversized_answer_is_refused,
    the_key_goes_only_to_the_api_origin,
    redirects_from_the_api_are_not_followed,
    downloads_follow_redirects_without_the_key,
    downloads_are_limited_and_checked,
    the_key_appears_in_no_output,
    a_wait_ends_at_its_deadline_when_the_status_request_hangs,
);

fn generates_downloads_and_saves_a_real_image<D: Driver>() {
    let emulator = emulator(Config::instant());
    let client: D = client(&emulator);
    let task = client.generate(&request("a lighthouse")).unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    let images = client.download(&task).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].extension, "png");
    let decoded = image::load_from_memory(&images[0].bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (1024, 1024));

    let dir = tempfile::tempdir().unwrap();
    let paths = client.download_to_dir(&task, dir.path()).unwrap();
    assert_eq!(paths, [dir.path().join(format!("{}-1.png", task.task_id))]);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), images[0].bytes);
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1, "no temporary file is left behind");

    let counters = emulator.counters();
    assert_eq!(counters.tasks_created, 1);
    assert_eq!(counters.generate_requests, 1);
}

fn edits_an_image<D: Driver>() {
    let emulator = emulator(Config::instant());
    let client: D = client(&emulator);
    let source = client.generate(&request("a house")).unwrap();
    let edit = GenerateRequest::image_to_image("make it night", source.images().to_vec())
        .size(gptimage_types::Size::Portrait)
        .input_fidelity(gptimage_types::InputFidelity::Low)
        .build()
        .unwrap();
    let task = client.generate(&edit).unwrap();
    let images = client.download(&task).unwrap();
    let decoded = image::load_from_memory(&images[0].bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (1024, 1536));
}

fn a_submission_is_retried_when_no_task_can_exist<D: Driver>() {
    let config = Config::instant()
        .with_fault(
            Fault::new(FaultKind::ServerError)
                .on(Endpoint::Generate)
                .times(1),
        )
        .with_fault(
            Fault::new(FaultKind::RateLimited {
                retry_after_secs: 1,
            })
            .on(Endpoint::Generate)
            .times(1),
        );
    let emulator = emulator(config);
    let client: D = client(&emulator);
    client.submit(&request("worth the wait")).unwrap();
    let counters = emulator.counters();
    assert_eq!(
        counters.generate_requests, 3,
        "a 500 and a 429, then the task"
    );
    assert_eq!(counters.tasks_created, 1);
}

fn a_refused_connection_is_retried<D: Driver>() {
    // Nothing listens on the port at first; the emulator comes up while the client backs off.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = Settings::new(
        &format!("http://{addr}/api"),
        gptimage_emulator::DEFAULT_KEY,
    );
    settings.retry = RetryPolicy::default()
        .max_retries(6)
        .backoff(Duration::from_millis(300), Duration::from_millis(300));
    let client = D::connect(&settings).unwrap();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        Emulator::spawn_on(Config::instant(), addr).unwrap()
    });
    let result = client.submit(&request("patience"));
    let emulator = starter.join().unwrap();
    result.unwrap();
    assert_eq!(emulator.counters().tasks_created, 1);

    // With no server at all, the error says it could not connect.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = Settings::new(&format!("http://{dead}/api"), "sk-x");
    settings.retry = RetryPolicy::default()
        .max_retries(1)
        .backoff(Duration::from_millis(5), Duration::from_millis(5));
    let err = D::connect(&settings)
        .unwrap()
        .submit(&request("nobody"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(err.is_connect(), "{err:?}");
}

fn a_dropped_submission_is_not_retried<D: Driver>() {
    let fault = Fault::new(FaultKind::DropConnection)
        .on(Endpoint::Generate)
        .times(1);
    let emulator = emulator(Config::instant().with_fault(fault));
    let client: D = client(&emulator);
    let err = client.submit(&request("paid, unanswered")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert!(
        err.to_string().contains("a task may have been created"),
        "{err}"
    );
    let counters = emulator.counters();
    assert_eq!(counters.generate_requests, 1, "never resent");
    assert_eq!(counters.tasks_created, 1);
}

fn a_timed_out_submission_is_not_retried<D: Driver>() {
    let fault = Fault::new(FaultKind::Latency(Duration::from_secs(3))).on(Endpoint::Generate);
    let emulator = emulator(Config::instant().with_fault(fault));
    let client: D = with(&emulator, |s| {
        s.request_timeout = Duration::from_millis(300)
    });
    let err = client.submit(&request("slow")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(emulator.counters().generate_requests, 1);
    assert_eq!(emulator.counters().tasks_created, 1);
}

fn a_gateway_page_after_submission_is_not_retried<D: Driver>() {
    for status in [502, 504] {
        let fault = Fault::new(FaultKind::GatewayError(status)).on(Endpoint::Generate);
        let emulator = emulator(Config::instant().with_fault(fault));
        let client: D = client(&emulator);
        let err = client.submit(&request("behind a proxy")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
        assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
        assert_eq!(emulator.counters().generate_requests, 1);
    }
}

fn status_polling_survives_transient_faults<D: Driver>() {
    let config = Config::instant()
        .with_fault(
            Fault::new(FaultKind::ServerError)
                .on(Endpoint::Status)
                .times(1),
        )
        .with_fault(
            Fault::new(FaultKind::DropConnection)
                .on(Endpoint::Status)
                .times(1),
        )
        .with_fault(
            Fault::new(FaultKind::Latency(Duration::from_secs(3)))
                .on(Endpoint::Status)
                .times(1),
        )
        .with_fault(
            Fault::new(FaultKind::GatewayError(502))
                .on(Endpoint::Status)
                .times(1),
        )
        .with_fault(
            Fault::new(FaultKind::RateLimited {
                retry_after_secs: 0,
            })
            .on(Endpoint::Status)
            .times(1),
        );
    let emulator = emulator(config);
    let client: D = with(&emulator, |s| {
        s.request_timeout = Duration::from_millis(400);
        s.retry = RetryPolicy::default()
            .max_retries(5)
            .backoff(Duration::from_millis(10), Duration::from_millis(20));
    });
    let created = client.submit(&request("bumpy road")).unwrap();
    let task = client.wait(&created.task_id).unwrap();
    assert_eq!(task.status, TaskStatus::Success);
    assert_eq!(emulator.counters().faults_injected, 5);
}

fn a_failed_task_is_an_error_with_its_message<D: Driver>() {
    let emulator = emulator(Config::instant().with_fail_phrase("forbidden"));
    let client: D = client(&emulator);
    let err = client
        .generate(&request("something forbidden"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TaskFailed);
    assert_eq!(
        err.server_message(),
        Some("Content policy violation detected")
    );
    assert!(
        err.task_id().is_some_and(|id| id.ends_with("gptimg")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("Content policy violation detected")
    );
}

fn the_wait_deadline_is_honoured_with_the_task_id<D: Driver>() {
    let config = Config::instant().with_timings(Duration::from_secs(30), Duration::ZERO);
    let emulator = emulator(config);
    let client: D = with(&emulator, |s| s.wait_timeout = Duration::from_millis(300));
    let created = client.submit(&request("patience")).unwrap();
    let err = client.wait(&created.task_id).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlinePassed);
    assert_eq!(err.task_id(), Some(created.task_id.as_str()));
    assert!(err.to_string().contains("wait for it again"), "{err}");
    let polls = emulator.counters().status_requests;
    assert!(
        (2..=40).contains(&polls),
        "polled {polls} times in 300 ms at 20 ms intervals"
    );
}

fn an_unknown_status_keeps_waiting_until_the_deadline<D: Driver>() {
    let server = Scripted::start(vec![Reply::json(
        200,
        r#"{"code":200,"data":{"task_id":"t1","status":"REVIEWING"}}"#,
    )]);
    let mut settings = Settings::new(&server.base_url(), "sk-x");
    settings.wait_timeout = Duration::from_millis(300);
    let err = D::connect(&settings).unwrap().wait("t1").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlinePassed);
    assert!(server.requests().len() >= 3, "it kept polling");
}

fn api_errors_are_distinguishable<D: Driver>() {
    let config = Config::instant().with_keys([
        KeyConfig::new("rich", "sk-rich", 100),
        KeyConfig::new("broke", "sk-broke", 0),
    ]);
    let emulator = emulator(config);
    let connect = |key: &str| D::connect(&Settings::new(emulator.base_url(), key)).unwrap();
    let unauthorized = connect("sk-nobody").submit(&request("a")).unwrap_err();
    let broke = connect("sk-broke").submit(&request("a")).unwrap_err();
    let missing = connect("sk-rich")
        .status("n0000000000000gptimg")
        .unwrap_err();
    for (err, code, api) in [
        (&unauthorized, 401, ApiCode::Unauthorized),
        (&broke, 402, ApiCode::InsufficientCredits),
        (&missing, 404, ApiCode::NotFound),
    ] {
        assert_eq!(err.kind(), ErrorKind::Api, "{err:?}");
        assert_eq!(err.code(), Some(code));
        assert_eq!(err.http_status(), Some(code as u16));
        assert_eq!(err.api_code(), Some(api));
        assert!(err.server_message().is_some());
    }
    assert!(broke.to_string().contains("out of credits"), "{broke}");
    // None of them was retried.
    assert_eq!(emulator.counters().generate_requests, 2);
    assert_eq!(emulator.counters().status_requests, 1);

    // A 400 and a 500 from a scripted API.
    let server = Scripted::start(vec![
        Reply::json(
            400,
            r#"{"code":400,"message":"Bad Request: 'size' is invalid.","data":null}"#,
        ),
        Reply::json(
            500,
            r#"{"code":500,"message":"Internal Server Error","data":null}"#,
        ),
    ]);
    let mut settings = Settings::new(&server.base_url(), "sk-x");
    settings.retry = RetryPolicy::none();
    let client = D::connect(&settings).unwrap();
    let bad = client.submit(&request("a")).unwrap_err();
    assert_eq!(bad.api_code(), Some(ApiCode::BadRequest));
    assert_eq!(
        bad.server_message(),
        Some("Bad Request: 'size' is invalid.")
    );
    let failing = client.submit(&request("a")).unwrap_err();
    assert_eq!(failing.api_code(), Some(ApiCode::ServerError(500)));
}

fn the_envelope_code_wins_over_the_http_status<D: Driver>() {
    let config = Config::instant()
        .with_keys([KeyConfig::new("broke", "sk-broke", 0)])
        .with_errors_as_http_200(true);
    let emulator = emulator(config);
    let err = client::<D>(&emulator).submit(&request("a")).unwrap_err();
    assert_eq!(err.api_code(), Some(ApiCode::InsufficientCredits));
    assert_eq!(err.http_status(), Some(200));
}

fn misbehaving_bodies_give_typed_errors<D: Driver>() {
    let html = Reply::Http(
        502,
        vec![("content-type".into(), "text/html".into())],
        b"<html><body>502 Bad Gateway</body></html>".to_vec(),
    );
    let cases: Vec<(Reply, ErrorKind, ErrorKind)> = vec![
        // (reply, kind for a submission, kind for a status request)
        (
            Reply::json(200, "not json at all"),
            ErrorKind::OutcomeUnknown,
            ErrorKind::InvalidResponse,
        ),
        (
            Reply::json(200, r#"{"code":200,"data":{"task_id":"#),
            ErrorKind::OutcomeUnknown,
            ErrorKind::InvalidResponse,
        ),
        (
            Reply::json(200, ""),
            ErrorKind::OutcomeUnknown,
            ErrorKind::InvalidResponse,
        ),
        (html, ErrorKind::OutcomeUnknown, ErrorKind::Api),
        (
            Reply::json(200, r#"{"code":401,"message":"Unauthorized","data":null}"#),
            ErrorKind::Api,
            ErrorKind::Api,
        ),
        (
            Reply::json(200, r#"[1, 2, 3]"#),
            ErrorKind::OutcomeUnknown,
            ErrorKind::InvalidResponse,
        ),
        (
            Reply::Close,
            ErrorKind::OutcomeUnknown,
            ErrorKind::Transport,
        ),
    ];
    for (reply, on_submit, on_status) in cases {
        let server = Scripted::start(vec![reply.clone()]);
        let mut settings = Settings::new(&server.base_url(), "sk-x");
        settings.retry = RetryPolicy::default()
            .max_retries(1)
            .backoff(Duration::from_millis(5), Duration::from_millis(5));
        let client = D::connect(&settings).unwrap();
        let err = client.submit(&request("a")).unwrap_err();
        assert_eq!(err.kind(), on_submit, "submit, {reply:?}: {err:?}");
        assert_eq!(
            server.requests().len(),
            if on_submit == ErrorKind::OutcomeUnknown || on_submit == ErrorKind::Api {
                1
            } else {
                2
            }
        );
        let err = client.status("t1").unwrap_err();
        assert_eq!(err.kind(), on_status, "status, {reply:?}: {err:?}");
        // Unreadable bodies keep a bounded excerpt.
        if err.kind() == ErrorKind::InvalidResponse {
            assert!(err.body_excerpt().is_some_and(|e| e.chars().count() <= 201));
        }
    }
}

fn an_oversized_answer_is_refused<D: Driver>() {
    let huge = format!(
        r#"{{"code":200,"data":{{"task_id":"t1","status":"SUCCESS","x":"{}"}}}}"#,
        "a".repeat(5 * 1024 * 1024)
    );
    let server = Scripted::start(vec![Reply::json(200, &huge)]);
    let mut settings = Settings::new(&server.base_url(), "sk-x");
    settings.retry = RetryPolicy::none();
    let client = D::connect(&settings).unwrap();
    let err = client.status("t1").unwrap_err();
    assert_eq!(
        err.transport_kind(),
        Some(TransportErrorKind::BodyTooLarge),
        "{err:?}"
    );
    let err = client.submit(&request("a")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err:?}");
}

fn the_key_goes_only_to_the_api_origin<D: Driver>() {
    let emulator = emulator(Config::instant().with_separate_file_origin(true));
    let client: D = client(&emulator);
    let task = client.generate(&request("cdn")).unwrap();
    assert!(task.images()[0].starts_with(emulator.files_origin()));
    client.download(&task).unwrap();
    let counters = emulator.counters();
    assert_eq!(counters.file_requests, 1);
    assert_eq!(counters.file_requests_with_authorization, 0);

    // Plain http to a host that is not loopback is refused before anything is sent.
    let err = D::connect(&Settings::new("http://api.example.com/api", "sk-x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("plain http"), "{err}");
}

fn redirects_from_the_api_are_not_followed<D: Driver>() {
    let elsewhere = Scripted::start(vec![Reply::json(
        200,
        r#"{"code":200,"data":{"task_id":"t1","status":"SUCCESS"}}"#,
    )]);
    let target = format!("{}/api/status?task_id=t1", elsewhere.origin());
    let api = Scripted::start(vec![Reply::json(302, "").with_header("location", &target)]);
    let client = D::connect(&Settings::new(&api.base_url(), "sk-secret")).unwrap();
    let err = client.status("t1").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidResponse, "{err:?}");
    assert!(err.to_string().contains("not followed"), "{err}");
    assert!(
        elsewhere.requests().is_empty(),
        "the other host was never contacted"
    );
    assert_eq!(
        api.requests()[0].header("authorization").as_deref(),
        Some("Bearer sk-secret")
    );
}

fn downloads_follow_redirects_without_the_key<D: Driver>() {
    let cdn = Scripted::start(vec![Reply::Http(
        200,
        vec![("content-type".into(), "image/png".into())],
        png(8, 8),
    )]);
    let short = Scripted::start(vec![Reply::Http(
        302,
        vec![("location".into(), format!("{}/real.png", cdn.origin()))],
        Vec::new(),
    )]);
    let api = Scripted::start(vec![Reply::json(
        200,
        &format!(
            r#"{{"code":200,"data":{{"task_id":"t1","status":"SUCCESS","response":["{}/short.png"]}}}}"#,
            short.origin()
        ),
    )]);
    let client = D::connect(&Settings::new(&api.base_url(), "sk-secret")).unwrap();
    let task = client.wait("t1").unwrap();
    let images = client.download(&task).unwrap();
    assert_eq!(images[0].extension, "png");
    for host in [&cdn, &short] {
        let requests = host.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].header("authorization"), None);
    }
}

fn downloads_are_limited_and_checked<D: Driver>() {
    let page = Scripted::start(vec![Reply::Http(
        200,
        vec![("content-type".into(), "text/html".into())],
        b"<html>expired</html>".to_vec(),
    )]);
    let big = Scripted::start(vec![Reply::Http(
        200,
        vec![("content-type".into(), "image/png".into())],
        png(600, 600),
    )]);
    let gone = Scripted::start(vec![Reply::Http(404, Vec::new(), Vec::new())]);
    let api = Scripted::start(vec![Reply::json(
        200,
        &format!(
            r#"{{"code":200,"data":{{"task_id":"t1","status":"SUCCESS","response":["{}/a.png","{}/b.png","{}/c.png"]}}}}"#,
            page.origin(),
            big.origin(),
            gone.origin()
        ),
    )]);
    let mut settings = Settings::new(&api.base_url(), "sk-x");
    settings.max_download_bytes = 1000;
    let client = D::connect(&settings).unwrap();
    let mut task = client.wait("t1").unwrap();
    let all = task.response.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (url, expected) in all.iter().zip(["is not an image", "too large", "HTTP 404"]) {
        task.response = Some(vec![url.clone()]);
        let err = client.download_to_dir(&task, dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Download);
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing was written"
    );
}

fn the_key_appears_in_no_output<D: Driver>() {
    let emulator = emulator(Config::instant());
    let key = "sk-very-secret-0123456789";
    let client = D::connect(&Settings::new(emulator.base_url(), key)).unwrap();
    let err = client.submit(&request("a")).unwrap_err();
    let shown = format!(
        "{client:?} {err} {err:?} {:?}",
        std::error::Error::source(&err)
    );
    assert!(!shown.contains("very-secret"), "{shown}");
}

#[test]
fn both_clients_are_send_sync_and_cheap_to_clone() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<gptimage_transport::Client>();
    shareable::<gptimage_transport::blocking::Client>();
    fn boxable<E: std::error::Error + Send + Sync + 'static>() {}
    boxable::<gptimage_transport::Error>();
    // A clone shares the configuration (and the connection pool) rather than copying a stack.
    let client = gptimage_transport::Client::builder()
        .api_key("sk-x")
        .build()
        .unwrap();
    let clone = client.clone();
    assert!(std::ptr::eq(client.config(), clone.config()));
}

/// The deadline is a point in time: a status request that hangs longer than the whole wait is
/// cut at the deadline, not allowed its full request timeout.
fn a_wait_ends_at_its_deadline_when_the_status_request_hangs<D: Driver>() {
    let server = Scripted::start(vec![Reply::Hang(Duration::from_secs(8))]);
    let mut settings = Settings::new(&server.base_url(), "sk-x");
    settings.wait_timeout = Duration::from_secs(2);
    settings.request_timeout = Duration::from_secs(20);
    let client = D::connect(&settings).unwrap();
    let started = Instant::now();
    let err = client.wait("t1").unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::DeadlinePassed, "{err}");
    assert_eq!(err.task_id(), Some("t1"));
    assert!(
        took < Duration::from_millis(2500),
        "the wait took {took:?} for a 2 s deadline"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "one status request, cut at the deadline"
    );
}
