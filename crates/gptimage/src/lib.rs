//! The Rust SDK for the GPT Image 1.5 API: submit a generation, wait for it, download the images,
//! from async or blocking code, without ever paying twice by accident.
//!
//! This crate only re-exports: the API's types from [`gptimage-types`](gptimage_types) and the
//! clients from [`gptimage-transport`](gptimage_transport). A crate that wants only the types
//! depends on `gptimage-types` alone.
//!
//! ```no_run
//! # #[cfg(feature = "async")]
//! # async fn run() -> Result<(), gptimage::Error> {
//! use gptimage::{Client, GenerateRequest, Quality, Size};
//!
//! let client = Client::from_env()?; // GPTIMAGE_API_KEY, and GPTIMAGE_BASE_URL if set
//! let request = GenerateRequest::text_to_image("a lighthouse at dawn, oil painting")
//!     .size(Size::Landscape)
//!     .quality(Quality::High)
//!     .build()?; // checked here: nothing invalid is ever sent
//! let task = client.generate(&request).await?; // submit, then poll until it ends
//! let files = client.download_to_dir(&task, "out").await?;
//! println!("saved {files:?}");
//! # Ok(())
//! # }
//! ```
//!
//! The same from synchronous code, with the `blocking` feature:
//!
//! ```no_run
//! # #[cfg(feature = "blocking")]
//! # fn run() -> Result<(), gptimage::Error> {
//! use gptimage::{GenerateRequest, blocking::Client};
//!
//! let client = Client::from_env()?;
//! let task = client.generate(&GenerateRequest::text_to_image("a red fox").build()?)?;
//! client.download_to_dir(&task, "out")?;
//! # Ok(())
//! # }
//! ```
//!
//! # Cargo features
//!
//! | feature | default | what it gives |
//! |---|---|---|
//! | `async` | yes | [`Client`], on reqwest and tokio |
//! | `blocking` | no | [`blocking::Client`], on ureq; builds no tokio or reqwest |
//! | `rustls` | yes | TLS through rustls on the *ring* provider (needs only a C compiler) |
//! | `rustls-aws-lc-rs` | no | rustls on aws-lc-rs instead (turn `default-features` off) |
//! | `rustls-no-provider` | no | rustls on the provider your application installs as the process default |
//! | `native-tls` | no | TLS through the platform's library instead (turn `default-features` off) |
//! | `native-tls-vendored` | no | `native-tls` with OpenSSL built from source and linked statically |
//! | `tracing` | no | `tracing` spans for each request and wait; the key is never recorded |
//! | `axum` | no | `webhook::Receiver::axum_router`, the webhook receiver as an axum router |
//! | `object-store` | no | `hosting::ObjectStoreHost`: local input images put in S3, Google Cloud Storage or Azure Blob, passed as signed URLs |
//! | `test-util` | no | `test_util::Scripted`, a scripted transport for your tests (no network, no JSON by hand) |
//! | `listener` | no | `webhook::Receiver::listen`, a built-in webhook listener (HTTP/1.1 or HTTPS) on a thread of its own |
//!
//! Whatever the TLS feature, both clients use the same TLS and trust the same roots: the
//! platform's (the system store, `SSL_CERT_FILE` on Linux), never a bundled list. The library
//! never installs a process-wide rustls provider, and uses the one your application installed if
//! there is one. A build without TLS refuses an `https` base URL when the client is built.
//!
//! One consequence of sharing the provider: with the `async` and a rustls feature, cargo turns on
//! reqwest's provider-less rustls in your whole build. Another crate of your program that builds
//! a `reqwest::Client` without any TLS feature of its own then needs a provider: install one as
//! the process default, or give that client a configuration (the emulator does the latter).
//!
//! A blocking-only build: `gptimage = { version = "0.1", default-features = false, features =
//! ["blocking", "rustls"] }`.
//!
//! # Errors
//!
//! Every call returns [`Error`]; match on [`Error::kind`]. The one to know:
//! [`ErrorKind::OutcomeUnknown`] means a submission was sent but its answer was lost, so a task
//! may exist and be charged: the client never resubmits it by itself, and neither should you
//! without checking.
// The README's examples run as doctests, so it cannot drift from the API.
#![cfg_attr(doctest, doc = include_str!("../README.md"))]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The request and status types: what every program names.
pub use gptimage_types::{
    ApiCode, CreatedTask, GenerateRequest, GenerateRequestBuilder, InputFidelity, Quality,
    RawGenerateRequest, Size, TaskInfo, TaskStatus, ValidationError,
};

// The clients, their configuration and their one error type.
pub use gptimage_transport::{
    API_KEY_ENV, BASE_URL_ENV, CallOptions, ClientBuilder, Config, DEFAULT_BASE_URL, Error,
    ErrorKind, FromConfig, Image, ManyEvent, Pacing, PollSchedule, Progress, Rate, Result,
    RetryPolicy, Stopper, Submission,
};

#[cfg(feature = "async")]
pub use gptimage_transport::{Client, ManyTasks, TaskWatch, Turn};

// The task tracker for services.
#[cfg(feature = "async")]
pub use gptimage_transport::{Ended, TaskUpdates, Tracker, TrackerBuilder};

/// The blocking client (feature `blocking`).
#[cfg(feature = "blocking")]
pub use gptimage_transport::blocking;

/// The transports: the traits to plug in another HTTP stack, and the built-in ones.
pub use gptimage_transport::transport;

/// Webhooks: receive the service's callbacks and end waits on them.
pub use gptimage_transport::webhook;

/// Input images from local files: checked, put on a host, handed to the service as URLs.
#[cfg(feature = "async")]
pub use gptimage_transport::hosting;

/// A scripted transport for the tests of code that uses a client (feature `test-util`).
#[cfg(feature = "test-util")]
pub use gptimage_transport::test_util;

/// The rest of the API's vocabulary: envelopes, webhooks, timestamps, keys.
pub mod types;
