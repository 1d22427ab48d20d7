//! Responses of the API and webhook bodies, parsed tolerantly and serialized in documented form.

use std::fmt;

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::time::Timestamp;

/// The JSON envelope around every answer of the API: `{"code", "message"?, "data"}`.
///
/// `code` is the API's own outcome and is authoritative over the HTTP status. On success `data`
/// holds the payload; on error it is `null` and `message` says why.
///
/// Parsing is tolerant: `code` may be a number or a numeric string, `message` may be absent or
/// not a string, and an error envelope whose `data` is not the payload's shape still parses (its
/// `data` is then `None`).
///
/// ```
/// use gptimage_types::{ApiCode, GenerateResponse};
///
/// let err: GenerateResponse = serde_json::from_str(
///     r#"{"code":400,"message":"Bad Request: 'prompt' is required.","data":null}"#,
/// )?;
/// assert_eq!(err.api_code(), ApiCode::BadRequest);
/// assert_eq!(err.message.as_deref(), Some("Bad Request: 'prompt' is required."));
/// assert!(err.data.is_none());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Envelope<T> {
    /// The API's outcome code: 200 on success, otherwise an HTTP-like error code.
    pub code: i64,
    /// A human-readable message; usually present on errors only.
    pub message: Option<String>,
    /// The payload, present on success.
    pub data: Option<T>,
}

/// The answer to `POST /generate`.
pub type GenerateResponse = Envelope<CreatedTask>;

/// The answer to `GET /status`.
pub type StatusResponse = Envelope<TaskInfo>;

impl<T> Envelope<T> {
    /// A successful envelope (`code` 200, no message) around `data`.
    ///
    /// ```
    /// use gptimage_types::{CreatedTask, Envelope, TaskStatus};
    ///
    /// let body = Envelope::success(CreatedTask::new("n36abc123def456gptimg", TaskStatus::InProgress));
    /// assert_eq!(
    ///     serde_json::to_string(&body)?,
    ///     r#"{"code":200,"data":{"task_id":"n36abc123def456gptimg","status":"IN_PROGRESS"}}"#
    /// );
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn success(data: T) -> Self {
        Self {
            code: 200,
            message: None,
            data: Some(data),
        }
    }

    /// An error envelope: `code`, `message`, and `data: null`.
    ///
    /// ```
    /// use gptimage_types::StatusResponse;
    ///
    /// let body = StatusResponse::error(404, "Not Found: task 'x' does not exist.");
    /// assert_eq!(
    ///     serde_json::to_string(&body)?,
    ///     r#"{"code":404,"message":"Not Found: task 'x' does not exist.","data":null}"#
    /// );
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn error(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
            data: None,
        }
    }

    /// Sets the message (the documented failed-task example carries `"message":"success"`).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The meaning of [`code`](Self::code).
    pub fn api_code(&self) -> ApiCode {
        ApiCode::from_code(self.code)
    }

    /// Whether the API reported success.
    pub fn is_success(&self) -> bool {
        self.api_code() == ApiCode::Success
    }
}

impl<T: Serialize> Serialize for Envelope<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = if self.message.is_some() { 3 } else { 2 };
        let mut s = serializer.serialize_struct("Envelope", fields)?;
        s.serialize_field("code", &self.code)?;
        if let Some(message) = &self.message {
            s.serialize_field("message", message)?;
        }
        s.serialize_field("data", &self.data)?;
        s.end()
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Envelope<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            code: Value,
            #[serde(default)]
            message: Value,
            #[serde(default)]
            data: Value,
        }
        let raw = Raw::deserialize(object::<D>(deserializer)?).map_err(D::Error::custom)?;
        let code = integer(&raw.code)
            .ok_or_else(|| D::Error::custom(format!("`code` is not an integer: {}", raw.code)))?;
        let message = match raw.message {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        };
        let data = match raw.data {
            Value::Null => None,
            data if ApiCode::from_code(code) == ApiCode::Success => {
                Some(T::deserialize(data).map_err(D::Error::custom)?)
            }
            // An error envelope's `data` is not the payload; keep it only if it happens to fit.
            data => T::deserialize(data).ok(),
        };
        Ok(Self {
            code,
            message,
            data,
        })
    }
}

/// What an envelope's `code` means.
///
/// ```
/// use gptimage_types::ApiCode;
///
/// assert_eq!(ApiCode::from_code(402), ApiCode::InsufficientCredits);
/// assert_eq!(ApiCode::from_code(503), ApiCode::ServerError(503));
/// assert_eq!(ApiCode::InsufficientCredits.code(), 402);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiCode {
    /// 200 (or another 2xx): the request succeeded.
    Success,
    /// 400: the request was invalid.
    BadRequest,
    /// 401: the API key is missing or invalid.
    Unauthorized,
    /// 402: the account has no credits left.
    InsufficientCredits,
    /// 403: the key may not do this.
    Forbidden,
    /// 404: no such task.
    NotFound,
    /// 405: the endpoint does not take this method.
    MethodNotAllowed,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 429: too many requests; slow down.
    RateLimited,
    /// 5xx: the service failed.
    ServerError(i64),
    /// Any other code, kept as sent.
    Other(i64),
}

impl ApiCode {
    /// Classifies a numeric code.
    pub fn from_code(code: i64) -> Self {
        match code {
            200..=299 => Self::Success,
            400 => Self::BadRequest,
            401 => Self::Unauthorized,
            402 => Self::InsufficientCredits,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            413 => Self::PayloadTooLarge,
            429 => Self::RateLimited,
            500..=599 => Self::ServerError(code),
            _ => Self::Other(code),
        }
    }

    /// The numeric code (200 for [`Success`](Self::Success)).
    pub fn code(self) -> i64 {
        match self {
            Self::Success => 200,
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::InsufficientCredits => 402,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::ServerError(code) | Self::Other(code) => code,
        }
    }
}

/// The lifecycle state of a task.
///
/// Parsed from the documented strings in any case (`PENDING`, `in_progress`, …) and from the
/// numeric form some pages of the service use (`0` processing, `1` success, `-1` failed). Anything
/// else is kept in [`Unknown`](Self::Unknown), so a new status never breaks a client; it is not
/// terminal, so a waiting client keeps waiting (until its deadline).
///
/// ```
/// use gptimage_types::TaskStatus;
///
/// let parse = |json: &str| serde_json::from_str::<TaskStatus>(json).unwrap();
/// assert_eq!(parse(r#""success""#), TaskStatus::Success);
/// assert_eq!(parse("-1"), TaskStatus::Failed);
/// assert_eq!(parse("0"), TaskStatus::InProgress);
/// assert_eq!(parse(r#""CANCELLED""#), TaskStatus::Unknown("CANCELLED".into()));
/// assert!(TaskStatus::Failed.is_terminal());
/// assert!(!TaskStatus::Unknown("CANCELLED".into()).is_terminal());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskStatus {
    /// Queued, not started.
    Pending,
    /// Being processed.
    InProgress,
    /// Finished; the images are ready.
    Success,
    /// Finished without images; the credits were given back.
    Failed,
    /// A status this crate does not know, kept as the service sent it.
    Unknown(String),
}

impl TaskStatus {
    /// Whether the task has ended ([`Success`](Self::Success) or [`Failed`](Self::Failed)).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Success | Self::Failed)
    }

    /// The documented spelling (`PENDING`, `IN_PROGRESS`, `SUCCESS`, `FAILED`), or the raw value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "PENDING",
            Self::InProgress => "IN_PROGRESS",
            Self::Success => "SUCCESS",
            Self::Failed => "FAILED",
            Self::Unknown(raw) => raw,
        }
    }

    /// Interprets a status string, in any case and with `-` or spaces for `_`.
    ///
    /// ```
    /// use gptimage_types::TaskStatus;
    ///
    /// assert_eq!(TaskStatus::parse("In-Progress"), TaskStatus::InProgress);
    /// assert_eq!(TaskStatus::parse("1"), TaskStatus::Success);
    /// ```
    pub fn parse(raw: &str) -> Self {
        match raw.trim().parse::<i64>() {
            Ok(0) => return Self::InProgress,
            Ok(1) => return Self::Success,
            Ok(-1) => return Self::Failed,
            _ => {}
        }
        let normalized: String = raw
            .trim()
            .chars()
            .map(|c| match c {
                '-' | ' ' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect();
        match normalized.as_str() {
            "PENDING" | "QUEUED" => Self::Pending,
            "IN_PROGRESS" | "INPROGRESS" | "PROCESSING" | "RUNNING" => Self::InProgress,
            "SUCCESS" | "SUCCEEDED" => Self::Success,
            "FAILED" | "FAILURE" => Self::Failed,
            _ => Self::Unknown(raw.to_owned()),
        }
    }

    fn from_value(value: &Value) -> Self {
        match value {
            Value::String(s) => Self::parse(s),
            Value::Number(n) => Self::parse(&n.to_string()),
            Value::Null => Self::Unknown(String::new()),
            other => Self::Unknown(other.to_string()),
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TaskStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::from_value(&Value::deserialize(deserializer)?))
    }
}

/// The `data` of a successful `POST /generate`: the new task's id and first status.
///
/// ```
/// use gptimage_types::{CreatedTask, TaskStatus};
///
/// let task: CreatedTask =
///     serde_json::from_str(r#"{"task_id":"n36abc123def456gptimg","status":"IN_PROGRESS"}"#)?;
/// assert_eq!(task.task_id, "n36abc123def456gptimg");
/// assert_eq!(task.status, TaskStatus::InProgress);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CreatedTask {
    /// The id to poll with, or to give to `GET /status`.
    pub task_id: String,
    /// The status at creation; [`TaskStatus::Pending`] when the service sent none.
    pub status: TaskStatus,
}

impl CreatedTask {
    /// A created task.
    pub fn new(task_id: impl Into<String>, status: TaskStatus) -> Self {
        Self {
            task_id: task_id.into(),
            status,
        }
    }
}

impl<'de> Deserialize<'de> for CreatedTask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            task_id: Value,
            #[serde(default)]
            status: Value,
        }
        let raw = Raw::deserialize(object::<D>(deserializer)?).map_err(D::Error::custom)?;
        let task_id = task_id(&raw.task_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| D::Error::custom("the created task has no `task_id`"))?;
        let status = match raw.status {
            Value::Null => TaskStatus::Pending,
            status => TaskStatus::from_value(&status),
        };
        Ok(Self { task_id, status })
    }
}

/// The `data` of `GET /status`, and the body of a webhook: everything known about a task.
///
/// Every variant the service is known to send parses (see the crate docs); it serializes in the
/// documented form: `consumed_credits`, RFC 3339 dates, `response` as an array, present as `null`
/// once a task has failed and absent while it runs.
///
/// ```
/// use gptimage_types::{TaskInfo, TaskStatus};
///
/// let task: TaskInfo = serde_json::from_str(r#"{
///     "task_id": "n36abc123def456gptimg", "status": "FAILED", "consumed_credits": 0,
///     "error_message": "Content policy violation detected",
///     "created_at": "2024-12-19 10:00:00", "request": "{\"prompt\":\"x\"}", "response": null
/// }"#)?;
/// assert_eq!(task.status, TaskStatus::Failed);
/// assert_eq!(task.error_message.as_deref(), Some("Content policy violation detected"));
/// assert_eq!(task.request.as_ref().unwrap()["prompt"], "x");
/// assert!(task.images().is_empty());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task's id; empty only if the service left it out.
    pub task_id: String,
    /// Where the task is in its lifecycle.
    pub status: TaskStatus,
    /// Credits charged for the task (0 once it failed: they are given back).
    pub consumed_credits: Option<u64>,
    /// Why the task failed.
    pub error_message: Option<String>,
    /// When the task was created.
    pub created_at: Option<Timestamp>,
    /// The request the task was created with, as the service echoes it (a JSON object).
    pub request: Option<Value>,
    /// The URLs of the result images, once the task succeeded. They are short-lived.
    pub response: Option<Vec<String>>,
}

/// The echoed request (its callback URL and signed input URLs) and the result URLs (signed,
/// short-lived) are shown redacted (see [`redact`](crate::redact)).
impl std::fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let request = self.request.as_ref().map(|r| crate::redact(&r.to_string()));
        let response = self
            .response
            .as_ref()
            .map(|urls| urls.iter().map(|u| crate::redact(u)).collect::<Vec<_>>());
        f.debug_struct("TaskInfo")
            .field("task_id", &self.task_id)
            .field("status", &self.status)
            .field("consumed_credits", &self.consumed_credits)
            .field(
                "error_message",
                &self.error_message.as_deref().map(crate::redact),
            )
            .field("created_at", &self.created_at)
            .field("request", &request)
            .field("response", &response)
            .finish()
    }
}

impl TaskInfo {
    /// A task with only an id and a status; the other fields are `None`.
    ///
    /// ```
    /// use gptimage_types::{TaskInfo, TaskStatus};
    ///
    /// let mut task = TaskInfo::new("t1", TaskStatus::Success);
    /// task.response = Some(vec!["https://cdn.example.com/image.png".into()]);
    /// assert_eq!(
    ///     serde_json::to_string(&task)?,
    ///     r#"{"task_id":"t1","status":"SUCCESS","response":["https://cdn.example.com/image.png"]}"#
    /// );
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn new(task_id: impl Into<String>, status: TaskStatus) -> Self {
        Self {
            task_id: task_id.into(),
            status,
            consumed_credits: None,
            error_message: None,
            created_at: None,
            request: None,
            response: None,
        }
    }

    /// The result image URLs; empty until the task succeeded.
    pub fn images(&self) -> &[String] {
        self.response.as_deref().unwrap_or_default()
    }

    /// Whether the task has ended.
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

impl Serialize for TaskInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("TaskInfo", 7)?;
        s.serialize_field("task_id", &self.task_id)?;
        s.serialize_field("status", &self.status)?;
        if let Some(credits) = self.consumed_credits {
            s.serialize_field("consumed_credits", &credits)?;
        }
        if let Some(message) = &self.error_message {
            s.serialize_field("error_message", message)?;
        }
        if let Some(created_at) = &self.created_at {
            s.serialize_field("created_at", created_at)?;
        }
        if let Some(request) = &self.request {
            s.serialize_field("request", request)?;
        }
        // An ended task always says what it produced (`null` when nothing), as documented.
        if self.response.is_some() || self.status.is_terminal() {
            s.serialize_field("response", &self.response)?;
        }
        s.end()
    }
}

impl<'de> Deserialize<'de> for TaskInfo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            task_id: Value,
            #[serde(default)]
            status: Value,
            #[serde(default)]
            consumed_credits: Value,
            #[serde(default)]
            consumed_credit: Value,
            #[serde(default)]
            error_message: Value,
            #[serde(default)]
            created_at: Value,
            #[serde(default)]
            request: Value,
            #[serde(default)]
            response: Value,
        }
        let raw = Raw::deserialize(object::<D>(deserializer)?).map_err(D::Error::custom)?;
        let credits = match raw.consumed_credits {
            Value::Null => raw.consumed_credit,
            plural => plural,
        };
        Ok(Self {
            task_id: task_id(&raw.task_id).unwrap_or_default(),
            status: TaskStatus::from_value(&raw.status),
            consumed_credits: count(&credits),
            error_message: match raw.error_message {
                Value::Null => None,
                Value::String(s) if s.is_empty() => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            },
            // A date in an unexpected format must not make a task unreadable.
            created_at: Timestamp::deserialize(raw.created_at).ok(),
            request: match raw.request {
                Value::Null => None,
                Value::String(s) => Some(serde_json::from_str(&s).unwrap_or(Value::String(s))),
                other => Some(other),
            },
            response: urls(raw.response),
        })
    }
}

/// Reads the next value, which must be a JSON object (serde would also take an array for a struct).
fn object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    let value = Value::deserialize(deserializer)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(D::Error::custom(format!(
            "expected a JSON object, found {}",
            kind(&value)
        )))
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads `response`: an array of URLs, a string holding such an array (or one bare URL), or null.
fn urls(value: Value) -> Option<Vec<String>> {
    match value {
        Value::Array(items) => Some(
            items
                .into_iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
        ),
        Value::String(s) => {
            let trimmed = s.trim();
            if trimmed.is_empty() || trimmed == "null" {
                None
            } else if trimmed.starts_with('[') {
                serde_json::from_str::<Value>(trimmed).ok().and_then(urls)
            } else {
                Some(vec![trimmed.to_owned()])
            }
        }
        _ => None,
    }
}

/// Reads an id sent as a string or as a number.
fn task_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads an integer sent as a number (possibly `10.0`) or as a numeric string.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a non-negative count, tolerantly (see [`integer`]).
fn count(value: &Value) -> Option<u64> {
    integer(value).and_then(|n| u64::try_from(n).ok())
}

/// Why a webhook body could not be read as a task.
///
/// ```
/// use gptimage_types::{WebhookError, parse_webhook};
///
/// assert!(matches!(parse_webhook(b"<html>"), Err(WebhookError::NotJson(_))));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The body is not JSON.
    #[error("the webhook body is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// The body is an error envelope, with no task in it.
    #[error("the webhook body is an error envelope (code {code}) with no task")]
    NoTask {
        /// The envelope's code.
        code: i64,
        /// The envelope's message.
        message: Option<String>,
    },
    /// The body is JSON but not a task, nor an envelope around one.
    #[error("the webhook body is not a task status")]
    NotATask(#[source] serde_json::Error),
}

/// Reads a webhook body: the status envelope (`{"code","data":{…}}`) or its bare `data` object.
///
/// The service does not document the webhook; it is taken to be what `GET /status` returns. It is
/// unsigned and may arrive more than once or not at all, so treat it as a hint and confirm with
/// `GET /status` before acting on it.
///
/// ```
/// use gptimage_types::{TaskStatus, parse_webhook};
///
/// let wrapped = br#"{"code":200,"data":{"task_id":"t1","status":"SUCCESS","response":["https://x/a.png"]}}"#;
/// let bare = br#"{"task_id":"t1","status":"SUCCESS","response":["https://x/a.png"]}"#;
/// assert_eq!(parse_webhook(wrapped)?, parse_webhook(bare)?);
/// assert_eq!(parse_webhook(bare)?.status, TaskStatus::Success);
/// # Ok::<(), gptimage_types::WebhookError>(())
/// ```
pub fn parse_webhook(body: &[u8]) -> Result<TaskInfo, WebhookError> {
    let value: Value = serde_json::from_slice(body).map_err(WebhookError::NotJson)?;
    let is_envelope = value
        .as_object()
        .is_some_and(|o| o.contains_key("code") && o.contains_key("data"));
    if is_envelope {
        let envelope: StatusResponse =
            serde_json::from_value(value).map_err(WebhookError::NotATask)?;
        match envelope.data {
            Some(task) => Ok(task),
            None => Err(WebhookError::NoTask {
                code: envelope.code,
                message: envelope.message,
            }),
        }
    } else {
        let task: TaskInfo = serde_json::from_value(value).map_err(WebhookError::NotATask)?;
        if task.task_id.is_empty() {
            let missing = serde_json::Error::custom("the body has no `task_id`");
            return Err(WebhookError::NotATask(missing));
        }
        Ok(task)
    }
}
