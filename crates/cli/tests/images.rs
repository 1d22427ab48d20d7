//! Image-to-image from local files through the command: checked before anything is sent,
//! uploaded once per distinct file (to the emulator's host, an http host that takes a PUT, or
//! an S3 bucket on moto's server), never printed with its signature.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use gptimage_emulator::{Config, Emulator};

/// A real PNG on disk, made by a text-to-image run.
fn photo(emulator: &Emulator, dir: &Path) -> PathBuf {
    photo_of(emulator, dir, "a day photo")
}

/// A real PNG of `prompt` on disk (another prompt, another picture).
fn photo_of(emulator: &Emulator, dir: &Path, prompt: &str) -> PathBuf {
    let output = run(against(emulator)
        .args(["generate", prompt, "--json", "--out"])
        .arg(dir));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    PathBuf::from(json(&output)["files"][0].as_str().unwrap())
}

#[test]
fn a_local_file_is_edited_offline_with_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let seed = Emulator::spawn(Config::instant()).unwrap();
    let photo = photo(&seed, dir.path());
    let output = run(gptimage()
        .args([
            "generate",
            "make it night",
            "--emulator",
            "--json",
            "--image",
        ])
        .arg(&photo)
        .arg("--out")
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["status"], "SUCCESS");
}

#[test]
fn a_file_named_twice_is_uploaded_once_and_a_second_run_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let photo = photo(&emulator, dir.path());
    for _ in 0..2 {
        let output = run(against(&emulator)
            .args(["generate", "two of the same", "--json", "--image-host"])
            .arg(emulator.uploads_url())
            .arg("--image")
            .arg(&photo)
            .arg("--image")
            .arg(&photo)
            .arg("--out")
            .arg(dir.path()));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    let counters = emulator.counters();
    assert_eq!(counters.uploads_stored, 1, "one upload for one file");
    assert_eq!(
        counters.upload_requests,
        2 + 2 * 2,
        "one PUT a run; each task fetches both of its images"
    );
}

#[test]
fn bad_files_and_missing_hosts_are_usage_errors_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let photo = photo(&emulator, dir.path());
    let before = emulator.counters();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--image".into(),
                dir.path().join("missing.png").display().to_string(),
            ],
            "cannot be read",
        ),
        (
            vec!["--image".into(), text.display().to_string()],
            "is not a PNG, JPEG or WebP image",
        ),
        (
            vec!["--image".into(), photo.display().to_string()],
            "--image-host",
        ),
        (
            vec![
                "--image".into(),
                photo.display().to_string(),
                "--image-host".into(),
                "ftp://somewhere/x".into(),
            ],
            "s3://bucket/prefix",
        ),
    ];
    for (args, why) in cases {
        let output = run(against(&emulator)
            .env_remove("AWS_ACCESS_KEY_ID")
            .args(["generate", "never sent"])
            .args(&args));
        exits_saying(&output, 2, why);
    }
    let output = run(against(&emulator)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args([
            "generate",
            "never sent",
            "--image-host",
            "s3://bucket/x",
            "--image",
        ])
        .arg(&photo));
    exits_saying(&output, 2, "no credentials");
    let after = emulator.counters();
    assert_eq!(
        after.generate_requests, before.generate_requests,
        "nothing was sent"
    );
    assert_eq!(
        after.upload_requests, before.upload_requests,
        "nothing was uploaded"
    );
}

#[test]
fn a_bucket_hosts_a_local_file_behind_a_signed_url_never_printed_whole() {
    let s3 = S3::start("edits");
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let photo = photo(&emulator, dir.path());
    let output = run(s3
        .credentials(&mut against(&emulator))
        .args(["--verbose", "generate", "make it night", "--json"])
        .args(["--image-host", "s3://edits/inputs", "--image"])
        .arg(&photo)
        .arg("--out")
        .arg(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(json(&output)["status"], "SUCCESS");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(
        all.contains("/edits/inputs/"),
        "the verbose line names the object: {all}"
    );
    assert!(
        !all.contains("X-Amz-Signature"),
        "a signed URL was printed: {all}"
    );
    // A bucket that does not exist: a usage error, nothing sent.
    let before = emulator.counters().generate_requests;
    let output = run(s3
        .credentials(&mut against(&emulator))
        .args([
            "generate",
            "never sent",
            "--image-host",
            "s3://no-such-bucket/x",
            "--image",
        ])
        .arg(&photo));
    exits_saying(&output, 2, "no-such-bucket");
    assert_eq!(emulator.counters().generate_requests, before);
}

/// Two photos in `dir/photos`, and a batch file in `dir` naming them by relative paths: the
/// first twice, the second once, and a missing one.
fn batch_with_files(emulator: &Emulator, dir: &Path, missing: bool) -> PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let day = photo(emulator, &photos);
    std::fs::rename(&day, photos.join("day.png")).unwrap();
    let night = photo_of(emulator, &photos, "a night photo");
    std::fs::rename(&night, photos.join("night.png")).unwrap();
    let mut lines = vec![
        r#"{"prompt": "make it dusk", "images": ["photos/day.png"]}"#.to_owned(),
        r#"{"prompt": "make it snow", "images": ["photos/day.png"]}"#.to_owned(),
        r#"{"prompt": "make it dawn", "images": ["photos/night.png"]}"#.to_owned(),
    ];
    if missing {
        lines.push(r#"{"prompt": "nothing to edit", "images": ["photos/gone.png"]}"#.to_owned());
    }
    let file = dir.join("edits.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}

#[test]
fn batch_lines_name_local_files_each_uploaded_once_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let file = batch_with_files(&emulator, dir.path(), true);
    let before = emulator.counters();
    let out = dir.path().join("out");
    let host = emulator.uploads_url();
    // The dry run checks the files and uploads nothing.
    let output = run(&mut batch(
        &emulator,
        &file,
        &out,
        &["--dry-run", "--image-host", &host],
    ));
    exits_saying(&output, 2, "gone.png");
    assert_eq!(emulator.counters().upload_requests, before.upload_requests);
    // A first run within a budget of one task: one file uploaded.
    let output = run(&mut batch(
        &emulator,
        &file,
        &out,
        &["--max-credits", "10", "--image-host", &host],
    ));
    assert_ne!(output.status.code(), Some(2), "{}", stderr(&output));
    // The second run: the first file's URL comes from the state; only the second is uploaded.
    let output = run(&mut batch(
        &emulator,
        &file,
        &out,
        &["--max-credits", "100", "--image-host", &host],
    ));
    assert_eq!(
        output.status.code(),
        Some(1),
        "one line invalid: {}",
        stderr(&output)
    );
    let after = emulator.counters();
    assert_eq!(
        after.uploads_stored - before.uploads_stored,
        2,
        "two distinct files"
    );
    assert_eq!(
        after.upload_requests - before.upload_requests,
        2 + 3,
        "two PUTs, and one GET for each of the three tasks: no file sent twice"
    );
    assert_eq!(after.tasks_succeeded - before.tasks_succeeded, 3);
    let status = run(gptimage()
        .args(["batch-status", "--json", "--out"])
        .arg(&out));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("gone.png"),
        "the invalid line names the file: {text}"
    );
}

#[test]
fn a_batch_naming_local_files_without_a_host_stops_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let file = batch_with_files(&emulator, dir.path(), false);
    let before = emulator.counters().generate_requests;
    let out = dir.path().join("out");
    let output = run(&mut batch(&emulator, &file, &out, &[]));
    exits_saying(&output, 2, "--image-host");
    assert_eq!(
        emulator.counters().generate_requests,
        before,
        "nothing was sent"
    );
    // With a host, the same batch runs to its end.
    let host = emulator.uploads_url();
    let output = run(&mut batch(&emulator, &file, &out, &["--image-host", &host]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn generate_puts_its_images_in_a_bucket_and_signs_urls_only_when_asked() {
    let s3 = S3::start("results");
    let dir = tempfile::tempdir().unwrap();
    let emulator = Emulator::spawn(Config::instant()).unwrap();
    let output = run(s3
        .credentials(&mut against(&emulator))
        .args(["generate", "a lighthouse at dusk", "--json"])
        .args(["--out", "s3://results/run-1"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    let task_id = report["task_id"].as_str().unwrap().to_owned();
    let object = &report["objects"][0];
    let key = format!("{task_id}-1.png");
    assert_eq!(object["location"], format!("s3://results/run-1/{key}"));
    assert_eq!(object["written"], true);
    assert!(object.get("url").is_none(), "no URL unless asked: {report}");
    assert_eq!(report["files"].as_array().map(Vec::len), Some(0));
    // The image, beside the marker written to check the bucket took writes before paying.
    assert_eq!(
        s3.0.keys("results", "run-1/"),
        [
            "run-1/.gptimage-write-check".to_owned(),
            format!("run-1/{key}")
        ]
    );
    let sha256 = object["sha256"].as_str().unwrap().to_owned();

    // The same task again, with a signed URL asked for: the same content is not written twice,
    // and the URL (in --json only) fetches the image.
    let output = run(s3
        .credentials(&mut against(&emulator))
        .args(["wait", &task_id, "--json", "--sign-for", "600"])
        .args(["--out", "s3://results/run-1"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = json(&output);
    let object = &report["objects"][0];
    assert_eq!(object["written"], false, "{report}");
    let url = object["url"].as_str().expect("a signed URL, as asked");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let path = url.split_once("127.0.0.1").unwrap().1;
    let path = &path[path.find('/').unwrap()..];
    let (status, content_type, body) = s3.0.get(path);
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    assert!(body.starts_with(b"\x89PNG\r\n\x1a\n"), "a whole PNG");
    assert_eq!(
        sha256_hex(&body),
        sha256,
        "the object is the image the report named"
    );
    assert!(
        !stderr(&output).contains("Signature"),
        "{}",
        stderr(&output)
    );

    // For people: the object's location on stdout, no signature anywhere.
    let output = run(s3
        .credentials(&mut against(&emulator))
        .args(["wait", &task_id, "--sign-for", "600"])
        .args(["--out", "s3://results/run-1"]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.trim(), format!("s3://results/run-1/{key}"));
    assert!(!stderr(&output).contains("Signature"));

    // Refused before anything is paid: --sign-for without a bucket, a scheme no store speaks,
    // a bucket URL naming no bucket.
    let before = emulator.counters().generate_requests;
    let output = run(against(&emulator)
        .args(["generate", "never sent", "--sign-for", "60", "--out"])
        .arg(dir.path()));
    exits_saying(&output, 2, "--sign-for signs URLs of a bucket");
    let output = run(against(&emulator).args(["generate", "never sent", "--out", "ftp://x/y"]));
    exits_saying(&output, 2, "ftp://");
    let output = run(s3.credentials(&mut against(&emulator)).args([
        "generate",
        "never sent",
        "--out",
        "s3:///run",
    ]));
    exits_saying(&output, 2, "names no bucket");
    // A bucket that does not take writes (here: none of that name) is found before paying,
    // by generate and by batch alike.
    let output = run(s3.credentials(&mut against(&emulator)).args([
        "generate",
        "never sent",
        "--out",
        "s3://no-such-bucket/run",
    ]));
    exits_saying(&output, 2, "s3://no-such-bucket/run does not take writes");
    let file = write_batch(dir.path(), &numbered_lines(3, "never sent"));
    let output = run(s3
        .credentials(&mut against(&emulator))
        .current_dir(dir.path())
        .arg("batch")
        .arg(&file)
        .args(["--out", "s3://no-such-bucket/run"]));
    exits_saying(&output, 2, "s3://no-such-bucket/run does not take writes");
    // A URL with more than a bucket and a prefix.
    let output = run(s3.credentials(&mut against(&emulator)).args([
        "generate",
        "never sent",
        "--out",
        "s3://results/p?x=y",
    ]));
    exits_saying(&output, 2, "takes a bucket and a prefix only");
    assert_eq!(emulator.counters().generate_requests, before);
    assert!(
        !dir.path().join("s3:").exists(),
        "a bucket URL is never taken for a local folder"
    );
}

#[test]
fn a_batch_to_a_bucket_stops_when_it_refuses_writes_and_a_later_run_stores_without_new_tasks() {
    let s3 = S3::start("gallery");
    let dir = tempfile::tempdir().unwrap();
    // Each task takes 0.4 s: the bucket goes while lines are still to come.
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_millis(400));
    let emulator = Emulator::spawn(config).unwrap();
    let file = write_batch(dir.path(), &numbered_lines(8, "a bucket that goes away"));
    let mut command = against(&emulator);
    command
        .current_dir(dir.path())
        .args(["--request-timeout", "3", "batch"])
        .arg(&file)
        .args(["--out", "s3://gallery/run-7", "--concurrency", "1"]);
    let running = Running::start(s3.credentials(&mut command));
    wait_until("two lines' images are in the bucket", || {
        let keys = s3.0.keys("gallery", "run-7/");
        keys.iter().filter(|k| k.ends_with(".png")).count() >= 2
    });
    s3.0.forget_everything();
    let (code, text) = running.wait(Duration::from_secs(60));
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("the output s3://gallery/run-7 cannot be written"),
        "the message names the bucket: {text}"
    );
    assert!(
        text.contains("gptimage-state-s3-gallery-run-7"),
        "the run said where its state is: {text}"
    );
    let paid = emulator.counters().tasks_created;
    // The state's folder is named after the URL, and a hash of it.
    let folder = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with("gptimage-state-s3-gallery-run-7-")
            })
        })
        .expect("the state's folder");
    let state = format!("sqlite:{}", folder.join("gptimage-batch.sqlite").display());
    let status = batch_status(&state);
    let done = count(&status, "done");
    let submitted = count(&status, "submitted");
    assert!(done >= 2, "{status}");
    assert_eq!(submitted, 1, "the refused line keeps its task: {status}");
    assert_eq!(
        paid,
        done + submitted,
        "nothing was paid for after the refusal: {status}"
    );
    assert_eq!(count(&status, "pending"), 8 - paid, "{status}");

    // The bucket is back (empty: moto forgot the pictures stored before the refusal too): the
    // held line is stored without a new task, the rest are run.
    s3.0.bucket("gallery");
    let mut command = against(&emulator);
    command
        .current_dir(dir.path())
        .args(["--request-timeout", "3", "batch"])
        .arg(&file)
        .args(["--out", "s3://gallery/run-7", "--concurrency", "4"]);
    let output = run(s3.credentials(&mut command));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        emulator.counters().tasks_created,
        8,
        "one task per line, ever"
    );
    let keys = s3.0.keys("gallery", "run-7/");
    let pictures = keys.iter().filter(|k| k.ends_with(".png")).count();
    assert_eq!(pictures as u64, 8 - done, "{keys:?}");
    assert!(keys.contains(&"run-7/index.html".to_owned()), "{keys:?}");
    let (status, content_type, manifest) = s3.0.get("/gallery/run-7/results.jsonl");
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/x-ndjson");
    let manifest = String::from_utf8(manifest).unwrap();
    assert_eq!(manifest.lines().count(), 8, "{manifest}");
    assert!(!dir.path().join("s3:").exists());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
