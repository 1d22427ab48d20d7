//! Image-to-image: edit an existing picture with a prompt.
//!
//! Against the real service, pass the URL of the image to edit and the prompt:
//!
//! ```text
//! GPTIMAGE_API_KEY=sk-... cargo run -p gptimage --example image_to_image -- https://example.com/photo.jpg "add a rainbow"
//! ```
//!
//! Without a key, it uses the local emulator: it first generates a picture there, then edits it.

mod support;

use gptimage::{Client, GenerateRequest, InputFidelity, Quality};

/// The part to copy: edit the image at `input` (a URL the service can fetch).
async fn run(client: &Client, input: &str, prompt: &str, out: &str) -> Result<(), gptimage::Error> {
    let edit = GenerateRequest::image_to_image(prompt, [input])
        .input_fidelity(InputFidelity::High)
        .quality(Quality::High)
        .build()?;
    let task = client.generate(&edit).await?;
    for path in client.download_to_dir(&task, out).await? {
        println!("{}", path.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, _guard) = support::client()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, prompt) = if support::offline() {
        // An image to edit: one the emulator makes first.
        let source = GenerateRequest::text_to_image("a quiet harbour at noon").build()?;
        let source = client.generate(&source).await?;
        let input = source.images().first().cloned().ok_or("no source image")?;
        (input, "the same harbour at night, lanterns lit".to_owned())
    } else {
        let [input, prompt @ ..] = args.as_slice() else {
            return Err("usage: image_to_image IMAGE_URL PROMPT...".into());
        };
        (input.clone(), prompt.join(" "))
    };
    run(&client, &input, &prompt, &support::out_dir()).await?;
    Ok(())
}
