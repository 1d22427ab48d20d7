//! Input images from local files (feature `async`). The API takes input images only as URLs, so
//! a local file is put on a host the service can fetch from, under its content hash (a file is
//! uploaded once however often it is used), and the request carries a URL that stays valid for
//! as long as the task may need it.
//!
//! - [`LocalImage::read`] checks a file before anything is sent or paid: it exists, is a PNG,
//!   JPEG or WebP image, and is within the size limit.
//! - [`ImageHost`] puts one and gives back its URL: [`PutHost`] for an HTTP host that takes a
//!   `PUT` (the emulator's own, offline), and `ObjectStoreHost` (feature `object-store`) for S3
//!   and S3-compatible stores, Google Cloud Storage and Azure Blob, with signed URLs.
//! - A [`HostedUrl`] is a secret, like the key: its `Debug` and `Display` never show its query
//!   (where a signature lives).
//!
//! ```no_run
//! use std::time::Duration;
//! use gptimage_transport::Client;
//! use gptimage_transport::hosting::{ImageHost, LocalImage, PutHost};
//! use gptimage_types::GenerateRequest;
//!
//! # async fn run(client: Client) -> Result<(), gptimage_transport::Error> {
//! let photo = LocalImage::read("day.png")?;
//! let host = PutHost::new(client.config(), "http://127.0.0.1:8080/uploads/")?;
//! let url = host.host(&photo, client.config().wait_timeout()).await?;
//! let request = GenerateRequest::image_to_image("make it night", [url.expose()]).build()?;
//! let task = client.generate(&request).await?;
//! # let _ = task;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "object-store")]
mod object_store;
mod results;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::transport::{AsyncTransport, HttpRequest, SendOptions};

#[cfg(feature = "object-store")]
pub use self::object_store::{ObjectStoreHost, ObjectStoreResults};
pub use self::results::{FolderResults, ResultStore, Stored};

/// The largest input image [`LocalImage::read`] accepts by default: 20 MiB.
pub const MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024;

/// How much longer than asked a hosted URL stays valid: the service may fetch it a little
/// after the wait began.
pub const VALIDITY_MARGIN: Duration = Duration::from_secs(15 * 60);

/// Whether an input image entry (a command-line argument, a batch line's `images` item) names a
/// local file rather than a URL: it has no `scheme://`. A URL of a scheme the API refuses stays
/// a URL, for the request's own rules to refuse by name.
///
/// ```
/// use gptimage_transport::hosting::names_a_file;
///
/// assert!(names_a_file("photos/day.png"));
/// assert!(!names_a_file("https://example.com/day.png"));
/// assert!(!names_a_file("ftp://example.com/day.png"));
/// ```
pub fn names_a_file(entry: &str) -> bool {
    !entry.contains("://")
}

/// The formats an input image may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageFormat {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// WebP.
    Webp,
}

impl ImageFormat {
    /// The format whose signature `bytes` start with.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(Self::Jpeg)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    /// Its file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// A local image file, read and checked, ready to host.
#[derive(Clone)]
pub struct LocalImage {
    path: PathBuf,
    bytes: Vec<u8>,
    format: ImageFormat,
    sha256: String,
}

impl std::fmt::Debug for LocalImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalImage")
            .field("path", &self.path)
            .field("bytes", &self.bytes.len())
            .field("format", &self.format)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl LocalImage {
    /// Reads `path`, which must be a PNG, JPEG or WebP image of at most [`MAX_IMAGE_BYTES`].
    /// Every refusal is an [`ErrorKind::InvalidRequest`](crate::ErrorKind) that names the file
    /// and says what is allowed.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::read_within(path, MAX_IMAGE_BYTES)
    }

    /// Like [`read`](Self::read), with another size limit.
    pub fn read_within(path: impl AsRef<Path>, max_bytes: u64) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::invalid_request(format!("the input image {shown} cannot be read: {e}"))
        })?;
        if !meta.is_file() {
            return Err(Error::invalid_request(format!(
                "the input image {shown} is not a file"
            )));
        }
        if meta.len() > max_bytes {
            return Err(Error::invalid_request(format!(
                "the input image {shown} is {} bytes; at most {max_bytes} are allowed",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            Error::invalid_request(format!("the input image {shown} cannot be read: {e}"))
        })?;
        Self::from_bytes(path, bytes, max_bytes)
    }

    /// An image already in memory; `name` is what messages call it.
    pub fn from_bytes(name: impl AsRef<Path>, bytes: Vec<u8>, max_bytes: u64) -> Result<Self> {
        let shown = name.as_ref().display();
        if bytes.len() as u64 > max_bytes {
            return Err(Error::invalid_request(format!(
                "the input image {shown} is {} bytes; at most {max_bytes} are allowed",
                bytes.len()
            )));
        }
        let format = ImageFormat::sniff(&bytes).ok_or_else(|| {
            Error::invalid_request(format!(
                "the input image {shown} is not a PNG, JPEG or WebP image"
            ))
        })?;
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            path: name.as_ref().to_path_buf(),
            bytes,
            format,
            sha256,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The SHA-256 of its bytes, in hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Its name on a host: `{sha256}.{extension}`, the same for the same content.
    pub fn key(&self) -> String {
        format!("{}.{}", self.sha256, self.format.extension())
    }
}

/// A URL the service can fetch an input image from. It may carry a signature: its `Debug` and
/// `Display` show it without its query.
#[derive(Clone, PartialEq, Eq)]
pub struct HostedUrl(String);

impl HostedUrl {
    /// The URL, whole: for the request, never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its query (and so without a signature), for messages.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// `url` without its query and fragment: what a message may show of a signed URL.
pub fn redact(url: &str) -> String {
    match url.split_once(['?', '#']) {
        Some((bare, _)) => format!("{bare}?…"),
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for HostedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HostedUrl").field(&self.redacted()).finish()
    }
}

impl std::fmt::Display for HostedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Somewhere to put input images so that the service can fetch them.
#[async_trait::async_trait]
pub trait ImageHost: Send + Sync {
    /// Puts `image` (unless it is there already: its key is its content hash) and returns a URL
    /// valid for at least `valid_for` plus [`VALIDITY_MARGIN`].
    async fn host(&self, image: &LocalImage, valid_for: Duration) -> Result<HostedUrl>;
}

/// A host that takes a `PUT` of each image at `{base}{key}` and serves it at the same URL, such
/// as the emulator's `/uploads/`. Its URLs do not expire. The API key goes along only when the
/// host is the API's own origin.
pub struct PutHost {
    base: url::Url,
    transport: crate::reqwest_transport::ReqwestTransport,
    auth: Option<http::HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for PutHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutHost")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl PutHost {
    /// A host at `base` (ending in `/`), reached through the HTTP stack `config` describes.
    pub fn new(config: &Config, base: &str) -> Result<Self> {
        let mut base = url::Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Error::config(format!("the image host {base:?} is not an http(s) URL"))
            })?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let same_origin = base.origin().ascii_serialization() == config.base.origin;
        Ok(Self {
            auth: same_origin.then(|| config.auth_header.clone()),
            transport: crate::reqwest_transport::ReqwestTransport::new(config)?,
            timeout: config.request_timeout,
            base,
        })
    }
}

#[async_trait::async_trait]
impl ImageHost for PutHost {
    async fn host(&self, image: &LocalImage, _valid_for: Duration) -> Result<HostedUrl> {
        let url = self.base.join(&image.key()).map_err(|e| {
            Error::config(format!("the image host cannot take {}: {e}", image.key()))
        })?;
        let mut request = HttpRequest::new(image.bytes().to_vec());
        *request.method_mut() = http::Method::PUT;
        *request.uri_mut() = url
            .as_str()
            .parse()
            .map_err(|e| Error::config(format!("the image host's URL is unusable: {e}")))?;
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(image.format().content_type()),
        );
        if let Some(auth) = &self.auth {
            headers.insert(http::header::AUTHORIZATION, auth.clone());
        }
        let shown = format!("{}{}", self.base, image.key());
        let answer = self
            .transport
            .send(request, SendOptions::new(self.timeout, 64 * 1024))
            .await
            .map_err(|e| upload_failed(image, &shown, e.to_string()))?;
        if !answer.status().is_success() {
            let body = String::from_utf8_lossy(answer.body());
            let reason = format!("answered {}: {}", answer.status(), body.trim());
            return Err(upload_failed(image, &shown, reason));
        }
        Ok(HostedUrl(url.into()))
    }
}

fn upload_failed(image: &LocalImage, shown: &str, reason: String) -> Error {
    Error::config(format!(
        "the input image {} could not be uploaded to {shown}: {reason}",
        image.path().display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_signatures() {
        assert_eq!(
            ImageFormat::sniff(b"\x89PNG\r\n\x1a\nrest"),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            ImageFormat::sniff(&[0xff, 0xd8, 0xff, 0xe0]),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            ImageFormat::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::Webp)
        );
        assert_eq!(ImageFormat::sniff(b"GIF89a"), None);
        assert_eq!(ImageFormat::sniff(b""), None);
    }

    #[test]
    fn a_signed_url_is_never_shown_whole() {
        let url = HostedUrl("https://b.s3.amazonaws.com/p/abc.png?X-Amz-Signature=f00".into());
        assert_eq!(url.to_string(), "https://b.s3.amazonaws.com/p/abc.png?…");
        assert!(!format!("{url:?}").contains("f00"));
        assert!(url.expose().contains("f00"));
    }
}
