//! The axum example's service, driven through its router with tower's `oneshot` against the
//! scripted transport: a click repeated with the same key pays once, a status is answered from
//! the tracker's cache (no request to the service), the events stream ends with the task, and
//! bad input is refused before anything is sent.
#![cfg(all(feature = "async", feature = "axum", feature = "test-util"))]

#[path = "../examples/axum_service.rs"]
#[allow(dead_code)]
mod service;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gptimage::test_util::{Endpoint, Scripted};
use gptimage::webhook::Receiver;
use gptimage::{Client, Tracker};
use tower::ServiceExt;

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(body: &str) -> Request<Body> {
    Request::post("/images")
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn the_service_pays_once_per_key_and_answers_from_its_cache() {
    let script = Scripted::new()
        .created("task-1")
        .running()
        .succeeded(["https://cdn.test/1.png"]);
    let tracker = Tracker::new(Client::with_transport(Scripted::config(), script.clone()));
    let receiver = Receiver::new("https://service.test/hooks/").unwrap();
    let app = service::routes(tracker, &receiver);

    let click = r#"{"prompt": "a fox", "key": "user-1:click-1"}"#;
    let (status, first) = call(&app, post(click)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (_, again) = call(&app, post(click)).await;
    assert_eq!(first, again, "the same key, the same task");
    assert!(first.contains("task-1"), "{first}");
    assert_eq!(script.count(Endpoint::Submit), 1, "paid once");

    // The tracker follows the task; GETs read its cache.
    let started = Instant::now();
    loop {
        let (status, shown) = call(&app, get("/images/task-1")).await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        if shown.contains("SUCCESS") {
            assert!(shown.contains("https://cdn.test/1.png"), "{shown}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{shown}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = script.count(Endpoint::Status);
    for _ in 0..20 {
        let (status, _) = call(&app, get("/images/task-1")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        script.count(Endpoint::Status),
        asked,
        "a GET costs the service nothing"
    );
    // The events of an ended task: its last status, then the stream ends.
    let (status, events) = call(&app, get("/images/task-1/events")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        events.contains("data:") && events.contains("SUCCESS"),
        "{events}"
    );
    // A task the service never named is not asked about.
    let (status, _) = call(&app, get("/images/task-9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(script.count(Endpoint::Status), asked);
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_sent() {
    let script = Scripted::new().created("task-1");
    let tracker = Tracker::new(Client::with_transport(Scripted::config(), script.clone()));
    let receiver = Receiver::new("https://service.test/hooks/").unwrap();
    let app = service::routes(tracker, &receiver);
    let (status, said) = call(&app, post(r#"{"prompt": "   "}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{said}");
    assert!(said.contains("prompt"), "{said}");
    let (status, _) = call(&app, post("not json")).await;
    assert!(status.is_client_error());
    assert_eq!(script.count(Endpoint::Submit), 0);
}
