//! The fuzz targets (`tests/fuzzing/targets.rs`), run for a bounded time in the test suite: each
//! target's corpus (`fuzz/corpus/<target>/` at the workspace's root), then inputs mutated from
//! it by a seeded generator, so a failure is replayed by its seed. `GPTIMAGE_FUZZ_SECONDS` (2 by
//! default) bounds each target's run and `GPTIMAGE_FUZZ_SEED` fixes the seed; for longer, better
//! guided runs, use cargo-fuzz (`fuzz/README.md`).

#[path = "fuzzing/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// A small seeded generator (xorshift64*): the run is replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Pieces that matter to the parsers: line ends, lengths that lie, huge numbers, non-ASCII.
const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"content-length: ",
    b"transfer-encoding: chunked\r\n",
    b"retry-after: ",
    b"10000000000000000000",
    b"18446744073709551616",
    b"-1",
    b"Tue, 01 Jan 2999 00:00:00 GMT",
    b"Thu, 01 Jan 1970 00:00:00 GMT",
    "é".as_bytes(),
    "\u{1F600}".as_bytes(),
    b"%",
    b"\0",
    b"\xff",
    b"\"status\":",
    b"\"response\":\"[\\\"",
    b"[[[[[[[[[[[[[[[[",
    b"null",
    b"1e999",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = [0, 0xff, 0x7f, 0x80, b'%', 0xc3, b'\n'][rng.below(7)];
            }
            2 => {
                let word = DICTIONARY[rng.below(DICTIONARY.len())];
                data.splice(at..at, word.iter().copied());
            }
            3 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 if !data.is_empty() => {
                let end = (at + 1 + rng.below(32)).min(data.len());
                let copy = data[at.min(end)..end].to_vec();
                let to = rng.below(data.len() + 1);
                data.splice(to..to, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => {
                let n = 1 + rng.below(8);
                data.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
        }
        data.truncate(1 << 16);
    }
    data
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    let seconds = setting("GPTIMAGE_FUZZ_SECONDS", 2);
    let seed = setting("GPTIMAGE_FUZZ_SEED", 0).max(1);
    let seed = if seed == 1 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64)
            | 1
    } else {
        seed
    };
    // A panic on the listener's thread ends only its task: count them.
    let listener_panics = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&listener_panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("gptimage-webhooks") {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    for (name, target) in targets::TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "{name} has a corpus");
        let mut rng = Rng(seed ^ name.len() as u64);
        let started = Instant::now();
        let mut runs = 0u64;
        let mut run = |data: &[u8]| {
            runs += 1;
            if catch_unwind(AssertUnwindSafe(|| target(data))).is_err() {
                panic!(
                    "the fuzz target {name} failed on {data:02x?} (seed {seed}; \
                     GPTIMAGE_FUZZ_SEED={seed} replays the run)"
                );
            }
        };
        for data in &seeds {
            run(data);
        }
        while started.elapsed() < Duration::from_secs(seconds) {
            let data = mutate(&mut rng, &seeds);
            run(&data);
        }
        eprintln!(
            "{name}: {runs} inputs in {:.1?} (seed {seed})",
            started.elapsed()
        );
        assert_eq!(
            listener_panics.load(Ordering::SeqCst),
            0,
            "{name}: the listener panicked (seed {seed})"
        );
    }
}
