//! Network namespaces joined to this one by veth pairs, for tests that need an address that is
//! not loopback (a remote state server) or a link they can cut (a partition). Private addresses
//! only, everything removed when dropped.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Links made by this process so far: names and subnets stay apart when several tests of one
/// binary run at once (plain `cargo test`).
static MADE: AtomicU32 = AtomicU32::new(0);

/// A network namespace joined to this one by veth pairs; removed when dropped.
pub struct Link {
    pub namespace: String,
    /// The first pair's ends.
    pub host_side: String,
    pub host_ip: Ipv4Addr,
    pub namespace_ip: Ipv4Addr,
    /// This link's number in this process.
    serial: u32,
    /// Further pairs: (host side, host address, namespace address).
    more: Vec<(String, Ipv4Addr, Ipv4Addr)>,
}

impl Link {
    /// A new namespace with one pair. `None` where this process may not create namespaces (not
    /// root); as root, failing to is a failure, so CI (which runs as root) never skips.
    pub fn create() -> Option<Self> {
        let id = std::process::id() % 100_000;
        let serial = MADE.fetch_add(1, Ordering::Relaxed) % 64;
        let namespace = format!("gpti-{id}-{serial}");
        if !ip(&["netns", "add", &namespace]) {
            assert!(
                !is_root(),
                "running as root, yet `ip netns add {namespace}` failed"
            );
            eprintln!(
                "skipped: creating a network namespace needs root (`ip netns add`); CI runs it as root"
            );
            return None;
        }
        let (host_side, host_ip, namespace_ip) = Self::pair(&namespace, id, serial, 0);
        Some(Link {
            namespace,
            host_side,
            host_ip,
            namespace_ip,
            serial,
            more: Vec::new(),
        })
    }

    /// Another veth pair into the same namespace, on a subnet of its own: its host side's
    /// address, and the namespace's.
    pub fn add_pair(&mut self) -> (Ipv4Addr, Ipv4Addr) {
        let id = std::process::id() % 100_000;
        let (side, host, namespace) =
            Self::pair(&self.namespace, id, self.serial, self.more.len() + 1);
        self.more.push((side, host, namespace));
        (host, namespace)
    }

    /// A /30 per pair: 10.(213 + n).(process).(4 × serial).
    fn pair(namespace: &str, id: u32, serial: u32, n: usize) -> (String, Ipv4Addr, Ipv4Addr) {
        let third = (std::process::id() % 250) as u8;
        let fourth = (serial * 4) as u8;
        let host_ip = Ipv4Addr::new(10, 213 + n as u8, third, fourth + 1);
        let namespace_ip = Ipv4Addr::new(10, 213 + n as u8, third, fourth + 2);
        let host_side = format!("gh{id}s{serial}x{n}");
        let peer = format!("gn{id}s{serial}x{n}");
        let host_cidr = format!("{host_ip}/30");
        let namespace_cidr = format!("{namespace_ip}/30");
        let steps: [&[&str]; 7] = [
            &[
                "link", "add", &host_side, "type", "veth", "peer", "name", &peer,
            ],
            &["link", "set", &peer, "netns", namespace],
            &["addr", "add", &host_cidr, "dev", &host_side],
            &["link", "set", &host_side, "up"],
            &[
                "-n",
                namespace,
                "addr",
                "add",
                &namespace_cidr,
                "dev",
                &peer,
            ],
            &["-n", namespace, "link", "set", &peer, "up"],
            &["-n", namespace, "link", "set", "lo", "up"],
        ];
        for step in steps {
            assert!(ip(step), "ip {step:?} failed");
        }
        (host_side, host_ip, namespace_ip)
    }

    /// The first pair's host side `up` or `down`: a pulled cable, no reset.
    pub fn set(&self, state: &str) {
        assert!(ip(&["link", "set", &self.host_side, state]));
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end deletes the pair.
        ip(&["link", "del", &self.host_side]);
        for (side, _, _) in &self.more {
            ip(&["link", "del", side]);
        }
        ip(&["netns", "del", &self.namespace]);
    }
}

pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
