//! Per-second buckets, keyed by the second each request was due.
//!
//! A bucket keeps a small latency histogram only while requests due in that
//! second may still finish; once sealed it keeps its p99 and counters, so a
//! long run costs a few dozen bytes per second, never per request.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::outcome::FailureClass;
use crate::report::Second;

/// Largest latency a per-second histogram tells apart (1 hour, in µs).
const MAX_US: u64 = 3_600_000_000;

#[derive(Default)]
pub(crate) struct Timeline {
    buckets: Vec<Bucket>,
    /// Buckets before this index are sealed.
    sealed: usize,
}

#[derive(Default)]
struct Bucket {
    ok: u64,
    failed: u64,
    dropped: u64,
    failures: BTreeMap<FailureClass, u64>,
    latency: Option<Histogram<u32>>,
    p99_us: Option<u64>,
    max_us: Option<u64>,
    /// The most a batch of this second was sent after it was due.
    lag_us: Option<u64>,
}

impl Timeline {
    /// A finished request due in `second`, with its time to last byte from
    /// the schedule if a response arrived.
    pub(crate) fn record(
        &mut self,
        second: u64,
        failure: Option<FailureClass>,
        ttlb_us: Option<u64>,
    ) {
        let bucket = self.bucket(second);
        match failure {
            None => bucket.ok += 1,
            Some(class) => {
                bucket.failed += 1;
                *bucket.failures.entry(class).or_default() += 1;
            }
        }
        if let Some(us) = ttlb_us {
            bucket.max_us = bucket.max_us.max(Some(us));
            match &mut bucket.latency {
                Some(h) => h.saturating_record(us.max(1)),
                // A bucket sealed early (a request outlived the seal window)
                // keeps its p99 as the larger of the two.
                None if bucket.p99_us.is_some() => {
                    bucket.p99_us = bucket.p99_us.max(Some(us));
                }
                None => {
                    let mut h = Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds");
                    h.saturating_record(us.max(1));
                    bucket.latency = Some(h);
                }
            }
        }
    }

    /// A batch of arrivals due in `second` was sent `us` after it was due.
    pub(crate) fn lagged(&mut self, second: u64, us: u64) {
        let bucket = self.bucket(second);
        bucket.lag_us = bucket.lag_us.max(Some(us));
    }

    /// A dropped iteration due in `second`.
    pub(crate) fn drop_iteration(&mut self, second: u64) {
        self.bucket(second).dropped += 1;
    }

    /// Seal every bucket before `second`: keep its p99, free its histogram.
    pub(crate) fn seal_before(&mut self, second: u64) {
        let end = (second as usize).min(self.buckets.len());
        for bucket in self.buckets.iter_mut().take(end).skip(self.sealed) {
            if let Some(h) = bucket.latency.take() {
                bucket.p99_us = Some(h.value_at_quantile(0.99));
            }
        }
        self.sealed = self.sealed.max(end);
    }

    /// The rows for the report, one per second from 0.
    pub(crate) fn rows(&self) -> Vec<Second> {
        let ms = |us: u64| us as f64 / 1000.0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(t, b)| Second {
                t_s: t as u64,
                sent: b.ok + b.failed,
                ok: b.ok,
                failed: b.failed,
                dropped: b.dropped,
                p99_ms: match &b.latency {
                    Some(h) => Some(ms(h.value_at_quantile(0.99))),
                    None => b.p99_us.map(ms),
                },
                max_ms: b.max_us.map(ms),
                lag_ms: b.lag_us.map(ms),
                failures: b
                    .failures
                    .iter()
                    .map(|(c, n)| (c.to_string(), *n))
                    .collect(),
            })
            .collect()
    }

    fn bucket(&mut self, second: u64) -> &mut Bucket {
        let index = second as usize;
        if index >= self.buckets.len() {
            self.buckets.resize_with(index + 1, Bucket::default);
        }
        &mut self.buckets[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_by_due_second_and_seal() {
        let mut t = Timeline::default();
        t.record(0, None, Some(1_000));
        t.record(0, Some(FailureClass::Http(503)), Some(2_000));
        t.record(2, Some(FailureClass::Eof), None);
        t.drop_iteration(2);
        t.lagged(2, 5_000);
        t.lagged(2, 3_000);
        t.seal_before(1);
        t.record(0, None, Some(900_000));
        let rows = t.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].sent, rows[0].ok, rows[0].failed), (3, 2, 1));
        assert_eq!(rows[0].failures["http_503"], 1);
        assert_eq!(rows[0].p99_ms, Some(900.0));
        assert_eq!(rows[0].max_ms, Some(900.0));
        assert_eq!((rows[1].sent, rows[1].p99_ms), (0, None));
        assert_eq!(
            (rows[2].failed, rows[2].dropped, rows[2].p99_ms),
            (1, 1, None)
        );
        assert_eq!((rows[0].lag_ms, rows[2].lag_ms), (None, Some(5.0)));
        assert!(t.buckets[0].latency.is_none());
    }
}
