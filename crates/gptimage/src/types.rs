//! The rest of the API's vocabulary, beside the request and status types at the crate root:
//! the response envelopes, webhook bodies, timestamps, the API key, the validation details, and
//! the one redaction every shown string passes through.
//! Each item has one path: what the root re-exports is not repeated here.

pub use gptimage_types::{
    ApiKey, CREDITS_PER_TASK, Envelope, GenerateResponse, InvalidApiKey, InvalidTimestamp,
    MAX_PROMPT_CHARS, StatusResponse, Timestamp, UrlProblem, WebhookError, check_url,
    parse_webhook, redact, redact_with,
};
