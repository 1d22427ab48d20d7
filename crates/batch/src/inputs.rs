//! Input images a batch line names as local files, relative to the batch file: each distinct
//! file (by content) is checked, hosted once, and its URL recorded in the state, so a later line
//! or a later run reuses it rather than upload again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gptimage::hosting::{ImageHost, LocalImage, VALIDITY_MARGIN, names_a_file};
use serde_json::Value;

use crate::Error;
use crate::source::RawLine;
use crate::store::Store;

/// Where a batch's local input images go (`Options::image_host`).
#[derive(Clone)]
pub struct InputHost(pub Arc<dyn ImageHost>);

impl std::fmt::Debug for InputHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputHost")
    }
}

/// Where a batch's images go when not into its output folder (`Options::results`): a bucket
/// every worker of a fleet writes to.
#[derive(Clone)]
pub struct ResultsStore(pub Arc<dyn gptimage::hosting::ResultStore>);

impl std::fmt::Debug for ResultsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResultsStore({})", self.0.describe())
    }
}

/// A run's hosting of local input images: the host, and the URLs this run already has.
pub(crate) struct Inputs {
    host: Option<InputHost>,
    /// By content hash: the URL this run hosted or found the file at, and until when it is
    /// valid (seconds since 1970). Each behind its own lock, so a file is looked for once even
    /// when several lines name it at the same moment.
    known: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Hosted>>>>>,
    /// By path: the content hash of a file as it was read (with its size and modification
    /// time), so that lines naming an unchanged file do not read it again.
    files: Mutex<HashMap<PathBuf, (Stamp, String)>>,
    /// How long a URL must stay valid: the client's wait timeout.
    valid_for: Duration,
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Inputs {
    pub(crate) fn new(host: Option<InputHost>, valid_for: Duration) -> Self {
        Self {
            host,
            known: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            valid_for,
        }
    }

    /// `raw` with each local file among its `images` replaced by a URL the service can fetch.
    /// `Ok(Err(reason))`: the line is invalid (a file missing, unreadable, not an image, too
    /// large). `Err`: the run cannot host files (no host given, or the host refuses), and stops
    /// before anything more is sent.
    pub(crate) async fn resolve(
        &self,
        raw: RawLine,
        folder: &Path,
        store: &Store,
    ) -> Result<Result<RawLine, String>, Error> {
        let Ok(mut value) = serde_json::from_str::<Value>(&raw.text) else {
            return Ok(Ok(raw)); // the parse says what is wrong
        };
        let Some(images) = value.get_mut("images").and_then(Value::as_array_mut) else {
            return Ok(Ok(raw));
        };
        if !images.iter().any(|i| i.as_str().is_some_and(names_a_file)) {
            return Ok(Ok(raw));
        }
        let Some(host) = &self.host else {
            return Err(Error::ImageHost {
                line: raw.number,
                message: "it names local image files, and no image host was given: add \
                          --image-host s3://bucket/prefix (or gs://, az://), or --emulator"
                    .to_owned(),
            });
        };
        for entry in images.iter_mut() {
            let Some(name) = entry.as_str().filter(|e| names_a_file(e)) else {
                continue;
            };
            let path = folder.join(name);
            // An unchanged file's hash is known; a new or changed one is read (and checked).
            let stamp = stamp(&path);
            let seen = stamp.and_then(|stamp| {
                let files = lock(&self.files);
                files
                    .get(&path)
                    .filter(|(seen, _)| *seen == stamp)
                    .map(|(_, sha)| sha.clone())
            });
            let (sha, mut image) = match seen {
                Some(sha) => (sha, None),
                None => match read(&path).await? {
                    Ok(image) => {
                        if let Some(stamp) = stamp {
                            let sha = image.sha256().to_owned();
                            lock(&self.files).insert(path.clone(), (stamp, sha));
                        }
                        (image.sha256().to_owned(), Some(image))
                    }
                    Err(reason) => return Ok(Err(reason)),
                },
            };
            match self
                .url(&sha, &mut image, &path, host, store, raw.number)
                .await?
            {
                Ok(url) => *entry = Value::String(url),
                Err(reason) => return Ok(Err(reason)),
            }
        }
        Ok(Ok(RawLine {
            text: value.to_string(),
            ..raw
        }))
    }

    /// The URL of the file of content `sha` at `path` (`image`, if it was read already): one
    /// this run has, or one the state recorded, still valid for a whole wait; else a fresh one
    /// from the host, recorded. `Ok(Err(reason))`: the file had to be read, and could not be.
    async fn url(
        &self,
        sha: &str,
        image: &mut Option<LocalImage>,
        path: &Path,
        host: &InputHost,
        store: &Store,
        line: u64,
    ) -> Result<Result<String, String>, Error> {
        let cell = lock(&self.known).entry(sha.to_owned()).or_default().clone();
        let mut known = cell.lock().await;
        let needed_until =
            now_s().saturating_add(self.valid_for.as_secs().min(i64::MAX as u64 / 2) as i64);
        if let Some((url, expires)) = known.as_ref()
            && *expires > needed_until
        {
            return Ok(Ok(url.clone()));
        }
        if let Some((url, expires)) = store.hosted_input(sha, needed_until).await? {
            *known = Some((url.clone(), expires));
            return Ok(Ok(url));
        }
        let image = match image {
            Some(image) => image,
            None => match read(path).await? {
                Ok(read) => image.insert(read),
                Err(reason) => return Ok(Err(reason)),
            },
        };
        let hosted = host
            .0
            .host(image, self.valid_for)
            .await
            .map_err(|e| Error::ImageHost {
                line,
                message: e.to_string(),
            })?;
        let url = hosted.expose().to_owned();
        let expires = needed_until.saturating_add(VALIDITY_MARGIN.as_secs() as i64);
        store.record_hosted_input(sha, &url, expires).await?;
        *known = Some((url.clone(), expires));
        Ok(Ok(url))
    }
}

/// A URL a file is at, and until when it is valid (seconds since 1970).
type Hosted = (String, i64);

/// What tells a file unchanged since it was read: its size and modification time.
type Stamp = (u64, SystemTime);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Reads and checks an input file off the runtime's threads; `Ok(Err(reason))` if it cannot be
/// used.
async fn read(path: &Path) -> Result<Result<LocalImage, String>, Error> {
    let path = path.to_path_buf();
    let image = tokio::task::spawn_blocking(move || LocalImage::read(path))
        .await
        .map_err(|e| Error::Panicked(e.to_string()))?;
    Ok(image.map_err(|e| e.to_string()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// For a dry run: lines with their local files checked (readable, an image, within the limit)
/// and stood in for by URLs, uploading nothing. Each file is read once.
#[derive(Default)]
pub(crate) struct StandIns {
    checked: HashMap<std::path::PathBuf, Result<String, String>>,
}

impl StandIns {
    /// `line` as a run would send it, its local files replaced by stand-in URLs; `Err`: why a
    /// file is refused.
    pub(crate) fn apply(&mut self, line: &RawLine, folder: &Path) -> Result<RawLine, String> {
        let Ok(mut value) = serde_json::from_str::<Value>(&line.text) else {
            return Ok(line.clone());
        };
        let Some(images) = value.get_mut("images").and_then(Value::as_array_mut) else {
            return Ok(line.clone());
        };
        let mut changed = false;
        for entry in images.iter_mut() {
            let Some(name) = entry.as_str().filter(|e| names_a_file(e)) else {
                continue;
            };
            let path = folder.join(name);
            let key = self
                .checked
                .entry(path.clone())
                .or_insert_with(|| {
                    LocalImage::read(&path)
                        .map(|image| image.key())
                        .map_err(|e| e.to_string())
                })
                .clone()?;
            *entry = Value::String(format!("https://upload.invalid/{key}"));
            changed = true;
        }
        if !changed {
            return Ok(line.clone());
        }
        Ok(RawLine {
            text: value.to_string(),
            ..line.clone()
        })
    }
}
