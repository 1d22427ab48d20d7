//! The built-in webhook listener (feature `listener`): hyper 1's HTTP/1.1 server, plain or over
//! rustls, on a one-thread tokio runtime of its own, in front of [`Receiver::handle`].
//!
//! It is built to face the internet. Each connection is a task, not a thread, and every phase of
//! it is bounded: the TLS handshake and each request head must arrive within the read timeout
//! (which also ends idle keep-alive connections), the head is at most 16 KiB, the body at most
//! [`MAX_CALLBACK_BYTES`] and read within the read timeout. When the connection table is full,
//! a new connection evicts the one that has waited longest for its current request, so a crowd
//! of slow clients (slow loris) cannot keep a genuine callback out: a sender that sends its
//! request at once is always served. A flood of forged callbacks costs a map lookup each.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use super::{MAX_CALLBACK_BYTES, Receiver, answer};
use crate::error::{Error, Result};

/// The largest request head (request line and headers) accepted; larger ones get `431`.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a stopping listener lets its connections finish the request they are answering.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Bytes of a first request read before hyper takes the connection, when its head has not
/// ended by then.
const GATE_BYTES: usize = 2048;
/// Connections the kernel may queue before they are accepted.
const BACKLOG: u32 = 1024;
/// How long the accept loop rests when accepting fails (out of file descriptors, say), so a full
/// table never spins.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// How [`Receiver::listen_with`] serves: TLS or not, and its limits.
///
/// ```no_run
/// use gptimage_transport::webhook::{ListenOptions, Receiver, ServerTls};
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let receiver = Receiver::new("https://hooks.example.com:8443/gptimage/")?;
/// let tls = ServerTls::from_pem_files("/etc/hooks/fullchain.pem", "/etc/hooks/key.pem")?;
/// let options = ListenOptions::new().tls(tls).max_connections(2048);
/// let listener = receiver.listen_with("[::]:8443", &options)?;
/// # drop(listener);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ListenOptions {
    tls: Option<ServerTls>,
    max_connections: usize,
    read_timeout: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: 1024,
            read_timeout: Duration::from_secs(10),
        }
    }
}

impl ListenOptions {
    /// Plain HTTP, at most 1024 connections at once, 10 s to send a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves HTTPS with this certificate and key instead of plain HTTP.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connections held at once (at least 1; 1024 by default). When all are taken, a new
    /// connection closes the one that has waited longest for its current request (and so does
    /// a process out of file descriptors). A connection still sending its first request's
    /// head costs about 3 KiB; one past it, about 20 KiB.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a connection may take over its TLS handshake, over each request's head (or, kept
    /// alive, wait for its next request), and over each request's body; 10 s by default, at
    /// least 100 ms.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout.max(Duration::from_millis(100));
        self
    }
}

/// A certificate chain and private key to serve HTTPS with, through rustls on the crypto
/// provider the clients use (the process default if the application installed one).
///
/// Its `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads a PEM certificate chain (the server's certificate first, then its intermediates)
    /// and a PEM private key (PKCS #8, PKCS #1 or SEC1) from files.
    pub fn from_pem_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                Error::config(format!("could not read the {what} {}: {e}", path.display()))
            })
        };
        let chain = read(cert_chain.as_ref(), "certificate chain")?;
        let key = read(key.as_ref(), "private key")?;
        Self::from_pem(&chain, &key)
    }

    /// A certificate chain and private key in PEM, as [`from_pem_files`](Self::from_pem_files)
    /// reads them.
    ///
    /// ```
    /// use gptimage_transport::webhook::ServerTls;
    ///
    /// let error = ServerTls::from_pem(b"not a certificate", b"").unwrap_err();
    /// assert!(error.to_string().contains("no certificate"), "{error}");
    /// ```
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::config(format!("the certificate chain is not valid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(Error::config(
                "the certificate chain holds no certificate: expected PEM blocks \
                 `-----BEGIN CERTIFICATE-----`",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
            Error::config(format!(
                "the private key is not a PEM private key (PKCS #8, PKCS #1 or SEC1): {e}"
            ))
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider()?)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config(format!("TLS could not be set up: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                Error::config(format!(
                    "the certificate and the private key cannot serve TLS: {e}"
                ))
            })?;
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// The provider the clients use; without a rustls feature, the process default.
fn provider() -> Result<Arc<rustls::crypto::CryptoProvider>> {
    #[cfg(feature = "_rustls")]
    return crate::tls::provider();
    #[cfg(not(feature = "_rustls"))]
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| {
            Error::config(
                "serving HTTPS needs a rustls crypto provider: enable the `rustls` or \
                 `rustls-aws-lc-rs` feature, or install one with \
                 `rustls::crypto::CryptoProvider::install_default`",
            )
        })
}

impl Receiver {
    /// Serves [`handle`](Self::handle) over plain HTTP on `addr` (IPv4 or IPv6; port 0 picks
    /// one), with the default [`ListenOptions`]. It runs on a thread of its own, so it needs no
    /// async runtime, and stops when the returned [`Listener`] is dropped.
    ///
    /// ```
    /// use gptimage_transport::webhook::Receiver;
    ///
    /// let receiver = Receiver::new("http://127.0.0.1/hooks/").unwrap();
    /// let listener = receiver.listen("127.0.0.1:0").unwrap();
    /// assert_ne!(listener.local_addr().port(), 0);
    /// ```
    pub fn listen(&self, addr: impl ToSocketAddrs) -> std::io::Result<Listener> {
        self.listen_with(addr, &ListenOptions::default())
    }

    /// Serves [`handle`](Self::handle) on `addr` as `options` say (HTTPS, limits).
    pub fn listen_with(
        &self,
        addr: impl ToSocketAddrs,
        options: &ListenOptions,
    ) -> std::io::Result<Listener> {
        Listener::start(self.clone(), addr, options.clone())
    }
}

/// The built-in listener of [`Receiver::listen`]: it serves until dropped.
///
/// Dropping it stops accepting, lets each connection finish the request it is answering (for
/// at most two seconds) and closes the rest, and returns once its thread has ended.
pub struct Listener {
    addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Listener {
    fn start(
        receiver: Receiver,
        addr: impl ToSocketAddrs,
        options: ListenOptions,
    ) -> std::io::Result<Self> {
        // Everything tokio happens on the listener's own thread, so `listen` works the same
        // from a program with no runtime and from inside an async one.
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let (bound, bound_here) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = watch::channel(false);
        let tls = options.tls.is_some();
        let thread = std::thread::Builder::new()
            .name("gptimage-webhooks".into())
            .spawn(move || {
                let started = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                    .and_then(|runtime| {
                        let listener = runtime.block_on(bind(&addrs))?;
                        Ok((runtime, listener))
                    });
                let (runtime, listener) = match started {
                    Ok(started) => started,
                    Err(e) => {
                        let _ = bound.send(Err(e));
                        return;
                    }
                };
                let _ = bound.send(listener.local_addr());
                runtime.block_on(serve(listener, receiver, options, stopped));
            })?;
        let addr = match bound_here.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(std::io::Error::other("the webhook listener's thread ended"));
            }
        };
        Ok(Self {
            addr,
            tls,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds the first of `addr`'s addresses that can be bound, with a backlog of
/// [`BACKLOG`] (the standard library's is 128: a burst of connections would overflow it, and a
/// genuine client whose SYN is dropped waits a second before it tries again).
async fn bind(addrs: &[SocketAddr]) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for &addr in addrs {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to no address to listen on",
        )
    }))
}

/// Whether accepting failed because this process (or the system) has no file descriptor left.
fn is_out_of_files(error: &std::io::Error) -> bool {
    // EMFILE and ENFILE on Linux and the BSDs alike.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// The connections held, so that a full table can evict the one waiting longest.
struct Table {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Ids of connections, and the clock of `Slot::since`: one sequence for both.
    clock: AtomicU64,
    max: usize,
}

/// One connection's place in the table.
struct Slot {
    /// When (on the table's clock) it began waiting for its current request.
    since: AtomicU64,
    /// Notified to close it.
    evict: Notify,
}

impl Table {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a place for a new connection, evicting the longest waiting one if the table is
    /// full; whether it evicted one.
    fn admit(&self) -> (u64, Arc<Slot>, bool) {
        let id = self.tick();
        let slot = Arc::new(Slot {
            since: AtomicU64::new(id),
            evict: Notify::new(),
        });
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = false;
        while slots.len() >= self.max && Self::evict_oldest(&mut slots) {
            evicted = true;
        }
        slots.insert(id, Arc::clone(&slot));
        (id, slot, evicted)
    }

    /// Closes the connection that has waited longest for its current request, to free its file
    /// descriptor; whether there was one.
    fn make_room(&self) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Self::evict_oldest(&mut slots)
    }

    fn evict_oldest(slots: &mut HashMap<u64, Arc<Slot>>) -> bool {
        let oldest = slots
            .iter()
            .min_by_key(|(_, slot)| slot.since.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| slots.remove(&id)) {
            Some(victim) => {
                victim.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn leave(&self, id: u64) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// The accept loop, until told to stop; then the connections' bounded goodbye.
async fn serve(
    listener: tokio::net::TcpListener,
    receiver: Receiver,
    options: ListenOptions,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(Table {
        slots: Mutex::new(HashMap::new()),
        clock: AtomicU64::new(0),
        max: options.max_connections,
    });
    let tls = options
        .tls
        .as_ref()
        .map(|tls| tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors (the process's limit may be below the table's size):
            // close the connection waiting longest, and accept again once it is gone.
            Err(e) if is_out_of_files(&e) && table.make_room() => {
                tokio::task::yield_now().await;
                continue;
            }
            Err(_) => {
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, slot, evicted) = table.admit();
        let connection = Connection {
            receiver: receiver.clone(),
            table: Arc::clone(&table),
            slot,
            stop: stop.clone(),
            read_timeout: options.read_timeout,
        };
        let tls = tls.clone();
        connections.spawn(async move {
            connection.run(stream, tls).await;
            connection.table.leave(id);
        });
        if evicted {
            // Let the evicted connection's task end (and free its buffers) before the next
            // accept, so memory stays bounded by the table however fast connections come.
            tokio::task::yield_now().await;
        }
    }
    drop(listener);
    // Each connection saw the same signal: it finishes its request, then closes.
    let goodbye = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(STOP_GRACE + Duration::from_millis(500), goodbye).await;
    connections.abort_all();
}

/// One accepted connection.
struct Connection {
    receiver: Receiver,
    table: Arc<Table>,
    slot: Arc<Slot>,
    stop: watch::Receiver<bool>,
    read_timeout: Duration,
}

impl Connection {
    /// Serves the connection: its TLS handshake if any, its first request's head into a small
    /// buffer of its own, and only then hyper, so that the many connections of a slow-loris
    /// crowd cost a few hundred bytes each rather than hyper's buffers (about 20 KiB). Each
    /// stage is boxed: the task of a connection still sending its head is small too.
    async fn run(&self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let Some(acceptor) = tls else {
            let mut stream = stream;
            if let Some(head) = self.first_head(&mut stream).await {
                Box::pin(self.http(Prefixed::new(head, stream))).await;
            }
            return;
        };
        let handshake = async {
            let mut stream = acceptor.accept(stream).await.ok()?;
            let head = self.first_head(&mut stream).await?;
            Some(Prefixed::new(head, stream))
        };
        if let Some(stream) = self.bounded(Box::pin(handshake)).await.flatten() {
            Box::pin(self.http(stream)).await;
        }
    }

    /// `work`, unless it takes longer than the read timeout, the connection is evicted, or the
    /// listener stops.
    async fn bounded<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let mut stop = self.stop.clone();
        tokio::select! {
            done = tokio::time::timeout(self.read_timeout, work) => done.ok(),
            () = self.slot.evict.notified() => None,
            _ = stop.wait_for(|stop| *stop) => None,
        }
    }

    /// The bytes of the first request up to the end of its head (and whatever came with them),
    /// or the first [`GATE_BYTES`] of it; `None` if the client closed, failed or was too slow.
    /// This only finds where the head ends; hyper parses it.
    async fn first_head<R: AsyncRead + Unpin>(&self, io: &mut R) -> Option<Vec<u8>> {
        let read = async {
            let mut head = Vec::new();
            loop {
                head.reserve(256);
                let before = head.len();
                let n = io.read_buf(&mut head).await.ok()?;
                if n == 0 {
                    return None;
                }
                let fresh = &head[before.saturating_sub(2)..];
                let ended = fresh.windows(2).any(|w| w == b"\n\n")
                    || fresh.windows(3).any(|w| w == b"\n\r\n");
                if ended || head.len() >= GATE_BYTES {
                    return Some(head);
                }
            }
        };
        self.bounded(read).await.flatten()
    }

    /// Serves HTTP/1.1 requests on `io` until the client closes, a limit is passed, the
    /// connection is evicted, or the listener stops.
    async fn http<I>(&self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(|request| respond(request, self));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut stop = self.stop.clone();
        let stopping = tokio::select! {
            _ = connection.as_mut() => false,
            () = self.slot.evict.notified() => false,
            _ = stop.wait_for(|stop| *stop) => true,
        };
        if !stopping {
            return;
        }
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(STOP_GRACE, connection).await;
    }
}

/// Reads one request's body within the limits and answers it through the receiver.
async fn respond(
    request: http::Request<Incoming>,
    connection: &Connection,
) -> std::result::Result<http::Response<Full<Bytes>>, Infallible> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = if declared.is_some_and(|n| n > MAX_CALLBACK_BYTES as u64) {
        closing(answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is too large",
        ))
    } else {
        let (parts, body) = request.into_parts();
        let read = Limited::new(body, MAX_CALLBACK_BYTES).collect();
        match tokio::time::timeout(connection.read_timeout, read).await {
            Ok(Ok(body)) => {
                let request = http::Request::from_parts(parts, body.to_bytes().to_vec());
                connection.receiver.handle(request)
            }
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => closing(answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is too large",
            )),
            Ok(Err(_)) => closing(answer(StatusCode::BAD_REQUEST, "the body is malformed")),
            Err(_) => closing(answer(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long",
            )),
        }
    };
    // Answered: the connection now waits for its next request, from now.
    let now = connection.table.tick();
    connection.slot.since.store(now, Ordering::Relaxed);
    Ok(response.map(|body| Full::new(Bytes::from(body))))
}

/// The response, with the connection closed after it (its body was not read to the end).
fn closing(mut response: http::Response<Vec<u8>>) -> http::Response<Vec<u8>> {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// A stream whose first bytes, already read, are read again: the first request's head, read by
/// [`Connection::first_head`], handed to hyper with the rest of the stream.
struct Prefixed<S> {
    prefix: Vec<u8>,
    taken: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            taken: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.prefix.len() {
            let n = (this.prefix.len() - this.taken).min(buf.remaining());
            buf.put_slice(&this.prefix[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.prefix.len() {
                this.prefix = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
