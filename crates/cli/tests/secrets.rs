//! Secrets stay where they belong, tried as an attacker on the network path and as another user
//! of the machine would: a rogue PostgreSQL server (declining TLS, or showing a certificate for
//! another name) on the host end of a veth pair the test makes never receives the password,
//! whatever `sslmode` the URL asks for; a real one with a certificate from a CA the test makes
//! works with that CA given; every secret (the key, a state's password in each form a URL can
//! carry it, signed result URLs, a callback's token) is fed through every exit of the command
//! and found in none; and the state file is its owner's alone.

mod common;
#[path = "../../batch/tests/support/postgres.rs"]
#[allow(unreachable_pub, dead_code)]
mod postgres;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use common::netns::Link;
use common::*;
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind, KeyConfig};

/// A rogue PostgreSQL server on `ip`: it declines TLS (`tls` None) or shakes hands with the
/// certificate and key given, then asks for the password in clear text and writes whatever
/// it gets into `caught`. Runs until dropped.
struct Rogue {
    child: std::process::Child,
    port: u16,
}

impl Rogue {
    /// Started inside `namespace`, listening on its end of the link.
    fn start(namespace: &str, ip: Ipv4Addr, tls: Option<(&Path, &Path)>, caught: &Path) -> Self {
        let (cert, key) = tls.map_or((String::new(), String::new()), |(c, k)| {
            (c.display().to_string(), k.display().to_string())
        });
        let script = r#"
import socket, ssl, struct, sys
ip, cert, key, caught = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((ip, 0)); server.listen(16)
print("ready %d" % server.getsockname()[1], flush=True)
def read_exact(c, n):
    data = b""
    while len(data) < n:
        more = c.recv(n - len(data))
        if not more: raise EOFError
        data += more
    return data
while True:
    conn, _ = server.accept()
    try:
        conn.settimeout(5)
        length, code = struct.unpack("!ii", read_exact(conn, 8))
        if code == 80877103:
            if cert:
                conn.sendall(b"S")
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(cert, key)
                conn = context.wrap_socket(conn, server_side=True)
            else:
                conn.sendall(b"N")
            length = struct.unpack("!i", read_exact(conn, 4))[0]
            read_exact(conn, length - 4)
        else:
            read_exact(conn, length - 8)
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))
        kind = read_exact(conn, 1)
        length = struct.unpack("!i", read_exact(conn, 4))[0]
        body = read_exact(conn, length - 4)
        with open(caught, "ab") as f:
            f.write(kind + body + b"\n")
    except Exception:
        pass
    finally:
        try: conn.close()
        except Exception: pass
"#;
        let mut child = Command::new("ip")
            .args(["netns", "exec", namespace, "python3", "-c", script])
            .arg(ip.to_string())
            .args([&cert, &key])
            .arg(caught)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the rogue server");
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        let port = ready
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the rogue server did not start: {ready:?}"));
        Rogue { child, port }
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PASSWORD: &str = "hunter2-not-for-rogues";

#[test]
fn a_rogue_state_server_never_receives_the_password_in_any_sslmode() {
    let Some(link) = Link::create() else {
        return;
    };
    // The rogue listens inside the namespace, across the veth pair.
    let ip = link.namespace_ip;
    let dir = tempfile::tempdir().unwrap();
    let tls = postgres::Tls::for_address(dir.path(), &ip.to_string());
    let (other, other_key) = tls.signed("other", "DNS:other.example");
    let ca = tls.ca.display().to_string();
    for tls in [None, Some((other.as_path(), other_key.as_path()))] {
        let caught = dir.path().join(format!("caught-{}", tls.is_some()));
        let rogue = Rogue::start(&link.namespace, ip, tls, &caught);
        // The control: a client that does not insist on a verified server (psql, as sslmode
        // prefer and require are written) hands this rogue the password.
        let naive = format!(
            "postgres://batch:{PASSWORD}@{ip}:{}/images?sslmode={}",
            rogue.port,
            if tls.is_some() { "require" } else { "prefer" }
        );
        let _ = Command::new(postgres::find_bin().join("psql"))
            .args([naive.as_str(), "-c", "select 1"])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let got = std::fs::read(&caught).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&got).contains(PASSWORD),
            "the rogue server is a working trap: psql gave it the password"
        );
        std::fs::remove_file(&caught).unwrap();
        for mode in [
            "",
            "sslmode=prefer",
            "sslmode=require",
            "sslmode=verify-ca",
            "sslmode=verify-full",
        ] {
            let mut params: Vec<String> = vec![format!("sslrootcert={ca}")];
            if !mode.is_empty() {
                params.push(mode.to_owned());
            }
            let state = format!(
                "postgres://batch:{PASSWORD}@{}:{}/images?{}",
                ip,
                rogue.port,
                params.join("&")
            );
            let output = run(gptimage().args(["batch-status", "--state", &state]));
            assert_ne!(output.status.code(), Some(0), "{mode}: {}", stderr(&output));
            assert!(
                !stderr(&output).contains(PASSWORD),
                "{mode}: {}",
                stderr(&output)
            );
        }
        // The server named another way than the URL's host: a `hostaddr`, or `PGHOST` for a
        // URL with none (an outside review found both sent the password in the clear).
        let ways = [
            (
                format!(
                    "postgres://batch:{PASSWORD}@localhost:{}/images?hostaddr={ip}&sslrootcert={ca}",
                    rogue.port
                ),
                None,
            ),
            (
                format!(
                    "postgres:///images?user=batch&password={PASSWORD}&port={}&sslrootcert={ca}",
                    rogue.port
                ),
                Some(ip.to_string()),
            ),
        ];
        for (state, pghost) in ways {
            let mut command = gptimage();
            if let Some(host) = &pghost {
                command.env("PGHOST", host);
            }
            let output = run(command.args(["batch-status", "--state", &state]));
            assert_ne!(
                output.status.code(),
                Some(0),
                "{state}: {}",
                stderr(&output)
            );
            assert!(!stderr(&output).contains(PASSWORD), "{}", stderr(&output));
        }
        // Asked for in so many words, plain text to a remote server is refused before it starts.
        let state = format!(
            "postgres://batch:{PASSWORD}@{}:{}/images?sslmode=disable",
            ip, rogue.port
        );
        let output = run(gptimage().args(["batch-status", "--state", &state]));
        exits_saying(&output, 2, "in the clear");
        drop(rogue);
        let got = std::fs::read(&caught).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&got).contains(PASSWORD),
            "the rogue ({}) got the password",
            if tls.is_some() {
                "another name's certificate"
            } else {
                "declining TLS"
            }
        );
    }
}

#[test]
fn a_state_server_with_a_certificate_from_a_given_ca_is_verified_and_works() {
    let Some(link) = Link::create() else {
        return;
    };
    let ip = link.host_ip;
    let dir = tempfile::tempdir().unwrap();
    let tls = postgres::Tls::for_address(dir.path(), &ip.to_string());
    let cluster = postgres::Postgres::start_with(&postgres::Setup {
        listen: vec![ip.to_string()],
        hba: vec![format!("hostssl all all {ip}/32 trust")],
        tls: Some(tls.clone()),
        ..Default::default()
    });
    let local = cluster.create_database("verified");
    let remote = local.replace("127.0.0.1", &ip.to_string());
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "verified"));
    // With the CA: verified (verify-full, though the URL asks for nothing), and it works.
    let with_ca = format!("{remote}?sslrootcert={}", tls.ca.display());
    let output = run(&mut batch(
        &emulator,
        &file,
        &dir.path().join("out"),
        &["--state", &with_ca],
    ));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(emulator.counters().tasks_created, 2);
    // Without it, the platform's roots do not know the CA: refused, nothing sent.
    let output = run(&mut batch(
        &emulator,
        &file,
        &dir.path().join("out2"),
        &["--state", &format!("{remote}?sslmode=require")],
    ));
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(emulator.counters().generate_requests, 2);
}

/// A server that answers every request 401, repeating the key it was given and the request
/// it got (JSON-escaped, slashes and all, as PHP writes them), as some do.
fn repeating_server(key: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let key = key.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20).flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let sent = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b)
                .unwrap_or_default();
            let echoed = serde_json::to_string(sent).unwrap().replace('/', "\\/");
            let echoed = echoed.trim_matches('"');
            let body = format!(
                r#"{{"code":401,"message":"Incorrect API key provided: {key}; request {echoed}","data":null}}"#
            );
            let answer = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    format!("http://{addr}/api")
}

#[test]
fn every_secret_is_kept_out_of_every_exit() {
    let key = "sk-test-SECRET0123456789abcdef";
    let mut outputs: Vec<(String, String)> = Vec::new();
    fn keep(outputs: &mut Vec<(String, String)>, what: &str, output: &std::process::Output) {
        outputs.push((
            what.to_owned(),
            format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ));
    }
    // Signed result URLs, a key of our own, and webhooks with their secret tokens.
    let emulator = Emulator::spawn(
        Config::instant()
            .with_keys([KeyConfig::new("k", key, 1000)])
            .with_signed_results(true),
    )
    .unwrap();
    let with_key = |command: &mut Command| {
        command
            .env("GPTIMAGE_API_KEY", key)
            .env("GPTIMAGE_BASE_URL", emulator.base_url());
    };
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut generate = gptimage();
    with_key(&mut generate);
    let output = run(generate
        .args([
            "generate",
            "a secret lighthouse",
            "--json",
            "--verbose",
            "--listen",
            &listen,
        ])
        .arg("--out")
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let task_id = json(&output)["task_id"].as_str().unwrap().to_owned();
    keep(&mut outputs, "generate --json --verbose --listen", &output);
    let callback = emulator
        .task_request(&task_id)
        .and_then(|r| r.callback_url().map(str::to_owned))
        .unwrap();
    let token = callback.rsplit('/').next().unwrap().to_owned();
    for args in [
        ["status", task_id.as_str(), "--json"],
        ["status", task_id.as_str(), "-v"],
    ] {
        let mut status = gptimage();
        with_key(&mut status);
        let output = run(status.args(args));
        keep(&mut outputs, &format!("{args:?}"), &output);
    }
    // Input images in a bucket, behind URLs signed with a session token: a generate and a batch.
    let s3 = S3::start("private");
    let session = "session-token-SECRET-5f4dcc3b5aa765d6";
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let made = json(&output)["files"][0].as_str().unwrap().to_owned();
    std::fs::copy(&made, photos.join("in.png")).unwrap();
    let mut edit = gptimage();
    with_key(&mut edit);
    let output = run(s3
        .credentials(&mut edit)
        .env("AWS_SESSION_TOKEN", session)
        .args(["--verbose", "generate", "make it secret", "--json"])
        .args(["--image-host", "s3://private/inputs", "--image"])
        .arg(photos.join("in.png"))
        .arg("--out")
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    keep(&mut outputs, "generate from a bucket's signed URL", &output);
    let edits = dir.path().join("edits.jsonl");
    std::fs::write(
        &edits,
        "{\"prompt\": \"make it dusk\", \"images\": [\"photos/in.png\"]}\n\
         {\"prompt\": \"make it dawn\", \"images\": [\"photos/in.png\"]}\n",
    )
    .unwrap();
    let out_s3 = dir.path().join("out-s3");
    let mut edit_batch = gptimage();
    with_key(&mut edit_batch);
    let output = run(s3
        .credentials(&mut edit_batch)
        .env("AWS_SESSION_TOKEN", session)
        .args(["--verbose", "batch"])
        .arg(&edits)
        .arg("--out")
        .arg(&out_s3)
        .args(["--image-host", "s3://private/inputs", "--json"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    keep(&mut outputs, "batch from a bucket's signed URLs", &output);
    for extra in [&["--json"][..], &[][..]] {
        let output = run(gptimage()
            .args(["batch-status", "--out"])
            .arg(&out_s3)
            .args(extra));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        keep(
            &mut outputs,
            &format!("batch-status {extra:?} of the edits"),
            &output,
        );
    }
    outputs.push((
        "index.html of the edits".into(),
        std::fs::read_to_string(out_s3.join("index.html")).unwrap(),
    ));
    // The result URLs are refused (as an expired signed URL is): the error names them.
    let refusing = Emulator::spawn(
        Config::instant()
            .with_keys([KeyConfig::new("k", key, 1000)])
            .with_signed_results(true)
            .with_fault(Fault::new(FaultKind::Refuse(403)).on(Endpoint::Files)),
    )
    .unwrap();
    let mut refused = gptimage();
    refused
        .env("GPTIMAGE_API_KEY", key)
        .env("GPTIMAGE_BASE_URL", refusing.base_url());
    let output = run(refused
        .args(["generate", "refused images", "--json"])
        .arg("--out")
        .arg(dir.path()));
    assert_ne!(output.status.code(), Some(0));
    keep(&mut outputs, "generate, images refused", &output);
    // A server repeating the key in its refusal.
    let mut repeated = gptimage();
    repeated
        .env("GPTIMAGE_API_KEY", key)
        .env("GPTIMAGE_BASE_URL", repeating_server(key));
    let callback_token = "550e8400-e29b-41d4-a716-446655440000";
    let output = run(repeated.args([
        "generate",
        "anything",
        "--json",
        "--callback-url",
        &format!("https://hooks.example/cb/{callback_token}"),
        "--image",
        "https://b.s3.example/in.png?X-Amz-Signature=0123abcd",
    ]));
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("request"),
        "the server's words are shown, redacted: {}",
        stderr(&output)
    );
    keep(
        &mut outputs,
        "a 401 repeating the key and the request",
        &output,
    );
    // Batches on a PostgreSQL state whose password comes in each form a URL can give it.
    let cluster = postgres::Postgres::start();
    let file = write_batch(dir.path(), &numbered_lines(2, "secret batch"));
    let forms = [
        format!(
            "postgres://gptimage:{PASSWORD}@127.0.0.1:{}/a",
            cluster.port()
        ),
        format!(
            "postgres://gptimage:pa/ss-{PASSWORD}@127.0.0.1:{}/b",
            cluster.port()
        ),
        format!(
            "postgres://gptimage@127.0.0.1:{}/c?password={PASSWORD}",
            cluster.port()
        ),
        // Characters that end a URL in prose, inside the password.
        format!(
            "postgres://gptimage:pa{{ss}}\"{PASSWORD}@127.0.0.1:{}/d",
            cluster.port()
        ),
    ];
    for (n, state) in forms.iter().enumerate() {
        cluster.create_database(["a", "b", "c", "d"][n]);
        let out = dir.path().join(format!("out-{n}"));
        let mut batch = gptimage();
        with_key(&mut batch);
        let output = run(batch
            .args(["batch"])
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .args(["--state", state, "--json", "--verbose"]));
        keep(&mut outputs, &format!("batch on state form {n}"), &output);
        for extra in [&["--json"][..], &[][..]] {
            let output = run(gptimage()
                .args(["batch-status", "--state", state])
                .args(extra));
            keep(
                &mut outputs,
                &format!("batch-status {extra:?} on state form {n}"),
                &output,
            );
        }
        if let Ok(html) = std::fs::read_to_string(out.join("index.html")) {
            outputs.push((format!("index.html of state form {n}"), html));
        }
        // A state URL that fails names the state, never its password.
        let broken = state.replace(&cluster.port().to_string(), "1");
        let output = run(gptimage().args(["batch-status", "--state", &broken]));
        keep(
            &mut outputs,
            &format!("an unreachable state, form {n}"),
            &output,
        );
    }
    let secrets = [key, PASSWORD, "X-Amz-", session, &token, callback_token];
    for (what, text) in &outputs {
        for secret in secrets {
            assert!(!text.contains(secret), "{what} shows {secret:?}: {text}");
        }
    }
    assert!(
        outputs.len() >= 18,
        "every exit was tried: {}",
        outputs.len()
    );
}

#[test]
fn the_state_file_and_its_companions_are_their_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(2, "private"));
    let out = dir.path().join("out");
    let mut paused = batch(&emulator, &file, &out, &["--concurrency", "1"]);
    paused.env("GPTIMAGE_BATCH_PAUSE_AT", "downloading");
    let mut running = Running::start(&mut paused);
    running.wait_for("paused at downloading");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("gptimage-batch.sqlite") {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            seen.push((name, mode));
        }
    }
    running.kill();
    assert!(
        seen.len() >= 3,
        "the database, its WAL, its lock file: {seen:?}"
    );
    for (name, mode) in &seen {
        assert_eq!(*mode & 0o077, 0, "{name} is readable by others: {mode:o}");
    }
}

#[test]
fn help_shows_no_credential_from_the_environment_and_a_base_url_with_a_password_is_refused() {
    let secret = "pw-from-the-environment-1234";
    for args in [
        &["--help"][..],
        &["batch", "--help"],
        &["generate", "--help"],
    ] {
        let output = run(gptimage()
            .env("GPTIMAGE_API_KEY", format!("sk-{secret}"))
            .env(
                "GPTIMAGE_BASE_URL",
                format!("https://u:{secret}@api.example/api"),
            )
            .env(
                "GPTIMAGE_BATCH_STATE",
                format!("postgres://u:{secret}@db.example/x"),
            )
            .env(
                "GPTIMAGE_IMAGE_HOST",
                format!("https://u:{secret}@uploads.example/"),
            )
            .args(args));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage"), "{text}");
        assert!(!text.contains(secret), "{args:?}: {text}");
    }
    // A password in the base URL: refused before anything is sent, without repeating it.
    let output = run(gptimage()
        .env("GPTIMAGE_API_KEY", "sk-test-anything-1234")
        .env(
            "GPTIMAGE_BASE_URL",
            format!("http://:{secret}@127.0.0.1:1/api"),
        )
        .args(["generate", "anything"]));
    exits_saying(&output, 2, "credentials");
    assert!(!stderr(&output).contains(secret), "{}", stderr(&output));
}

#[test]
fn a_state_file_another_user_made_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_batch(dir.path(), &numbered_lines(1, "squatted"));
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let planted = out.join("gptimage-batch.sqlite");
    std::fs::write(&planted, b"").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o666)).unwrap();
    let owned = Command::new("chown")
        .args(["nobody"])
        .arg(&planted)
        .status()
        .is_ok_and(|s| s.success());
    if !owned {
        // Only root can give a file away (CI runs as root); a link is refused by anyone.
        std::fs::remove_file(&planted).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere.sqlite"), &planted).unwrap();
    }
    let output = run(&mut batch(&emulator, &file, &out, &[]));
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    let said = stderr(&output);
    assert!(
        said.contains("another user") || said.contains("symbolic link"),
        "{said}"
    );
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");
    // A link in its place is refused too, and nothing is made through it.
    std::fs::remove_file(&planted).unwrap();
    let target = dir.path().join("elsewhere.sqlite");
    std::os::unix::fs::symlink(&target, &planted).unwrap();
    let output = run(&mut batch(&emulator, &file, &out, &[]));
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!target.exists(), "nothing made through the link");
}
