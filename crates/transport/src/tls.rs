//! TLS for both clients: one rustls crypto provider and the platform's roots (or the platform's
//! TLS library and its roots); the library never installs a process-wide default.
//!
//! Which TLS a build has is decided by features, which are additive: with rustls and native-tls
//! both on, both clients use rustls; with both the ring and the aws-lc-rs provider compiled in,
//! aws-lc-rs (the explicit opt-in) is used. A provider the application installed as the process
//! default is always preferred, so an application that chose one (for FIPS, say) gets it here too.

/// Whether this build can make TLS connections at all.
pub(crate) const AVAILABLE: bool = cfg!(any(feature = "_rustls", feature = "native-tls"));

/// What to do about a build without TLS, for messages.
pub(crate) const MISSING: &str = "this build of gptimage has no TLS: enable the `rustls` feature \
     (a default one), `rustls-aws-lc-rs`, `rustls-no-provider` or `native-tls` (an http:// base \
     URL on loopback, like the emulator's, needs none)";

#[cfg(feature = "_rustls")]
pub(crate) use rustls_tls::*;

#[cfg(feature = "_rustls")]
mod rustls_tls {
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;

    use crate::error::{Error, Result};

    /// The crypto provider both clients use: the application's process default if it installed
    /// one, else the one the features compiled in. Never installed as the process default.
    pub(crate) fn provider() -> Result<Arc<CryptoProvider>> {
        if let Some(installed) = CryptoProvider::get_default() {
            return Ok(Arc::clone(installed));
        }
        built_in().ok_or_else(|| {
            Error::config(
                "gptimage was built with `rustls-no-provider` and no rustls crypto provider is \
                 installed: call `rustls::crypto::CryptoProvider::install_default` before building \
                 a client, or enable the `rustls` (ring) or `rustls-aws-lc-rs` feature",
            )
        })
    }

    /// The provider the features compiled in, if any.
    fn built_in() -> Option<Arc<CryptoProvider>> {
        #[cfg(feature = "rustls-aws-lc-rs")]
        return Some(Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        #[cfg(all(feature = "rustls", not(feature = "rustls-aws-lc-rs")))]
        return Some(Arc::new(rustls::crypto::ring::default_provider()));
        #[allow(unreachable_code)]
        None
    }

    /// The rustls configuration of the async client: `provider`, the platform's verifier (the
    /// same roots as the blocking client's), HTTP/1.1.
    #[cfg(feature = "async")]
    pub(crate) fn client_config(provider: Arc<CryptoProvider>) -> Result<rustls::ClientConfig> {
        let unusable = |e: rustls::Error| Error::config(format!("TLS could not be set up: {e}"));
        let verifier =
            rustls_platform_verifier::Verifier::new(Arc::clone(&provider)).map_err(unusable)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(unusable)?
            .dangerous() // not dangerous: the platform's verifier checks everything
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "_rustls")]
    #[test]
    fn the_provider_is_the_one_the_features_chose_and_is_not_installed() {
        let provider = super::provider();
        #[cfg(any(feature = "rustls", feature = "rustls-aws-lc-rs"))]
        assert!(provider.is_ok());
        #[cfg(not(any(feature = "rustls", feature = "rustls-aws-lc-rs")))]
        assert!(
            provider
                .unwrap_err()
                .to_string()
                .contains("install_default")
        );
        assert!(
            rustls::crypto::CryptoProvider::get_default().is_none(),
            "the library installed a process-wide default"
        );
    }
}
