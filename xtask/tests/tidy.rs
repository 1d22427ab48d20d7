//! The architecture invariants of ARCHITECTURE.md, checked on the real workspace, and the checks
//! themselves shown to catch what they are for.

use std::fs;

use serde_json::json;

#[test]
fn the_workspace_keeps_its_invariants() {
    let violations = xtask::check_all(&xtask::workspace_root());
    assert!(
        violations.is_empty(),
        "broken invariants:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_workspace_has_the_files_it_describes() {
    let root = xtask::workspace_root();
    for file in [
        "README.md",
        "ARCHITECTURE.md",
        ".ci/run",
        "Cargo.toml",
        "crates/types/Cargo.toml",
    ] {
        assert!(root.join(file).is_file(), "{file} is missing");
    }
    assert!(
        xtask::rust_files(&root).len() > 5,
        "the walk found too few source files"
    );
}

#[test]
fn a_file_without_a_header_is_reported() {
    let dir = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join("target")).unwrap();
    fs::write(dir.join("src/good.rs"), "//! Does a thing.\nfn f() {}\n").unwrap();
    fs::write(dir.join("src/bad.rs"), "// not a doc line\nfn f() {}\n").unwrap();
    fs::write(dir.join("src/empty.rs"), "").unwrap();
    fs::write(dir.join("target/ignored.rs"), "fn f() {}\n").unwrap();
    let violations = xtask::check_file_headers(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations.iter().any(|v| v.contains("bad.rs")));
    assert!(violations.iter().any(|v| v.contains("empty.rs")));
}

#[test]
fn io_in_the_types_crate_is_reported() {
    let dir = std::env::temp_dir().join(format!("xtask-pure-{}", std::process::id()));
    fs::create_dir_all(dir.join("crates/types/src")).unwrap();
    fs::write(
        dir.join("crates/types/src/lib.rs"),
        "//! Types.\n// std::fs in a comment is fine\nfn f() { let _ = std::fs::read(\"x\"); }\n",
    )
    .unwrap();
    let violations = xtask::check_types_is_pure(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("lib.rs:3"), "{violations:?}");
}

#[test]
fn a_forbidden_dependency_is_reported_with_its_path() {
    let metadata = json!({
        "packages": [
            {"id": "t", "name": "gptimage-types"},
            {"id": "s", "name": "serde"},
            {"id": "x", "name": "sneaky"},
            {"id": "k", "name": "tokio"},
            {"id": "p", "name": "proptest"}
        ],
        "resolve": {"nodes": [
            {"id": "t", "deps": [
                {"pkg": "s", "dep_kinds": [{"kind": null}]},
                {"pkg": "x", "dep_kinds": [{"kind": null}]},
                {"pkg": "p", "dep_kinds": [{"kind": "dev"}]}
            ]},
            {"id": "x", "deps": [{"pkg": "k", "dep_kinds": [{"kind": null}]}]},
            {"id": "p", "deps": [{"pkg": "k", "dep_kinds": [{"kind": null}]}]},
            {"id": "s", "deps": []},
            {"id": "k", "deps": []}
        ]}
    });
    let graph = xtask::Graph::from_metadata(&metadata);
    let violations = xtask::check_dependencies(&graph);
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0].contains("depends on sneaky"),
        "{violations:?}"
    );
    assert!(
        violations[1].contains("gptimage-types -> sneaky -> tokio"),
        "{violations:?}"
    );
}

#[test]
fn a_database_reaching_the_sdk_is_reported() {
    let metadata = json!({
        "packages": [
            {"id": "g", "name": "gptimage"},
            {"id": "t", "name": "gptimage-transport"},
            {"id": "b", "name": "gptimage-batch"},
            {"id": "q", "name": "sqlx"}
        ],
        "resolve": {"nodes": [
            {"id": "g", "deps": [
                {"pkg": "t", "dep_kinds": [{"kind": null}]},
                {"pkg": "b", "dep_kinds": [{"kind": null}]}
            ]},
            {"id": "t", "deps": []},
            {"id": "b", "deps": [{"pkg": "q", "dep_kinds": [{"kind": null}]}]},
            {"id": "q", "deps": []}
        ]}
    });
    let violations = xtask::check_dependencies(&xtask::Graph::from_metadata(&metadata));
    assert!(
        violations
            .iter()
            .any(|v| v.contains("gptimage -> gptimage-batch -> sqlx")),
        "{violations:?}"
    );
}

#[test]
fn an_item_in_the_facade_is_reported() {
    let dir = std::env::temp_dir().join(format!("xtask-facade-{}", std::process::id()));
    fs::create_dir_all(dir.join("crates/gptimage/src")).unwrap();
    fs::write(
        dir.join("crates/gptimage/src/lib.rs"),
        "//! Facade.\n#![forbid(unsafe_code)]\npub use a::{\n    B,\n    C,\n};\n\npub fn helper() {}\n",
    )
    .unwrap();
    fs::write(
        dir.join("crates/gptimage/src/extra.rs"),
        "//! More.\npub use b::*;\nfn hidden() {}\n",
    )
    .unwrap();
    let lib = dir.join("crates/gptimage/src/lib.rs");
    let text = fs::read_to_string(&lib).unwrap();
    fs::write(
        &lib,
        text.replace(
            "#![forbid(unsafe_code)]",
            "#![forbid(unsafe_code)]\npub mod extra;",
        ),
    )
    .unwrap();
    let violations = xtask::check_facade_only_reexports(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(violations.len(), 3, "{violations:?}");
    assert!(
        violations.iter().any(|v| v.contains("lib.rs:9:")),
        "{violations:?}"
    );
    assert!(
        violations.iter().any(|v| v.contains("extra.rs:2: a glob")),
        "{violations:?}"
    );
    assert!(
        violations.iter().any(|v| v.contains("extra.rs:3:")),
        "{violations:?}"
    );
}

#[test]
fn a_release_profile_with_debug_info_is_reported() {
    let dir = std::env::temp_dir().join(format!("xtask-release-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let profile = |text: &str| {
        fs::write(dir.join("Cargo.toml"), text).unwrap();
        xtask::check_release_profile(&dir)
    };
    let bloated = profile("[profile.release]\ndebug = \"line-tables-only\"\n");
    let unstripped = profile("[profile.release]\ndebug = false\nstrip = \"none\"\n");
    let lean = profile("[profile.dev]\ndebug = true\n[profile.release]\ndebug = false\n");
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bloated.len(), 1, "{bloated:?}");
    assert!(
        bloated[0].contains("debug = line-tables-only"),
        "{bloated:?}"
    );
    assert_eq!(unstripped.len(), 1, "{unstripped:?}");
    assert!(lean.is_empty(), "{lean:?}");
}

#[test]
fn the_heavy_features_are_left_out_of_the_workspace_builds() {
    let metadata = json!({
        "workspace_members": ["f", "t"],
        "packages": [
            {"id": "f", "name": "gptimage", "features": {
                "default": ["async"],
                "async": [],
                "native-tls": [],
                "native-tls-vendored": ["native-tls"],
                "rustls-aws-lc-rs": [],
                "everything": ["gptimage-transport/rustls-aws-lc-rs"]
            }},
            {"id": "t", "name": "gptimage-transport", "features": {"tracing": []}},
            {"id": "d", "name": "not-ours", "features": {"big": []}}
        ]
    });
    let features = xtask::workspace_features(&metadata, xtask::HEAVY_FEATURES);
    assert_eq!(
        features,
        [
            "gptimage-transport/tracing",
            "gptimage/async",
            "gptimage/native-tls"
        ]
    );
}

#[test]
fn a_panic_at_the_network_boundary_is_reported() {
    let dir = std::env::temp_dir().join(format!("xtask-boundary-{}", std::process::id()));
    let root = dir.as_path();
    for file in xtask::BOUNDARY_FILES {
        let path = root.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "//! A boundary.\nfn f() {}\n").unwrap();
    }
    let bad = root.join(xtask::BOUNDARY_FILES[0]);
    fs::write(
        &bad,
        "//! A boundary.\n/// `x.unwrap()` in a doc is fine\nfn f(t: &str) -> u8 {\n    \
         t.parse().unwrap()\n}\nfn g(now: Instant) -> Instant { now + D }\n\
         #[cfg(test)]\nmod tests { fn h() { None::<u8>.unwrap(); } }\n",
    )
    .unwrap();
    let violations = xtask::check_boundary_cannot_panic(root);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(violations[0].contains(":4:") && violations[0].contains(".unwrap()"));
    assert!(violations[1].contains(":6:") && violations[1].contains("now + "));
    assert!(xtask::check_boundary_cannot_panic(&xtask::workspace_root()).is_empty());
}

#[test]
fn printing_around_the_redaction_is_reported() {
    let dir = std::env::temp_dir().join(format!("xtask-printer-{}", std::process::id()));
    let root = dir.as_path();
    let src = root.join("crates/cli/src");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        root.join(xtask::PRINTER),
        "//! The printer.\nfn p() { println!(\"fine here\"); }\n",
    )
    .unwrap();
    fs::write(
        src.join("main.rs"),
        "//! Main.\n// println!(\"a comment\")\nfn m(url: &str) {\n    eprintln!(\"{url}\");\n    dbg!(url);\n}\n",
    )
    .unwrap();
    let violations = xtask::check_command_prints_through_redaction(root);
    fs::remove_dir_all(&dir).unwrap();
    assert!(
        violations.iter().any(|v| v.contains("main.rs:4:")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.contains("main.rs:5:") && v.contains("dbg!")),
        "{violations:?}"
    );
    assert!(
        violations.iter().all(|v| !v.starts_with(xtask::PRINTER)),
        "{violations:?}"
    );
    let here = xtask::check_command_prints_through_redaction(&xtask::workspace_root());
    assert!(here.is_empty(), "{here:?}");
}

#[test]
fn a_test_measuring_its_process_outside_a_process_of_its_own_is_reported() {
    let dir = std::env::temp_dir().join(format!("xtask-resident-{}", std::process::id()));
    let root = dir.as_path();
    let tests = root.join("crates/transport/tests");
    fs::create_dir_all(&tests).unwrap();
    fs::write(
        tests.join("memory.rs"),
        "//! Memory.\n#[test]\nfn alone() {\n    if !in_own_process(\n        \"alone\",\n    ) {\n        return;\n    }\n    let _ = resident();\n}\n\n#[test]\nfn shared() {\n    let _ = resident();\n}\n\n#[test]\nfn elsewhere() {\n    if !in_own_process(\"another\") {\n        return;\n    }\n    let _ = std::fs::read_to_string(\"/proc/self/status\");\n}\n\n#[test]\nfn measures_nothing() {}\n",
    )
    .unwrap();
    let violations = xtask::check_process_measures_run_alone(root);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0].contains("memory.rs:12:") && violations[0].contains("shared"),
        "{violations:?}"
    );
    assert!(violations[1].contains("elsewhere"), "{violations:?}");
    let here = xtask::check_process_measures_run_alone(&xtask::workspace_root());
    assert!(here.is_empty(), "{here:?}");
}

#[test]
fn unchanged_files_get_their_old_times_back_and_changed_ones_never_do() {
    use std::time::{Duration, SystemTime};
    let dir = std::env::temp_dir().join(format!("xtask-times-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let (same, changed) = (dir.join("same.rs"), dir.join("changed.rs"));
    let (record, spare) = (dir.join("record.tsv"), dir.join("spare.tsv"));
    let modified = |f: &std::path::Path| fs::metadata(f).unwrap().modified().unwrap();
    fs::write(&same, "fn a() {}").unwrap();
    fs::write(&changed, "fn b() {}").unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    for file in [&same, &changed] {
        fs::File::open(file).unwrap().set_modified(old).unwrap();
    }
    let files = vec![same.clone(), changed.clone()];
    // The first run: nothing recorded yet, nothing given back.
    assert_eq!(xtask::keep_file_times(&files, &record, true, None), 0);
    fs::copy(&record, &spare).unwrap();
    // A fresh checkout: both files dated now; one has other content.
    fs::write(&same, "fn a() {}").unwrap();
    fs::write(&changed, "fn b() { changed() }").unwrap();
    // Not restoring (a folder someone else built in since): nothing is given back.
    assert_eq!(xtask::keep_file_times(&files, &spare, false, None), 0);
    assert!(modified(&same) > old + Duration::from_secs(60));
    // Restoring, the last run having "ended" in the future (a clock that went back): the
    // unchanged file has its old time back, the changed one is dated after that end.
    let floor = SystemTime::now() + Duration::from_secs(600);
    assert_eq!(
        xtask::keep_file_times(&files, &record, true, Some(floor)),
        1
    );
    assert_eq!(
        modified(&same),
        old,
        "the unchanged file has its old time back"
    );
    assert!(
        modified(&changed) > floor,
        "the changed file is newer than any build"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_test_build_gives_reqwest_no_tls_of_its_own() {
    let here = xtask::check_test_build_tls(&xtask::workspace_root());
    assert!(here.is_empty(), "{here:?}");
}
