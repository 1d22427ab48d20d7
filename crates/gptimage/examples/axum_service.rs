//! A web service that turns a user's click into an image: `POST /images` submits a task and
//! answers its id at once; `GET /images/{id}` reports it; the service's callbacks arrive on the
//! same router and end each wait early. Run offline, it starts the emulator, serves on a free
//! port, plays the user (a POST, then GETs until the image is ready) and exits:
//!
//! ```text
//! cargo run -p gptimage --features axum --example axum_service
//! ```

mod support;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gptimage::webhook::Receiver;
use gptimage::{Client, ErrorKind, GenerateRequest, TaskInfo};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the handlers share: the client, and the tasks that ended (a real service keeps these
/// in its database).
#[derive(Clone)]
struct App {
    client: Client,
    ended: Arc<Mutex<HashMap<String, TaskInfo>>>,
}

/// The part to copy: the routes, and the webhooks on the same router.
fn routes(client: Client, receiver: &Receiver) -> Router {
    let app = App {
        client,
        ended: Arc::default(),
    };
    Router::new()
        .route("/images", post(create))
        .route("/images/{id}", get(show))
        .with_state(app)
        .merge(receiver.axum_router())
}

/// `POST /images` with `{"prompt": "..."}`: submits, answers the task id at once, and waits
/// in the background (the service's callback ends that wait early).
async fn create(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let prompt = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["prompt"].as_str().map(str::to_owned));
    let Some(prompt) = prompt else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "send {\"prompt\": \"...\"}"}),
        );
    };
    let request = match GenerateRequest::text_to_image(prompt).build() {
        Ok(request) => request,
        Err(e) => return answer(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
    };
    match app.client.submit(&request).await {
        // Store the id with the user's record here: it is all a later request needs.
        Ok(created) => {
            let (client, ended, id) = (
                app.client.clone(),
                app.ended.clone(),
                created.task_id.clone(),
            );
            tokio::spawn(async move {
                if let Ok(task) = client.wait(&id).await {
                    ended
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, task);
                }
            });
            answer(StatusCode::ACCEPTED, json!({"task_id": created.task_id}))
        }
        // A task may exist: say so rather than let the user click again and pay twice.
        Err(e) if e.kind() == ErrorKind::OutcomeUnknown => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "the service did not answer; do not retry yet"}),
        ),
        Err(e) => answer(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()})),
    }
}

/// `GET /images/{id}`: the task's status, and its images once done.
async fn show(State(app): State<App>, Path(id): Path<String>) -> Response {
    let ended = app
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    let status = match ended {
        Some(task) => Ok(task),
        None => app.client.status(&id).await,
    };
    match status {
        Ok(task) => answer(
            StatusCode::OK,
            json!({"status": task.status.as_str(), "images": task.images()}),
        ),
        Err(e) => answer(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()})),
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    // Where the service sends callbacks: this server's public URL (here, loopback).
    let receiver = Receiver::new(&format!("http://{addr}/hooks/"))?;
    let (builder, _guard) = support::builder()?;
    let client = builder.webhooks(receiver.clone()).build()?;
    let server = tokio::spawn(async move { axum::serve(tcp, routes(client, &receiver)).await });

    // Play the user: ask for an image, then look until it is ready.
    let created = user(
        addr,
        "POST",
        "/images",
        r#"{"prompt": "a lighthouse at dawn"}"#,
    )
    .await?;
    let task_id = created["task_id"].as_str().ok_or("no task id")?.to_owned();
    println!("POST /images -> task {task_id}");
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
async fn user(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (_, json) = answer.split_once("\r\n\r\n").ok_or("no answer")?;
    Ok(serde_json::from_str(json)?)
}
