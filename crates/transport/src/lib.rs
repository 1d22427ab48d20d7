//! HTTP clients of the GPT Image 1.5 API: an async [`Client`] on reqwest and a
//! [`blocking::Client`] on ureq, driven by one shared core.
//!
//! # Design
//!
//! The API's knowledge lives once, in a core that does no IO and reads no clock: it builds each
//! request (URL under the base, headers, JSON body), turns a raw response into a typed result or
//! a typed [`Error`], and decides what happens next (retry after how long, poll after how long,
//! give up). Time, attempt numbers, jitter and the server's `Retry-After` are its inputs, so it
//! is tested table by table without sleeping. Each client is a short loop around it over a
//! transport: [`AsyncTransport`](transport::AsyncTransport) or
//! [`BlockingTransport`](transport::BlockingTransport), one HTTP exchange each in plain `http`
//! types, so another HTTP stack, or a function in a test, can stand in for reqwest or ureq.
//!
//! # The rules it keeps
//!
//! - **Never pay twice.** `POST /generate` is retried only when no task can have been created: a
//!   connection that failed before the request was sent, a 429, or an error in the API's own
//!   envelope. After a timeout or a reset once the request was sent, or a gateway's non-API 502 or
//!   504, it returns [`ErrorKind::OutcomeUnknown`]: a task may exist; check before resubmitting.
//!   Status requests and downloads are retried freely on timeouts, resets, 429 and 5xx.
//! - **Bounded.** Connect and request timeouts, a retry budget with capped jittered backoff,
//!   `Retry-After` honoured up to 120 s, a wait deadline: nothing waits without a bound.
//! - **The key stays home.** It is sent only to the API's origin; never with downloads, never
//!   along a redirect, never over plain `http` to a host that is not loopback (unless allowed),
//!   and never in a `Debug`, `Display` or error.
//! - **Nothing the server sends can panic the client.** Bodies are read with a size limit; the
//!   envelope's `code` is authoritative when the body is the envelope.
//!
//! # Features
//!
//! - `async` (default): [`Client`], on reqwest and tokio.
//! - `blocking`: [`blocking::Client`], on ureq; builds no tokio or reqwest.
//! - TLS, one of (both clients always use the same TLS and trust the same roots, the platform's;
//!   the library never installs a process-wide rustls provider):
//!   - `rustls` (default): rustls on the *ring* provider (needs only a C compiler);
//!   - `rustls-aws-lc-rs`: rustls on aws-lc-rs instead (turn the defaults off);
//!   - `rustls-no-provider`: rustls on the provider the application installs as the process
//!     default before building a client;
//!   - `native-tls`: the platform's library (OpenSSL on Linux); `native-tls-vendored` builds
//!     OpenSSL from source and links it statically.
//!
//!   A build with none refuses an `https` base URL when the client is built, naming the features.
//! - `tracing`: `tracing` spans for each request and wait; the key is never recorded.
//! - `axum`: `webhook::Receiver::axum_router`, the webhook receiver as an axum router.
//! - `test-util`: `test_util::Scripted`, a scripted transport for the tests of code that uses a
//!   client: no network, no JSON written by hand, every request recorded.
//! - `listener`: `webhook::Receiver::listen`, a built-in webhook listener for programs with no
//!   server: hyper 1's HTTP/1.1 (HTTPS through rustls) on a one-thread tokio runtime of its own,
//!   so the blocking client can use it too (it brings tokio and hyper, not reqwest).
//!
//! ```no_run
//! # #[cfg(feature = "async")]
//! # async fn run() -> Result<(), gptimage_transport::Error> {
//! use gptimage_transport::Client;
//! use gptimage_types::GenerateRequest;
//!
//! let client = Client::builder().api_key("sk-...").build()?;
//! let task = client.generate(&GenerateRequest::text_to_image("a red fox").build()?).await?;
//! client.download_to_dir(&task, ".").await?;
//! # Ok(())
//! # }
//! ```
// The README's examples run as doctests, so it cannot drift from the API.
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
// Without a client feature nothing drives the core: a types-and-traits build.
#[cfg_attr(
    not(any(feature = "async", feature = "blocking")),
    allow(dead_code, unused_imports)
)]
mod core;
#[cfg_attr(
    not(any(feature = "async", feature = "blocking")),
    allow(dead_code, unused_imports, unused_macros)
)]
mod drive;
mod error;
#[cfg_attr(not(any(feature = "async", feature = "blocking")), allow(dead_code))]
mod files;
#[cfg(feature = "async")]
pub mod hosting;
mod progress;
#[cfg(feature = "test-util")]
pub mod test_util;
mod tls;
pub mod transport;
pub mod webhook;

#[cfg(feature = "async")]
mod client;
#[cfg(feature = "async")]
mod reqwest_transport;
#[cfg(feature = "async")]
mod tracker;
#[cfg(feature = "blocking")]
mod ureq_transport;

/// The blocking client, for synchronous programs (feature `blocking`).
#[cfg(feature = "blocking")]
pub mod blocking;

#[cfg(feature = "async")]
pub use client::Client;
#[cfg(feature = "async")]
pub use client::{ManyTasks, TaskWatch, Turn};
pub use config::{
    API_KEY_ENV, BASE_URL_ENV, CallOptions, ClientBuilder, Config, DEFAULT_BASE_URL, FromConfig,
    PollSchedule, Rate, RetryPolicy,
};
pub use core::Image;
pub use core::pace::Pacing;
pub use error::{Error, ErrorKind, Result};
pub use progress::{ManyEvent, Progress, Stopper, Submission};
#[cfg(feature = "async")]
pub use tracker::{Ended, TaskUpdates, Tracker, TrackerBuilder};
