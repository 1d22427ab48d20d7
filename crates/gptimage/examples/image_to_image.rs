//! Image-to-image: edit a picture with a prompt, from a URL or from a file on disk.
//!
//! A local file is put where the service can fetch it, under its content hash (once however
//! often it is used), and the request carries its URL. Offline (no key), the emulator is that
//! host: this example first makes a picture and saves it to disk, then edits the file.
//!
//! ```text
//! cargo run -p gptimage --example image_to_image
//! GPTIMAGE_API_KEY=sk-... cargo run -p gptimage --example image_to_image -- https://example.com/photo.jpg "add a rainbow"
//! GPTIMAGE_API_KEY=sk-... GPTIMAGE_IMAGE_HOST=s3://my-bucket/inputs \
//!   cargo run -p gptimage --features object-store --example image_to_image -- ./photo.jpg "add a rainbow"
//! ```

mod support;

use gptimage::hosting::{ImageHost, LocalImage};
use gptimage::{Client, GenerateRequest, InputFidelity, Quality};

/// The part to copy: edit `input`, a URL the service can fetch or a file put on `host`.
async fn run(
    client: &Client,
    host: Option<&dyn ImageHost>,
    input: &str,
    prompt: &str,
    out: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let url = if input.starts_with("http://") || input.starts_with("https://") {
        input.to_owned()
    } else {
        // Checked before anything is sent: readable, a PNG, JPEG or WebP, at most 20 MiB.
        let file = LocalImage::read(input)?;
        let host = host.ok_or("a local file needs an image host (GPTIMAGE_IMAGE_HOST)")?;
        // Valid for the whole wait; a signed URL is a secret: print it redacted, if at all.
        let url = host.host(&file, client.config().wait_timeout()).await?;
        eprintln!("{input} is at {url}");
        url.expose().to_owned()
    };
    let edit = GenerateRequest::image_to_image(prompt, [url])
        .input_fidelity(InputFidelity::High)
        .quality(Quality::High)
        .build()?;
    let task = client.generate(&edit).await?;
    for path in client.download_to_dir(&task, out).await? {
        println!("{}", path.display());
    }
    Ok(())
}

/// The image host: the emulator's offline, or the one `GPTIMAGE_IMAGE_HOST` names.
fn host(
    client: &Client,
    guard: &support::Guard,
) -> Result<Option<Box<dyn ImageHost>>, gptimage::Error> {
    if let Some(uploads) = guard.uploads_url() {
        return Ok(Some(Box::new(gptimage::hosting::PutHost::new(
            client.config(),
            &uploads,
        )?)));
    }
    let Ok(named) = std::env::var("GPTIMAGE_IMAGE_HOST") else {
        return Ok(None);
    };
    #[cfg(feature = "object-store")]
    if !named.starts_with("http") {
        let host = gptimage::hosting::ObjectStoreHost::from_url(&named, client.config())?;
        return Ok(Some(Box::new(host)));
    }
    Ok(Some(Box::new(gptimage::hosting::PutHost::new(
        client.config(),
        &named,
    )?)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (client, guard) = support::client()?;
    let out = support::out_dir();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, prompt) = if support::offline() {
        // A picture on disk to edit: one the emulator makes first.
        let source = GenerateRequest::text_to_image("a quiet harbour at noon").build()?;
        let source = client.generate(&source).await?;
        let file = client
            .download_to_dir_as(&source, &out, "harbour")
            .await?
            .remove(0);
        (
            file.display().to_string(),
            "the same harbour at night, lanterns lit".to_owned(),
        )
    } else {
        let [input, prompt @ ..] = args.as_slice() else {
            return Err("usage: image_to_image IMAGE_URL_OR_FILE PROMPT...".into());
        };
        (input.clone(), prompt.join(" "))
    };
    let host = host(&client, &guard)?;
    run(&client, host.as_deref(), &input, &prompt, &out).await
}
