//! The API's knowledge, written once and shared by both clients. It does no IO and reads no
//! clock: time, answers and a jitter seed are its inputs.
//!
//! - [`request`]: building each call's `http::Request` (the key only to the API's origin);
//! - [`answer`]: reading what came back, and the one never-pay-twice table that judges it;
//! - [`schedule`]: backoff, `Retry-After`, jitter;
//! - [`machine`]: the operations as state machines (a call with its retries, a wait with its
//!   deadline, a download with its redirects) that a client's one loop drives.

pub(crate) mod answer;
pub(crate) mod machine;
pub(crate) mod pace;
pub(crate) mod request;
pub(crate) mod schedule;

pub(crate) use machine::{CallMachine, DownloadMachine, Machine, Next, WaitMachine};

/// A downloaded result image.
///
/// ```
/// # fn show(image: &gptimage_transport::Image) {
/// println!("{} bytes of {} from {}", image.bytes.len(), image.extension, image.url);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Image {
    /// The URL it came from (the task's, before any redirect).
    pub url: String,
    /// The image file.
    pub bytes: Vec<u8>,
    /// The file extension its bytes show: `png`, `jpg`, `webp` or `gif`.
    pub extension: &'static str,
}

#[cfg(test)]
pub(crate) mod tests;
