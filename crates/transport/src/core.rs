//! The API's knowledge, written once and shared by both clients: building requests, reading
//! responses into results or typed errors, and deciding what happens next (retry after how long,
//! poll after how long, give up). It does no IO and reads no clock: time, attempt numbers, jitter
//! and the server's `Retry-After` are inputs.

use std::time::Duration;

use gptimage_types::{
    ApiCode, CreatedTask, Envelope, GenerateRequest, TaskInfo, TaskStatus, Timestamp,
};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::config::{Config, RetryPolicy};
use crate::error::{Error, RequestSent, Result, TransportError};
use crate::transport::{HttpRequest, HttpResponse, SendOptions};

/// How many characters of an unreadable body an error keeps.
const EXCERPT_CHARS: usize = 200;

/// The most redirects a download follows.
pub(crate) const MAX_DOWNLOAD_REDIRECTS: usize = 5;

/// What a call does, which decides what may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `POST /generate`: not idempotent; it costs credits.
    Submit,
    /// `GET /status`: safe to repeat.
    Status,
    /// `GET` of a result image: safe to repeat; never carries the key.
    Download,
}

/// One API call, ready to be turned into an HTTP request for each attempt.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) op: Op,
    method: Method,
    url: Url,
    body: Vec<u8>,
}

impl Call {
    /// `POST {base}/generate` with the request's documented JSON.
    pub(crate) fn submit(config: &Config, request: &GenerateRequest) -> Self {
        let url = Url::parse(&config.endpoint("generate")).expect("the base URL was checked");
        let body = serde_json::to_vec(request).expect("a request always serializes");
        Self {
            op: Op::Submit,
            method: Method::POST,
            url,
            body,
        }
    }

    /// `GET {base}/status?task_id=…`.
    pub(crate) fn status(config: &Config, task_id: &str) -> Result<Self> {
        check_task_id(task_id)?;
        let mut url = Url::parse(&config.endpoint("status")).expect("the base URL was checked");
        url.query_pairs_mut().append_pair("task_id", task_id);
        Ok(Self {
            op: Op::Status,
            method: Method::GET,
            url,
            body: Vec::new(),
        })
    }

    /// `GET` of a result image URL.
    pub(crate) fn download(url: &str) -> Result<Self> {
        let parsed = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                Error::download(
                    format!("the image URL {url:?} is not an absolute http(s) URL"),
                    None,
                )
            })?;
        Ok(Self {
            op: Op::Download,
            method: Method::GET,
            url: parsed,
            body: Vec::new(),
        })
    }

    /// The HTTP request of one attempt. Only API calls carry the key, and only to the API's
    /// origin (which they always go to, as their URL is built from the base URL).
    pub(crate) fn to_http(&self, config: &Config) -> HttpRequest {
        let mut request = http::Request::builder()
            .method(self.method.clone())
            .uri(self.url.as_str())
            .body(self.body.clone())
            .expect("a parsed URL is a valid URI");
        let headers = request.headers_mut();
        if let Ok(agent) = HeaderValue::from_str(&config.user_agent) {
            headers.insert(header::USER_AGENT, agent);
        }
        let to_api = self.op != Op::Download
            && self.url.origin().ascii_serialization() == config.base.origin;
        if to_api {
            let mut auth =
                HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose_secret()))
                    .expect("an ApiKey is visible ASCII");
            auth.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, auth);
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        if self.method == Method::POST {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        request
    }

    /// The limits of one attempt.
    pub(crate) fn options(&self, config: &Config) -> SendOptions {
        let max = match self.op {
            Op::Download => config.max_download_bytes,
            _ => config.max_response_bytes,
        };
        SendOptions::new(config.request_timeout, max)
    }

    /// Where the call goes, for messages: the origin, never the query.
    pub(crate) fn destination(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    /// The full URL (for downloads, whose URL is not secret to the caller).
    pub(crate) fn url(&self) -> &str {
        self.url.as_str()
    }
}

fn check_task_id(task_id: &str) -> Result<()> {
    let trimmed = task_id.trim();
    if trimmed.is_empty() || trimmed.len() > 256 || trimmed.chars().any(char::is_control) {
        return Err(Error::invalid_request(format!(
            "the task id {:?} is not one the API gives: expected a short non-empty string",
            task_id.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// The result of one attempt.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    Done(T),
    Failed(Failure),
}

/// A failed attempt: the error to return if nothing more is tried, whether another attempt may
/// help, and how long the server asked to wait.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) retryable: bool,
    pub(crate) retry_after: Option<Duration>,
}

impl<T> Outcome<T> {
    fn fail(error: Error, retryable: bool) -> Self {
        Self::Failed(Failure {
            error,
            retryable,
            retry_after: None,
        })
    }
}

/// Reads the answer to a submission.
pub(crate) fn read_submit(
    call: &Call,
    config: &Config,
    result: Result<HttpResponse, TransportError>,
) -> Outcome<CreatedTask> {
    read_api(call, config, result)
}

/// Reads the answer to a status request.
pub(crate) fn read_status(
    call: &Call,
    config: &Config,
    result: Result<HttpResponse, TransportError>,
    task_id: &str,
) -> Outcome<TaskInfo> {
    match read_api::<TaskInfo>(call, config, result) {
        Outcome::Done(mut info) => {
            if info.task_id.is_empty() {
                task_id.clone_into(&mut info.task_id);
            }
            Outcome::Done(info)
        }
        failed => failed,
    }
}

/// Reads an API answer: the envelope's `code` is authoritative when the body is the envelope;
/// the HTTP status decides only when it is not.
fn read_api<T: DeserializeOwned>(
    call: &Call,
    config: &Config,
    result: Result<HttpResponse, TransportError>,
) -> Outcome<T> {
    let submit = call.op == Op::Submit;
    let response = match result {
        Ok(response) => response,
        Err(error) if submit && error.sent() == RequestSent::Maybe => {
            let why = format!(
                "{error} after the request was sent to {}",
                call.destination()
            );
            return Outcome::fail(Error::outcome_unknown(why, Some(error)), false);
        }
        Err(error) => return Outcome::fail(Error::transport(error, &call.destination()), true),
    };
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.body();
    let envelope = serde_json::from_slice::<Envelope<serde_json::Value>>(body);
    let Ok(envelope) = envelope else {
        return read_foreign(call, config, status, response.headers(), body, retry_after);
    };
    let code = envelope.code;
    let api = ApiCode::from_code(code);
    if api != ApiCode::Success {
        let retryable = matches!(api, ApiCode::RateLimited | ApiCode::ServerError(_));
        let error = Error::api(code, Some(status.as_u16()), envelope.message, retry_after);
        return Outcome::Failed(Failure {
            error,
            retryable,
            retry_after,
        });
    }
    let data = envelope.data.map(serde_json::from_value::<T>);
    match data {
        Some(Ok(data)) => Outcome::Done(data),
        // A success whose payload is missing or unreadable: for a submission, the task was
        // probably created, so its outcome is unknown.
        _ if submit => Outcome::fail(
            Error::outcome_unknown(
                format!(
                    "the API reported success but its answer had no readable task: {}",
                    excerpt(body, config)
                ),
                None,
            ),
            false,
        ),
        _ => Outcome::fail(
            Error::invalid_response(
                "the API reported success but its answer had no readable task",
                Some(status.as_u16()),
                Some(excerpt(body, config)),
            ),
            true,
        ),
    }
}

/// Reads an answer that is not the API's envelope: a proxy's page, an empty body, garbage.
fn read_foreign<T>(
    call: &Call,
    config: &Config,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Outcome<T> {
    let shown = excerpt(body, config);
    let code = i64::from(status.as_u16());
    if status == StatusCode::TOO_MANY_REQUESTS {
        let error = Error::api(code, Some(status.as_u16()), None, retry_after);
        return Outcome::Failed(Failure {
            error,
            retryable: true,
            retry_after,
        });
    }
    if status.is_redirection() {
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nowhere");
        let error = Error::invalid_response(
            format!(
                "the API answered with a redirect to {location}, which is not followed so that \
                 the key is not sent elsewhere; set the base URL to the final address"
            ),
            Some(status.as_u16()),
            None,
        );
        return Outcome::fail(error, false);
    }
    if status.is_client_error() {
        // Refused before it was processed: nothing was created, and repeating will not help.
        let error = Error::api(code, Some(status.as_u16()), Some(shown), retry_after);
        return Outcome::fail(error, false);
    }
    if call.op == Op::Submit {
        let why = format!(
            "the answer (HTTP {}) did not come from the API: {shown}",
            status.as_u16()
        );
        return Outcome::fail(Error::outcome_unknown(why, None), false);
    }
    let error = if status.is_server_error() {
        Error::api(code, Some(status.as_u16()), Some(shown), retry_after)
    } else {
        Error::invalid_response(
            "the API's answer could not be understood",
            Some(status.as_u16()),
            Some(shown),
        )
    };
    Outcome::Failed(Failure {
        error,
        retryable: true,
        retry_after,
    })
}

/// A downloaded result image.
///
/// ```
/// # fn show(image: &gptimage_transport::Image) {
/// println!("{} bytes of {} from {}", image.bytes.len(), image.extension, image.url);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Image {
    /// The URL it came from (the task's, before any redirect).
    pub url: String,
    /// The image file.
    pub bytes: Vec<u8>,
    /// The file extension its bytes show: `png`, `jpg`, `webp` or `gif`.
    pub extension: &'static str,
}

/// One step of a download.
#[derive(Debug)]
pub(crate) enum Fetched {
    Bytes(Vec<u8>, &'static str),
    Redirect(String),
}

/// Reads the answer to an image download.
pub(crate) fn read_download(
    call: &Call,
    result: Result<HttpResponse, TransportError>,
) -> Outcome<Fetched> {
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            let too_large = error.kind() == crate::TransportErrorKind::BodyTooLarge;
            let what = format!("could not download {}: {error}", call.url());
            return Outcome::fail(Error::download(what, Some(Box::new(error))), !too_large);
        }
    };
    let status = response.status();
    if status.is_redirection() {
        let target = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|location| call.url.join(location).ok());
        return match target {
            Some(target) => Outcome::Done(Fetched::Redirect(target.into())),
            None => Outcome::fail(
                Error::download(
                    format!("{} redirected without a usable Location", call.url()),
                    None,
                ),
                false,
            ),
        };
    }
    if !status.is_success() {
        let advice = if status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN {
            "; result URLs are short-lived: download soon after the task ends"
        } else {
            ""
        };
        let error = Error::download(
            format!("{} answered HTTP {}{advice}", call.url(), status.as_u16()),
            None,
        );
        let retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        return Outcome::Failed(Failure {
            error,
            retryable,
            retry_after: retry_after(response.headers()),
        });
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .to_owned();
    let body = response.into_body();
    match sniff_image(&body) {
        Some(extension) => Outcome::Done(Fetched::Bytes(body, extension)),
        None => {
            let start: String = String::from_utf8_lossy(&body[..body.len().min(40)])
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            Outcome::fail(
                Error::download(
                    format!(
                        "{} is not an image ({content_type}, {} bytes starting {start:?})",
                        call.url(),
                        body.len()
                    ),
                    None,
                ),
                false,
            )
        }
    }
}

/// What to do after an attempt.
#[derive(Debug)]
pub(crate) enum Step<T> {
    Return(Result<T>),
    Sleep(Duration),
}

/// Decides, after attempt number `retries_done + 1`, whether to return or to try again after a
/// delay. `jitter` is a number in `[0, 1)`; `time_left` bounds the delay (a wait's deadline).
pub(crate) fn decide<T>(
    policy: &RetryPolicy,
    retries_done: u32,
    outcome: Outcome<T>,
    jitter: f64,
    time_left: Option<Duration>,
) -> Step<T> {
    let failure = match outcome {
        Outcome::Done(value) => return Step::Return(Ok(value)),
        Outcome::Failed(failure) => failure,
    };
    if !failure.retryable || retries_done >= policy.max_retries {
        return Step::Return(Err(failure.error));
    }
    let delay = match failure.retry_after {
        Some(asked) if asked > policy.max_retry_after => return Step::Return(Err(failure.error)),
        Some(asked) => asked,
        None => backoff(policy, retries_done, jitter),
    };
    if time_left.is_some_and(|left| delay > left) {
        return Step::Return(Err(failure.error));
    }
    Step::Sleep(delay)
}

/// The delay before retry number `retries_done + 1`: exponential, capped, with "equal jitter"
/// (half fixed, half random), so concurrent clients spread out.
pub(crate) fn backoff(policy: &RetryPolicy, retries_done: u32, jitter: f64) -> Duration {
    let base = policy.initial_backoff.as_secs_f64() * 2f64.powi(retries_done.min(32) as i32);
    let capped = base.min(policy.max_backoff.as_secs_f64());
    Duration::from_secs_f64(capped * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

/// What a wait does after a poll.
#[derive(Debug)]
pub(crate) enum WaitStep {
    Finished(Result<TaskInfo>),
    PollAfter(Duration),
}

/// Decides, after poll number `polls + 1` of a wait that began `elapsed` ago, whether the wait is
/// over. The last poll happens at the deadline; an unknown status keeps waiting.
pub(crate) fn after_poll(
    config: &Config,
    info: TaskInfo,
    polls: u32,
    elapsed: Duration,
) -> WaitStep {
    match info.status {
        TaskStatus::Success => WaitStep::Finished(Ok(info)),
        TaskStatus::Failed => WaitStep::Finished(Err(Error::task_failed(
            &info.task_id,
            info.error_message.clone(),
        ))),
        _ => {
            let left = config.wait_timeout.saturating_sub(elapsed);
            if left.is_zero() {
                WaitStep::Finished(Err(Error::deadline(&info.task_id, config.wait_timeout)))
            } else {
                WaitStep::PollAfter(config.poll.delay(polls).min(left))
            }
        }
    }
}

/// The server's `Retry-After`: delta-seconds, or an HTTP date measured against the answer's own
/// `Date` header (so no local clock is read).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = http_date(value)?;
    let now = http_date(headers.get(header::DATE)?.to_str().ok()?)?;
    let seconds = at.unix_seconds().saturating_sub(now.unix_seconds()).max(0);
    Some(Duration::from_secs(seconds as u64))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(text: &str) -> Option<Timestamp> {
    let mut parts = text.split_whitespace();
    let _weekday = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u32 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || year > 9999 {
        return None;
    }
    format!("{year:04}-{month:02}-{day:02}T{time}Z")
        .parse()
        .ok()
}

/// The first characters of a body for an error, with the key removed should a server echo it.
fn excerpt(body: &[u8], config: &Config) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.replace(config.api_key.expose_secret(), "<redacted>");
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

/// A file name for image `index` (from 0) of a task: `{stem}-{index+1}.{ext}`, where the stem
/// keeps only letters, digits, `-` and `_` (a task id from the server never names a path).
pub(crate) fn file_name(stem: &str, index: usize, extension: &str) -> String {
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let safe = if safe.is_empty() {
        "image".to_owned()
    } else {
        safe
    };
    format!("{safe}-{}.{extension}", index + 1)
}

/// The status answer of the status envelope, for tests of the reading functions.
#[cfg(test)]
fn status_body(status: &str) -> Vec<u8> {
    serde_json::to_vec(&gptimage_types::StatusResponse::success(TaskInfo::new(
        "t1",
        TaskStatus::parse(status),
    )))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientBuilder;
    use crate::error::{ErrorKind, TransportErrorKind};

    struct Nothing;
    impl crate::config::sealed::Sealed for Nothing {}
    impl crate::config::FromConfig for Nothing {
        fn from_config(_: Config) -> Result<Self> {
            Ok(Nothing)
        }
    }

    fn config() -> Config {
        ClientBuilder::<Nothing>::new()
            .api_key("sk-secret-key")
            .base_url("https://api.example/api")
            .wait_timeout(Duration::from_secs(60))
            .config()
            .unwrap()
    }

    fn answer(
        status: u16,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, TransportError> {
        let mut response = http::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        Ok(response.body(body.to_vec()).unwrap())
    }

    fn broken(kind: TransportErrorKind, sent: RequestSent) -> Result<HttpResponse, TransportError> {
        Err(TransportError::new(kind, sent, "boom"))
    }

    fn submit_call(config: &Config) -> Call {
        let request = GenerateRequest::text_to_image("a cat").build().unwrap();
        Call::submit(config, &request)
    }

    /// (retryable, error kind) of a failed outcome.
    fn judged<T: std::fmt::Debug>(outcome: Outcome<T>) -> (bool, ErrorKind, Option<Duration>) {
        match outcome {
            Outcome::Failed(f) => (f.retryable, f.error.kind(), f.retry_after),
            Outcome::Done(v) => panic!("expected a failure, got {v:?}"),
        }
    }

    #[test]
    fn the_submission_request_is_exactly_the_documented_one() {
        let config = config();
        let request = submit_call(&config).to_http(&config);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "https://api.example/api/generate");
        assert_eq!(request.headers()["authorization"], "Bearer sk-secret-key");
        assert!(request.headers()["authorization"].is_sensitive());
        assert_eq!(request.headers()["content-type"], "application/json");
        assert_eq!(request.body(), br#"{"prompt":"a cat"}"#);
    }

    #[test]
    fn status_ids_are_encoded_and_checked() {
        let config = config();
        let call = Call::status(&config, "n36 abc&x=1").unwrap();
        assert_eq!(
            call.to_http(&config).uri(),
            "https://api.example/api/status?task_id=n36+abc%26x%3D1"
        );
        for bad in ["", "  ", "a\nb"] {
            let err = Call::status(&config, bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        }
    }

    #[test]
    fn downloads_never_carry_the_key() {
        let config = config();
        for url in [
            "https://cdn.example/a.png",
            "https://api.example/files/a.png",
        ] {
            let request = Call::download(url).unwrap().to_http(&config);
            assert!(request.headers().get("authorization").is_none(), "{url}");
        }
        assert!(Call::download("file:///etc/passwd").is_err());
        assert!(Call::download("/relative.png").is_err());
    }

    #[test]
    fn which_submission_failures_are_retried() {
        let config = config();
        let call = submit_call(&config);
        let envelope_500 = br#"{"code":500,"message":"Internal Server Error","data":null}"#;
        let envelope_400 =
            br#"{"code":400,"message":"Bad Request: 'prompt' is required.","data":null}"#;
        let cases: Vec<(Result<HttpResponse, TransportError>, bool, ErrorKind)> = vec![
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
        for (i, (result, retryable, kind)) in cases.into_iter().enumerate() {
            let (r, k, _) = judged(read_submit(&call, &config, result));
            assert_eq!((r, k), (retryable, kind), "case {i}");
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
        ] {
            let (retryable, _, _) = judged(read_status(&call, &config, result, "t1"));
            assert!(retryable);
        }
        let (retryable, kind, _) = judged(read_status(
            &call,
            &config,
            answer(
                404,
                br#"{"code":404,"message":"Not Found","data":null}"#,
                &[],
            ),
            "t1",
        ));
        assert_eq!((retryable, kind), (false, ErrorKind::Api));
        match read_status(
            &call,
            &config,
            answer(200, &status_body("SUCCESS"), &[]),
            "t1",
        ) {
            Outcome::Done(info) => assert_eq!(info.status, TaskStatus::Success),
            Outcome::Failed(f) => panic!("{:?}", f.error),
        }
    }

    #[test]
    fn api_errors_keep_code_status_message_and_retry_after() {
        let config = config();
        let call = submit_call(&config);
        let (_, _, retry_after) = judged(read_submit(
            &call,
            &config,
            answer(
                429,
                br#"{"code":429,"message":"slow down","data":null}"#,
                &[("retry-after", "7")],
            ),
        ));
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        let Outcome::Failed(failure) = read_submit(
            &call,
            &config,
            answer(
                200,
                br#"{"code":402,"message":"Insufficient credits","data":null}"#,
                &[],
            ),
        ) else {
            panic!()
        };
        let err = failure.error;
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
        let Outcome::Failed(failure) =
            read_status(&call, &config, answer(200, body.as_bytes(), &[]), "t1")
        else {
            panic!()
        };
        let shown = failure.error.body_excerpt().unwrap().to_owned();
        assert!(shown.chars().count() <= EXCERPT_CHARS + 1);
        let echo = "sk-secret-key".repeat(3);
        let Outcome::Failed(failure) =
            read_status(&call, &config, answer(500, echo.as_bytes(), &[]), "t1")
        else {
            panic!()
        };
        let all = format!("{} {:?}", failure.error, failure.error);
        assert!(!all.contains("sk-secret-key"), "{all}");
    }

    #[test]
    fn retry_decisions() {
        let policy = RetryPolicy::default();
        let failure = |retry_after| {
            Outcome::<()>::Failed(Failure {
                error: Error::api(500, Some(500), None, retry_after),
                retryable: true,
                retry_after,
            })
        };
        // Backoff doubles from 0.5 s, with jitter between half and all of it, capped at 8 s.
        for (retries, low, high) in [(0, 0.25, 0.5), (1, 0.5, 1.0), (2, 1.0, 2.0), (10, 4.0, 8.0)] {
            for jitter in [0.0, 0.5, 0.999] {
                let policy = policy.max_retries(20);
                let Step::Sleep(d) = decide(&policy, retries, failure(None), jitter, None) else {
                    panic!()
                };
                assert!(
                    (low..=high).contains(&d.as_secs_f64()),
                    "{retries} {jitter} {d:?}"
                );
            }
        }
        // The budget ends retries.
        assert!(matches!(
            decide(&policy, 2, failure(None), 0.5, None),
            Step::Return(Err(_))
        ));
        // Retry-After is honoured up to the cap; beyond it, the error is returned.
        let Step::Sleep(d) = decide(
            &policy,
            0,
            failure(Some(Duration::from_secs(30))),
            0.5,
            None,
        ) else {
            panic!()
        };
        assert_eq!(d, Duration::from_secs(30));
        let long = failure(Some(Duration::from_secs(121)));
        assert!(matches!(
            decide(&policy, 0, long, 0.5, None),
            Step::Return(Err(_))
        ));
        // A delay past the wait's deadline is not taken.
        let near = decide(
            &policy,
            0,
            failure(Some(Duration::from_secs(5))),
            0.5,
            Some(Duration::from_secs(1)),
        );
        assert!(matches!(near, Step::Return(Err(_))));
        // Non-retryable failures return at once.
        let fatal = Outcome::<()>::Failed(Failure {
            error: Error::api(400, None, None, None),
            retryable: false,
            retry_after: None,
        });
        assert!(matches!(
            decide(&policy, 0, fatal, 0.5, None),
            Step::Return(Err(_))
        ));
    }

    #[test]
    fn wait_decisions() {
        let config = config();
        let info = |status: &str| {
            let mut info = TaskInfo::new("t1", TaskStatus::parse(status));
            info.error_message = Some("Content policy violation detected".into());
            info
        };
        let second = Duration::from_secs(1);
        assert!(matches!(
            after_poll(&config, info("SUCCESS"), 0, second),
            WaitStep::Finished(Ok(_))
        ));
        let WaitStep::Finished(Err(failed)) = after_poll(&config, info("FAILED"), 0, second) else {
            panic!()
        };
        assert_eq!(failed.kind(), ErrorKind::TaskFailed);
        assert_eq!(failed.task_id(), Some("t1"));
        assert!(
            failed
                .to_string()
                .contains("Content policy violation detected")
        );
        // Pending, running and unknown statuses keep polling on the schedule, within the deadline.
        for status in ["PENDING", "IN_PROGRESS", "REVIEWING"] {
            let WaitStep::PollAfter(d) = after_poll(&config, info(status), 0, second) else {
                panic!("{status}")
            };
            assert_eq!(d, Duration::from_secs(5));
        }
        let WaitStep::PollAfter(d) =
            after_poll(&config, info("PENDING"), 3, Duration::from_secs(58))
        else {
            panic!()
        };
        assert_eq!(
            d,
            Duration::from_secs(2),
            "the last poll lands on the deadline"
        );
        let WaitStep::Finished(Err(late)) =
            after_poll(&config, info("PENDING"), 9, Duration::from_secs(60))
        else {
            panic!()
        };
        assert_eq!(late.kind(), ErrorKind::DeadlinePassed);
        assert_eq!(late.task_id(), Some("t1"));
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
    fn images_are_recognised_and_named_safely() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("png"));
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("jpg"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(sniff_image(b"<html>"), None);
        assert_eq!(sniff_image(b""), None);
        assert_eq!(file_name("n36abcgptimg", 0, "png"), "n36abcgptimg-1.png");
        assert_eq!(
            file_name("../../etc/passwd", 1, "png"),
            "______etc_passwd-2.png"
        );
        assert_eq!(file_name("", 0, "jpg"), "image-1.jpg");
    }
}
