//! `cargo xtask`: the project's own automation. `ci` runs exactly what CI runs; `tidy` checks the
//! architecture invariants.

use std::process::{Command, ExitCode};
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <ci|tidy>

  ci    what CI runs: fmt check, clippy (-D warnings), tests, docs (-D warnings),
        each feature combination of the facade, and the tidy checks
  tidy  the architecture invariants of ARCHITECTURE.md";

/// Tests of the transport that only a build of their own can run: (step, features, which tests).
const TRANSPORT_BUILD_TESTS: &[(&str, &str, &[&str])] = &[
    // Both clients trust the platform's roots through OpenSSL too.
    (
        "TLS through native-tls",
        "async,blocking,native-tls",
        &["--test", "tls"],
    ),
    // A build with `rustls-no-provider` asks the application for its provider.
    (
        "TLS with the application's provider",
        "blocking,rustls-no-provider",
        &["--lib", "tls::"],
    ),
    // The refusal of https without TLS, in a build that has none.
    ("no-TLS build", "blocking", &["--lib", "need_a_tls_feature"]),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => tidy(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn tidy() -> Result<(), String> {
    let violations = xtask::check_all(&xtask::workspace_root());
    if violations.is_empty() {
        eprintln!("tidy: every architecture invariant holds");
        return Ok(());
    }
    for violation in &violations {
        eprintln!("tidy: {violation}");
    }
    Err(format!(
        "{} architecture invariant(s) broken",
        violations.len()
    ))
}

fn ci() -> Result<(), String> {
    let started = Instant::now();
    cargo("format", &["fmt", "--all", "--check"], &[])?;
    cargo(
        "lints",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo("tests", &["test", "--workspace", "--all-features"], &[])?;
    if xtask::workspace_root()
        .join("crates/gptimage/tests/offline.rs")
        .exists()
    {
        // The README's main job in the default build, which `--all-features` cannot stand for:
        // there, native-tls hides what reqwest's provider-less rustls does beside the emulator.
        cargo(
            "the default build, offline",
            &["test", "--package", "gptimage", "--test", "offline"],
            &[],
        )?;
    }
    cargo(
        "docs",
        &["doc", "--workspace", "--no-deps", "--all-features"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    if xtask::workspace_root().join("crates/gptimage").exists() {
        for features in xtask::facade_feature_sets() {
            let mut args = vec!["check", "--package", "gptimage"];
            args.extend(features.iter().map(String::as_str));
            cargo(&format!("facade {}", features.join(" ")), &args, &[])?;
        }
        for (step, features, tests) in TRANSPORT_BUILD_TESTS {
            let mut args = vec![
                "test",
                "--package",
                "gptimage-transport",
                "--no-default-features",
                "--features",
                features,
            ];
            args.extend_from_slice(tests);
            cargo(step, &args, &[])?;
        }
    }
    // Every crate as crates.io would get it, built from its package alone (nothing published).
    cargo(
        "packages",
        &[
            "package",
            "--workspace",
            "--exclude",
            "xtask",
            "--allow-dirty",
        ],
        &[],
    )?;
    check_package_contents()?;
    tidy()?;
    eprintln!("ci: all green in {:.0?}", started.elapsed());
    Ok(())
}

fn cargo(step: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("ci: {step}: cargo {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(xtask::workspace_root())
        .status()
        .map_err(|e| format!("{step}: could not run cargo: {e}"))?;
    eprintln!("ci: {step}: {status} after {:.1?}", started.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed"))
    }
}

/// Each published crate carries both licence texts and its README; the facade its examples.
fn check_package_contents() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for (package, extra) in xtask::PACKAGE_CONTENTS {
        let output = Command::new(&cargo)
            .args(["package", "--list", "--allow-dirty", "--package", package])
            .current_dir(xtask::workspace_root())
            .output()
            .map_err(|e| format!("could not run cargo package --list: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo package --list --package {package} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let listed = String::from_utf8_lossy(&output.stdout);
        let files: Vec<&str> = listed.lines().collect();
        let missing: Vec<&&str> = ["LICENSE-MIT", "LICENSE-APACHE", "README.md"]
            .iter()
            .chain(extra.iter())
            .filter(|f| !files.contains(f))
            .collect();
        if !missing.is_empty() {
            return Err(format!("the package of {package} lacks {missing:?}"));
        }
    }
    eprintln!("ci: every package carries its licences, README and examples");
    Ok(())
}
