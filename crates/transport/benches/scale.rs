//! The SDK at scale, against the emulator on loopback.
//!
//! 1. `BENCH_TASKS` tasks (default 200) submitted at once through the async client, paced at the
//!    emulator's limit of `BENCH_RATE` new tasks a second (default 20, refused with bare 429s),
//!    each waited for with webhooks, in two rounds through one client (the first learns the
//!    limit, the second runs at it): the wall time against the physical minimum (N / R plus one
//!    task's time), the answers of 429, and the status requests per task. `BENCH_CLIENT_RATE`
//!    tells the client another rate than the limit (default: the limit).
//! 2. `BENCH_WAITS` waits in flight at once (default 10,000) on tasks that run long, expecting
//!    callbacks (so pausing before their first poll): the resident memory each adds (the
//!    emulator's own memory for those tasks is already counted before the waits start).
//!
//! Run with `cargo bench -p gptimage-transport --bench scale` (Linux: it reads `/proc`).

use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::webhook::Receiver;
use gptimage_transport::{Client, Rate, RetryPolicy};
use gptimage_types::{GenerateRequest, Quality};

const TASK_TIME: Duration = Duration::from_secs(1);

fn setting(name: &str, default: u64, max: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn request(prompt: String) -> GenerateRequest {
    GenerateRequest::text_to_image(prompt)
        .quality(Quality::Low)
        .build()
        .unwrap()
}

fn main() {
    let tasks = setting("BENCH_TASKS", 200, 5_000);
    let rate = setting("BENCH_RATE", 20, 1_000) as u32;
    // The rate the client is told (`BENCH_CLIENT_RATE`, default the true limit): set it higher to
    // watch the pacer learn the limit.
    let told = setting("BENCH_CLIENT_RATE", u64::from(rate), 10_000) as u32;
    let waits = setting("BENCH_WAITS", 10_000, 50_000) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1. Throughput at the service's limit.
    let config = Config::instant()
        .with_timings(Duration::ZERO, TASK_TIME)
        .with_bare_rate_limit(rate, Duration::from_secs(1));
    let emulator = Emulator::spawn(config).expect("the emulator starts");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let receiver = Receiver::new(&format!("http://127.0.0.1:{port}/hooks/")).unwrap();
    let _listener = receiver.listen(("127.0.0.1", port)).unwrap();
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .rate_limit(Rate::new(told, Duration::from_secs(1)))
        .retry(RetryPolicy::default().max_rate_limited(1_000))
        .webhooks(receiver)
        .wait_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    // Two rounds through the same client: the first learns the service's limit, the second runs
    // at it. Each round's 429s are counted apart.
    for round in ["learning", "learned"] {
        let before = emulator.counters();
        let started = Instant::now();
        runtime.block_on(async {
            let handles: Vec<_> = (0..tasks)
                .map(|i| {
                    let client = client.clone();
                    let prompt = format!("scale {round} {i}");
                    tokio::spawn(async move { client.generate(&request(prompt)).await })
                })
                .collect();
            for handle in handles {
                handle.await.unwrap().expect("every task succeeds");
            }
        });
        let wall = started.elapsed();
        let minimum = Duration::from_secs_f64(tasks as f64 / f64::from(rate)) + TASK_TIME;
        let after = emulator.counters();
        let submissions = after.generate_requests - before.generate_requests;
        let refused = submissions - (after.tasks_created - before.tasks_created);
        println!(
            "{tasks} tasks at a limit of {rate} new tasks/s, client told {told}/s, with webhooks \
             ({round} round)"
        );
        println!(
            "  wall time {wall:.1?} = {:.3}× the physical minimum ({minimum:.1?})",
            wall.as_secs_f64() / minimum.as_secs_f64()
        );
        println!(
            "  429 answers: {refused} ({:.1}% of {submissions} submissions), status requests per task {:.2}",
            100.0 * refused as f64 / submissions as f64,
            (after.status_requests - before.status_requests) as f64 / tasks as f64
        );
    }
    drop(emulator);

    // 2. Memory per waiting task: waits expecting a callback, as at scale, pause before their
    // first poll (20 s), so what is measured is a wait itself, not a connection.
    let config = Config::instant().with_timings(Duration::from_secs(3600), Duration::ZERO);
    let emulator = Emulator::spawn(config).expect("the emulator starts");
    let receiver = Receiver::new("http://127.0.0.1:9/hooks/").unwrap();
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .webhooks(receiver)
        .wait_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let ids: Vec<String> = runtime.block_on(async {
        let mut ids = Vec::with_capacity(waits);
        for i in 0..waits {
            ids.push(
                client
                    .submit(&request(format!("wait {i}")))
                    .await
                    .unwrap()
                    .task_id,
            );
        }
        ids
    });
    let before = resident_kib();
    let handles: Vec<_> = runtime.block_on(async {
        let handles: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let client = client.clone();
                tokio::spawn(async move { client.wait(&id).await })
            })
            .collect();
        // Every wait has started and is pausing before its first poll.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            emulator.counters().status_requests,
            0,
            "no wait has polled yet"
        );
        handles
    });
    let after = resident_kib();
    println!(
        "{waits} waits in flight: {:.1} KiB resident per waiting task ({} KiB before, {} KiB after)",
        (after.saturating_sub(before)) as f64 / waits as f64,
        before,
        after
    );
    for handle in handles {
        handle.abort();
    }
}
