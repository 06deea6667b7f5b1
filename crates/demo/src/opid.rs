//! Unique operation ids and strictly increasing timestamps.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// Hands out operation ids unique across processes (a random per-process
/// prefix and a counter) and nanosecond timestamps that never repeat in
/// this process (InfluxDB merges points with equal tags and time).
#[derive(Debug)]
pub(crate) struct OpIds {
    prefix: u64,
    counter: AtomicU64,
    last_ns: AtomicU64,
}

impl OpIds {
    pub(crate) fn new() -> Self {
        Self {
            prefix: rand::random(),
            counter: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        }
    }

    /// The next operation id.
    pub(crate) fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{:016x}-{n}", self.prefix)
    }

    /// Now in nanoseconds since the epoch, strictly greater than any value
    /// returned before.
    pub(crate) fn next_timestamp(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut last = self.last_ns.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_ns.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next as i64,
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_timestamps_never_repeat() {
        let ids = OpIds::new();
        let mut seen = std::collections::HashSet::new();
        let mut last = 0;
        for _ in 0..10_000 {
            assert!(seen.insert(ids.next_id()));
            let ts = ids.next_timestamp();
            assert!(ts > last);
            last = ts;
        }
        assert_ne!(OpIds::new().next_id(), OpIds::new().next_id());
    }
}
