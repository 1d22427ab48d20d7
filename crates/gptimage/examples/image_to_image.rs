//! Image-to-image: edit an existing picture with a prompt.
//!
//! Against the real service, pass the URL of the image to edit and the prompt:
//!
//! ```text
//! GPTIMAGE_API_KEY=sk-... cargo run -p gptimage --example image_to_image -- https://example.com/photo.jpg "add a rainbow"
//! ```
//!
//! Without a key, it uses the local emulator: it first generates a picture there, then edits it.

use gptimage::{API_KEY_ENV, Client, GenerateRequest, InputFidelity, Quality};
use gptimage_emulator::{Config, Emulator};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = std::env::var("GPTIMAGE_OUT").unwrap_or_else(|_| "out".to_owned());

    let (_emulator, client, input, prompt) = if std::env::var_os(API_KEY_ENV).is_some() {
        let [input, prompt @ ..] = args.as_slice() else {
            return Err("usage: image_to_image IMAGE_URL PROMPT...".into());
        };
        (None, Client::from_env()?, input.clone(), prompt.join(" "))
    } else {
        eprintln!("{API_KEY_ENV} is not set: using the local emulator");
        let emulator = Emulator::start(Config::instant()).await?;
        let client = Client::builder()
            .api_key(emulator.api_key())
            .base_url(emulator.base_url())
            .build()?;
        let source = GenerateRequest::text_to_image("a quiet harbour at noon").build()?;
        let source = client.generate(&source).await?;
        let input = source
            .images()
            .first()
            .cloned()
            .ok_or("the source task has no image")?;
        (
            Some(emulator),
            client,
            input,
            "the same harbour at night, lanterns lit".to_owned(),
        )
    };

    let edit = GenerateRequest::image_to_image(prompt, [input])
        .input_fidelity(InputFidelity::High)
        .quality(Quality::High)
        .build()?;
    let task = client.generate(&edit).await?;
    for path in client.download_to_dir(&task, &out).await? {
        println!("{}", path.display());
    }
    Ok(())
}
