//! Many tasks at once, with bounded concurrency: at most `CONCURRENCY` tasks in flight, each
//! submitted, waited for and downloaded; failures are reported without stopping the others.
//!
//! ```text
//! cargo run -p gptimage --example many_tasks
//! ```

use std::sync::Arc;

use gptimage::{API_KEY_ENV, Client, GenerateRequest, Quality};
use gptimage_emulator::{Config, Emulator};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const CONCURRENCY: usize = 3;

const PROMPTS: &[&str] = &[
    "a lighthouse at dawn",
    "a red fox in snow",
    "a bowl of ramen, top view",
    "a policy-violation example that the emulator refuses",
    "a sailing boat on a calm sea",
    "a city skyline at night",
    "a field of sunflowers",
    "a snowy mountain cabin",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::var("GPTIMAGE_OUT").unwrap_or_else(|_| "out".to_owned());
    let (_emulator, client) = if std::env::var_os(API_KEY_ENV).is_some() {
        (None, Client::from_env()?)
    } else {
        eprintln!("{API_KEY_ENV} is not set: using the local emulator");
        let emulator = Emulator::start(Config::instant()).await?;
        let client = Client::builder()
            .api_key(emulator.api_key())
            .base_url(emulator.base_url())
            .build()?;
        (Some(emulator), client)
    };

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (n, prompt) in PROMPTS.iter().enumerate() {
        let (client, permits, out) = (client.clone(), permits.clone(), out.clone());
        let request = GenerateRequest::text_to_image(*prompt)
            .quality(Quality::Low)
            .build()?;
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let result = async {
                let task = client.generate(&request).await?;
                client
                    .download_to_dir_as(&task, &out, &format!("batch-{n}"))
                    .await
            }
            .await;
            (prompt, result)
        });
    }
    let (mut done, mut failed) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            (_, Ok(paths)) => {
                done += 1;
                println!("{}", paths[0].display());
            }
            (prompt, Err(error)) => {
                failed += 1;
                eprintln!("{prompt:?}: {error}");
            }
        }
    }
    eprintln!("{done} done, {failed} failed, at most {CONCURRENCY} at a time");
    Ok(())
}
