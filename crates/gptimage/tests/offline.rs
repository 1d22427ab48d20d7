//! The README's main job: the emulator and the client in one program make a real image. It runs
//! where reqwest's rustls has no provider of its own, as in the default build: `cargo xtask
//! ci`'s test build leaves `native-tls` out for this (with it, reqwest would hide a panic
//! there), and plain `cargo test -p gptimage` is the default build.

use gptimage::{Client, GenerateRequest};
use gptimage_emulator::{Config, Emulator};

#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_and_the_client_make_a_png_in_one_program() {
    let emulator = Emulator::start(Config::instant()).await.unwrap();
    let client = Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .build()
        .unwrap();
    let request = GenerateRequest::text_to_image("a lighthouse at dawn, ğ ş ı İ œ")
        .build()
        .unwrap();
    let task = client.generate(&request).await.unwrap();
    let images = client.download(&task).await.unwrap();
    assert_eq!(images.len(), 1);
    assert!(images[0].bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
}
