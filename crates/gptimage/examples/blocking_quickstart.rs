//! Quickstart (blocking): generate one image from synchronous code and save it as a PNG.
//!
//! With `GPTIMAGE_API_KEY` set it talks to the real service; without it, it starts the local
//! emulator on a thread of its own:
//!
//! ```text
//! cargo run -p gptimage --features blocking --example blocking_quickstart -- "a red fox in snow"
//! ```

use std::time::Duration;

use gptimage::blocking::Client;
use gptimage::{API_KEY_ENV, GenerateRequest, Size};
use gptimage_emulator::{Config, Emulator};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let prompt = if prompt.trim().is_empty() {
        "A red fox in snow".to_owned()
    } else {
        prompt
    };
    let out = std::env::var("GPTIMAGE_OUT").unwrap_or_else(|_| "out".to_owned());

    let (_emulator, client) = if std::env::var_os(API_KEY_ENV).is_some() {
        (None, Client::from_env()?)
    } else {
        eprintln!("{API_KEY_ENV} is not set: using the local emulator (offline, no credits spent)");
        let config =
            Config::default().with_timings(Duration::from_millis(300), Duration::from_millis(700));
        let emulator = Emulator::spawn(config)?;
        let client = Client::builder()
            .api_key(emulator.api_key())
            .base_url(emulator.base_url())
            .build()?;
        (Some(emulator), client)
    };

    let request = GenerateRequest::text_to_image(prompt)
        .size(Size::Portrait)
        .build()?;
    let task = client.generate(&request)?;
    eprintln!("task {} ended {}", task.task_id, task.status);
    for path in client.download_to_dir(&task, &out)? {
        println!("{}", path.display());
    }
    Ok(())
}
