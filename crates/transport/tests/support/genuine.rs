//! A genuine callback URL for a listener's tests and benchmark: a task submitted to the
//! emulator through a client that uses the receiver, running an hour so that no delivery of the
//! emulator's own interferes.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::blocking;
use gptimage_transport::webhook::Receiver;
use gptimage_types::{GenerateRequest, Quality};

/// The emulator (keep it while the URL is used), and the path of the callback URL `receiver`
/// issued for the task.
pub fn genuine_callback(receiver: Receiver) -> (Emulator, String) {
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_secs(3600));
    let emulator = Emulator::spawn(config).expect("the emulator starts");
    let client = blocking::Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .webhooks(receiver)
        .build()
        .unwrap();
    let request = GenerateRequest::text_to_image("a lighthouse")
        .quality(Quality::Low)
        .build()
        .unwrap();
    let task = client
        .submit(&request)
        .expect("the emulator takes the task");
    let url = emulator
        .task_request(&task.task_id)
        .and_then(|r| r.callback_url().map(str::to_owned))
        .expect("the task carries a callback URL");
    let path = url::Url::parse(&url).unwrap().path().to_owned();
    (emulator, path)
}
