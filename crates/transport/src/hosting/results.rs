//! Where a finished task's images are kept: a [`ResultStore`] puts each under a name the caller
//! chooses, whole or not at all, and never writes the same content twice. [`FolderResults`] is
//! a local folder (what `download_to_dir` does); `ObjectStoreResults` (feature `object-store`)
//! is a bucket of S3, Google Cloud Storage or Azure, where the images of a whole fleet of
//! workers can land in one place, and from which signed URLs can be handed out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::HostedUrl;
use crate::error::{Error, Result};
use crate::files::on_a_thread;

/// An image kept in a [`ResultStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stored {
    /// Its name in the store, relative to the store's folder or prefix (`line-7-1.png`).
    pub key: String,
    /// Where it is, whole: a path for a folder, `s3://bucket/prefix/line-7-1.png` for a bucket.
    pub location: String,
    /// Its content's SHA-256, as hex.
    pub sha256: String,
    /// Whether this call wrote it (`false`: the same content was there already).
    pub written: bool,
}

/// Somewhere to keep result images.
///
/// ```no_run
/// # async fn run(client: gptimage_transport::Client, task: gptimage_types::TaskInfo) -> gptimage_transport::Result<()> {
/// use gptimage_transport::hosting::FolderResults;
///
/// let stored = client.save(&task, &FolderResults::new("out"), "lighthouse").await?;
/// println!("{}", stored[0].location); // out/lighthouse-1.png
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait ResultStore: Send + Sync {
    /// Keeps `bytes` as `key` (content type from `extension`): whole or not at all, and not
    /// written again if the same content is there.
    async fn put(&self, key: &str, bytes: &[u8], extension: &str) -> Result<Stored>;

    /// Keeps the file at `file` as `key`, as [`put`](Self::put) does, reading it a piece at a
    /// time: a batch's gallery or manifest of a million lines is never held in memory whole.
    async fn put_file(&self, key: &str, file: &Path, extension: &str) -> Result<Stored>;

    /// A URL that fetches the object `key` ([`Stored::key`]) for at least `valid_for` (signed,
    /// for a bucket; at most a week). A folder has none.
    async fn signed_url(&self, key: &str, valid_for: Duration) -> Result<HostedUrl>;

    /// What the store is, for messages: a folder's path, a bucket's URL.
    fn describe(&self) -> String;

    /// Checks that the store takes writes, before anything is paid for: a folder is created
    /// and a file made in it and removed; a bucket is written a small marker,
    /// `.gptimage-write-check` under the prefix (the same bytes each time).
    async fn check_writable(&self) -> Result<()>;
}

/// Keeps, in the folder `dir` (created if missing), content whose SHA-256 is `sha256` as `key`:
/// `write` puts it at its path, unless the same content is there already.
fn keep(
    dir: &Path,
    key: String,
    sha256: String,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<Stored> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::write(format!("could not create the folder {}", dir.display()), e))?;
    let path = dir.join(&key);
    let same = file_sha256_hex(&path).is_ok_and(|there| there == sha256);
    if !same {
        write(&path).map_err(|e| Error::write(format!("could not write {}", path.display()), e))?;
    }
    Ok(Stored {
        location: path.display().to_string(),
        key,
        sha256,
        written: !same,
    })
}

/// The content type of an image by its extension.
#[cfg_attr(not(feature = "object-store"), allow(dead_code))]
pub(crate) fn content_type(extension: &str) -> &'static str {
    match extension {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "html" => "text/html; charset=utf-8",
        "jsonl" => "application/x-ndjson",
        _ => "application/octet-stream",
    }
}

/// Refuses a key that could name something outside the store's folder or prefix: empty, with
/// a `..` part, absolute, or with a backslash or a NUL.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains(['\\', '\0'])
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Error::config(format!(
            "{key:?} is not a name a result can be kept under: use names like line-7-1.png or \
             run-7/line-7-1.png (no empty, `.` or `..` parts, no leading `/`, no backslash)"
        )));
    }
    Ok(())
}

/// The hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The hex SHA-256 of the file at `path`, read a piece at a time.
pub(crate) fn file_sha256_hex(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buffer)? {
            0 => return Ok(hex(&hasher.finalize())),
            n => hasher.update(&buffer[..n]),
        }
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A local folder, created when first written to. Files are written through a temporary file
/// and a rename, synced, so no half-written file ever carries a final name.
#[derive(Debug, Clone)]
pub struct FolderResults {
    dir: PathBuf,
}

impl FolderResults {
    /// The folder `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait::async_trait]
impl ResultStore for FolderResults {
    async fn put(&self, key: &str, bytes: &[u8], _extension: &str) -> Result<Stored> {
        check_key(key)?;
        let (dir, key, bytes) = (self.dir.clone(), key.to_owned(), bytes.to_vec());
        on_a_thread("the writing thread", move || {
            let sha256 = sha256_hex(&bytes);
            keep(&dir, key, sha256, |path| {
                crate::files::write_atomically(path, &bytes)
            })
        })
        .await
    }

    async fn put_file(&self, key: &str, file: &Path, _extension: &str) -> Result<Stored> {
        check_key(key)?;
        let (dir, key, file) = (self.dir.clone(), key.to_owned(), file.to_path_buf());
        on_a_thread("the writing thread", move || {
            let sha256 = file_sha256_hex(&file)
                .map_err(|e| Error::write(format!("could not read {}", file.display()), e))?;
            keep(&dir, key, sha256, |path| {
                crate::files::copy_atomically(&file, path)
            })
        })
        .await
    }

    async fn signed_url(&self, key: &str, _: Duration) -> Result<HostedUrl> {
        Err(Error::config(format!(
            "{} is a file of this machine: a folder gives no URL (keep results in a bucket for \
             that)",
            self.dir.join(key).display()
        )))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    async fn check_writable(&self) -> Result<()> {
        let dir = self.dir.clone();
        let run = move || {
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    tempfile::Builder::new()
                        .prefix(".gptimage-")
                        .tempfile_in(&dir)
                })
                .map(drop)
                .map_err(|e| Error::write(format!("could not write in {}", dir.display()), e))
        };
        on_a_thread("the writing thread", run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_store() {
        for good in [
            "line-7-1.png",
            "run-7/line-7-1.png",
            ".gptimage-write-check",
        ] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\..\\b",
            "a\0b",
            "a/",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_folder_refuses_a_key_that_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderResults::new(dir.path().join("inner"));
        let error = store.put("../escaped.png", b"x", "png").await.unwrap_err();
        assert!(error.to_string().contains("not a name"), "{error}");
        assert!(!dir.path().join("escaped.png").exists());
        let kept = store.put("ok-1.png", b"x", "png").await.unwrap();
        assert!(kept.written);
        assert!(dir.path().join("inner/ok-1.png").exists());
    }
}
