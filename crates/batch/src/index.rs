//! `index.html`: every result of a batch as a picture with its prompt, every failure with its
//! reason, written from the state a page of lines at a time and renamed into place whole. It
//! names local files only, and every reason passes through the one redaction: no signed URL
//! and no secret reaches the page, which others may read.

use std::io::Write;
use std::path::Path;

use crate::Error;
use crate::machine::LineState;
use crate::store::Store;

/// Lines read from the state at a time.
const PAGE: u64 = 1000;

/// Writes `index.html` into `out` from the state: pictures under `out` are shown, files another
/// worker wrote elsewhere are listed by path. The file appears whole or not at all.
pub async fn write_index(store: &Store, out: &Path) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Source {
        path: out.join("index.html"),
        source: e.into(),
    };
    let file = tempfile::Builder::new()
        .prefix(".index-")
        .tempfile_in(out)
        .map_err(io)?;
    let mut html = std::io::BufWriter::new(file);
    html.write_all(HEAD.as_bytes()).map_err(io)?;
    let mut pages = store.pages(PAGE);
    while let Some(page) = pages.next().await? {
        for line in page.iter().filter(|l| l.state == LineState::Done) {
            let prompt = escape(&line.prompt);
            for file in &line.files {
                match file.strip_prefix(out) {
                    Ok(relative) => writeln!(
                        html,
                        "<figure><img src=\"{}\" alt=\"{prompt}\" loading=\"lazy\"><figcaption>line {}: {prompt}</figcaption></figure>",
                        escape(&relative.display().to_string()),
                        line.line
                    ),
                    Err(_) => writeln!(
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
    let file = html.into_inner().map_err(|e| io(e.into_error()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    file.as_file().sync_all().map_err(io)?;
    file.persist(out.join("index.html"))
        .map_err(|e| io(e.error))?;
    Ok(())
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
