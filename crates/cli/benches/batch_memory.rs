//! Peak resident memory of `gptimage batch` as its file grows: the same run over files of 1,000,
//! 200,000 and 1,000,000 lines, with 64 lines in flight. Memory should follow the work in
//! flight, not the file. Then the commands that read a whole state, on a batch of 1,000,000
//! failed lines: `batch-status` (for people and `--json`), `batch --dry-run`, and a run that
//! has nothing left to do but write `index.html`. Their memory should not follow the failures.
//!
//! Then the same 100,000-line batch into a bucket (moto's S3 server) and into a folder,
//! interleaved: a bucket's run should take no more memory than a folder's.
//!
//! Run with `cargo bench -p gptimage-cli --bench batch_memory` (`BENCH_ONLY=bucket` for the
//! bucket's part alone). The command runs as its own
//! process (so its peak resident set, `VmHWM`, is its alone) against an emulator in this one;
//! each run is stopped with Ctrl-C after `BENCH_SECONDS` (default 10) or once 2,000 lines are
//! done. Linux only (it reads `/proc`).

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gptimage_emulator::{Config, Emulator};

#[path = "../../transport/tests/support/moto.rs"]
mod moto;

const SIZES: [u64; 3] = [1_000, 200_000, 1_000_000];
const CONCURRENCY: &str = "64";
const MAX_DONE: u64 = 2_000;

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0_f64)
        .clamp(1.0, 120.0);
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(200));
    let emulator = Emulator::spawn(config).expect("the emulator starts");
    let dir = tempfile::tempdir().expect("a temporary folder");
    // `BENCH_ONLY=bucket`: only the bucket against the folder.
    if std::env::var("BENCH_ONLY").as_deref() == Ok("bucket") {
        bucket_vs_folder(&emulator, dir.path(), seconds);
        return;
    }
    println!("    lines  file MB  lines settled  seconds  peak RSS MB  RSS bytes per file line");
    for lines in SIZES {
        let file = dir.path().join(format!("batch-{lines}.jsonl"));
        write_file(&file, lines);
        let out = dir.path().join(format!("out-{lines}"));
        let before = emulator.counters().tasks_succeeded;
        let (settled, elapsed, peak_kb) = run(&emulator, &file, &out, seconds, before);
        let file_mb = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        println!(
            "{lines:>9}  {file_mb:>7.1}  {settled:>13}  {:>7.1}  {:>11.1}  {:>23.1}",
            elapsed.as_secs_f64(),
            peak_kb as f64 / 1024.0,
            peak_kb as f64 * 1024.0 / lines as f64
        );
    }
    bucket_vs_folder(&emulator, dir.path(), seconds);
    failures(&emulator, dir.path());
}

/// Lines of the batch run into a bucket and into a folder.
const BUCKET_LINES: u64 = 100_000;

/// The same 100,000-line batch into a bucket (moto's S3 server) and into a local folder,
/// interleaved (folder, bucket, folder, bucket), each a fresh state: the peak resident set of
/// each, and the median ratio of bucket to folder.
fn bucket_vs_folder(emulator: &Emulator, dir: &Path, seconds: f64) {
    let s3 = moto::Moto::start();
    s3.bucket("bench");
    let file = dir.join("bucket.jsonl");
    write_file(&file, BUCKET_LINES);
    let credentials = [
        ("AWS_ACCESS_KEY_ID", "bench-key".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT", s3.endpoint()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ];
    println!();
    println!("{BUCKET_LINES} lines, into a folder and into a bucket (interleaved)");
    println!("  round  into    lines settled  seconds  peak RSS MB");
    let mut ratios = Vec::new();
    for round in 0..2 {
        let mut peaks = [0u64; 2];
        for (i, into) in ["folder", "bucket"].into_iter().enumerate() {
            let out = match into {
                "folder" => dir.join(format!("folder-{round}")),
                _ => std::path::PathBuf::from(format!("s3://bench/run-{round}")),
            };
            let state = dir.join(format!("state-{into}-{round}"));
            let before = emulator.counters().tasks_succeeded;
            let (settled, elapsed, peak_kb) =
                run_with(emulator, &file, &out, &state, &credentials, seconds, before);
            peaks[i] = peak_kb;
            println!(
                "  {round:>5}  {into:<6}  {settled:>13}  {:>7.1}  {:>11.1}",
                elapsed.as_secs_f64(),
                peak_kb as f64 / 1024.0
            );
        }
        ratios.push(peaks[1] as f64 / peaks[0].max(1) as f64);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  bucket / folder peak RSS, median of {} rounds: {:.2}",
        ratios.len(),
        ratios[ratios.len() / 2]
    );
}

/// A batch of `FAILED` lines, all invalid (their prompt is blank), whose state records each
/// with its reason, as if a run had gone through them; built in one statement, since a real run
/// commits every line to disk one by one.
const FAILED: u64 = 1_000_000;

fn failures(emulator: &Emulator, dir: &Path) {
    let file = dir.join("failed.jsonl");
    let mut writer = BufWriter::new(std::fs::File::create(&file).expect("the batch file"));
    for i in 0..FAILED {
        writeln!(writer, r#"{{"prompt": "", "name": "blank-{i}"}}"#).expect("written");
    }
    writer.flush().expect("written");
    let out = dir.join("out-failed");
    let state = gptimage_batch::StateUrl::in_folder(&out);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let batch = gptimage_batch::Batch::open(&file, &state)
            .await
            .expect("the state opens");
        batch.store().close().await;
        let url = format!("sqlite://{}", out.join("gptimage-batch.sqlite").display());
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("the state opens");
        let fill = format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
             INSERT INTO gptimage_lines (item, line, state, error_kind, error_message)
             SELECT i, i + 1, 'invalid', 'invalid_request',
             '''prompt'' is blank: give a description of the picture' FROM n;
             UPDATE gptimage_batch SET claimed = items;",
            last = FAILED - 1
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(fill))
            .execute(&mut conn)
            .await
            .expect("the failures are recorded");
    });
    println!();
    println!("{FAILED} failed lines: peak RSS of each command that reads the whole state");
    let out_arg = out.to_str().expect("a UTF-8 path");
    let file_arg = file.to_str().expect("a UTF-8 path");
    let commands: [(&str, Vec<&str>); 4] = [
        ("batch-status", vec!["batch-status", "--out", out_arg]),
        (
            "batch-status --json",
            vec!["batch-status", "--json", "--out", out_arg],
        ),
        (
            "batch --dry-run",
            vec!["batch", file_arg, "--out", out_arg, "--dry-run"],
        ),
        (
            "batch (index.html)",
            vec!["batch", file_arg, "--out", out_arg],
        ),
    ];
    for (name, args) in commands {
        let (peak_kb, bytes, elapsed) = measure(emulator, &args);
        println!(
            "  {name:<20} {:>8.1} MB peak RSS  {:>8.1} MB on stdout  {:>6.1} s",
            peak_kb as f64 / 1024.0,
            bytes as f64 / 1e6,
            elapsed.as_secs_f64()
        );
    }
}

/// Runs the command with `args` to its end; its peak resident set in KiB, the bytes it printed
/// on stdout, and the time it took.
fn measure(emulator: &Emulator, args: &[&str]) -> (u64, u64, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptimage"))
        .env("GPTIMAGE_API_KEY", emulator.api_key())
        .env("GPTIMAGE_BASE_URL", emulator.base_url())
        .arg("--quiet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the command starts");
    let mut stdout = child.stdout.take().expect("piped");
    let counter = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let limit = Duration::from_secs(600);
    while child.try_wait().ok().flatten().is_none() && started.elapsed() < limit {
        peak = peak.max(hwm(&status));
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let bytes = counter.join().ok().and_then(Result::ok).unwrap_or(0);
    (peak, bytes, started.elapsed())
}

fn write_file(path: &Path, lines: u64) {
    let mut file = BufWriter::new(std::fs::File::create(path).expect("the batch file"));
    for i in 0..lines {
        writeln!(
            file,
            r#"{{"prompt": "benchmark picture number {i}", "quality": "low"}}"#
        )
        .expect("the batch file is written");
    }
    file.flush().expect("the batch file is written");
}

/// Runs the batch until `seconds` pass or `MAX_DONE` more tasks succeed; returns the lines
/// settled, the time taken and the process's peak resident set in KiB.
fn run(
    emulator: &Emulator,
    file: &Path,
    out: &Path,
    seconds: f64,
    before: u64,
) -> (u64, Duration, u64) {
    run_with(emulator, file, out, out, &[], seconds, before)
}

/// [`run`], its state in the folder `state` and `env` in its environment.
fn run_with(
    emulator: &Emulator,
    file: &Path,
    out: &Path,
    state: &Path,
    env: &[(&str, String)],
    seconds: f64,
    before: u64,
) -> (u64, Duration, u64) {
    let started = Instant::now();
    std::fs::create_dir_all(state).expect("the state's folder");
    let state = format!("sqlite:{}", state.join("gptimage-batch.sqlite").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gptimage"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("GPTIMAGE_API_KEY", emulator.api_key())
        .env("GPTIMAGE_BASE_URL", emulator.base_url())
        .args(["--poll-interval", "0.1", "--quiet", "batch", "--json"])
        .arg(file)
        .arg("--out")
        .arg(out)
        .args(["--concurrency", CONCURRENCY, "--state", &state])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the command starts");
    let stdout = child.stdout.take().expect("piped");
    let counter =
        std::thread::spawn(move || std::io::BufReader::new(stdout).lines().count() as u64);
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let deadline = started + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        peak = peak.max(hwm(&status));
        if emulator.counters().tasks_succeeded - before >= MAX_DONE {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    peak = peak.max(hwm(&status));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let settled = counter.join().unwrap_or(0);
    (settled, started.elapsed(), peak)
}

/// `VmHWM` (peak resident set) of a live process, in KiB; 0 once it is gone.
fn hwm(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
