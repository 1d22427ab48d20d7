//! Architecture checks ("tidy") for the gptimage workspace, shared by `cargo xtask tidy` and tests.
//!
//! Each check returns the list of violations it found, each a sentence naming the file or crate
//! and the rule; an empty list means the rule holds. The rules are the checkable invariants of
//! ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

/// Folders never searched for source files.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "node_modules", "out"];

/// Every `.rs` file below `root`, outside build output and VCS folders, sorted.
pub fn rust_files(root: &Path) -> Vec<PathBuf> {
    files_below(root, |path| path.extension().is_some_and(|e| e == "rs"))
}

/// Every file below `root` that `keep` keeps, outside build output and VCS folders, sorted.
pub fn files_below(root: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                    pending.push(path);
                }
            } else if keep(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every `.rs` file must open with a `//!` line saying what it is.
pub fn check_file_headers(root: &Path) -> Vec<String> {
    rust_files(root)
        .into_iter()
        .filter_map(|path| {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let first = text.lines().next().unwrap_or_default();
            (!first.starts_with("//! ") || first.trim() == "//!").then(|| {
                format!(
                    "{}: the first line must be a `//! ` line saying what the file is",
                    relative(root, &path)
                )
            })
        })
        .collect()
}

/// Source patterns that mean IO, a clock, threads or the environment.
pub const IO_PATTERNS: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "std::env",
    "std::io::stdin",
    "std::io::stdout",
    // A clock read. `std::time`'s types are plain values (a `Timestamp` converts to and from a
    // `SystemTime`); reading the time is what is forbidden.
    "SystemTime::now",
    "Instant::now",
    ".elapsed()",
    "Instant",
    "println!",
    "eprintln!",
];

/// `gptimage-types` does no IO and reads no clock: its sources name none of [`IO_PATTERNS`].
pub fn check_types_is_pure(root: &Path) -> Vec<String> {
    let dir = root.join("crates/types/src");
    rust_files(&dir)
        .into_iter()
        .flat_map(|path| {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let shown = relative(root, &path);
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"))
                .flat_map(|(n, line)| {
                    IO_PATTERNS
                        .iter()
                        .filter(|p| line.contains(*p))
                        .map(|p| {
                            format!(
                                "{shown}:{}: gptimage-types must do no IO, but uses `{p}`",
                                n + 1
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The files that read what a peer or a server sends: the network boundary, where nothing may
/// panic (ARCHITECTURE.md). Their fuzz targets are in `crates/transport/tests/fuzzing/`.
pub const BOUNDARY_FILES: &[&str] = &[
    "crates/transport/src/webhook.rs",
    "crates/transport/src/webhook/listener.rs",
    "crates/transport/src/core/answer.rs",
    "crates/transport/src/core/request.rs",
    "crates/transport/src/core/schedule.rs",
    "crates/transport/src/core/pace.rs",
    "crates/transport/src/core/machine.rs",
    "crates/types/src/redact.rs",
];

/// What may panic, and so has no place at the network boundary outside its tests: an unwrap,
/// an expectation, an explicit panic, and `Instant` arithmetic that overflows (the core's
/// `later` saturates instead).
pub const PANICKING_PATTERNS: &[&str] = &[
    ".unwrap()",
    ".expect(",
    "panic!(",
    "unreachable!(",
    "unimplemented!(",
    "todo!(",
    "now + ",
    "Instant::now() + ",
];

/// The network boundary's code (its tests and doc examples aside) uses none of
/// [`PANICKING_PATTERNS`].
pub fn check_boundary_cannot_panic(root: &Path) -> Vec<String> {
    BOUNDARY_FILES
        .iter()
        .flat_map(|file| {
            let text = fs::read_to_string(root.join(file)).unwrap_or_default();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            code.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim_start().starts_with("//"))
                .flat_map(|(n, line)| {
                    PANICKING_PATTERNS
                        .iter()
                        .filter(|p| line.contains(*p))
                        .map(|p| {
                            format!(
                                "{file}:{}: the network boundary must not panic, but uses `{p}`",
                                n + 1
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The command's one printer: `say!` and `out!` in this file redact what they print
/// (ARCHITECTURE.md, "Secrets").
pub const PRINTER: &str = "crates/cli/src/say.rs";

/// Printing macros that bypass the redaction.
pub const PRINTING_PATTERNS: &[&str] = &["println!(", "eprintln!(", "print!(", "eprint!(", "dbg!("];

/// The command's source prints only through [`PRINTER`].
pub fn check_command_prints_through_redaction(root: &Path) -> Vec<String> {
    let mut violations = Vec::new();
    for path in rust_files(&root.join("crates/cli/src")) {
        let shown = relative(root, &path);
        if shown == PRINTER {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for p in PRINTING_PATTERNS.iter().filter(|p| line.contains(*p)) {
                violations.push(format!(
                    "{shown}:{}: the command prints only through say!/out! ({PRINTER}), which \
                     redact secrets, but uses `{p}`",
                    n + 1
                ));
            }
        }
    }
    violations
}

/// Gives every file of `files` whose content is what `record` last saw the modification time
/// it had then, and writes the record anew: cargo decides what to rebuild by modification
/// times, and a fresh clone (or a freshly unpacked package) has new ones on every file, so
/// without this a cached target folder would save nothing of the workspace's own crates. A
/// file whose content changed keeps its new time, and is rebuilt: freshness follows content,
/// as `-Z checksum-freshness` would. Returns how many files kept their times.
///
/// Old times are given back only when `restore` holds: the caller's word that nothing but the
/// runs that wrote `record` has built in the target folder since (see [`target_untouched`]).
/// A changed file whose time is not after `floor` (the last run's end: a clock that went back,
/// a checkout on a machine behind the one that built) is given `floor` plus a second, so it is
/// never taken for built. Files that cannot be read or touched, and paths with control
/// characters, are left as they are.
pub fn keep_file_times(
    files: &[PathBuf],
    record: &Path,
    restore: bool,
    floor: Option<std::time::SystemTime>,
) -> usize {
    use sha2::{Digest, Sha256};
    use std::time::{Duration, UNIX_EPOCH};
    let before: BTreeMap<String, (String, Duration)> = if restore {
        fs::read_to_string(record)
            .unwrap_or_default()
            .split('\n')
            .filter_map(|line| {
                let mut fields = line.splitn(3, '\t');
                let (hash, time, path) = (fields.next()?, fields.next()?, fields.next()?);
                let (secs, nanos) = time.split_once('.')?;
                let time = Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
                Some((path.to_owned(), (hash.to_owned(), time)))
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut kept = 0;
    let mut now = String::new();
    for file in files {
        let key = file.display().to_string();
        if key.chars().any(char::is_control) {
            continue;
        }
        let Ok(bytes) = fs::read(file) else { continue };
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let touch = |time| {
            fs::File::open(file)
                .and_then(|f| f.set_modified(time))
                .is_ok()
        };
        match before.get(&key).filter(|(h, _)| *h == hash) {
            Some((_, time)) if touch(UNIX_EPOCH + *time) => kept += 1,
            _ => {
                let modified = fs::metadata(file).and_then(|m| m.modified()).ok();
                if let (Some(floor), Some(modified)) = (floor, modified)
                    && modified <= floor
                {
                    touch(floor + Duration::from_secs(1));
                }
            }
        }
        let Some(time) = fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        else {
            continue;
        };
        now.push_str(&format!(
            "{hash}\t{}.{:09}\t{key}\n",
            time.as_secs(),
            time.subsec_nanos()
        ));
    }
    if let Some(folder) = record.parent() {
        let _ = fs::create_dir_all(folder);
    }
    let _ = fs::write(record, now);
    kept
}

/// Whether nothing has built in `target` since `stamp` was written (at the end of the last
/// `cargo xtask ci`): no fingerprint of any unit in it is newer (but xtask's own, which
/// `cargo xtask` builds before it runs). A run killed midway, a build
/// of a developer's, a run beside this one: each leaves a newer fingerprint, and then no old
/// time is given back.
pub fn target_untouched(target: &Path, stamp: &Path) -> bool {
    let Ok(stamped) = fs::metadata(stamp).and_then(|m| m.modified()) else {
        return false;
    };
    let profiles = fs::read_dir(target).into_iter().flatten().flatten();
    for profile in profiles {
        let fingerprints = profile.path().join(".fingerprint");
        for unit in fs::read_dir(&fingerprints).into_iter().flatten().flatten() {
            // `cargo xtask` builds xtask itself before anything runs: its own units are new.
            if unit.file_name().to_string_lossy().starts_with("xtask-") {
                continue;
            }
            let mut paths = vec![unit.path()];
            paths.extend(
                fs::read_dir(unit.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
            for path in paths {
                let newer = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > stamped);
                if newer {
                    return false;
                }
            }
        }
    }
    true
}

/// reqwest features that give it TLS of its own (a provider, or the platform's library).
const REQWEST_OWN_TLS: [&str; 5] = [
    "default",
    "default-tls",
    "native-tls",
    "rustls",
    "native-tls-vendored",
];

/// The workspace's test build (every feature but [`HEAVY_FEATURES`] and
/// [`NOT_IN_THE_TEST_BUILD`]) gives reqwest no TLS of its own, as the default build does not:
/// the tests that run the README's main job stand for the default build only while that holds.
pub fn check_test_build_tls(root: &Path) -> Vec<String> {
    if !root.join("crates/transport").exists() {
        return Vec::new();
    }
    let metadata = match metadata(root) {
        Ok(metadata) => metadata,
        Err(e) => return vec![format!("the test build's TLS: {e}")],
    };
    let left_out: Vec<&str> = HEAVY_FEATURES
        .iter()
        .chain(NOT_IN_THE_TEST_BUILD)
        .copied()
        .collect();
    let features = workspace_features(&metadata, &left_out).join(",");
    let tree = cargo_output(
        root,
        &[
            "tree",
            "--workspace",
            "--features",
            &features,
            "-e",
            "features",
            "-i",
            "reqwest",
        ],
    );
    let tree = match tree {
        Ok(tree) => String::from_utf8_lossy(&tree).into_owned(),
        Err(e) => return vec![format!("the test build's TLS: {e}")],
    };
    let enabled: BTreeSet<&str> = tree
        .lines()
        .filter_map(|line| line.split("reqwest feature \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    REQWEST_OWN_TLS
        .iter()
        .filter(|feature| enabled.contains(**feature))
        .map(|feature| {
            format!(
                "the workspace's test build turns on reqwest's `{feature}`: its TLS is then not \
                 the default build's, and the tests of the README's main job no longer stand \
                 for it (find who asks for it with cargo tree -e features -i reqwest)"
            )
        })
        .collect()
}

/// What shows that a test measures its whole process (its memory).
const PROCESS_MEASURES: [&str; 4] = ["resident()", "/proc/self/status", "VmRSS", "VmHWM"];

/// Every test that measures its whole process runs in a process of its own
/// (`in_own_process`): under plain `cargo test`, the other tests of its binary share its
/// process, and its memory with them. A test is the text from its `#[test]` to the next.
pub fn check_process_measures_run_alone(root: &Path) -> Vec<String> {
    let mut violations = Vec::new();
    let Ok(crates) = fs::read_dir(root.join("crates")) else {
        return violations;
    };
    let folders: Vec<PathBuf> = crates
        .filter_map(Result::ok)
        .map(|e| e.path().join("tests"))
        .collect();
    for path in folders.iter().flat_map(|f| rust_files(f)) {
        // A test begins at its `#[test]` or `#[tokio::test]`.
        let text = fs::read_to_string(&path)
            .unwrap_or_default()
            .replace("#[tokio::test", "#[test]#[tokio::test");
        // The line of each test.
        let mut line = text
            .split("#[test]")
            .next()
            .unwrap_or("")
            .matches('\n')
            .count()
            + 1;
        for test in text.split("#[test]").skip(1) {
            let name = test
                .split("fn ")
                .nth(1)
                .and_then(|rest| rest.split('(').next())
                .unwrap_or("?")
                .trim()
                .to_owned();
            let measures = PROCESS_MEASURES.iter().any(|m| test.contains(m));
            let compact: String = test.chars().filter(|c| !c.is_whitespace()).collect();
            // By its name, or its path within the binary (`https::name`, in a module).
            let alone = compact.contains(&format!("in_own_process(\"{name}\""))
                || compact.split("in_own_process(\"").skip(1).any(|rest| {
                    rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
                        && rest
                            .split('"')
                            .next()
                            .is_some_and(|p| p.ends_with(&format!("::{name}")))
                });
            if measures && !alone {
                violations.push(format!(
                    "{}:{}: the test {name} measures its whole process, so it must run in a \
                     process of its own: begin it with `if !in_own_process(\"{name}\") {{ \
                     return; }}` (plain `cargo test` runs a binary's tests in one process)",
                    relative(root, &path),
                    line
                ));
            }
            line += test.matches('\n').count();
        }
    }
    violations
}

/// What a crate may and may not depend on (normal dependencies, transitively).
pub struct DependencyRule {
    /// The package the rule is about.
    pub package: &'static str,
    /// If set, the only packages it may depend on directly.
    pub direct_allowlist: Option<&'static [&'static str]>,
    /// Packages it must not reach through any chain of normal dependencies.
    pub forbidden: &'static [&'static str],
}

/// Crates that do network, async or HTTP work.
pub const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "hyper",
    "reqwest",
    "ureq",
    "axum",
    "http",
    "async-trait",
    "futures",
    "futures-util",
    "rustls",
    "native-tls",
];

/// The dependency invariants of ARCHITECTURE.md. A rule about a package that does not exist yet is
/// skipped.
pub const DEPENDENCY_RULES: &[DependencyRule] = &[
    DependencyRule {
        package: "gptimage-types",
        direct_allowlist: Some(&["serde", "serde_json", "thiserror"]),
        forbidden: IO_CRATES,
    },
    DependencyRule {
        package: "gptimage-transport",
        direct_allowlist: None,
        forbidden: SDK_FORBIDDEN,
    },
    DependencyRule {
        package: "gptimage",
        direct_allowlist: None,
        forbidden: SDK_FORBIDDEN,
    },
    DependencyRule {
        package: "gptimage-emulator",
        direct_allowlist: None,
        forbidden: &[
            "gptimage-transport",
            "gptimage",
            "gptimage-cli",
            "gptimage-batch",
        ],
    },
    DependencyRule {
        package: "gptimage-batch",
        direct_allowlist: None,
        forbidden: &["gptimage-cli", "gptimage-emulator", "clap", "indicatif"],
    },
];

/// What the SDK crates must never pull into a user's build, whatever features are on: the tools
/// built on them, the emulator, and any database. (A server framework comes only with the
/// feature that asks for it: see [`DEFAULT_FORBIDDEN`].)
pub const SDK_FORBIDDEN: &[&str] = &[
    "gptimage-emulator",
    "gptimage-cli",
    "gptimage-batch",
    "sqlx",
    "sqlx-core",
    "libsqlite3-sys",
];

/// The resolved workspace graph: for each package name, its normal (non-dev, non-build)
/// dependencies by name.
pub struct Graph {
    normal: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Reads the graph from `cargo metadata` (offline: it needs no network once `Cargo.lock` is
    /// resolved and the sources are fetched).
    pub fn load(root: &Path) -> Result<Self, String> {
        Ok(Self::from_metadata(&cargo_metadata(
            root,
            "--all-features",
        )?))
    }

    /// Builds the graph from parsed `cargo metadata` output.
    pub fn from_metadata(metadata: &Value) -> Self {
        let names: BTreeMap<&str, &str> = metadata["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
            .collect();
        let mut normal = BTreeMap::new();
        for node in metadata["resolve"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(name) = node["id"].as_str().and_then(|id| names.get(id)) else {
                continue;
            };
            let deps = node["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|k| k["kind"].is_null())
                })
                .filter_map(|dep| names.get(dep["pkg"].as_str()?).map(|n| (*n).to_owned()))
                .collect::<BTreeSet<_>>();
            normal
                .entry((*name).to_owned())
                .or_insert_with(BTreeSet::new)
                .extend(deps);
        }
        Self { normal }
    }

    /// Whether the graph has the package.
    pub fn has(&self, package: &str) -> bool {
        self.normal.contains_key(package)
    }

    /// The direct normal dependencies of `package`.
    pub fn direct(&self, package: &str) -> BTreeSet<String> {
        self.normal.get(package).cloned().unwrap_or_default()
    }

    /// Every package reachable from `package` through normal dependencies, with one path to it.
    pub fn reachable(&self, package: &str) -> BTreeMap<String, Vec<String>> {
        let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([vec![package.to_owned()]]);
        while let Some(path) = queue.pop_front() {
            let last = path.last().expect("paths are never empty");
            for dep in self.direct(last) {
                if dep != package && !paths.contains_key(&dep) {
                    let mut next = path.clone();
                    next.push(dep.clone());
                    paths.insert(dep, next.clone());
                    queue.push_back(next);
                }
            }
        }
        paths
    }
}

/// Checks [`DEPENDENCY_RULES`] against `graph`.
pub fn check_dependencies(graph: &Graph) -> Vec<String> {
    let mut violations = Vec::new();
    for rule in DEPENDENCY_RULES {
        if !graph.has(rule.package) {
            continue;
        }
        if let Some(allowed) = rule.direct_allowlist {
            for dep in graph.direct(rule.package) {
                if !allowed.contains(&dep.as_str()) {
                    violations.push(format!(
                        "{} may depend directly only on {allowed:?}, but depends on {dep}",
                        rule.package
                    ));
                }
            }
        }
        for (dep, path) in graph.reachable(rule.package) {
            if rule.forbidden.contains(&dep.as_str()) {
                violations.push(format!(
                    "{} must not depend on {dep}, but does through {}",
                    rule.package,
                    path.join(" -> ")
                ));
            }
        }
    }
    violations
}

/// The facade only re-exports: its `lib.rs`, and any module file it declares with `pub mod`,
/// hold only docs, attributes and `pub use` of named items (no glob, so every item has one
/// path).
pub fn check_facade_only_reexports(root: &Path) -> Vec<String> {
    let src = root.join("crates/gptimage/src");
    let mut violations = Vec::new();
    let mut pending = vec![src.join("lib.rs")];
    while let Some(path) = pending.pop() {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let shown = relative(root, &path);
        let mut in_use = false;
        for (n, line) in text.lines().enumerate() {
            let code = line.trim();
            let module = code
                .strip_prefix("pub mod ")
                .and_then(|rest| rest.strip_suffix(';'));
            if let Some(name) = module {
                pending.push(src.join(format!("{name}.rs")));
                continue;
            }
            let allowed = code.is_empty()
                || code.starts_with("//")
                || code.starts_with("#[")
                || code.starts_with("#![")
                || code.starts_with("pub use ")
                || in_use;
            if code.starts_with("pub use ") || in_use {
                in_use = !code.ends_with(';');
                if code.contains('*') {
                    violations.push(format!(
                        "{shown}:{}: a glob re-export gives items a second name: list them",
                        n + 1
                    ));
                }
            }
            if !allowed {
                violations.push(format!(
                    "{shown}:{}: the facade only re-exports, but declares `{code}`",
                    n + 1
                ));
            }
        }
    }
    violations
}

/// Packages that a blocking-only build of the facade must not contain.
pub const ASYNC_CRATES: &[&str] = &["tokio", "reqwest", "hyper", "mio", "axum"];

/// Packages that the facade's default build must not contain: server frameworks and cloud
/// stores come only with the feature that asks for them (`axum`, `listener`, `object-store`).
pub const DEFAULT_FORBIDDEN: &[&str] = &[
    "axum",
    "sqlx",
    "sqlx-core",
    "libsqlite3-sys",
    "object_store",
    "quick-xml",
];

/// A blocking-only build of the facade (`--no-default-features --features blocking,rustls`)
/// contains none of [`ASYNC_CRATES`], and with the webhook listener no reqwest or axum; its
/// default build none of [`DEFAULT_FORBIDDEN`]. Checked with `cargo tree`.
pub fn check_blocking_build(root: &Path) -> Vec<String> {
    let blocking = ["--no-default-features", "--features", "blocking,rustls"];
    let mut violations = check_build(root, &blocking, ASYNC_CRATES, "a blocking-only build");
    // The listener brings its own small runtime, never the async client's HTTP stack.
    let listening = [
        "--no-default-features",
        "--features",
        "blocking,rustls,listener",
    ];
    violations.extend(check_build(
        root,
        &listening,
        &["reqwest", "axum"],
        "a blocking build with the webhook listener",
    ));
    violations.extend(check_build(
        root,
        &[],
        DEFAULT_FORBIDDEN,
        "the default build",
    ));
    violations
}

/// The published crates, and what each package must contain beyond both licence texts and its
/// README.
pub const PACKAGE_CONTENTS: &[(&str, &[&str])] = &[
    ("gptimage-types", &[]),
    ("gptimage-transport", &[]),
    (
        "gptimage",
        &[
            "examples/quickstart.rs",
            "examples/blocking_quickstart.rs",
            "examples/image_to_image.rs",
            "examples/many_tasks.rs",
        ],
    ),
    ("gptimage-batch", &[]),
    ("gptimage-emulator", &[]),
    ("gptimage-cli", &[]),
];

/// The rustls crypto providers a build can contain.
pub const CRYPTO_PROVIDERS: &[&str] = &["ring", "aws-lc-rs"];

/// Bundled root lists: neither client may trust one instead of the platform's roots.
pub const BUNDLED_ROOTS: &[&str] = &["webpki-roots", "webpki-root-certs"];

/// Each TLS build of the facade that `cargo xtask ci` checks, and the one crypto provider it must
/// contain (none: no rustls provider at all).
pub const TLS_BUILDS: &[(&str, Option<&str>)] = &[
    ("async,blocking,rustls", Some("ring")),
    ("blocking,rustls", Some("ring")),
    ("async,rustls", Some("ring")),
    ("async,blocking,rustls-aws-lc-rs", Some("aws-lc-rs")),
    ("async,blocking,rustls-no-provider", None),
    ("async,blocking,native-tls", None),
    ("async,blocking,native-tls-vendored", None),
    ("async,blocking", None),
];

/// The facade's feature sets that `cargo xtask ci` lints, beyond its default and
/// `--all-features` builds: the TLS builds of [`TLS_BUILDS`] and a few others. A build with a
/// [`HEAVY_FEATURES`] feature is left to the `--all-features` build (the one that compiles
/// vendored OpenSSL) and to the transport's aws-lc-rs test build; `cargo tree` still proves
/// what each contains.
pub fn facade_feature_sets() -> Vec<Vec<String>> {
    let light = |features: &&&str| !HEAVY_FEATURES.iter().any(|h| features.contains(h));
    let mut sets: Vec<Vec<String>> = [
        "",
        "blocking",
        "async",
        "async,native-tls,tracing",
        "blocking,rustls,listener",
    ]
    .iter()
    .chain(
        TLS_BUILDS
            .iter()
            .map(|(features, _)| features)
            .filter(light),
    )
    // The default build is linted below as it is: a set equal to it would only repeat it;
    // and both clients on rustls is the default and `blocking,rustls` together, whose lints
    // (what a smaller build leaves unused) those two already show.
    .filter(|features| !matches!(**features, "async,rustls" | "async,blocking,rustls"))
    .map(|features| {
        let mut args = vec!["--no-default-features".to_owned()];
        if !features.is_empty() {
            args.extend(["--features".to_owned(), (*features).to_owned()]);
        }
        args
    })
    .collect();
    sets.push(Vec::new());
    sets.push(vec!["--all-features".to_owned()]);
    sets
}

/// Every build of [`TLS_BUILDS`] contains exactly its one crypto provider (and with rustls and
/// both clients, one rustls), no bundled root list, and OpenSSL only when it asks for
/// native-tls. Checked with `cargo tree`.
pub fn check_tls_builds(root: &Path) -> Vec<String> {
    let mut violations = Vec::new();
    // The command, with its database's TLS too, has the clients' one provider.
    if let Ok(Some(packages)) = packages_of(root, "gptimage-cli", &[]) {
        let found = providers_in(&packages);
        if found != ["ring"] {
            violations.push(format!(
                "the command's default build must contain the crypto provider ring and no \
                 other, but contains {found:?}"
            ));
        }
    }
    for (features, provider) in TLS_BUILDS {
        let args = ["--no-default-features", "--features", features];
        let packages = match packages_of(root, "gptimage", &args) {
            Ok(Some(packages)) => packages,
            Ok(None) => return Vec::new(),
            Err(e) => {
                violations.push(e);
                continue;
            }
        };
        let found = providers_in(&packages);
        let expected: Vec<&str> = provider.iter().copied().collect();
        if found != expected {
            violations.push(format!(
                "the facade with features {features} must contain the crypto provider(s)                  {expected:?} and no other, but contains {found:?}"
            ));
        }
        for bundled in BUNDLED_ROOTS {
            if packages.contains(*bundled) {
                violations.push(format!(
                    "the facade with features {features} contains the bundled root list                      {bundled}: both clients must trust the platform's roots"
                ));
            }
        }
        let openssl = packages.contains("openssl-sys");
        if openssl != features.contains("native-tls") {
            violations.push(format!(
                "the facade with features {features} {} OpenSSL",
                if openssl {
                    "must not contain"
                } else {
                    "must contain"
                }
            ));
        }
        // The vendored build builds OpenSSL from source, and only it does: CI compiles its
        // code against the system's OpenSSL (OPENSSL_NO_VENDOR), so this is where the vendoring
        // itself is proven.
        let vendored = match packages_of_edges(root, "gptimage", &args, "normal,build") {
            Ok(Some(built)) => built.contains("openssl-src"),
            Ok(None) => false,
            Err(e) => {
                violations.push(e);
                continue;
            }
        };
        if vendored != features.contains("native-tls-vendored") {
            violations.push(format!(
                "the facade with features {features} {} OpenSSL's sources (openssl-src)",
                if vendored {
                    "must not contain"
                } else {
                    "must contain"
                }
            ));
        }
    }
    violations
}

/// The crypto providers among `packages`.
fn providers_in(packages: &BTreeSet<String>) -> Vec<&'static str> {
    CRYPTO_PROVIDERS
        .iter()
        .copied()
        .filter(|p| packages.contains(*p))
        .collect()
}

/// The names of the packages in `package`'s normal dependency tree with `features`; `None`
/// when the package does not exist yet.
fn packages_of(
    root: &Path,
    package: &str,
    features: &[&str],
) -> Result<Option<BTreeSet<String>>, String> {
    packages_of_edges(root, package, features, "normal")
}

/// Like [`packages_of`], following the dependency `edges` given (`normal,build` includes
/// what build scripts use, such as a C library's sources).
fn packages_of_edges(
    root: &Path,
    package: &str,
    features: &[&str],
    edges: &str,
) -> Result<Option<BTreeSet<String>>, String> {
    let dir = package.strip_prefix("gptimage-").unwrap_or(package);
    if !root.join("crates").join(dir).exists() {
        return Ok(None);
    }
    let mut args = vec!["tree", "--package", package];
    args.extend_from_slice(features);
    args.extend(["--edges", edges, "--prefix", "none"]);
    let output = cargo_output(root, &args)?;
    let packages: BTreeSet<String> = String::from_utf8_lossy(&output)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    if !packages.contains(package) {
        return Err(format!(
            "{package} with {features:?} could not be listed by cargo tree"
        ));
    }
    Ok(Some(packages))
}

/// The packages of the facade built with `features` include none of `forbidden`.
fn check_build(root: &Path, features: &[&str], forbidden: &[&str], what: &str) -> Vec<String> {
    match packages_of(root, "gptimage", features) {
        Ok(Some(packages)) => forbidden
            .iter()
            .filter(|p| packages.contains(**p))
            .map(|p| format!("{what} of the facade must not contain {p}, but does"))
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => vec![format!("{what}: {e}")],
    }
}

/// Features whose builds compile a C library from source (aws-lc; OpenSSL, vendored): minutes
/// of a 2-core machine each. `cargo xtask ci` builds and tests each once, in a step of its own
/// ([`TLS_BUILDS`] and the transport's test builds), rather than in every build of the
/// workspace; every other feature is in the workspace's lint, test and doc builds.
pub const HEAVY_FEATURES: &[&str] = &["rustls-aws-lc-rs", "native-tls-vendored"];

/// Features the workspace's test build leaves out beside the heavy ones: with `native-tls` off,
/// its TLS is the default build's (reqwest's provider-less rustls and the provider this crate
/// gives it), so the tests that run the README's main job against the emulator run it as the
/// default build would. native-tls has a test build of its own (`TLS through native-tls`), and
/// each facade build with it is linted.
pub const NOT_IN_THE_TEST_BUILD: &[&str] = &["native-tls"];

/// Every feature of every workspace package but `except`, as `package/feature` arguments for
/// `cargo --features`: what `--all-features` would turn on, less the heavy ones.
pub fn workspace_features(metadata: &Value, except: &[&str]) -> Vec<String> {
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut features = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let (Some(id), Some(name)) = (package["id"].as_str(), package["name"].as_str()) else {
            continue;
        };
        if !members.contains(id) {
            continue;
        }
        for feature in package["features"].as_object().into_iter().flatten() {
            let (feature, enables) = feature;
            let heavy = except.contains(&feature.as_str())
                || enables
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|e| {
                        except
                            .iter()
                            .any(|x| e == *x || e.ends_with(&format!("/{x}")))
                    });
            if !heavy && feature != "default" {
                features.push(format!("{name}/{feature}"));
            }
        }
    }
    features.sort();
    features
}

/// Reads `cargo metadata` for the workspace's own packages.
pub fn metadata(root: &Path) -> Result<Value, String> {
    cargo_metadata(root, "--no-deps")
}

/// `cargo metadata` with `option` (`--no-deps`, `--all-features`), parsed.
fn cargo_metadata(root: &Path, option: &str) -> Result<Value, String> {
    let output = cargo_output(root, &["metadata", "--format-version", "1", option])?;
    serde_json::from_slice(&output)
        .map_err(|e| format!("cargo metadata printed something that is not JSON: {e}"))
}

/// What `cargo ARGS…` prints on stdout, run in `root`; an error with its stderr if it fails.
pub fn cargo_output(root: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let shown = format!("cargo {}", args.join(" "));
    let output = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .output()
        .map_err(|e| format!("could not run {shown}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output.stdout)
}

/// The largest the installed `gptimage` binary may be.
pub const MAX_BINARY_BYTES: u64 = 20 * 1024 * 1024;

/// The release profile, which `cargo install` builds with, keeps no debug info in the binary:
/// line tables made it 82 MB. Symbols stay, so a backtrace still names its functions (build
/// with `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only` for line numbers too).
/// `cargo xtask size` measures the installed binary against [`MAX_BINARY_BYTES`].
pub fn check_release_profile(root: &Path) -> Vec<String> {
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let mut section = "";
    let mut violations = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[profile.release]" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        let bloats = match key {
            "debug" => !matches!(value, "false" | "0" | "none"),
            "strip" => matches!(value, "false" | "none"),
            _ => false,
        };
        if bloats {
            violations.push(format!(
                "Cargo.toml: [profile.release] {key} = {value} puts debug info into the \
                 installed binary (over 20 MB); leave it to CARGO_PROFILE_RELEASE_DEBUG"
            ));
        }
    }
    violations
}

/// The parts that features leave out, and what their absence must keep out of a build.
pub const OPTIONAL_PARTS: &[(&str, &[&str])] = &[
    // Embedding the emulator needs no command-line parser.
    ("gptimage-emulator", &["clap", "clap_builder"]),
    // The command without its `emulator` feature builds no server or image codec.
    ("gptimage-cli", &["gptimage-emulator", "axum", "image"]),
];

/// Each package of [`OPTIONAL_PARTS`] built with `--no-default-features` contains none of its
/// listed packages. Checked with `cargo tree`.
pub fn check_optional_parts(root: &Path) -> Vec<String> {
    let mut violations = Vec::new();
    for (package, absent) in OPTIONAL_PARTS {
        match packages_of(root, package, &["--no-default-features"]) {
            Ok(Some(packages)) => violations.extend(
                absent
                    .iter()
                    .filter(|p| packages.contains(**p))
                    .map(|p| format!("{package} without its default features contains {p}")),
            ),
            Ok(None) => {}
            Err(e) => violations.push(e),
        }
    }
    violations
}

/// Runs every check; the violations of all of them.
pub fn check_all(root: &Path) -> Vec<String> {
    let mut violations = check_file_headers(root);
    violations.extend(check_types_is_pure(root));
    violations.extend(check_boundary_cannot_panic(root));
    violations.extend(check_command_prints_through_redaction(root));
    violations.extend(check_facade_only_reexports(root));
    violations.extend(check_blocking_build(root));
    violations.extend(check_tls_builds(root));
    violations.extend(check_optional_parts(root));
    violations.extend(check_release_profile(root));
    violations.extend(check_process_measures_run_alone(root));
    violations.extend(check_test_build_tls(root));
    match Graph::load(root) {
        Ok(graph) => violations.extend(check_dependencies(&graph)),
        Err(e) => violations.push(e),
    }
    violations
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
