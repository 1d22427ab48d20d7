//! Models and validation rules of the GPT Image 1.5 API: pure data, serde only, no IO.
//!
//! This crate is the part of `gptimage` that knows what the API's messages look like. It sends
//! nothing, reads no clock and opens no file, so a server, a queue worker or a test can use it
//! alone. The HTTP clients live in `gptimage-transport`; the facade `gptimage` re-exports both.
//!
//! # Requests: valid by construction
//!
//! A [`GenerateRequest`] can only be obtained through validation, so a request that exists obeys
//! every documented rule (prompt not blank and at most 2000 characters, sizes and qualities from the
//! documented sets, `input_fidelity` only with images, absolute `http(s)` URLs). It serializes to
//! exactly the documented JSON.
//!
//! ```
//! use gptimage_types::{GenerateRequest, Quality, Size};
//!
//! let request = GenerateRequest::text_to_image("A serene mountain landscape")
//!     .size(Size::Landscape)
//!     .quality(Quality::High)
//!     .build()?;
//! assert_eq!(
//!     serde_json::to_string(&request)?,
//!     r#"{"prompt":"A serene mountain landscape","size":"1536*1024","quality":"high"}"#
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Friendly spellings parse, the documented form is always sent:
//!
//! ```
//! use gptimage_types::{Quality, Size};
//!
//! assert_eq!("1536x1024".parse::<Size>()?, Size::Landscape);
//! assert_eq!("portrait".parse::<Size>()?.as_str(), "1024*1536");
//! assert_eq!("HIGH".parse::<Quality>()?, Quality::High);
//! # Ok::<(), gptimage_types::ValidationError>(())
//! ```
//!
//! # Responses: tolerant of the real service
//!
//! The service describes its status document in several shapes (status as a string in any case or
//! as `0`/`1`/`-1`, `response` as an array or as a string holding one, `consumed_credit` or
//! `consumed_credits`, two date formats). [`TaskInfo`] accepts all of them as the same thing and
//! serializes the documented form.
//!
//! ```
//! use gptimage_types::{StatusResponse, TaskStatus};
//!
//! let body = r#"{"code":200,"data":{"task_id":"t1","status":1,
//!                "response":"[\"https://cdn.example.com/a.png\"]","consumed_credit":10}}"#;
//! let envelope: StatusResponse = serde_json::from_str(body)?;
//! let task = envelope.data.expect("a task");
//! assert_eq!(task.status, TaskStatus::Success);
//! assert_eq!(task.images(), ["https://cdn.example.com/a.png"]);
//! assert_eq!(task.consumed_credits, Some(10));
//! # Ok::<(), serde_json::Error>(())
//! ```
// The README's examples run as doctests, so it cannot drift from the API.
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod key;
mod redact;
mod request;
mod response;
mod time;
mod validate;

pub use key::{ApiKey, InvalidApiKey};
pub use redact::{redact, redact_with};
pub use request::{
    GenerateRequest, GenerateRequestBuilder, InputFidelity, Quality, RawGenerateRequest, Size,
};
pub use response::{
    ApiCode, CreatedTask, Envelope, GenerateResponse, StatusResponse, TaskInfo, TaskStatus,
    WebhookError, parse_webhook,
};
pub use time::{InvalidTimestamp, Timestamp};
pub use validate::{MAX_PROMPT_CHARS, UrlProblem, ValidationError, check_url};

/// Credits charged by the service for one generation, text-to-image or image-to-image.
///
/// ```
/// assert_eq!(gptimage_types::CREDITS_PER_TASK, 10);
/// ```
pub const CREDITS_PER_TASK: u64 = 10;
