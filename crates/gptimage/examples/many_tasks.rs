//! Many tasks at once: at most 3 in flight, sharing the client's pacer; each task id reported
//! as soon as it exists, each result as it completes; a failure (a task's, or a download's)
//! does not stop the others.
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
                // A failed download is this task's, not the batch's: report it and go on (a `?`
                // here would drop the stream, and with it the events of tasks still running).
                let stem = format!("many-{index}");
                match client.download_to_dir_as(&task, out, &stem).await {
                    Ok(paths) => paths.iter().for_each(|p| println!("{}", p.display())),
                    Err(error) => eprintln!(
                        "{index}: task {} done, images not saved: {error}",
                        task.task_id
                    ),
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
