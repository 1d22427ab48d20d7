//! What the listener's tests and benchmark share: connections from a chosen loopback address
//! (so a crowd is one peer and a genuine sender another), the process's resident memory, its
//! file limit, and running a test in a process of its own, so that what it measures of the
//! process is its own under `cargo test` as under nextest.

#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A connection to `addr` from `from` (any 127.x.y.z address is this machine's on Linux).
pub fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let socket = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    bind(&socket, &SocketAddr::new(IpAddr::V4(from), 0))?;
    connect(&socket, &addr)?;
    let stream = TcpStream::from(socket);
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    Ok(stream)
}

/// The `n`th of a crowd's addresses: 127.0.1.x, 127.0.2.x, … (never 127.0.0.1, where the
/// genuine sender is).
pub fn crowd_address(n: usize) -> Ipv4Addr {
    let n = n % (250 * 250);
    Ipv4Addr::new(127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8)
}

/// The resident memory of this process, in bytes.
pub fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Raises this process's open-file limit to its hard limit if it is below `needed` (both ends
/// of a crowd's connections live in the test's process).
pub fn enough_files(needed: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < needed) {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).unwrap();
    }
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|n| n >= needed),
        "this test needs {needed} open files; the hard limit is {now:?}"
    );
}

/// The environment variable that tells a test it runs in its own process.
const OWN_PROCESS: &str = "GPTIMAGE_TEST_OWN_PROCESS";

/// Runs the test named `test` (its full path in the test binary) in a process of its own:
/// `true` there, where the caller runs the test's body; in the calling process, it runs the
/// child, checks that it ran that one test and passed, and returns `false`.
///
/// ```ignore
/// #[test]
/// fn measures_the_process() {
///     if !in_own_process("measures_the_process") {
///         return;
///     }
///     // … the body, alone in its process …
/// }
/// ```
pub fn in_own_process(test: &str) -> bool {
    if std::env::var(OWN_PROCESS).as_deref() == Ok(test) {
        return true;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS, test)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    assert!(output.status.success(), "{test} failed in its own process");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child ran no test named {test}: {stdout}"
    );
    false
}
