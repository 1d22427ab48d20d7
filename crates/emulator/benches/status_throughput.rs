//! How many `GET /api/status` requests per second the emulator serves on this machine.
//!
//! Run with `cargo bench -p gptimage-emulator`. The emulator runs on a thread with its own
//! two-worker runtime; the load comes from a reqwest client with a fixed number of requests in
//! flight over keep-alive connections. The run is bounded in time and in request count.

use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator};

const CONCURRENCY: usize = 16;
const MAX_REQUESTS: usize = 200_000;
/// Finished tasks in the store while measuring (`BENCH_TASKS`), so lookups face a realistic store.
const DEFAULT_TASKS: usize = 2000;

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0_f64)
        .clamp(0.5, 60.0);
    let emulator = Emulator::spawn(Config::instant()).expect("the emulator starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (count, elapsed, latencies) = runtime.block_on(async {
        // reqwest's rustls has no provider here: the benchmark installs one for its own client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(CONCURRENCY)
            .build()
            .unwrap();
        let base = emulator.base_url().to_owned();
        let key = emulator.api_key().to_owned();
        let created: serde_json::Value = http
            .post(format!("{base}/generate"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"prompt": "benchmark", "quality": "low"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let tasks: usize = std::env::var("BENCH_TASKS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_TASKS)
            .min(10_000);
        for n in 1..tasks {
            http.post(format!("{base}/generate"))
                .bearer_auth(&key)
                .json(&serde_json::json!({"prompt": format!("filler {n}"), "quality": "low"}))
                .send()
                .await
                .unwrap();
        }
        let url = format!(
            "{base}/status?task_id={}",
            created["data"]["task_id"].as_str().unwrap()
        );
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (http, url, key) = (http.clone(), url.clone(), key.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline && latencies.len() < MAX_REQUESTS / CONCURRENCY
                    {
                        let sent = Instant::now();
                        let response = http.get(&url).bearer_auth(&key).send().await.unwrap();
                        assert!(response.status().is_success());
                        response.bytes().await.unwrap();
                        latencies.push(sent.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for worker in workers {
            latencies.extend(worker.await.unwrap());
        }
        (latencies.len(), started.elapsed(), latencies)
    });
    let mut latencies = latencies;
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "emulator status throughput: {:.0} requests/s ({count} requests in {:.2} s, {CONCURRENCY} in flight, client and server on the same {} cores, {} tasks in the store)",
        count as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        emulator.counters().tasks_created,
    );
    println!(
        "latency: p50 {:?}, p99 {:?}, max {:?}",
        percentile(0.5),
        percentile(0.99),
        latencies.last().unwrap()
    );
}
