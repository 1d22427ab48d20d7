//! The schedule: how long to wait before another attempt (capped, jittered backoff, or the
//! server's `Retry-After`) and before another poll. Pure functions of their inputs; the jitter is
//! a small generator the driver seeds, so the core reads no randomness and tests are repeatable.

use std::time::Duration;

use http::header::{self, HeaderMap};

use crate::config::RetryPolicy;

/// The delay before retry number `retries_done + 1`: exponential, capped, with "equal jitter"
/// (half fixed, half random), so concurrent clients spread out. `jitter` is in `[0, 1)`.
pub(crate) fn backoff(policy: &RetryPolicy, retries_done: u32, jitter: f64) -> Duration {
    let base = policy.initial_backoff.as_secs_f64() * 2f64.powi(retries_done.min(32) as i32);
    let capped = base.min(policy.max_backoff.as_secs_f64());
    // A policy's durations may be anything, `Duration::MAX` included: never a panic.
    Duration::try_from_secs_f64(capped * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
        .unwrap_or(policy.max_backoff)
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

/// How long the server asked to be left alone: `Retry-After` in seconds, or as a date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // A date, in any of the three forms RFC 9110 §5.6.7 has recipients accept (IMF-fixdate,
    // RFC 850, asctime), measured against the server's own `Date`: no clock is read, and the two
    // machines' clocks need not agree.
    let at = httpdate::parse_http_date(value).ok()?;
    let now = httpdate::parse_http_date(headers.get(header::DATE)?.to_str().ok()?.trim()).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}
