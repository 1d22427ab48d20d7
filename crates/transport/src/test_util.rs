//! A scripted transport for the tests of code that uses a client (feature `test-util`): no
//! network, no server, no JSON envelope written by hand. Say what the service answers, hand
//! the script to a client with `with_transport`, run the code under test, then read the
//! requests it made.
//!
//! ```
//! # #[cfg(feature = "blocking")] {
//! use gptimage_transport::blocking::Client;
//! use gptimage_transport::test_util::{Endpoint, Scripted, TINY_PNG};
//! use gptimage_types::GenerateRequest;
//!
//! let script = Scripted::new()
//!     .created("task-1")
//!     .running()
//!     .succeeded(["https://cdn.test/1.png"])
//!     .image("https://cdn.test/1.png", TINY_PNG);
//! let client = Client::with_transport(Scripted::config(), script.clone());
//!
//! let task = client.generate(&GenerateRequest::text_to_image("a fox").build()?)?;
//! let images = client.download(&task)?;
//! assert_eq!(images[0].bytes, TINY_PNG);
//!
//! let sent = script.requests();
//! assert_eq!(sent[0].endpoint, Endpoint::Submit);
//! assert_eq!(sent[0].json()["prompt"], "a fox");
//! assert_eq!(script.count(Endpoint::Status), 2); // running, then succeeded
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gptimage_types::{CreatedTask, Envelope, TaskInfo, TaskStatus};
use http::Method;

use crate::config::{Config, PollSchedule, RetryPolicy};
use crate::error::{RequestSent, TransportError, TransportErrorKind};
use crate::transport::{AsyncTransport, BlockingTransport, HttpRequest, HttpResponse, SendOptions};

/// A 1×1 PNG, for scripted downloads (a download must be an image).
pub const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f,
    0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47, 0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Which kind of request a scripted answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /generate`.
    Submit,
    /// `GET /status`.
    Status,
    /// A result image's URL.
    Download,
}

/// A request the code under test made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Recorded {
    /// Which kind of request it was.
    pub endpoint: Endpoint,
    /// Its method.
    pub method: Method,
    /// Its whole URL.
    pub url: String,
    /// Its body (a submission's JSON).
    pub body: Vec<u8>,
    /// The task id asked about, for a status request.
    pub task_id: Option<String>,
}

impl Recorded {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
enum Answer {
    /// An HTTP answer: its status and body.
    Http(u16, Vec<u8>),
    /// A status of the task asked about (its id filled in when asked).
    Status(TaskInfo),
}

#[derive(Debug, Default)]
struct Script {
    submissions: VecDeque<Answer>,
    statuses: VecDeque<Answer>,
    downloads: HashMap<String, Answer>,
    /// A broken connection owed to the next request of each endpoint.
    drops: HashMap<Endpoint, u32>,
    requests: Vec<Recorded>,
}

/// A transport that answers from a script and records what it was asked; cheap to clone
/// (clones share the script, so keep one to read the requests after).
///
/// Submissions are answered in the order scripted, one answer each. Statuses too, except that
/// the last one repeats, so `.running().succeeded(..)` answers `IN_PROGRESS` once and then
/// `SUCCESS` however often the client asks; a status names the task that was asked about.
/// Downloads are answered by URL. A request with no answer scripted fails as a connection
/// that could not be made, naming what to script.
#[derive(Debug, Clone, Default)]
pub struct Scripted {
    script: Arc<Mutex<Script>>,
}

impl Scripted {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// A configuration for clients over a script: any key, polls every millisecond, retries
    /// after a millisecond, so a scripted test runs at once.
    pub fn config() -> Config {
        Config::builder_for_tests()
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submission(self, answer: Answer) -> Self {
        self.script().submissions.push_back(answer);
        self
    }

    fn status(self, answer: Answer) -> Self {
        self.script().statuses.push_back(answer);
        self
    }

    /// The next submission creates task `task_id`.
    pub fn created(self, task_id: &str) -> Self {
        let body = Envelope::success(CreatedTask::new(task_id, TaskStatus::Pending));
        self.submission(Answer::Http(200, to_json(&body)))
    }

    /// The next submission is refused by the service with this HTTP status and message, in
    /// its envelope (400 invalid, 401 bad key, 402 no credits, 429 too many, 500…).
    pub fn refused(self, http_status: u16, message: &str) -> Self {
        let body = Envelope::<serde_json::Value>::error(i64::from(http_status), message);
        self.submission(Answer::Http(http_status, to_json(&body)))
    }

    /// The next status is `PENDING`.
    pub fn pending(self) -> Self {
        self.status(Answer::Status(TaskInfo::new("", TaskStatus::Pending)))
    }

    /// The next status is `IN_PROGRESS`.
    pub fn running(self) -> Self {
        self.status(Answer::Status(TaskInfo::new("", TaskStatus::InProgress)))
    }

    /// The next status is `SUCCESS`, with these image URLs.
    pub fn succeeded<S: Into<String>>(self, image_urls: impl IntoIterator<Item = S>) -> Self {
        let mut info = TaskInfo::new("", TaskStatus::Success);
        info.response = Some(image_urls.into_iter().map(Into::into).collect());
        self.status(Answer::Status(info))
    }

    /// The next status is `FAILED`, with this message.
    pub fn failed(self, message: &str) -> Self {
        let mut info = TaskInfo::new("", TaskStatus::Failed);
        info.error_message = Some(message.to_owned());
        self.status(Answer::Status(info))
    }

    /// The next status request is answered with this HTTP status and message in the
    /// service's envelope (404: the service does not know the task).
    pub fn status_refused(self, http_status: u16, message: &str) -> Self {
        let body = Envelope::<serde_json::Value>::error(i64::from(http_status), message);
        self.status(Answer::Http(http_status, to_json(&body)))
    }

    /// Downloads of `url` get these bytes.
    pub fn image(self, url: &str, bytes: impl Into<Vec<u8>>) -> Self {
        let answer = Answer::Http(200, bytes.into());
        self.script().downloads.insert(url.to_owned(), answer);
        self
    }

    /// The next request to `endpoint` breaks after it was written, so it may have been
    /// processed: a submission's outcome is then unknown, and never sent again blindly.
    pub fn dropped(self, endpoint: Endpoint) -> Self {
        *self.script().drops.entry(endpoint).or_default() += 1;
        self
    }

    /// The requests made so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.script().requests.clone()
    }

    /// How many requests were made to `endpoint`.
    pub fn count(&self, endpoint: Endpoint) -> usize {
        let script = self.script();
        script
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }

    /// Answers one request from the script.
    fn answer(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let url = request.uri().to_string();
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let endpoint = if request.method() == Method::POST && path.ends_with("/generate") {
            Endpoint::Submit
        } else if request.method() == Method::GET && path.ends_with("/status") {
            Endpoint::Status
        } else {
            Endpoint::Download
        };
        let task_id = request.uri().query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "task_id")
                .map(|(_, v)| v.into_owned())
        });
        let mut script = self.script();
        script.requests.push(Recorded {
            endpoint,
            method: request.method().clone(),
            url: url.clone(),
            body: request.body().clone(),
            task_id: task_id.clone(),
        });
        if let Some(owed) = script.drops.get_mut(&endpoint).filter(|n| **n > 0) {
            *owed -= 1;
            return Err(dropped(&url));
        }
        let answer = match endpoint {
            Endpoint::Submit => script.submissions.pop_front(),
            Endpoint::Status if script.statuses.len() > 1 => script.statuses.pop_front(),
            Endpoint::Status => script.statuses.front().cloned(),
            Endpoint::Download => script.downloads.get(&url).cloned(),
        };
        drop(script);
        match answer {
            Some(Answer::Status(mut info)) => {
                info.task_id = task_id.unwrap_or_default();
                Ok(response(200, to_json(&Envelope::success(info))))
            }
            Some(Answer::Http(status, body)) => Ok(response(status, body)),
            None => {
                let what = match endpoint {
                    Endpoint::Submit => "a submission (Scripted::created or ::refused)",
                    Endpoint::Status => "a status (Scripted::running, ::succeeded…)",
                    Endpoint::Download => "this image (Scripted::image)",
                };
                Err(TransportError::new(
                    TransportErrorKind::Connect,
                    RequestSent::No,
                    format!("the script has no answer for {url}: script {what}"),
                ))
            }
        }
    }
}

fn dropped(url: &str) -> TransportError {
    TransportError::new(
        TransportErrorKind::Reset,
        RequestSent::Maybe,
        format!("the script dropped the connection of {url} after the request was written"),
    )
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("the API's types always serialize")
}

fn response(status: u16, body: Vec<u8>) -> HttpResponse {
    let mut response = HttpResponse::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    response
}

#[async_trait::async_trait]
impl AsyncTransport for Scripted {
    async fn send(
        &self,
        request: HttpRequest,
        _options: SendOptions,
    ) -> Result<HttpResponse, TransportError> {
        self.answer(request)
    }
}

impl BlockingTransport for Scripted {
    fn send(
        &self,
        request: HttpRequest,
        _options: SendOptions,
    ) -> Result<HttpResponse, TransportError> {
        self.answer(request)
    }
}

impl Config {
    /// The configuration of [`Scripted::config`].
    fn builder_for_tests() -> Config {
        crate::config::ClientBuilder::<NoClient>::new()
            .api_key("sk-scripted")
            .base_url("http://api.scripted.localhost/api")
            .poll(PollSchedule::fixed(Duration::from_millis(1)))
            .retry(
                RetryPolicy::default().backoff(Duration::from_millis(1), Duration::from_millis(2)),
            )
            .config()
            .expect("the scripted configuration is valid")
    }
}

/// A builder needs a client type; the scripted configuration builds none.
struct NoClient;

impl crate::config::sealed::Sealed for NoClient {}

impl crate::config::FromConfig for NoClient {
    fn from_config(_: Config) -> crate::error::Result<Self> {
        Ok(Self)
    }
}
