//! TLS, through both clients against a real TLS server on loopback: both trust the platform's
//! roots and only them. The server's certificate comes from a test CA (`tests/fixtures`, valid
//! until 2126); a child process runs with `SSL_CERT_FILE` naming it, which is how the platform's
//! roots are extended on Linux (for OpenSSL and for rustls's platform verifier alike).
#![cfg(any(feature = "_rustls", feature = "native-tls"))]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gptimage_transport::{Client, RetryPolicy, blocking};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const STATUS: &str = r#"{"code":200,"data":{"task_id":"t1","status":"IN_PROGRESS"}}"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A TLS server on 127.0.0.1 answering every request with a status envelope, on its own
/// provider (never the process default). Returns its port and the count of requests it read.
fn tls_server() -> (u16, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("localhost.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(fixture("localhost-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(stream) = stream else { continue };
            let (config, counted) = (Arc::clone(&config), Arc::clone(&counted));
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let mut reader = BufReader::new(&mut tls);
                let mut line = String::new();
                // Read the request head; a failed handshake ends here.
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{STATUS}",
                    STATUS.len()
                );
                tls.write_all(response.as_bytes()).ok();
                tls.conn.send_close_notify();
                tls.flush().ok();
            });
        }
    });
    (port, requests)
}

/// Asks for a status through both clients; what each said.
fn both_clients(port: u16) -> [Result<String, String>; 2] {
    let base = format!("https://localhost:{port}/api");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let async_client = Client::builder()
        .api_key("sk-test")
        .base_url(&base)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let blocking_client = blocking::Client::builder()
        .api_key("sk-test")
        .base_url(&base)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let show = |r: gptimage_transport::Result<gptimage_types::TaskInfo>| {
        r.map(|t| t.task_id).map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
    };
    [
        show(runtime.block_on(async_client.status("t1"))),
        show(blocking_client.status("t1")),
    ]
}

/// Run directly, the test CA is in no trusted list: both clients refuse the server, and no
/// request reaches it. Run by `a_ca_the_platform_trusts_is_trusted_by_both_clients` with the CA
/// added to the platform's roots (`GPTIMAGE_TEST_CA_TRUSTED=1`): both clients are answered.
#[test]
fn probe_both_clients() {
    let trusted = std::env::var_os("GPTIMAGE_TEST_CA_TRUSTED").is_some();
    let (port, requests) = tls_server();
    let answers = both_clients(port);
    for (client, answer) in ["async", "blocking"].iter().zip(&answers) {
        if trusted {
            assert_eq!(answer.as_deref(), Ok("t1"), "the {client} client");
        } else {
            let error = answer.as_ref().unwrap_err();
            assert!(
                error.to_lowercase().contains("certificate")
                    || error.to_lowercase().contains("issuer"),
                "the {client} client should refuse an unknown CA: {error}"
            );
        }
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        if trusted { 2 } else { 0 },
        "requests that reached the server"
    );
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "the library installed a process-wide crypto provider"
    );
}

#[test]
fn a_ca_the_platform_trusts_is_trusted_by_both_clients() {
    let empty = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "probe_both_clients",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GPTIMAGE_TEST_CA_TRUSTED", "1")
        .env("SSL_CERT_FILE", fixture("test-ca.pem"))
        .env("SSL_CERT_DIR", empty.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
