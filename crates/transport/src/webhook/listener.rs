//! The built-in webhook listener (feature `listener`): hyper 1's HTTP/1.1 server, plain or over
//! rustls, on a one-thread tokio runtime of its own, in front of [`Receiver::handle`].
//!
//! It is built to face the internet: nothing a peer sends can take it, or the program around
//! it, down.
//!
//! - **It decides before it reads.** Each request is judged on its head (method, path, token,
//!   declared length) by [`Receiver::refusal`]: anything but a live token is answered and its
//!   connection closed without a byte of its body read. A genuine callback's body is counted and
//!   dropped piece by piece.
//! - **Every phase is bounded**: the TLS handshake, each request's head (or, kept alive, the wait
//!   for the next one) and body must arrive within the read timeout, each answer must be taken
//!   by the client within the write timeout, a head is at most 16 KiB and a body
//!   [`MAX_CALLBACK_BYTES`](super::MAX_CALLBACK_BYTES). At most a bounded number of TLS handshakes run at once.
//! - **Every peer is accounted**: the connection table is sized from the process's descriptor
//!   limit (keeping a reserve for the rest of the process), one address (an IPv6 /64) holds at
//!   most a share of it, and a full table (or a process out of descriptors) closes a connection
//!   past its grace (from the peer holding the most, waiting longest), or else a young one of a
//!   peer holding more than the newcomer's, never one whose request is being answered: a fast
//!   opener cannot push out a genuine sender in its first round trips. The grace is short (a
//!   quarter of a second) for a connection still in its first flight, which a genuine sender
//!   ends within a round trip or two, so a crowd of slow connections is soon evictable.
//! - **Memory follows what a peer sent**: a connection still sending its first head holds that
//!   head in a buffer of its own (not hyper's), so a slow-loris connection costs about 3 KiB;
//!   only a request for a live token reaches hyper's buffers (about 20 KiB).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{Receiver, Refused, drain};
use crate::error::{Error, Result};

/// The largest request head (request line and headers) accepted; larger ones get `431`.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a stopping listener lets its connections finish the request they are answering.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Connections the kernel may queue before they are accepted.
const BACKLOG: u32 = 1024;
/// How long the accept loop rests when accepting fails for a reason other than the peer's (out
/// of descriptors with nothing to close, say), so it never spins.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// The connections held at once unless told otherwise (and if the descriptors allow).
const DEFAULT_CONNECTIONS: usize = 1024;
/// How long a new connection (or one just answered) is safe from eviction, at most: a genuine
/// sender's TLS handshake and first request take a few round trips.
const GRACE: Duration = Duration::from_secs(1);
/// The grace of a connection still in its first flight (its TLS handshake, or its first
/// request's head): longer than a genuine sender takes over it (a round trip or two), shorter
/// than a slow one does. A crowd of slow connections from many addresses, each light, is thus
/// evictable soon enough that a genuine newcomer finds room.
const HANDSHAKE_GRACE: Duration = Duration::from_millis(250);
/// The longest read or write timeout: longer ones are this (hyper adds the read timeout to an
/// instant, which a `Duration::MAX` would overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Descriptors kept for the rest of the process, at least (and a quarter of the limit).
const RESERVE_MIN: u64 = 128;

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
    max_per_peer: Option<usize>,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_connections: DEFAULT_CONNECTIONS,
            max_per_peer: None,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl ListenOptions {
    /// Plain HTTP, at most 1024 connections at once (fewer if the process's descriptors are
    /// fewer), 10 s to send a request and 10 s to take its answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves HTTPS with this certificate and key instead of plain HTTP.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connections held at once (at least 1; 1024 by default).
    ///
    /// The table never takes the descriptors the rest of the process needs: on Unix, the
    /// listener raises the process's soft limit of open files toward its hard limit as far as
    /// this many connections need, and then holds at most the limit less a reserve (a quarter
    /// of it, at least 128) for status requests, downloads, files and databases.
    /// [`Listener::max_connections`] says what it settled on.
    ///
    /// When the table is full, a new connection closes one past its grace (taken from the peer
    /// holding the most connections, the one that has waited longest for its current request),
    /// or if none is, a young one of a peer holding more connections than the newcomer's; never
    /// one whose request is being answered. The grace is a second (or half the read timeout)
    /// from when a connection was opened or last answered, and a quarter of a second while it
    /// has not yet sent a whole first head (or finished its TLS handshake). If nothing may be
    /// closed, the new connection is. A process out of file descriptors does the same.
    ///
    /// What a connection costs: about 3 KiB while it sends its first request's head (plus the
    /// head itself), about 20 KiB once a request for a live callback token has reached hyper,
    /// and, with TLS, rustls's buffers while it shakes hands.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Connections one peer may hold at once (an IPv4 address, or an IPv6 /64 network); a
    /// quarter of the table by default (at least 16). A peer at its share that opens another
    /// connection closes its own longest waiting one, never another peer's.
    ///
    /// Behind a proxy or load balancer, every connection comes from its address: raise this to
    /// the table's size there.
    pub fn max_connections_per_peer(mut self, max: usize) -> Self {
        self.max_per_peer = Some(max.max(1));
        self
    }

    /// How long a connection may take over its TLS handshake, over each request's head (or, kept
    /// alive, wait for its next request), and over each request's body; 10 s by default, at
    /// least 100 ms and at most an hour.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout.clamp(Duration::from_millis(100), MAX_TIMEOUT);
        self
    }

    /// How long a client may take to accept each answer (a client that pipelines requests and
    /// never reads is closed after it); 10 s by default, at least 100 ms and at most an hour.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout.clamp(Duration::from_millis(100), MAX_TIMEOUT);
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
/// at most two seconds) and closes the rest at once, and returns once its thread has ended.
pub struct Listener {
    addr: SocketAddr,
    tls: bool,
    max_connections: usize,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("max_connections", &self.max_connections)
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
        let limits = Limits::new(&options);
        let max_connections = limits.table;
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
                runtime.block_on(serve(listener, receiver, options, limits, stopped));
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
            max_connections,
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

    /// The connections it holds at once at most: [`ListenOptions::max_connections`], or fewer
    /// if the process's descriptors could not spare that many.
    pub fn max_connections(&self) -> usize {
        self.max_connections
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

/// The limits one listener settled on.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections held at once.
    table: usize,
    /// Connections one peer may hold.
    per_peer: usize,
    /// TLS handshakes under way at once.
    handshakes: usize,
    /// How long a connection is safe from eviction after it was opened or answered.
    grace: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
}

impl Limits {
    fn new(options: &ListenOptions) -> Self {
        let table = spare_descriptors(options.max_connections).clamp(1, options.max_connections);
        Self {
            table,
            per_peer: options
                .max_per_peer
                .unwrap_or((table / 4).max(16))
                .clamp(1, table),
            handshakes: (table / 4).clamp(1, 256),
            grace: GRACE.min(options.read_timeout / 2),
            read_timeout: options.read_timeout,
            write_timeout: options.write_timeout,
        }
    }
}

/// How many connections the process's descriptors can spare, at most `wanted`: on Unix, the
/// soft limit of open files is raised toward the hard one as far as `wanted` connections and
/// the reserve need (never lowered), and the reserve (a quarter, at least [`RESERVE_MIN`]) and
/// what is open already are kept for the rest of the process. Several listeners in one process
/// each count what is open when they start.
#[cfg(unix)]
fn spare_descriptors(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let wanted = wanted as u64;
    // What the process has open already is not spare (Linux tells; elsewhere the reserve
    // stands for it).
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    let needed = (wanted.saturating_mul(4) / 3)
        .saturating_add(RESERVE_MIN)
        .saturating_add(open);
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(soft) = limit.current
        && soft < needed
    {
        let raised = limit.maximum.map_or(needed, |hard| hard.min(needed));
        if raised > soft {
            limit.current = Some(raised);
            // Not allowed (a sandbox, say): the table makes do with the limit as it is.
            let _ = setrlimit(Resource::Nofile, limit);
        }
    }
    let Some(soft) = getrlimit(Resource::Nofile).current else {
        return usize::try_from(wanted).unwrap_or(usize::MAX);
    };
    let spare = soft.saturating_sub(RESERVE_MIN.max(soft / 4).saturating_add(open));
    usize::try_from(spare.min(wanted)).unwrap_or(usize::MAX)
}

#[cfg(not(unix))]
fn spare_descriptors(wanted: usize) -> usize {
    wanted
}

/// Whether accepting failed because this process (or the system) has no file descriptor left.
fn is_out_of_files(error: &std::io::Error) -> bool {
    // EMFILE and ENFILE on Linux and the BSDs alike.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// Whether accepting failed because of the peer (it went away before it was accepted): accept
/// again at once, as `axum::serve` does.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Who a connection comes from, for its share of the table: an IPv4 address, or an IPv6 /64
/// network (one host is given a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Peer {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let mut network = [0u8; 8];
                    network.copy_from_slice(&v6.octets()[..8]);
                    Self::V6(network)
                }
            },
        }
    }
}

/// The connections held, so that a full table can evict one, and a peer's share be kept.
struct Table {
    state: Mutex<TableState>,
    /// Notified when a handshake's turn is given back.
    turn_freed: Notify,
    /// Ids of connections.
    ids: AtomicU64,
    /// The instant [`Slot::since`] counts from.
    epoch: Instant,
    limits: Limits,
}

#[derive(Default)]
struct TableState {
    slots: HashMap<u64, Arc<Slot>>,
    per_peer: HashMap<Peer, usize>,
    /// Connections shaking hands (TLS), each with its [`Slot::handshaking`] set under this
    /// lock.
    handshakes: usize,
}

/// One connection's place in the table.
struct Slot {
    peer: Peer,
    /// When (in nanoseconds from the table's epoch) it was opened, or began waiting for its
    /// current request.
    since: AtomicU64,
    /// A request of it is being answered: not to be evicted (a refused request is answered at
    /// once; only a genuine callback's body takes time, within the read timeout).
    busy: AtomicBool,
    /// It is shaking hands (TLS).
    handshaking: AtomicBool,
    /// Its first request's head has arrived whole (and, with TLS, its handshake is done): it
    /// made the progress a genuine sender makes in its first round trips. Until then its grace
    /// is the short [`HANDSHAKE_GRACE`].
    started: AtomicBool,
    /// Notified to close it.
    evict: Notify,
}

/// What makes a connection a better victim: past its grace, then more connections from its
/// peer, then a longer wait.
type Rank = (bool, usize, u64);

impl Table {
    fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(TableState::default()),
            turn_freed: Notify::new(),
            ids: AtomicU64::new(0),
            epoch: Instant::now(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clock(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes a place for a new connection from `peer`, evicting another if the table (or the
    /// peer's share) is full; `None` if no connection may be evicted for it (the new
    /// connection is then closed).
    fn admit(&self, peer: Peer) -> Option<(u64, Arc<Slot>)> {
        let now = self.clock();
        let mut state = self.lock();
        let held = state.per_peer.get(&peer).copied().unwrap_or(0);
        if held >= self.limits.per_peer {
            // A peer at its share makes room among its own connections only, and only among
            // those past their grace.
            let victim = self.victim(&state, now, usize::MAX, |slot| slot.peer == peer)?;
            Self::evict(&mut state, victim);
        } else if state.slots.len() >= self.limits.table {
            let victim = self.victim(&state, now, held, |_| true)?;
            Self::evict(&mut state, victim);
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            peer,
            since: AtomicU64::new(now),
            busy: AtomicBool::new(false),
            handshaking: AtomicBool::new(false),
            started: AtomicBool::new(false),
            evict: Notify::new(),
        });
        state.slots.insert(id, Arc::clone(&slot));
        *state.per_peer.entry(peer).or_insert(0) += 1;
        Some((id, slot))
    }

    /// Closes one connection to free its descriptor (the process ran out); whether there was
    /// one that may go.
    fn make_room(&self) -> bool {
        let now = self.clock();
        let mut state = self.lock();
        match self.victim(&state, now, 1, |_| true) {
            Some(victim) => {
                Self::evict(&mut state, victim);
                true
            }
            None => false,
        }
    }

    /// A turn for `slot` to shake hands: at once if fewer than the bound are under way, else by
    /// closing one that may go for it (see [`victim`](Self::victim)), whose turn it takes;
    /// whether it got one. Waiting turns are not queued: a crowd of slow handshakes ahead cannot
    /// hold a genuine sender back.
    fn begin_handshake(&self, slot: &Slot) -> bool {
        let now = self.clock();
        let mut state = self.lock();
        // A turn taken starts the connection's grace afresh: the time it waited for the turn
        // does not count against its handshake.
        let granted = |slot: &Slot| {
            slot.handshaking.store(true, Ordering::Relaxed);
            slot.since.store(now, Ordering::Relaxed);
            true
        };
        if state.handshakes < self.limits.handshakes {
            state.handshakes += 1;
            return granted(slot);
        }
        // A turn held longer than a genuine handshake takes goes first: a crowd of slow
        // handshakes from many addresses cannot keep the turns from a quick one.
        let held = state.per_peer.get(&slot.peer).copied().unwrap_or(0);
        let handshaking = |other: &Slot| other.handshaking.load(Ordering::Relaxed);
        let Some(victim) = self.victim(&state, now, held, handshaking) else {
            return false;
        };
        if let Some(victim) = Self::remove(&mut state, victim) {
            victim.handshaking.store(false, Ordering::Relaxed);
            victim.evict.notify_one();
        }
        granted(slot)
    }

    /// `slot`'s handshake is over (or its connection ended during it): a connection waiting
    /// for a turn may take it.
    fn end_handshake(&self, slot: &Slot) {
        let mut state = self.lock();
        if slot.handshaking.swap(false, Ordering::Relaxed) {
            state.handshakes -= 1;
            drop(state);
            self.turn_freed.notify_one();
        }
    }

    /// The best victim among the connections `which` allows, for a newcomer whose peer holds
    /// `newcomer_holds` connections: never one whose request is being answered. First one past
    /// its grace, from the peer holding the most, waiting longest; only when none is, a young
    /// one whose peer holds more than the newcomer's will (so a crowd cannot keep a peer with
    /// few connections out by opening fast, and a fast opener cannot push out a genuine sender
    /// in its first round trips: its own connections go first).
    fn victim(
        &self,
        state: &TableState,
        now: u64,
        newcomer_holds: usize,
        which: impl Fn(&Slot) -> bool,
    ) -> Option<u64> {
        self.victim_within(state, now, newcomer_holds, self.limits.grace, which)
    }

    /// [`victim`](Self::victim), with `grace` as the grace of a connection past its first
    /// flight (one still in it has [`HANDSHAKE_GRACE`] at most).
    fn victim_within(
        &self,
        state: &TableState,
        now: u64,
        newcomer_holds: usize,
        grace: Duration,
        which: impl Fn(&Slot) -> bool,
    ) -> Option<u64> {
        let nanos = |grace: Duration| u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        let (grace, first_flight) = (nanos(grace), nanos(grace.min(HANDSHAKE_GRACE)));
        state
            .slots
            .iter()
            .filter(|(_, slot)| which(slot) && !slot.busy.load(Ordering::Relaxed))
            .filter_map(|(id, slot)| {
                let waited = now.saturating_sub(slot.since.load(Ordering::Relaxed));
                let held = state.per_peer.get(&slot.peer).copied().unwrap_or(0);
                // A connection that has not yet sent its first request's head (or finished its
                // handshake) in a genuine sender's round trips is a slow one.
                let grace = if slot.started.load(Ordering::Relaxed) {
                    grace
                } else {
                    first_flight
                };
                let past_grace = waited >= grace;
                let heavier = held > newcomer_holds.saturating_add(1);
                (past_grace || heavier).then_some((*id, (past_grace, held, waited)))
            })
            .max_by_key(|&(_, rank): &(u64, Rank)| rank)
            .map(|(id, _)| id)
    }

    fn evict(state: &mut TableState, id: u64) {
        if let Some(victim) = Self::remove(state, id) {
            victim.evict.notify_one();
        }
    }

    fn remove(state: &mut TableState, id: u64) -> Option<Arc<Slot>> {
        let slot = state.slots.remove(&id)?;
        if let Some(held) = state.per_peer.get_mut(&slot.peer) {
            *held -= 1;
            if *held == 0 {
                state.per_peer.remove(&slot.peer);
            }
        }
        Some(slot)
    }

    /// A connection ended (if it was evicted, its place is already gone).
    fn leave(&self, id: u64) {
        Self::remove(&mut self.lock(), id);
    }

    /// A request of the connection is being answered, or (`false`) was answered: from now it
    /// waits for its next request.
    fn set_busy(&self, slot: &Slot, busy: bool) {
        if !busy {
            slot.since.store(self.clock(), Ordering::Relaxed);
        }
        slot.busy.store(busy, Ordering::Relaxed);
    }
}

/// The accept loop, until told to stop; then the connections' bounded goodbye.
async fn serve(
    listener: tokio::net::TcpListener,
    receiver: Receiver,
    options: ListenOptions,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(Table::new(limits));
    let tls = options
        .tls
        .as_ref()
        .map(|tls| tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config)));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let (stream, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
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
        // Every place is held by a connection too young to evict (or the peer's share by
        // its own): this one is closed at once.
        let Some((id, slot)) = table.admit(Peer::of(from.ip())) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            receiver: receiver.clone(),
            table: Arc::clone(&table),
            slot,
            stop: stop.clone(),
            limits,
        };
        let (tls, watcher) = (tls.clone(), graceful.watcher());
        connections.spawn(async move {
            connection.run(stream, tls, watcher).await;
            connection.table.leave(id);
        });
        // Let an evicted connection's task end (and free its buffers) before the next accept,
        // so memory stays bounded by the table however fast connections come.
        tokio::task::yield_now().await;
    }
    drop(listener);
    // Connections before hyper saw the stop and end; hyper's finish the request they are
    // answering (hyper-util's graceful shutdown), within the grace.
    let _ = tokio::time::timeout(STOP_GRACE, graceful.shutdown()).await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// One accepted connection.
struct Connection {
    receiver: Receiver,
    table: Arc<Table>,
    slot: Arc<Slot>,
    stop: watch::Receiver<bool>,
    limits: Limits,
}

impl Connection {
    /// Serves the connection: its TLS handshake if any, its first request's head into a small
    /// buffer of its own, and only then hyper, so that the many connections of a slow-loris
    /// crowd cost little more than what each sent, rather than hyper's buffers. Each stage is
    /// boxed: the task of a connection still sending its head is small too.
    async fn run(
        &self,
        stream: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        watcher: Watcher,
    ) {
        let stream = WriteDeadline::new(stream, self.limits.write_timeout);
        let Some(acceptor) = tls else {
            let mut stream = stream;
            if let Some(head) = self.first_head(&mut stream).await {
                self.slot.started.store(true, Ordering::Relaxed);
                Box::pin(self.http(Prefixed::new(head, stream), watcher)).await;
            }
            return;
        };
        let handshake = async {
            self.handshake_turn().await;
            // Its turn ends with the handshake, or with the connection (even aborted).
            let _turn = Turn(self);
            acceptor.accept(stream).await.ok()
        };
        let Some(mut stream) = self.bounded(Box::pin(handshake)).await.flatten() else {
            return;
        };
        if let Some(head) = self.first_head(&mut stream).await {
            self.slot.started.store(true, Ordering::Relaxed);
            Box::pin(self.http(Prefixed::new(head, stream), watcher)).await;
        }
    }

    /// Waits for a turn to shake hands (see [`Table::begin_handshake`]), looking again when a
    /// turn is given back, or after [`HANDSHAKE_GRACE`] (when a turn may have been held long
    /// enough to be ended for it); the read timeout bounds the wait.
    async fn handshake_turn(&self) {
        while !self.table.begin_handshake(&self.slot) {
            tokio::select! {
                () = self.table.turn_freed.notified() => {}
                () = tokio::time::sleep(HANDSHAKE_GRACE) => {}
            }
        }
    }

    /// `work`, unless it takes longer than the read timeout, the connection is evicted, or the
    /// listener stops.
    async fn bounded<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let mut stop = self.stop.clone();
        tokio::select! {
            done = tokio::time::timeout(self.limits.read_timeout, work) => done.ok(),
            () = self.slot.evict.notified() => None,
            _ = stop.wait_for(|stop| *stop) => None,
        }
    }

    /// The bytes of the first request up to the end of its head (and whatever came with them),
    /// or the first [`MAX_HEAD_BYTES`] and a byte of it (hyper then answers `431`); `None` if
    /// the client closed, failed or was too slow. The buffer grows only with what the client
    /// sent. This only finds where the head ends; hyper parses it.
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
                // Empty lines before the request line are skipped (as hyper skips them): the
                // head ends with the first empty line after it.
                let Some(start) = head.iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
                    if head.len() > MAX_HEAD_BYTES {
                        return Some(head);
                    }
                    continue;
                };
                let fresh = &head[before.saturating_sub(3).max(start)..];
                let ended = fresh.windows(2).any(|w| w == b"\n\n")
                    || fresh.windows(3).any(|w| w == b"\n\r\n");
                if ended || head.len() > MAX_HEAD_BYTES {
                    return Some(head);
                }
            }
        };
        self.bounded(read).await.flatten()
    }

    /// Serves HTTP/1.1 requests on `io` until the client closes, a limit is passed, the
    /// connection is evicted, or the listener stops (gracefully: the request being answered is
    /// finished).
    async fn http<I>(&self, io: I, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(|request| respond(request, self));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service);
        let connection = watcher.watch(connection);
        tokio::select! {
            _ = connection => {}
            () = self.slot.evict.notified() => {}
        }
    }
}

/// Answers one request: refused on its head (its body unread, its connection closed), or a
/// genuine callback, whose body is counted and dropped within the read timeout.
async fn respond(
    request: http::Request<Incoming>,
    connection: &Connection,
) -> std::result::Result<http::Response<Full<Bytes>>, Infallible> {
    let (table, slot) = (&connection.table, &connection.slot);
    table.set_busy(slot, true);
    let (parts, body) = request.into_parts();
    let head = http::Request::from_parts(parts, ());
    let response = match connection.receiver.judge(&head) {
        Err(refused) => refused.response(),
        Ok(token) => {
            let keep = connection.receiver.wants_body(&token);
            match tokio::time::timeout(connection.limits.read_timeout, drain(body, keep)).await {
                Ok(Ok(kept)) => connection.receiver.deliver(token, kept.as_deref()),
                Ok(Err(refused)) => refused.response(),
                Err(_) => Refused::Slow.noted().response(),
            }
        }
    };
    table.set_busy(slot, false);
    Ok(response.map(|body| Full::new(Bytes::from(body))))
}

/// A connection's turn to shake hands, given back when dropped.
struct Turn<'a>(&'a Connection);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.table.end_handshake(&self.0.slot);
    }
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

/// A stream whose writes must make progress within a deadline: a write (or flush) that the
/// peer keeps waiting longer than `timeout` fails with `TimedOut`, which ends the connection. A
/// client that pipelines requests and never reads their answers is closed this way. The timer
/// exists only while a write waits.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            waiting: None,
        }
    }

    /// What a write that returned `result` means: progress ends the wait; a wait past the
    /// deadline is an error.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if result.is_ready() {
            self.waiting = None;
            return result;
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not take the answer within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(cx, result)
    }
}
