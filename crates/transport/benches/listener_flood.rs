//! The built-in webhook listener under attack: a genuine callback's latency (median, p99) when
//! the listener is idle; flooded with forged callbacks (each on a connection of its own, since
//! a forged request's connection is closed); held by a slow-loris crowd of 1,000 connections
//! sending heads a byte at a time; and by crowds of 200 and 1,000 connections sending declared
//! 64 KiB bodies a byte every 10 ms, to a forged path and to a genuine one. For each crowd, the
//! memory it cost the process, in all and per connection.
//!
//! Run with `cargo bench -p gptimage-transport --bench listener_flood`. Each round runs in a
//! process of its own (so each memory figure is that round's alone), and rounds are interleaved:
//! idle, flood, heads, …, idle, flood, … (`BENCH_ROUNDS`, default 3, each `BENCH_SECONDS`,
//! default 3). The attackers connect from other loopback addresses (127.0.1.x, …) than the
//! genuine sender (127.0.0.1), and run on threads of the round's process, sharing its cores
//! with the listener. Every loop is bounded by the round's length.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/support/genuine.rs"]
mod genuine;
#[path = "../tests/support/net.rs"]
mod net;

use genuine::genuine_callback;
use gptimage_transport::webhook::Receiver;
use net::{connect_from, crowd_address, enough_files, resident};

fn setting(name: &str, default: u64, max: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

fn post(path: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nhost: hooks\r\ncontent-length: 2\r\n\r\n{{}}").into_bytes()
}

/// Reads one response's status line and headers (the listener's bodies are small and sized);
/// the status.
fn status(stream: &mut TcpStream) -> Option<u16> {
    let mut data = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&data[..end]).ok()?.to_owned();
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())?;
            while data.len() < end + 4 + length {
                let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
                data.extend_from_slice(&buf[..n]);
            }
            return head.get(9..12)?.parse().ok();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The loads, by the name a round's process is given.
const LOADS: &[(&str, &str)] = &[
    ("idle", "idle"),
    ("flood", "64 threads of forged callbacks"),
    ("heads", "1000 slow heads"),
    ("forged200", "200 slow bodies to a forged path"),
    ("genuine200", "200 slow bodies to a genuine path"),
    ("genuine1000", "1000 slow bodies to a genuine path"),
];

/// A crowd of `size` connections from 16 addresses, each sending `request` a byte every
/// `every`; a closed one is replaced at once.
fn crowd(
    addr: SocketAddr,
    size: usize,
    request: Vec<u8>,
    every: Duration,
    busy: Arc<AtomicBool>,
    length: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let open = |i: usize| {
            let stream = connect_from(crowd_address(i % 16), addr).ok()?;
            stream.set_nonblocking(true).ok()?;
            Some((stream, 0usize))
        };
        let mut members: Vec<_> = (0..size).map(|i| (i, open(i))).collect();
        let started = Instant::now();
        while busy.load(Ordering::Relaxed) && started.elapsed() < length * 2 {
            let round = Instant::now();
            for (i, member) in members.iter_mut() {
                let gone = match member {
                    None => true,
                    Some((stream, sent)) => {
                        let mut sink = [0u8; 256];
                        let closed = match stream.read(&mut sink) {
                            Ok(_) => true,
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                        };
                        let byte = &request[*sent % request.len()..][..1];
                        *sent += 1;
                        closed || stream.write(byte).is_err()
                    }
                };
                if gone {
                    *member = open(*i);
                }
            }
            std::thread::sleep(every.saturating_sub(round.elapsed()));
        }
    })
}

fn slow_body(path: &str) -> Vec<u8> {
    let mut request =
        format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 65536\r\n\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'x', 65536));
    request
}

/// One round in this process: the load, then genuine callbacks for `seconds`; prints
/// `result <count> <p50 ns> <p99 ns> <memory KiB> <forged per second>`.
fn run_round(load: &str, seconds: u64) {
    enough_files(4096);
    let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
    let listener = receiver.listen("127.0.0.1:0").expect("the listener starts");
    let (_emulator, path) = genuine_callback(receiver);
    let addr = listener.local_addr();
    // Warm: the first callbacks grow what every round needs.
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&post(&path)).unwrap();
        assert_eq!(status(&mut stream), Some(200));
    }
    let before = resident();
    let busy = Arc::new(AtomicBool::new(true));
    let forged = Arc::new(AtomicU64::new(0));
    let length = Duration::from_secs(seconds);
    let mut attackers = Vec::new();
    match load {
        "idle" => {}
        "flood" => {
            for i in 0..64u64 {
                let (busy, forged) = (busy.clone(), forged.clone());
                let request = post(&format!("/hooks/{i:016x}{:032x}", i * 7919));
                attackers.push(std::thread::spawn(move || {
                    let started = Instant::now();
                    while busy.load(Ordering::Relaxed) && started.elapsed() < length * 2 {
                        let Ok(mut stream) = connect_from(crowd_address(i as usize), addr) else {
                            continue;
                        };
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        if stream.write_all(&request).is_ok() && status(&mut stream) == Some(404) {
                            forged.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        "heads" => {
            let head = b"POST /hooks/0123456789abcdef HTTP/1.1\r\nhost: x\r\nx-a: ".repeat(50);
            let every = Duration::from_millis(50);
            attackers.push(crowd(addr, 1000, head, every, busy.clone(), length));
        }
        "forged200" => {
            let request = slow_body("/hooks/0123456789abcdef0123456789abcdef0123456789abcdef");
            let every = Duration::from_millis(10);
            attackers.push(crowd(addr, 200, request, every, busy.clone(), length));
        }
        "genuine200" | "genuine1000" => {
            let size = if load == "genuine200" { 200 } else { 1000 };
            let every = Duration::from_millis(10);
            attackers.push(crowd(
                addr,
                size,
                slow_body(&path),
                every,
                busy.clone(),
                length,
            ));
        }
        other => panic!("no load named {other}"),
    }
    std::thread::sleep(Duration::from_millis(500));
    let request = post(&path);
    let mut latencies = Vec::new();
    let (started, forged_before) = (Instant::now(), forged.load(Ordering::Relaxed));
    let mut grown = 0;
    while started.elapsed() < length && latencies.len() < 100_000 {
        let sent = Instant::now();
        let mut stream = TcpStream::connect(addr).expect("the listener accepts");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        stream.write_all(&request).unwrap();
        assert_eq!(status(&mut stream), Some(200), "a genuine callback");
        latencies.push(sent.elapsed());
        grown = grown.max(resident().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(5));
    }
    let forged_per_second =
        (forged.load(Ordering::Relaxed) - forged_before) as f64 / started.elapsed().as_secs_f64();
    busy.store(false, Ordering::SeqCst);
    for attacker in attackers {
        let _ = attacker.join();
    }
    latencies.sort();
    println!(
        "result {} {} {} {} {forged_per_second:.0}",
        latencies.len(),
        percentile(&latencies, 0.5).as_nanos(),
        percentile(&latencies, 0.99).as_nanos(),
        grown / 1024,
    );
}

struct Round {
    count: u64,
    p50: Duration,
    p99: Duration,
    kib: u64,
    forged_per_second: f64,
}

/// Runs one round in a process of its own.
fn round(load: &str, seconds: u64) -> Round {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--round", load, &seconds.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the round's process runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("the {load} round printed no result: {stdout}"));
    let mut fields = line.split(' ');
    let mut next = || {
        fields
            .next()
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Round {
        count: next() as u64,
        p50: Duration::from_nanos(next() as u64),
        p99: Duration::from_nanos(next() as u64),
        kib: next() as u64,
        forged_per_second: next(),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--round") {
        let seconds = args.get(at + 2).and_then(|s| s.parse().ok()).unwrap_or(3);
        return run_round(&args[at + 1], seconds);
    }
    let rounds = setting("BENCH_ROUNDS", 3, 20);
    let seconds = setting("BENCH_SECONDS", 3, 60);
    let mut results: Vec<Vec<Round>> = LOADS.iter().map(|_| Vec::new()).collect();
    for n in 0..rounds {
        for (i, (load, name)) in LOADS.iter().enumerate() {
            let r = round(load, seconds);
            println!(
                "round {n} {name}: {} genuine, median {:?}, p99 {:?}, memory +{} KiB{}",
                r.count,
                r.p50,
                r.p99,
                r.kib,
                if *load == "flood" {
                    format!(", {:.0} forged/s answered 404", r.forged_per_second)
                } else {
                    String::new()
                },
            );
            results[i].push(r);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nmedians over {rounds} interleaved rounds of {seconds} s, each in its own process:");
    for (i, (load, name)) in LOADS.iter().enumerate() {
        let rounds = &results[i];
        let p50 = median(rounds.iter().map(|r| ms(r.p50)).collect());
        let p99 = median(rounds.iter().map(|r| ms(r.p99)).collect());
        let ratio = median(
            rounds
                .iter()
                .zip(&results[0])
                .map(|(a, idle)| ms(a.p99) / ms(idle.p99).max(1e-6))
                .collect(),
        );
        let kib = median(rounds.iter().map(|r| r.kib as f64).collect());
        let mut line = format!("{name}: genuine callback median {p50:.3} ms, p99 {p99:.3} ms");
        if *load != "idle" {
            line.push_str(&format!(" ({ratio:.2}x idle's p99)"));
        }
        let size = load
            .trim_start_matches(|c: char| c.is_ascii_alphabetic())
            .parse::<f64>()
            .ok()
            .or((*load == "heads").then_some(1000.0));
        match size {
            Some(size) => line.push_str(&format!(
                "; memory +{kib:.0} KiB ({:.1} KiB a connection)",
                kib / size
            )),
            None => line.push_str(&format!("; memory +{kib:.0} KiB")),
        }
        if *load == "flood" {
            let rate = median(rounds.iter().map(|r| r.forged_per_second).collect());
            line.push_str(&format!("; {rate:.0} forged callbacks/s answered 404"));
        }
        println!("{line}");
    }
}
