//! The cost of one status request through each client, against plain reqwest and plain ureq
//! doing the same request (send, read the body, parse the envelope) to the same emulator.
//!
//! Run with `cargo bench -p gptimage-transport`. Requests are sequential over keep-alive
//! connections; each measurement is bounded by a request count and by time.

use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::{Client, blocking};
use gptimage_types::StatusResponse;

const REQUESTS: u32 = 3000;
const WARMUP: u32 = 200;
const TIME_LIMIT: Duration = Duration::from_secs(20);

/// Mean time per call of `f`, after a warm-up, over at most `REQUESTS` calls or `TIME_LIMIT`.
fn measure(mut f: impl FnMut()) -> Duration {
    for _ in 0..WARMUP {
        f();
    }
    let started = Instant::now();
    let mut n = 0;
    while n < REQUESTS && started.elapsed() < TIME_LIMIT {
        f();
        n += 1;
    }
    started.elapsed() / n
}

fn report(name: &str, client: Duration, plain: Duration, plain_name: &str) {
    println!(
        "{name:<16} {:>8.1} µs/request   {plain_name:<6} {:>8.1} µs/request   ratio {:.2}",
        client.as_secs_f64() * 1e6,
        plain.as_secs_f64() * 1e6,
        client.as_secs_f64() / plain.as_secs_f64()
    );
}

fn main() {
    let emulator = Emulator::spawn(Config::instant()).expect("the emulator starts");
    let (base, key) = (
        emulator.base_url().to_owned(),
        emulator.api_key().to_owned(),
    );

    let blocking_client = blocking::Client::builder()
        .api_key(&key)
        .base_url(&base)
        .build()
        .unwrap();
    let task = blocking_client
        .submit(
            &gptimage_types::GenerateRequest::text_to_image("bench")
                .build()
                .unwrap(),
        )
        .unwrap();
    let id = task.task_id;
    let url = format!("{base}/status?task_id={id}");

    // Blocking: the client against plain ureq.
    let client_time = measure(|| {
        blocking_client.status(&id).unwrap();
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .build()
        .into();
    let plain_time = measure(|| {
        let mut response = agent
            .get(&url)
            .header("authorization", &format!("Bearer {key}"))
            .call()
            .unwrap();
        let body = response.body_mut().read_to_vec().unwrap();
        let parsed: StatusResponse = serde_json::from_slice(&body).unwrap();
        assert!(parsed.data.is_some());
    });
    report("blocking client", client_time, plain_time, "ureq");

    // Async: the client against plain reqwest, on a current-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_client = Client::builder()
        .api_key(&key)
        .base_url(&base)
        .build()
        .unwrap();
    let client_time = measure(|| {
        runtime.block_on(async_client.status(&id)).unwrap();
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let plain_time = measure(|| {
        runtime.block_on(async {
            let response = http.get(&url).bearer_auth(&key).send().await.unwrap();
            let body = response.bytes().await.unwrap();
            let parsed: StatusResponse = serde_json::from_slice(&body).unwrap();
            assert!(parsed.data.is_some());
        });
    });
    report("async client", client_time, plain_time, "reqwest");
}
