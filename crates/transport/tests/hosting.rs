//! Input images from local files: checked before anything is sent, put on a host under their
//! content hash (once however often they are used), and fetched by the service from the URL
//! the host gives. Against the emulator's own upload host, and a real S3-compatible server
//! (moto's, started here on loopback; `.ci/run` installs it).
#![cfg(feature = "object-store")]

#[path = "support/moto.rs"]
mod moto;
mod support;

use std::path::Path;
use std::time::Duration;

use gptimage_emulator::{Config, Emulator};
use gptimage_transport::hosting::{ImageHost, LocalImage, ObjectStoreHost, PutHost};
use gptimage_transport::test_util::TINY_PNG;
use gptimage_transport::{Client, ErrorKind};
use gptimage_types::GenerateRequest;
use moto::Moto;
use support::{Reply, Scripted};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(emulator: &Emulator) -> Client {
    Client::builder()
        .api_key(emulator.api_key())
        .base_url(emulator.base_url())
        .build()
        .unwrap()
}

/// A PNG on disk, made by the emulator's own renderer (a real picture to edit).
fn photo(
    dir: &Path,
    emulator: &Emulator,
    client: &Client,
    rt: &tokio::runtime::Runtime,
) -> std::path::PathBuf {
    let _ = emulator;
    let task = rt
        .block_on(
            client.generate(
                &GenerateRequest::text_to_image("a day photo")
                    .build()
                    .unwrap(),
            ),
        )
        .unwrap();
    rt.block_on(client.download_to_dir(&task, dir))
        .unwrap()
        .remove(0)
}

#[test]
fn bad_files_are_refused_before_anything_is_sent_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let big = dir.path().join("big.png");
    std::fs::write(&big, [TINY_PNG, &[0u8; 4096]].concat()).unwrap();
    let cases = [
        (dir.path().join("missing.png"), "cannot be read"),
        (dir.path().to_path_buf(), "is not a file"),
        (text.clone(), "is not a PNG, JPEG or WebP image"),
    ];
    for (path, why) in cases {
        let error = LocalImage::read(&path).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidRequest);
        let text = error.to_string();
        assert!(text.contains(why), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
    let error = LocalImage::read_within(&big, 1024).unwrap_err().to_string();
    assert!(error.contains("at most 1024"), "{error}");
    let image = LocalImage::read_within(&big, 1 << 20).unwrap();
    assert_eq!(image.key().len(), 64 + ".png".len());
}

#[test]
fn the_emulators_host_takes_a_file_once_and_the_emulator_edits_it() {
    let rt = runtime();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let client = client(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let image = LocalImage::read(photo(dir.path(), &emulator, &client, &rt)).unwrap();
    let host = PutHost::new(client.config(), &emulator.uploads_url()).unwrap();
    let url = rt
        .block_on(host.host(&image, Duration::from_secs(60)))
        .unwrap();
    let again = rt
        .block_on(host.host(&image, Duration::from_secs(60)))
        .unwrap();
    assert_eq!(url, again, "the same content, the same URL");
    assert_eq!(emulator.counters().uploads_stored, 1);
    let edit = GenerateRequest::image_to_image("make it night", [url.expose()])
        .build()
        .unwrap();
    let task = rt.block_on(client.generate(&edit)).unwrap();
    assert_eq!(task.images().len(), 1);
    // Without the key, the host refuses the upload, and says so.
    let keyless = Client::builder()
        .api_key("sk-wrong")
        .base_url(emulator.base_url())
        .build()
        .unwrap();
    let other = LocalImage::from_bytes("tiny.png", TINY_PNG.to_vec(), 1 << 20).unwrap();
    let host = PutHost::new(keyless.config(), &emulator.uploads_url()).unwrap();
    let error = rt
        .block_on(host.host(&other, Duration::from_secs(60)))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("401") && error.contains("tiny.png"),
        "{error}"
    );
}

fn s3_settings(moto: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("aws_access_key_id", "test-key".to_owned()),
        ("aws_secret_access_key", "test-secret".to_owned()),
        ("aws_region", "us-east-1".to_owned()),
        ("aws_endpoint", moto.endpoint()),
        ("aws_allow_http", "true".to_owned()),
    ]
}

fn s3_host(
    moto: &Moto,
    url: &str,
    config: &gptimage_transport::Config,
) -> gptimage_transport::Result<ObjectStoreHost> {
    let settings = s3_settings(moto);
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ObjectStoreHost::from_url_with(url, &settings, config)
}

#[test]
fn an_s3_bucket_hosts_a_file_once_behind_a_signed_url_the_emulator_fetches() {
    let moto = Moto::start();
    moto.bucket("inputs");
    let rt = runtime();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let client = client(&emulator);
    let dir = tempfile::tempdir().unwrap();
    let image = LocalImage::read(photo(dir.path(), &emulator, &client, &rt)).unwrap();
    let host = s3_host(&moto, "s3://inputs/gptimage/edits", client.config()).unwrap();

    let url = rt
        .block_on(host.host(&image, Duration::from_secs(600)))
        .unwrap();
    let key = format!("gptimage/edits/{}", image.key());
    assert!(url.expose().contains(&key), "{url:?}");
    assert!(url.expose().contains("X-Amz-Signature="), "a signed URL");
    assert!(
        url.expose().contains("X-Amz-Expires=1500"),
        "valid for the wait and a margin"
    );
    assert!(
        !url.to_string().contains("X-Amz-Signature"),
        "never shown whole: {url}"
    );
    let listed = |moto: &Moto| moto.request("GET", "/inputs?list-type=2").1;
    let first = listed(&moto);
    assert!(first.contains("<KeyCount>1</KeyCount>"), "{first}");
    // The same content again: looked up, not uploaded again (its modification time holds).
    std::thread::sleep(Duration::from_millis(1100));
    rt.block_on(host.host(&image, Duration::from_secs(600)))
        .unwrap();
    assert_eq!(listed(&moto), first, "uploaded once");

    // The emulator fetches the signed URL for an image-to-image task.
    let edit = GenerateRequest::image_to_image("make it night", [url.expose()])
        .build()
        .unwrap();
    let task = rt.block_on(client.generate(&edit)).unwrap();
    assert_eq!(task.images().len(), 1);

    // A URL the store does not serve (here, one naming an object that is not there): the task
    // reports it clearly, without the signature.
    let gone = url
        .expose()
        .replace(&image.sha256()[..16], "0000000000000000");
    let edit = GenerateRequest::image_to_image("make it night", [gone])
        .build()
        .unwrap();
    let error = rt.block_on(client.generate(&edit)).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TaskFailed);
    let message = error.server_message().unwrap_or_default().to_owned();
    assert!(
        message.contains("input image 1") && message.contains("404"),
        "{message}"
    );
    assert!(!message.contains("Signature"), "{message}");
}

#[test]
fn a_missing_bucket_or_missing_credentials_are_clear_errors_before_anything_is_sent() {
    let moto = Moto::start();
    let rt = runtime();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let client = client(&emulator);
    let image = LocalImage::from_bytes("tiny.png", TINY_PNG.to_vec(), 1 << 20).unwrap();
    let host = s3_host(&moto, "s3://no-such-bucket/x", client.config()).unwrap();
    let error = rt
        .block_on(host.host(&image, Duration::from_secs(60)))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    let text = error.to_string();
    assert!(
        text.contains("tiny.png") && text.contains("s3://no-such-bucket/x"),
        "{text}"
    );
    // No credentials at all (none given; the test's environment has none either).
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        let error = ObjectStoreHost::from_url("s3://inputs/x", client.config()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("no credentials") && text.contains("AWS_ACCESS_KEY_ID"),
            "{text}"
        );
    }
    let error = ObjectStoreHost::from_url("ftp://inputs/x", client.config()).unwrap_err();
    assert!(error.to_string().contains("s3://bucket/prefix"), "{error}");
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");
}

#[test]
fn a_redirecting_store_endpoint_gets_the_credentials_and_the_host_it_names_does_not() {
    let session = "session-SECRET-token-0123456789";
    let elsewhere = Scripted::start(vec![Reply::Http(200, Vec::new(), Vec::new())]);
    let endpoint = Scripted::start(vec![Reply::Http(
        307,
        vec![(
            "location".into(),
            format!("{}/inputs/stolen", elsewhere.origin()),
        )],
        Vec::new(),
    )]);
    let rt = runtime();
    let config = Client::builder()
        .api_key("sk-test-redirects")
        .base_url(endpoint.base_url())
        .build()
        .unwrap()
        .config()
        .clone();
    let origin = endpoint.origin();
    let settings = [
        ("aws_access_key_id", "test-key"),
        ("aws_secret_access_key", "test-secret"),
        ("aws_session_token", session),
        ("aws_region", "us-east-1"),
        ("aws_endpoint", origin.as_str()),
        ("aws_allow_http", "true"),
    ];
    let host = ObjectStoreHost::from_url_with("s3://inputs/x", &settings, &config).unwrap();
    let image = LocalImage::from_bytes("tiny.png", TINY_PNG.to_vec(), 1 << 20).unwrap();
    let error = rt
        .block_on(host.host(&image, Duration::from_secs(60)))
        .unwrap_err();
    let asked = endpoint.requests();
    assert!(!asked.is_empty(), "the store's endpoint was asked");
    assert!(
        asked.iter().all(|r| r.header("authorization").is_some()
            && r.header("x-amz-security-token").as_deref() == Some(session)),
        "the endpoint got the credentials: {asked:?}"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "the host a redirect names gets nothing: {:?}",
        elsewhere.requests()
    );
    let text = format!("{error} {error:?}");
    assert!(text.contains("tiny.png"), "{text}");
    assert!(!text.contains(session), "{text}");
}

#[test]
fn results_land_in_a_bucket_once_and_a_signed_url_feeds_the_next_task() {
    use gptimage_transport::hosting::{ObjectStoreResults, ResultStore};
    let moto = Moto::start();
    moto.bucket("results");
    let rt = runtime();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let client = client(&emulator);
    let settings = s3_settings(&moto);
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bucket =
        ObjectStoreResults::from_url_with("s3://results/run-7", &settings, client.config())
            .unwrap();
    let task = rt
        .block_on(
            client.generate(
                &GenerateRequest::text_to_image("a lighthouse")
                    .build()
                    .unwrap(),
            ),
        )
        .unwrap();
    let stored = rt.block_on(client.save(&task, &bucket, "line-1")).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key, "line-1-1.png");
    assert_eq!(stored[0].location, "s3://results/run-7/line-1-1.png");
    assert!(stored[0].written);
    let listed = |moto: &Moto| moto.request("GET", "/results?list-type=2").1;
    let first = listed(&moto);
    assert!(first.contains("run-7/line-1-1.png"), "{first}");
    // The same content again: not written a second time (its modification time holds).
    std::thread::sleep(Duration::from_millis(1100));
    let again = rt.block_on(client.save(&task, &bucket, "line-1")).unwrap();
    assert!(!again[0].written, "the same content is not written twice");
    assert_eq!(listed(&moto), first);
    // A signed URL of the result is the input of the next task: no local disk between.
    let url = rt
        .block_on(bucket.signed_url(&stored[0].key, Duration::from_secs(600)))
        .unwrap();
    assert!(url.expose().contains("X-Amz-Signature="));
    assert!(!url.to_string().contains("Signature"), "never shown whole");
    let edit = GenerateRequest::image_to_image("make it night", [url.expose()])
        .build()
        .unwrap();
    let night = rt.block_on(client.generate(&edit)).unwrap();
    assert_eq!(night.images().len(), 1);
    // A bucket that does not exist: the error names the store, and is a write error.
    let missing =
        ObjectStoreResults::from_url_with("s3://no-such-bucket/x", &settings, client.config())
            .unwrap();
    let error = rt
        .block_on(client.save(&task, &missing, "line-1"))
        .unwrap_err();
    assert!(error.is_write(), "{error:?}");
    assert!(
        error.to_string().contains("s3://no-such-bucket/x"),
        "{error}"
    );
    assert_eq!(error.task_id(), Some(task.task_id.as_str()));
}

#[test]
fn a_large_file_goes_to_a_bucket_in_parts_whole_and_once() {
    use gptimage_transport::hosting::{ObjectStoreResults, ResultStore};
    let moto = Moto::start();
    moto.bucket("galleries");
    let rt = runtime();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let client = client(&emulator);
    let settings = s3_settings(&moto);
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bucket =
        ObjectStoreResults::from_url_with("s3://galleries/run-1", &settings, client.config())
            .unwrap();
    // 19 MiB of a page: three parts of 8 MiB at most.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("index.html");
    let line = "<figure>a picture and its prompt</figure>\n";
    let text = line.repeat(19 * 1024 * 1024 / line.len());
    std::fs::write(&page, &text).unwrap();
    let stored = rt
        .block_on(bucket.put_file("index.html", &page, "html"))
        .unwrap();
    assert!(stored.written);
    assert_eq!(stored.location, "s3://galleries/run-1/index.html");
    let (status, body) = moto.request("GET", "/galleries/run-1/index.html");
    assert_eq!(status, 200);
    assert_eq!(body.len(), text.len(), "the object is whole");
    assert!(body == text, "and the same bytes");
    let again = rt
        .block_on(bucket.put_file("index.html", &page, "html"))
        .unwrap();
    assert!(!again.written, "the same content is not uploaded twice");
    // A file that cannot be read: an error naming it, and nothing under the name.
    let error = rt
        .block_on(bucket.put_file("gone.html", &dir.path().join("gone.html"), "html"))
        .unwrap_err();
    assert!(error.to_string().contains("gone.html"), "{error}");
    assert!(
        !moto
            .request("GET", "/galleries?list-type=2")
            .1
            .contains("gone.html")
    );
}

#[test]
fn a_store_that_never_answers_is_given_up_and_plain_http_needs_leave() {
    use gptimage_transport::hosting::{ObjectStoreResults, ResultStore};
    // Accepts connections, counts them, and never answers a byte.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let (accepted, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let held = {
        let (accepted, done) = (accepted.clone(), done.clone());
        std::thread::spawn(move || {
            let mut open = Vec::new();
            silent.set_nonblocking(true).unwrap();
            let started = std::time::Instant::now();
            while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                match silent.accept() {
                    Ok((stream, _)) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        open.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    let rt = runtime();
    let client = Client::builder()
        .api_key("sk-unused-here")
        .request_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let settings = [
        ("aws_access_key_id", "test-key"),
        ("aws_secret_access_key", "test-secret"),
        ("aws_region", "us-east-1"),
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
    ];
    let bucket =
        ObjectStoreResults::from_url_with("s3://silent/run", &settings, client.config()).unwrap();
    let started = std::time::Instant::now();
    let error = rt
        .block_on(bucket.put("a-1.png", b"\x89PNG not really", "png"))
        .unwrap_err();
    let took = started.elapsed();
    assert!(error.is_write(), "{error:?}");
    assert!(
        took < Duration::from_secs(15),
        "each request has the request timeout, and the retries are few: {took:?}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 1);
    // Without leave for plain http, an http endpoint is never spoken to in clear text.
    let before = accepted.load(Ordering::SeqCst);
    let settings = &settings[..4];
    let bucket =
        ObjectStoreResults::from_url_with("s3://silent/run", settings, client.config()).unwrap();
    let error = rt.block_on(bucket.check_writable()).unwrap_err();
    assert!(
        error.to_string().contains("does not take writes"),
        "{error}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before,
        "no connection was made"
    );
    done.store(true, Ordering::SeqCst);
    held.join().unwrap();
}

#[test]
fn a_store_that_refuses_look_ups_but_takes_writes_gets_the_write() {
    use gptimage_transport::hosting::{ObjectStoreResults, ResultStore};
    use std::io::{BufRead, BufReader, Read, Write};
    // A store as a least-privilege S3 policy makes it (PutObject without ListBucket): every
    // look-up is answered 403, every write 200. It records each request's method.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let served = std::thread::spawn(move || {
        let mut methods = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for stream in listener.incoming().take(2) {
            let stream = stream.unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let method = line.split(' ').next().unwrap_or_default().to_owned();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let answer = if method == "HEAD" {
                "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\netag: \"1\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            };
            (&stream).write_all(answer.as_bytes()).unwrap();
            methods.push(method);
        }
        methods
    });
    let rt = runtime();
    let client = Client::builder().api_key("sk-unused-here").build().unwrap();
    let settings = [
        ("aws_access_key_id", "test-key"),
        ("aws_secret_access_key", "test-secret"),
        ("aws_region", "us-east-1"),
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
    ];
    let bucket =
        ObjectStoreResults::from_url_with("s3://drop/run", &settings, client.config()).unwrap();
    let stored = rt
        .block_on(bucket.put("a-1.png", b"\x89PNG not really", "png"))
        .unwrap();
    assert!(stored.written);
    assert_eq!(served.join().unwrap(), ["HEAD", "PUT"]);
}
