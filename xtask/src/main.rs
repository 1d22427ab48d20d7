//! `cargo xtask`: the project's own automation. `ci` runs exactly what CI runs; `tidy` checks the
//! architecture invariants.

use std::path::PathBuf;

use serde_json::Value;
use std::process::{Command, ExitCode};
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <ci|tidy|size>

  ci    what CI runs: fmt check, clippy (-D warnings), tests, docs (-D warnings),
        each feature combination of the facade, and the tidy checks (as a test)
  tidy  the architecture invariants of ARCHITECTURE.md
  size  builds the command as `cargo install` does and checks it is under 20 MB";

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
    // aws-lc-rs, which the workspace's builds leave out (it compiles a C library): both
    // clients on it trust the platform's roots, and the provider is the one chosen.
    (
        "TLS on aws-lc-rs",
        "async,blocking,rustls-aws-lc-rs",
        &["--test", "tls", "--lib"],
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("tidy") => tidy(),
        Some("size") => size(),
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

/// Whether this run gives unchanged files their old times back, and the last run's end (see
/// `xtask::keep_file_times`): decided once, at the start.
static FILE_TIMES: std::sync::OnceLock<(bool, Option<std::time::SystemTime>)> =
    std::sync::OnceLock::new();

fn ci() -> Result<(), String> {
    let started = Instant::now();
    let root = xtask::workspace_root();
    let metadata = xtask::metadata(&root)?;
    let mut steps = Steps::default();
    // A target folder kept from an earlier run (CARGO_TARGET_DIR outside the clone, as CI
    // caches keep one) saves compiling only if cargo sees the unchanged files as unchanged.
    // Old times are given back only in CI (a developer's own builds share the folder), and only
    // if nothing has built in the folder since the last run ended (the stamp it leaves).
    let target = steps.target_dir();
    let stamp = target.join("ci-file-times.done");
    let restore = std::env::var_os("CI").is_some() && xtask::target_untouched(&target, &stamp);
    let floor = std::fs::metadata(&stamp).and_then(|m| m.modified()).ok();
    let _ = FILE_TIMES.set((restore, floor));
    let tracked = git_files(&root).unwrap_or_default();
    let kept = xtask::keep_file_times(&tracked, &target.join("ci-file-times.tsv"), restore, floor);
    eprintln!(
        "ci: {kept} of {} files unchanged since the target folder's last run",
        tracked.len()
    );
    let outcome = run_ci(&mut steps, metadata);
    steps.report();
    // The end of this run: what a next run compares the folder's fingerprints with.
    let _ = std::fs::write(&stamp, b"");
    eprintln!("ci: the whole run took {:.0?}", started.elapsed());
    outcome?;
    eprintln!("ci: all green in {:.0?}", started.elapsed());
    Ok(())
}

/// Everything `ci` runs after the file times: the steps, in order and beside each other.
fn run_ci(steps: &mut Steps, metadata: Value) -> Result<(), String> {
    // Every feature but those that compile a C library from source (those get a step each)
    // and those the test build leaves out on purpose.
    let left_out: Vec<&str> = xtask::HEAVY_FEATURES
        .iter()
        .chain(xtask::NOT_IN_THE_TEST_BUILD)
        .copied()
        .collect();
    let features = xtask::workspace_features(&metadata, &left_out);
    let features = features.join(",");
    steps.cargo("format", &["fmt", "--all", "--check"], &[])?;
    let nextest = nextest_installed();
    // With cargo-nextest (on every machine CI runs on), the build of the tests also writes the
    // list of its test binaries: the tests then run from that list without asking cargo for
    // anything, so the builds beside them never wait for cargo's lock, nor the tests for theirs.
    let built = steps.target_dir().join("nextest");
    if nextest {
        std::fs::create_dir_all(&built).map_err(|e| format!("{}: {e}", built.display()))?;
        steps.cargo_to_file(
            "build the tests",
            &[
                "nextest",
                "list",
                "--workspace",
                "--features",
                &features,
                "--list-type",
                "binaries-only",
                "--message-format",
                "json",
            ],
            &built.join("binaries.json"),
        )?;
        steps.cargo_to_file(
            "the workspace's metadata",
            &["metadata", "--format-version", "1"],
            &built.join("cargo-metadata.json"),
        )?;
    } else {
        steps.cargo(
            "build the tests",
            &["test", "--workspace", "--no-run", "--features", &features],
            &[],
        )?;
    }
    // Most of the time the tests run, they wait on servers and timers, not on the CPU. So the
    // builds of their own that some tests need, and what is checked rather than run (the
    // lints, the docs, each build of the facade, the packages), run beside them, one after
    // another at the lowest priority (`nice 19`): they take the CPU the tests leave, and the
    // tests run as on an idle machine. They share the tests' target folder, so what the
    // builds have in common (build scripts: C libraries compiled once) is built once.
    // Every part runs even when one fails, so a failing run still shows all there is to fix.
    let (binaries, cargo_metadata) = (
        built.join("binaries.json"),
        built.join("cargo-metadata.json"),
    );
    let (binaries, cargo_metadata) = (path_str(&binaries)?, path_str(&cargo_metadata)?);
    let beside = {
        let features = features.clone();
        let folder = steps.target_dir();
        std::thread::spawn(move || {
            let mut steps = Steps::beside_the_tests(folder);
            let one_crate = one_crate_checks(&mut steps, &metadata);
            let built = builds(&mut steps, &features, nextest);
            let checked = checks(&mut steps, &features);
            (steps, one_crate.and(built).and(checked))
        })
    };
    let tested = if nextest {
        steps.cargo(
            "tests",
            &[
                "nextest",
                "run",
                "--binaries-metadata",
                binaries,
                "--cargo-metadata",
                cargo_metadata,
            ],
            &[],
        )
    } else {
        steps.cargo(
            "tests",
            &["test", "--workspace", "--features", &features],
            &[],
        )
    };
    let (side_steps, result) = beside.join().unwrap_or_else(|_| {
        (
            Steps::default(),
            Err("the steps beside the tests panicked".to_owned()),
        )
    });
    steps.timings.extend(side_steps.timings);
    tested.and(result)
}

/// The builds of their own that some tests need, one after another beside the tests: the
/// doctests (which nextest does not run) and the transport's tests that only a build with
/// other features can run. (The README's main job runs among the tests, in a build whose TLS
/// is the default build's: see `NOT_IN_THE_TEST_BUILD`.)
fn builds(steps: &mut Steps, features: &str, nextest: bool) -> Result<(), String> {
    let root = xtask::workspace_root();
    if nextest {
        steps.cargo(
            "doctests",
            &["test", "--doc", "--workspace", "--features", features],
            &[],
        )?;
    }
    if root.join("crates/gptimage").exists() {
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
            steps.cargo(step, &args, &[])?;
        }
    }
    Ok(())
}

/// What is checked rather than run across the workspace: the lints, the docs, and that the
/// plain test build compiles.
fn checks(steps: &mut Steps, features: &str) -> Result<(), String> {
    steps.cargo(
        "lints",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            features,
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    steps.cargo(
        "docs",
        &["doc", "--workspace", "--no-deps", "--features", features],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // What a contributor runs first, `cargo test --workspace` with no features named, must at
    // least build: its tests are checked here (and every test that measures its process runs in
    // a process of its own, which tidy checks, so they pass there too).
    steps.cargo(
        "plain `cargo test --workspace` builds",
        &["check", "--workspace", "--tests"],
        &[],
    )
}

/// The checks of one crate at a time: each build of the facade, linted, and each package from
/// what it ships. Most of their time is one crate compiling on one core, so they run while the
/// tests leave a core free, before the builds that keep both busy.
fn one_crate_checks(steps: &mut Steps, metadata: &Value) -> Result<(), String> {
    if xtask::workspace_root().join("crates/gptimage").exists() {
        // Each build of the facade is linted, not only compiled. The vendored OpenSSL's code is
        // compiled against the system's OpenSSL: building OpenSSL from source proves nothing
        // of ours, and `cargo tree` proves the vendored build has it (the tidy checks).
        for set in xtask::facade_feature_sets() {
            let mut args = vec!["clippy", "--package", "gptimage"];
            args.extend(set.iter().map(String::as_str));
            args.extend(["--", "-D", "warnings"]);
            steps.cargo(
                &format!("facade {}", set.join(" ")),
                &args,
                &[("OPENSSL_NO_VENDOR", "1")],
            )?;
        }
    }
    verify_packages(steps, metadata)?;
    check_package_contents()
}

/// Every crate as crates.io would get it, checked from its package alone (nothing published):
/// what `cargo package` verifies, in check mode. Each `.crate` is unpacked and checked as the
/// root of its own build, with its default features, its sibling crates taken from their
/// unpacked packages too (`patch.crates-io`), so a file a package lacks or a feature it only
/// got from another crate of the workspace fails here. Checking rather than building gives the
/// same proof without code generation or linking; every check shares the target folder.
fn verify_packages(steps: &mut Steps, metadata: &Value) -> Result<(), String> {
    let root = xtask::workspace_root();
    steps.cargo(
        "packages",
        &[
            "package",
            "--workspace",
            "--exclude",
            "xtask",
            "--allow-dirty",
            "--no-verify",
        ],
        &[],
    )?;
    let version_of = |name: &str| {
        metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["version"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("{name} is not a workspace package"))
    };
    // Outside the workspace's folder, or cargo would take each for a member of it.
    let target = steps.target_dir();
    // One folder per target folder: runs of other clones on this machine never share it.
    let unpacked = {
        let key = target.display().to_string();
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        std::env::temp_dir().join(format!("gptimage-package-check-{hash:016x}"))
    };
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked).map_err(|e| format!("{}: {e}", unpacked.display()))?;
    let mut crates = Vec::new();
    for (package, _) in xtask::PACKAGE_CONTENTS {
        let version = version_of(package)?;
        let file = target.join(format!("package/{package}-{version}.crate"));
        // `-m`: the files get the time of their unpacking, not the fixed one cargo packs
        // them with (2006), which would make every later check of a changed package look
        // fresh; `keep_file_times` below gives the unchanged ones their earlier times back.
        let status = Command::new("tar")
            .arg("-xmzf")
            .arg(&file)
            .arg("-C")
            .arg(&unpacked)
            .status()
            .map_err(|e| format!("could not run tar: {e}"))?;
        if !status.success() {
            return Err(format!("could not unpack {}", file.display()));
        }
        let dir = unpacked.join(format!("{package}-{version}"));
        // The workspace's lock, so the check builds what the workspace's builds did.
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        crates.push((package.to_string(), dir));
    }
    let unpacked_files: Vec<PathBuf> = crates
        .iter()
        .flat_map(|(_, dir)| xtask::files_below(dir, |_| true))
        .collect();
    // Decided at the start of the run, before its own builds touched the folder.
    let (restore, floor) = FILE_TIMES.get().copied().unwrap_or((false, None));
    xtask::keep_file_times(
        &unpacked_files,
        &target.join("package-file-times.tsv"),
        restore,
        floor,
    );
    let patches: Vec<String> = crates
        .iter()
        .map(|(name, dir)| {
            format!(
                "patch.crates-io.{name}.path={:?}",
                dir.display().to_string()
            )
        })
        .collect();
    for (name, dir) in &crates {
        let manifest = dir.join("Cargo.toml");
        let mut args = vec!["check", "--manifest-path", path_str(&manifest)?];
        for patch in &patches {
            args.extend(["--config", patch.as_str()]);
        }
        steps.cargo(&format!("package {name}, checked alone"), &args, &[])?;
    }
    Ok(())
}

/// `cargo xtask size`: builds the command exactly as `cargo install gptimage-cli` would (the
/// release profile, the default features) and checks the binary against the limit.
fn size() -> Result<(), String> {
    let root = xtask::workspace_root();
    let install = root.join("target/xtask-size");
    let mut steps = Steps::default();
    steps.cargo(
        "install",
        &[
            "install",
            "--path",
            "crates/cli",
            "--locked",
            "--force",
            "--root",
            path_str(&install)?,
            "--target-dir",
            path_str(&root.join("target/xtask-size-build"))?,
        ],
        &[],
    )?;
    let binary = install.join("bin/gptimage");
    let bytes = std::fs::metadata(&binary)
        .map_err(|e| format!("{}: {e}", binary.display()))?
        .len();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "the installed gptimage is {:.1} MiB ({bytes} bytes; the limit is {:.0} MiB)",
        mib(bytes),
        mib(xtask::MAX_BINARY_BYTES)
    );
    if bytes > xtask::MAX_BINARY_BYTES {
        return Err(format!(
            "the installed binary is {bytes} bytes, over the limit"
        ));
    }
    Ok(())
}

/// Whether the lld linker is on the PATH.
fn lld_installed() -> bool {
    Command::new("ld.lld")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The files git tracks in the workspace, as paths.
fn git_files(root: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("could not run git: {e}"))?;
    if !output.status.success() {
        return Err("git ls-files failed".to_owned());
    }
    Ok(output
        .stdout
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| root.join(String::from_utf8_lossy(name).as_ref()))
        .collect())
}

/// Whether `cargo nextest` runs here.
fn nextest_installed() -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    Command::new(cargo)
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn path_str(path: &std::path::Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

/// The steps run so far and what each cost.
#[derive(Default)]
struct Steps {
    timings: Vec<(String, std::time::Duration)>,
    /// For steps run beside the tests: their own target folder, and the lowest priority.
    beside: Option<PathBuf>,
}

impl Steps {
    /// Steps that run beside the tests, in `target` and at the lowest priority.
    fn beside_the_tests(target: PathBuf) -> Self {
        Self {
            timings: Vec::new(),
            beside: Some(target),
        }
    }

    /// The target folder these steps build in.
    fn target_dir(&self) -> PathBuf {
        match (&self.beside, std::env::var_os("CARGO_TARGET_DIR")) {
            (Some(target), _) => target.clone(),
            (None, Some(target)) => PathBuf::from(target),
            (None, None) => xtask::workspace_root().join("target"),
        }
    }

    /// Runs one cargo step. In CI (`CI` set) a fresh clone is built once: no incremental
    /// caches, no debug info (a failing test still names its file and line), and linked by
    /// lld where it is installed (`.ci/run` installs it), several times quicker than the
    /// default linker for these test binaries. Every step shares the workspace's target
    /// folder, `cargo package`'s verification builds included.
    fn cargo(&mut self, step: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
        self.run(step, args, env, None)
    }

    fn run(
        &mut self,
        step: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stdout: Option<std::fs::File>,
    ) -> Result<(), String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let who = if self.beside.is_some() {
            "ci (beside the tests)"
        } else {
            "ci"
        };
        eprintln!("{who}: {step}: cargo {}", args.join(" "));
        let started = Instant::now();
        let mut command = if self.beside.is_some() {
            let mut command = Command::new("nice");
            command.args(["-n", "19"]).arg(cargo);
            command
        } else {
            Command::new(cargo)
        };
        command
            .args(args)
            .envs(env.iter().copied())
            .current_dir(xtask::workspace_root())
            .env("CARGO_TARGET_DIR", self.target_dir());
        if std::env::var_os("CI").is_some() {
            command
                .env("CARGO_INCREMENTAL", "0")
                .env("CARGO_PROFILE_DEV_DEBUG", "0");
            if std::env::var_os("RUSTFLAGS").is_none() && lld_installed() {
                command.env("RUSTFLAGS", "-C link-arg=-fuse-ld=lld");
            }
        }
        if let Some(file) = stdout {
            command.stdout(file);
        }
        let status = command
            .status()
            .map_err(|e| format!("{step}: could not run cargo: {e}"))?;
        let took = started.elapsed();
        eprintln!("{who}: {step}: {status} after {took:.1?}");
        self.timings.push((step.to_owned(), took));
        if status.success() {
            Ok(())
        } else {
            Err(format!("{step} failed"))
        }
    }

    /// Runs one cargo step as [`cargo`](Self::cargo) does, its standard output into `file`.
    fn cargo_to_file(
        &mut self,
        step: &str,
        args: &[&str],
        file: &std::path::Path,
    ) -> Result<(), String> {
        let output = std::fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))?;
        self.run(step, args, &[], Some(output))
    }

    /// What each step cost, longest first.
    fn report(&self) {
        let mut timings = self.timings.clone();
        timings.sort_by_key(|(_, took)| std::cmp::Reverse(*took));
        eprintln!("ci: what each step cost:");
        for (step, took) in timings {
            eprintln!("ci:   {:>7.1} s  {step}", took.as_secs_f64());
        }
    }
}

/// Each published crate carries both licence texts and its README; the facade its examples.
fn check_package_contents() -> Result<(), String> {
    for (package, extra) in xtask::PACKAGE_CONTENTS {
        let output = xtask::cargo_output(
            &xtask::workspace_root(),
            &["package", "--list", "--allow-dirty", "--package", package],
        )?;
        let listed = String::from_utf8_lossy(&output);
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
