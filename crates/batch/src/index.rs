//! `index.html`: every result of a batch as a picture with its prompt, every failure with its
//! reason; and `results.jsonl`, the manifest: one object per line. Both are written from the
//! state a page of lines at a time and put in place whole: renamed into the output folder, or
//! uploaded to the results store (a bucket), whichever worker finishes. In a folder the
//! gallery names local files only; every reason passes through the one redaction, so no
//! signed URL of the service and no secret reaches a page others may read. A bucket's gallery
//! shows its pictures through signed URLs of the user's own bucket, which expire.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::Error;
use crate::inputs::ResultsStore;
use crate::machine::LineState;
use crate::run::describe;
use crate::store::Store;

/// Lines read from the state at a time.
const PAGE: u64 = 1000;

/// How long the pictures' signed URLs in a bucket's `index.html` stay valid: a week, the most
/// S3 allows. `gptimage batch-status --write-index` writes a fresh gallery any time.
pub const GALLERY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Writes `index.html` and the manifest `results.jsonl` into `out` from the state: pictures
/// under `out` are shown, files another worker wrote elsewhere are listed by path. Each file
/// appears whole or not at all.
pub async fn write_index(store: &Store, out: &Path) -> Result<(), Error> {
    let io = |name: &str| {
        let path = out.join(name);
        move |e: std::io::Error| Error::Source {
            path: path.clone(),
            source: e.into(),
        }
    };
    let html = render_html(store, out, &Pictures::Folder(out)).await?;
    publish(html, &out.join("index.html")).map_err(io("index.html"))?;
    let manifest = render_manifest(store, out, None).await?;
    publish(manifest, &out.join("results.jsonl")).map_err(io("results.jsonl"))?;
    Ok(())
}

/// Writes `index.html` and `results.jsonl` into a results store (a bucket) from the state, as
/// [`write_index`] does into a folder, the pictures shown through signed URLs valid for
/// `valid_for` (at most [`GALLERY_VALIDITY`]); `scratch` is a local folder for the files
/// before they are uploaded (each uploaded whole or not at all). Returns the gallery's
/// location in the store.
pub async fn write_index_to(
    store: &Store,
    results: &ResultsStore,
    scratch: &Path,
    valid_for: Duration,
) -> Result<String, Error> {
    let refused = |e: gptimage::Error| Error::Output {
        folder: PathBuf::from(results.0.describe()),
        message: gptimage::types::redact(&describe(&e)),
    };
    let html = render_html(
        store,
        scratch,
        &Pictures::Store(
            results,
            results.0.describe(),
            valid_for.min(GALLERY_VALIDITY),
        ),
    )
    .await?;
    let index = results
        .0
        .put_file("index.html", html.path(), "html")
        .await
        .map_err(refused)?;
    let manifest = render_manifest(store, scratch, Some(results)).await?;
    results
        .0
        .put_file("results.jsonl", manifest.path(), "jsonl")
        .await
        .map_err(refused)?;
    Ok(index.location)
}

/// How a gallery shows a picture: by its path relative to the folder, or by a signed URL.
enum Pictures<'a> {
    Folder(&'a Path),
    /// A store, its URL (as it describes itself), and how long a picture's link is valid.
    Store(&'a ResultsStore, String, Duration),
}

impl Pictures<'_> {
    /// The `src` of a picture stored at `file` (a path, or a store's object location), if the
    /// gallery can show it.
    async fn src(&self, file: &Path) -> Result<Option<String>, gptimage::Error> {
        match self {
            Pictures::Folder(out) => Ok(file
                .strip_prefix(out)
                .ok()
                .map(|relative| relative.display().to_string())),
            Pictures::Store(results, base, valid_for) => {
                let location = file.display().to_string();
                let Some(key) = key_in(base, &location) else {
                    return Ok(None);
                };
                let url = results.0.signed_url(key, *valid_for).await?;
                Ok(Some(url.expose().to_owned()))
            }
        }
    }
}

/// The key of the object at `location` (its name under the prefix), if it is one of the store
/// whose URL is `base` (as the store describes itself).
fn key_in<'a>(base: &str, location: &'a str) -> Option<&'a str> {
    location
        .strip_prefix(base.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
}

/// A temporary file in `dir`, for a page to be written into before it is published.
fn scratch_file(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile, Error> {
    std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::Builder::new().prefix(prefix).tempfile_in(dir))
        .map_err(|e| Error::Source {
            path: dir.to_path_buf(),
            source: e.into(),
        })
}

/// Renames a finished file into place, readable by all (a gallery is for showing), synced.
fn publish(file: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `index.html`, from the state a page of lines at a time, into a temporary file in `dir`.
async fn render_html(
    store: &Store,
    dir: &Path,
    pictures: &Pictures<'_>,
) -> Result<tempfile::NamedTempFile, Error> {
    let file = scratch_file(dir, ".index-")?;
    let path = file.path().to_path_buf();
    let io = |e: std::io::Error| Error::Source {
        path: path.clone(),
        source: e.into(),
    };
    let mut html = std::io::BufWriter::new(file);
    html.write_all(HEAD.as_bytes()).map_err(io)?;
    let mut pages = store.pages(PAGE);
    while let Some(page) = pages.next().await? {
        for line in page.iter().filter(|l| l.state == LineState::Done) {
            let prompt = escape(&line.prompt);
            for file in &line.files {
                let src = match pictures.src(file).await {
                    Ok(src) => src,
                    Err(e) => {
                        return Err(Error::Output {
                            folder: file.clone(),
                            message: gptimage::types::redact(&describe(&e)),
                        });
                    }
                };
                match src {
                    Some(src) => writeln!(
                        html,
                        "<figure><img src=\"{}\" alt=\"{prompt}\" loading=\"lazy\"><figcaption>line {}: {prompt}</figcaption></figure>",
                        escape(&src),
                        line.line
                    ),
                    None => writeln!(
                        html,
                        "<figure><figcaption>line {}: {prompt}<br><code>{}</code></figcaption></figure>",
                        line.line,
                        escape(&file.display().to_string())
                    ),
                }
                .map_err(io)?;
            }
        }
    }
    html.write_all(b"</div>\n").map_err(io)?;
    // The lines that are not done, in a second pass: nothing is gathered in memory.
    let mut heading = false;
    let mut pages = store.pages_not_done(PAGE);
    while let Some(page) = pages.next().await? {
        for line in &page {
            let Some((kind, message)) = &line.error else {
                continue;
            };
            if !heading {
                html.write_all(b"<h2>Not done</h2>\n<ul>\n").map_err(io)?;
                heading = true;
            }
            let prompt = escape(&line.prompt);
            writeln!(
                html,
                "<li class=\"failed\">line {} ({}, {}): {} &mdash; {}</li>",
                line.line,
                line.state,
                escape(kind),
                if prompt.is_empty() {
                    "no prompt".into()
                } else {
                    prompt
                },
                escape(&gptimage::types::redact(message))
            )
            .map_err(io)?;
        }
    }
    if heading {
        html.write_all(b"</ul>\n").map_err(io)?;
    }
    html.write_all(b"</body></html>\n").map_err(io)?;
    html.into_inner().map_err(|e| io(e.into_error()))
}

/// `results.jsonl`: one object per line of the batch, in order (`line`, `name`, `prompt`,
/// `state`, `task_id`, `credits`, `objects`: the images' names in the store or paths in the
/// folder, and `error` for a line not done, redacted), into a temporary file in `dir`.
async fn render_manifest(
    store: &Store,
    dir: &Path,
    results: Option<&ResultsStore>,
) -> Result<tempfile::NamedTempFile, Error> {
    let file = scratch_file(dir, ".results-")?;
    let path = file.path().to_path_buf();
    let io = |e: std::io::Error| Error::Source {
        path: path.clone(),
        source: e.into(),
    };
    let base = results.map(|results| results.0.describe());
    let mut manifest = std::io::BufWriter::new(file);
    let mut pages = store.pages(PAGE);
    while let Some(page) = pages.next().await? {
        for line in &page {
            let objects: Vec<String> = line
                .files
                .iter()
                .map(|file| {
                    let file = file.display().to_string();
                    match base.as_deref().and_then(|base| key_in(base, &file)) {
                        Some(key) => key.to_owned(),
                        None => file,
                    }
                })
                .collect();
            let object = json!({
                "line": line.line,
                "name": line.name,
                "prompt": line.prompt,
                "state": line.state.as_str(),
                "task_id": line.task_id,
                "credits": line.credits,
                "objects": objects,
                "error": line.error.as_ref().map(|(kind, message)| {
                    json!({"kind": kind, "message": gptimage::types::redact(message)})
                }),
            });
            writeln!(manifest, "{object}").map_err(io)?;
        }
    }
    manifest.into_inner().map_err(|e| io(e.into_error()))
}

const HEAD: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gptimage batch</title>\n<style>\
body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}\
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}\
img{width:100%;display:block}figcaption{padding:.5rem;font-size:.9rem}\
.failed{color:#a00}</style></head><body>\n<h1>gptimage batch</h1>\n<div class=\"grid\">\n";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
