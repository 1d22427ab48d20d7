//! How an emulator instance behaves: keys and credits, timings, limits, and injected faults.

use std::time::Duration;

/// The key an emulator accepts when none is configured. It is a local test key, not a secret.
pub const DEFAULT_KEY: &str = "sk-emulator-local";

/// Credits each configured key starts with unless told otherwise.
pub const DEFAULT_CREDITS: u64 = 1_000_000;

/// An API key the emulator accepts, with its starting balance.
///
/// ```
/// use gptimage_emulator::KeyConfig;
///
/// let key = KeyConfig::new("alice", "sk-alice", 20); // two tasks' worth
/// assert_eq!(key.credits, 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyConfig {
    /// A name for counters and logs; the key itself is never reported.
    pub name: String,
    /// The bearer token clients send.
    pub key: String,
    /// The starting balance, in credits (a task costs 10).
    pub credits: u64,
}

impl KeyConfig {
    /// A key with a name and a starting balance.
    pub fn new(name: impl Into<String>, key: impl Into<String>, credits: u64) -> Self {
        Self {
            name: name.into(),
            key: key.into(),
            credits,
        }
    }
}

/// The API endpoints a fault can target.
///
/// ```
/// use gptimage_emulator::Endpoint;
///
/// assert_eq!(Endpoint::Generate.path(), "/api/generate");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /api/generate`.
    Generate,
    /// `GET /api/status`.
    Status,
    /// `GET /files/…`: the result images.
    Files,
    /// The emulator's own webhook deliveries to a task's `callback_url`. Only a fault that names
    /// it applies: [`FaultKind::DropConnection`] loses the delivery, [`FaultKind::Latency`]
    /// delays it, [`FaultKind::Duplicate`] sends it more than once.
    Webhook,
}

impl Endpoint {
    /// The path (or path prefix) of the endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Self::Generate => "/api/generate",
            Self::Status => "/api/status",
            Self::Files => "/files/",
            Self::Webhook => "the task's callback_url",
        }
    }
}

/// What an injected fault does.
///
/// [`ServerError`](Self::ServerError) and [`RateLimited`](Self::RateLimited) answer before the
/// request is processed, in the API's envelope, so no task is created (a client may safely retry).
/// [`Latency`](Self::Latency), [`DropConnection`](Self::DropConnection) and
/// [`GatewayError`](Self::GatewayError) act after the request was processed: a submission has
/// then created (and charged) its task, but the client cannot know it. That is the case a client
/// must not retry blindly.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer `500` with `{"code":500,"message":"Internal Server Error…","data":null}`.
    ServerError,
    /// Answer `429` in the envelope, with a `Retry-After` header of this many seconds.
    RateLimited {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// Process the request, then wait this long before answering.
    Latency(Duration),
    /// Process the request, then close the connection without answering.
    DropConnection,
    /// Process the request, then answer as a failing proxy would: this HTTP status (502 or 504)
    /// with an HTML page, not the API's envelope.
    GatewayError(u16),
    /// For [`Endpoint::Webhook`]: deliver the callback this many extra times.
    Duplicate(u32),
    /// Answer this HTTP status before the request is processed (no task is made), as a service
    /// does for a key it refuses (401), an empty account (402) or a task id it no longer knows
    /// (404): in the API's envelope on the API's endpoints, and as an image host does for an
    /// expired or revoked signed URL (403, 404, 410) on [`Endpoint::Files`]: a short XML error.
    Refuse(u16),
}

/// One fault rule: what to do, to which endpoint, how often, how many times.
///
/// Rules are checked in order; the first that fires decides. A rule with
/// [`times`](Self::times) stops after firing that many times, so "the first two submissions get a
/// 500" is `Fault::new(FaultKind::ServerError).on(Endpoint::Generate).times(2)`.
///
/// ```
/// use std::time::Duration;
/// use gptimage_emulator::{Endpoint, Fault, FaultKind};
///
/// let flaky = Fault::new(FaultKind::ServerError).on(Endpoint::Status).probability(0.3);
/// let slow = Fault::new(FaultKind::Latency(Duration::from_millis(200)));
/// let once = Fault::new(FaultKind::DropConnection).on(Endpoint::Generate).times(1);
/// # let _ = (flaky, slow, once);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Fault {
    /// What the fault does.
    pub kind: FaultKind,
    /// The endpoint it applies to; `None` for every endpoint.
    pub endpoint: Option<Endpoint>,
    /// The share of matching requests it fires on, from 0 to 1.
    pub probability: f64,
    /// How many times it fires at most; `None` for no limit.
    pub times: Option<u64>,
    /// How many matching requests pass untouched before it may fire.
    pub after: u64,
}

impl Fault {
    /// A fault that fires on every request to every endpoint, without limit.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            endpoint: None,
            probability: 1.0,
            times: None,
            after: 0,
        }
    }

    /// Restricts the fault to one endpoint.
    pub fn on(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Fires on this share of matching requests (clamped to 0..=1), decided by the emulator's
    /// seeded random generator, so a run is repeatable.
    pub fn probability(mut self, share: f64) -> Self {
        self.probability = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// Fires at most `n` times.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Lets the first `n` matching requests through untouched, then fires: a service that
    /// works for a while and then fails.
    ///
    /// ```
    /// use gptimage_emulator::{Endpoint, Fault, FaultKind};
    ///
    /// let later = Fault::new(FaultKind::ServerError).on(Endpoint::Status).after(10);
    /// assert_eq!(later.after, 10);
    /// ```
    pub fn after(mut self, n: u64) -> Self {
        self.after = n;
        self
    }
}

/// The configuration of an emulator instance. Start from [`Config::default`] (timings for a
/// demo) or [`Config::instant`] (no waiting, for tests) and adjust with the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use gptimage_emulator::{Config, KeyConfig};
///
/// let config = Config::instant()
///     .with_keys([KeyConfig::new("alice", "sk-alice", 100), KeyConfig::new("bob", "sk-bob", 0)])
///     .with_timings(Duration::from_millis(50), Duration::from_millis(100))
///     .with_rate_limit(20, Duration::from_secs(10));
/// assert_eq!(config.keys.len(), 2);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The keys accepted, with their balances.
    pub keys: Vec<KeyConfig>,
    /// How long a task stays `PENDING`.
    pub pending_for: Duration,
    /// How long a task stays `IN_PROGRESS` after that, before it ends.
    pub running_for: Duration,
    /// A prompt containing this phrase (case-insensitively) fails with
    /// `Content policy violation detected`.
    pub fail_phrase: String,
    /// Injected faults, checked in order.
    pub faults: Vec<Fault>,
    /// Seed of the random generator behind fault probabilities and task ids.
    pub seed: u64,
    /// New tasks allowed per key per window: `(count, window)`. `None` for no limit.
    pub rate_limit: Option<(u32, Duration)>,
    /// Whether the rate limit's 429 answers say `Retry-After` (many real services do not).
    pub rate_limit_retry_after: bool,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long finished tasks and their images are kept.
    pub task_ttl: Duration,
    /// The most tasks kept at once; the oldest finished ones are dropped first beyond it.
    pub max_tasks: usize,
    /// Whether input images and webhooks may be on hosts other than loopback.
    pub allow_remote_urls: bool,
    /// Timeout for fetching one input image.
    pub fetch_timeout: Duration,
    /// The largest input image accepted, in bytes.
    pub max_input_bytes: usize,
    /// Attempts to deliver a webhook before giving up.
    pub webhook_attempts: u32,
    /// Delay before the first webhook retry; it doubles after each failed attempt.
    pub webhook_backoff: Duration,
    /// Timeout of one webhook attempt.
    pub webhook_timeout: Duration,
    /// Answer API errors with HTTP 200 and the real outcome only in the envelope's `code`, as
    /// some services built like this one do.
    pub errors_with_http_200: bool,
    /// Serve result images from a second listener (another port, so another origin), as a CDN
    /// would; a client must not send its key there.
    pub separate_file_origin: bool,
    /// Certificates (PEM) the emulator trusts when it fetches an `https` input image or
    /// delivers an `https` webhook; none by default, so such URLs fail with a certificate error.
    pub trusted_roots_pem: Vec<u8>,
    /// Give result URLs a query as a store's signed URLs have (`X-Amz-Signature=…`, a secret),
    /// which the file server ignores: for tests that a client never shows one.
    pub signed_results: bool,
    /// Accept request fields the API does not document (ignoring them), as a lenient server
    /// might. Off by default: a field the API does not have (`qualty` for `quality`) is a 400
    /// naming it, so a client's typo is caught rather than silently run at the default.
    pub allow_unknown_fields: bool,
}

impl Default for Config {
    /// Timings that feel like the real service, shortened for a demo: 1 s pending, 3 s running.
    fn default() -> Self {
        Self {
            keys: vec![KeyConfig::new("default", DEFAULT_KEY, DEFAULT_CREDITS)],
            pending_for: Duration::from_secs(1),
            running_for: Duration::from_secs(3),
            fail_phrase: "policy-violation".to_owned(),
            faults: Vec::new(),
            seed: 0x005E_ED0F_1A6E,
            rate_limit: None,
            rate_limit_retry_after: true,
            max_body_bytes: 64 * 1024,
            task_ttl: Duration::from_secs(3600),
            max_tasks: 10_000,
            allow_remote_urls: false,
            fetch_timeout: Duration::from_secs(10),
            max_input_bytes: 20 * 1024 * 1024,
            webhook_attempts: 4,
            webhook_backoff: Duration::from_millis(250),
            webhook_timeout: Duration::from_secs(5),
            errors_with_http_200: false,
            separate_file_origin: false,
            trusted_roots_pem: Vec::new(),
            signed_results: false,
            allow_unknown_fields: false,
        }
    }
}

impl Config {
    /// Like [`Config::default`], but tasks end as soon as they are rendered, and webhook retries
    /// are quick: the configuration for tests.
    pub fn instant() -> Self {
        Self {
            pending_for: Duration::ZERO,
            running_for: Duration::ZERO,
            webhook_backoff: Duration::from_millis(20),
            webhook_timeout: Duration::from_secs(2),
            ..Self::default()
        }
    }

    /// Trusts these PEM certificates (a test CA, say) for `https` input images and webhooks.
    pub fn with_trusted_roots_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trusted_roots_pem = pem.into();
        self
    }

    /// Replaces the accepted keys.
    pub fn with_keys(mut self, keys: impl IntoIterator<Item = KeyConfig>) -> Self {
        self.keys = keys.into_iter().collect();
        self
    }

    /// Sets how long tasks stay `PENDING`, then `IN_PROGRESS`.
    pub fn with_timings(mut self, pending_for: Duration, running_for: Duration) -> Self {
        self.pending_for = pending_for;
        self.running_for = running_for;
        self
    }

    /// Sets the phrase that makes a task fail its content policy.
    pub fn with_fail_phrase(mut self, phrase: impl Into<String>) -> Self {
        self.fail_phrase = phrase.into();
        self
    }

    /// Adds a fault rule.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Sets the seed of fault probabilities and task ids.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Limits new tasks to `count` per `window` per key; more are answered 429 with `Retry-After`.
    pub fn with_rate_limit(mut self, count: u32, window: Duration) -> Self {
        self.rate_limit = Some((count, window));
        self
    }

    /// Like [`with_rate_limit`](Self::with_rate_limit), but the 429 answers are bare (no
    /// `Retry-After`), as many real services send them.
    pub fn with_bare_rate_limit(mut self, count: u32, window: Duration) -> Self {
        self.rate_limit = Some((count, window));
        self.rate_limit_retry_after = false;
        self
    }

    /// Sets how long finished tasks and their images are kept.
    pub fn with_task_ttl(mut self, ttl: Duration) -> Self {
        self.task_ttl = ttl;
        self
    }

    /// Allows input images and webhooks on hosts other than loopback.
    pub fn with_remote_urls(mut self, allow: bool) -> Self {
        self.allow_remote_urls = allow;
        self
    }

    /// Answers API errors with HTTP 200, the outcome only in the envelope's `code`.
    pub fn with_errors_as_http_200(mut self, yes: bool) -> Self {
        self.errors_with_http_200 = yes;
        self
    }

    /// Accepts (and ignores) request fields the API does not document (see
    /// [`Config::allow_unknown_fields`]).
    ///
    /// ```
    /// let lenient = gptimage_emulator::Config::instant().with_unknown_fields_allowed(true);
    /// assert!(lenient.allow_unknown_fields);
    /// ```
    pub fn with_unknown_fields_allowed(mut self, yes: bool) -> Self {
        self.allow_unknown_fields = yes;
        self
    }

    /// Gives result URLs a signed URL's query (see [`Config::signed_results`]).
    pub fn with_signed_results(mut self, yes: bool) -> Self {
        self.signed_results = yes;
        self
    }

    /// Serves result images from a second origin (another port).
    pub fn with_separate_file_origin(mut self, yes: bool) -> Self {
        self.separate_file_origin = yes;
        self
    }

    /// Sets webhook delivery: attempts, first backoff (doubling), and per-attempt timeout.
    pub fn with_webhooks(mut self, attempts: u32, backoff: Duration, timeout: Duration) -> Self {
        self.webhook_attempts = attempts.max(1);
        self.webhook_backoff = backoff;
        self.webhook_timeout = timeout;
        self
    }
}
