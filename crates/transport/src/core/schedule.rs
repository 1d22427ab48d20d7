//! The schedule: how long to wait before another attempt (capped, jittered backoff, or the
//! server's `Retry-After`) and before another poll. Pure functions of their inputs; the jitter is
//! a small generator the driver seeds, so the core reads no randomness and tests are repeatable.

use std::time::Duration;

use gptimage_types::Timestamp;
use http::header::{self, HeaderMap};

use crate::config::RetryPolicy;

/// The delay before retry number `retries_done + 1`: exponential, capped, with "equal jitter"
/// (half fixed, half random), so concurrent clients spread out. `jitter` is in `[0, 1)`.
pub(crate) fn backoff(policy: &RetryPolicy, retries_done: u32, jitter: f64) -> Duration {
    let base = policy.initial_backoff.as_secs_f64() * 2f64.powi(retries_done.min(32) as i32);
    let capped = base.min(policy.max_backoff.as_secs_f64());
    Duration::from_secs_f64(capped * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

/// A small deterministic generator of jitter in `[0, 1)` (xorshift64*), seeded by the driver.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    /// A generator from `seed` (any value; zero is replaced).
    pub(crate) fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next value in `[0, 1)`.
    pub(crate) fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }
}

pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = http_date(value)?;
    let now = http_date(headers.get(header::DATE)?.to_str().ok()?)?;
    let seconds = at.unix_seconds().saturating_sub(now.unix_seconds()).max(0);
    Some(Duration::from_secs(seconds as u64))
}
fn http_date(text: &str) -> Option<Timestamp> {
    let mut parts = text.split_whitespace();
    let _weekday = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u32 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || year > 9999 {
        return None;
    }
    format!("{year:04}-{month:02}-{day:02}T{time}Z")
        .parse()
        .ok()
}
