//! What the client does, as `tracing` events (feature `tracing`): each retry with its reason,
//! attempt and delay, each 429 pushback, each status change, each webhook hint and each
//! deadline, with the task id as a field and never the key. Here they are printed by
//! tracing-subscriber. It always runs on the local emulator, which fails the first status
//! request to show a retry:
//!
//! ```text
//! cargo run -p gptimage --features tracing --example tracing_events
//! ```

use gptimage::{GenerateRequest, PollSchedule};
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The part to copy: print the client's events (target `gptimage`; hints are at debug).
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(Targets::new().with_target("gptimage", LevelFilter::DEBUG))
        .init();

    let flaky = Fault::new(FaultKind::ServerError)
        .on(Endpoint::Status)
        .times(1);
    let emulator = Emulator::spawn(
        Config::instant()
            .with_timings(
                std::time::Duration::from_millis(300),
                std::time::Duration::from_millis(300),
            )
            .with_fault(flaky),
    )?;
    let client = gptimage::Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .poll(PollSchedule::fixed(std::time::Duration::from_millis(100)))
        .build()?;
    let task = client
        .generate(&GenerateRequest::text_to_image("a traced lighthouse").build()?)
        .await?;
    println!("task {} {}", task.task_id, task.status);
    Ok(())
}
