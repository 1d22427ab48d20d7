//! The transports: how a client does one HTTP exchange. The traits speak plain `http` types, so
//! another HTTP stack, or a function in a test, can stand in for the built-in reqwest and ureq
//! transports; a transport never retries and never follows a redirect (the clients decide both).

use std::future::Future;
use std::time::Duration;

pub use crate::error::{RequestSent, TransportError, TransportErrorKind};
#[cfg(feature = "async")]
pub use crate::reqwest_transport::ReqwestTransport;
#[cfg(feature = "blocking")]
pub use crate::ureq_transport::UreqTransport;

/// A request as the clients hand it to a transport.
pub type HttpRequest = http::Request<Vec<u8>>;

/// A response as a transport hands it back, with its whole body.
pub type HttpResponse = http::Response<Vec<u8>>;

/// Limits of one exchange, which a transport must enforce.
///
/// ```
/// use std::time::Duration;
/// use gptimage_transport::transport::SendOptions;
///
/// let options = SendOptions::new(Duration::from_secs(30), 4 * 1024 * 1024);
/// assert_eq!(options.max_body_bytes, 4 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// The whole exchange, from sending to the last byte of the body, must fit in this time.
    pub timeout: Duration,
    /// A body larger than this is a [`TransportErrorKind::BodyTooLarge`] error.
    ///
    /// [`TransportErrorKind::BodyTooLarge`]: crate::transport::TransportErrorKind::BodyTooLarge
    pub max_body_bytes: u64,
}

impl SendOptions {
    /// Limits for one exchange.
    pub fn new(timeout: Duration, max_body_bytes: u64) -> Self {
        Self {
            timeout,
            max_body_bytes,
        }
    }
}

/// Sends one HTTP request asynchronously and returns the response with its whole body.
///
/// An implementation must not follow redirects (the clients decide, so the key never leaves the
/// API's origin), must not retry (the clients decide, so a task is never paid for twice), must
/// enforce [`SendOptions`], and must report whether a failed request may have reached the server
/// ([`RequestSent`](RequestSent)). Any non-2xx status is a response, not an error.
///
/// The crate implements it on reqwest (`ReqwestTransport`, feature `async`), and for any
/// function from a request and its limits to a future of a response, so a test can pass a
/// closure (which receives the same [`SendOptions`] as a real transport, and should keep them):
///
/// ```
/// use gptimage_transport::transport::{AsyncTransport, HttpRequest, HttpResponse, SendOptions, TransportError};
///
/// let canned = |_request: HttpRequest, _options: SendOptions| async {
///     Ok::<_, TransportError>(HttpResponse::new(br#"{"code":200,"data":null}"#.to_vec()))
/// };
/// fn takes(_: impl AsyncTransport) {}
/// takes(canned);
/// ```
#[async_trait::async_trait]
pub trait AsyncTransport: Send + Sync + 'static {
    /// Sends `request` within `options`.
    async fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> Result<HttpResponse, TransportError>;
}

#[async_trait::async_trait]
impl<F, Fut> AsyncTransport for F
where
    F: Fn(HttpRequest, SendOptions) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<HttpResponse, TransportError>> + Send,
{
    async fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> Result<HttpResponse, TransportError> {
        self(request, options).await
    }
}

/// Sends one HTTP request, blocking the calling thread, and returns the response with its whole
/// body. The same rules as [`AsyncTransport`] apply.
///
/// The crate implements it on ureq (`UreqTransport`, feature `blocking`), and for any function
/// from a request and its options to a response:
///
/// ```
/// use gptimage_transport::transport::{BlockingTransport, HttpRequest, HttpResponse, SendOptions, TransportError};
///
/// let canned = |_request: HttpRequest, _options: SendOptions| {
///     Ok::<_, TransportError>(HttpResponse::new(Vec::new()))
/// };
/// fn takes(_: impl BlockingTransport) {}
/// takes(canned);
/// ```
pub trait BlockingTransport: Send + Sync + 'static {
    /// Sends `request` within `options`.
    fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> Result<HttpResponse, TransportError>;
}

impl<F> BlockingTransport for F
where
    F: Fn(HttpRequest, SendOptions) -> Result<HttpResponse, TransportError> + Send + Sync + 'static,
{
    fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> Result<HttpResponse, TransportError> {
        self(request, options)
    }
}
