//! Webhooks: a [`Receiver`] that gives each submission its own secret callback URL and turns a
//! genuine delivery into a *hint* that makes the wait for that task ask `/status` at once.
//!
//! A callback is never a result. It wakes a wait, and the status request decides; polling goes
//! on as the fallback, at a slower pace, so a lost callback costs time, never correctness.
//! Deliveries may come more than once, late, or never. Its body is read for one purpose only:
//! while no task is bound to its token (the submission's answer has not come, or was lost), the
//! task id it names is kept as a *candidate*, which a status request must confirm (the task
//! exists under this key and echoes the submission's own callback URL and prompt) before the
//! client takes it as the lost submission's task (`Client::recover`).
//!
//! ```no_run
//! # #[cfg(all(feature = "async", feature = "listener"))]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use gptimage_transport::Client;
//! use gptimage_transport::webhook::Receiver;
//! use gptimage_types::GenerateRequest;
//!
//! // The address the service can reach, and where this program listens for it.
//! let receiver = Receiver::new("https://hooks.example.com/gptimage/")?;
//! let _listener = receiver.listen("0.0.0.0:8787")?; // or mount `receiver.handle` in your server
//! let client = Client::builder().api_key("sk-...").webhooks(receiver).build()?;
//! // The submission carries a callback URL; the wait ends soon after the callback.
//! let task = client.generate(&GenerateRequest::text_to_image("a red fox").build()?).await?;
//! # let _ = task;
//! # Ok(())
//! # }
//! ```
//!
//! # What a delivery costs
//!
//! Every request is judged on its head alone (method, path, declared length): a request for
//! anything but a token this receiver issued is refused (`404`, `405`, `413`) before a byte of
//! its body is read, and the built-in listener then closes its connection. A genuine callback's
//! body is counted and dropped piece by piece, never gathered: the receiver never needs it.
//! Nothing a peer sends can make [`Receiver::handle`] or [`Receiver::refusal`] panic (the
//! fuzz targets in `fuzz/` and the tests hold them to it).
//!
//! # Several replicas
//!
//! The receiver keeps its tokens in memory: a callback is accepted only by the process that
//! submitted the task. Give each replica its own public base URL (a path prefix that names the
//! replica, routed to it by the load balancer, such as `https://hooks.example.com/r/3/`). A
//! callback that lands on another replica is answered 404 and changes nothing; the waiting replica
//! falls back to polling, so nothing needs shared state for correctness.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use http::{Method, StatusCode, header};
use url::Url;

use crate::error::{Error, Result};

#[cfg(feature = "listener")]
mod listener;
#[cfg(feature = "listener")]
pub use listener::{ListenOptions, Listener, ServerTls};

/// The largest callback body accepted.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024;
/// Callback URLs kept at once; the oldest are forgotten first.
const MAX_WATCHED: usize = 100_000;
/// Hex digits of a token's public selector (64 bits) and secret verifier (128 bits).
const SELECTOR_HEX: usize = 16;
const VERIFIER_HEX: usize = 32;

/// Receives the service's callbacks and wakes the waits they are about.
///
/// Cheap to clone (clones share their tokens). Its `Debug` never shows a token.
#[derive(Clone)]
pub struct Receiver {
    shared: Arc<Shared>,
}

struct Shared {
    /// The public base URL, ending in `/`.
    base: String,
    /// The path every callback's path starts with where `handle` receives it, ending in `/`:
    /// the public URL's, unless a proxy or a nesting router strips a prefix.
    path: String,
    registry: Mutex<Registry>,
    changed: Condvar,
}

#[derive(Default)]
struct Registry {
    by_selector: HashMap<String, Entry>,
    by_task: HashMap<String, String>,
    order: VecDeque<String>,
}

struct Entry {
    verifier: [u8; VERIFIER_HEX / 2],
    task_id: Option<String>,
    hints: u64,
    wakers: Vec<Waker>,
    /// While no task is bound to the token (its submission not yet answered, or its answer
    /// lost): the task ids its callbacks named, not yet confirmed (at most [`MAX_CANDIDATES`],
    /// the first ones kept). A callback may come before the client gives up on its POST.
    candidates: Option<Vec<String>>,
    /// The task a lost submission was recovered as, once confirmed.
    recovered: Option<String>,
}

/// Task ids kept from the callbacks of one lost submission: a genuine sender names one; more
/// can only come from someone who has the token, and are each confirmed (or not) anyway.
const MAX_CANDIDATES: usize = 8;

/// The callback token of a submission whose answer was lost, kept so that its task can be
/// recovered: a callback on it names a *candidate* task id, which a status request must confirm
/// (the task exists under this key, and its echoed request carries this very callback URL).
#[derive(Clone)]
pub(crate) struct Lost {
    receiver: Receiver,
    selector: String,
    /// The callback URL the submission carried.
    url: String,
}

impl std::fmt::Debug for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lost { .. }")
    }
}

impl Lost {
    /// The callback URL the lost submission carried (a secret).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The candidates named so far, from the `seen`th on.
    #[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
    pub(crate) fn candidates(&self, seen: usize) -> Vec<String> {
        let registry = self.receiver.registry();
        registry
            .by_selector
            .get(&self.selector)
            .and_then(|entry| entry.candidates.as_ref())
            .map(|c| c.iter().skip(seen).cloned().collect())
            .unwrap_or_default()
    }

    /// Completes when a candidate beyond the first `seen` arrives (at once if one has).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn next_candidate(&self, seen: usize) -> NextCandidate<'_> {
        NextCandidate { lost: self, seen }
    }

    /// Blocks until a candidate beyond the first `seen` arrives or `until` passes; whether one
    /// did.
    #[cfg_attr(not(feature = "blocking"), allow(dead_code))]
    pub(crate) fn wait_candidate(&self, seen: usize, until: Instant) -> bool {
        let shared = self.receiver.shared.clone();
        let mut registry = self.receiver.registry();
        loop {
            let count = registry
                .by_selector
                .get(&self.selector)
                .and_then(|entry| entry.candidates.as_ref())
                .map_or(0, Vec::len);
            if count > seen || self.settled(&registry).is_some() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            registry = shared
                .changed
                .wait_timeout(registry, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The task is confirmed: the token is bound to it, so its wait listens to the callbacks.
    #[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
    pub(crate) fn found(&self, task_id: &str) {
        let mut registry = self.receiver.registry();
        if let Some(entry) = registry.by_selector.get_mut(&self.selector) {
            entry.candidates = None;
            entry.recovered = Some(task_id.to_owned());
            entry.task_id = Some(task_id.to_owned());
            for waker in entry.wakers.drain(..) {
                waker.wake();
            }
            registry
                .by_task
                .insert(task_id.to_owned(), self.selector.clone());
        }
        drop(registry);
        self.receiver.shared.changed.notify_all();
    }

    /// No task was confirmed in time: the token stays genuine (a late callback is answered
    /// 200), but nothing waits for it any more.
    #[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
    pub(crate) fn give_up(&self) {
        let mut registry = self.receiver.registry();
        if let Some(entry) = registry.by_selector.get_mut(&self.selector)
            && entry.recovered.is_none()
        {
            entry.candidates = None;
            for waker in entry.wakers.drain(..) {
                waker.wake();
            }
        }
        drop(registry);
        self.receiver.shared.changed.notify_all();
    }

    /// The recovered task: `Some(Some(id))` once confirmed, `Some(None)` once given up (or the
    /// token evicted), `None` while recovery goes on.
    fn settled(&self, registry: &Registry) -> Option<Option<String>> {
        match registry.by_selector.get(&self.selector) {
            None => Some(None),
            Some(entry) => match (&entry.recovered, &entry.candidates) {
                (Some(task_id), _) => Some(Some(task_id.clone())),
                (None, None) => Some(None),
                (None, Some(_)) => None,
            },
        }
    }

    /// The recovered task, if recovery already confirmed one.
    #[cfg_attr(not(feature = "blocking"), allow(dead_code))]
    pub(crate) fn recovered(&self) -> Option<String> {
        let registry = self.receiver.registry();
        registry
            .by_selector
            .get(&self.selector)
            .and_then(|entry| entry.recovered.clone())
    }

    /// Completes with the recovered task's id once recovery is over (`None`: not recovered).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn outcome(&self) -> Outcome<'_> {
        Outcome { lost: self }
    }
}

/// The future of [`Lost::outcome`].
pub(crate) struct Outcome<'a> {
    lost: &'a Lost,
}

impl Future for Outcome<'_> {
    type Output = Option<String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let mut registry = self.lost.receiver.registry();
        if let Some(settled) = self.lost.settled(&registry) {
            return Poll::Ready(settled);
        }
        if let Some(entry) = registry.by_selector.get_mut(&self.lost.selector)
            && !entry.wakers.iter().any(|w| w.will_wake(cx.waker()))
        {
            entry.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The future of [`Lost::next_candidate`].
pub(crate) struct NextCandidate<'a> {
    lost: &'a Lost,
    seen: usize,
}

impl Future for NextCandidate<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut registry = self.lost.receiver.registry();
        let Some(entry) = registry.by_selector.get_mut(&self.lost.selector) else {
            return Poll::Pending;
        };
        if entry.candidates.as_ref().map_or(0, Vec::len) > self.seen || entry.recovered.is_some() {
            return Poll::Ready(());
        }
        if !entry.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            entry.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A callback URL issued for one submission.
pub(crate) struct Watch {
    selector: String,
    /// The URL to send as the request's `callback_url`.
    #[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
    pub(crate) url: String,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("base", &self.shared.base)
            .field("watched", &self.registry().by_selector.len())
            .finish()
    }
}

impl Receiver {
    /// A receiver whose callback URLs start with `public_base_url`: an absolute `http(s)` URL
    /// the service can reach, which routes to wherever [`handle`](Self::handle) is mounted.
    pub fn new(public_base_url: &str) -> Result<Self> {
        let url = Self::public_url(public_base_url)?;
        Ok(Self::from_parts(url.path().to_owned(), url.into()))
    }

    /// A receiver whose callback URLs start with `public_base_url`, and which receives them at
    /// `local_path`: behind a proxy that strips a prefix of the path, or as a router nested
    /// under a prefix (axum's `nest`), the path [`handle`](Self::handle) sees is not the one the
    /// service called. Without this, every callback there would be a silent `404`.
    ///
    /// ```
    /// use gptimage_transport::webhook::Receiver;
    ///
    /// // The proxy forwards https://example.com/gptimage/hooks/… to this program as /hooks/….
    /// let receiver = Receiver::with_local_path("https://example.com/gptimage/hooks/", "/hooks/")?;
    /// assert_eq!(receiver.base_url(), "https://example.com/gptimage/hooks/");
    /// assert_eq!(receiver.local_path(), "/hooks/");
    /// assert!(Receiver::with_local_path("https://example.com/", "hooks").is_err());
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn with_local_path(public_base_url: &str, local_path: &str) -> Result<Self> {
        let url = Self::public_url(public_base_url)?;
        let valid = local_path.starts_with('/')
            && local_path
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#'));
        if !valid {
            return Err(Error::config(format!(
                "the webhook local path {local_path:?} is not an absolute path: it must start \
                 with `/` and hold no spaces, `?` or `#`"
            )));
        }
        let mut path = local_path.to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(Self::from_parts(path, url.into()))
    }

    fn from_parts(path: String, base: String) -> Self {
        Self {
            shared: Arc::new(Shared {
                path,
                base,
                registry: Mutex::new(Registry::default()),
                changed: Condvar::new(),
            }),
        }
    }

    /// The public base URL, checked, without query or fragment, ending in `/`.
    fn public_url(public_base_url: &str) -> Result<Url> {
        let mut url = Url::parse(public_base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                Error::config(format!(
                    "the webhook base URL {public_base_url:?} is not an absolute http(s) URL"
                ))
            })?;
        url.set_query(None);
        url.set_fragment(None);
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(url)
    }

    /// The public base URL, ending in `/`.
    pub fn base_url(&self) -> &str {
        &self.shared.base
    }

    /// The path at which callbacks are received, ending in `/`: the public base URL's, or the
    /// one given to [`with_local_path`](Self::with_local_path).
    pub fn local_path(&self) -> &str {
        &self.shared.path
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a callback URL with a fresh token.
    pub(crate) fn issue(&self) -> Result<Watch> {
        let mut selector = [0u8; SELECTOR_HEX / 2];
        let mut verifier = [0u8; VERIFIER_HEX / 2];
        getrandom::fill(&mut selector)
            .and_then(|()| getrandom::fill(&mut verifier))
            .map_err(|e| Error::config(format!("no randomness for a callback token: {e}")))?;
        let selector = hex(&selector);
        let url = format!("{}{selector}{}", self.shared.base, hex(&verifier));
        let mut registry = self.registry();
        if registry.order.len() >= MAX_WATCHED
            && let Some(oldest) = registry.order.pop_front()
            && let Some(entry) = registry.by_selector.remove(&oldest)
            && let Some(task) = entry.task_id
        {
            registry.by_task.remove(&task);
        }
        registry.by_selector.insert(
            selector.clone(),
            Entry {
                verifier,
                task_id: None,
                hints: 0,
                wakers: Vec::new(),
                candidates: Some(Vec::new()),
                recovered: None,
            },
        );
        registry.order.push_back(selector.clone());
        Ok(Watch { selector, url })
    }

    /// Ties an issued callback URL to the task its submission created.
    pub(crate) fn bind(&self, watch: &Watch, task_id: &str) {
        let mut registry = self.registry();
        if let Some(entry) = registry.by_selector.get_mut(&watch.selector) {
            entry.task_id = Some(task_id.to_owned());
            entry.candidates = None;
            registry
                .by_task
                .insert(task_id.to_owned(), watch.selector.clone());
        }
    }

    /// Keeps a callback URL whose submission's answer was lost, for its task to be recovered
    /// when a callback comes on it (until the receiver's capacity evicts it).
    pub(crate) fn lose(&self, watch: &Watch) -> Lost {
        // Its candidates, kept since the URL was issued, stay: a callback may have come while
        // the POST was still waiting for its answer.
        Lost {
            receiver: self.clone(),
            selector: watch.selector.clone(),
            url: watch.url.clone(),
        }
    }

    /// Whether a genuine callback on `token` should be read: only one for a lost submission,
    /// whose body may name its task.
    pub(crate) fn wants_body(&self, token: &Token) -> bool {
        self.registry()
            .by_selector
            .get(token.selector.as_str())
            .is_some_and(|entry| entry.candidates.is_some())
    }

    /// Forgets a callback URL: its submission made no task, or the wait for it is over.
    pub(crate) fn forget(&self, watch: &Watch) {
        self.forget_selector(&watch.selector);
    }

    fn forget_selector(&self, selector: &str) {
        let mut registry = self.registry();
        if let Some(entry) = registry.by_selector.remove(selector)
            && let Some(task) = entry.task_id
        {
            registry.by_task.remove(&task);
        }
        registry.order.retain(|s| s != selector);
    }

    /// The task ended: no wait will listen for it again. Its URL stays genuine (late and
    /// duplicate deliveries are still answered 200, so the service does not retry them) until
    /// the receiver's capacity evicts it.
    pub(crate) fn finish(&self, task_id: &str) {
        let mut registry = self.registry();
        if let Some(selector) = registry.by_task.remove(task_id)
            && let Some(entry) = registry.by_selector.get_mut(&selector)
        {
            entry.task_id = None;
            // No wait listens any more; a waker would keep its task's memory alive.
            entry.wakers = Vec::new();
        }
    }

    /// The hints for `task_id`, if its submission carried one of this receiver's URLs. Every
    /// delivery since the URL was issued counts, those that came before this wait began
    /// included: a callback that arrives between a submission and its wait (a program that
    /// stores the task id first, as it should) ends the wait's first pause at once.
    pub(crate) fn hints(&self, task_id: &str) -> Option<Hints> {
        let registry = self.registry();
        let selector = registry.by_task.get(task_id)?.clone();
        registry.by_selector.get(&selector)?;
        Some(Hints {
            receiver: self.clone(),
            selector,
            seen: 0,
        })
    }

    /// Handles one delivery, from any HTTP server: `POST {local path}{token}` with a body of at
    /// most [`MAX_CALLBACK_BYTES`]. A token this receiver issued is answered `200` at once and
    /// wakes the wait for its task; anything else is answered `404`, `405` or `413` and changes
    /// nothing. The body is read only for a token with no task bound yet (see the module's
    /// documentation): a callback is a hint, never a result.
    ///
    /// A server that can answer before it reads a body should ask [`refusal`](Self::refusal)
    /// first, and read the body only of a request it does not refuse (as the built-in listener
    /// and [`axum_router`](Self::axum_router) do).
    ///
    /// ```
    /// use gptimage_transport::webhook::Receiver;
    ///
    /// let receiver = Receiver::new("https://hooks.example.com/gptimage/").unwrap();
    /// let forged = http::Request::post("/gptimage/0123456789abcdef0123456789abcdef0123456789abcdef")
    ///     .body(b"{}".to_vec())
    ///     .unwrap();
    /// assert_eq!(receiver.handle(forged).status(), 404);
    /// ```
    pub fn handle(&self, request: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
        let token = match self.judge(&request) {
            Ok(token) => token,
            Err(refused) => return refused.response(),
        };
        if request.body().len() > MAX_CALLBACK_BYTES {
            return Refused::TooLarge.noted().response();
        }
        let body = self.wants_body(&token).then(|| request.body().as_slice());
        self.deliver(token, body)
    }

    /// The answer that refuses `request` on its head alone, or `None` for a genuine callback,
    /// whose body (at most [`MAX_CALLBACK_BYTES`]) should then be read, and the request given to
    /// [`handle`](Self::handle). A refused request's body need not be read at all: answer, and
    /// close the connection (the answer says `Connection: close`). It changes nothing, and
    /// costs a map lookup.
    ///
    /// ```
    /// use gptimage_transport::webhook::Receiver;
    ///
    /// let receiver = Receiver::new("https://hooks.example.com/gptimage/").unwrap();
    /// let head = http::Request::get("/gptimage/anything").body(()).unwrap();
    /// let refused = receiver.refusal(&head).expect("a GET is refused");
    /// assert_eq!(refused.status(), 405);
    /// assert_eq!(refused.headers()["connection"], "close");
    /// ```
    pub fn refusal<B>(&self, request: &http::Request<B>) -> Option<http::Response<Vec<u8>>> {
        self.judge(request).err().map(Refused::response)
    }

    /// The token of a genuine callback, judged on the request's head; or why it is refused.
    /// Nothing here can panic, whatever the path holds.
    pub(crate) fn judge<B>(
        &self,
        request: &http::Request<B>,
    ) -> std::result::Result<Token, Refused> {
        if request.method() != Method::POST {
            return Err(Refused::Method.noted());
        }
        let declared = request
            .headers()
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()))
            .try_fold(0u64, |most, n| n.map(|n| most.max(n)));
        match declared {
            Some(n) if n > MAX_CALLBACK_BYTES as u64 => return Err(Refused::TooLarge.noted()),
            None => return Err(Refused::Malformed.noted()),
            Some(_) => {}
        }
        request
            .uri()
            .path()
            .strip_prefix(self.shared.path.as_str())
            .and_then(Token::parse)
            .filter(|token| self.issued(token))
            .ok_or_else(|| Refused::Unknown.noted())
    }

    /// Whether this receiver issued `token` (and has not forgotten it).
    fn issued(&self, token: &Token) -> bool {
        let registry = self.registry();
        registry
            .by_selector
            .get(token.selector.as_str())
            .is_some_and(|entry| constant_time_eq(&entry.verifier, &token.verifier))
    }

    /// Counts a genuine delivery for `token` and wakes its waiters; the `200` to answer it with.
    /// For a lost submission's token, `body` (read because [`wants_body`](Self::wants_body)
    /// said so) may name a candidate task, kept for a status request to confirm.
    pub(crate) fn deliver(&self, token: Token, body: Option<&[u8]>) -> http::Response<Vec<u8>> {
        let named = body
            .and_then(|body| gptimage_types::parse_webhook(body).ok())
            .map(|task| task.task_id)
            .filter(|id| !id.is_empty() && id.len() <= 256);
        let mut registry = self.registry();
        let Some(entry) = registry.by_selector.get_mut(token.selector.as_str()) else {
            // Forgotten between the head and now (the receiver's capacity): as if never issued.
            return Refused::Unknown.noted().response();
        };
        if let (Some(candidates), Some(named)) = (entry.candidates.as_mut(), named)
            && candidates.len() < MAX_CANDIDATES
            && !candidates.contains(&named)
        {
            candidates.push(named);
        }
        entry.hints += 1;
        for waker in entry.wakers.drain(..) {
            waker.wake();
        }
        drop(registry);
        self.shared.changed.notify_all();
        answer(StatusCode::OK, "accepted")
    }
}

/// A callback token, parsed: a selector (hex) to find its entry, and the secret verifier.
pub(crate) struct Token {
    selector: String,
    verifier: [u8; VERIFIER_HEX / 2],
}

impl Token {
    /// The token `text` spells, if it has the shape of one: 48 ASCII hex digits. Checked as
    /// ASCII before it is split, so no character boundary can be missed.
    fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != SELECTOR_HEX + VERIFIER_HEX || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let (selector, verifier) = bytes.split_at(SELECTOR_HEX);
        Some(Self {
            selector: String::from_utf8_lossy(selector).to_ascii_lowercase(),
            verifier: unhex(verifier)?,
        })
    }
}

/// Why a delivery is refused; each is answered with its status and `Connection: close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a POST: 405.
    Method,
    /// A body (declared or sent) over [`MAX_CALLBACK_BYTES`]: 413.
    TooLarge,
    /// A malformed length or body: 400.
    Malformed,
    /// No token this receiver issued: 404.
    Unknown,
    /// The body did not arrive within the read timeout: 408 (the built-in listener's).
    #[cfg_attr(not(feature = "listener"), allow(dead_code))]
    Slow,
}

impl Refused {
    /// Notes the refusal (a debug event with the reason; never the path, which may hold a
    /// genuine token sent with the wrong method).
    pub(crate) fn noted(self) -> Self {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: "gptimage", reason = ?self, "webhook delivery refused");
        self
    }

    /// The answer.
    pub(crate) fn response(self) -> http::Response<Vec<u8>> {
        let (status, what) = match self {
            Self::Method => (StatusCode::METHOD_NOT_ALLOWED, "only POST is accepted"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"),
            Self::Malformed => (StatusCode::BAD_REQUEST, "the request is malformed"),
            Self::Unknown => (StatusCode::NOT_FOUND, "no such callback"),
            Self::Slow => (StatusCode::REQUEST_TIMEOUT, "the body took too long"),
        };
        let mut response = answer(status, what);
        let headers = response.headers_mut();
        headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        if self == Self::Method {
            headers.insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        }
        response
    }
}

/// Reads a genuine callback's body to its end, counting its bytes and dropping each piece as
/// it comes (never gathering them, unless `keep`: a lost submission's callback, whose body may
/// name its task); `Err` if it is larger than [`MAX_CALLBACK_BYTES`] or malformed.
#[cfg(any(feature = "listener", feature = "axum"))]
pub(crate) async fn drain<B>(body: B, keep: bool) -> std::result::Result<Option<Vec<u8>>, Refused>
where
    B: http_body::Body,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut seen = 0usize;
    let mut kept = keep.then(Vec::new);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Refused::Malformed.noted());
        };
        if let Some(data) = frame.data_ref() {
            let chunk = bytes::Buf::chunk(data);
            seen = seen.saturating_add(bytes::Buf::remaining(data));
            if seen > MAX_CALLBACK_BYTES {
                return Err(Refused::TooLarge.noted());
            }
            if let Some(kept) = kept.as_mut() {
                kept.extend_from_slice(chunk);
            }
        }
    }
    Ok(kept)
}

#[cfg(feature = "axum")]
impl Receiver {
    /// The receiver as an axum 0.8 router (feature `axum`), serving [`handle`](Self::handle) at
    /// the base URL's path; merge it into an application's router. Its signature names axum's
    /// types, so it follows axum's major version.
    ///
    /// ```no_run
    /// # async fn run() -> std::io::Result<()> {
    /// use gptimage_transport::webhook::Receiver;
    ///
    /// let receiver = Receiver::new("https://api.example.com/gptimage/hooks/").unwrap();
    /// let app = axum::Router::new().merge(receiver.axum_router());
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    /// axum::serve(listener, app).await
    /// # }
    /// ```
    pub fn axum_router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let receiver = self.clone();
        let serve = move |request: axum::extract::Request| {
            let receiver = receiver.clone();
            async move {
                // Judged on its head: a refused request's body is never read.
                let (parts, body) = request.into_parts();
                let head = http::Request::from_parts(parts, ());
                let answer = match receiver.judge(&head) {
                    Err(refused) => refused.response(),
                    Ok(token) => match drain(body, receiver.wants_body(&token)).await {
                        Ok(kept) => receiver.deliver(token, kept.as_deref()),
                        Err(refused) => refused.response(),
                    },
                };
                answer.map(axum::body::Body::from)
            }
        };
        axum::Router::new().route(&axum_route(&self.shared.path), axum::routing::any(serve))
    }
}

/// The axum route that reaches every callback under `path` (ending in `/`). axum refuses a
/// segment that begins with `:` or `*` (its old capture syntax), which a URL path may hold: the
/// route then captures everything from that segment on, and [`Receiver::judge`] checks the
/// whole path as always.
#[cfg(feature = "axum")]
fn axum_route(path: &str) -> String {
    let mut prefix = String::from("/");
    for segment in path.trim_start_matches('/').split_inclusive('/') {
        if segment.starts_with([':', '*']) || segment.starts_with('/') {
            return format!("{prefix}{{*rest}}");
        }
        prefix.push_str(segment);
    }
    format!("{prefix}{{token}}")
}

/// New hints for one task, as a wait sees them.
pub(crate) struct Hints {
    receiver: Receiver,
    selector: String,
    seen: u64,
}

impl Hints {
    /// Whether a hint came since the last look; marks it seen.
    fn take(&mut self, registry: &mut Registry, waker: Option<&Waker>) -> bool {
        let Some(entry) = registry.by_selector.get_mut(&self.selector) else {
            return false;
        };
        if entry.hints > self.seen {
            self.seen = entry.hints;
            return true;
        }
        if let Some(waker) = waker
            && !entry.wakers.iter().any(|w| w.will_wake(waker))
        {
            entry.wakers.push(waker.clone());
        }
        false
    }

    /// Blocks until `until`, or until a hint comes; whether one came.
    #[cfg_attr(not(feature = "blocking"), allow(dead_code))]
    pub(crate) fn wait_until(&mut self, until: Instant) -> bool {
        let receiver = self.receiver.clone();
        let shared = receiver.shared.clone();
        let mut registry = receiver.registry();
        loop {
            if self.take(&mut registry, None) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            registry = shared
                .changed
                .wait_timeout(registry, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Completes when a hint comes (at once if one came since the last look).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn next(&mut self) -> NextHint<'_> {
        NextHint { hints: self }
    }
}

/// The future of [`Hints::next`].
pub(crate) struct NextHint<'a> {
    hints: &'a mut Hints,
}

impl Future for NextHint<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let receiver = self.hints.receiver.clone();
        let mut registry = receiver.registry();
        if self.hints.take(&mut registry, Some(cx.waker())) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

fn answer(status: StatusCode, what: &str) -> http::Response<Vec<u8>> {
    let body = serde_json::json!({ "accepted": status == StatusCode::OK, "message": what });
    let mut response = http::Response::new(body.to_string().into_bytes());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<[u8; VERIFIER_HEX / 2]> {
    let mut out = [0u8; VERIFIER_HEX / 2];
    if text.len() != VERIFIER_HEX {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16);
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "axum")]
    use std::io::{Read, Write};
    #[cfg(feature = "axum")]
    use std::net::TcpStream;
    #[cfg(feature = "axum")]
    use std::time::Duration;

    fn post(path: &str) -> http::Request<Vec<u8>> {
        http::Request::post(path).body(b"{}".to_vec()).unwrap()
    }

    #[test]
    fn genuine_tokens_are_accepted_and_anything_else_changes_nothing() {
        let receiver = Receiver::new("https://hooks.example/cb").unwrap();
        assert_eq!(receiver.base_url(), "https://hooks.example/cb/");
        let watch = receiver.issue().unwrap();
        receiver.bind(&watch, "t1");
        let mut hints = receiver.hints("t1").unwrap();
        let path = watch.url.strip_prefix("https://hooks.example").unwrap();
        assert_eq!(path.len(), "/cb/".len() + 48);
        // One character of the secret changed, a wrong method, a huge body: refused.
        let mut forged = path.to_owned();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert_eq!(receiver.handle(post(&forged)).status(), 404);
        let get = http::Request::get(path).body(Vec::new()).unwrap();
        assert_eq!(receiver.handle(get).status(), 405);
        let huge = http::Request::post(path)
            .body(vec![b'x'; MAX_CALLBACK_BYTES + 1])
            .unwrap();
        assert_eq!(receiver.handle(huge).status(), 413);
        assert!(!hints.wait_until(Instant::now()), "nothing counted yet");
        // The genuine one, five times: each accepted, one hint seen.
        for _ in 0..5 {
            assert_eq!(receiver.handle(post(path)).status(), 200);
        }
        assert!(hints.wait_until(Instant::now()));
        assert!(
            !hints.wait_until(Instant::now()),
            "duplicates were one hint"
        );
        // Once the task has ended, late deliveries are still welcome, and wake nobody.
        receiver.finish("t1");
        assert_eq!(receiver.handle(post(path)).status(), 200);
        assert!(receiver.hints("t1").is_none());
        // A submission that made no task forgets its URL at once.
        let unused = receiver.issue().unwrap();
        let unused_path = unused
            .url
            .strip_prefix("https://hooks.example")
            .unwrap()
            .to_owned();
        receiver.forget(&unused);
        assert_eq!(receiver.handle(post(&unused_path)).status(), 404);
    }

    #[test]
    fn tokens_are_unique_and_never_shown() {
        let receiver = Receiver::new("http://127.0.0.1:9/").unwrap();
        let a = receiver.issue().unwrap();
        let b = receiver.issue().unwrap();
        assert_ne!(a.url, b.url);
        let shown = format!("{receiver:?}");
        assert!(!shown.contains(&a.url[a.url.len() - 32..]), "{shown}");
        assert!(Receiver::new("ftp://x/").is_err());
        assert!(Receiver::new("/relative").is_err());
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_routes_never_name_a_segment_axum_refuses() {
        assert_eq!(axum_route("/"), "/{token}");
        assert_eq!(axum_route("/gptimage/hooks/"), "/gptimage/hooks/{token}");
        assert_eq!(axum_route("/a/:hooks/"), "/a/{*rest}");
        assert_eq!(axum_route("/*/x/"), "/{*rest}");
        // The routers are made without a panic, and the receiver judges the whole path.
        for base in ["https://x/:hooks/", "https://x/a/*b/", "https://x/a//b/"] {
            let receiver = Receiver::new(base).unwrap();
            let _router: axum::Router = receiver.axum_router();
        }
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn the_axum_router_serves_the_handler() {
        let receiver = Receiver::new("http://127.0.0.1/gptimage/hooks/").unwrap();
        let watch = receiver.issue().unwrap();
        receiver.bind(&watch, "t7");
        let mut hints = receiver.hints("t7").unwrap();
        let app: axum::Router = axum::Router::new().merge(receiver.axum_router());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(tcp, app).await });
        let path = watch.url["http://127.0.0.1".len()..].to_owned();
        let status = |path: String, body: Vec<u8>| async move {
            tokio::task::spawn_blocking(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let head = format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body).unwrap();
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                text[9..12].to_owned()
            })
            .await
            .unwrap()
        };
        assert_eq!(
            status("/gptimage/hooks/nope".into(), b"{}".to_vec()).await,
            "404"
        );
        let huge = vec![b'x'; MAX_CALLBACK_BYTES + 1];
        assert_eq!(status(path.clone(), huge).await, "413");
        assert!(!hints.wait_until(Instant::now()));
        assert_eq!(status(path, b"{}".to_vec()).await, "200");
        assert!(hints.wait_until(Instant::now() + Duration::from_secs(5)));
    }
}
