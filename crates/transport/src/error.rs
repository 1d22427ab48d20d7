//! The one public error type: opaque, with a kind to match on and accessors for the details.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use gptimage_types::{ApiCode, ValidationError};

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// A cause as it may be shown: the words of an underlying error and of its causes, redacted and
/// joined (an HTTP library's error names the URL, query and all; a store's, its request), with
/// nothing beneath it, so no chain can repeat a secret, or itself.
#[derive(Debug)]
struct Scrubbed(String);

impl Scrubbed {
    fn of(source: &(dyn StdError + 'static)) -> Source {
        let mut text = source.to_string();
        let mut cause = source.source();
        while let Some(next) = cause {
            let next_text = next.to_string();
            if !text.contains(&next_text) {
                text.push_str(": ");
                text.push_str(&next_text);
            }
            cause = next.source();
        }
        Box::new(Scrubbed(gptimage_types::redact(&text)))
    }
}

impl fmt::Display for Scrubbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Scrubbed {}

/// What went wrong, in the terms a caller acts on.
///
/// ```
/// use gptimage_transport::ErrorKind;
///
/// fn advice(kind: ErrorKind) -> &'static str {
///     match kind {
///         ErrorKind::OutcomeUnknown => "check whether the task exists before submitting again",
///         ErrorKind::DeadlinePassed => "wait again later with the task id",
///         _ => "see the message",
///     }
/// }
/// assert_eq!(advice(ErrorKind::DeadlinePassed), "wait again later with the task id");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request broke a documented rule; nothing was sent and nothing was charged.
    InvalidRequest,
    /// The client is misconfigured (no key, a bad base URL, plain http to a remote host).
    Config,
    /// The API answered with an error code (400, 401, 402, 404, 429, 5xx, …).
    Api,
    /// The API could not be reached or the exchange broke (connect, timeout, reset, TLS).
    Transport,
    /// A submission was sent but its answer was lost: a task may exist, and may be charged.
    /// Do not resubmit blindly.
    OutcomeUnknown,
    /// The task ended `FAILED`; its credits were given back.
    TaskFailed,
    /// The wait deadline passed before the task ended; it may still finish.
    DeadlinePassed,
    /// The server's answer could not be understood.
    InvalidResponse,
    /// A result image could not be downloaded or saved.
    Download,
    /// The request was never sent: the client's pacer found it no turn within the wait
    /// timeout, its send window closed, or it was stopped first. No task was made and nothing
    /// was charged: it is always safe to submit again.
    NotSent,
}

impl ErrorKind {
    /// A short, stable name for the kind, for logs, metrics and stored records: it never
    /// changes between versions (a new kind gets a new name).
    ///
    /// ```
    /// use gptimage_transport::ErrorKind;
    ///
    /// assert_eq!(ErrorKind::OutcomeUnknown.as_str(), "outcome_unknown");
    /// assert_eq!(ErrorKind::DeadlinePassed.to_string(), "deadline");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Config => "config",
            ErrorKind::Api => "api",
            ErrorKind::Transport => "transport",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::TaskFailed => "task_failed",
            ErrorKind::DeadlinePassed => "deadline",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::Download => "download",
            ErrorKind::NotSent => "not_sent",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The category of a transport failure.
///
/// ```
/// use gptimage_transport::transport::{RequestSent, TransportError, TransportErrorKind};
///
/// let err = TransportError::new(TransportErrorKind::Connect, RequestSent::No, "refused");
/// assert!(!err.may_have_been_processed());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// No connection could be made (refused, unreachable, DNS, connect timeout).
    Connect,
    /// The exchange took longer than the timeout.
    Timeout,
    /// The connection broke during the exchange (reset, closed early, truncated body).
    Reset,
    /// TLS failed.
    Tls,
    /// The response body was larger than allowed.
    BodyTooLarge,
    /// Anything else.
    Other,
}

/// Whether a request reached the server before the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestSent {
    /// Certainly not: the connection was never made. Safe to retry anything.
    No,
    /// Possibly: the server may have received and processed it.
    Maybe,
}

/// A failure of one HTTP exchange, as a [`Transport`](crate::transport::AsyncTransport) reports it.
///
/// It says whether the request may have reached the server, which decides whether a submission
/// may be retried.
#[derive(Debug)]
pub struct TransportError {
    kind: TransportErrorKind,
    sent: RequestSent,
    source: Source,
}

impl TransportError {
    /// A transport failure with its cause. The cause is kept as its words, redacted (see
    /// [`gptimage_types::redact`]): an HTTP library's error names the URL it failed on, whose
    /// query may be a signature.
    pub fn new(kind: TransportErrorKind, sent: RequestSent, source: impl Into<Source>) -> Self {
        let source: Source = source.into();
        Self {
            kind,
            sent,
            source: Scrubbed::of(&*source),
        }
    }

    /// The category of the failure.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// Whether the request may have reached the server.
    pub fn sent(&self) -> RequestSent {
        self.sent
    }

    /// Whether the server may have acted on the request.
    pub fn may_have_been_processed(&self) -> bool {
        self.sent == RequestSent::Maybe
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            TransportErrorKind::Connect => "could not connect",
            TransportErrorKind::Timeout => "timed out",
            TransportErrorKind::Reset => "the connection broke",
            TransportErrorKind::Tls => "TLS failed",
            TransportErrorKind::BodyTooLarge => "the response body was too large",
            TransportErrorKind::Other => "the HTTP exchange failed",
        })
    }
}

impl StdError for TransportError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// An error of the gptimage clients.
///
/// It hides the HTTP backends' own types (their errors are kept as [`source`](StdError::source)),
/// so upgrading reqwest or ureq is not a breaking change. Match on [`kind`](Self::kind); read the
/// details with the accessors. Its `Display` is one lowercase sentence saying what happened and
/// what to do, and never contains the API key.
///
/// ```
/// use gptimage_transport::{Error, ErrorKind};
/// use gptimage_types::GenerateRequest;
///
/// let invalid = GenerateRequest::text_to_image("").build().unwrap_err();
/// let err = Error::from(invalid);
/// assert_eq!(err.kind(), ErrorKind::InvalidRequest);
/// assert!(err.to_string().starts_with("invalid request, nothing was sent"));
/// ```
pub struct Error {
    inner: Box<Inner>,
}

/// The task an error is about, beside what went wrong.
struct Inner {
    repr: Repr,
    task_id: Option<String>,
    /// For an unknown outcome whose submission carried one of the client's callback URLs: that
    /// URL's token, kept so the lost task can be recovered when its callback comes.
    lost: Option<crate::webhook::Lost>,
}

/// What went wrong, one variant per [`ErrorKind`], each holding only what that kind has.
enum Repr {
    InvalidRequest(Invalid),
    Config(String),
    Api {
        code: i64,
        http_status: Option<u16>,
        message: Option<String>,
        retry_after: Option<Duration>,
    },
    Transport {
        what: String,
        source: TransportError,
    },
    OutcomeUnknown {
        why: String,
        source: Option<TransportError>,
    },
    TaskFailed {
        message: Option<String>,
    },
    DeadlinePassed {
        waited: Duration,
    },
    InvalidResponse {
        what: String,
        http_status: Option<u16>,
        excerpt: Option<String>,
    },
    Download {
        what: String,
        source: Option<Source>,
        /// The image host's HTTP status, when it answered with one that is not an image.
        http_status: Option<u16>,
        /// Whether saving to the local disk failed (not fetching).
        write: bool,
    },
    NotSent {
        why: String,
        /// The last answer before it gave up (a 429), if any.
        after: Option<Box<Error>>,
    },
}

impl Repr {
    /// The same, its words redacted.
    fn redacted(self) -> Self {
        use gptimage_types::redact;
        let text = |t: String| redact(&t);
        let maybe = |t: Option<String>| t.map(|t| redact(&t));
        match self {
            Repr::InvalidRequest(Invalid::Other(what)) => {
                Repr::InvalidRequest(Invalid::Other(text(what)))
            }
            Repr::Config(what) => Repr::Config(text(what)),
            Repr::Api {
                code,
                http_status,
                message,
                retry_after,
            } => Repr::Api {
                code,
                http_status,
                message: maybe(message),
                retry_after,
            },
            Repr::Transport { what, source } => Repr::Transport {
                what: text(what),
                source,
            },
            Repr::OutcomeUnknown { why, source } => Repr::OutcomeUnknown {
                why: text(why),
                source,
            },
            Repr::TaskFailed { message } => Repr::TaskFailed {
                message: maybe(message),
            },
            Repr::InvalidResponse {
                what,
                http_status,
                excerpt,
            } => Repr::InvalidResponse {
                what: text(what),
                http_status,
                excerpt: maybe(excerpt),
            },
            Repr::Download {
                what,
                source,
                http_status,
                write,
            } => Repr::Download {
                what: text(what),
                source: source.map(|s| Scrubbed::of(&*s)),
                http_status,
                write,
            },
            Repr::NotSent { why, after } => Repr::NotSent {
                why: text(why),
                after,
            },
            other => other,
        }
    }
}

/// Why a request is invalid: a documented rule, or another check (a task id's form).
enum Invalid {
    Rule(ValidationError),
    Other(String),
}

impl Error {
    /// Every error's words pass through the one redaction (`gptimage_types::redact`): what a
    /// server said, what an HTTP library or a store said, the URLs named (whose queries hold
    /// signatures), never a secret.
    fn new(repr: Repr) -> Self {
        Self {
            inner: Box::new(Inner {
                repr: repr.redacted(),
                task_id: None,
                lost: None,
            }),
        }
    }

    pub(crate) fn invalid_request(what: impl Into<String>) -> Self {
        Self::new(Repr::InvalidRequest(Invalid::Other(what.into())))
    }

    pub(crate) fn config(what: impl Into<String>) -> Self {
        Self::new(Repr::Config(what.into()))
    }

    pub(crate) fn api(
        code: i64,
        http_status: Option<u16>,
        message: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        Self::new(Repr::Api {
            code,
            http_status,
            message,
            retry_after,
        })
    }

    pub(crate) fn transport(error: TransportError, destination: &str) -> Self {
        Self::new(Repr::Transport {
            what: format!("{error} to {destination}"),
            source: error,
        })
    }

    pub(crate) fn outcome_unknown(why: impl Into<String>, source: Option<TransportError>) -> Self {
        Self::new(Repr::OutcomeUnknown {
            why: why.into(),
            source,
        })
    }

    pub(crate) fn task_failed(task_id: &str, message: Option<String>) -> Self {
        Self::new(Repr::TaskFailed { message }).with_task_id(task_id)
    }

    /// A request never sent (no task made), and why; `after`, the answer that led to it.
    pub(crate) fn not_sent(why: impl Into<String>, after: Option<Error>) -> Self {
        Self::new(Repr::NotSent {
            why: why.into(),
            after: after.map(Box::new),
        })
    }

    pub(crate) fn deadline(task_id: &str, waited: Duration) -> Self {
        Self::new(Repr::DeadlinePassed { waited }).with_task_id(task_id)
    }

    pub(crate) fn invalid_response(
        what: impl Into<String>,
        http_status: Option<u16>,
        excerpt: Option<String>,
    ) -> Self {
        Self::new(Repr::InvalidResponse {
            what: what.into(),
            http_status,
            excerpt,
        })
    }

    pub(crate) fn download(what: impl Into<String>, source: Option<Source>) -> Self {
        Self::new(Repr::Download {
            what: what.into(),
            source,
            http_status: None,
            write: false,
        })
    }

    /// A download the image host refused with `http_status`.
    pub(crate) fn download_refused(what: impl Into<String>, http_status: u16) -> Self {
        Self::new(Repr::Download {
            what: what.into(),
            source: None,
            http_status: Some(http_status),
            write: false,
        })
    }

    /// An image fetched whole that a results store refused or could not be reached for (a
    /// bucket missing, without permission, over its quota).
    #[cfg(feature = "object-store")]
    pub(crate) fn stored_nowhere(what: impl Into<String>, source: Source) -> Self {
        Self::new(Repr::Download {
            what: what.into(),
            source: Some(source),
            http_status: None,
            write: true,
        })
    }

    /// An image fetched whole that could not be saved (a full, missing or read-only folder).
    pub(crate) fn write(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::new(Repr::Download {
            what: what.into(),
            source: Some(Box::new(source)),
            http_status: None,
            write: true,
        })
    }

    /// The same unknown outcome, recoverable by its callback (see `Client::recover`).
    pub(crate) fn with_lost(mut self, lost: crate::webhook::Lost) -> Self {
        self.inner.lost = Some(lost);
        self
    }

    /// The callback token of a lost submission, if it had one of the client's.
    #[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
    pub(crate) fn lost(&self) -> Option<&crate::webhook::Lost> {
        self.inner.lost.as_ref()
    }

    /// The same error about `task_id`, unless it already names a task.
    pub(crate) fn with_task_id(mut self, task_id: &str) -> Self {
        if self.inner.task_id.is_none() && !task_id.is_empty() {
            self.inner.task_id = Some(task_id.to_owned());
        }
        self
    }

    /// What went wrong, to match on.
    pub fn kind(&self) -> ErrorKind {
        match &self.inner.repr {
            Repr::InvalidRequest(_) => ErrorKind::InvalidRequest,
            Repr::Config(_) => ErrorKind::Config,
            Repr::Api { .. } => ErrorKind::Api,
            Repr::Transport { .. } => ErrorKind::Transport,
            Repr::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            Repr::TaskFailed { .. } => ErrorKind::TaskFailed,
            Repr::DeadlinePassed { .. } => ErrorKind::DeadlinePassed,
            Repr::InvalidResponse { .. } => ErrorKind::InvalidResponse,
            Repr::Download { .. } => ErrorKind::Download,
            Repr::NotSent { .. } => ErrorKind::NotSent,
        }
    }

    /// The API's error code (the envelope's `code`, or the HTTP status of a non-envelope answer).
    pub fn code(&self) -> Option<i64> {
        match &self.inner.repr {
            Repr::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The meaning of [`code`](Self::code).
    ///
    /// ```
    /// # use gptimage_transport::Error;
    /// # fn check(err: &Error) {
    /// use gptimage_types::ApiCode;
    /// if err.api_code() == Some(ApiCode::InsufficientCredits) {
    ///     eprintln!("top up the account");
    /// }
    /// # }
    /// ```
    pub fn api_code(&self) -> Option<ApiCode> {
        self.code().map(ApiCode::from_code)
    }

    /// The HTTP status of the answer, when there was one: the API's, or for a
    /// [`Download`](ErrorKind::Download) the image host's refusal (a 403, 404 or 410 usually
    /// means the result URL expired: ask for the task's status again for fresh URLs).
    pub fn http_status(&self) -> Option<u16> {
        match &self.inner.repr {
            Repr::Api { http_status, .. }
            | Repr::InvalidResponse { http_status, .. }
            | Repr::Download { http_status, .. } => *http_status,
            _ => None,
        }
    }

    /// Whether the images were fetched but could not be saved to disk (the folder is full,
    /// read-only or cannot be made): a problem of this machine, not of the service. The task's
    /// images can be fetched again once the folder is fixed.
    ///
    /// ```
    /// # fn check(err: &gptimage_transport::Error) {
    /// if err.is_write() {
    ///     eprintln!("free some disk space, then download again: {err}");
    /// }
    /// # }
    /// ```
    pub fn is_write(&self) -> bool {
        matches!(self.inner.repr, Repr::Download { write: true, .. })
    }

    /// The server's own message: the envelope's `message`, or a failed task's `error_message`.
    pub fn server_message(&self) -> Option<&str> {
        match &self.inner.repr {
            Repr::Api { message, .. } | Repr::TaskFailed { message } => message.as_deref(),
            _ => None,
        }
    }

    /// How long the server asked to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.inner.repr {
            Repr::Api { retry_after, .. } => *retry_after,
            Repr::NotSent {
                after: Some(after), ..
            } => after.retry_after(),
            _ => None,
        }
    }

    /// The task this error is about, when there is one: a failed task, a wait whose deadline
    /// passed, a status request that failed while waiting; so the wait can be resumed.
    pub fn task_id(&self) -> Option<&str> {
        self.inner.task_id.as_deref()
    }

    /// The start of an answer that could not be understood (never containing the key).
    pub fn body_excerpt(&self) -> Option<&str> {
        match &self.inner.repr {
            Repr::InvalidResponse { excerpt, .. } => excerpt.as_deref(),
            _ => None,
        }
    }

    /// The documented rule an invalid request broke.
    pub fn validation_error(&self) -> Option<&ValidationError> {
        match &self.inner.repr {
            Repr::InvalidRequest(Invalid::Rule(rule)) => Some(rule),
            _ => None,
        }
    }

    /// The category of the transport failure behind the error, if one was.
    pub fn transport_kind(&self) -> Option<TransportErrorKind> {
        match &self.inner.repr {
            Repr::Transport { source, .. }
            | Repr::OutcomeUnknown {
                source: Some(source),
                ..
            } => Some(source.kind),
            _ => None,
        }
    }

    /// Whether the same call, made again later as it is, may succeed: the failure was the
    /// service's or the network's, not the request's or the key's. True for a request never
    /// sent ([`NotSent`](ErrorKind::NotSent)), a transport failure (a submission reports one
    /// only when it was not sent), a 429 or a 5xx, a deadline passed (wait again with the task
    /// id), an answer a proxy mangled with a 5xx, and a download the network broke. False for an
    /// invalid request, a misconfigured client, a refusal (400, 401, 402, 404), a failed task, a
    /// result URL refused (ask for the task's status again for fresh ones), a disk that could
    /// not be written, and above all an unknown outcome: a task may exist, so a submission must
    /// not be repeated blindly (see [`may_have_created_task`](Self::may_have_created_task)).
    ///
    /// ```
    /// # fn check(err: &gptimage_transport::Error) {
    /// if err.may_have_created_task() {
    ///     eprintln!("do not resubmit: {err}"); // recover it, or check the account
    /// } else if err.is_retryable() {
    ///     eprintln!("try again later: {err}");
    /// } else {
    ///     eprintln!("fix the request or the key: {err}");
    /// }
    /// # }
    /// ```
    pub fn is_retryable(&self) -> bool {
        match &self.inner.repr {
            Repr::NotSent { .. } | Repr::Transport { .. } | Repr::DeadlinePassed { .. } => true,
            Repr::Api { code, .. } => *code == 429 || *code >= 500,
            Repr::InvalidResponse { http_status, .. } => http_status.is_some_and(|s| s >= 500),
            Repr::Download {
                http_status, write, ..
            } => !write && http_status.is_none_or(|s| s == 408 || s == 429 || s >= 500),
            Repr::InvalidRequest(_)
            | Repr::Config(_)
            | Repr::OutcomeUnknown { .. }
            | Repr::TaskFailed { .. } => false,
        }
    }

    /// Whether a task exists, or may exist, although the call failed: the submission's outcome
    /// is unknown (a task may have been made and charged), or the error is about a task the
    /// service created (its wait passed its deadline, a status request or a download failed,
    /// or it failed: then its credits came back). When true, submitting the same request again
    /// makes another task: for an unknown outcome, recover the lost one (`Client::recover`) or
    /// check the account first; otherwise resume with [`task_id`](Self::task_id). This is the
    /// check that matters before resubmitting; [`is_retryable`](Self::is_retryable) says
    /// whether the same call (a wait, a status, a download) may succeed later.
    ///
    /// ```
    /// use gptimage_transport::{Error, ErrorKind};
    /// use gptimage_types::GenerateRequest;
    ///
    /// let invalid = Error::from(GenerateRequest::text_to_image("").build().unwrap_err());
    /// assert!(!invalid.may_have_created_task()); // nothing was sent
    /// ```
    pub fn may_have_created_task(&self) -> bool {
        self.kind() == ErrorKind::OutcomeUnknown || self.inner.task_id.is_some()
    }

    /// Whether a request timed out.
    pub fn is_timeout(&self) -> bool {
        self.transport_kind() == Some(TransportErrorKind::Timeout)
    }

    /// Whether no connection could be made.
    pub fn is_connect(&self) -> bool {
        self.transport_kind() == Some(TransportErrorKind::Connect)
    }
}

impl From<ValidationError> for Error {
    fn from(error: ValidationError) -> Self {
        Self::new(Repr::InvalidRequest(Invalid::Rule(error)))
    }
}

/// A wait the service asked for, as people say it: `30 s`, `5 min`, `3 h`, `2 days`.
fn for_people(wait: Duration) -> String {
    let seconds = wait.as_secs();
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7_200 => format!("{} min", seconds / 60),
        7_200..172_800 => format!("{} h", seconds / 3_600),
        172_800..3_153_600_000 => format!("{} days", seconds / 86_400),
        _ => "more than a century".to_owned(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let task = self.inner.task_id.as_deref().unwrap_or("?");
        match &self.inner.repr {
            Repr::InvalidRequest(Invalid::Rule(rule)) => {
                write!(f, "invalid request, nothing was sent: {rule}")
            }
            Repr::InvalidRequest(Invalid::Other(what)) => {
                write!(f, "invalid request, nothing was sent: {what}")
            }
            Repr::Config(what) => write!(f, "the client is misconfigured: {what}"),
            Repr::Api {
                code,
                message,
                retry_after,
                ..
            } => {
                let advice = match ApiCode::from_code(*code) {
                    ApiCode::BadRequest => "fix the request".to_owned(),
                    ApiCode::Unauthorized => "check the API key (GPTIMAGE_API_KEY)".to_owned(),
                    ApiCode::InsufficientCredits => {
                        "the account is out of credits; top it up before submitting again"
                            .to_owned()
                    }
                    ApiCode::NotFound => {
                        "no such task for this key; task ids are per key and expire".to_owned()
                    }
                    ApiCode::RateLimited => match retry_after {
                        Some(d) => format!("rate limited; wait {} and try again", for_people(*d)),
                        None => "rate limited; wait and try again".to_owned(),
                    },
                    ApiCode::ServerError(_) => "the service failed; try again later".to_owned(),
                    _ => "see the message".to_owned(),
                };
                let message = message.as_deref().unwrap_or("no message");
                write!(f, "the API answered {code} ({message}): {advice}")
            }
            Repr::Transport { what, .. } | Repr::Download { what, .. } => f.write_str(what),
            Repr::OutcomeUnknown { why, .. } => write!(
                f,
                "the submission's outcome is unknown ({why}): a task may have been created and \
                 charged; check for it before submitting again"
            ),
            Repr::TaskFailed { message } => write!(
                f,
                "task {task} failed: {} (its credits were given back)",
                message.as_deref().unwrap_or("no message")
            ),
            Repr::DeadlinePassed { waited } => write!(
                f,
                "task {task} did not finish within {}; it may still finish: wait for it again \
                 with its id",
                format_args!("{waited:.1?}")
            ),
            Repr::InvalidResponse {
                what,
                http_status: Some(status),
                ..
            } => write!(f, "{what} (HTTP {status})"),
            Repr::InvalidResponse { what, .. } => f.write_str(what),
            Repr::NotSent { why, .. } => write!(
                f,
                "not sent: {why}; no task was made, so submitting again is safe"
            ),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind());
        s.field("message", &self.to_string());
        if let Some(task_id) = self.task_id() {
            s.field("task_id", &task_id);
        }
        if let Some(source) = std::error::Error::source(self) {
            s.field("source", &source);
        }
        s.finish()
    }
}

impl StdError for Error {
    /// The first cause whose words the message does not already say: a chain printed cause by
    /// cause (`anyhow`, `eyre`, `tracing`) never repeats itself. (A validation error is already
    /// in the message, so it is never a source.)
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        let first: &(dyn StdError + 'static) = match &self.inner.repr {
            Repr::Transport { source, .. }
            | Repr::OutcomeUnknown {
                source: Some(source),
                ..
            } => source,
            Repr::Download {
                source: Some(source),
                ..
            } => &**source,
            Repr::NotSent {
                after: Some(after), ..
            } => &**after,
            _ => return None,
        };
        let said = self.to_string();
        let mut cause = Some(first);
        while let Some(error) = cause {
            if !said.contains(&error.to_string()) {
                return Some(error);
            }
            cause = error.source();
        }
        None
    }
}

/// The result type of the clients.
pub type Result<T, E = Error> = std::result::Result<T, E>;
