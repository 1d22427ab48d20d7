//! What the two drive loops share. The loops themselves are in `client.rs` (awaiting) and
//! `blocking.rs` (blocking): each asks a machine what to do, does it, and reports back.

/// A fresh random seed for one operation's jitter, from the standard library's per-process
/// random keys (the core takes randomness as an input, like time).
pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The parts of a client that do not depend on how it does IO: what it holds, its constructors,
/// its configuration, `Debug` and `FromConfig`. Each client module invokes it once, beside its
/// own `Client` struct and drive loop.
macro_rules! client_shell {
    ($transport:ident, $default:ty) => {
        struct Inner {
            config: Config,
            transport: Box<dyn $transport>,
        }

        impl std::fmt::Debug for Client {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Client")
                    .field("config", &self.inner.config)
                    .finish_non_exhaustive()
            }
        }

        impl sealed::Sealed for Client {}

        impl FromConfig for Client {
            fn from_config(config: Config) -> Result<Self> {
                let transport = <$default>::new(&config)?;
                Ok(Self::with_transport(config, transport))
            }
        }

        impl Client {
            /// A builder with every default and no key.
            pub fn builder() -> ClientBuilder<Self> {
                ClientBuilder::new()
            }

            /// A client configured from `GPTIMAGE_API_KEY` and `GPTIMAGE_BASE_URL`.
            pub fn from_env() -> Result<Self> {
                ClientBuilder::from_env().build()
            }

            /// A client over another transport: another HTTP stack, or a function in a test.
            pub fn with_transport(config: Config, transport: impl $transport) -> Self {
                Self {
                    inner: Arc::new(Inner {
                        config,
                        transport: Box::new(transport),
                    }),
                }
            }

            /// The configuration.
            pub fn config(&self) -> &Config {
                &self.inner.config
            }
        }
    };
}
pub(crate) use client_shell;

/// The span of one HTTP exchange.
#[cfg(feature = "tracing")]
pub(crate) fn span(op: crate::core::request::Op) -> tracing::Span {
    tracing::debug_span!("gptimage.request", op = ?op)
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_vary() {
        let seeds: Vec<u64> = (0..16).map(|_| super::seed()).collect();
        assert!(seeds.windows(2).any(|w| w[0] != w[1]));
    }
}
