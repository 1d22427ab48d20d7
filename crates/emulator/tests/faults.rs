//! Fault injection, rate limiting and webhooks, each observed over real loopback HTTP.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use common::{Api, conforms};
use gptimage_emulator::{Config, Endpoint, Fault, FaultKind};
use gptimage_types::{TaskStatus, parse_webhook};
use serde_json::json;

#[tokio::test]
async fn server_errors_come_before_any_task_is_created() {
    let fault = Fault::new(FaultKind::ServerError)
        .on(Endpoint::Generate)
        .times(2);
    let api = Api::start(Config::instant().with_fault(fault)).await;
    let doc = common_doc(&api).await;
    for _ in 0..2 {
        let answer = api.generate(json!({"prompt": "a"})).await;
        assert_eq!(answer.status, 500);
        assert_eq!(answer.json()["code"], 500);
        assert!(answer.message().contains("try again"));
        conforms(&doc, &answer).unwrap();
        assert_eq!(api.emulator.counters().tasks_created, 0);
    }
    assert_eq!(api.generate(json!({"prompt": "a"})).await.status, 200);
    let counters = api.emulator.counters();
    assert_eq!(counters.tasks_created, 1);
    assert_eq!(counters.faults_injected, 2);
    assert_eq!(counters.generate_requests, 3);
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after() {
    let fault = Fault::new(FaultKind::RateLimited {
        retry_after_secs: 7,
    })
    .on(Endpoint::Status)
    .times(1);
    let api = Api::start(Config::instant().with_fault(fault)).await;
    let doc = common_doc(&api).await;
    let id = api.submit(json!({"prompt": "a"})).await;
    let throttled = api.status(&id).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.headers["retry-after"], "7");
    assert_eq!(throttled.json()["code"], 429);
    conforms(&doc, &throttled).unwrap();
    assert_eq!(api.status(&id).await.status, 200);
}

#[tokio::test]
async fn the_per_key_rate_limit_counts_new_tasks() {
    let api = Api::start(Config::instant().with_rate_limit(3, Duration::from_secs(10))).await;
    for i in 0..3 {
        api.submit(json!({"prompt": format!("{i}"), "quality": "low"}))
            .await;
    }
    let limited = api.generate(json!({"prompt": "one too many"})).await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    // Status requests are not limited.
    assert_eq!(api.status("unknown").await.status, 404);
    assert_eq!(api.emulator.counters().tasks_created, 3);
}

#[tokio::test]
async fn a_share_of_requests_fails_repeatably() {
    async fn failures(seed: u64) -> Vec<u16> {
        let fault = Fault::new(FaultKind::ServerError)
            .on(Endpoint::Status)
            .probability(0.5);
        let api = Api::start(Config::instant().with_fault(fault).with_seed(seed)).await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(api.status("x").await.status);
        }
        statuses
    }
    let first = failures(42).await;
    let errors = first.iter().filter(|s| **s == 500).count();
    assert!(
        (8..=32).contains(&errors),
        "about half should fail: {errors}/40"
    );
    assert!(first.iter().all(|s| *s == 500 || *s == 404));
    assert_eq!(
        failures(42).await,
        first,
        "the same seed gives the same run"
    );
}

#[tokio::test]
async fn a_dropped_connection_after_processing_still_created_the_task() {
    let fault = Fault::new(FaultKind::DropConnection)
        .on(Endpoint::Generate)
        .times(1);
    let api = Api::start(Config::instant().with_fault(fault)).await;
    let result = api
        .http
        .post(api.url("/api/generate"))
        .bearer_auth(&api.key)
        .json(&json!({"prompt": "paid but unanswered"}))
        .send()
        .await;
    let error = result.expect_err("the connection closes without an answer");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(api.emulator.counters().tasks_created, 1);
    assert_eq!(api.emulator.counters().credits_charged, 10);
    // The server keeps serving other connections.
    assert_eq!(api.generate(json!({"prompt": "next"})).await.status, 200);
}

#[tokio::test]
async fn latency_after_processing_makes_a_client_time_out_with_the_task_created() {
    let fault = Fault::new(FaultKind::Latency(Duration::from_secs(3))).on(Endpoint::Generate);
    let api = Api::start(Config::instant().with_fault(fault)).await;
    let result = api
        .http
        .post(api.url("/api/generate"))
        .bearer_auth(&api.key)
        .json(&json!({"prompt": "slow"}))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(result.expect_err("the client gives up first").is_timeout());
    assert_eq!(api.emulator.counters().tasks_created, 1);
}

#[tokio::test]
async fn a_gateway_error_is_an_html_page() {
    let fault = Fault::new(FaultKind::GatewayError(502))
        .on(Endpoint::Generate)
        .times(1);
    let api = Api::start(Config::instant().with_fault(fault)).await;
    let answer = api.generate(json!({"prompt": "behind a proxy"})).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.content_type, "text/html");
    assert!(String::from_utf8_lossy(&answer.body).contains("502 Bad Gateway"));
    assert_eq!(api.emulator.counters().tasks_created, 1);
}

#[tokio::test]
async fn errors_can_be_answered_with_http_200_and_the_code_in_the_body() {
    let api = Api::start(Config::instant().with_errors_as_http_200(true)).await;
    let answer = api.generate(json!({"size": "1024*1024"})).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["code"], 400);
    assert_eq!(answer.message(), "Bad Request: 'prompt' is required.");
}

#[tokio::test]
async fn result_images_can_live_on_another_origin() {
    let api = Api::start(Config::instant().with_separate_file_origin(true)).await;
    assert_ne!(api.emulator.files_origin(), api.emulator.origin());
    let id = api.submit(json!({"prompt": "cdn", "quality": "low"})).await;
    let data = api.wait(&id).await;
    let url = data["response"][0].as_str().unwrap();
    assert!(url.starts_with(api.emulator.files_origin()), "{url}");
    let image = api
        .http
        .get(url)
        .bearer_auth("sk-leaked")
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    let counters = api.emulator.counters();
    assert_eq!(counters.file_requests_with_authorization, 1);
}

/// A webhook receiver on loopback: answers each POST with the next status of `answers` (the last
/// one repeats), and records every body.
async fn receiver(answers: Vec<StatusCode>) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use axum::routing::post;
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            let answers = answers.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(body.to_vec());
                answers[(seen.len() - 1).min(answers.len() - 1)]
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition did not hold within 5 s");
}

#[tokio::test]
async fn a_webhook_is_retried_until_the_receiver_takes_it() {
    let (url, bodies) = receiver(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::OK,
    ])
    .await;
    let api = Api::start(Config::instant()).await;
    let id = api
        .submit(json!({"prompt": "notify me", "quality": "low", "callback_url": url}))
        .await;
    eventually(|| api.emulator.counters().webhooks_delivered == 1).await;
    let counters = api.emulator.counters();
    assert_eq!(counters.webhook_attempts, 3);
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3);
    let task = parse_webhook(&bodies[2]).unwrap();
    assert_eq!(task.task_id, id);
    assert_eq!(task.status, TaskStatus::Success);
    assert_eq!(task.images().len(), 1);
}

#[tokio::test]
async fn a_failed_task_notifies_too_and_a_dead_receiver_is_given_up() {
    let (url, bodies) = receiver(vec![StatusCode::INTERNAL_SERVER_ERROR]).await;
    let config = Config::instant().with_fail_phrase("nope").with_webhooks(
        3,
        Duration::from_millis(10),
        Duration::from_secs(1),
    );
    let api = Api::start(config).await;
    api.submit(json!({"prompt": "nope", "callback_url": url}))
        .await;
    eventually(|| api.emulator.counters().webhooks_abandoned == 1).await;
    assert_eq!(api.emulator.counters().webhook_attempts, 3);
    let bodies = bodies.lock().unwrap();
    let task = parse_webhook(&bodies[0]).unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.consumed_credits, Some(0));
}

#[tokio::test]
async fn a_receiver_that_never_answers_blocks_nothing() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let config =
        Config::instant().with_webhooks(2, Duration::from_millis(10), Duration::from_millis(300));
    let api = Api::start(config).await;
    api.submit(json!({"prompt": "into the void", "quality": "low", "callback_url": url}))
        .await;
    // Meanwhile, other tasks run and finish.
    let other = api
        .submit(json!({"prompt": "unaffected", "quality": "low"}))
        .await;
    assert_eq!(api.wait(&other).await["status"], "SUCCESS");
    eventually(|| api.emulator.counters().webhooks_abandoned == 1).await;
    assert_eq!(api.emulator.counters().webhook_attempts, 2);
}

async fn common_doc(api: &Api) -> serde_json::Value {
    api.send(
        "get",
        "/openapi.json",
        api.http.get(api.url("/openapi.json")),
    )
    .await
    .json()
}

/// A receiver that records each delivery's `Content-Type` and answers 200.
async fn typed_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::routing::post;
    let types = Arc::new(Mutex::new(Vec::new()));
    let seen = types.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let content_type = headers
                    .get(axum::http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                seen.lock().unwrap().push(content_type);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, types)
}

#[tokio::test]
async fn deliveries_are_json_and_can_be_dropped_delayed_or_duplicated() {
    let (url, types) = typed_receiver().await;
    let config = Config::instant()
        .with_fault(
            Fault::new(FaultKind::DropConnection)
                .on(Endpoint::Webhook)
                .times(1),
        )
        .with_fault(
            Fault::new(FaultKind::Duplicate(4))
                .on(Endpoint::Webhook)
                .times(1),
        )
        .with_fault(
            Fault::new(FaultKind::Latency(Duration::from_millis(600)))
                .on(Endpoint::Webhook)
                .times(1),
        )
        // A rule for every endpoint leaves deliveries alone.
        .with_fault(
            Fault::new(FaultKind::DropConnection)
                .on(Endpoint::Webhook)
                .times(0),
        )
        .with_fault(Fault::new(FaultKind::Latency(Duration::ZERO)));
    let api = Api::start(config).await;
    let submit = |prompt: &'static str| {
        let api = &api;
        let url = url.clone();
        async move {
            api.submit(json!({"prompt": prompt, "quality": "low", "callback_url": url}))
                .await
        }
    };
    // Dropped: never sent, counted.
    submit("lost").await;
    eventually(|| api.emulator.counters().webhooks_dropped == 1).await;
    assert_eq!(types.lock().unwrap().len(), 0);
    // Duplicated: five deliveries of one task.
    submit("echo").await;
    eventually(|| types.lock().unwrap().len() == 5).await;
    // Delayed: arrives, late.
    let started = std::time::Instant::now();
    submit("late").await;
    eventually(|| types.lock().unwrap().len() == 6).await;
    assert!(started.elapsed() >= Duration::from_millis(600));
    // Every delivery says it is JSON (a receiver on axum's Json extractor refuses it otherwise).
    assert!(
        types
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/json")
    );
    assert_eq!(api.emulator.counters().webhooks_delivered, 6);
}
