//! Pacing through both clients, against the emulator's per-key rate limit: bare 429s are
//! learned (every submission succeeds, and the 429s stay few), and a `Retry-After` holds every
//! submission of the client, not only the one that was refused.

mod support;

use std::time::Duration;

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::RetryPolicy;
use gptimage_types::{GenerateRequest, Quality};
use support::{Driver, Settings};

both_clients!(bare_429s_are_learned, retry_after_holds_every_submission);

fn request(prompt: String) -> GenerateRequest {
    GenerateRequest::text_to_image(prompt)
        .quality(Quality::Low)
        .build()
        .unwrap()
}

fn client<D: Driver>(emulator: &Emulator) -> D {
    let mut settings = Settings::new(emulator.base_url(), emulator.api_key());
    settings.retry = RetryPolicy::default().max_rate_limited(100);
    D::connect(&settings).unwrap()
}

/// Submits `n` requests from `threads` clones of one client at once; how many succeeded.
fn submit_all<D: Driver>(client: &D, n: usize, threads: usize, gap: Duration) -> usize {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                std::thread::sleep(gap * t as u32);
                (t..n)
                    .step_by(threads)
                    .filter(|i| client.submit(&request(format!("paced {i}"))).is_ok())
                    .count()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

fn bare_429s_are_learned<D: Driver>() {
    // 4 new tasks per 2 s, refused with bare 429s, as many real services do.
    let emulator =
        Emulator::spawn(Config::instant().with_bare_rate_limit(4, Duration::from_secs(2))).unwrap();
    let client: D = client(&emulator);
    assert_eq!(
        submit_all(&client, 16, 4, Duration::ZERO),
        16,
        "no submission failed"
    );
    let counters = emulator.counters();
    let refused = counters.generate_requests - counters.tasks_created;
    assert_eq!(counters.tasks_created, 16);
    assert!(
        refused <= 16,
        "{refused} answers of 429 for 16 tasks: the pacer did not learn"
    );
}

fn retry_after_holds_every_submission<D: Driver>() {
    // 2 new tasks per second, refused with `Retry-After`.
    let emulator =
        Emulator::spawn(Config::instant().with_rate_limit(2, Duration::from_secs(1))).unwrap();
    let client: D = client(&emulator);
    // Four submissions 200 ms apart: the third is refused, and the fourth, held by the pacer,
    // is not sent until the service said it may be.
    assert_eq!(submit_all(&client, 4, 4, Duration::from_millis(200)), 4);
    let counters = emulator.counters();
    assert_eq!(
        counters.generate_requests - counters.tasks_created,
        1,
        "one 429 in all"
    );
}
