//! The built `gptimage` binary, run against the emulator over real loopback: every single-task
//! command, every exit code, `--json` parsed as JSON, validation before sending.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use gptimage_emulator::{Config, Emulator, Endpoint, Fault, FaultKind, KeyConfig};
use serde_json::Value;

#[test]
fn generate_with_the_in_process_emulator_leaves_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(gptimage()
        .args([
            "generate",
            "a lighthouse at dawn",
            "--emulator",
            "--size",
            "portrait",
        ])
        .arg("--out")
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = Path::new(stdout.trim());
    assert!(path.starts_with(dir.path()), "{stdout}");
    assert_eq!(png_size(path), (1024, 1536));
}

#[test]
fn generate_json_reports_the_task_and_its_files() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = run(against(&emulator)
        .args([
            "generate",
            "a red fox",
            "--size",
            "1536x1024",
            "--quality",
            "LOW",
            "--json",
            "--out",
        ])
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    assert_eq!(report["status"], "SUCCESS");
    assert_eq!(report["credits"], 10);
    assert_eq!(report["error"], Value::Null);
    assert_eq!(report["images"].as_array().unwrap().len(), 1);
    let file = report["files"][0].as_str().unwrap();
    assert_eq!(png_size(Path::new(file)), (1536, 1024));
    assert!(report["task_id"].as_str().unwrap().ends_with("gptimg"));
    assert_eq!(emulator.counters().tasks_created, 1);
}

#[test]
fn no_wait_then_status_then_wait() {
    let config = Config::instant().with_timings(Duration::from_millis(300), Duration::ZERO);
    let emulator = Emulator::spawn(config).unwrap();
    let created = run(against(&emulator).args(["generate", "later", "--no-wait", "--json"]));
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    let created = json(&created);
    assert_eq!(created["status"], "PENDING");
    let id = created["task_id"].as_str().unwrap().to_owned();

    let status = run(against(&emulator).args(["status", &id, "--json"]));
    assert_eq!(status.status.code(), Some(0));
    assert_eq!(json(&status)["task_id"], id.as_str());

    let dir = tempfile::tempdir().unwrap();
    let waited = run(against(&emulator)
        .args(["wait", &id, "--json", "--out"])
        .arg(dir.path()));
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
    let waited = json(&waited);
    assert_eq!(waited["status"], "SUCCESS");
    assert!(Path::new(waited["files"][0].as_str().unwrap()).is_file());
    assert_eq!(emulator.counters().tasks_created, 1);
}

#[test]
fn invalid_requests_exit_2_and_send_nothing() {
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    for (args, message) in [
        (vec!["generate", "   "], "'prompt' is blank"),
        (
            vec!["generate", "a", "--size", "huge"],
            "'size' \"huge\" is not supported",
        ),
        (
            vec!["generate", "a", "--quality", "ultra"],
            "use low, medium or high",
        ),
        (
            vec!["generate", "a", "--fidelity", "high"],
            "'input_fidelity' applies only to image-to-image",
        ),
        (
            vec!["generate", "a", "--image", "ftp://x/cat.png"],
            "'images'[0]",
        ),
        (
            vec!["generate", "a", "--image", "cat.png"],
            "the input image cat.png cannot be read",
        ),
        (
            vec!["generate", "a", "--callback-url", "ftp://x/hook"],
            "'callback_url'",
        ),
    ] {
        let output = run(against(&emulator).args(&args));
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let long = "é".repeat(2001);
    let output = run(against(&emulator).args(["generate", &long, "--json"]));
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(json(&output)["error"]["kind"], "invalid_request");
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");

    // A usage error is 2 too, and so is a missing key, whose message names the fixes.
    assert_eq!(run(gptimage().args(["generate"])).status.code(), Some(2));
    let output = run(gptimage().args(["generate", "a fox"]));
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("GPTIMAGE_API_KEY") && text.contains("--emulator"),
        "{text}"
    );
}

#[test]
fn refusals_exit_3_with_a_clear_message() {
    let config = Config::instant().with_keys([
        KeyConfig::new("rich", "sk-rich", 100),
        KeyConfig::new("broke", "sk-broke", 0),
    ]);
    let emulator = Emulator::spawn(config).unwrap();
    let with_key = |key: &str| {
        let mut command = against(&emulator);
        command.env("GPTIMAGE_API_KEY", key);
        command
    };
    let cases = [
        (
            with_key("sk-super-secret-xyz")
                .args(["generate", "a", "--json"])
                .output()
                .unwrap(),
            401,
            "check the API key",
        ),
        (
            with_key("sk-broke")
                .args(["generate", "a", "--json"])
                .output()
                .unwrap(),
            402,
            "out of credits",
        ),
        (
            with_key("sk-rich")
                .args(["status", "n0000000000000gptimg", "--json"])
                .output()
                .unwrap(),
            404,
            "no such task",
        ),
    ];
    for (output, code, advice) in cases {
        assert_eq!(output.status.code(), Some(3), "{code}: {}", stderr(&output));
        let report = json(&output);
        assert_eq!(report["error"]["kind"], "api");
        assert!(
            report["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&code.to_string())
        );
        assert!(stderr(&output).contains(advice), "{}", stderr(&output));
        let everything = format!(
            "{} {}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        );
        assert!(
            !everything.contains("super-secret"),
            "the key leaked: {everything}"
        );
    }
}

#[test]
fn a_failed_task_exits_1() {
    let emulator = Emulator::spawn(Config::instant().with_fail_phrase("forbidden")).unwrap();
    let output = run(against(&emulator).args(["generate", "something forbidden", "--json"]));
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    assert_eq!(report["status"], "FAILED");
    assert_eq!(report["credits"], 0);
    assert_eq!(report["error"]["kind"], "task_failed");
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Content policy violation detected")
    );
    let status = run(against(&emulator).args(["status", report["task_id"].as_str().unwrap()]));
    assert_eq!(status.status.code(), Some(1));
}

#[test]
fn transport_trouble_and_unknown_outcomes_exit_4() {
    let fault = Fault::new(FaultKind::DropConnection).on(Endpoint::Generate);
    let emulator = Emulator::spawn(Config::instant().with_fault(fault)).unwrap();
    let output = run(against(&emulator).args(["generate", "paid, unanswered", "--json"]));
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(json(&output)["error"]["kind"], "outcome_unknown");
    assert!(
        stderr(&output).contains("a task may have been created"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        emulator.counters().generate_requests,
        1,
        "never resubmitted"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = run(gptimage()
        .env("GPTIMAGE_API_KEY", "sk-x")
        .env("GPTIMAGE_BASE_URL", format!("http://{closed}/api"))
        .args(["status", "t1", "--json"]));
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(json(&output)["error"]["kind"], "transport");
}

#[test]
fn a_passed_deadline_exits_5_and_says_how_to_resume() {
    let config = Config::instant().with_timings(Duration::from_secs(30), Duration::ZERO);
    let emulator = Emulator::spawn(config).unwrap();
    let output = run(against(&emulator).args([
        "generate",
        "slow",
        "--timeout",
        "0.3",
        "--out",
        "somewhere",
    ]));
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("gptimage wait n") && text.contains("--out somewhere"),
        "{text}"
    );
}

#[test]
fn help_shows_examples_and_completions_are_generated() {
    let help = run(gptimage().arg("--help"));
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Examples:") && text.contains("gptimage batch"),
        "{text}"
    );
    let completions = run(gptimage().args(["completions", "bash"]));
    assert_eq!(completions.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&completions.stdout).contains("gptimage"));
}

#[test]
fn a_wait_ends_at_its_deadline_when_the_server_hangs() {
    // A server that accepts connections and never answers (at most 20, held until the test ends).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(20).collect();
        drop(held);
    });
    let started = std::time::Instant::now();
    let output = run(gptimage()
        .env("GPTIMAGE_API_KEY", "sk-x")
        .env("GPTIMAGE_BASE_URL", format!("http://{addr}/api"))
        .args(["wait", "t1", "--timeout", "2", "--request-timeout", "20"]));
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("gptimage wait t1"),
        "{}",
        stderr(&output)
    );
    assert!(took < Duration::from_secs(4), "a 2 s wait took {took:?}");
}

/// A fixture of the transport's tests: a test CA and a certificate for localhost it signed.
fn tls_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../transport/tests/fixtures")
        .join(name)
}

#[test]
fn listen_serves_https_and_ipv6_and_refuses_an_unusable_certificate() {
    let ca = std::fs::read(tls_fixture("test-ca.pem")).unwrap();
    let emulator = Emulator::spawn(
        Config::instant()
            .with_timings(Duration::ZERO, Duration::from_secs(1))
            .with_trusted_roots_pem(ca),
    )
    .unwrap();
    let (cert, key) = (
        tls_fixture("localhost.pem"),
        tls_fixture("localhost-key.pem"),
    );
    let port = free_port();
    let public = format!("https://localhost:{port}/hooks/");
    let https = ["--listen-cert", cert.to_str().unwrap(), "--listen-key"];
    let ipv6 = format!("[::1]:{port}");
    for (listen, tls) in [(format!("127.0.0.1:{port}"), true), (ipv6, false)] {
        let started = std::time::Instant::now();
        let mut command = against(&emulator);
        command
            .args(["generate", "called back", "--json", "--poll-interval", "20"])
            .args(["--listen", &listen]);
        if tls {
            command
                .args(https)
                .arg(&key)
                .args(["--public-url", &public]);
        }
        let output = run(&mut command);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        assert_eq!(json(&output)["status"], "SUCCESS");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "{listen}: a 20 s poll interval, done in {took:?}"
        );
    }
    assert_eq!(emulator.counters().webhooks_delivered, 2);

    // A key that is not the certificate's: a usage error before anything is sent.
    let other = tls_fixture("other-key.pem");
    let before = emulator.counters().generate_requests;
    let output = run(against(&emulator)
        .args([
            "generate",
            "never sent",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(https)
        .arg(&other));
    exits_saying(&output, 2, "cannot serve TLS");
    let output = run(against(&emulator)
        .args([
            "generate",
            "never sent",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--listen-cert", "/nonexistent/cert.pem", "--listen-key"])
        .arg(&key));
    exits_saying(&output, 2, "/nonexistent/cert.pem");
    assert_eq!(
        emulator.counters().generate_requests,
        before,
        "nothing was sent"
    );
}

#[test]
fn listen_ends_the_wait_on_the_callback_and_refuses_a_callback_url() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let output = run(gptimage()
        .args(["generate", "called back", "--emulator", "--json"])
        .args(["--poll-interval", "20", "--listen", &listen, "--out"])
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["status"], "SUCCESS");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "a 20 s poll interval, done in {took:?}"
    );

    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let output = run(against(&emulator).args([
        "generate",
        "two receivers",
        "--listen",
        &listen,
        "--callback-url",
        "http://127.0.0.1:9/hook",
    ]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--callback-url"),
        "{}",
        stderr(&output)
    );
    let output =
        run(against(&emulator).args(["generate", "where to?", "--listen", "0.0.0.0:8787"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--public-url"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().generate_requests, 0, "nothing was sent");
}

/// A proxy on `front` that forwards each connection to `back`, taking `strip` off the front of
/// each request's path (as a reverse proxy mounted under a prefix does).
fn path_stripping_proxy(front: std::net::TcpListener, back: std::net::SocketAddr, strip: &str) {
    use std::io::{Read, Write};
    let strip = strip.to_owned();
    std::thread::spawn(move || {
        for client in front.incoming().take(50).flatten() {
            let strip = strip.clone();
            std::thread::spawn(move || {
                let mut client = client;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).replacen(&format!(" {strip}"), " ", 1);
                let Ok(mut server) = std::net::TcpStream::connect(back) else {
                    return;
                };
                let _ = server.write_all(head.as_bytes());
                let (mut client_reader, mut server_writer) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut client_reader, &mut server_writer));
                let _ = std::io::copy(&mut server, &mut client);
            });
        }
    });
}

#[test]
fn listen_path_takes_callbacks_behind_a_path_stripping_proxy() {
    let emulator =
        Emulator::spawn(Config::instant().with_timings(Duration::ZERO, Duration::from_millis(500)))
            .unwrap();
    let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let public = format!("http://{}/gptimage/hooks/", front.local_addr().unwrap());
    let listen = format!("127.0.0.1:{}", free_port());
    path_stripping_proxy(front, listen.parse().unwrap(), "/gptimage");
    let started = std::time::Instant::now();
    let output = run(against(&emulator)
        .args([
            "generate",
            "behind a proxy",
            "--json",
            "--poll-interval",
            "20",
        ])
        .args(["--listen", &listen, "--public-url", &public])
        .args(["--listen-path", "/hooks/"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["status"], "SUCCESS");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "a 20 s poll, done in {took:?}"
    );
    assert_eq!(emulator.counters().webhooks_delivered, 1);
    // A path that is not one is a usage error, before anything is sent.
    let output = run(against(&emulator)
        .args(["generate", "never sent", "--listen", &listen])
        .args(["--public-url", &public, "--listen-path", "hooks"]));
    exits_saying(&output, 2, "local path");
    assert_eq!(emulator.counters().generate_requests, 1);
}

#[test]
fn a_lost_answer_is_recovered_from_its_callback_with_listen() {
    // The service makes the task and the answer is lost: the callback names the task, a
    // status request confirms it, and the image is saved; nothing is sent twice.
    let losing = || {
        let config = Config::instant()
            .with_timings(Duration::ZERO, Duration::from_millis(300))
            .with_fault(
                Fault::new(FaultKind::DropConnection)
                    .on(Endpoint::Generate)
                    .times(1),
            );
        Emulator::spawn(config).unwrap()
    };
    let emulator = losing();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let output = run(against(&emulator)
        .args(["generate", "answer lost", "--json", "--listen", &listen])
        .arg("--out")
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["status"], "SUCCESS");
    assert!(
        stderr(&output).contains("recovered task"),
        "{}",
        stderr(&output)
    );
    let counters = emulator.counters();
    assert_eq!(counters.generate_requests, 1, "never resubmitted");
    assert_eq!(counters.tasks_created, 1);
    assert_eq!(pngs(dir.path()).len(), 1);
    // Without --listen there is no callback to learn from: the outcome stays unknown.
    let emulator = losing();
    let output = run(against(&emulator).args(["generate", "answer lost too"]));
    assert_ne!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("outcome is unknown"),
        "{}",
        stderr(&output)
    );
    assert_eq!(emulator.counters().generate_requests, 1);
}
