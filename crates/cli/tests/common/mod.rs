//! Helpers shared by the command's tests: the built binary pointed at an emulator, its output
//! read as JSON, and the pictures it left.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gptimage_emulator::Emulator;
use serde_json::Value;

#[path = "../../../transport/tests/support/moto.rs"]
mod moto;
pub mod netns;

pub fn gptimage() -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin!("gptimage"));
    command
        .env_remove("GPTIMAGE_API_KEY")
        .env_remove("GPTIMAGE_BASE_URL")
        .current_dir(scratch())
        .stdin(Stdio::null());
    command
}

/// The folder the command runs in: cargo's scratch folder for integration tests (under
/// `target/`), so that what a test leaves in the working folder (the images of a `generate`
/// without `--out`) never lands in the source tree.
fn scratch() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// The command, pointed at `emulator`.
pub fn against(emulator: &Emulator) -> Command {
    let mut command = gptimage();
    command
        .env("GPTIMAGE_API_KEY", emulator.api_key())
        .env("GPTIMAGE_BASE_URL", emulator.base_url())
        .args(["--poll-interval", "0.02"]);
    command
}

/// `gptimage batch FILE --out OUT EXTRA…` against `emulator`.
///
/// Its requests time out after 3 s (the emulator answers in milliseconds): a line whose worker
/// was killed while submitting becomes `unknown` after its lock-delay, which the request
/// timeout bounds (about 6.5 s here, rather than a minute and more with the default 60 s).
pub fn batch(emulator: &Emulator, file: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut command = against(emulator);
    command
        .args(["--request-timeout", "3"])
        .arg("batch")
        .arg(file)
        .arg("--out")
        .arg(out)
        .args(extra);
    command
}

pub fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

/// The one JSON object a `--json` run printed; stdout must hold nothing else.
pub fn json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must be one JSON line: {stdout:?}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Asserts the command exited with `code` and its stderr says `what`.
pub fn exits_saying(output: &Output, code: i32, what: &str) {
    let said = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{said}");
    assert!(said.contains(what), "expected {what:?} in: {said}");
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn png_size(path: &Path) -> (u32, u32) {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (image.width(), image.height())
}

/// Writes `lines` as a batch file in `dir`.
pub fn write_batch(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("batch.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// `n` valid low-quality lines named `p0`, `p1`, …
pub fn numbered_lines(n: usize, word: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"prompt": "{word} {i}", "quality": "low", "name": "p{i}"}}"#))
        .collect()
}

/// `gptimage batch-status --json` for the state at `state` (a URL) or in `out`, or `None` while
/// there is no state to show.
pub fn try_batch_status(state: &str) -> Option<Value> {
    let output = run(&mut status_command(state));
    (output.status.code() == Some(0)).then(|| json(&output))
}

/// `gptimage batch-status --json` for the state at `state` (a URL) or in `out`.
pub fn batch_status(state: &str) -> Value {
    let output = run(&mut status_command(state));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    json(&output)
}

/// Like [`batch_status`], once every unknown outcome is settled (has its token): what a
/// worker sent is given its lock-delay to arrive (about 10 s with the tests' 3 s request
/// timeout) before the user may check it. Waits at most 30 s.
pub fn settled_status(state: &str) -> Value {
    let started = Instant::now();
    loop {
        let status = batch_status(state);
        let unsettled = status["not_done"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|line| !line["settles_in_secs"].is_null());
        if !unsettled {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "unknown outcomes still unsettled after 30 s: {status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn status_command(state: &str) -> Command {
    let mut command = gptimage();
    let option = if state.contains(':') {
        "--state"
    } else {
        "--out"
    };
    command.args(["batch-status", "--json", option, state]);
    command
}

/// Lines of the batch in `state`, by state name (0 when none).
pub fn count(status: &Value, state: &str) -> u64 {
    status["states"][state].as_u64().unwrap_or(0)
}

/// Every PNG below `dir`.
pub fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(pngs(&path));
        } else if path.extension().is_some_and(|e| e == "png") {
            found.push(path);
        }
    }
    found
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// moto's S3-compatible server (the transport tests' harness) with one bucket.
pub struct S3(pub moto::Moto);

impl S3 {
    pub fn start(bucket: &str) -> Self {
        let moto = moto::Moto::start();
        moto.bucket(bucket);
        Self(moto)
    }

    /// The command, with credentials for this server in its environment.
    pub fn credentials<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env("AWS_ACCESS_KEY_ID", "test-key")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT", self.0.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
    }
}

/// A running `gptimage batch`, with its stderr read line by line on a thread.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 20 s) for a line of stderr containing `needle`.
    pub fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no {needle:?} on stderr within 20 s: {:?}", self.seen);
    }

    /// SIGKILL: no destructor, no flush, nothing.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The process's id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`INT`, `STOP`, `CONT`, …) by name.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to end by itself (at most `within`): its exit code and all it
    /// wrote on stderr; `None` (and the process killed) if it did not end.
    pub fn wait(mut self, within: Duration) -> (Option<i32>, String) {
        let started = Instant::now();
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        (code, self.seen.join("\n"))
    }
}

/// Waits (at most 20 s) until `done` holds.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
