//! Reading answers: what came back from one attempt, classified ([`Came`]), and the one
//! decision of what it means for each operation ([`judge`]): done, worth another attempt, or
//! final. The arms of `judge` are the table of `API.md` §3; the never-pay-twice rule lives there
//! and nowhere else.

use std::time::Duration;

use gptimage_types::{ApiCode, CreatedTask, Envelope, TaskInfo};
use http::StatusCode;
use http::header;
use serde::de::DeserializeOwned;

use super::request::{Call, Op};
use super::schedule::retry_after;
use crate::config::Config;
use crate::error::{Error, RequestSent, TransportError, TransportErrorKind};
use crate::transport::HttpResponse;

/// How many characters of an unreadable body an error keeps.
const EXCERPT_CHARS: usize = 200;

/// What came back from one attempt, before any judgement.
#[derive(Debug)]
pub(crate) enum Came<T> {
    /// What the call asked for.
    Value(T),
    /// The exchange failed and the request certainly did not reach the server.
    NotSent(TransportError),
    /// The exchange failed after the request may have reached the server.
    MaybeSent(TransportError),
    /// The API's own envelope with an error code: the code is authoritative.
    Envelope {
        code: i64,
        http: StatusCode,
        message: Option<String>,
        retry_after: Option<Duration>,
    },
    /// An answer that is not the API's envelope (a proxy's page, an empty body): its HTTP status
    /// decides. A redirect is one (API calls never follow them).
    Foreign {
        http: StatusCode,
        excerpt: String,
        location: Option<String>,
        retry_after: Option<Duration>,
    },
    /// A success whose payload could not be read (for a download: bytes that are no image).
    Unreadable { http: StatusCode, excerpt: String },
}

impl<T> Came<T> {
    /// A failed exchange, by whether the request can have reached the server.
    fn failed(error: TransportError) -> Self {
        match error.sent() {
            RequestSent::No => Came::NotSent(error),
            _ => Came::MaybeSent(error),
        }
    }
}

/// What an attempt means for the call.
#[derive(Debug)]
pub(crate) enum Judged<T> {
    /// The call succeeded.
    Done(T),
    /// Another attempt may succeed and cannot pay twice; the server may have asked for a pause.
    /// `rate_limited`: it was a 429, the service pushing back.
    Retry {
        error: Error,
        retry_after: Option<Duration>,
        rate_limited: bool,
    },
    /// Final: another attempt would not help, or might create a second task.
    Fail(Error),
}

/// The never-pay-twice table: for each operation and each kind of answer, whether another
/// attempt is safe and useful, and the error to give if not.
pub(crate) fn judge<T>(call: &Call, came: Came<T>) -> Judged<T> {
    use Came::*;
    use Op::*;
    let to = call.destination();
    match (call.op, came) {
        (_, Value(value)) => Judged::Done(value),

        // Nothing reached the server: any call may be repeated.
        (Download, NotSent(e)) => retry(download_error(call, e), None),
        (_, NotSent(e)) => retry(Error::transport(e, &to), None),

        // A submission that may have reached the service is never repeated: a task may exist.
        (Submit, MaybeSent(e)) => Judged::Fail(Error::outcome_unknown(
            format!("{e} after the request was sent to {to}"),
            Some(e),
        )),
        (Download, MaybeSent(e)) if e.kind() == TransportErrorKind::BodyTooLarge => {
            Judged::Fail(download_error(call, e))
        }
        (Download, MaybeSent(e)) => retry(download_error(call, e), None),
        // Status requests are safe to repeat on timeouts and resets.
        (Status, MaybeSent(e)) => retry(Error::transport(e, &to), None),

        // The API's envelope: only its "try again" codes are retried; no task was made.
        (
            _,
            Envelope {
                code,
                http,
                message,
                retry_after,
            },
        ) => {
            let error = Error::api(code, Some(http.as_u16()), message, retry_after);
            match ApiCode::from_code(code) {
                ApiCode::RateLimited => Judged::Retry {
                    error,
                    retry_after,
                    rate_limited: true,
                },
                ApiCode::ServerError(_) => retry(error, retry_after),
                _ => Judged::Fail(error),
            }
        }

        // A foreign answer to a download: its status decides.
        (
            Download,
            Foreign {
                http, retry_after, ..
            },
        ) => {
            let advice = if http == StatusCode::NOT_FOUND || http == StatusCode::FORBIDDEN {
                "; result URLs are short-lived: download soon after the task ends"
            } else {
                ""
            };
            let error = Error::download_refused(
                format!("{} answered HTTP {}{advice}", call.url(), http.as_u16()),
                http.as_u16(),
            );
            if http.is_server_error() || http == StatusCode::TOO_MANY_REQUESTS {
                retry(error, retry_after)
            } else {
                Judged::Fail(error)
            }
        }
        // A bare 429 from the API's front: refused before any task was made.
        (
            _,
            Foreign {
                http: StatusCode::TOO_MANY_REQUESTS,
                retry_after,
                ..
            },
        ) => {
            let error = Error::api(429, Some(429), None, retry_after);
            Judged::Retry {
                error,
                retry_after,
                rate_limited: true,
            }
        }
        // API calls never follow redirects, so the key is never sent elsewhere.
        (_, Foreign { http, location, .. }) if http.is_redirection() => {
            Judged::Fail(Error::invalid_response(
                format!(
                    "the API answered with a redirect to {}, which is not followed so that the \
                     key is not sent elsewhere; set the base URL to the final address",
                    location.as_deref().unwrap_or("nowhere")
                ),
                Some(http.as_u16()),
                None,
            ))
        }
        // Refused before it was processed: nothing was created, and repeating will not help.
        (
            _,
            Foreign {
                http,
                excerpt,
                retry_after,
                ..
            },
        ) if http.is_client_error() => {
            let code = i64::from(http.as_u16());
            Judged::Fail(Error::api(
                code,
                Some(http.as_u16()),
                Some(excerpt),
                retry_after,
            ))
        }
        // A gateway's page or garbage after a submission: the service may have made the task.
        (Submit, Foreign { http, excerpt, .. }) => Judged::Fail(Error::outcome_unknown(
            format!(
                "the answer (HTTP {}) did not come from the API: {excerpt}",
                http.as_u16()
            ),
            None,
        )),
        (
            Status,
            Foreign {
                http,
                excerpt,
                retry_after,
                ..
            },
        ) if http.is_server_error() => {
            let code = i64::from(http.as_u16());
            let error = Error::api(code, Some(http.as_u16()), Some(excerpt), retry_after);
            retry(error, retry_after)
        }
        (
            Status,
            Foreign {
                http,
                excerpt,
                retry_after,
                ..
            },
        ) => {
            let error = Error::invalid_response(
                "the API's answer could not be understood",
                Some(http.as_u16()),
                Some(excerpt),
            );
            retry(error, retry_after)
        }

        // A success without a readable task: for a submission the task was probably created.
        (Submit, Unreadable { excerpt, .. }) => Judged::Fail(Error::outcome_unknown(
            format!("the API reported success but its answer had no readable task: {excerpt}"),
            None,
        )),
        (Status, Unreadable { http, excerpt }) => retry(
            Error::invalid_response(
                "the API reported success but its answer had no readable task",
                Some(http.as_u16()),
                Some(excerpt),
            ),
            None,
        ),
        (Download, Unreadable { excerpt, .. }) => Judged::Fail(Error::download(
            format!("{} is not an image ({excerpt})", call.url()),
            None,
        )),
    }
}

fn retry<T>(error: Error, retry_after: Option<Duration>) -> Judged<T> {
    Judged::Retry {
        error,
        retry_after,
        rate_limited: false,
    }
}

fn download_error(call: &Call, e: TransportError) -> Error {
    Error::download(
        format!("could not download {}: {e}", call.url()),
        Some(Box::new(e)),
    )
}

/// Reads the answer to a submission.
pub(crate) fn read_submit(
    _call: &Call,
    config: &Config,
    answer: Result<HttpResponse, TransportError>,
) -> Came<CreatedTask> {
    read_api(config, answer)
}

/// Reads the answer to a status request; a status without a task id is the one asked about.
pub(crate) fn read_status(
    call: &Call,
    config: &Config,
    answer: Result<HttpResponse, TransportError>,
) -> Came<TaskInfo> {
    match read_api::<TaskInfo>(config, answer) {
        Came::Value(mut info) => {
            if info.task_id.is_empty() {
                info.task_id = call.task_id.clone().unwrap_or_default();
            }
            Came::Value(info)
        }
        other => other,
    }
}

/// Reads an API answer: the envelope's `code` is authoritative when the body is the envelope;
/// the HTTP status decides only when it is not.
fn read_api<T: DeserializeOwned>(
    config: &Config,
    answer: Result<HttpResponse, TransportError>,
) -> Came<T> {
    let response = match answer {
        Ok(response) => response,
        Err(e) => return Came::failed(e),
    };
    let http = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.body();
    // The common case in one pass: a success envelope whose payload reads as `T`. Anything else
    // takes the tolerant path below, which tells the cases apart.
    if let Ok(Envelope {
        code,
        data: Some(data),
        ..
    }) = serde_json::from_slice::<Envelope<T>>(body)
        && ApiCode::from_code(code) == ApiCode::Success
    {
        return Came::Value(data);
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope<serde_json::Value>>(body) else {
        return Came::Foreign {
            http,
            excerpt: excerpt(body, config),
            location: location(&response),
            retry_after,
        };
    };
    if ApiCode::from_code(envelope.code) != ApiCode::Success {
        return Came::Envelope {
            code: envelope.code,
            http,
            // The service's words may repeat what was sent: the key, above all.
            message: envelope.message.map(|m| secret_free(&m, config)),
            retry_after,
        };
    }
    match envelope.data.map(serde_json::from_value::<T>) {
        Some(Ok(data)) => Came::Value(data),
        _ => Came::Unreadable {
            http,
            excerpt: excerpt(body, config),
        },
    }
}

fn location(response: &HttpResponse) -> Option<String> {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// One step of a download: the image, or where it moved to.
#[derive(Debug)]
pub(crate) enum Fetched {
    Bytes(Vec<u8>, &'static str),
    Redirect(String),
}

/// Reads the answer to an image download: a redirect with a usable `Location` is a step, not an
/// error; the bytes must be an image.
pub(crate) fn read_download(
    call: &Call,
    _config: &Config,
    answer: Result<HttpResponse, TransportError>,
) -> Came<Fetched> {
    let response = match answer {
        Ok(response) => response,
        Err(e) => return Came::failed(e),
    };
    let http = response.status();
    if http.is_redirection()
        && let Some(target) = location(&response).and_then(|l| call.url.join(&l).ok())
    {
        return Came::Value(Fetched::Redirect(target.into()));
    }
    if !http.is_success() {
        return Came::Foreign {
            http,
            excerpt: String::new(),
            location: None,
            retry_after: retry_after(response.headers()),
        };
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .to_owned();
    let body = response.into_body();
    match sniff_image(&body) {
        Some(extension) => Came::Value(Fetched::Bytes(body, extension)),
        None => {
            let start: String = String::from_utf8_lossy(&body[..body.len().min(40)])
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            Came::Unreadable {
                http,
                excerpt: format!("{content_type}, {} bytes starting {start:?}", body.len()),
            }
        }
    }
}

/// The first characters of a body for an error, with the key removed should a server echo it.
/// A server's text with the client's key and every secret-shaped part removed.
pub(crate) fn secret_free(text: &str, config: &Config) -> String {
    gptimage_types::redact_with(text, &[config.api_key.expose_secret()])
}

fn excerpt(body: &[u8], config: &Config) -> String {
    let text = String::from_utf8_lossy(body);
    let text = secret_free(&text, config);
    let mut shown: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    if text.chars().count() > EXCERPT_CHARS {
        shown.push('…');
    }
    if shown.trim().is_empty() {
        "an empty body".to_owned()
    } else {
        shown
    }
}

/// The image format the bytes start with, as a file extension.
pub(crate) fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else {
        None
    }
}
