//! A web service that turns a user's click into an image, on a [`Tracker`]: `POST /images`
//! submits (a click repeated with the same `key` gets the same task, and a handler dropped by
//! a departing browser loses nothing), `GET /images/{id}` answers from the tracker's cache (no
//! request to the service), `GET /images/{id}/events` streams the task's statuses as
//! server-sent events, and the service's callbacks arrive on the same router. Run offline, it
//! starts the emulator, serves on a free port, plays the user and exits:
//!
//! ```text
//! cargo run -p gptimage --features axum --example axum_service
//! ```

mod support;

use axum::Router;
use axum::extract::{Json, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use gptimage::webhook::Receiver;
use gptimage::{GenerateRequest, Tracker};
use serde_json::{Value, json};

/// The part to copy: the routes over a tracker, and the webhooks on the same router.
pub(crate) fn routes(tracker: Tracker, receiver: &Receiver) -> Router {
    Router::new()
        .route("/images", post(create))
        .route("/images/{id}", get(show))
        .route("/images/{id}/events", get(events))
        .with_state(tracker)
        .merge(receiver.axum_router())
}

/// `POST /images` with `{"prompt": "...", "key": "..."}`: the task id, at once.
async fn create(State(tracker): State<Tracker>, Json(body): Json<Value>) -> Response {
    let prompt = body["prompt"].as_str().unwrap_or_default();
    let request = match GenerateRequest::text_to_image(prompt).build() {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // The key names this click of this user (scope it to the signed-in user in a real service).
    let submitted = match body["key"].as_str() {
        Some(key) => tracker.submit_keyed(key, &request).await,
        None => tracker.submit(&request).await,
    };
    match submitted {
        Ok(created) => (
            StatusCode::ACCEPTED,
            Json(json!({"task_id": created.task_id})),
        )
            .into_response(),
        // A task may exist: the tracker recovers it; the same key never pays twice.
        Err(e) if e.may_have_created_task() => {
            (StatusCode::ACCEPTED, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// `GET /images/{id}`: the task's status and images, from the tracker's cache.
async fn show(State(tracker): State<Tracker>, Path(id): Path<String>) -> Response {
    match tracker.get(&id) {
        Some(task) => {
            Json(json!({"status": task.status.as_str(), "images": task.images()})).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /images/{id}/events`: each status change, as a server-sent event, to the end.
async fn events(State(tracker): State<Tracker>, Path(id): Path<String>) -> Response {
    let Some(updates) = tracker.subscribe(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let events = updates.map(|task| {
        Event::default().json_data(json!({"status": task.status.as_str(), "images": task.images()}))
    });
    Sse::new(events).into_response()
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    // Where the service sends callbacks: this server's public URL (here, loopback).
    let receiver = Receiver::new(&format!("http://{addr}/hooks/"))?;
    let (builder, _guard) = support::builder()?;
    let tracker = Tracker::builder(builder.webhooks(receiver.clone()).build()?)
        // A real service stores the id with the user's record here, in its database.
        .on_submitted(|created| async move { println!("stored task {}", created.task_id) })
        .build();
    let server = tokio::spawn(async move { axum::serve(tcp, routes(tracker, &receiver)).await });

    // Play the user: ask for an image (twice: the same key, the same task), then look until
    // it is ready.
    let body = r#"{"prompt": "a lighthouse at dawn", "key": "user-1:click-1"}"#;
    let created = user(addr, "POST", "/images", body).await?;
    let again = user(addr, "POST", "/images", body).await?;
    let task_id = created["task_id"].as_str().ok_or("no task id")?.to_owned();
    assert_eq!(
        again["task_id"], created["task_id"],
        "a repeated click pays once"
    );
    println!("POST /images (twice) -> task {task_id}");
    for _ in 0..100 {
        let shown = user(addr, "GET", &format!("/images/{task_id}"), "").await?;
        println!("GET /images/{task_id} -> {shown}");
        if shown["status"] == "SUCCESS" || shown["status"] == "FAILED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    server.abort();
    Ok(())
}

/// The user's side: one HTTP/1.1 request to the service, its JSON answer.
#[allow(dead_code)]
async fn user(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Value, Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (_, json) = answer.split_once("\r\n\r\n").ok_or("no answer")?;
    Ok(serde_json::from_str(json)?)
}
