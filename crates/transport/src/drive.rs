//! What the two drive loops share. The loops themselves are in `client.rs` (awaiting) and
//! `blocking.rs` (blocking): each asks a machine what to do, does it, and reports back.

/// A fresh random seed for one operation's jitter, from the standard library's per-process
/// random keys (the core takes randomness as an input, like time).
pub(crate) fn seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The span of one HTTP exchange.
#[cfg(feature = "tracing")]
pub(crate) fn span(op: crate::core::request::Op) -> tracing::Span {
    tracing::debug_span!("gptimage.request", op = ?op)
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_vary() {
        let seeds: Vec<u64> = (0..16).map(|_| super::seed()).collect();
        assert!(seeds.windows(2).any(|w| w[0] != w[1]));
    }
}
