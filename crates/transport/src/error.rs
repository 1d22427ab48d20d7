//! The one public error type: opaque, with a kind to match on and accessors for the details.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use gptimage_types::{ApiCode, ValidationError};

type Source = Box<dyn StdError + Send + Sync + 'static>;

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
}

/// The category of a transport failure.
///
/// ```
/// use gptimage_transport::{RequestSent, TransportError, TransportErrorKind};
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

/// A failure of one HTTP exchange, as a [`Transport`](crate::AsyncTransport) reports it.
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
    /// A transport failure with its cause.
    pub fn new(kind: TransportErrorKind, sent: RequestSent, source: impl Into<Source>) -> Self {
        Self {
            kind,
            sent,
            source: source.into(),
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

#[derive(Debug, Default)]
struct Inner {
    kind: Option<ErrorKind>,
    what: String,
    code: Option<i64>,
    http_status: Option<u16>,
    server_message: Option<String>,
    retry_after: Option<Duration>,
    task_id: Option<String>,
    body_excerpt: Option<String>,
    transport: Option<TransportErrorKind>,
    validation: Option<ValidationError>,
    source: Option<Source>,
}

impl Error {
    fn new(kind: ErrorKind, what: impl Into<String>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind: Some(kind),
                what: what.into(),
                ..Inner::default()
            }),
        }
    }

    pub(crate) fn invalid_request(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, what)
    }

    pub(crate) fn config(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, what)
    }

    pub(crate) fn api(
        code: i64,
        http_status: Option<u16>,
        message: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut err = Self::new(ErrorKind::Api, "");
        err.inner.code = Some(code);
        err.inner.http_status = http_status;
        err.inner.server_message = message;
        err.inner.retry_after = retry_after;
        err
    }

    pub(crate) fn transport(error: TransportError, destination: &str) -> Self {
        let what = format!("{error} to {destination}");
        let mut err = Self::new(ErrorKind::Transport, what);
        err.inner.transport = Some(error.kind);
        err.inner.source = Some(Box::new(error));
        err
    }

    pub(crate) fn outcome_unknown(why: impl Into<String>, source: Option<TransportError>) -> Self {
        let mut err = Self::new(ErrorKind::OutcomeUnknown, why);
        if let Some(source) = source {
            err.inner.transport = Some(source.kind);
            err.inner.source = Some(Box::new(source));
        }
        err
    }

    pub(crate) fn task_failed(task_id: &str, message: Option<String>) -> Self {
        let mut err = Self::new(ErrorKind::TaskFailed, "");
        err.inner.task_id = Some(task_id.to_owned());
        err.inner.server_message = message;
        err
    }

    pub(crate) fn deadline(task_id: &str, waited: Duration) -> Self {
        let mut err = Self::new(ErrorKind::DeadlinePassed, format!("{waited:.1?}"));
        err.inner.task_id = Some(task_id.to_owned());
        err
    }

    pub(crate) fn invalid_response(
        what: impl Into<String>,
        http_status: Option<u16>,
        excerpt: Option<String>,
    ) -> Self {
        let mut err = Self::new(ErrorKind::InvalidResponse, what);
        err.inner.http_status = http_status;
        err.inner.body_excerpt = excerpt;
        err
    }

    pub(crate) fn download(what: impl Into<String>, source: Option<Source>) -> Self {
        let mut err = Self::new(ErrorKind::Download, what);
        err.inner.source = source;
        err
    }

    /// Attaches the task this error is about (kept if one is already set).
    pub(crate) fn with_task_id(mut self, task_id: &str) -> Self {
        if self.inner.task_id.is_none() {
            self.inner.task_id = Some(task_id.to_owned());
        }
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind.unwrap_or(ErrorKind::InvalidResponse)
    }

    /// The API's own code, for [`ErrorKind::Api`] errors (from the envelope's `code`, or the HTTP
    /// status when the answer was not the envelope).
    pub fn code(&self) -> Option<i64> {
        self.inner.code
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
        self.inner.code.map(ApiCode::from_code)
    }

    /// The HTTP status of the answer, when there was one.
    pub fn http_status(&self) -> Option<u16> {
        self.inner.http_status
    }

    /// The server's message: the envelope's `message`, or a failed task's `error_message`.
    pub fn server_message(&self) -> Option<&str> {
        self.inner.server_message.as_deref()
    }

    /// How long the server asked to wait (`Retry-After`), when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The task this error is about, when there is one: a failed task, a wait whose deadline
    /// passed, a status request that failed while waiting.
    pub fn task_id(&self) -> Option<&str> {
        self.inner.task_id.as_deref()
    }

    /// The first bytes of a body that could not be understood (at most 200 characters).
    pub fn body_excerpt(&self) -> Option<&str> {
        self.inner.body_excerpt.as_deref()
    }

    /// The rule a request broke, for [`ErrorKind::InvalidRequest`].
    pub fn validation_error(&self) -> Option<&ValidationError> {
        self.inner.validation.as_ref()
    }

    /// The category of the transport failure behind this error, if one is.
    pub fn transport_kind(&self) -> Option<TransportErrorKind> {
        self.inner.transport
    }

    /// Whether a timeout caused this error.
    pub fn is_timeout(&self) -> bool {
        self.inner.transport == Some(TransportErrorKind::Timeout)
    }

    /// Whether a failure to connect caused this error.
    pub fn is_connect(&self) -> bool {
        self.inner.transport == Some(TransportErrorKind::Connect)
    }
}

impl From<ValidationError> for Error {
    fn from(error: ValidationError) -> Self {
        let mut err = Self::new(ErrorKind::InvalidRequest, "");
        err.inner.validation = Some(error);
        err
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let message = inner.server_message.as_deref().unwrap_or("no message");
        match self.kind() {
            ErrorKind::InvalidRequest => match &inner.validation {
                Some(rule) => write!(f, "invalid request, nothing was sent: {rule}"),
                None => write!(f, "invalid request, nothing was sent: {}", inner.what),
            },
            ErrorKind::Config => write!(f, "the client is misconfigured: {}", inner.what),
            ErrorKind::Api => {
                let code = inner.code.unwrap_or_default();
                let advice = match ApiCode::from_code(code) {
                    ApiCode::BadRequest => "fix the request".to_owned(),
                    ApiCode::Unauthorized => "check the API key (GPTIMAGE_API_KEY)".to_owned(),
                    ApiCode::InsufficientCredits => {
                        "the account is out of credits; top it up before submitting again"
                            .to_owned()
                    }
                    ApiCode::NotFound => {
                        "no such task for this key; task ids are per key and expire".to_owned()
                    }
                    ApiCode::RateLimited => match inner.retry_after {
                        Some(d) => format!("rate limited; wait {} s and try again", d.as_secs()),
                        None => "rate limited; wait and try again".to_owned(),
                    },
                    ApiCode::ServerError(_) => "the service failed; try again later".to_owned(),
                    _ => "see the message".to_owned(),
                };
                write!(f, "the API answered {code} ({message}): {advice}")
            }
            ErrorKind::Transport => write!(f, "{}", inner.what),
            ErrorKind::OutcomeUnknown => write!(
                f,
                "the submission's outcome is unknown ({}): a task may have been created and charged; \
                 check for it before submitting again",
                inner.what
            ),
            ErrorKind::TaskFailed => write!(
                f,
                "task {} failed: {message} (its credits were given back)",
                inner.task_id.as_deref().unwrap_or("?")
            ),
            ErrorKind::DeadlinePassed => write!(
                f,
                "task {} did not finish within {}; it may still finish: wait for it again with its id",
                inner.task_id.as_deref().unwrap_or("?"),
                inner.what
            ),
            ErrorKind::InvalidResponse => match inner.http_status {
                Some(status) => write!(f, "{} (HTTP {status})", inner.what),
                None => write!(f, "{}", inner.what),
            },
            ErrorKind::Download => write!(f, "{}", inner.what),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind());
        if !inner.what.is_empty() {
            s.field("what", &inner.what);
        }
        for (name, value) in [
            ("code", inner.code.map(|c| c.to_string())),
            ("http_status", inner.http_status.map(|c| c.to_string())),
            ("server_message", inner.server_message.clone()),
            ("retry_after", inner.retry_after.map(|d| format!("{d:?}"))),
            ("task_id", inner.task_id.clone()),
            ("body_excerpt", inner.body_excerpt.clone()),
        ] {
            if let Some(value) = value {
                s.field(name, &value);
            }
        }
        if let Some(rule) = &inner.validation {
            s.field("validation", rule);
        }
        if let Some(source) = &inner.source {
            s.field("source", source);
        }
        s.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        // A validation error is already in the message, so it is not repeated as the source.
        self.inner.source.as_deref().map(|s| s as _)
    }
}

/// The result type of the clients.
pub type Result<T, E = Error> = std::result::Result<T, E>;
