//! A worker cut off from the network is counted out within the documented bound: a real
//! partition, not a mock. Worker A runs in a network namespace of its own, joined to this one
//! by a veth pair; PostgreSQL and the emulator listen on this side's end. Mid-batch the link
//! goes down (packets dropped, no reset: a pulled cable, a dead machine). Worker B, on this side,
//! must finish A's lines within the bound plus a margin, A must stop by itself, and healing the
//! link afterwards must send nothing. Only private addresses on the veth pair, removed after.
//!
//! Creating a namespace needs root (CI runs as root); elsewhere the test says so and passes.

mod common;
#[path = "../../batch/tests/support/postgres.rs"]
#[allow(unreachable_pub, dead_code)]
mod postgres;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gptimage_emulator::{Config, Emulator};

/// What ARCHITECTURE.md promises: the server ends a vanished worker's session within about
/// 25 s, and the others reap it within 2 s more.
const BOUND: Duration = Duration::from_secs(30);
/// Room for a loaded machine.
const MARGIN: Duration = Duration::from_secs(20);

/// A network namespace joined to this one by a veth pair; removed when dropped.
struct Link {
    namespace: String,
    host_side: String,
    host_ip: Ipv4Addr,
    namespace_ip: Ipv4Addr,
}

impl Link {
    /// `None` where this process may not create namespaces.
    fn create() -> Option<Self> {
        let id = std::process::id() % 100_000;
        let subnet = 20 + (std::process::id() % 200) as u8;
        let link = Link {
            namespace: format!("gpti-part-{id}"),
            host_side: format!("gpth{id}"),
            host_ip: Ipv4Addr::new(10, 213, subnet, 1),
            namespace_ip: Ipv4Addr::new(10, 213, subnet, 2),
        };
        if !ip(&["netns", "add", &link.namespace]) {
            return None;
        }
        let peer = format!("gptn{id}");
        let host_cidr = format!("{}/30", link.host_ip);
        let namespace_cidr = format!("{}/30", link.namespace_ip);
        let ns = link.namespace.as_str();
        let steps: [&[&str]; 7] = [
            &[
                "link",
                "add",
                &link.host_side,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            &["link", "set", &peer, "netns", ns],
            &["addr", "add", &host_cidr, "dev", &link.host_side],
            &["link", "set", &link.host_side, "up"],
            &["-n", ns, "addr", "add", &namespace_cidr, "dev", &peer],
            &["-n", ns, "link", "set", &peer, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            assert!(ip(step), "ip {step:?} failed");
        }
        Some(link)
    }

    fn set(&self, state: &str) {
        assert!(ip(&["link", "set", &self.host_side, state]));
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end deletes the pair.
        ip(&["link", "del", &self.host_side]);
        ip(&["netns", "del", &self.namespace]);
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A batch worker, in `namespace` if given.
fn worker(
    namespace: Option<&str>,
    emulator: &Emulator,
    file: &std::path::Path,
    out: &std::path::Path,
    state: &str,
) -> Child {
    let program = assert_cmd::cargo::cargo_bin!("gptimage");
    let mut command = match namespace {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
        None => Command::new(program),
    };
    command
        .env_remove("GPTIMAGE_BASE_URL")
        .env("GPTIMAGE_API_KEY", emulator.api_key())
        .args(["--base-url", emulator.base_url(), "--allow-insecure-http"])
        .args(["--poll-interval", "0.2", "--request-timeout", "3", "batch"])
        .arg(file)
        .arg("--out")
        .arg(out)
        .args(["--state", state, "--concurrency", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker starts")
}

/// Polls `done` every 100 ms until it holds; how long that took, or `None` after `limit`.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_worker_cut_off_from_the_network_is_counted_out_and_its_lines_finished() {
    let Some(link) = Link::create() else {
        eprintln!(
            "skipped: creating a network namespace needs root (`ip netns add`); CI runs it as root"
        );
        return;
    };
    let cluster = postgres::Postgres::start_with(&postgres::Setup {
        listen: vec![link.host_ip.to_string()],
        hba: vec![format!("host all all {}/32 trust", link.namespace_ip)],
        settings: Vec::new(),
    });
    let database = "partition";
    let local_state = cluster.create_database(database);
    let remote_state = local_state.replace("127.0.0.1", &link.host_ip.to_string());
    let config = Config::instant().with_timings(Duration::ZERO, Duration::from_secs(4));
    let emulator =
        Emulator::spawn_on(config, SocketAddr::new(IpAddr::V4(link.host_ip), 0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines = 16;
    let file = write_batch(dir.path(), &numbered_lines(lines, "partitioned"));

    let mut cut_off = worker(
        Some(&link.namespace),
        &emulator,
        &file,
        &dir.path().join("a"),
        &remote_state,
    );
    let survivor = worker(None, &emulator, &file, &dir.path().join("b"), &local_state);
    let held_by_a = format!(
        "SELECT COUNT(*) FROM gptimage_lines WHERE state IN ('pending', 'submitting', \
         'submitted') AND owner IN (SELECT id FROM gptimage_workers WHERE pid = {})",
        cut_off.id()
    );
    let holding = || {
        try_batch_status(&local_state).is_some()
            && cluster
                .query(database, &held_by_a)
                .parse::<u64>()
                .is_ok_and(|n| n >= 2)
    };
    assert!(
        within(Duration::from_secs(30), holding).is_some(),
        "worker A never held two lines"
    );

    link.set("down");
    let cut = Instant::now();
    // B takes A's lines over: none is held by A any more.
    let taken_over = within(BOUND + MARGIN, || {
        cluster.query(database, &held_by_a) == "0"
    });
    let taken_over = taken_over
        .unwrap_or_else(|| panic!("A's lines were not taken over within {:?}", BOUND + MARGIN));
    eprintln!("A's lines taken over {taken_over:.1?} after the cut");
    // A stops by itself, saying what happened.
    let stopped = within(Duration::from_secs(60), || {
        cut_off.try_wait().ok().flatten().is_some()
    });
    if stopped.is_none() {
        let _ = cut_off.kill();
    }
    let output = cut_off.wait_with_output().unwrap();
    let text = stderr(&output);
    assert!(stopped.is_some(), "the cut-off worker did not stop: {text}");
    eprintln!("A stopped {:.1?} after the cut", cut.elapsed());
    assert_eq!(output.status.code(), Some(4), "{text}");
    assert!(text.contains("lost its hold on the batch state"), "{text}");

    let output = survivor.wait_with_output().unwrap();
    let status = batch_status(&local_state);
    assert_eq!(
        count(&status, "done") + count(&status, "unknown"),
        lines as u64,
        "{status}: {}",
        stderr(&output)
    );
    let before_healing = emulator.counters();
    assert_eq!(
        before_healing.generate_requests,
        before_healing.tasks_created
    );
    assert!(
        before_healing.tasks_created <= lines as u64,
        "a line was paid for twice: {before_healing:?}"
    );

    // Healing the link sends nothing more.
    link.set("up");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        emulator.counters().generate_requests,
        before_healing.generate_requests
    );
    assert_eq!(batch_status(&local_state), status);
}
