//! Quickstart (async): generate one image and save it as a PNG.
//!
//! With `GPTIMAGE_API_KEY` set it talks to the real service (10 credits); without it, it starts
//! the local emulator in-process, so it runs offline and free:
//!
//! ```text
//! cargo run -p gptimage --example quickstart -- "a lighthouse at dawn"
//! ```
//!
//! The image goes to `out/` (or `GPTIMAGE_OUT`); its path is printed on stdout.

use std::time::Duration;

use gptimage::{API_KEY_ENV, Client, GenerateRequest, Quality, Size, TaskStatus};
use gptimage_emulator::{Config, Emulator};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let prompt = if prompt.trim().is_empty() {
        "A serene mountain landscape at sunrise".to_owned()
    } else {
        prompt
    };
    let out = std::env::var("GPTIMAGE_OUT").unwrap_or_else(|_| "out".to_owned());

    // Keep the emulator alive for as long as the client uses it.
    let (_emulator, client) = if std::env::var_os(API_KEY_ENV).is_some() {
        (None, Client::from_env()?)
    } else {
        eprintln!("{API_KEY_ENV} is not set: using the local emulator (offline, no credits spent)");
        let config =
            Config::default().with_timings(Duration::from_millis(300), Duration::from_millis(700));
        let emulator = Emulator::start(config).await?;
        let client = Client::builder()
            .api_key(emulator.api_key())
            .base_url(emulator.base_url())
            .build()?;
        (Some(emulator), client)
    };

    let request = GenerateRequest::text_to_image(prompt)
        .size(Size::Landscape)
        .quality(Quality::High)
        .build()?;
    let created = client.submit(&request).await?;
    eprintln!("submitted task {}", created.task_id);

    let mut last: Option<TaskStatus> = None;
    let task = client
        .wait_with(&created.task_id, |task| {
            if last.as_ref() != Some(&task.status) {
                eprintln!("  {}", task.status);
                last = Some(task.status.clone());
            }
        })
        .await?;
    for path in client.download_to_dir(&task, &out).await? {
        println!("{}", path.display());
    }
    Ok(())
}
