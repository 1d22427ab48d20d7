//! The built-in webhook listener against real clients over loopback, well-behaved and hostile:
//! HTTP/1.1 with keep-alive, chunked and sized bodies on IPv4 and IPv6; HTTPS; oversized, slow,
//! malformed and forged requests; a thousand slow-loris connections; a flood of forgeries; a
//! full connection table; and a stop that ends every connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/genuine.rs"]
mod genuine;

use genuine::genuine_callback;
use gptimage_emulator::Emulator;
use gptimage_transport::webhook::{ListenOptions, Listener, Receiver, ServerTls};

/// A listener on `bind`, and the path of a genuine callback URL (see `genuine_callback`).
fn setup(bind: &str, options: &ListenOptions) -> (Emulator, Listener, String) {
    let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
    let listener = receiver.listen_with(bind, options).unwrap();
    let (emulator, path) = genuine_callback(receiver);
    (emulator, listener, path)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: hooks\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One response read off `stream`: its status and body, or `None` if the connection was closed
/// (or reset) before a whole response came.
fn response(stream: &mut impl Read) -> Option<(u16, String)> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(data).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `request` on a new connection; the status of the answer, if one came.
fn ask(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = connect(addr);
    stream.write_all(request).ok()?;
    response(&mut stream).map(|(status, _)| status)
}

/// Whether the server closed `stream` (a read ends, or fails, without data) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn keep_alive_chunked_and_sized_bodies_over_ipv4_and_ipv6() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let (_emulator, listener, path) = setup(bind, &ListenOptions::new());
        let addr = listener.local_addr();
        assert_eq!(addr.is_ipv6(), bind.starts_with('['));
        let mut stream = connect(addr);
        // Three requests on one connection: sized, chunked, and a forged one.
        stream.write_all(&post(&path, "{}")).unwrap();
        assert_eq!(response(&mut stream).unwrap().0, 200, "{bind}");
        let chunked = format!(
            "POST {path} HTTP/1.1\r\nhost: hooks\r\ntransfer-encoding: chunked\r\n\r\n\
             2\r\n{{}}\r\n0\r\n\r\n"
        );
        stream.write_all(chunked.as_bytes()).unwrap();
        let (status, body) = response(&mut stream).unwrap();
        assert_eq!(status, 200, "{bind}: {body}");
        assert!(body.contains("\"accepted\":true"), "{body}");
        stream.write_all(&post("/hooks/nope", "{}")).unwrap();
        assert_eq!(response(&mut stream).unwrap().0, 404, "{bind}");
        // Pipelined: two requests in one write, two answers in order.
        let mut both = post(&path, "{}");
        both.extend(post("/hooks/0000", "{}"));
        stream.write_all(&both).unwrap();
        assert_eq!(response(&mut stream).unwrap().0, 200);
        assert_eq!(response(&mut stream).unwrap().0, 404);
    }
}

#[test]
fn hostile_requests_get_a_4xx_or_a_closed_connection_and_the_listener_goes_on() {
    let options = ListenOptions::new().read_timeout(Duration::from_millis(800));
    let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
    let addr = listener.local_addr();
    let refused = |answer: Option<u16>| answer.is_none_or(|s| (400..500).contains(&s));

    // A head over 16 KiB.
    let huge_head = format!(
        "POST {path} HTTP/1.1\r\nhost: hooks\r\nx-filler: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(20 * 1024)
    );
    let answer = ask(addr, huge_head.as_bytes());
    assert!(refused(answer), "{answer:?}");
    // A body over 64 KiB, declared, and chunked.
    let big = "x".repeat(64 * 1024 + 1);
    assert_eq!(ask(addr, &post(&path, &big)), Some(413));
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nhost: hooks\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    assert_eq!(ask(addr, chunked.as_bytes()), Some(413));
    // Other methods, a wrong path, garbage, an invalid chunk size, a bare LF protocol.
    let get = format!("GET {path} HTTP/1.1\r\nhost: hooks\r\n\r\n");
    assert_eq!(ask(addr, get.as_bytes()), Some(405));
    let put = format!("PUT {path} HTTP/1.1\r\nhost: hooks\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(ask(addr, put.as_bytes()), Some(405));
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"\0\0\0\0\r\n\r\n",
        b"POST /hooks/x HTTP/9.9\r\n\r\n",
        b"POST /hooks/x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"POST /hooks/x HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
    ] {
        let answer = ask(addr, garbage);
        assert!(refused(answer), "{answer:?} for {garbage:?}");
    }
    // A head that never ends is closed after the read timeout, and so is a body that never
    // ends; an idle kept-alive connection is closed too.
    let mut slow_head = connect(addr);
    slow_head.write_all(b"POST /hooks/").unwrap();
    let mut slow_body = connect(addr);
    slow_body
        .write_all(
            format!("POST {path} HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\n{{").as_bytes(),
        )
        .unwrap();
    let mut idle = connect(addr);
    idle.write_all(&post(&path, "{}")).unwrap();
    assert_eq!(response(&mut idle).unwrap().0, 200);
    let started = Instant::now();
    assert!(closed_within(&mut slow_head, Duration::from_secs(5)));
    let answer = response(&mut slow_body);
    assert!(answer.as_ref().is_none_or(|(s, _)| *s == 408), "{answer:?}");
    assert!(closed_within(&mut slow_body, Duration::from_secs(5)));
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(5));
    // After all that, a genuine callback is still answered.
    assert_eq!(ask(addr, &post(&path, "{}")), Some(200));
}

/// Raises this process's open-file limit to its hard limit: a thousand connections need
/// two thousand descriptors here (both ends live in this process).
fn enough_files(needed: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < needed) {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).unwrap();
    }
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|n| n >= needed),
        "this test needs {needed} open files; the hard limit is {now:?}"
    );
}

/// The resident memory of this process, in bytes.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Latencies of genuine callbacks sent every 100 ms on fresh connections while `busy` holds.
fn genuine_latencies(addr: SocketAddr, path: &str, busy: &AtomicBool) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for _ in 0..200 {
        if !busy.load(Ordering::SeqCst) {
            break;
        }
        let started = Instant::now();
        assert_eq!(ask(addr, &post(path, "{}")), Some(200));
        latencies.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    latencies
}

#[test]
fn a_thousand_slow_loris_connections_do_not_keep_a_genuine_callback_out() {
    const CROWD: usize = 1000;
    enough_files(3 * CROWD as u64);
    let (_emulator, listener, path) = setup("127.0.0.1:0", &ListenOptions::new());
    let addr = listener.local_addr();
    assert_eq!(ask(addr, &post(&path, "{}")), Some(200));
    let before = resident();
    let busy = Arc::new(AtomicBool::new(true));
    let (evicted, trickled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // The crowd: a thousand connections that send a request head a byte at a time (every 50 ms
    // each) and never finish it; a closed one is replaced at once, for 4 s.
    let crowd = {
        let (busy, evicted, trickled) = (busy.clone(), evicted.clone(), trickled.clone());
        std::thread::spawn(move || {
            let head = b"POST /hooks/0123456789abcdef HTTP/1.1\r\nhost: x\r\nx-a: ".repeat(50);
            let open = |_| {
                let stream = TcpStream::connect(addr).unwrap();
                stream.set_nonblocking(true).unwrap();
                (stream, 0usize)
            };
            let mut crowd: Vec<(TcpStream, usize)> = (0..CROWD).map(open).collect();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(4) {
                for (stream, sent) in crowd.iter_mut() {
                    let mut sink = [0u8; 256];
                    let gone = stream.read(&mut sink).is_ok()
                        || stream.write(&head[*sent % head.len()..][..1]).is_err();
                    if gone {
                        evicted.fetch_add(1, Ordering::SeqCst);
                        *stream = open(0).0;
                        *sent = 0;
                    } else {
                        *sent += 1;
                        trickled.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            busy.store(false, Ordering::SeqCst);
            crowd
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let latencies = genuine_latencies(addr, &path, &busy);
    let during = resident();
    let crowd = crowd.join().unwrap();
    drop(crowd);
    let worst = latencies.iter().max().copied().unwrap();
    let growth = during.saturating_sub(before);
    eprintln!(
        "{} genuine callbacks under a crowd of {CROWD}: worst {worst:?}; {} head bytes trickled, \
         {} crowd connections closed by the listener; memory grew {} KiB",
        latencies.len(),
        trickled.load(Ordering::SeqCst),
        evicted.load(Ordering::SeqCst),
        growth / 1024,
    );
    assert!(latencies.len() >= 10, "{latencies:?}");
    assert!(
        trickled.load(Ordering::SeqCst) > 10 * CROWD as u64,
        "the crowd kept trickling"
    );
    assert!(worst < Duration::from_secs(1), "{latencies:?}");
    assert!(growth < 8 << 20, "memory grew {} KiB", growth / 1024);
}

#[test]
fn a_flood_of_forged_callbacks_is_answered_404_and_genuine_ones_still_pass() {
    let (_emulator, listener, path) = setup("127.0.0.1:0", &ListenOptions::new());
    let addr = listener.local_addr();
    let busy = Arc::new(AtomicBool::new(true));
    let forged_404 = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..64)
        .map(|i| {
            let (busy, forged_404) = (busy.clone(), forged_404.clone());
            let forged = post(&format!("/hooks/{i:016x}{:032x}", i * 7919), "{}");
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                let started = Instant::now();
                while busy.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(10) {
                    stream.write_all(&forged).unwrap();
                    let (status, _) = response(&mut stream).unwrap();
                    assert_eq!(status, 404);
                    forged_404.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let genuine_busy = AtomicBool::new(true);
    let latencies = std::thread::scope(|scope| {
        let measuring = scope.spawn(|| genuine_latencies(addr, &path, &genuine_busy));
        std::thread::sleep(Duration::from_secs(2));
        genuine_busy.store(false, Ordering::SeqCst);
        measuring.join().unwrap()
    });
    busy.store(false, Ordering::SeqCst);
    for thread in flood {
        thread.join().unwrap();
    }
    let worst = latencies.iter().max().copied().unwrap();
    eprintln!(
        "{} forged callbacks answered 404; {} genuine ones, worst {worst:?}",
        forged_404.load(Ordering::SeqCst),
        latencies.len()
    );
    assert!(forged_404.load(Ordering::SeqCst) > 1000);
    assert!(latencies.len() >= 5, "{latencies:?}");
    assert!(worst < Duration::from_secs(1), "{latencies:?}");
}

#[test]
fn a_full_table_closes_the_connection_waiting_longest_for_a_new_one() {
    let options = ListenOptions::new().max_connections(4);
    let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
    let addr = listener.local_addr();
    // Four connections that say nothing, opened in order.
    let mut quiet: Vec<TcpStream> = (0..4)
        .map(|_| {
            let stream = connect(addr);
            std::thread::sleep(Duration::from_millis(50));
            stream
        })
        .collect();
    // A fifth is served, and the first of the four is closed for it.
    assert_eq!(ask(addr, &post(&path, "{}")), Some(200));
    assert!(closed_within(&mut quiet[0], Duration::from_secs(2)));
    // The youngest are still open and served.
    let last = quiet.last_mut().unwrap();
    last.write_all(&post(&path, "{}")).unwrap();
    assert_eq!(response(last).unwrap().0, 200);
}

/// The child's side of the next test: a listener in a process with few file descriptors left,
/// which prints its address and a genuine path, and serves until its input closes.
fn serve_with_few_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let (_emulator, listener, path) = setup("127.0.0.1:0", &ListenOptions::new());
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(open + 16);
    setrlimit(Resource::Nofile, limit).unwrap();
    println!("{} {path}", listener.local_addr());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

#[test]
fn a_process_out_of_file_descriptors_closes_the_oldest_connection_rather_than_stall() {
    if std::env::var_os("GPTIMAGE_FEW_FILES").is_some() {
        return serve_with_few_files();
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_process_out_of_file_descriptors_closes_the_oldest_connection_rather_than_stall",
            "--exact",
            "--nocapture",
        ])
        .env("GPTIMAGE_FEW_FILES", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (addr, path) = loop {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the child ended");
        if let Some((addr, path)) = line.trim().split_once(' ')
            && let Ok(addr) = addr.parse::<SocketAddr>()
        {
            break (addr, path.to_owned());
        }
    };
    // Far more quiet connections than the child has descriptors left.
    let mut quiet: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let answer = ask(addr, &post(&path, "{}"));
    let took = started.elapsed();
    let mut closed = 0;
    for stream in &mut quiet {
        closed += usize::from(closed_within(stream, Duration::from_millis(50)));
    }
    drop(child.stdin.take());
    child.wait().unwrap();
    assert_eq!(answer, Some(200));
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(closed > 0, "no quiet connection was closed to make room");
}

#[test]
fn dropping_the_listener_ends_it_and_every_connection_promptly() {
    let (_emulator, listener, path) = setup("127.0.0.1:0", &ListenOptions::new());
    let addr = listener.local_addr();
    let mut kept = connect(addr);
    kept.write_all(&post(&path, "{}")).unwrap();
    assert_eq!(response(&mut kept).unwrap().0, 200);
    let mut slow = connect(addr);
    slow.write_all(b"POST /ho").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    drop(listener);
    let stopped = started.elapsed();
    assert!(stopped < Duration::from_secs(3), "{stopped:?}");
    assert!(closed_within(&mut kept, Duration::from_millis(500)));
    assert!(closed_within(&mut slow, Duration::from_millis(500)));
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
}

mod https {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A TLS client on ring that trusts the test CA only.
    fn tls_client(addr: SocketAddr) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(fixture("test-ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        rustls::StreamOwned::new(connection, connect(addr))
    }

    #[test]
    fn https_serves_genuine_callbacks_and_refuses_plain_http() {
        let tls = ServerTls::from_pem_files(fixture("localhost.pem"), fixture("localhost-key.pem"))
            .unwrap();
        let options = ListenOptions::new()
            .tls(tls)
            .read_timeout(Duration::from_secs(1));
        let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
        assert!(listener.is_tls());
        let addr = listener.local_addr();
        let mut stream = tls_client(addr);
        for (path, status) in [(path.as_str(), 200), ("/hooks/forged", 404), (&path, 200)] {
            stream.write_all(&post(path, "{}")).unwrap();
            assert_eq!(response(&mut stream).unwrap().0, status);
        }
        // Plain HTTP to the TLS port gets no HTTP answer.
        assert_eq!(ask(addr, &post(&path, "{}")), None);
        // A handshake that never finishes is closed after the read timeout.
        let mut silent = connect(addr);
        silent.write_all(b"\x16\x03\x01").unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(5)));
    }

    #[test]
    fn unusable_certificates_and_keys_are_refused_with_the_reason() {
        let cert = std::fs::read(fixture("localhost.pem")).unwrap();
        let key = std::fs::read(fixture("localhost-key.pem")).unwrap();
        let reason = |r: Result<ServerTls, gptimage_transport::Error>| r.unwrap_err().to_string();
        assert!(reason(ServerTls::from_pem(b"", &key)).contains("no certificate"));
        assert!(reason(ServerTls::from_pem(&cert, b"")).contains("private key"));
        assert!(reason(ServerTls::from_pem(&cert, &cert)).contains("private key"));
        let missing = reason(ServerTls::from_pem_files(
            fixture("nowhere.pem"),
            fixture("localhost-key.pem"),
        ));
        assert!(missing.contains("nowhere.pem"), "{missing}");
        // A key that is not the certificate's.
        let other = std::fs::read(fixture("other-key.pem")).unwrap();
        let mismatch = reason(ServerTls::from_pem(&cert, &other));
        assert!(mismatch.contains("cannot serve TLS"), "{mismatch}");
    }
}

#[test]
fn listens_and_stops_from_inside_an_async_runtime_too() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
        let listener = receiver.listen("127.0.0.1:0").unwrap();
        let addr = listener.local_addr();
        let answer = tokio::task::spawn_blocking(move || ask(addr, &post("/hooks/x", "{}")))
            .await
            .unwrap();
        assert_eq!(answer, Some(404));
        // An address that cannot be bound is an error, not a panic.
        let taken = receiver.listen(addr).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        drop(listener);
        assert!(TcpStream::connect(addr).is_err());
    });
}
