//! The API's endpoints: `POST /api/generate`, `GET /api/status`, the result images, the OpenAPI
//! document and the counters, every answer in the API's JSON envelope.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use gptimage_types::{CreatedTask, Envelope, GenerateRequest, RawGenerateRequest, TaskStatus};
use serde::Serialize;
use serde_json::Value;

use crate::App;
use crate::config::{Endpoint, FaultKind};
use crate::server::Kill;
use crate::store::Refusal;

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/generate", any(generate))
        .route("/api/status", any(status))
        .route("/files/{task_id}/{file}", any(file))
        .route("/uploads/{name}", any(upload))
        .route("/openapi.json", any(openapi))
        .route("/_emulator/counters", any(counters))
        .fallback(fallback)
        .with_state(app)
}

async fn generate(State(app): State<Arc<App>>, request: Request) -> Response {
    app.store.count(|c| c.generate_requests += 1);
    if request.method() != Method::POST {
        return method_not_allowed(&app, "POST");
    }
    let fault = app.store.fault(Endpoint::Generate);
    if let Some(answer) = fault
        .as_ref()
        .and_then(|f| fault_before(&app, f, Endpoint::Generate))
    {
        return answer;
    }
    let (parts, body) = request.into_parts();
    let key = match authenticate(&app, &parts.headers) {
        Ok(key) => key,
        Err(answer) => return answer,
    };
    if !is_json(&parts.headers) {
        return error(
            &app,
            StatusCode::BAD_REQUEST,
            "Bad Request: send the body as JSON with 'Content-Type: application/json'.",
        );
    }
    let bytes = match read_body(&app, &parts.headers, body).await {
        Ok(bytes) => bytes,
        Err(answer) => return answer,
    };
    let generate = match parse_request(&bytes, app.store.config.allow_unknown_fields) {
        Ok(request) => request,
        Err(message) => {
            return error(
                &app,
                StatusCode::BAD_REQUEST,
                format!("Bad Request: {message}."),
            );
        }
    };
    let now = Instant::now();
    let id = match app.store.create(&key, generate, now) {
        Ok(id) => id,
        Err(Refusal::RateLimited { retry_after }) => {
            if !app.store.config.rate_limit_retry_after {
                return error(
                    &app,
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too Many Requests: slow down.",
                );
            }
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            return rate_limited(&app, seconds);
        }
        Err(Refusal::InsufficientCredits { balance }) => {
            return error(
                &app,
                StatusCode::PAYMENT_REQUIRED,
                format!(
                    "Insufficient credits: a task costs {} credits and the balance is {balance}.",
                    gptimage_types::CREDITS_PER_TASK
                ),
            );
        }
    };
    tokio::spawn(crate::worker::run(app.clone(), id.clone()));
    let answer = json(
        StatusCode::OK,
        &Envelope::success(CreatedTask::new(id, TaskStatus::Pending)),
    );
    finish(fault, answer, &parts.extensions).await
}

async fn status(State(app): State<Arc<App>>, request: Request) -> Response {
    app.store.count(|c| c.status_requests += 1);
    if request.method() != Method::GET {
        return method_not_allowed(&app, "GET");
    }
    let fault = app.store.fault(Endpoint::Status);
    if let Some(answer) = fault
        .as_ref()
        .and_then(|f| fault_before(&app, f, Endpoint::Status))
    {
        return answer;
    }
    let key = match authenticate(&app, request.headers()) {
        Ok(key) => key,
        Err(answer) => return answer,
    };
    let owner = app.store.account(&key).unwrap_or_default();
    let query = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .map(|Query(q)| q)
        .unwrap_or_default();
    let Some(id) = query
        .get("task_id")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    else {
        return error(
            &app,
            StatusCode::BAD_REQUEST,
            "Bad Request: 'task_id' is required.",
        );
    };
    let answer = match app.store.status(&owner, id, Instant::now()) {
        Some(info) => json(StatusCode::OK, &Envelope::success(info)),
        None => error(
            &app,
            StatusCode::NOT_FOUND,
            format!("Not Found: no task with id '{}'.", shorten(id)),
        ),
    };
    finish(fault, answer, request.extensions()).await
}

async fn file(State(app): State<Arc<App>>, request: Request) -> Response {
    let leaked = request.headers().contains_key(header::AUTHORIZATION);
    app.store.count(|c| {
        c.file_requests += 1;
        c.file_requests_with_authorization += u64::from(leaked);
    });
    if request.method() != Method::GET {
        return method_not_allowed(&app, "GET");
    }
    let fault = app.store.fault(Endpoint::Files);
    if let Some(answer) = fault
        .as_ref()
        .and_then(|f| fault_before(&app, f, Endpoint::Files))
    {
        return answer;
    }
    let mut segments = request
        .uri()
        .path()
        .trim_start_matches("/files/")
        .split('/');
    let (id, name) = (segments.next().unwrap_or(""), segments.next().unwrap_or(""));
    let index = name
        .strip_suffix(".png")
        .and_then(|n| n.parse::<usize>().ok());
    let image = index.and_then(|i| app.store.image(id, i, Instant::now()));
    let answer = match image {
        Some(png) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            Body::from(png.as_ref().clone()),
        )
            .into_response(),
        None => error(
            &app,
            StatusCode::NOT_FOUND,
            "Not Found: no such image; result images expire with their task.",
        ),
    };
    finish(fault, answer, request.extensions()).await
}

/// `PUT /uploads/{sha256}.{png|jpg|webp}` with the API key keeps an input image (its name must
/// be its content's SHA-256); `GET` serves it back, without a key, as a bucket serves a signed
/// URL: the emulator's stand-in for the store a user names, so local files work offline.
async fn upload(State(app): State<Arc<App>>, request: Request) -> Response {
    app.store.count(|c| c.upload_requests += 1);
    let name = request
        .uri()
        .path()
        .trim_start_matches("/uploads/")
        .to_owned();
    let content_type = match name.rsplit_once('.') {
        Some((_, "png")) => "image/png",
        Some((_, "jpg")) => "image/jpeg",
        Some((_, "webp")) => "image/webp",
        _ => "",
    };
    let hash = name.split('.').next().unwrap_or_default();
    let named_well = !content_type.is_empty()
        && hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !named_well {
        return error(
            &app,
            StatusCode::NOT_FOUND,
            "Not Found: uploads are named {sha256 of the content, lowercase hex}.{png|jpg|webp}.",
        );
    }
    match *request.method() {
        Method::GET => match app.store.uploaded(&name) {
            Some(bytes) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type)],
                Body::from(bytes.as_ref().clone()),
            )
                .into_response(),
            None => error(&app, StatusCode::NOT_FOUND, "Not Found: no such upload."),
        },
        Method::PUT => {
            let (parts, body) = request.into_parts();
            if let Err(answer) = authenticate(&app, &parts.headers) {
                return answer;
            }
            let limit = app.store.config.max_input_bytes;
            let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
                return error(
                    &app,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("Payload Too Large: an input image may have at most {limit} bytes."),
                );
            };
            if crate::render::content_hash(&bytes) != hash {
                return error(
                    &app,
                    StatusCode::BAD_REQUEST,
                    "Bad Request: the upload's name is not the SHA-256 of its content.",
                );
            }
            let created = app.store.upload(&name, bytes.to_vec());
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, [(header::CONTENT_TYPE, "application/json")], "{}").into_response()
        }
        _ => method_not_allowed(&app, "GET, PUT"),
    }
}

async fn openapi(State(app): State<Arc<App>>, request: Request) -> Response {
    app.store.count(|c| c.other_requests += 1);
    if request.method() != Method::GET {
        return method_not_allowed(&app, "GET");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi.clone(),
    )
        .into_response()
}

async fn counters(State(app): State<Arc<App>>, request: Request) -> Response {
    if request.method() != Method::GET {
        return method_not_allowed(&app, "GET");
    }
    json(StatusCode::OK, &app.store.counters())
}

async fn fallback(State(app): State<Arc<App>>, request: Request) -> Response {
    app.store.count(|c| c.other_requests += 1);
    error(
        &app,
        StatusCode::NOT_FOUND,
        format!(
            "Not Found: no endpoint at '{}'; the API serves POST /api/generate and GET /api/status.",
            shorten(request.uri().path())
        ),
    )
}

/// The fault's answer when it acts before the request is processed.
fn fault_before(app: &App, fault: &FaultKind, endpoint: Endpoint) -> Option<Response> {
    match fault {
        FaultKind::ServerError => Some(error(
            app,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error: please try again or contact support.",
        )),
        FaultKind::RateLimited { retry_after_secs } => Some(rate_limited(app, *retry_after_secs)),
        FaultKind::Refuse(status) => Some(refusal(app, *status, endpoint)),
        _ => None,
    }
}

/// The answer of a [`FaultKind::Refuse`]: the API's envelope with the status's usual message,
/// or, from the image host, the short XML error object stores answer for a URL they refuse.
fn refusal(app: &App, status: u16, endpoint: Endpoint) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    if endpoint == Endpoint::Files {
        let (code, message) = match status {
            StatusCode::FORBIDDEN => ("AccessDenied", "Request has expired"),
            StatusCode::NOT_FOUND => ("NoSuchKey", "The specified key does not exist."),
            _ => ("Refused", "The request was refused."),
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>\n"
        );
        return (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response();
    }
    let message = match status {
        StatusCode::UNAUTHORIZED => "Unauthorized: the API key is missing or invalid.",
        StatusCode::PAYMENT_REQUIRED => "Insufficient credits: top up the account.",
        StatusCode::NOT_FOUND => "Not Found: no task with this id.",
        StatusCode::FORBIDDEN => "Forbidden: this key may not do that.",
        _ => "The request was refused.",
    };
    error(app, status, message)
}

/// Sends `answer`, unless a fault that acts after processing says otherwise.
async fn finish(
    fault: Option<FaultKind>,
    answer: Response,
    extensions: &axum::http::Extensions,
) -> Response {
    match fault {
        Some(FaultKind::Latency(delay)) => {
            tokio::time::sleep(delay).await;
            answer
        }
        Some(FaultKind::DropConnection) => {
            if let Some(kill) = extensions.get::<Kill>() {
                kill.fire();
                std::future::pending::<()>().await;
            }
            answer
        }
        Some(FaultKind::GatewayError(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let page = format!(
                "<html><head><title>{status}</title></head><body><center><h1>{status}</h1></center><hr><center>nginx</center></body></html>\n"
            );
            (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
        _ => answer,
    }
}

/// The account key of the request's bearer token, or the 401 answer.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response, returned at once"
)]
fn authenticate(app: &App, headers: &HeaderMap) -> Result<String, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(error(
            app,
            StatusCode::UNAUTHORIZED,
            "Unauthorized: missing API key; send 'Authorization: Bearer <key>'.",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or_default();
    if token.is_empty() || app.store.account(token).is_none() {
        return Err(error(
            app,
            StatusCode::UNAUTHORIZED,
            "Unauthorized: invalid API key.",
        ));
    }
    Ok(token.to_owned())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"))
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the response, returned at once"
)]
async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Response> {
    let limit = app.store.config.max_body_bytes;
    let too_large = || {
        error(
            app,
            StatusCode::BAD_REQUEST,
            format!("Bad Request: the body is larger than {limit} bytes."),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(_) => Err(too_large()),
    }
}

/// The fields of `POST /generate`, as the API documents them.
pub(crate) const FIELDS: [&str; 6] = [
    "prompt",
    "size",
    "quality",
    "images",
    "input_fidelity",
    "callback_url",
];

/// Reads a generation request, naming the field at fault when it is not one; a field the API
/// does not have is refused unless `allow_unknown`.
fn parse_request(bytes: &[u8], allow_unknown: bool) -> Result<GenerateRequest, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not valid JSON ({e})"))?;
    let Value::Object(fields) = value else {
        return Err("the body must be a JSON object".to_owned());
    };
    if !allow_unknown && let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let shown: String = unknown.chars().take(64).collect();
        return Err(format!(
            "'{shown}' is not a field of this API; its fields are {}",
            FIELDS.join(", ")
        ));
    }
    // The documentation types every field as a string (or, for `images`, an array of strings):
    // `null` is none of these. A strict server refuses it, and so does the emulator, which
    // exists to catch a client's mistakes; an absent field is the way to leave one out.
    for field in [
        "prompt",
        "size",
        "quality",
        "input_fidelity",
        "callback_url",
    ] {
        match fields.get(field) {
            None | Some(Value::String(_)) => {}
            Some(Value::Null) => {
                return Err(format!(
                    "'{field}' must be a string, not null: leave the field out instead"
                ));
            }
            Some(_) => return Err(format!("'{field}' must be a string")),
        }
    }
    match fields.get("images") {
        None => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(Value::Null) => {
            return Err(
                "'images' must be an array of URL strings, not null: leave the field out instead"
                    .to_owned(),
            );
        }
        Some(_) => return Err("'images' must be an array of URL strings".to_owned()),
    }
    let raw: RawGenerateRequest =
        serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())?;
    raw.validate().map_err(|e| e.to_string())
}

fn method_not_allowed(app: &App, allow: &'static str) -> Response {
    let mut answer = error(
        app,
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method Not Allowed: this endpoint takes {allow}."),
    );
    answer
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    answer
}

fn rate_limited(app: &App, seconds: u64) -> Response {
    let mut answer = error(
        app,
        StatusCode::TOO_MANY_REQUESTS,
        format!("Too Many Requests: slow down; retry after {seconds} seconds."),
    );
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    answer
}

/// An error in the API's envelope. The HTTP status mirrors the code, unless the emulator is
/// configured to answer every envelope with HTTP 200, as some services do.
fn error(app: &App, status: StatusCode, message: impl Into<String>) -> Response {
    let body = Envelope::<Value>::error(i64::from(status.as_u16()), message);
    let http = if app.store.config.errors_with_http_200 {
        StatusCode::OK
    } else {
        status
    };
    json(http, &body)
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("the API's types always serialize");
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Cuts a user-supplied value for an error message.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 100 {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(100).collect::<String>())
    }
}
