//! Many tasks at once: at most 3 in flight, sharing the client's pacer; each task id reported
//! as soon as it exists, each result as it completes; a failure does not stop the others.
//!
//! ```text
//! cargo run -p gptimage --example many_tasks
//! ```

mod support;

use gptimage::{Client, GenerateRequest, ManyEvent, Quality};

const PROMPTS: &[&str] = &[
    "a lighthouse at dawn",
    "a red fox in snow",
    "a bowl of ramen, top view",
    "a policy-violation example that the emulator refuses",
    "a sailing boat on a calm sea",
    "a city skyline at night",
];

/// The part to copy.
async fn run(client: &Client, out: &str) -> Result<(), gptimage::Error> {
    let requests = PROMPTS
        .iter()
        .map(|prompt| {
            GenerateRequest::text_to_image(*prompt)
                .quality(Quality::Low)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut events = client.generate_many(requests, 3);
    // `events.stopper().stop()` (from a signal handler, say) submits nothing more.
    while let Some(event) = events.next().await {
        match event {
            ManyEvent::Submitted { index, task_id } => eprintln!("{index}: task {task_id}"),
            ManyEvent::Finished {
                index,
                result: Ok(task),
            } => {
                let stem = format!("many-{index}");
                for path in client.download_to_dir_as(&task, out, &stem).await? {
                    println!("{}", path.display());
                }
            }
            ManyEvent::Finished {
                index,
                result: Err(error),
            } => eprintln!("{index}: {error}"),
            other => eprintln!("{other:?}"),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, _guard) = support::client()?;
    run(&client, &support::out_dir()).await?;
    Ok(())
}
