//! A local emulator of the whole GPT Image 1.5 API that makes real images, on loopback.
//!
//! It serves `POST /api/generate` and `GET /api/status` with the documented envelopes and error
//! codes, keys with credit balances, the task lifecycle (`PENDING`, `IN_PROGRESS`, `SUCCESS` or
//! `FAILED`), real PNG images of the requested size, image-to-image edits of fetched inputs,
//! webhooks with retries, fault injection and counters. Every request and response goes through
//! `gptimage-types`, the same crate the clients use.
//!
//! Start one in-process on a free port, as a test does:
//!
//! ```
//! use gptimage_emulator::{Config, Emulator};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let emulator = Emulator::start(Config::instant()).await?;
//! assert!(emulator.base_url().starts_with("http://127.0.0.1:"));
//! assert!(emulator.base_url().ends_with("/api"));
//! assert_eq!(emulator.counters().tasks_created, 0);
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! From synchronous code (a blocking client's test, a command-line tool), [`Emulator::spawn`]
//! runs it on a thread of its own.
//!
//! The binary `gptimage-emulator` serves it from a terminal.
//!
//! # Faults, counters, and the rest
#![doc = include_str!("../README.md")]

mod api;
mod config;
mod openapi;
mod render;
mod server;
mod store;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, DEFAULT_CREDITS, DEFAULT_KEY, Endpoint, Fault, FaultKind, KeyConfig};
pub use store::Counters;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) store: store::Store,
    /// Fetches input images and delivers webhooks.
    pub(crate) http: reqwest::Client,
    /// The OpenAPI document, serialized once.
    pub(crate) openapi: Vec<u8>,
}

/// A running emulator. Dropping it stops the server (as [`shutdown`](Self::shutdown) does, without
/// waiting).
#[derive(Debug)]
pub struct Emulator {
    origin: String,
    base_url: String,
    api_key: String,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Emulator {
    /// Starts an emulator on `127.0.0.1` on a free port, in the current tokio runtime.
    pub async fn start(config: Config) -> io::Result<Self> {
        Self::bind(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts an emulator on `addr` (port 0 picks a free port), in the current tokio runtime.
    pub async fn bind(config: Config, addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let origin = format!("http://{local}");
        let files = if config.separate_file_origin {
            let files = TcpListener::bind(SocketAddr::new(local.ip(), 0)).await?;
            let files_origin = format!("http://{}", files.local_addr()?);
            Some((files, files_origin))
        } else {
            None
        };
        let api_key = config
            .keys
            .first()
            .map(|k| k.key.clone())
            .unwrap_or_default();
        let app = Arc::new(App {
            http: http_client(&config)?,
            store: store::Store::new(config),
            openapi: serde_json::to_vec_pretty(&openapi::document())
                .expect("the OpenAPI document serializes"),
        });
        let (shutdown, watcher) = watch::channel(false);
        let router = api::router(app.clone());
        let mut servers = vec![tokio::spawn(server::serve(
            listener,
            router.clone(),
            watcher.clone(),
        ))];
        match files {
            Some((files, files_origin)) => {
                app.store.set_files_base(files_origin);
                servers.push(tokio::spawn(server::serve(files, router, watcher)));
            }
            None => app.store.set_files_base(origin.clone()),
        }
        Ok(Self {
            base_url: format!("{origin}/api"),
            origin,
            api_key,
            app,
            shutdown,
            servers,
            thread: None,
        })
    }

    /// Starts an emulator on `127.0.0.1` on a free port, on a thread with its own runtime, for
    /// synchronous callers. It stops when the returned handle is dropped.
    ///
    /// ```
    /// use gptimage_emulator::{Config, Emulator};
    ///
    /// let emulator = Emulator::spawn(Config::instant())?;
    /// assert!(emulator.origin().starts_with("http://127.0.0.1:"));
    /// drop(emulator); // stops it and joins its thread
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn(config: Config) -> io::Result<Self> {
        Self::spawn_on(config, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Like [`spawn`](Self::spawn), on a given address.
    pub fn spawn_on(config: Config, addr: SocketAddr) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gptimage-emulator")
            .enable_all()
            .build()?;
        let (ready, started) = std::sync::mpsc::channel();
        let thread = thread::Builder::new()
            .name("gptimage-emulator".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    match Self::bind(config, addr).await {
                        Ok(mut emulator) => {
                            let servers = std::mem::take(&mut emulator.servers);
                            let _ = ready.send(Ok(emulator));
                            for server in servers {
                                let _ = server.await;
                            }
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
            })?;
        let mut emulator = started
            .recv()
            .map_err(|_| io::Error::other("the emulator's thread stopped before it started"))??;
        emulator.thread = Some(thread);
        Ok(emulator)
    }

    /// The base URL of the API, to give a client: `http://127.0.0.1:PORT/api`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The server's origin: `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The origin result images are served from (the server's own, unless configured apart).
    pub fn files_origin(&self) -> &str {
        self.app.store.files_base()
    }

    /// Where input images can be uploaded (`PUT {uploads_url}{sha256}.{png|jpg|webp}` with the
    /// API key) and fetched back, so image-to-image from local files works offline:
    /// `http://127.0.0.1:PORT/uploads/`.
    pub fn uploads_url(&self) -> String {
        format!("{}/uploads/", self.origin)
    }

    /// The first configured key (by default [`DEFAULT_KEY`]).
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The request a task was created with, as the emulator received it, at any point of the
    /// task's life (the API shows it only once the task has ended): for tests that need, say, a
    /// running task's callback URL.
    pub fn task_request(&self, task_id: &str) -> Option<gptimage_types::GenerateRequest> {
        self.app.store.task_request(task_id)
    }

    /// The ids of the tasks made for requests with `prompt` (sorted): for tests that find the
    /// task of a submission whose answer they made the emulator drop.
    pub fn task_ids_for(&self, prompt: &str) -> Vec<String> {
        self.app.store.task_ids_for(prompt)
    }

    /// When a task ended (`SUCCESS` or `FAILED`), on this process's clock: for benchmarks that
    /// measure how late a client notices.
    pub fn task_finished_at(&self, task_id: &str) -> Option<std::time::Instant> {
        self.app.store.task_finished(task_id)
    }

    /// What the emulator has counted so far.
    pub fn counters(&self) -> Counters {
        self.app.store.counters()
    }

    /// Stops accepting connections, closes the open ones, and waits for the server to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for server in std::mem::take(&mut self.servers) {
            let _ = server.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The emulator's own HTTP client: no proxy (it talks to loopback), and redirects followed only
/// to hosts it may reach.
fn http_client(config: &Config) -> io::Result<reqwest::Client> {
    let allow_remote = config.allow_remote_urls;
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if allow_remote || worker::is_loopback(attempt.url()) {
            attempt.follow()
        } else {
            attempt.error("redirected to a host that is not loopback")
        }
    });
    // The emulator needs no TLS of its own, but reqwest's rustls is on in any build beside the
    // SDK (cargo unifies features), where it would look for a process-wide provider and panic.
    // So the emulator turns that rustls on itself and always hands it a configuration on its
    // own provider.
    reqwest::Client::builder()
        .no_proxy()
        .redirect(redirects)
        .user_agent(concat!("gptimage-emulator/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls_config(&config.trusted_roots_pem)?)
        .build()
        .map_err(io::Error::other)
}

/// A rustls configuration on the ring provider trusting only `roots_pem` (none by default): the
/// emulator reaches plain `http` on loopback, and an `https` URL fails with a certificate error
/// unless its certificate chains to one of those roots.
fn tls_config(roots_pem: &[u8]) -> io::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        let cert = cert.map_err(|e| invalid(format!("a trusted root is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("a trusted root is not a usable certificate: {e}")))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}
