//! The built-in webhook listener under attack: forged callbacks answered per second under a
//! flood from 64 keep-alive connections, and a genuine callback's latency (median, p99) when
//! the listener is idle, flooded, or held by a slow-loris crowd of 1,000 connections; with the
//! memory the crowd costs.
//!
//! Run with `cargo bench -p gptimage-transport --bench listener_flood`. Rounds (`BENCH_ROUNDS`,
//! default 3, each `BENCH_SECONDS`, default 3) are interleaved: idle, flood, crowd, idle, flood,
//! crowd… Each genuine callback is a fresh connection, as the service's are; the flood and the
//! crowd run on threads of this process, sharing its cores with the listener. Everything is on
//! loopback and every loop is bounded by the round's length.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/support/genuine.rs"]
mod genuine;

use genuine::genuine_callback;
use gptimage_transport::webhook::Receiver;

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

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Clone, Copy, PartialEq)]
enum Load {
    Idle,
    Flood,
    Crowd,
}

struct Round {
    latencies: Vec<Duration>,
    forged_per_second: f64,
    crowd_kib: u64,
}

fn round(addr: SocketAddr, path: &str, load: Load, seconds: u64) -> Round {
    let busy = Arc::new(AtomicBool::new(true));
    let forged = Arc::new(AtomicU64::new(0));
    let before = resident_kib();
    let mut attackers = Vec::new();
    let length = Duration::from_secs(seconds);
    match load {
        Load::Idle => {}
        Load::Flood => {
            for i in 0..64u64 {
                let (busy, forged) = (busy.clone(), forged.clone());
                let request = post(&format!("/hooks/{i:016x}{:032x}", i * 7919));
                attackers.push(std::thread::spawn(move || {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        return;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let started = Instant::now();
                    while busy.load(Ordering::Relaxed) && started.elapsed() < length * 2 {
                        if stream.write_all(&request).is_err() || status(&mut stream) != Some(404) {
                            return;
                        }
                        forged.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        Load::Crowd => {
            let busy = busy.clone();
            attackers.push(std::thread::spawn(move || {
                let mut crowd: Vec<TcpStream> = (0..1000)
                    .filter_map(|_| TcpStream::connect(addr).ok())
                    .collect();
                for stream in &crowd {
                    let _ = stream.set_nonblocking(true);
                }
                let started = Instant::now();
                while busy.load(Ordering::Relaxed) && started.elapsed() < length * 2 {
                    for stream in &mut crowd {
                        let _ = stream.write(b"x");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let crowd_kib = resident_kib().saturating_sub(before);
    let request = post(path);
    let mut latencies = Vec::new();
    let (started, forged_before) = (Instant::now(), forged.load(Ordering::Relaxed));
    while started.elapsed() < length && latencies.len() < 100_000 {
        let sent = Instant::now();
        let mut stream = TcpStream::connect(addr).expect("the listener accepts");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        stream.write_all(&request).unwrap();
        assert_eq!(status(&mut stream), Some(200), "a genuine callback");
        latencies.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    let forged_per_second =
        (forged.load(Ordering::Relaxed) - forged_before) as f64 / started.elapsed().as_secs_f64();
    busy.store(false, Ordering::SeqCst);
    for attacker in attackers {
        let _ = attacker.join();
    }
    latencies.sort();
    Round {
        latencies,
        forged_per_second,
        crowd_kib,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    // The crowd holds a thousand connections from both ends in this process.
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = limit.maximum;
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, limit);
    let rounds = setting("BENCH_ROUNDS", 3, 20);
    let seconds = setting("BENCH_SECONDS", 3, 60);
    let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
    let listener = receiver.listen("127.0.0.1:0").expect("the listener starts");
    let (_emulator, path) = genuine_callback(receiver);
    let addr = listener.local_addr();

    let loads = [
        (Load::Idle, "idle"),
        (Load::Flood, "flood"),
        (Load::Crowd, "crowd"),
    ];
    let mut results: Vec<Vec<Round>> = loads.iter().map(|_| Vec::new()).collect();
    for n in 0..rounds {
        for (i, (load, name)) in loads.iter().enumerate() {
            let r = round(addr, &path, *load, seconds);
            println!(
                "round {n} {name:>5}: {} genuine, median {:?}, p99 {:?}{}{}",
                r.latencies.len(),
                percentile(&r.latencies, 0.5),
                percentile(&r.latencies, 0.99),
                if *load == Load::Flood {
                    format!(", {:.0} forged/s answered 404", r.forged_per_second)
                } else {
                    String::new()
                },
                if *load == Load::Crowd {
                    format!(", crowd of 1000 cost {} KiB", r.crowd_kib)
                } else {
                    String::new()
                },
            );
            results[i].push(r);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let summary = |i: usize, p: f64| {
        median(
            results[i]
                .iter()
                .map(|r| ms(percentile(&r.latencies, p)))
                .collect(),
        )
    };
    println!("\nmedians over {rounds} interleaved rounds of {seconds} s:");
    for (i, (load, name)) in loads.iter().enumerate() {
        let (p50, p99) = (summary(i, 0.5), summary(i, 0.99));
        let ratio = |j: usize, p: f64| {
            median(
                results[i]
                    .iter()
                    .zip(&results[j])
                    .map(|(a, b)| {
                        ms(percentile(&a.latencies, p)) / ms(percentile(&b.latencies, p)).max(1e-6)
                    })
                    .collect(),
            )
        };
        let mut line = format!("{name:>5}: genuine callback median {p50:.3} ms, p99 {p99:.3} ms");
        if *load != Load::Idle {
            line.push_str(&format!(
                " ({:.2}x and {:.2}x idle)",
                ratio(0, 0.5),
                ratio(0, 0.99)
            ));
        }
        if *load == Load::Flood {
            let rate = median(results[i].iter().map(|r| r.forged_per_second).collect());
            line.push_str(&format!("; {rate:.0} forged callbacks/s answered 404"));
        }
        if *load == Load::Crowd {
            // The first crowd round grows the heap; later ones reuse what it freed.
            let kib = results[i].iter().map(|r| r.crowd_kib).max().unwrap_or(0);
            line.push_str(&format!(
                "; the crowd of 1000 grew memory by {kib} KiB at most"
            ));
        }
        println!("{line}");
    }
}
