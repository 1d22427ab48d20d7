//! Quickstart (async): generate one image, showing its progress, and save it as a PNG.
//!
//! With `GPTIMAGE_API_KEY` set it talks to the real service (10 credits); without it, it uses
//! the local emulator, offline and free:
//!
//! ```text
//! cargo run -p gptimage --example quickstart -- "a lighthouse at dawn"
//! ```
//!
//! The image goes to `out/` (or `GPTIMAGE_OUT`); its path is printed on stdout.

mod support;

use gptimage::{Client, GenerateRequest, Progress, Quality, Size};

/// The part to copy: generate, report progress, save.
async fn run(client: &Client, prompt: &str, out: &str) -> Result<(), gptimage::Error> {
    let request = GenerateRequest::text_to_image(prompt)
        .size(Size::Landscape)
        .quality(Quality::High)
        .build()?;
    let task = client
        .generate_with(&request, |progress| match progress {
            // Store the id before waiting: after a crash, `client.wait(id)` picks it up again.
            Progress::Submitted(created) => eprintln!("submitted task {}", created.task_id),
            Progress::Changed(status) => eprintln!("  {}", status.status),
            _ => {}
        })
        .await?;
    for path in client.download_to_dir(&task, out).await? {
        println!("{}", path.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, _guard) = support::client()?;
    let prompt = support::prompt("A serene mountain landscape at sunrise");
    run(&client, &prompt, &support::out_dir()).await?;
    Ok(())
}
