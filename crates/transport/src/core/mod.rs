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

#[cfg(feature = "async")]
pub(crate) use machine::TurnMachine;
pub(crate) use machine::{CallMachine, DownloadMachine, Machine, Next, WaitMachine};

use std::time::{Duration, Instant};

/// The farthest a deadline or a pause is set: about 30 years, which every platform's `Instant`
/// can hold. A longer duration (a user's `Duration::MAX`, a server's `Retry-After` of 10^19 s)
/// means "never" for every purpose this crate has.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + duration`, never panicking: a duration longer than [`FAR`] is `FAR` (halved until
/// the clock can hold it, on a platform whose `Instant` cannot).
pub(crate) fn later(now: Instant, duration: Duration) -> Instant {
    let mut duration = duration.min(FAR);
    loop {
        match now.checked_add(duration) {
            Some(at) => return at,
            None if duration.is_zero() => return now,
            None => duration /= 2,
        }
    }
}

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
