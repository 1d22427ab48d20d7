//! Every example runs offline, with no key: each is run as its own program against the local
//! emulator, must exit 0 within a minute, and every image path it prints must be a real PNG.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The examples this build has (each needs its features).
fn examples() -> Vec<&'static str> {
    let mut names = vec!["quickstart", "image_to_image", "many_tasks", "errors"];
    if cfg!(feature = "blocking") {
        names.push("blocking_quickstart");
    }
    if cfg!(feature = "axum") {
        names.push("axum_service");
    }
    if cfg!(feature = "tracing") {
        names.push("tracing_events");
    }
    names
}

/// Where cargo put the example programs: `examples/` beside this test's `deps/`.
fn program(name: &str) -> PathBuf {
    let test = std::env::current_exe().unwrap();
    let profile = test.parent().and_then(|deps| deps.parent()).unwrap();
    profile.join("examples").join(name)
}

#[test]
fn every_example_runs_offline_and_its_images_are_pngs() {
    // Side by side: they mostly wait on their emulators' timers.
    std::thread::scope(|scope| {
        for name in examples() {
            scope.spawn(move || run(name));
        }
    });
}

fn run(name: &str) {
    let program = program(name);
    assert!(
        program.exists(),
        "{} is missing: `cargo test` builds the examples",
        program.display()
    );
    let out = tempfile_dir(name);
    let mut child = Command::new(&program)
        .env_remove("GPTIMAGE_API_KEY")
        .env_remove("GPTIMAGE_BASE_URL")
        .env("GPTIMAGE_OUT", &out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{name} ran past a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(status.success(), "{name}: {status}\n{stdout}\n{stderr}");
    assert!(
        !stdout.trim().is_empty(),
        "{name} printed nothing\n{stderr}"
    );
    for line in stdout.lines().filter(|l| l.ends_with(".png")) {
        let bytes = std::fs::read(line).unwrap_or_else(|e| panic!("{name}: {line}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: {line}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gptimage-example-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
