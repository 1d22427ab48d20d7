//! The async transport on reqwest: no redirects, no retries, limits enforced while reading.

use crate::config::Config;
use crate::core::request::ParsedUrl;
use crate::error::{Error, RequestSent, Result, TransportError, TransportErrorKind};
use crate::transport::{AsyncTransport, HttpRequest, HttpResponse, SendOptions};

/// An [`AsyncTransport`] on a shared `reqwest::Client` (connection pool, TLS, proxy).
///
/// ```
/// # #[cfg(feature = "async")] {
/// use gptimage_transport::Client;
/// use gptimage_transport::transport::ReqwestTransport;
///
/// let config = Client::builder().api_key("sk-example").config()?;
/// let transport = ReqwestTransport::new(&config)?;
/// let client = Client::with_transport(config, transport);
/// # let _ = client;
/// # }
/// # Ok::<(), gptimage_transport::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A transport with the configuration's connect timeout and proxy, following no redirects,
    /// and the build's TLS: rustls on the chosen provider with the platform's verifier, or the
    /// platform's TLS library (see the crate's features).
    pub fn new(config: &Config) -> Result<Self> {
        let builder = stack(config)?.tcp_nodelay(true);
        let client = builder
            .build()
            .map_err(|e| Error::config(format!("the HTTP client could not be built: {e}")))?;
        Ok(Self { client })
    }

    /// **Escape hatch:** a transport over a `reqwest::Client` the caller configured. Its
    /// signature names reqwest's own type, so it follows reqwest's major version (0.13 today)
    /// and changes when this crate moves to a newer reqwest; everything else in this crate's API
    /// stays the same across such a move. The client must not follow redirects (build it with
    /// `redirect::Policy::none()`), or the key could leave the API's origin.
    pub fn from_reqwest_client(client: reqwest::Client) -> Self {
        Self { client }
    }
}

/// The HTTP stack a configuration describes: its connect timeout, its proxy (and no other), no
/// redirect followed (the core follows a download's itself, without the key; a store's
/// endpoint that redirected would otherwise take its signing headers and session token to
/// another host), and the build's TLS: rustls on the chosen provider with the platform's
/// verifier, or the platform's TLS library. Shared by the transport and the image hosts.
pub(crate) fn stack(config: &Config) -> Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    // Data the peer has not acknowledged within the request timeout is given up, with the
    // connection: a submission written before a partition can never arrive after the time its
    // caller was promised (`Client::submit_fenced`), however long the partition lasts.
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    {
        builder = builder.tcp_user_timeout(config.request_timeout());
    }
    #[cfg(feature = "_rustls")]
    {
        builder =
            builder.tls_backend_preconfigured(crate::tls::client_config(crate::tls::provider()?)?);
    }
    #[cfg(all(feature = "native-tls", not(feature = "_rustls")))]
    {
        builder = builder.tls_backend_native();
    }
    if let Some(proxy) = config.proxy() {
        let proxy = reqwest::Proxy::all(proxy)
            .map_err(|e| Error::config(format!("the proxy URL is not usable: {e}")))?;
        builder = builder.proxy(proxy);
    }
    Ok(builder)
}

#[async_trait::async_trait]
impl AsyncTransport for ReqwestTransport {
    async fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> std::result::Result<HttpResponse, TransportError> {
        let mut request = to_reqwest(request)?;
        *request.timeout_mut() = Some(options.timeout);
        let mut response = self.client.execute(request).await.map_err(classify)?;
        let too_large = || {
            TransportError::new(
                TransportErrorKind::BodyTooLarge,
                RequestSent::Maybe,
                format!("the body is larger than {} bytes", options.max_body_bytes),
            )
        };
        let announced = response.content_length().unwrap_or(0);
        if announced > options.max_body_bytes {
            return Err(too_large());
        }
        // Sized once from the announced length (already checked against the limit); a body
        // of a single chunk is taken as it is, without a copy.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if (body.len() + chunk.len()) as u64 > options.max_body_bytes {
                return Err(too_large());
            }
            if body.is_empty() && announced == chunk.len() as u64 {
                body = Vec::from(chunk);
            } else {
                body.reserve(
                    usize::try_from(announced)
                        .unwrap_or(0)
                        .saturating_sub(body.len()),
                );
                body.extend_from_slice(&chunk);
            }
        }
        let mut answer = http::Response::new(body);
        *answer.status_mut() = response.status();
        *answer.version_mut() = response.version();
        *answer.headers_mut() = std::mem::take(response.headers_mut());
        Ok(answer)
    }
}

/// The reqwest request of `request`, reusing the URL the core parsed when it rides along.
fn to_reqwest(request: HttpRequest) -> std::result::Result<reqwest::Request, TransportError> {
    let (mut parts, body) = request.into_parts();
    let url = match ParsedUrl::take(&mut parts) {
        Some(url) => url,
        None => url::Url::parse(&parts.uri.to_string())
            .map_err(|e| TransportError::new(TransportErrorKind::Other, RequestSent::No, e))?,
    };
    let mut converted = reqwest::Request::new(parts.method, url);
    *converted.headers_mut() = parts.headers;
    *converted.version_mut() = parts.version;
    *converted.body_mut() = Some(body.into());
    Ok(converted)
}

/// Sorts a reqwest error by whether the request can have reached the server.
fn classify(error: reqwest::Error) -> TransportError {
    let (kind, sent) = if error.is_connect() {
        (TransportErrorKind::Connect, RequestSent::No)
    } else if error.is_timeout() {
        (TransportErrorKind::Timeout, RequestSent::Maybe)
    } else if error.is_builder() {
        (TransportErrorKind::Other, RequestSent::No)
    } else if error.is_body() || error.is_request() || error.is_decode() {
        (TransportErrorKind::Reset, RequestSent::Maybe)
    } else {
        (TransportErrorKind::Other, RequestSent::Maybe)
    };
    TransportError::new(kind, sent, error)
}
