//! What every example shares and no user copies: with `GPTIMAGE_API_KEY` set, a client of the
//! real service; without it, the local emulator started in-process (offline, no credits spent),
//! kept alive by the returned guard.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use gptimage::API_KEY_ENV;
use gptimage_emulator::{Config, Emulator};

/// Keeps the emulator (if any) running while the client uses it.
pub struct Guard(Option<Emulator>);

impl Guard {
    /// The emulator's upload host, for input images from local files offline.
    pub fn uploads_url(&self) -> Option<String> {
        self.0.as_ref().map(Emulator::uploads_url)
    }
}

/// Whether the examples run against the local emulator.
pub fn offline() -> bool {
    std::env::var_os(API_KEY_ENV).is_none()
}

/// The emulator, with timings that feel like the service's, shortened.
fn emulator() -> std::io::Result<Emulator> {
    eprintln!("{API_KEY_ENV} is not set: using the local emulator (offline, no credits spent)");
    let config =
        Config::default().with_timings(Duration::from_millis(300), Duration::from_millis(700));
    Emulator::spawn(config)
}

/// A builder of an async client of the service, or of the emulator, to add settings to.
#[cfg(feature = "async")]
pub fn builder() -> std::io::Result<(gptimage::ClientBuilder<gptimage::Client>, Guard)> {
    if !offline() {
        return Ok((gptimage::ClientBuilder::from_env(), Guard(None)));
    }
    let emulator = emulator()?;
    let builder = gptimage::Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url());
    Ok((builder, Guard(Some(emulator))))
}

/// An async client of the service, or of the emulator.
#[cfg(feature = "async")]
pub fn client() -> Result<(gptimage::Client, Guard), Box<dyn std::error::Error>> {
    let (builder, guard) = builder()?;
    Ok((builder.build()?, guard))
}

/// A blocking client of the service, or of the emulator.
#[cfg(feature = "blocking")]
pub fn blocking_client() -> Result<(gptimage::blocking::Client, Guard), Box<dyn std::error::Error>>
{
    if !offline() {
        return Ok((gptimage::blocking::Client::from_env()?, Guard(None)));
    }
    let emulator = emulator()?;
    let client = gptimage::blocking::Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .build()?;
    Ok((client, Guard(Some(emulator))))
}

/// The words after the program's name, or `default`.
pub fn prompt(default: &str) -> String {
    let prompt = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if prompt.trim().is_empty() {
        default.to_owned()
    } else {
        prompt
    }
}

/// Where images go: `GPTIMAGE_OUT`, or `out`.
pub fn out_dir() -> String {
    std::env::var("GPTIMAGE_OUT").unwrap_or_else(|_| "out".to_owned())
}
