//! Client configuration: key, base URL, timeouts, retry policy, poll schedule and limits, with a
//! builder that reads the environment and checks everything before a client exists.

use std::marker::PhantomData;
use std::time::Duration;

use gptimage_types::ApiKey;
use url::Url;

use crate::error::{Error, Result};

/// The service's base URL; requests go to `{base}/generate` and `{base}/status`.
pub const DEFAULT_BASE_URL: &str = "https://gptimage15.ai/api";

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "GPTIMAGE_API_KEY";

/// The environment variable overriding the base URL.
pub const BASE_URL_ENV: &str = "GPTIMAGE_BASE_URL";

/// When and how often a failed request is tried again.
///
/// Only requests that cannot have created a task are retried: a submission is retried after a
/// refused connection, a 429, or an error in the API's own envelope, never after a timeout or a
/// reset once it was sent. Status requests and downloads are retried on timeouts, resets, 429
/// and 5xx. Delays grow exponentially with jitter, from [`initial_backoff`](Self::initial_backoff)
/// to [`max_backoff`](Self::max_backoff); a `Retry-After` up to
/// [`max_retry_after`](Self::max_retry_after) is honoured, and a longer one ends the retries.
///
/// ```
/// use std::time::Duration;
/// use gptimage_transport::RetryPolicy;
///
/// let policy = RetryPolicy::default().max_retries(4).backoff(Duration::from_millis(100), Duration::from_secs(2));
/// assert_eq!(policy.max_retries, 4);
/// assert_eq!(RetryPolicy::none().max_retries, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 2).
    pub max_retries: u32,
    /// The delay before the first retry, before jitter (default 0.5 s).
    pub initial_backoff: Duration,
    /// The longest delay between attempts, before jitter (default 8 s).
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured (default 120 s).
    pub max_retry_after: Duration,
    /// Retries of a submission the service answered 429 (default 6), counted apart from the
    /// others: a 429 means no task was made, so another attempt is always safe; the client's
    /// pacer decides when (see [`ClientBuilder::rate_limit`]).
    pub max_rate_limited: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(120),
            max_rate_limited: 6,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            max_rate_limited: 0,
            ..Self::default()
        }
    }

    /// Sets the number of retries.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets the first and the longest backoff delay.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets the longest `Retry-After` honoured.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Sets how many 429 answers a submission retries after (`u32::MAX`: it waits its turn
    /// until the wait timeout, as `gptimage batch` does).
    pub fn max_rate_limited(mut self, retries: u32) -> Self {
        self.max_rate_limited = retries;
        self
    }
}

/// A rate of new tasks: `count` per `per`, as services state their limits ("20 per 10 s").
///
/// ```
/// use std::time::Duration;
/// use gptimage_transport::Rate;
///
/// let rate: Rate = "20/10".parse().unwrap(); // COUNT/SECONDS
/// assert_eq!(rate, Rate::new(20, Duration::from_secs(10)));
/// assert!("20 per ten".parse::<Rate>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    per: Duration,
}

impl Rate {
    /// `count` (at least 1) per `per` (at least 1 ms).
    pub fn new(count: u32, per: Duration) -> Self {
        Self {
            count: count.max(1),
            per: per.max(Duration::from_millis(1)),
        }
    }

    /// How many.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Per how long.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// The spacing of submissions at this rate.
    pub(crate) fn interval(&self) -> Duration {
        self.per / self.count
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let wrong = || format!("{text:?} is not a rate: give COUNT/SECONDS, such as 20/10");
        let (count, seconds) = text.trim().split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        let seconds: f64 = seconds
            .trim()
            .trim_end_matches('s')
            .parse()
            .map_err(|_| wrong())?;
        if count == 0 || !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
            return Err(format!(
                "{text:?}: the count must be at least 1 and the seconds between 0 and 86400"
            ));
        }
        Ok(Self::new(count, Duration::from_secs_f64(seconds)))
    }
}

/// How often a waiting client polls a task: from `initial`, growing by `factor` each poll, up to
/// `max`.
///
/// The real service asks for a poll every 5 to 10 seconds, which is the default. Against a
/// loopback base URL (the emulator), the default is quicker: 100 ms growing to 1 s.
///
/// ```
/// use std::time::Duration;
/// use gptimage_transport::PollSchedule;
///
/// let schedule = PollSchedule::default();
/// assert_eq!(schedule.delay(0), Duration::from_secs(5));
/// assert_eq!(schedule.delay(100), Duration::from_secs(10));
/// assert_eq!(PollSchedule::fixed(Duration::from_millis(20)).delay(7), Duration::from_millis(20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct PollSchedule {
    /// The delay before the second poll.
    pub initial: Duration,
    /// The longest delay between polls.
    pub max: Duration,
    /// How much the delay grows after each poll (1 for a fixed interval).
    pub factor: f64,
}

impl Default for PollSchedule {
    fn default() -> Self {
        Self::exponential(Duration::from_secs(5), Duration::from_secs(10), 1.25)
    }
}

impl PollSchedule {
    /// The same delay between every poll.
    pub fn fixed(interval: Duration) -> Self {
        Self::exponential(interval, interval, 1.0)
    }

    /// A delay growing from `initial` by `factor` up to `max`.
    pub fn exponential(initial: Duration, max: Duration, factor: f64) -> Self {
        let factor = if factor.is_finite() {
            factor.clamp(1.0, 10.0)
        } else {
            1.0
        };
        Self {
            initial,
            max: max.max(initial),
            factor,
        }
    }

    /// The schedule used against a loopback base URL unless another is set.
    pub fn local() -> Self {
        Self::exponential(Duration::from_millis(100), Duration::from_secs(1), 1.5)
    }

    /// The delay after poll number `polls` (from 0). Any duration is accepted: one too long for
    /// a clock (`Duration::MAX`: "never poll, the webhooks will tell") is as long as it can be,
    /// and a wait's deadline still ends it.
    pub fn delay(&self, polls: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.powi(polls.min(64) as i32);
        Duration::try_from_secs_f64(grown)
            .unwrap_or(Duration::MAX)
            .min(self.max)
    }
}

/// The base URL, split into what the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    /// `scheme://host[:port]`, the only place the key is sent.
    pub(crate) origin: String,
    /// The base as given, without a trailing slash.
    pub(crate) base: String,
    pub(crate) loopback: bool,
    /// `{base}/generate` and `{base}/status`, parsed once.
    pub(crate) generate: Url,
    pub(crate) status: Url,
}

impl BaseUrl {
    pub(crate) fn parse(text: &str, allow_insecure_http: bool) -> Result<Self> {
        let url = Url::parse(text.trim()).map_err(|e| {
            Error::config(format!(
                "the base URL {text:?} is not an absolute URL ({e}); use one such as {DEFAULT_BASE_URL}"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::config(format!(
                "the base URL must be http or https, not {}",
                url.scheme()
            )));
        }
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(Error::config(
                "the base URL must not have a query, a fragment or credentials (the key goes in \
                 GPTIMAGE_API_KEY, never in a URL)",
            ));
        }
        let loopback = is_loopback(&url);
        if url.scheme() == "http" && !loopback && !allow_insecure_http {
            return Err(Error::config(format!(
                "refusing to send the API key over plain http to {}; use https, or allow it \
                 explicitly with allow_insecure_http(true)",
                url.host_str().unwrap_or_default()
            )));
        }
        if url.scheme() == "https" && !crate::tls::AVAILABLE {
            return Err(Error::config(format!(
                "the base URL {} is https, but {}",
                url.as_str().trim_end_matches('/'),
                crate::tls::MISSING
            )));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let endpoint = |name: &str| {
            Url::parse(&format!("{base}/{name}"))
                .map_err(|e| Error::config(format!("the base URL cannot take /{name} ({e})")))
        };
        Ok(Self {
            origin: url.origin().ascii_serialization(),
            generate: endpoint("generate")?,
            status: endpoint("status")?,
            base,
            loopback,
        })
    }
}

/// Whether a URL's host is provably this machine: 127.0.0.0/8 or ::1 written as such, or the
/// name `localhost` when every address it resolves to is one of those. Other names (such as
/// `api.localhost`, which a resolver may send anywhere) are not, whatever they look like: plain
/// http, which carries the key in the clear, goes only where it cannot leave the machine.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        // Exactly `localhost`: `localhost.` (a fully qualified name) goes to DNS on many
        // systems, and DNS may answer anything.
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") && resolves_to_loopback_only(d)
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether `name` resolves, and only to loopback addresses.
fn resolves_to_loopback_only(name: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = (name, 0).to_socket_addrs() else {
        return false;
    };
    let addrs: Vec<_> = addrs.collect();
    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
}

/// A checked client configuration. Build one with a client's `builder()`.
#[derive(Clone)]
pub struct Config {
    pub(crate) api_key: ApiKey,
    pub(crate) base: BaseUrl,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) poll: PollSchedule,
    pub(crate) wait_timeout: Duration,
    pub(crate) user_agent: String,
    /// `Authorization` and `User-Agent` as header values, built once (the first marked
    /// sensitive, so no HTTP stack logs it).
    pub(crate) auth_header: http::HeaderValue,
    pub(crate) agent_header: Option<http::HeaderValue>,
    pub(crate) max_response_bytes: u64,
    pub(crate) max_download_bytes: u64,
    pub(crate) proxy: Option<String>,
    /// Whether the caller chose the poll schedule (it is then also the fallback with webhooks).
    pub(crate) poll_explicit: bool,
    pub(crate) webhooks: Option<crate::webhook::Receiver>,
    pub(crate) rate: Option<Rate>,
    pub(crate) on_submission: Option<crate::progress::SubmissionSink>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &self.api_key)
            .field("base_url", &self.base.base)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("poll", &self.poll)
            .field("wait_timeout", &self.wait_timeout)
            .field("user_agent", &self.user_agent)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_download_bytes", &self.max_download_bytes)
            .field("proxy", &self.proxy.as_ref().map(|_| "<set>"))
            .field("webhooks", &self.webhooks)
            .field("rate", &self.rate)
            .field(
                "on_submission",
                &self.on_submission.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

/// Other settings for some calls of a client, applied with `Client::with_options`: a wait
/// deadline, request timeout, retry policy or poll schedule. What is not set stays the client's.
///
/// ```
/// use std::time::Duration;
/// use gptimage_transport::{CallOptions, PollSchedule, RetryPolicy};
///
/// let options = CallOptions::new()
///     .wait_timeout(Duration::from_secs(30))
///     .retry(RetryPolicy::none())
///     .poll(PollSchedule::fixed(Duration::from_secs(2)));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    wait_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    poll: Option<PollSchedule>,
}

impl CallOptions {
    /// Nothing changed.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a wait may last (from its first poll) before it ends with
    /// [`ErrorKind::DeadlinePassed`](crate::ErrorKind); also how long a submission may wait
    /// for its turn.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// The timeout of each HTTP request (1 ms to 1 hour).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The retry policy of each request.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The poll schedule of waits (also their fallback schedule with webhooks).
    pub fn poll(mut self, schedule: PollSchedule) -> Self {
        self.poll = Some(schedule);
        self
    }
}

impl Config {
    /// This configuration with `options` applied, checked as the builder checks them.
    #[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
    pub(crate) fn with_options(&self, options: &CallOptions) -> Result<Config> {
        let mut config = self.clone();
        if let Some(timeout) = options.request_timeout {
            if timeout.is_zero() || timeout > Duration::from_secs(3600) {
                return Err(Error::config(format!(
                    "the request timeout must be between 1 ms and 1 hour, not {timeout:?}"
                )));
            }
            config.request_timeout = timeout;
        }
        if let Some(timeout) = options.wait_timeout {
            config.wait_timeout = timeout;
        }
        if let Some(policy) = options.retry {
            config.retry = policy;
        }
        if let Some(schedule) = options.poll {
            config.poll = schedule;
            config.poll_explicit = true;
        }
        Ok(config)
    }

    /// The base URL requests go under.
    pub fn base_url(&self) -> &str {
        &self.base.base
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }

    /// The poll schedule.
    pub fn poll(&self) -> PollSchedule {
        self.poll
    }

    /// How long a wait lasts at most.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }

    /// The timeout of one HTTP request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The timeout for connecting.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The proxy all requests go through, if one is set.
    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }

    /// How a wait polls while callbacks are expected: the caller's schedule if they chose one,
    /// otherwise a slower one (20 s growing to 60 s), since the callback should come first.
    pub(crate) fn fallback_poll(&self) -> PollSchedule {
        if self.poll_explicit {
            self.poll
        } else {
            PollSchedule::exponential(Duration::from_secs(20), Duration::from_secs(60), 1.5)
        }
    }
}

/// Builds a client of type `C` (the async [`Client`](crate::Client) or the
/// [`blocking::Client`](crate::blocking::Client)). Every setting has a bounded default; `build`
/// checks them all.
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use std::time::Duration;
/// use gptimage_transport::{RetryPolicy, blocking};
///
/// let client = blocking::Client::builder()
///     .api_key("sk-example")
///     .base_url("https://gptimage15.ai/api")
///     .request_timeout(Duration::from_secs(30))
///     .retry(RetryPolicy::default().max_retries(3))
///     .wait_timeout(Duration::from_secs(300))
///     .build()?;
/// assert_eq!(client.config().base_url(), "https://gptimage15.ai/api");
/// # }
/// # Ok::<(), gptimage_transport::Error>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder<C> {
    api_key: Option<String>,
    base_url: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    poll: Option<PollSchedule>,
    wait_timeout: Duration,
    user_agent: Option<String>,
    allow_insecure_http: bool,
    max_response_bytes: u64,
    max_download_bytes: u64,
    proxy: Option<String>,
    webhooks: Option<crate::webhook::Receiver>,
    rate: Option<Rate>,
    on_submission: Option<crate::progress::SubmissionSink>,
    client: PhantomData<fn() -> C>,
}

impl<C> std::fmt::Debug for ClientBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl<C> Default for ClientBuilder<C> {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            poll: None,
            wait_timeout: Duration::from_secs(600),
            user_agent: None,
            allow_insecure_http: false,
            max_response_bytes: 4 * 1024 * 1024,
            max_download_bytes: 64 * 1024 * 1024,
            proxy: None,
            webhooks: None,
            rate: None,
            on_submission: None,
            client: PhantomData,
        }
    }
}

/// A client that a [`ClientBuilder`] can build. Implemented by the crate's clients only.
pub trait FromConfig: Sized + sealed::Sealed {
    /// Builds the client over its default transport.
    fn from_config(config: Config) -> Result<Self>;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

impl<C: FromConfig> ClientBuilder<C> {
    /// A builder with every default and no key.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that takes the key from `GPTIMAGE_API_KEY` and the base URL from
    /// `GPTIMAGE_BASE_URL` when they are set. Later calls override them.
    pub fn from_env() -> Self {
        let var = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        Self {
            api_key: var(API_KEY_ENV),
            base_url: var(BASE_URL_ENV),
            ..Self::default()
        }
    }

    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the base URL (default [`DEFAULT_BASE_URL`]).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sets the timeout for establishing a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the timeout of each HTTP request, from sending to the last byte (default 60 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the retry policy (default: 2 retries, 0.5 s doubling to 8 s).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the poll schedule of waits (default 5 s growing to 10 s; 100 ms to 1 s on loopback).
    pub fn poll(mut self, schedule: PollSchedule) -> Self {
        self.poll = Some(schedule);
        self
    }

    /// Submits every task with a callback URL of `receiver` (unless a request names its own),
    /// and ends each wait soon after the task's genuine callback, confirmed by one status
    /// request. Polling goes on as the fallback: on this builder's schedule if one is given,
    /// otherwise a slower one (20 s growing to 60 s, the first poll after 20 s, since the
    /// callback is expected first).
    ///
    /// ```
    /// use gptimage_transport::Client;
    /// use gptimage_transport::webhook::Receiver;
    ///
    /// let receiver = Receiver::new("https://hooks.example.com/gptimage/")?;
    /// let client = Client::builder().api_key("sk-example").webhooks(receiver).build()?;
    /// # let _ = client;
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn webhooks(mut self, receiver: crate::webhook::Receiver) -> Self {
        self.webhooks = Some(receiver);
        self
    }

    /// Calls `sink` with the outcome of every submission that was sent: the task the service
    /// named, an unknown outcome (a task may exist), and a lost task recovered later from its
    /// callback. It hears what a caller could not: a submission whose caller's future was
    /// dropped mid-request (an HTTP handler whose client went away) still finishes, and reports
    /// here (and as a `tracing` event). Keep it quick: it runs on the client's own task, so hand
    /// the outcome to a channel or a database task rather than block.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use gptimage_transport::{Client, Submission};
    ///
    /// let ledger = Arc::new(Mutex::new(Vec::new()));
    /// let keep = Arc::clone(&ledger);
    /// let client = Client::builder()
    ///     .api_key("sk-example")
    ///     .on_submission(move |outcome| {
    ///         if let Submission::Created { task_id, .. } = outcome {
    ///             keep.lock().unwrap().push(task_id.to_string());
    ///         }
    ///     })
    ///     .build()?;
    /// # let _ = client;
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn on_submission(
        mut self,
        sink: impl Fn(&crate::Submission<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.on_submission = Some(std::sync::Arc::new(sink));
        self
    }

    /// Paces new tasks at `rate`, shared by every clone of the client (off by default). Whatever
    /// the setting, a 429 to a submission slows all of them: `Retry-After` holds every
    /// submission that long; a bare 429 cuts the rate to two thirds, which recovers step by
    /// step as the service accepts again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gptimage_transport::{Client, Rate};
    ///
    /// let client = Client::builder()
    ///     .api_key("sk-example")
    ///     .rate_limit(Rate::new(20, Duration::from_secs(10)))
    ///     .build()?;
    /// # let _ = client;
    /// # Ok::<(), gptimage_transport::Error>(())
    /// ```
    pub fn rate_limit(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Polls at a fixed interval.
    pub fn poll_interval(self, interval: Duration) -> Self {
        self.poll(PollSchedule::fixed(interval))
    }

    /// Sets how long a wait lasts before it gives up with [`ErrorKind::DeadlinePassed`]
    /// (default 10 minutes).
    ///
    /// [`ErrorKind::DeadlinePassed`]: crate::ErrorKind::DeadlinePassed
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Sets the `User-Agent` (default `gptimage-rust/VERSION`).
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// Allows sending the key over plain `http` to a host that is not loopback.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Sets the largest result image downloaded (default 64 MiB).
    pub fn max_download_bytes(mut self, bytes: u64) -> Self {
        self.max_download_bytes = bytes;
        self
    }

    /// Sends every request, downloads included, through this proxy (`http://host:port`).
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Checks the settings and returns the configuration, without building a client.
    pub fn config(self) -> Result<Config> {
        let key = self.api_key.ok_or_else(|| {
            Error::config(format!(
                "no API key; set {API_KEY_ENV} or pass one to the builder"
            ))
        })?;
        let api_key = ApiKey::new(key).map_err(|e| Error::config(e.to_string()))?;
        let base = BaseUrl::parse(
            self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
            self.allow_insecure_http,
        )?;
        for (name, value) in [
            ("connect timeout", self.connect_timeout),
            ("request timeout", self.request_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(Error::config(format!(
                    "the {name} must be between 1 ms and 1 hour, not {value:?}"
                )));
            }
        }
        if let Some(proxy) = &self.proxy {
            Url::parse(proxy).map_err(|e| {
                Error::config(format!("the proxy URL is not an absolute URL ({e})"))
            })?;
        }
        let poll = self.poll.unwrap_or(if base.loopback {
            PollSchedule::local()
        } else {
            PollSchedule::default()
        });
        let user_agent = self
            .user_agent
            .unwrap_or_else(|| concat!("gptimage-rust/", env!("CARGO_PKG_VERSION")).to_owned());
        let mut auth_header =
            http::HeaderValue::from_str(&format!("Bearer {}", api_key.expose_secret()))
                .map_err(|_| Error::config("the API key is not a valid header value"))?;
        auth_header.set_sensitive(true);
        let agent_header = http::HeaderValue::from_str(&user_agent).ok();
        Ok(Config {
            api_key,
            base,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            retry: self.retry,
            poll,
            wait_timeout: self.wait_timeout,
            user_agent,
            auth_header,
            agent_header,
            max_response_bytes: self.max_response_bytes,
            max_download_bytes: self.max_download_bytes,
            proxy: self.proxy,
            poll_explicit: self.poll.is_some(),
            webhooks: self.webhooks,
            rate: self.rate,
            on_submission: self.on_submission,
        })
    }

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<C> {
        C::from_config(self.config()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let ok = BaseUrl::parse("https://gptimage15.ai/api/", false).unwrap();
        assert_eq!(ok.base, "https://gptimage15.ai/api");
        assert_eq!(ok.origin, "https://gptimage15.ai");
        assert!(!ok.loopback);
        let local = BaseUrl::parse("http://127.0.0.1:8080/api", false).unwrap();
        assert!(local.loopback);
        assert!(
            BaseUrl::parse("http://[::1]:8080/api", false)
                .unwrap()
                .loopback
        );
        assert!(
            BaseUrl::parse("http://localhost:1/api", false)
                .unwrap()
                .loopback
        );
        let refused = BaseUrl::parse("http://example.com/api", false).unwrap_err();
        assert!(refused.to_string().contains("plain http"), "{refused}");
        assert!(BaseUrl::parse("http://example.com/api", true).is_ok());
        // A name that looks local is not, unless it is `localhost` itself.
        assert!(BaseUrl::parse("http://api.localhost:1/api", false).is_err());
        // A trailing dot makes it a name DNS answers for (an outside review sent the key away).
        assert!(BaseUrl::parse("http://localhost.:1/api", false).is_err());
        for bad in [
            "gptimage15.ai/api",
            "ftp://x/api",
            "https://x/api?k=1",
            "https://u:p@x/api",
            "https://:p@x/api",
            "https://u@x/api",
        ] {
            assert!(BaseUrl::parse(bad, false).is_err(), "{bad}");
        }
    }

    /// Run by `cargo xtask ci` in a build without TLS as well as in the usual ones.
    #[test]
    fn https_base_urls_need_a_tls_feature() {
        let https = BaseUrl::parse("https://gptimage15.ai/api", false);
        if crate::tls::AVAILABLE {
            assert!(https.is_ok());
        } else {
            let refused = https.err().unwrap();
            assert_eq!(refused.kind(), crate::ErrorKind::Config);
            let message = refused.to_string();
            for named in ["https", "`rustls`", "`native-tls`"] {
                assert!(message.contains(named), "{message}");
            }
        }
        // Loopback http, as for the emulator, needs no TLS in any build.
        assert!(BaseUrl::parse("http://127.0.0.1:8080/api", false).is_ok());
    }
}
