//! Quickstart (blocking): generate one image from synchronous code and save it as a PNG.
//!
//! With `GPTIMAGE_API_KEY` set it talks to the real service; without it, it uses the local
//! emulator:
//!
//! ```text
//! cargo run -p gptimage --features blocking --example blocking_quickstart -- "a red fox in snow"
//! ```

mod support;

use gptimage::blocking::Client;
use gptimage::{GenerateRequest, Size, TaskStatus};

/// The part to copy: submit, watch, save, with no async runtime.
fn run(client: &Client, prompt: &str, out: &str) -> Result<(), Box<dyn std::error::Error>> {
    let request = GenerateRequest::text_to_image(prompt)
        .size(Size::Portrait)
        .build()?;
    let created = client.submit(&request)?;
    eprintln!("submitted task {}", created.task_id);
    // Each status change once, ending with the terminal one.
    let mut last = None;
    for status in client.watch(&created.task_id) {
        let status = status?;
        eprintln!("  {}", status.status);
        last = Some(status);
    }
    let task = last.ok_or("the watch ended without a status")?;
    if task.status != TaskStatus::Success {
        let why = task.error_message.as_deref().unwrap_or("no reason given");
        return Err(format!("task {} failed: {why}", task.task_id).into());
    }
    for path in client.download_to_dir(&task, out)? {
        println!("{}", path.display());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, _guard) = support::blocking_client()?;
    run(
        &client,
        &support::prompt("A red fox in snow"),
        &support::out_dir(),
    )?;
    Ok(())
}
