//! What webhooks buy a wait: status requests per task, and how long after a task ends its wait
//! ends, polling on the documented 5–10 s schedule versus ending on the callback (with the
//! default fallback polling), for tasks of tens of seconds, emulated.
//!
//! Run with `cargo bench -p gptimage-transport --bench webhooks`. Each round runs `BENCH_TASKS`
//! (default 6) tasks of `BENCH_TASK_SECONDS` (default 20) at once through the async client,
//! polling and webhooks interleaved over `BENCH_ROUNDS` (default 2) rounds; medians over all
//! tasks of an arm are printed. Everything is on loopback and bounded by the wait deadline.

use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::webhook::Receiver;
use gptimage_transport::{Client, PollSchedule};
use gptimage_types::{GenerateRequest, Quality};

fn setting(name: &str, default: u64, max: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

fn main() {
    let tasks = setting("BENCH_TASKS", 6, 64) as usize;
    let seconds = setting("BENCH_TASK_SECONDS", 20, 120);
    let rounds = setting("BENCH_ROUNDS", 2, 10);
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_secs(seconds));
    let emulator = Emulator::spawn(config).expect("the emulator starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let receiver = Receiver::new(&format!("http://127.0.0.1:{port}/hooks/")).unwrap();
    let _listener = receiver.listen(("127.0.0.1", port)).unwrap();
    let polling = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .poll(PollSchedule::default()) // the documented 5 s growing to 10 s
        .wait_timeout(Duration::from_secs(seconds * 4 + 60))
        .build()
        .unwrap();
    let hooked = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .webhooks(receiver)
        .wait_timeout(Duration::from_secs(seconds * 4 + 60))
        .build()
        .unwrap();
    let (mut arms, mut statuses) = ([Vec::new(), Vec::new()], [0u64, 0u64]);
    for round in 0..rounds {
        for (arm, client) in [&polling, &hooked].into_iter().enumerate() {
            let before = emulator.counters().status_requests;
            let late = runtime.block_on(run(client, &emulator, tasks, round));
            statuses[arm] += emulator.counters().status_requests - before;
            arms[arm].extend(late);
        }
    }
    println!("{tasks} tasks of {seconds} s at once, {rounds} rounds, interleaved");
    println!("                 status requests per task   wait ends after the task (median, max)");
    for (arm, name) in ["polling 5-10 s", "webhooks"].into_iter().enumerate() {
        let late = &mut arms[arm];
        late.sort();
        let per_task = statuses[arm] as f64 / late.len().max(1) as f64;
        println!(
            "{name:>16} {per_task:>25.2}   {:>12.0?}, {:.0?}",
            late[late.len() / 2],
            late[late.len() - 1]
        );
    }
}

/// Submits `tasks` tasks at once and waits for each; how long after its end each wait ended.
async fn run(client: &Client, emulator: &Emulator, tasks: usize, round: u64) -> Vec<Duration> {
    let mut handles = Vec::new();
    for i in 0..tasks {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let request = GenerateRequest::text_to_image(format!("round {round} task {i}"))
                .quality(Quality::Low)
                .build()
                .unwrap();
            let created = client.submit(&request).await.expect("submitted");
            client.wait(&created.task_id).await.expect("finished");
            (created.task_id, Instant::now())
        }));
    }
    let mut late = Vec::new();
    for handle in handles {
        let (task_id, ended) = handle.await.unwrap();
        let finished = emulator.task_finished_at(&task_id).expect("the task ended");
        late.push(ended.saturating_duration_since(finished));
    }
    late
}
