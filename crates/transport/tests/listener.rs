//! The built-in webhook listener against real clients over loopback, well-behaved and hostile:
//! HTTP/1.1 with keep-alive, chunked and sized bodies on IPv4 and IPv6; HTTPS; oversized, slow,
//! malformed, non-ASCII and forged requests; crowds of slow heads, slow bodies and slow TLS
//! handshakes; fast churn; a full table; a process short of descriptors; a client that never
//! reads; and a stop that ends every connection.
//!
//! The crowds connect from other loopback addresses (127.0.1.x, …) than the genuine sender
//! (127.0.0.1), as an attacker's and the service's connections would. A test that measures the
//! process runs in a process of its own (`support::net::in_own_process`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/genuine.rs"]
mod genuine;
#[path = "support/net.rs"]
mod net;

use genuine::genuine_callback;
use gptimage_emulator::Emulator;
use gptimage_transport::webhook::{ListenOptions, Listener, Receiver, ServerTls};
use net::{connect_from, crowd_address, enough_files, in_own_process, resident};

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

/// Latencies of genuine callbacks sent every 100 ms on fresh connections from 127.0.0.1 while
/// `busy` holds (at most 200).
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

/// A crowd of connections from `peers` addresses, each sending `request` one byte per
/// `every` (a slow head, or a head and then a slow body) and never finishing; a connection the
/// listener closes is replaced at once. It runs `for_how_long`, then reports.
struct Crowd {
    /// Bytes the crowd sent.
    trickled: AtomicU64,
    /// Connections the listener closed (or refused) before the read timeout could have.
    evicted: AtomicU64,
    /// Connections the listener closed in all.
    closed: AtomicU64,
}

impl Crowd {
    fn run(
        addr: SocketAddr,
        size: usize,
        peers: usize,
        request: Vec<u8>,
        every: Duration,
        for_how_long: Duration,
        read_timeout: Duration,
    ) -> Arc<Crowd> {
        let crowd = Arc::new(Crowd {
            trickled: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        });
        let report = Arc::clone(&crowd);
        let open = move |i: usize| {
            let stream = connect_from(crowd_address(i % peers), addr).ok()?;
            stream.set_nonblocking(true).unwrap();
            Some((stream, 0usize, Instant::now()))
        };
        let mut members: Vec<_> = (0..size).map(|i| (i, open(i))).collect();
        let started = Instant::now();
        while started.elapsed() < for_how_long {
            let round = Instant::now();
            for (i, member) in members.iter_mut() {
                let gone = match member {
                    None => true,
                    Some((stream, sent, _)) => {
                        let mut sink = [0u8; 256];
                        let read = stream.read(&mut sink);
                        let answered_or_closed = match read {
                            Ok(_) => true,
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        };
                        answered_or_closed
                            || stream
                                .write(&request[*sent % request.len()..][..1])
                                .is_err()
                    }
                };
                if gone {
                    if let Some((_, _, opened)) = member {
                        crowd.closed.fetch_add(1, Ordering::Relaxed);
                        if opened.elapsed() + Duration::from_millis(300) < read_timeout {
                            crowd.evicted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    *member = open(*i);
                } else if let Some((_, sent, _)) = member {
                    *sent += 1;
                    crowd.trickled.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(every.saturating_sub(round.elapsed()));
        }
        report
    }
}

/// A panic on the listener's thread fails the test that calls this (a panic in one of its
/// tasks would otherwise vanish with the task): the hook counts them.
fn count_listener_panics() -> Arc<AtomicU64> {
    let panics = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("gptimage-webhooks") {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    panics
}

#[test]
fn keep_alive_chunked_and_sized_bodies_over_ipv4_and_ipv6() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let (_emulator, listener, path) = setup(bind, &ListenOptions::new());
        let addr = listener.local_addr();
        assert_eq!(addr.is_ipv6(), bind.starts_with('['));
        let mut stream = connect(addr);
        // Requests on one connection: sized, chunked, pipelined.
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
        let mut both = post(&path, "{}");
        both.extend(post(&path, "{}"));
        stream.write_all(&both).unwrap();
        assert_eq!(response(&mut stream).unwrap().0, 200);
        assert_eq!(response(&mut stream).unwrap().0, 200);
        // A forged one is answered, and its connection closed: its body is never read.
        stream.write_all(&post("/hooks/nope", "{}")).unwrap();
        assert_eq!(response(&mut stream).unwrap().0, 404, "{bind}");
        assert!(closed_within(&mut stream, Duration::from_secs(2)), "{bind}");
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

#[test]
fn slow_bodies_cost_a_few_kib_each_and_never_keep_a_genuine_callback_out() {
    if !in_own_process("slow_bodies_cost_a_few_kib_each_and_never_keep_a_genuine_callback_out") {
        return;
    }
    const EACH: usize = 200;
    enough_files(6 * EACH as u64 + 256);
    let (_emulator, listener, path) = setup("127.0.0.1:0", &ListenOptions::new());
    let addr = listener.local_addr();
    assert_eq!(ask(addr, &post(&path, "{}")), Some(200));
    let before = resident();
    let busy = Arc::new(AtomicBool::new(true));
    // Declared bodies of 64 KiB, sent a byte per connection every 10 ms: to any path (no token
    // needed), and to a genuine one (whoever knows a token).
    let slow_body = |path: &str| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 65536\r\n\r\n"
        )
        .into_bytes();
        request.extend(std::iter::repeat_n(b'x', 65536));
        request
    };
    let crowds: Vec<_> = [slow_body("/hooks/0123456789abcdef"), slow_body(&path)]
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            let busy = Arc::clone(&busy);
            std::thread::spawn(move || {
                let crowd = Crowd::run(
                    addr,
                    EACH,
                    8,
                    request,
                    Duration::from_millis(10),
                    Duration::from_secs(5),
                    Duration::from_secs(10),
                );
                if i == 1 {
                    busy.store(false, Ordering::SeqCst);
                }
                crowd
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let latencies = genuine_latencies(addr, &path, &busy);
    let during = resident();
    let crowds: Vec<_> = crowds.into_iter().map(|c| c.join().unwrap()).collect();
    let growth = during.saturating_sub(before);
    let worst = latencies.iter().max().copied().unwrap();
    let (forged, genuine) = (&crowds[0], &crowds[1]);
    eprintln!(
        "{EACH} slow bodies to a forged path ({} bytes sent, {} connections closed) and {EACH} \
         to a genuine one ({} bytes sent): memory grew {} KiB ({} KiB a connection); {} genuine \
         callbacks, worst {worst:?}",
        forged.trickled.load(Ordering::SeqCst),
        forged.closed.load(Ordering::SeqCst),
        genuine.trickled.load(Ordering::SeqCst),
        growth / 1024,
        growth / 1024 / (2 * EACH as u64),
        latencies.len(),
    );
    assert!(
        genuine.trickled.load(Ordering::SeqCst) > 50 * EACH as u64,
        "the genuine path's crowd kept sending its bodies"
    );
    assert!(
        forged.closed.load(Ordering::SeqCst) > EACH as u64,
        "forged requests were closed on their head"
    );
    assert!(latencies.len() >= 10, "{latencies:?}");
    assert!(worst < Duration::from_secs(1), "{latencies:?}");
    // The forged crowd is closed on its heads; the genuine one reaches hyper (about 20 KiB a
    // connection, whatever the pace of its bytes). Before, each byte pinned a read buffer:
    // hundreds of MiB.
    assert!(growth < 10 << 20, "memory grew {} KiB", growth / 1024);
}

#[test]
fn a_crowd_of_slow_heads_that_fills_the_table_is_evicted_and_a_genuine_callback_served() {
    if !in_own_process(
        "a_crowd_of_slow_heads_that_fills_the_table_is_evicted_and_a_genuine_callback_served",
    ) {
        return;
    }
    const CROWD: usize = 1000;
    enough_files(3 * CROWD as u64 + 256);
    let read_timeout = Duration::from_secs(3);
    let options = ListenOptions::new()
        .max_connections(256)
        .read_timeout(read_timeout);
    let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
    let addr = listener.local_addr();
    assert_eq!(listener.max_connections(), 256);
    assert_eq!(ask(addr, &post(&path, "{}")), Some(200));
    let before = resident();
    let busy = Arc::new(AtomicBool::new(true));
    // A thousand connections from 16 addresses, each sending a head a byte every 50 ms and
    // never finishing it, for longer than the read timeout.
    let crowd = {
        let busy = Arc::clone(&busy);
        std::thread::spawn(move || {
            // Empty lines first, as a request may begin: they must not pass for a whole head.
            let mut head = b"\r\n\r\n".to_vec();
            head.extend(b"POST /hooks/0123456789abcdef HTTP/1.1\r\nhost: x\r\nx-a: ".repeat(50));
            let crowd = Crowd::run(
                addr,
                CROWD,
                16,
                head,
                Duration::from_millis(50),
                Duration::from_secs(6),
                read_timeout,
            );
            busy.store(false, Ordering::SeqCst);
            crowd
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let latencies = genuine_latencies(addr, &path, &busy);
    let during = resident();
    let crowd = crowd.join().unwrap();
    let worst = latencies.iter().max().copied().unwrap();
    let growth = during.saturating_sub(before);
    eprintln!(
        "{} genuine callbacks under a crowd of {CROWD}: worst {worst:?}; {} head bytes trickled, \
         {} crowd connections closed by the listener, {} of them before the read timeout; \
         memory grew {} KiB",
        latencies.len(),
        crowd.trickled.load(Ordering::SeqCst),
        crowd.closed.load(Ordering::SeqCst),
        crowd.evicted.load(Ordering::SeqCst),
        growth / 1024,
    );
    assert!(latencies.len() >= 10, "{latencies:?}");
    assert!(
        crowd.trickled.load(Ordering::SeqCst) > 10 * 256,
        "the crowd kept trickling"
    );
    assert!(
        crowd.evicted.load(Ordering::SeqCst) > CROWD as u64,
        "the full table made room by closing connections"
    );
    // No genuine callback waited for the crowd's connections to time out: a full table makes
    // room at once (about 0.1 s on an idle machine, 1.3 s seen on a loaded one).
    assert!(worst < read_timeout, "{latencies:?}");
    // 256 connections held at once, each a few KiB before its head ends (hyper's buffers, were
    // the heads to reach them, would be about 20 KiB each: 5 MiB).
    assert!(growth < 2 << 20, "memory grew {} KiB", growth / 1024);
}

#[test]
fn a_crowd_of_old_light_connections_goes_before_a_genuine_senders_young_ones() {
    // A table of 64 filled by 64 addresses holding one connection each, past their grace.
    let options = ListenOptions::new().max_connections(64);
    let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
    let addr = listener.local_addr();
    let crowd: Vec<TcpStream> = (0..64)
        .map(|i| connect_from(crowd_address(i), addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // A sender with four callbacks in flight, their heads half sent, and then three newcomers.
    let request = post(&path, "{}");
    let (first, rest) = request.split_at(20);
    let mut sender: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = connect(addr);
            stream.write_all(first).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let newcomers: Vec<TcpStream> = (64..67)
        .map(|i| connect_from(crowd_address(i), addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut answered = 0;
    for stream in &mut sender {
        if stream.write_all(rest).is_ok() && response(stream).is_some_and(|(s, _)| s == 200) {
            answered += 1;
        }
    }
    drop((crowd, newcomers));
    assert_eq!(answered, 4, "the sender's young connections were kept");
}

#[test]
fn listen_options_of_any_length_never_panic_and_still_serve() {
    let panics = count_listener_panics();
    let options = ListenOptions::new()
        .read_timeout(Duration::MAX)
        .write_timeout(Duration::MAX)
        .max_connections(usize::MAX)
        .max_connections_per_peer(usize::MAX);
    let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
    assert_eq!(ask(listener.local_addr(), &post(&path, "{}")), Some(200));
    assert!(
        listener.max_connections() < 1 << 24,
        "bounded by the descriptors"
    );
    assert_eq!(panics.load(Ordering::SeqCst), 0);
}

#[test]
fn fast_churn_from_one_address_never_pushes_out_a_genuine_sender_in_its_first_round_trip() {
    let options = ListenOptions::new().max_connections(64);
    let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
    let addr = listener.local_addr();
    let busy = Arc::new(AtomicBool::new(true));
    let opened = Arc::new(AtomicU64::new(0));
    let churn = {
        let (busy, opened) = (Arc::clone(&busy), Arc::clone(&opened));
        std::thread::spawn(move || {
            // Connections opened as fast as they come and held, oldest dropped beyond 200.
            let mut held = std::collections::VecDeque::new();
            let from = Ipv4Addr::new(127, 0, 0, 2);
            let started = Instant::now();
            while busy.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(20) {
                if let Ok(stream) = connect_from(from, addr) {
                    held.push_back(stream);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                if held.len() > 200 {
                    held.pop_front();
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Genuine senders a round trip of 100 ms away: they connect, and their request comes
    // 100 ms later.
    let mut answers = Vec::new();
    for _ in 0..10 {
        let mut stream = connect(addr);
        std::thread::sleep(Duration::from_millis(100));
        let sent = stream.write_all(&post(&path, "{}")).is_ok();
        answers.push(sent.then(|| response(&mut stream)).flatten().map(|r| r.0));
    }
    busy.store(false, Ordering::SeqCst);
    churn.join().unwrap();
    let opened = opened.load(Ordering::SeqCst);
    eprintln!("{opened} connections opened by the churn; genuine answers {answers:?}");
    assert!(opened > 1000, "the churn was fast: {opened}");
    assert!(answers.iter().all(|a| *a == Some(200)), "{answers:?}");
}

#[test]
fn a_full_table_closes_the_connection_waiting_longest_past_its_grace() {
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
    // While all four are in their first second, a fifth cannot push one out: it is closed.
    let mut refused = connect(addr);
    assert!(closed_within(&mut refused, Duration::from_secs(1)));
    // Past it, a fifth is served, and the first of the four is closed for it.
    std::thread::sleep(Duration::from_millis(1100));
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
    println!("address {} {path}", listener.local_addr());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Runs `test` of this binary as a child with `env` set, its input and output piped.
fn child(test: &str, env: (&str, &str)) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env.0, env.1)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The first line of `child`'s output that `parse` accepts (the test harness may have begun
/// the line: `test name ... `).
fn line_from<T>(stdout: &mut impl std::io::BufRead, parse: impl Fn(&str) -> Option<T>) -> T {
    loop {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the child ended");
        if let Some(value) = parse(line.trim()) {
            return value;
        }
    }
}

#[test]
fn a_process_out_of_file_descriptors_closes_the_oldest_connection_rather_than_stall() {
    if std::env::var_os("GPTIMAGE_FEW_FILES").is_some() {
        return serve_with_few_files();
    }
    let mut child = child(
        "a_process_out_of_file_descriptors_closes_the_oldest_connection_rather_than_stall",
        ("GPTIMAGE_FEW_FILES", "1"),
    );
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (addr, path) = line_from(&mut stdout, |line| {
        let (addr, path) = line.split_once("address ")?.1.split_once(' ')?;
        Some((addr.parse::<SocketAddr>().ok()?, path.to_owned()))
    });
    // Far more quiet connections than the child has descriptors left, past their grace.
    let mut quiet: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(1200));
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

/// The child's side of the next test: with a low file limit, a listener and a client; once the
/// parent's crowd is at the listener, it generates a task, downloads it and writes a file, and
/// prints what happened.
fn work_beside_a_crowd() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(256);
    limit.maximum = Some(256);
    setrlimit(Resource::Nofile, limit).unwrap();
    let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
    let listener = receiver.listen("127.0.0.1:0").unwrap();
    println!(
        "listening {} {}",
        listener.local_addr(),
        listener.max_connections()
    );
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let base = std::env::var("GPTIMAGE_CROWD_BASE").unwrap();
    let key = std::env::var("GPTIMAGE_CROWD_KEY").unwrap();
    let client = gptimage_transport::blocking::Client::builder()
        .api_key(key)
        .base_url(base)
        .build()
        .unwrap();
    let request = gptimage_types::GenerateRequest::text_to_image("a lighthouse")
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outcome = client
        .generate(&request)
        .and_then(|task| client.download_to_dir(&task, dir.path()))
        .map_err(|e| e.to_string())
        .and_then(|files| {
            std::fs::write(dir.path().join("note.txt"), b"written beside a crowd")
                .map(|()| files.len())
                .map_err(|e| e.to_string())
        });
    println!("outcome {outcome:?}");
}

#[test]
fn a_crowd_at_the_listener_leaves_the_rest_of_the_process_its_descriptors() {
    if std::env::var_os("GPTIMAGE_CROWD_CHILD").is_some() {
        return work_beside_a_crowd();
    }
    enough_files(2048);
    let config = gptimage_emulator::Config::instant();
    let emulator = Emulator::spawn(config).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_crowd_at_the_listener_leaves_the_rest_of_the_process_its_descriptors",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GPTIMAGE_CROWD_CHILD", "1")
        .env("GPTIMAGE_CROWD_BASE", emulator.base_url())
        .env("GPTIMAGE_CROWD_KEY", emulator.api_key())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (addr, table) = line_from(&mut stdout, |line| {
        let mut words = line.split_once("listening ")?.1.split(' ');
        let addr = words.next()?.parse::<SocketAddr>().ok()?;
        Some((addr, words.next()?.parse::<usize>().ok()?))
    });
    assert!(
        table <= 128,
        "the table keeps a reserve of a 256 limit: {table}"
    );
    // A crowd of 600 quiet connections from 30 addresses, far more than the child's limit.
    let crowd: Vec<TcpStream> = (0..600)
        .filter_map(|i| connect_from(crowd_address(i % 30), addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let outcome = line_from(&mut stdout, |line| {
        line.split_once("outcome ")
            .map(|(_, outcome)| outcome.to_owned())
    });
    drop(crowd);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(
        outcome, "Ok(1)",
        "status, download and file write beside the crowd"
    );
}

#[test]
fn a_pipelining_client_that_never_reads_is_closed_within_the_write_timeout() {
    let options = ListenOptions::new().write_timeout(Duration::from_secs(1));
    let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
    let addr = listener.local_addr();
    let mut stream = connect(addr);
    stream.set_nonblocking(true).unwrap();
    let request = post(&path, "{}");
    // Genuine callbacks, pipelined, until the listener stops taking them (its answers fill the
    // socket's buffers, since nobody reads them) for half a second.
    let (mut sent, mut stalled_since) = (0usize, None);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        match stream.write(&request) {
            Ok(n) => {
                sent += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    stream.set_nonblocking(false).unwrap();
    eprintln!("{} KiB of requests pipelined", sent / 1024);
    assert!(sent > request.len() * 100, "{sent}");
    assert!(
        closed_within(&mut stream, Duration::from_millis(500)),
        "the listener closed the connection whose answers nobody took"
    );
    // Others are still served.
    assert_eq!(ask(addr, &post(&path, "{}")), Some(200));
}

#[test]
fn a_request_being_answered_when_the_listener_stops_is_finished() {
    let (_emulator, listener, path) = setup("127.0.0.1:0", &ListenOptions::new());
    let addr = listener.local_addr();
    let mut busy = connect(addr);
    let request = post(&path, "{\"task_id\":\"t1\"}");
    let (head, body) = request.split_at(request.len() - 5);
    busy.write_all(head).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopping = std::thread::spawn(move || {
        let started = Instant::now();
        drop(listener);
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    busy.write_all(body).unwrap();
    assert_eq!(
        response(&mut busy).map(|r| r.0),
        Some(200),
        "finished, not cut"
    );
    let stopped = stopping.join().unwrap();
    assert!(stopped < Duration::from_secs(3), "{stopped:?}");
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
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
    // Well under the two seconds a request being answered may have: nothing here was.
    assert!(stopped < Duration::from_millis(500), "{stopped:?}");
    assert!(closed_within(&mut kept, Duration::from_millis(500)));
    assert!(closed_within(&mut slow, Duration::from_millis(500)));
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
}

/// Paths no token can have: non-ASCII (a two-byte character where a token's bytes are),
/// percent-encoded, NUL, dots, huge, empty.
fn hostile_paths(genuine: &str) -> Vec<Vec<u8>> {
    let token = genuine.strip_prefix("/hooks/").unwrap();
    let mut paths: Vec<Vec<u8>> = vec![
        format!("/hooks/{}é", &token[..46]).into_bytes(),
        format!("/hooks/é{}", &token[..46]).into_bytes(),
        format!("/hooks/{}ééé{}", &token[..15], &token[21..]).into_bytes(),
        format!("/hooks/{}\u{1F600}", &token[..44]).into_bytes(),
        format!("/hooks/%{}", &token[1..]).into_bytes(),
        // The token percent-encoded (uppercase hex is the same token, and may be accepted).
        format!("/hooks/%{:02X}{}", token.as_bytes()[0], &token[1..]).into_bytes(),
        format!("/hooks/../hooks/{token}").into_bytes(),
        format!("/hooks/{token}/").into_bytes(),
        format!("/hooks/{token}{token}").into_bytes(),
        b"/hooks/".to_vec(),
        b"/".to_vec(),
        b"*".to_vec(),
        format!("/hooks/{}", "f".repeat(8000)).into_bytes(),
    ];
    let mut invalid = format!("/hooks/{}", &token[..47]).into_bytes();
    invalid.push(0xff);
    paths.push(invalid);
    paths
}

#[test]
fn hostile_paths_get_a_4xx_and_never_a_panic_through_the_listener_handle_and_axum() {
    let panics = count_listener_panics();
    let (_emulator, listener, path) = setup("127.0.0.1:0", &ListenOptions::new());
    let addr = listener.local_addr();
    let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
    #[cfg(feature = "axum")]
    let router: axum::Router = receiver.axum_router();
    #[cfg(feature = "axum")]
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for hostile in hostile_paths(&path) {
        let shown = String::from_utf8_lossy(&hostile).into_owned();
        // The listener: a 4xx, or a closed connection (hyper refuses some request lines).
        let mut request = b"POST ".to_vec();
        request.extend(&hostile);
        request.extend(b" HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}");
        let answer = ask(addr, &request);
        assert!(
            answer.is_none_or(|s| (400..500).contains(&s)),
            "{shown}: {answer:?}"
        );
        // `handle` and (with the `axum` feature) the axum router, with whatever `http` makes
        // of the path.
        let Ok(uri) = http::Uri::try_from(hostile.as_slice()) else {
            continue;
        };
        let request = http::Request::post(uri.clone())
            .body(b"{}".to_vec())
            .unwrap();
        let status = receiver.handle(request).status();
        assert!(status.is_client_error(), "{shown}: {status}");
        #[cfg(feature = "axum")]
        {
            let request = http::Request::post(uri)
                .body(axum::body::Body::from("{}"))
                .unwrap();
            use tower::ServiceExt;
            let status = runtime
                .block_on(router.clone().oneshot(request))
                .unwrap()
                .status();
            assert!(status.is_client_error(), "{shown}: {status}");
        }
    }
    // The genuine path still works after all that.
    assert_eq!(ask(addr, &post(&path, "{}")), Some(200));
    assert_eq!(panics.load(Ordering::SeqCst), 0, "the listener panicked");
}

#[cfg(feature = "axum")]
#[test]
fn the_axum_router_refuses_on_the_head_without_reading_a_body() {
    let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
    let router: axum::Router = receiver.axum_router();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A body that never ends: reading it would hang this test.
    let endless = || {
        let (sender, body) =
            tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        std::mem::forget(sender);
        axum::body::Body::from_stream(tokio_stream_of(body))
    };
    use tower::ServiceExt;
    let forged = http::Request::post(format!("/hooks/{}", "ab".repeat(24)))
        .header("content-length", "10")
        .body(endless())
        .unwrap();
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), router.clone().oneshot(forged)).await
    });
    let answer = answer.expect("answered without reading the body").unwrap();
    assert_eq!(answer.status(), 404);
    assert_eq!(answer.headers()["connection"], "close");
    let get = http::Request::get("/hooks/x").body(endless()).unwrap();
    let answer = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(2), router.oneshot(get)).await })
        .expect("answered without reading the body")
        .unwrap();
    assert_eq!(answer.status(), 405);
}

#[cfg(feature = "axum")]
/// A stream of a channel's items (what tokio-stream's `ReceiverStream` does), for a body.
fn tokio_stream_of<T: Send + 'static>(
    receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send {
    struct Stream<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Stream<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    Stream(receiver)
}

#[cfg(feature = "axum")]
#[test]
fn a_receiver_behind_a_path_stripping_proxy_takes_its_callbacks_at_its_local_path() {
    let receiver =
        Receiver::with_local_path("http://127.0.0.1:9/gptimage/hooks/", "/hooks/").unwrap();
    let listener = receiver.listen("127.0.0.1:0").unwrap();
    let (_emulator, public) = genuine_callback(receiver.clone());
    assert!(public.starts_with("/gptimage/hooks/"), "{public}");
    let local = public.strip_prefix("/gptimage").unwrap();
    let addr = listener.local_addr();
    assert_eq!(ask(addr, &post(local, "{}")), Some(200));
    assert_eq!(ask(addr, &post(&public, "{}")), Some(404));
    // Nested in an axum router under the prefix the proxy would strip.
    let app: axum::Router = axum::Router::new().nest("/gptimage", receiver.axum_router());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    use tower::ServiceExt;
    let nested = format!("/gptimage{local}");
    let request = http::Request::post(nested.as_str())
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let status = runtime.block_on(app.oneshot(request)).unwrap().status();
    assert_eq!(status, 200, "{nested}");
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
        for (path, status) in [(path.as_str(), 200), (&path, 200), ("/hooks/forged", 404)] {
            stream.write_all(&post(path, "{}")).unwrap();
            assert_eq!(response(&mut stream).unwrap().0, status);
        }
        // The forged request's connection is closed after its answer.
        let mut rest = Vec::new();
        assert!(stream.read_to_end(&mut rest).is_err() || rest.is_empty());
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

    #[test]
    fn a_crowd_of_slow_handshakes_never_keeps_a_genuine_callback_out() {
        enough_files(2048);
        let tls = ServerTls::from_pem_files(fixture("localhost.pem"), fixture("localhost-key.pem"))
            .unwrap();
        let read_timeout = Duration::from_secs(3);
        let options = ListenOptions::new()
            .tls(tls)
            .max_connections(256)
            .read_timeout(read_timeout);
        let (_emulator, listener, path) = setup("127.0.0.1:0", &options);
        let addr = listener.local_addr();
        let busy = Arc::new(AtomicBool::new(true));
        // 600 connections from 30 addresses (20 each: under their share, the table full of
        // them), each sending the start of a ClientHello a byte every 50 ms (a record of 512
        // bytes that never arrives).
        let crowd = {
            let busy = Arc::clone(&busy);
            std::thread::spawn(move || {
                let mut hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
                hello.extend(std::iter::repeat_n(7u8, 600));
                let crowd = Crowd::run(
                    addr,
                    600,
                    30,
                    hello,
                    Duration::from_millis(50),
                    Duration::from_secs(5),
                    read_timeout,
                );
                busy.store(false, Ordering::SeqCst);
                crowd
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        // A sender whose connection is refused tries again (as the service's callbacks are
        // retried): while every place is held by a young connection, a newcomer may be
        // refused; the crowd's slow connections may go for it within a quarter of a second.
        let deliver = || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                let mut stream = tls_client(addr);
                if stream.write_all(&post(&path, "{}")).is_ok()
                    && let Some((status, _)) = response(&mut stream)
                {
                    assert_eq!(status, 200);
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("no genuine callback got through in 5 s");
        };
        let mut latencies = Vec::new();
        while busy.load(Ordering::SeqCst) && latencies.len() < 40 {
            latencies.push(deliver());
            std::thread::sleep(Duration::from_millis(100));
        }
        let crowd = crowd.join().unwrap();
        let worst = latencies.iter().max().copied().unwrap();
        eprintln!(
            "{} genuine HTTPS callbacks beside 600 slow handshakes: worst {worst:?}; {} crowd \
             connections closed",
            latencies.len(),
            crowd.closed.load(Ordering::SeqCst)
        );
        assert!(latencies.len() >= 10, "{latencies:?}");
        assert!(worst < Duration::from_secs(2), "{latencies:?}");
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
