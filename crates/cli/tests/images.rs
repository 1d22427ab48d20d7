//! Image-to-image from local files through the command: checked before anything is sent,
//! uploaded once per distinct file (to the emulator's host, an http host that takes a PUT, or
//! an S3 bucket on moto's server), never printed with its signature.

mod common;

use std::path::{Path, PathBuf};

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
