//! Handling what goes wrong: a submission whose outcome is unknown, a wait that passes its
//! deadline and is resumed from the task id, a failed task, and a request refused before
//! anything is sent. Every failure here is staged by the emulator's faults, so this example
//! always runs offline:
//!
//! ```text
//! cargo run -p gptimage --example errors
//! ```

use std::time::Duration;

use gptimage::{CallOptions, Client, ErrorKind, GenerateRequest, TaskInfo};
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind};

/// The part to copy: what a service does with each kind of error.
async fn generate(client: &Client, request: &GenerateRequest) -> Result<TaskInfo, gptimage::Error> {
    // Give a waiting user 2 s; the task goes on at the service if we stop waiting.
    let impatient =
        client.with_options(&CallOptions::new().wait_timeout(Duration::from_secs(2)))?;
    match impatient.generate(request).await {
        Ok(task) => Ok(task),
        // The request may have reached the service: a task may exist, and may be charged.
        // Never resubmit blindly; find out (your records, the service's dashboard) first.
        Err(e) if e.kind() == ErrorKind::OutcomeUnknown => {
            eprintln!("outcome unknown, not resubmitted: {e}");
            Err(e)
        }
        // The task exists and is still running: resume the wait from its id, now or later.
        Err(e) if e.kind() == ErrorKind::DeadlinePassed => {
            let task_id = e
                .task_id()
                .expect("a passed deadline names its task")
                .to_owned();
            eprintln!("still running after 2 s; waiting again for {task_id}");
            client.wait(&task_id).await
        }
        // The task ended without images (its credits are given back).
        Err(e) if e.kind() == ErrorKind::TaskFailed => {
            eprintln!(
                "the task failed: {}",
                e.server_message().unwrap_or("no reason given")
            );
            Err(e)
        }
        // Refused: by the rules, before anything was sent (InvalidRequest), or by the service.
        Err(e) => {
            eprintln!("refused ({}): {e}", e.kind());
            Err(e)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The emulator, staging one of each: the first submission's answer is lost after the task
    // was made; tasks take 3 s, longer than the 2 s we give a user.
    let lost = Fault::new(FaultKind::DropConnection)
        .on(Endpoint::Generate)
        .times(1);
    let config = Config::instant()
        .with_timings(Duration::ZERO, Duration::from_secs(3))
        .with_fault(lost);
    let emulator = Emulator::spawn(config)?;
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .build()?;

    let request = GenerateRequest::text_to_image("a lighthouse at dawn").build()?;
    let unknown = generate(&client, &request).await.unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::OutcomeUnknown);

    let task = generate(&client, &request).await?;
    println!("task {} succeeded after a resumed wait", task.task_id);

    let refused = GenerateRequest::text_to_image("a policy-violation").build()?;
    let failed = generate(&client, &refused).await.unwrap_err();
    assert_eq!(failed.kind(), ErrorKind::TaskFailed);

    let invalid = GenerateRequest::image_to_image("no input images", Vec::<String>::new()).build();
    match invalid {
        Err(e) => eprintln!("refused before sending: {e}"),
        Ok(request) => drop(generate(&client, &request).await),
    }
    Ok(())
}
