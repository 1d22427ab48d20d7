//! The `gptimage-emulator` binary: prints its base URL (and never a key the user chose),
//! serves, and stops cleanly on Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_binary_serves_and_stops_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptimage-emulator"))
        .args(["--port", "0", "--pending-ms", "0", "--running-ms", "0"])
        .args(["--key", "sk-terminal"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first
        .strip_prefix("gptimage-emulator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let second = lines.next().unwrap().unwrap();
    // A key the user chose is a secret: counted, never printed.
    assert_eq!(
        second.trim(),
        "API keys: the 1 given with --key (not shown)"
    );
    assert!(!second.contains("sk-terminal"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        // reqwest's rustls has no provider here: the test installs one for its own client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        http.post(format!("{base}/generate"))
            .bearer_auth("sk-terminal")
            .json(&serde_json::json!({"prompt": "from a terminal"}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the emulator did not stop within 10 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_gptimage-emulator"))
        .args(["--rate-limit", "twenty"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("COUNT/SECONDS"), "{stderr}");
}
