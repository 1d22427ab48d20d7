//! `generate_many` at scale: memory bounded by the concurrency, time linear in the count.
//!
//! An in-process transport answers at once (each task: created, three `IN_PROGRESS`, then
//! `SUCCESS`), and each wait sleeps 1 ms between polls, so what is measured is the SDK: its
//! tasks, timers, events and bookkeeping, 64 requests in flight.
//!
//! 1. `BENCH_COUNTS` requests (default `100000,1000000`) through one `generate_many` each: the
//!    time, the requests a second, and the peak resident memory above the start (sampled every
//!    20 ms), which must not grow with the count.
//! 2. Interleaved rounds (A B A B …) of `BENCH_ROUND` requests (default 20,000): `generate_many`
//!    against a baseline of the same work written by hand (a `JoinSet` of `submit` then
//!    `wait`, 64 at a time); the median ratio of their times.
//!
//! Run with `cargo bench -p gptimage-transport --bench many` (Linux: it reads `/proc`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gptimage_transport::transport::{HttpRequest, HttpResponse, SendOptions, TransportError};
use gptimage_transport::{Client, ManyEvent, PollSchedule};
use gptimage_types::{GenerateRequest, Quality};

const IN_FLIGHT: usize = 64;
/// Status answers per task before it succeeds.
const RUNNING: u32 = 3;

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The service, in-process: ids from a counter; a task's polls counted until it succeeds, then
/// forgotten (so the service's own memory does not grow with the count).
#[derive(Default)]
struct Service {
    next: AtomicU64,
    polls: Mutex<HashMap<u64, u32>>,
}

impl Service {
    fn answer(&self, request: &HttpRequest) -> HttpResponse {
        let body = if request.method() == http::Method::POST {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            format!(r#"{{"code":200,"data":{{"task_id":"t{id}","status":"IN_PROGRESS"}}}}"#)
        } else {
            let query = request.uri().query().unwrap_or_default();
            let id: u64 = query
                .split("task_id=t")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let mut polls = self.polls.lock().unwrap();
            let seen = polls.entry(id).or_insert(0);
            *seen += 1;
            if *seen > RUNNING {
                polls.remove(&id);
                format!(
                    r#"{{"code":200,"data":{{"task_id":"t{id}","status":"SUCCESS","response":["https://cdn.bench/{id}.png"]}}}}"#
                )
            } else {
                format!(r#"{{"code":200,"data":{{"task_id":"t{id}","status":"IN_PROGRESS"}}}}"#)
            }
        };
        http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(body.into_bytes())
            .unwrap()
    }
}

fn client(service: &Arc<Service>) -> Client {
    let config = Client::builder()
        .api_key("sk-bench")
        .base_url("https://api.bench.invalid/api")
        .poll(PollSchedule::fixed(Duration::from_millis(1)))
        .wait_timeout(Duration::from_secs(600))
        .config()
        .unwrap();
    let service = Arc::clone(service);
    Client::with_transport(config, move |request: HttpRequest, _: SendOptions| {
        let service = Arc::clone(&service);
        async move { Ok::<_, TransportError>(service.answer(&request)) }
    })
}

fn request() -> GenerateRequest {
    GenerateRequest::text_to_image("a benchmark")
        .quality(Quality::Low)
        .build()
        .unwrap()
}

/// `n` requests through `generate_many`; how many succeeded.
async fn many(client: &Client, n: usize) -> usize {
    let mut events = client.generate_many((0..n).map(|_| request()), IN_FLIGHT);
    let mut done = 0;
    while let Some(event) = events.next().await {
        if let ManyEvent::Finished { result: Ok(_), .. } = event {
            done += 1;
        }
    }
    done
}

/// The same work by hand: `submit` then `wait`, 64 at a time.
async fn by_hand(client: &Client, n: usize) -> usize {
    let mut running = tokio::task::JoinSet::new();
    let (mut started, mut done) = (0, 0);
    loop {
        while running.len() < IN_FLIGHT && started < n {
            started += 1;
            let client = client.clone();
            running.spawn(async move {
                let created = client.submit(&request()).await?;
                client.wait(&created.task_id).await
            });
        }
        match running.join_next().await {
            Some(Ok(Ok(_))) => done += 1,
            Some(_) => {}
            None => return done,
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let round: usize = std::env::var("BENCH_ROUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let counts: Vec<usize> = std::env::var("BENCH_COUNTS")
        .unwrap_or_else(|_| "100000,1000000".to_owned())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1. Memory and time against the count, first: nothing before it has grown the heap.
    for n in counts {
        let service = Arc::new(Service::default());
        let client = client(&service);
        let start = resident_kib();
        let peak = Arc::new(AtomicU64::new(start));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(resident_kib(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let started = Instant::now();
        let done = runtime.block_on(many(&client, n));
        let took = started.elapsed();
        sampling.store(false, Ordering::Relaxed);
        sampler.join().unwrap();
        assert_eq!(done, n);
        let grew = peak.load(Ordering::Relaxed).saturating_sub(start);
        println!(
            "{n} requests: {:.1} s ({:.0} a second, {:.2} µs each), peak resident memory +{:.1} MiB \
             above the start ({:.3} KiB per request)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / n as f64,
            grew as f64 / 1024.0,
            grew as f64 / n as f64
        );
    }
    // 2. Against the hand-written baseline, interleaved.
    let mut ratios = Vec::new();
    for _ in 0..5 {
        let service = Arc::new(Service::default());
        let client = client(&service);
        let started = Instant::now();
        let done = runtime.block_on(many(&client, round));
        let ours = started.elapsed();
        assert_eq!(done, round);
        let started = Instant::now();
        let done = runtime.block_on(by_hand(&client, round));
        let baseline = started.elapsed();
        assert_eq!(done, round);
        ratios.push(ours.as_secs_f64() / baseline.as_secs_f64());
        println!(
            "round of {round}: generate_many {:.2} s, by hand {:.2} s",
            ours.as_secs_f64(),
            baseline.as_secs_f64()
        );
    }
    println!(
        "generate_many / by hand: median ratio {:.3} over {} interleaved rounds",
        median(ratios.clone()),
        ratios.len()
    );
}
