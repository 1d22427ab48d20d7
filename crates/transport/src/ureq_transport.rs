//! The blocking transport on ureq 3: no redirects, no retries, limits enforced while reading.

use std::io;

use ureq::RequestExt;

use crate::config::Config;
use crate::error::{Error, RequestSent, Result, TransportError, TransportErrorKind};
use crate::transport::{BlockingTransport, HttpRequest, HttpResponse, SendOptions};

/// A [`BlockingTransport`] on a shared `ureq::Agent` (connection pool, TLS, proxy).
///
/// ```
/// # #[cfg(feature = "blocking")] {
/// use gptimage_transport::blocking;
/// use gptimage_transport::transport::UreqTransport;
///
/// let config = blocking::Client::builder().api_key("sk-example").config()?;
/// let transport = UreqTransport::new(&config)?;
/// let client = blocking::Client::with_transport(config, transport);
/// # let _ = client;
/// # }
/// # Ok::<(), gptimage_transport::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct UreqTransport {
    agent: ureq::Agent,
    /// The agent's own overall timeout; a request with another one gets a per-request config
    /// (which costs a copy of the agent's configuration, so it is avoided when possible).
    timeout: Option<std::time::Duration>,
}

impl UreqTransport {
    /// A transport with the configuration's connect timeout and proxy, following no redirects,
    /// and the build's TLS, the same as the async client's (see the crate's features).
    pub fn new(config: &Config) -> Result<Self> {
        let proxy = match config.proxy() {
            Some(url) => Some(
                ureq::Proxy::new(url)
                    .map_err(|e| Error::config(format!("the proxy URL is not usable: {e}")))?,
            ),
            None => None,
        };
        let builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout()))
            .timeout_global(Some(config.request_timeout()))
            .proxy(proxy);
        // The same TLS as the async client: the platform's roots (never ureq's bundled list),
        // through the same rustls provider, or through the platform's library.
        #[cfg(feature = "_rustls")]
        let builder = builder.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .unversioned_rustls_crypto_provider(crate::tls::provider()?)
                .build(),
        );
        #[cfg(all(feature = "native-tls", not(feature = "_rustls")))]
        let builder = builder.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::NativeTls)
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        );
        Ok(Self {
            agent: builder.build().into(),
            timeout: Some(config.request_timeout()),
        })
    }

    /// **Escape hatch:** a transport over a `ureq::Agent` the caller configured. Its signature
    /// names ureq's own type, so it follows ureq's major version (3 today) and changes when this
    /// crate moves to a newer ureq; everything else in this crate's API stays the same across
    /// such a move. The agent must not follow redirects and must not turn HTTP statuses into
    /// errors (`max_redirects(0)`, `http_status_as_error(false)`).
    pub fn from_ureq_agent(agent: ureq::Agent) -> Self {
        let timeout = agent.config().timeouts().global;
        Self { agent, timeout }
    }
}

impl BlockingTransport for UreqTransport {
    fn send(
        &self,
        request: HttpRequest,
        options: SendOptions,
    ) -> std::result::Result<HttpResponse, TransportError> {
        let response = if request.body().is_empty() {
            // An empty body is sent as none at all: ureq then writes the request in one go.
            self.run(request.map(|_| ()), options.timeout)
        } else {
            self.run(request, options.timeout)
        }
        .map_err(classify)?;
        let (parts, mut body) = response.into_parts();
        let bytes = body
            .with_config()
            .limit(options.max_body_bytes)
            .read_to_vec()
            .map_err(classify)?;
        Ok(http::Response::from_parts(parts, bytes))
    }
}

impl UreqTransport {
    fn run(
        &self,
        request: http::Request<impl ureq::AsSendBody>,
        timeout: std::time::Duration,
    ) -> std::result::Result<http::Response<ureq::Body>, ureq::Error> {
        if self.timeout == Some(timeout) {
            self.agent.run(request)
        } else {
            request
                .with_agent(&self.agent)
                .configure()
                .timeout_global(Some(timeout))
                .build()
                .run()
        }
    }
}

/// Sorts a ureq error by whether the request can have reached the server.
fn classify(error: ureq::Error) -> TransportError {
    use ureq::Error as E;
    use ureq::Timeout as T;
    let (kind, sent) = match &error {
        E::HostNotFound | E::ConnectionFailed | E::ConnectProxyFailed(_) => {
            (TransportErrorKind::Connect, RequestSent::No)
        }
        E::Timeout(T::Resolve | T::Connect) => (TransportErrorKind::Connect, RequestSent::No),
        E::Timeout(_) => (TransportErrorKind::Timeout, RequestSent::Maybe),
        E::BodyExceedsLimit(_) => (TransportErrorKind::BodyTooLarge, RequestSent::Maybe),
        E::Tls(_) | E::TlsRequired => (TransportErrorKind::Tls, RequestSent::No),
        E::BadUri(_) | E::Http(_) | E::InvalidProxyUrl => {
            (TransportErrorKind::Other, RequestSent::No)
        }
        E::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable => (TransportErrorKind::Connect, RequestSent::No),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                (TransportErrorKind::Timeout, RequestSent::Maybe)
            }
            _ => (TransportErrorKind::Reset, RequestSent::Maybe),
        },
        _ => (TransportErrorKind::Other, RequestSent::Maybe),
    };
    TransportError::new(kind, sent, error)
}
