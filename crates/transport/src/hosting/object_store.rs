//! [`ObjectStoreHost`]: input images in a bucket of S3 (or an S3-compatible store), Google
//! Cloud Storage or Azure Blob, handed to the service as signed GET URLs (feature
//! `object-store`, on the `object_store` crate, through this crate's own HTTP stack and TLS).

use std::path::Path;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::{HttpClient, HttpConnector};
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use object_store::path::Path as StorePath;
use object_store::signer::Signer;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};

use super::results::{ResultStore, Stored, content_type, sha256_hex};
use super::{HostedUrl, ImageHost, LocalImage, VALIDITY_MARGIN};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files::on_a_thread;

/// The longest a signed URL may live (S3's limit).
const MAX_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A bucket (or container) and a prefix in it, named by a URL: `s3://bucket/prefix`,
/// `gs://bucket/prefix` or `az://container/prefix`.
///
/// Credentials and settings come from the environment, as each store's own tools read them:
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` and
/// `AWS_ENDPOINT` (an S3-compatible store; with `AWS_ALLOW_HTTP=true` for plain http) for S3;
/// `GOOGLE_APPLICATION_CREDENTIALS` or `GOOGLE_SERVICE_ACCOUNT` for Google Cloud Storage;
/// `AZURE_STORAGE_ACCOUNT_NAME` and `AZURE_STORAGE_ACCOUNT_KEY` for Azure (a signed URL needs
/// the account key). Missing credentials are a configuration error before anything is sent.
///
/// Each image is stored as `{prefix}/{sha256}.{extension}`, uploaded only if it is not there
/// yet, and handed out as a signed GET URL.
pub struct ObjectStoreHost {
    bucket: Bucket,
}

/// A bucket (or container) and a prefix in it, reached through this crate's HTTP stack.
struct Bucket {
    store: Store,
    prefix: StorePath,
    shown: String,
}

enum Store {
    S3(AmazonS3),
    Gcs(GoogleCloudStorage),
    Azure(MicrosoftAzure),
}

impl std::fmt::Debug for ObjectStoreHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreHost")
            .field("url", &self.bucket.shown)
            .finish_non_exhaustive()
    }
}

/// object_store's requests through this crate's HTTP stack (its TLS provider and the
/// platform's roots, its proxy), never a client of object_store's own.
#[derive(Debug)]
struct Stack(reqwest::Client);

impl HttpConnector for Stack {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}

impl ObjectStoreHost {
    /// The host `url` names, reached through the HTTP stack `config` describes.
    ///
    /// ```no_run
    /// # fn run(config: &gptimage_transport::Config) -> gptimage_transport::Result<()> {
    /// use gptimage_transport::hosting::ObjectStoreHost;
    ///
    /// let host = ObjectStoreHost::from_url("s3://my-bucket/gptimage-inputs", config)?;
    /// # let _ = host;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_url(url: &str, config: &Config) -> Result<Self> {
        Self::from_url_with(url, &[], config)
    }

    /// Like [`from_url`](Self::from_url), with settings given rather than read from the
    /// environment (they win over it), named as `object_store` names them: for S3
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, `aws_endpoint`,
    /// `aws_allow_http`…; for Google Cloud Storage `google_service_account`…; for Azure
    /// `azure_storage_account_name`, `azure_storage_account_key`….
    pub fn from_url_with(url: &str, settings: &[(&str, &str)], config: &Config) -> Result<Self> {
        Ok(Self {
            bucket: Bucket::open(url, settings, config, "image host")?,
        })
    }
}

/// How a store's requests are retried: object_store's default retries a store that does not
/// answer for three minutes; a bucket that is gone or stopped is reported within seconds, so
/// a batch worker stops before it pays for more.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    }
}

impl Bucket {
    /// The bucket `url` names, for `what` (its name in messages).
    fn open(url: &str, settings: &[(&str, &str)], config: &Config, what: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| {
            Error::config(format!(
                "the {what} {url:?} is not a URL ({e}); use s3://bucket/prefix, \
                 gs://bucket/prefix or az://container/prefix"
            ))
        })?;
        let bucket = parsed.host_str().unwrap_or_default();
        if bucket.is_empty() {
            return Err(Error::config(format!(
                "the {what} {url:?} names no bucket: use s3://bucket/prefix"
            )));
        }
        if parsed.query().is_some()
            || parsed.fragment().is_some()
            || parsed.port().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(Error::config(format!(
                "the {what} URL {} takes a bucket and a prefix only (s3://bucket/prefix): no \
                 user, password, port, query or fragment; credentials and the endpoint come \
                 from the environment (AWS_ENDPOINT, …)",
                gptimage_types::redact(url)
            )));
        }
        // The stack follows no redirect: the signing headers and a session token stay with
        // the store's own endpoint. Every request has the request timeout (a store that
        // accepts a connection and never answers is given up), and plain http only where the
        // store's settings allow it (AWS_ALLOW_HTTP for a local S3, say), as object_store's
        // own client would: a bearer token or a session token never goes out in clear text.
        let client = crate::reqwest_transport::stack(config)?
            .timeout(config.request_timeout())
            .https_only(!allows_http(settings))
            .build()
            .map_err(|e| Error::config(format!("the HTTP client could not be built: {e}")))?;
        let unusable =
            |e: object_store::Error| Error::config(format!("the {what} {url} cannot be used: {e}"));
        let setting = |key: &str| {
            Error::config(format!(
                "the {what} setting {key:?} is not one object_store knows"
            ))
        };
        let given = |name: &str| settings.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        let store = match parsed.scheme() {
            "s3" | "s3a" => {
                need_env(
                    what,
                    url,
                    &given,
                    &[
                        &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                        &["AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"],
                        &["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"],
                        &["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                    ],
                )?;
                let mut builder = AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .with_http_connector(Stack(client));
                for (key, value) in settings {
                    let key = key.to_ascii_lowercase().parse().map_err(|_| setting(key))?;
                    builder = builder.with_config(key, *value);
                }
                Store::S3(builder.build().map_err(unusable)?)
            }
            "gs" => {
                need_env(
                    what,
                    url,
                    &given,
                    &[
                        &["GOOGLE_APPLICATION_CREDENTIALS"],
                        &["GOOGLE_SERVICE_ACCOUNT"],
                        &["GOOGLE_SERVICE_ACCOUNT_PATH"],
                        &["GOOGLE_SERVICE_ACCOUNT_KEY"],
                    ],
                )?;
                let mut builder = GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .with_http_connector(Stack(client));
                for (key, value) in settings {
                    let key = key.to_ascii_lowercase().parse().map_err(|_| setting(key))?;
                    builder = builder.with_config(key, *value);
                }
                Store::Gcs(builder.build().map_err(unusable)?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                need_env(
                    what,
                    url,
                    &given,
                    &[
                        &["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"],
                        &["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCESS_KEY"],
                        &["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_MASTER_KEY"],
                    ],
                )?;
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(retry())
                    .with_http_connector(Stack(client));
                for (key, value) in settings {
                    let key = key.to_ascii_lowercase().parse().map_err(|_| setting(key))?;
                    builder = builder.with_config(key, *value);
                }
                Store::Azure(builder.build().map_err(unusable)?)
            }
            other => {
                return Err(Error::config(format!(
                    "the {what} {url:?} is a {other}:// URL; use s3://bucket/prefix, \
                     gs://bucket/prefix or az://container/prefix"
                )));
            }
        };
        // The URL's path is percent-encoded (`my%20run`): the prefix is what it stands for.
        let prefix = StorePath::from_url_path(parsed.path()).map_err(|e| {
            Error::config(format!(
                "the {what} {url:?} has a prefix that cannot be used: {e}"
            ))
        })?;
        let shown = match prefix.as_ref() {
            "" => format!("{}://{bucket}", parsed.scheme()),
            prefix => format!("{}://{bucket}/{prefix}", parsed.scheme()),
        };
        Ok(Self {
            store,
            prefix,
            shown,
        })
    }

    fn store(&self) -> &dyn ObjectStore {
        match &self.store {
            Store::S3(s) => s,
            Store::Gcs(s) => s,
            Store::Azure(s) => s,
        }
    }

    fn signer(&self) -> &dyn Signer {
        match &self.store {
            Store::S3(s) => s,
            Store::Gcs(s) => s,
            Store::Azure(s) => s,
        }
    }
}

/// Whether the settings or the environment allow plain http to the store (a local S3
/// server, an emulator): `allow_http` as object_store names it.
fn allows_http(settings: &[(&str, &str)]) -> bool {
    let yes = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes");
    settings
        .iter()
        .any(|(k, v)| k.to_ascii_lowercase().ends_with("allow_http") && yes(v))
        || [
            "AWS_ALLOW_HTTP",
            "AZURE_ALLOW_HTTP",
            "GOOGLE_ALLOW_HTTP",
            "ALLOW_HTTP",
        ]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| yes(&v)))
}

/// Refuses a host whose credentials are missing: one of `sets` must be set whole, in the
/// environment or among the settings given.
fn need_env(what: &str, url: &str, given: &dyn Fn(&str) -> bool, sets: &[&[&str]]) -> Result<()> {
    let set = |name: &&str| given(name) || std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if sets.iter().any(|names| names.iter().all(set)) {
        return Ok(());
    }
    let wanted: Vec<String> = sets.iter().map(|names| names.join(" and ")).collect();
    Err(Error::config(format!(
        "no credentials for the {what} {url} in the environment: set {}",
        wanted.join(", or ")
    )))
}

#[async_trait::async_trait]
impl ImageHost for ObjectStoreHost {
    async fn host(&self, image: &LocalImage, valid_for: Duration) -> Result<HostedUrl> {
        let bucket = &self.bucket;
        let path = bucket.prefix.clone().join(image.key());
        let shown = format!("{}/{}", bucket.shown.trim_end_matches('/'), image.key());
        let failed = |what: &str, e: object_store::Error| {
            Error::config(format!(
                "the input image {} could not be {what} {shown}: {e}",
                image.path().display()
            ))
        };
        match bucket.store().head(&path).await {
            Ok(_) => {} // already there: the same content, by its name
            Err(object_store::Error::NotFound { .. }) => {
                let payload = PutPayload::from(image.bytes().to_vec());
                bucket
                    .store()
                    .put(&path, payload)
                    .await
                    .map_err(|e| failed("uploaded to", e))?;
            }
            Err(e) => return Err(failed("looked up at", e)),
        }
        let valid = valid_for.saturating_add(VALIDITY_MARGIN).min(MAX_VALIDITY);
        let url = bucket
            .signer()
            .signed_url(http::Method::GET, &path, valid)
            .await
            .map_err(|e| failed("signed at", e))?;
        Ok(HostedUrl(url.into()))
    }
}

/// A results store in a bucket of S3 (or an S3-compatible store), Google Cloud Storage or
/// Azure, named by a URL (`s3://bucket/run-7`), with credentials as for
/// [`ObjectStoreHost`]: every image a fleet of workers finishes lands under one prefix. Each
/// object is written whole by one request (a store never shows half of one), with its content
/// type and its SHA-256 as metadata; an object of the same name and content is not written
/// again.
///
/// ```no_run
/// # async fn run(client: gptimage_transport::Client, task: gptimage_types::TaskInfo) -> gptimage_transport::Result<()> {
/// use std::time::Duration;
/// use gptimage_transport::hosting::{ObjectStoreResults, ResultStore};
///
/// let bucket = ObjectStoreResults::from_url("s3://my-bucket/run-7", client.config())?;
/// let stored = client.save(&task, &bucket, "lighthouse").await?;
/// let url = bucket.signed_url(&stored[0].key, Duration::from_secs(3600)).await?;
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
pub struct ObjectStoreResults {
    bucket: Bucket,
}

impl std::fmt::Debug for ObjectStoreResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreResults")
            .field("url", &self.bucket.shown)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreResults {
    /// The store `url` names, reached through the HTTP stack `config` describes.
    pub fn from_url(url: &str, config: &Config) -> Result<Self> {
        Self::from_url_with(url, &[], config)
    }

    /// Like [`from_url`](Self::from_url), with settings given (see
    /// [`ObjectStoreHost::from_url_with`]).
    pub fn from_url_with(url: &str, settings: &[(&str, &str)], config: &Config) -> Result<Self> {
        Ok(Self {
            bucket: Bucket::open(url, settings, config, "results store")?,
        })
    }

    /// The store's URL, as given.
    pub fn url(&self) -> &str {
        &self.bucket.shown
    }
}

/// An object a results store is about to keep: its name, where it is, and its content's hash.
struct Object<'a> {
    bucket: &'a Bucket,
    key: &'a str,
    path: StorePath,
    location: String,
    sha256: String,
}

impl<'a> Object<'a> {
    /// `key` in `bucket`, for content whose SHA-256 is `sha256`; a key that could leave the
    /// prefix is refused.
    fn new(bucket: &'a Bucket, key: &'a str, sha256: String) -> Result<Self> {
        super::results::check_key(key)?;
        Ok(Self {
            bucket,
            key,
            path: bucket.prefix.clone().join(key),
            location: format!("{}/{key}", bucket.shown.trim_end_matches('/')),
            sha256,
        })
    }

    /// Whether the same content is there already (its SHA-256 in the object's metadata). A
    /// look-up the store refuses lets the write decide: S3 answers 403 for a missing key to a
    /// role without ListBucket, as least-privilege policies have it.
    async fn there(&self) -> Result<bool> {
        use object_store::{Attribute, GetOptions};
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.bucket.store().get_opts(&self.path, head).await {
            Ok(there) => Ok(there
                .attributes
                .get(&Attribute::Metadata(SHA256.into()))
                .is_some_and(|v| v.as_ref() == self.sha256)),
            Err(
                object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. },
            ) => Ok(false),
            Err(e) => Err(self.failed("looked up in", e)),
        }
    }

    /// What the object is written with: its content type, and its content's hash.
    fn attributes(&self, extension: &str) -> object_store::Attributes {
        use object_store::{Attribute, AttributeValue, Attributes};
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::ContentType,
            AttributeValue::from(content_type(extension)),
        );
        attributes.insert(
            Attribute::Metadata(SHA256.into()),
            AttributeValue::from(self.sha256.clone()),
        );
        attributes
    }

    /// The object could not be `what` ("written to") the store.
    fn failed(&self, what: &str, e: object_store::Error) -> Error {
        Error::stored_nowhere(
            format!(
                "{} could not be {what} the results store {}",
                self.location, self.bucket.shown
            ),
            Box::new(e),
        )
    }

    /// The object as kept; `written` if this call wrote it.
    fn stored(&self, written: bool) -> Stored {
        Stored {
            key: self.key.to_owned(),
            location: self.location.clone(),
            sha256: self.sha256.clone(),
            written,
        }
    }
}

/// The marker a results store's write check puts under the prefix, and what it says.
const WRITE_CHECK: &str = ".gptimage-write-check";
const WRITE_CHECK_TEXT: &[u8] =
    b"gptimage writes this before it pays for a task, to check that it may write here.\n";

/// The metadata name under which an object's SHA-256 is kept.
const SHA256: &str = "sha256";
/// The size of each part of a file's upload: S3's smallest but the last is 5 MiB. At most two
/// parts are in flight, so a file of any size takes about 24 MiB to upload.
const PART: usize = 8 * 1024 * 1024;

#[async_trait::async_trait]
impl ResultStore for ObjectStoreResults {
    async fn put(&self, key: &str, bytes: &[u8], extension: &str) -> Result<Stored> {
        let object = Object::new(&self.bucket, key, sha256_hex(bytes))?;
        if object.there().await? {
            return Ok(object.stored(false));
        }
        let options = object_store::PutOptions {
            attributes: object.attributes(extension),
            ..object_store::PutOptions::default()
        };
        self.bucket
            .store()
            .put_opts(&object.path, PutPayload::from(bytes.to_vec()), options)
            .await
            .map_err(|e| object.failed("written to", e))?;
        Ok(object.stored(true))
    }

    async fn put_file(&self, key: &str, file: &Path, extension: &str) -> Result<Stored> {
        use object_store::{PutMultipartOptions, WriteMultipart};
        // A name that could leave the prefix is refused before the file is read.
        super::results::check_key(key)?;
        let unread = |e| Error::write(format!("could not read {}", file.display()), e);
        let sha256 = {
            let file = file.to_path_buf();
            on_a_thread("the reading thread", move || {
                super::results::file_sha256_hex(&file)
                    .map_err(|e| Error::write(format!("could not read {}", file.display()), e))
            })
            .await?
        };
        let object = Object::new(&self.bucket, key, sha256)?;
        if object.there().await? {
            return Ok(object.stored(false));
        }
        // A multipart upload: its parts are invisible until it completes, and one that fails is
        // aborted, so no half-written object ever carries the name.
        let options = PutMultipartOptions {
            attributes: object.attributes(extension),
            ..PutMultipartOptions::default()
        };
        let upload = self
            .bucket
            .store()
            .put_multipart_opts(&object.path, options)
            .await
            .map_err(|e| object.failed("written to", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let copied: Result<()> = async {
            let mut reader = Some((
                std::fs::File::open(file).map_err(unread)?,
                vec![0u8; 1024 * 1024],
            ));
            loop {
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| object.failed("written to", e))?;
                let (mut from, mut buffer) = reader.take().expect("put back each round");
                let (read, from, buffer) = on_a_thread("the reading thread", move || {
                    use std::io::Read;
                    Ok((from.read(&mut buffer), from, buffer))
                })
                .await?;
                match read.map_err(unread)? {
                    0 => return Ok(()),
                    n => writer.write(&buffer[..n]),
                }
                reader = Some((from, buffer));
            }
        }
        .await;
        match copied {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| object.failed("written to", e))?;
                Ok(object.stored(true))
            }
            Err(error) => {
                let _ = writer.abort().await;
                Err(error)
            }
        }
    }

    async fn signed_url(&self, key: &str, valid_for: Duration) -> Result<HostedUrl> {
        let bucket = &self.bucket;
        let path = bucket.prefix.clone().join(key);
        let url = bucket
            .signer()
            .signed_url(http::Method::GET, &path, valid_for.min(MAX_VALIDITY))
            .await
            .map_err(|e| {
                Error::config(format!(
                    "{}/{key} could not be signed in the results store {}: {e}",
                    bucket.shown.trim_end_matches('/'),
                    bucket.shown
                ))
            })?;
        Ok(HostedUrl(url.into()))
    }

    fn describe(&self) -> String {
        self.bucket.shown.clone()
    }

    async fn check_writable(&self) -> Result<()> {
        let bucket = &self.bucket;
        let path = bucket.prefix.clone().join(WRITE_CHECK);
        bucket
            .store()
            .put(&path, PutPayload::from_static(WRITE_CHECK_TEXT))
            .await
            .map(drop)
            .map_err(|e| {
                Error::stored_nowhere(
                    format!(
                        "the results store {} does not take writes (it must exist, and the \
                         credentials may write to it); nothing was paid for",
                        bucket.shown
                    ),
                    Box::new(e),
                )
            })
    }
}
