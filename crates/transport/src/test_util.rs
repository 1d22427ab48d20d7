//! A scripted transport for the tests of code that uses a client (feature `test-util`): no
//! network, no server, no JSON envelope written by hand. Say what the service answers, hand
//! the script to a client with `with_transport`, run the code under test, then read the
//! requests it made, and check that the script was followed.
//!
//! ```
//! # #[cfg(feature = "blocking")] {
//! use std::time::Duration;
//! use gptimage_transport::blocking::Client;
//! use gptimage_transport::test_util::{Endpoint, Scripted, TINY_PNG};
//! use gptimage_types::GenerateRequest;
//!
//! // Strict: a request nothing was scripted for fails at once, and is never retried.
//! let script = Scripted::strict()
//!     .rate_limited(1) // a 429 with `Retry-After: 1`: no task made, the client tries again
//!     .created("task-1")
//!     .latency(Duration::from_millis(5)) // that answer takes 5 ms
//!     .image("https://cdn.test/1.png", TINY_PNG);
//! // The statuses of one task, whatever else is asked at the same time.
//! script.task("task-1").running().succeeded(["https://cdn.test/1.png"]);
//! let client = Client::with_transport(Scripted::config(), script.clone());
//!
//! let task = client.generate(&GenerateRequest::text_to_image("a fox").build()?)?;
//! let images = client.download(&task)?;
//! assert_eq!(images[0].bytes, TINY_PNG);
//!
//! let sent = script.requests();
//! assert_eq!(sent[0].endpoint, Endpoint::Submit);
//! assert_eq!(sent[1].json()["prompt"], "a fox"); // the one sent again after the 429
//! assert_eq!(sent[1].header("content-type"), Some("application/json"));
//! assert!(sent[1].at - sent[0].at >= Duration::from_secs(1)); // Retry-After was honoured
//! assert!(!format!("{:?}", sent[1]).contains("sk-scripted")); // the key never shows
//! assert_eq!(script.count(Endpoint::Status), 2); // running, then succeeded
//! script.verify()?; // every scripted answer given, no request unscripted
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Time
//!
//! An answer's [`latency`](Scripted::latency), and a [`hung`](Scripted::hung) request, wait on
//! the clock of the client that asked: `tokio::time::sleep` for the async client, so that under
//! tokio's paused time (`#[tokio::test(start_paused = true)]`, tokio's `test-util` feature) they
//! cost no wall time, and `std::thread::sleep` for the blocking one. The async client reads
//! tokio's clock too, so under paused time its deadlines, poll pauses, backoffs and
//! `Retry-After` all run on the virtual clock: a ten-minute wait takes milliseconds.
//!
//! ```
//! # #[cfg(feature = "async")] {
//! use std::time::Duration;
//! use gptimage_transport::{Client, ErrorKind, PollSchedule};
//! use gptimage_transport::test_util::Scripted;
//! use gptimage_types::GenerateRequest;
//!
//! // In a test: #[tokio::test(start_paused = true)] (tokio's `test-util` feature).
//! let paused = tokio::runtime::Builder::new_current_thread()
//!     .enable_time()
//!     .start_paused(true)
//!     .build()?;
//! paused.block_on(async {
//!     let script = Scripted::strict().rate_limited(120).created("task-1").running();
//!     let config = Scripted::builder::<Client>()
//!         .poll(PollSchedule::default()) // the real 5 s to 10 s
//!         .wait_timeout(Duration::from_secs(600))
//!         .config()?;
//!     let client = Client::with_transport(config, script.clone());
//!     let error = client.generate(&GenerateRequest::text_to_image("a fox").build()?).await;
//!     assert_eq!(error.unwrap_err().kind(), ErrorKind::DeadlinePassed);
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Webhooks
//!
//! A client built with a [`Receiver`] sends each submission a `callback_url`; the script
//! remembers it with the task the answer created, and [`Scripted::deliver_callback`] makes the
//! service's delivery for that task to the receiver, as the real one would;
//! [`Scripted::deliver_forged_callback`] makes a forged one, and
//! [`Scripted::deliver_lost_callback`] the one that names the task of a submission whose answer
//! was lost.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gptimage_types::{CreatedTask, Envelope, TaskInfo, TaskStatus};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::config::{ClientBuilder, Config, FromConfig, PollSchedule, RetryPolicy};
use crate::error::{RequestSent, TransportError, TransportErrorKind};
use crate::transport::{AsyncTransport, BlockingTransport, HttpRequest, HttpResponse, SendOptions};
use crate::webhook::Receiver;

/// A 1×1 PNG, for scripted downloads (a download must be an image).
pub const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f,
    0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47, 0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The HTTP status a strict script answers a request nothing was scripted for: a client error
/// that no call retries, and that no test scripts by accident ("I'm a teapot").
pub const UNSCRIPTED_STATUS: u16 = 418;

/// The base URL of [`Scripted::config`] and [`Scripted::builder`].
const BASE_URL: &str = "http://api.scripted.localhost/api";

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
///
/// Its `Debug` never shows the `Authorization` header's value (the API key), nor a callback
/// URL's secret token in the body.
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use gptimage_transport::blocking::Client;
/// use gptimage_transport::test_util::Scripted;
///
/// let script = Scripted::new().running();
/// let client = Client::with_transport(Scripted::config(), script.clone());
/// client.status("task-1")?;
/// let asked = &script.requests()[0];
/// assert_eq!(asked.task_id.as_deref(), Some("task-1"));
/// assert_eq!(asked.header("authorization"), Some("Bearer sk-scripted"));
/// assert!(!format!("{asked:?}").contains("sk-scripted"));
/// # }
/// # Ok::<(), gptimage_transport::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Recorded {
    /// Which kind of request it was.
    pub endpoint: Endpoint,
    /// Its method.
    pub method: Method,
    /// Its whole URL.
    pub url: String,
    /// Its headers, as the client sent them (`Authorization` included: it is what a test checks
    /// the key went, or did not go, to).
    pub headers: HeaderMap,
    /// Its body (a submission's JSON).
    pub body: Vec<u8>,
    /// The task id asked about, for a status request.
    pub task_id: Option<String>,
    /// When it was made, on the clock of the client that made it: tokio's for the async client
    /// (virtual under paused time), the system's monotonic clock for the blocking one.
    pub at: Instant,
}

impl Recorded {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The value of the header `name` (any case), if it was sent once and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// The headers, the key's replaced.
        struct Headers<'a>(&'a HeaderMap);
        impl fmt::Debug for Headers<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut map = f.debug_map();
                for (name, value) in self.0 {
                    if *name == header::AUTHORIZATION || value.is_sensitive() {
                        map.entry(name, &"<redacted>");
                    } else {
                        map.entry(name, &String::from_utf8_lossy(value.as_bytes()));
                    }
                }
                map.finish()
            }
        }
        let body = gptimage_types::redact(&String::from_utf8_lossy(&self.body));
        f.debug_struct("Recorded")
            .field("endpoint", &self.endpoint)
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &Headers(&self.headers))
            .field("body", &body)
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

/// One HTTP answer, built by hand, for [`Scripted::answer`], [`Scripted::answer_url`] and
/// [`TaskScript::answer`]: any status, headers and body, after a latency, or no answer at all.
///
/// ```
/// use std::time::Duration;
/// use gptimage_transport::test_util::{Endpoint, Reply, Scripted};
///
/// // A gateway's HTML page after a submission, 2 s late: the outcome is unknown.
/// let page = Reply::new(502)
///     .header("content-type", "text/html")
///     .body("<html>Bad Gateway</html>")
///     .latency(Duration::from_secs(2));
/// let script = Scripted::new().answer(Endpoint::Submit, page);
/// // The service's envelope, as JSON.
/// let busy = Reply::json(503, &serde_json::json!({"code": 503, "message": "busy", "data": null}))
///     .header("retry-after", "3");
/// let script = script.answer(Endpoint::Status, busy);
/// # let _ = script;
/// ```
#[derive(Clone)]
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    latency: Duration,
    hang: bool,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status.as_u16())
            .field("headers", &self.headers)
            .field("body_bytes", &self.body.len())
            .field("latency", &self.latency)
            .field("hang", &self.hang)
            .finish()
    }
}

impl Reply {
    /// An answer with this HTTP status and an empty body.
    ///
    /// # Panics
    ///
    /// If `status` is not an HTTP status (100 to 999).
    #[track_caller]
    pub fn new(status: u16) -> Self {
        let status = StatusCode::from_u16(status)
            .unwrap_or_else(|_| panic!("{status} is not an HTTP status (100 to 999)"));
        Self {
            status,
            headers: HeaderMap::new(),
            body: Vec::new(),
            latency: Duration::ZERO,
            hang: false,
        }
    }

    /// An answer with this HTTP status and `value` as its JSON body (`Content-Type` set).
    ///
    /// # Panics
    ///
    /// If `status` is not an HTTP status, or `value` does not serialize.
    #[track_caller]
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).expect("the reply's JSON serializes");
        Self::new(status)
            .header("content-type", "application/json")
            .body(body)
    }

    /// No answer at all: the request was written, and nothing comes back. The client's
    /// request timeout ends it, as a real transport's would: a [`TransportErrorKind::Timeout`]
    /// after which the request may have been processed ([`RequestSent::Maybe`]).
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::new(200)
        }
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a header (`retry-after`, `content-type`, `location`…); several of one name may be
    /// added.
    ///
    /// # Panics
    ///
    /// If `name` or `value` cannot be a header's.
    #[track_caller]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let (name, value) = header_pair(name, value);
        self.headers.append(name, value);
        self
    }

    /// The answer comes after `latency`; one longer than the request's timeout is that
    /// timeout's error instead, as with a real server.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

#[track_caller]
fn header_pair(name: &str, value: &str) -> (HeaderName, HeaderValue) {
    let name =
        HeaderName::try_from(name).unwrap_or_else(|_| panic!("{name:?} is not a header name"));
    let value =
        HeaderValue::try_from(value).unwrap_or_else(|_| panic!("{value:?} is not a header value"));
    (name, value)
}

/// One scripted answer.
#[derive(Debug, Clone)]
struct Answer {
    kind: Kind,
    headers: HeaderMap,
    latency: Duration,
    /// What it is, for `verify`.
    what: String,
}

#[derive(Debug, Clone)]
enum Kind {
    /// An HTTP answer: its status and body.
    Http(StatusCode, Vec<u8>),
    /// A status of the task asked about (its id filled in when asked).
    Status(TaskInfo),
    /// No answer: the request's timeout ends it.
    Hang,
}

impl Answer {
    fn http(status: u16, body: Vec<u8>, what: String) -> Self {
        Self {
            kind: Kind::Http(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body),
            headers: HeaderMap::new(),
            latency: Duration::ZERO,
            what,
        }
    }

    fn status(info: TaskInfo) -> Self {
        let what = format!("status {}", info.status);
        Self {
            kind: Kind::Status(info),
            headers: HeaderMap::new(),
            latency: Duration::ZERO,
            what,
        }
    }

    fn reply(reply: Reply) -> Self {
        let what = if reply.hang {
            "a hang".to_owned()
        } else {
            format!("HTTP {} (Reply)", reply.status.as_u16())
        };
        Self {
            kind: if reply.hang {
                Kind::Hang
            } else {
                Kind::Http(reply.status, reply.body)
            },
            headers: reply.headers,
            latency: reply.latency,
            what,
        }
    }
}

/// Status answers in order, the last one repeating.
#[derive(Debug, Default)]
struct Statuses {
    answers: VecDeque<Answer>,
    /// Whether the first of `answers` was given (it is then the repeating last one).
    front_given: bool,
}

impl Statuses {
    fn next(&mut self) -> Option<Answer> {
        // The last one was repeating, and more were scripted since: they come now.
        if self.front_given && self.answers.len() > 1 {
            self.answers.pop_front();
            self.front_given = false;
        }
        if self.answers.len() > 1 {
            return self.answers.pop_front();
        }
        let answer = self.answers.front().cloned();
        self.front_given |= answer.is_some();
        answer
    }

    fn peek(&self) -> Option<&Answer> {
        match self.answers.len() {
            n if self.front_given && n > 1 => self.answers.get(1),
            _ => self.answers.front(),
        }
    }

    fn unused(&self) -> impl Iterator<Item = &Answer> {
        self.answers.iter().skip(usize::from(self.front_given))
    }
}

/// The answer a modifier (`with_header`, `latency`) applies to: the one scripted last.
#[derive(Debug, Clone)]
enum Last {
    Submit,
    Status(Option<String>),
    DownloadQueue,
    DownloadUrl(String),
}

#[derive(Debug, Default)]
struct Script {
    strict: bool,
    submissions: VecDeque<Answer>,
    statuses: Statuses,
    by_task: HashMap<String, Statuses>,
    downloads: HashMap<String, (Answer, bool)>,
    download_queue: VecDeque<Answer>,
    /// A broken connection owed to the next request of each endpoint.
    drops: HashMap<Endpoint, u32>,
    /// A hang owed to the next request of each endpoint.
    hangs: HashMap<Endpoint, u32>,
    requests: Vec<Recorded>,
    /// Requests nothing was scripted for, described.
    unscripted: Vec<String>,
    /// The body (JSON) of the submission that created each task: its statuses echo it as
    /// their `request`, as the service does, and its `callback_url` is the task's.
    submitted: HashMap<String, serde_json::Value>,
    /// The bodies of submissions whose answer was lost (dropped, hung, timed out), in order:
    /// each may have made a task, which only its callback can name.
    lost: VecDeque<serde_json::Value>,
    last: Option<Last>,
}

impl Script {
    /// The answer to the request just recorded is lost: a submission's may have made a task.
    fn lose(&mut self, endpoint: Endpoint) {
        if endpoint == Endpoint::Submit
            && let Some(sent) = self.requests.last().map(Recorded::json)
        {
            self.lost.push_back(sent);
        }
    }

    fn statuses_of(&mut self, task: Option<&str>) -> &mut Statuses {
        match task {
            Some(task) => self.by_task.entry(task.to_owned()).or_default(),
            None => &mut self.statuses,
        }
    }

    fn last_answer(&mut self) -> Option<&mut Answer> {
        match self.last.clone()? {
            Last::Submit => self.submissions.back_mut(),
            Last::Status(task) => self.statuses_of(task.as_deref()).answers.back_mut(),
            Last::DownloadQueue => self.download_queue.back_mut(),
            Last::DownloadUrl(url) => self.downloads.get_mut(&url).map(|(a, _)| a),
        }
    }
}

/// A transport that answers from a script and records what it was asked; cheap to clone
/// (clones share the script, so keep one to read the requests after).
///
/// - Submissions are answered in the order scripted, one answer each.
/// - Statuses too, except that the last one repeats, so `.running().succeeded(..)` answers
///   `IN_PROGRESS` once and then `SUCCESS` however often the client asks; a status names the
///   task that was asked about. The statuses scripted for one task with
///   [`task`](Self::task) answer that task's requests only, in their own order (so concurrent
///   waits are deterministic); other tasks get the shared ones.
/// - Downloads are answered by URL ([`image`](Self::image), [`answer_url`](Self::answer_url)),
///   then in order ([`answer`](Self::answer) with [`Endpoint::Download`]).
/// - [`dropped`](Self::dropped) and [`hung`](Self::hung) are owed to the next request of their
///   endpoint, before any answer (a drop first).
/// - [`with_header`](Self::with_header) and [`latency`](Self::latency) change the answer
///   scripted last.
///
/// A request with no answer scripted fails: in a script made by [`new`](Self::new), as a
/// connection that could not be made (which a client retries, so a test missing an answer may
/// still pass); in a [`strict`](Self::strict) one, with an HTTP [`UNSCRIPTED_STATUS`] that no
/// call retries, naming what to script. Either way [`verify`](Self::verify) reports it, with
/// every scripted answer never given.
#[derive(Clone, Default)]
pub struct Scripted {
    script: Arc<Mutex<Script>>,
}

/// A summary: the requests hold the key, and the submissions callback URLs (secrets).
impl fmt::Debug for Scripted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let script = self.script();
        f.debug_struct("Scripted")
            .field("strict", &script.strict)
            .field("submissions", &script.submissions.len())
            .field("statuses", &script.statuses.answers.len())
            .field("tasks", &script.by_task.len())
            .field(
                "downloads",
                &(script.downloads.len() + script.download_queue.len()),
            )
            .field("requests", &script.requests.len())
            .field("unscripted", &script.unscripted.len())
            .finish_non_exhaustive()
    }
}

impl Scripted {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty strict script: a request nothing was scripted for is answered HTTP
    /// [`UNSCRIPTED_STATUS`] (418), which every call takes as final (never retried, never an
    /// unknown outcome), with a body naming what to script; and [`verify`](Self::verify)
    /// lists it.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use gptimage_transport::blocking::Client;
    /// use gptimage_transport::test_util::{Endpoint, Scripted};
    ///
    /// let script = Scripted::strict();
    /// let client = Client::with_transport(Scripted::config(), script.clone());
    /// let error = client.status("task-1").unwrap_err();
    /// assert_eq!(error.http_status(), Some(418));
    /// assert_eq!(script.count(Endpoint::Status), 1); // not retried
    /// assert!(script.verify().unwrap_err().contains("Scripted::running"));
    /// # }
    /// ```
    pub fn strict() -> Self {
        let script = Self::new();
        script.script().strict = true;
        script
    }

    /// A configuration for clients over a script: any key, polls every millisecond, retries
    /// after a millisecond, so a scripted test runs at once.
    pub fn config() -> Config {
        Self::builder::<NoClient>()
            .config()
            .expect("the scripted configuration is valid")
    }

    /// A builder with the settings of [`config`](Self::config), to change some (a wait
    /// timeout, webhooks, the real poll schedule…) before taking its `config()` for
    /// `with_transport`. (Its `build()` would make a client over the network, not the script.)
    ///
    /// ```
    /// # #[cfg(feature = "async")] {
    /// use std::time::Duration;
    /// use gptimage_transport::Client;
    /// use gptimage_transport::test_util::Scripted;
    /// use gptimage_transport::webhook::Receiver;
    ///
    /// let receiver = Receiver::new("https://hooks.test/gptimage/")?;
    /// let config = Scripted::builder::<Client>()
    ///     .webhooks(receiver)
    ///     .wait_timeout(Duration::from_secs(30))
    ///     .config()?;
    /// let client = Client::with_transport(config, Scripted::new());
    /// assert_eq!(client.config().wait_timeout(), Duration::from_secs(30));
    /// # }
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn builder<C: FromConfig>() -> ClientBuilder<C> {
        ClientBuilder::new()
            .api_key("sk-scripted")
            .base_url(BASE_URL)
            // No byte leaves the process: plain http to a name that is not loopback is fine.
            .allow_insecure_http(true)
            .poll(PollSchedule::fixed(Duration::from_millis(1)))
            .retry(
                RetryPolicy::default().backoff(Duration::from_millis(1), Duration::from_millis(2)),
            )
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submission(self, answer: Answer) -> Self {
        let mut script = self.script();
        script.submissions.push_back(answer);
        script.last = Some(Last::Submit);
        drop(script);
        self
    }

    fn push_status(&self, task: Option<&str>, answer: Answer) {
        let mut script = self.script();
        script.statuses_of(task).answers.push_back(answer);
        script.last = Some(Last::Status(task.map(str::to_owned)));
    }

    fn status(self, answer: Answer) -> Self {
        self.push_status(None, answer);
        self
    }

    /// The next submission creates task `task_id`.
    pub fn created(self, task_id: &str) -> Self {
        let body = Envelope::success(CreatedTask::new(task_id, TaskStatus::Pending));
        self.submission(Answer::http(
            200,
            to_json(&body),
            format!("created {task_id}"),
        ))
    }

    /// The next submission is refused by the service with this HTTP status and message, in
    /// its envelope (400 invalid, 401 bad key, 402 no credits, 429 too many, 500…).
    pub fn refused(self, http_status: u16, message: &str) -> Self {
        self.submission(refusal(http_status, message))
    }

    /// The next submission is refused with a 429 and `Retry-After: retry_after_secs`: no task
    /// is made, and the client's pacer holds its submissions that long (up to the retry
    /// policy's `max_retry_after`, 120 s by default; a longer one ends the submission).
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use gptimage_transport::blocking::Client;
    /// use gptimage_transport::test_util::{Endpoint, Scripted};
    /// use gptimage_types::GenerateRequest;
    ///
    /// let script = Scripted::new().rate_limited(0).created("task-1");
    /// let client = Client::with_transport(Scripted::config(), script.clone());
    /// let created = client.submit(&GenerateRequest::text_to_image("a fox").build()?)?;
    /// assert_eq!(created.task_id, "task-1");
    /// assert_eq!(script.count(Endpoint::Submit), 2);
    /// # }
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn rate_limited(self, retry_after_secs: u64) -> Self {
        self.refused(429, "Too Many Requests")
            .with_header("retry-after", &retry_after_secs.to_string())
    }

    /// The next status is `PENDING`.
    pub fn pending(self) -> Self {
        self.status(Answer::status(TaskInfo::new("", TaskStatus::Pending)))
    }

    /// The next status is `IN_PROGRESS`.
    pub fn running(self) -> Self {
        self.status(Answer::status(TaskInfo::new("", TaskStatus::InProgress)))
    }

    /// The next status is `SUCCESS`, with these image URLs.
    pub fn succeeded<S: Into<String>>(self, image_urls: impl IntoIterator<Item = S>) -> Self {
        self.status(succeeded(image_urls))
    }

    /// The next status is `FAILED`, with this message.
    pub fn failed(self, message: &str) -> Self {
        self.status(failed(message))
    }

    /// The next status request is answered with this HTTP status and message in the
    /// service's envelope (404: the service does not know the task).
    pub fn status_refused(self, http_status: u16, message: &str) -> Self {
        self.status(refusal(http_status, message))
    }

    /// The next status request is answered 429 with `Retry-After: retry_after_secs` (honoured
    /// up to the retry policy's `max_retry_after`; a status request is then asked again).
    pub fn status_rate_limited(self, retry_after_secs: u64) -> Self {
        self.status_refused(429, "Too Many Requests")
            .with_header("retry-after", &retry_after_secs.to_string())
    }

    /// Downloads of `url` get these bytes.
    pub fn image(self, url: &str, bytes: impl Into<Vec<u8>>) -> Self {
        let answer = Answer::http(200, bytes.into(), format!("the image {url}"));
        self.download(url, answer)
    }

    /// Downloads of `url` get `reply` (a 404 for an expired URL, a redirect…).
    pub fn answer_url(self, url: &str, reply: Reply) -> Self {
        let mut answer = Answer::reply(reply);
        answer.what = format!("{} for {url}", answer.what);
        self.download(url, answer)
    }

    fn download(self, url: &str, answer: Answer) -> Self {
        let mut script = self.script();
        script.downloads.insert(url.to_owned(), (answer, false));
        script.last = Some(Last::DownloadUrl(url.to_owned()));
        drop(script);
        self
    }

    /// The next request to `endpoint` gets `reply`: the next submission's answer, the next
    /// shared status (the last repeating, as any status), or the next download of a URL that
    /// has no answer of its own.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use gptimage_transport::blocking::Client;
    /// use gptimage_transport::test_util::{Endpoint, Reply, Scripted};
    /// use gptimage_transport::ErrorKind;
    /// use gptimage_types::GenerateRequest;
    ///
    /// // A gateway's page: the service may have made the task.
    /// let script = Scripted::new().answer(Endpoint::Submit, Reply::new(504).body("Gateway Timeout"));
    /// let client = Client::with_transport(Scripted::config(), script.clone());
    /// let error = client.submit(&GenerateRequest::text_to_image("a fox").build()?).unwrap_err();
    /// assert_eq!(error.kind(), ErrorKind::OutcomeUnknown);
    /// # }
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn answer(self, endpoint: Endpoint, reply: Reply) -> Self {
        let answer = Answer::reply(reply);
        match endpoint {
            Endpoint::Submit => self.submission(answer),
            Endpoint::Status => self.status(answer),
            Endpoint::Download => {
                let mut script = self.script();
                script.download_queue.push_back(answer);
                script.last = Some(Last::DownloadQueue);
                drop(script);
                self
            }
        }
    }

    /// Adds a header to the answer scripted last (by any method of this script or of a
    /// [`TaskScript`]).
    ///
    /// ```
    /// use gptimage_transport::test_util::Scripted;
    ///
    /// let script = Scripted::new()
    ///     .refused(503, "Service Unavailable")
    ///     .with_header("retry-after", "2")
    ///     .created("task-1");
    /// # let _ = script;
    /// ```
    ///
    /// # Panics
    ///
    /// If nothing was scripted yet, or `name` or `value` cannot be a header's.
    #[track_caller]
    pub fn with_header(self, name: &str, value: &str) -> Self {
        let (name, value) = header_pair(name, value);
        self.last_answer("with_header", |answer| {
            answer.headers.append(name, value);
        });
        self
    }

    /// Delays the answer scripted last by `latency`: on tokio's clock for the async client
    /// (skipped in no time under paused time), with a thread's sleep for the blocking one. A
    /// latency longer than the request's timeout is that timeout's error, after the timeout.
    ///
    /// # Panics
    ///
    /// If nothing was scripted yet.
    #[track_caller]
    pub fn latency(self, latency: Duration) -> Self {
        self.last_answer("latency", |answer| answer.latency = latency);
        self
    }

    #[track_caller]
    fn last_answer(&self, what: &str, change: impl FnOnce(&mut Answer)) {
        let mut script = self.script();
        match script.last_answer() {
            Some(answer) => change(answer),
            None => panic!("Scripted::{what} changes the answer scripted last, and there is none"),
        }
    }

    /// The next request to `endpoint` breaks after it was written, so it may have been
    /// processed: a submission's outcome is then unknown, and never sent again blindly.
    pub fn dropped(self, endpoint: Endpoint) -> Self {
        *self.script().drops.entry(endpoint).or_default() += 1;
        self
    }

    /// The next request to `endpoint` is written and never answered: the client's request
    /// timeout ends it (after that timeout, on the client's clock), with a
    /// [`TransportErrorKind::Timeout`] that says the request may have been processed. A
    /// submission's outcome is then unknown; a status request is asked again.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::{Duration, Instant};
    /// use gptimage_transport::blocking::Client;
    /// use gptimage_transport::test_util::{Endpoint, Scripted};
    ///
    /// let script = Scripted::new().hung(Endpoint::Status).running();
    /// let config = Scripted::builder::<Client>().request_timeout(Duration::from_millis(50)).config()?;
    /// let client = Client::with_transport(config, script.clone());
    /// let started = Instant::now();
    /// client.status("task-1")?; // the hang times out; the retry is answered
    /// assert!(started.elapsed() >= Duration::from_millis(50));
    /// assert_eq!(script.count(Endpoint::Status), 2);
    /// # }
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn hung(self, endpoint: Endpoint) -> Self {
        *self.script().hangs.entry(endpoint).or_default() += 1;
        self
    }

    /// The statuses of task `task_id`, scripted apart from the shared ones: its status
    /// requests get these (in order, the last repeating), whatever other tasks are asked
    /// about at the same time.
    ///
    /// ```
    /// use gptimage_transport::test_util::{Scripted, TaskScript};
    ///
    /// let script = Scripted::new().created("a").created("b");
    /// script.task("a").running().succeeded(["https://cdn.test/a.png"]);
    /// script.task("b").pending().failed("Content policy violation");
    /// // Or in one chain, back to the whole script with `end`:
    /// let script = Scripted::new().task("a").running().task("b").failed("no").end().created("c");
    /// # let _ = script;
    /// ```
    pub fn task(&self, task_id: &str) -> TaskScript {
        TaskScript {
            script: self.clone(),
            task_id: task_id.to_owned(),
        }
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

    /// Whether the script was followed: `Err` lists every scripted answer never given (the
    /// last status of a queue counts as given once it was), every drop or hang still owed, and
    /// every request nothing was scripted for, each naming what to script, one per line.
    ///
    /// ```
    /// use gptimage_transport::test_util::Scripted;
    ///
    /// let script = Scripted::new().created("task-1").running();
    /// let unused = script.verify().unwrap_err();
    /// assert!(unused.contains("created task-1"), "{unused}");
    /// assert!(unused.contains("status IN_PROGRESS"), "{unused}");
    /// ```
    pub fn verify(&self) -> Result<(), String> {
        let script = self.script();
        let mut problems = Vec::new();
        for answer in &script.submissions {
            problems.push(format!("unused: a submission answer, {}", answer.what));
        }
        for answer in script.statuses.unused() {
            problems.push(format!("unused: a shared status answer, {}", answer.what));
        }
        let mut tasks: Vec<_> = script.by_task.iter().collect();
        tasks.sort_by(|a, b| a.0.cmp(b.0));
        for (task, statuses) in tasks {
            for answer in statuses.unused() {
                problems.push(format!(
                    "unused: an answer for task {task}, {}",
                    answer.what
                ));
            }
        }
        let mut urls: Vec<_> = script
            .downloads
            .iter()
            .filter(|(_, (_, given))| !given)
            .collect();
        urls.sort_by(|a, b| a.0.cmp(b.0));
        for (_, (answer, _)) in urls {
            problems.push(format!("unused: a download answer, {}", answer.what));
        }
        for answer in &script.download_queue {
            problems.push(format!("unused: a download answer, {}", answer.what));
        }
        for (owed, what) in [(&script.drops, "drop"), (&script.hangs, "hang")] {
            let mut owed: Vec<_> = owed.iter().filter(|(_, n)| **n > 0).collect();
            owed.sort_by_key(|(e, _)| format!("{e:?}"));
            for (endpoint, n) in owed {
                problems.push(format!("unused: {n} {what}(s) of {endpoint:?}"));
            }
        }
        for request in &script.unscripted {
            problems.push(format!("unscripted: {request}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the script was not followed:\n- {}",
                problems.join("\n- ")
            ))
        }
    }

    /// Panics with [`verify`](Self::verify)'s list unless the script was followed, naming the
    /// caller's line.
    #[track_caller]
    pub fn assert_verified(&self) {
        if let Err(problems) = self.verify() {
            panic!("{problems}");
        }
    }

    /// The callback URL the submission that created `task_id` carried (a client with
    /// webhooks sends one), once the script's answer created that task.
    pub fn callback_url(&self, task_id: &str) -> Option<String> {
        let script = self.script();
        let url = script.submitted.get(task_id)?["callback_url"].as_str()?;
        Some(url.to_owned())
    }

    /// Delivers the service's callback for `task_id` to `receiver`, as the service would: a
    /// `POST` of the task's status envelope (its next scripted status, or `SUCCESS`) to the
    /// callback URL its submission carried, given to [`Receiver::handle`]. Whether the
    /// receiver accepted it (`200`).
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use std::time::Duration;
    /// use gptimage_transport::PollSchedule;
    /// use gptimage_transport::blocking::Client;
    /// use gptimage_transport::test_util::{Endpoint, Scripted};
    /// use gptimage_transport::webhook::Receiver;
    /// use gptimage_types::GenerateRequest;
    ///
    /// let receiver = Receiver::new("https://hooks.test/gptimage/")?;
    /// let config = Scripted::builder::<Client>()
    ///     .webhooks(receiver.clone())
    ///     .poll(PollSchedule::fixed(Duration::from_secs(60))) // a poll a minute
    ///     .config()?;
    /// let script = Scripted::strict().created("task-1").running().succeeded(["https://cdn.test/1.png"]);
    /// let client = Client::with_transport(config, script.clone());
    /// let created = client.submit(&GenerateRequest::text_to_image("a fox").build()?)?;
    /// let waiting = std::thread::spawn(move || client.wait(&created.task_id));
    /// while script.count(Endpoint::Status) == 0 {
    ///     std::thread::sleep(Duration::from_millis(1)); // the first poll: running
    /// }
    /// assert!(!script.deliver_forged_callback(&receiver, "task-1")); // refused, wakes nobody
    /// assert!(script.deliver_callback(&receiver, "task-1")); // the wait asks again at once
    /// let task = waiting.join().unwrap()?;
    /// assert_eq!(task.images(), ["https://cdn.test/1.png"]);
    /// assert_eq!(script.count(Endpoint::Status), 2);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If the script created no task `task_id` from a submission that carried a callback URL
    /// (the client needs a receiver: `Scripted::builder::<C>().webhooks(receiver)`).
    #[track_caller]
    pub fn deliver_callback(&self, receiver: &Receiver, task_id: &str) -> bool {
        self.callback(receiver, task_id, false)
    }

    /// Like [`deliver_callback`](Self::deliver_callback), with one character of the callback
    /// URL's secret changed: a forgery, which a receiver must refuse (`false`) and which must
    /// change nothing.
    ///
    /// # Panics
    ///
    /// As [`deliver_callback`](Self::deliver_callback).
    #[track_caller]
    pub fn deliver_forged_callback(&self, receiver: &Receiver, task_id: &str) -> bool {
        self.callback(receiver, task_id, true)
    }

    /// Delivers the callback of the first submission whose answer was lost (dropped, hung or
    /// timed out: the service may have made its task), naming `task_id` as the task it made:
    /// from then on the script takes `task_id` as that submission's task (its statuses echo
    /// that submission's request, with its `callback_url`, as the service's do), so the
    /// client can confirm what the callback says. Whether the receiver accepted it.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")] {
    /// use gptimage_transport::blocking::Client;
    /// use gptimage_transport::test_util::{Endpoint, Scripted};
    /// use gptimage_transport::webhook::Receiver;
    /// use gptimage_types::GenerateRequest;
    ///
    /// let receiver = Receiver::new("https://hooks.test/gptimage/")?;
    /// let config = Scripted::builder::<Client>().webhooks(receiver.clone()).config()?;
    /// let script = Scripted::new().dropped(Endpoint::Submit).running();
    /// let client = Client::with_transport(config, script.clone());
    /// let lost = client.submit(&GenerateRequest::text_to_image("a fox").build()?);
    /// assert!(lost.is_err()); // an unknown outcome: a task may exist
    /// script.deliver_lost_callback(&receiver, "task-7"); // the service names it
    /// let sent = script.requests()[0].json();
    /// assert_eq!(script.callback_url("task-7").as_deref(), sent["callback_url"].as_str());
    /// let status = client.status("task-7")?;
    /// assert_eq!(status.request.as_ref(), Some(&sent)); // the request, echoed
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If no submission whose answer was lost (and not yet delivered for) carried a callback
    /// URL.
    #[track_caller]
    pub fn deliver_lost_callback(&self, receiver: &Receiver, task_id: &str) -> bool {
        {
            let mut script = self.script();
            let position = script
                .lost
                .iter()
                .position(|sent| sent["callback_url"].is_string());
            let Some(sent) = position.and_then(|i| script.lost.remove(i)) else {
                panic!(
                    "no submission whose answer was lost carried a callback URL: script \
                     Scripted::dropped(Endpoint::Submit) or ::hung, for a client with webhooks"
                );
            };
            script.submitted.insert(task_id.to_owned(), sent);
        }
        self.callback(receiver, task_id, false)
    }

    #[track_caller]
    fn callback(&self, receiver: &Receiver, task_id: &str, forged: bool) -> bool {
        let Some(url) = self.callback_url(task_id) else {
            panic!(
                "no submission that created task {task_id:?} carried a callback URL: build the \
                 client with webhooks (Scripted::builder::<C>().webhooks(receiver)), and script \
                 the submission with Scripted::created({task_id:?})"
            );
        };
        // Where the receiver's `handle` sees it: its local path, then the token.
        let mut path = match url.strip_prefix(receiver.base_url()) {
            Some(token) => format!("{}{token}", receiver.local_path()),
            None => url::Url::parse(&url).map_or(url.clone(), |u| u.path().to_owned()),
        };
        if forged && let Some(last) = path.pop() {
            path.push(if last == '0' { '1' } else { '0' });
        }
        let status = {
            let script = self.script();
            let next = script
                .by_task
                .get(task_id)
                .and_then(Statuses::peek)
                .or_else(|| script.statuses.peek());
            match next.map(|a| &a.kind) {
                Some(Kind::Status(info)) => info.clone(),
                _ => TaskInfo::new("", TaskStatus::Success),
            }
        };
        let mut info = status;
        info.task_id = task_id.to_owned();
        let body = to_json(&Envelope::success(info));
        let request = http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(body);
        match request {
            Ok(request) => receiver.handle(request).status() == StatusCode::OK,
            Err(_) => false,
        }
    }

    /// Takes the answer to one request from the script, and when to give it.
    fn take(&self, request: HttpRequest, options: SendOptions, at: Instant) -> Planned {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let path = parts.uri.path().trim_end_matches('/').to_owned();
        let endpoint = if parts.method == Method::POST && path.ends_with("/generate") {
            Endpoint::Submit
        } else if parts.method == Method::GET && path.ends_with("/status") {
            Endpoint::Status
        } else {
            Endpoint::Download
        };
        let task_id = parts.uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "task_id")
                .map(|(_, v)| v.into_owned())
        });
        let mut script = self.script();
        script.requests.push(Recorded {
            endpoint,
            method: parts.method.clone(),
            url: url.clone(),
            headers: parts.headers,
            body,
            task_id: task_id.clone(),
            at,
        });
        if let Some(owed) = script.drops.get_mut(&endpoint).filter(|n| **n > 0) {
            *owed -= 1;
            script.lose(endpoint);
            return Planned::now(Err(dropped(&url)));
        }
        if let Some(owed) = script.hangs.get_mut(&endpoint).filter(|n| **n > 0) {
            *owed -= 1;
            script.lose(endpoint);
            return Planned::timeout(&url, options);
        }
        let answer = match endpoint {
            Endpoint::Submit => script.submissions.pop_front(),
            Endpoint::Status => {
                let own = task_id
                    .as_deref()
                    .and_then(|t| script.by_task.get_mut(t))
                    .and_then(Statuses::next);
                own.or_else(|| script.statuses.next())
            }
            Endpoint::Download => match script.downloads.get_mut(&url) {
                Some((answer, given)) => {
                    *given = true;
                    Some(answer.clone())
                }
                None => script.download_queue.pop_front(),
            },
        };
        let Some(answer) = answer else {
            let (what, hint) = match endpoint {
                Endpoint::Submit => (
                    "POST /generate".to_owned(),
                    "a submission (Scripted::created, ::refused, ::rate_limited)",
                ),
                Endpoint::Status => (
                    format!(
                        "GET /status for task {}",
                        task_id.as_deref().unwrap_or("(none)")
                    ),
                    "a status (Scripted::running, ::succeeded…, or Scripted::task(id)…)",
                ),
                Endpoint::Download => (
                    format!("GET {url}"),
                    "this image (Scripted::image or ::answer_url)",
                ),
            };
            script.unscripted.push(format!("{what}: script {hint}"));
            let strict = script.strict;
            drop(script);
            let message = format!("the script has no answer for {what}: script {hint}");
            return Planned::now(if strict {
                let mut response = response(
                    StatusCode::from_u16(UNSCRIPTED_STATUS).unwrap_or(StatusCode::IM_A_TEAPOT),
                    format!("gptimage test kit, strict: {message}").into_bytes(),
                );
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Ok(response)
            } else {
                Err(TransportError::new(
                    TransportErrorKind::Connect,
                    RequestSent::No,
                    message,
                ))
            });
        };
        let mut response = match answer.kind {
            // No answer, or none in time: the request's timeout ends it.
            _ if answer.latency > options.timeout => {
                script.lose(endpoint);
                return Planned::timeout(&url, options);
            }
            Kind::Hang => {
                script.lose(endpoint);
                return Planned::timeout(&url, options);
            }
            Kind::Status(mut info) => {
                let task_id = task_id.unwrap_or_default();
                if info.request.is_none() {
                    info.request = script.submitted.get(&task_id).cloned();
                }
                info.task_id = task_id;
                response(StatusCode::OK, to_json(&Envelope::success(info)))
            }
            Kind::Http(status, body) => response(status, body),
        };
        response.headers_mut().extend(answer.headers);
        if endpoint == Endpoint::Submit
            && response.status().is_success()
            && let Ok(Envelope {
                data: Some(created),
                ..
            }) = serde_json::from_slice::<Envelope<CreatedTask>>(response.body())
            && let Some(sent) = script.requests.last().map(Recorded::json)
        {
            script.submitted.insert(created.task_id, sent);
        }
        drop(script);
        let result = if response.body().len() as u64 > options.max_body_bytes {
            Err(TransportError::new(
                TransportErrorKind::BodyTooLarge,
                RequestSent::Maybe,
                format!(
                    "the scripted answer to {url} is larger than the limit of {} bytes",
                    options.max_body_bytes
                ),
            ))
        } else {
            Ok(response)
        };
        Planned {
            after: answer.latency,
            result,
        }
    }
}

/// The statuses of one task, from [`Scripted::task`]: the same methods as the script's
/// shared statuses, for that task only. Cheap to clone; it shares the script.
///
/// ```
/// use gptimage_transport::test_util::{Reply, Scripted};
///
/// let script = Scripted::strict().created("t1").created("t2");
/// script.task("t1").running().status_rate_limited(2).succeeded(["https://cdn.test/1.png"]);
/// script
///     .task("t2")
///     .answer(Reply::new(500).body("oops"))
///     .with_header("retry-after", "1")
///     .failed("Content policy violation");
/// ```
#[derive(Debug, Clone)]
pub struct TaskScript {
    script: Scripted,
    task_id: String,
}

impl TaskScript {
    fn push(self, answer: Answer) -> Self {
        self.script.push_status(Some(&self.task_id), answer);
        self
    }

    /// The task's next status is `PENDING`.
    pub fn pending(self) -> Self {
        self.push(Answer::status(TaskInfo::new("", TaskStatus::Pending)))
    }

    /// The task's next status is `IN_PROGRESS`.
    pub fn running(self) -> Self {
        self.push(Answer::status(TaskInfo::new("", TaskStatus::InProgress)))
    }

    /// The task's next status is `SUCCESS`, with these image URLs.
    pub fn succeeded<S: Into<String>>(self, image_urls: impl IntoIterator<Item = S>) -> Self {
        self.push(succeeded(image_urls))
    }

    /// The task's next status is `FAILED`, with this message.
    pub fn failed(self, message: &str) -> Self {
        self.push(failed(message))
    }

    /// The task's next status request is answered with this HTTP status and message in the
    /// service's envelope.
    pub fn status_refused(self, http_status: u16, message: &str) -> Self {
        self.push(refusal(http_status, message))
    }

    /// The task's next status request is answered 429 with `Retry-After: retry_after_secs`.
    pub fn status_rate_limited(self, retry_after_secs: u64) -> Self {
        self.status_refused(429, "Too Many Requests")
            .with_header("retry-after", &retry_after_secs.to_string())
    }

    /// The task's next status request gets `reply`.
    pub fn answer(self, reply: Reply) -> Self {
        self.push(Answer::reply(reply))
    }

    /// Adds a header to the answer scripted last (see [`Scripted::with_header`]).
    ///
    /// # Panics
    ///
    /// If `name` or `value` cannot be a header's.
    #[track_caller]
    pub fn with_header(self, name: &str, value: &str) -> Self {
        Self {
            script: self.script.with_header(name, value),
            task_id: self.task_id,
        }
    }

    /// Delays the answer scripted last (see [`Scripted::latency`]).
    #[track_caller]
    pub fn latency(self, latency: Duration) -> Self {
        Self {
            script: self.script.latency(latency),
            task_id: self.task_id,
        }
    }

    /// The statuses of another task.
    pub fn task(self, task_id: &str) -> TaskScript {
        self.script.task(task_id)
    }

    /// Back to the whole script.
    pub fn end(self) -> Scripted {
        self.script
    }
}

fn succeeded<S: Into<String>>(image_urls: impl IntoIterator<Item = S>) -> Answer {
    let mut info = TaskInfo::new("", TaskStatus::Success);
    info.response = Some(image_urls.into_iter().map(Into::into).collect());
    Answer::status(info)
}

fn failed(message: &str) -> Answer {
    let mut info = TaskInfo::new("", TaskStatus::Failed);
    info.error_message = Some(message.to_owned());
    Answer::status(info)
}

fn refusal(http_status: u16, message: &str) -> Answer {
    let body = Envelope::<serde_json::Value>::error(i64::from(http_status), message);
    Answer::http(
        http_status,
        to_json(&body),
        format!("refused {http_status} {message:?}"),
    )
}

/// An answer, and how long after the request it comes.
struct Planned {
    after: Duration,
    result: Result<HttpResponse, TransportError>,
}

impl Planned {
    fn now(result: Result<HttpResponse, TransportError>) -> Self {
        Self {
            after: Duration::ZERO,
            result,
        }
    }

    /// No answer within the request's timeout: what a real transport reports, after it.
    fn timeout(url: &str, options: SendOptions) -> Self {
        Self {
            after: options.timeout,
            result: Err(TransportError::new(
                TransportErrorKind::Timeout,
                // The request was written whole (a submission's body included): the service
                // may have processed it.
                RequestSent::Maybe,
                format!(
                    "the script gave no answer to {url} within the request timeout of {:?}",
                    options.timeout
                ),
            )),
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

fn response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut response = HttpResponse::new(body);
    *response.status_mut() = status;
    response
}

/// The instant the async client reads: tokio's clock (virtual under paused time).
fn async_now() -> Instant {
    #[cfg(feature = "async")]
    {
        tokio::time::Instant::now().into_std()
    }
    #[cfg(not(feature = "async"))]
    {
        Instant::now()
    }
}

/// Waits `duration` asynchronously: tokio's sleep, or without tokio a timer thread's.
async fn pause(duration: Duration) {
    #[cfg(feature = "async")]
    tokio::time::sleep(duration).await;
    #[cfg(not(feature = "async"))]
    thread_timer::sleep(duration).await;
}

#[cfg(not(feature = "async"))]
mod thread_timer {
    //! A timer for async code without tokio: a thread sleeps, then wakes the future.

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    #[derive(Default)]
    struct State {
        done: bool,
        waker: Option<Waker>,
    }

    struct Sleep {
        duration: Duration,
        state: Option<Arc<Mutex<State>>>,
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let duration = self.duration;
            let state = self.state.get_or_insert_with(|| {
                let state = Arc::new(Mutex::new(State::default()));
                let timer = Arc::clone(&state);
                std::thread::spawn(move || {
                    std::thread::sleep(duration);
                    let mut state = timer.lock().unwrap_or_else(|e| e.into_inner());
                    state.done = true;
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                });
                state
            });
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            if state.done {
                Poll::Ready(())
            } else {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub(super) fn sleep(duration: Duration) -> impl Future<Output = ()> {
        Sleep {
            duration,
            state: None,
        }
    }
}

#[async_trait::async_trait]
impl AsyncTransport for Scripted {
    async fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> Result<HttpResponse, TransportError> {
        let planned = self.take(request, options, async_now());
        if !planned.after.is_zero() {
            pause(planned.after).await;
        }
        planned.result
    }
}

impl BlockingTransport for Scripted {
    fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> Result<HttpResponse, TransportError> {
        let planned = self.take(request, options, Instant::now());
        if !planned.after.is_zero() {
            std::thread::sleep(planned.after);
        }
        planned.result
    }
}

/// A builder needs a client type; the scripted configuration builds none.
struct NoClient;

impl crate::config::sealed::Sealed for NoClient {}

impl FromConfig for NoClient {
    fn from_config(_: Config) -> crate::error::Result<Self> {
        Ok(Self)
    }
}
