//! A task's life after submission: queued, running (fetching inputs, rendering), ended; then the
//! webhook, delivered with retries.

use std::sync::Arc;
use std::time::Instant;

use axum::http::header;
use gptimage_types::{GenerateRequest, StatusResponse};
use image::RgbImage;

use crate::render;
use crate::store::Phase;
use crate::{App, Endpoint, FaultKind};

/// The message of a task whose prompt trips the content policy, as the service words it.
pub(crate) const POLICY_VIOLATION: &str = "Content policy violation detected";

/// Drives task `id` through its lifecycle on the configured timings.
pub(crate) async fn run(app: Arc<App>, id: String) {
    let config = &app.store.config;
    tokio::time::sleep(config.pending_for).await;
    app.store.set_phase(&id, Phase::Running, Instant::now());
    let started = tokio::time::Instant::now();
    let Some(request) = app.store.request(&id) else {
        return;
    };
    let outcome = produce(&app, &request).await;
    tokio::time::sleep_until(started + config.running_for).await;
    let phase = match outcome {
        Ok(images) => Phase::Succeeded(images.into_iter().map(Arc::new).collect()),
        Err(message) => Phase::Failed(message),
    };
    app.store.set_phase(&id, phase, Instant::now());
    if let Some(url) = request.callback_url() {
        deliver_webhook(&app, &id, url).await;
    }
}

/// Makes the task's images, or says why it failed.
async fn produce(app: &App, request: &GenerateRequest) -> Result<Vec<Vec<u8>>, String> {
    let phrase = app.store.config.fail_phrase.to_lowercase();
    if !phrase.is_empty() && request.prompt().to_lowercase().contains(&phrase) {
        return Err(POLICY_VIOLATION.to_owned());
    }
    let mut inputs = Vec::with_capacity(request.images().len());
    for (index, url) in request.images().iter().enumerate() {
        inputs.push(fetch_input(app, index + 1, url).await?);
    }
    let request = request.clone();
    let png = tokio::task::spawn_blocking(move || render::render_png(&request, &inputs))
        .await
        .map_err(|_| "the image could not be rendered".to_owned())?;
    Ok(vec![png])
}

/// Fetches and decodes input image number `n` (from 1), within the configured limits.
async fn fetch_input(app: &App, n: usize, url: &str) -> Result<RgbImage, String> {
    let config = &app.store.config;
    // A signed URL's query is a secret: messages show the URL without it.
    let shown = match url.split_once(['?', '#']) {
        Some((bare, _)) => format!("{bare}?…"),
        None => url.to_owned(),
    };
    let fail = |why: String| format!("input image {n} ({shown}) {why}");
    let parsed = reqwest::Url::parse(url).map_err(|e| fail(format!("is not a valid URL: {e}")))?;
    if !config.allow_remote_urls && !is_loopback(&parsed) {
        return Err(fail(
            "is not on a loopback host; the emulator fetches only from 127.0.0.1, ::1 or \
             localhost unless remote URLs are allowed"
                .to_owned(),
        ));
    }
    let mut response = app
        .http
        .get(parsed)
        .timeout(config.fetch_timeout)
        .send()
        .await
        .map_err(|e| fail(format!("could not be fetched: {}", reqwest_cause(&e))))?;
    if !response.status().is_success() {
        return Err(fail(format!(
            "could not be fetched: the server answered {}",
            response.status()
        )));
    }
    let limit = config.max_input_bytes;
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(fail(format!("is larger than the {limit}-byte limit")));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fail(format!("could not be read: {}", reqwest_cause(&e))))?
    {
        if bytes.len() + chunk.len() > limit {
            return Err(fail(format!("is larger than the {limit}-byte limit")));
        }
        bytes.extend_from_slice(&chunk);
    }
    tokio::task::spawn_blocking(move || render::decode(&bytes))
        .await
        .map_err(|_| fail("could not be decoded".to_owned()))?
        .map_err(|e| fail(format!("could not be decoded: {e}")))
}

/// POSTs the task's status envelope to its `callback_url`, retrying with doubling delays.
async fn deliver_webhook(app: &App, id: &str, url: &str) {
    let config = &app.store.config;
    let allowed =
        reqwest::Url::parse(url).is_ok_and(|u| config.allow_remote_urls || is_loopback(&u));
    let Some(info) = app.store.describe_task(id).filter(|_| allowed) else {
        app.store.count(|c| c.webhooks_abandoned += 1);
        return;
    };
    let body = serde_json::to_vec(&StatusResponse::success(info).with_message("success"))
        .expect("the API's types always serialize");
    let copies = match app.store.fault(Endpoint::Webhook) {
        Some(FaultKind::DropConnection) => {
            app.store.count(|c| c.webhooks_dropped += 1);
            return;
        }
        Some(FaultKind::Latency(delay)) => {
            tokio::time::sleep(delay).await;
            1
        }
        Some(FaultKind::Duplicate(extra)) => 1 + extra,
        _ => 1,
    };
    for _ in 0..copies {
        post_webhook(app, url, &body).await;
    }
}

/// One delivery, with its retries.
async fn post_webhook(app: &App, url: &str, body: &[u8]) {
    let config = &app.store.config;
    let mut delay = config.webhook_backoff;
    for attempt in 1..=config.webhook_attempts {
        app.store.count(|c| c.webhook_attempts += 1);
        let sent = app
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .timeout(config.webhook_timeout)
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            app.store.count(|c| c.webhooks_delivered += 1);
            return;
        }
        if attempt < config.webhook_attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    app.store.count(|c| c.webhooks_abandoned += 1);
}

/// Whether a URL's host is this machine: `localhost`, 127.0.0.0/8 or ::1.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A reqwest error's innermost cause: "connection refused" rather than the URL again.
fn reqwest_cause(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "it timed out".to_owned();
    }
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}
