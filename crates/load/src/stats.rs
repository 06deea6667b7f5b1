//! Everything a run remembers: counters, failure classes, three latency
//! histograms and the timeline. Constant size per second of run, whatever
//! the number of requests.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::outcome::{Failure, FailureClass, STANDARD_CLASSES};
use crate::report::{Percentiles, Requests, SLOW_MS};
use crate::timeline::Timeline;

/// Largest latency the histograms tell apart (1 hour, in µs).
const MAX_US: u64 = 3_600_000_000;
/// How many `other` messages a report keeps.
pub(crate) const OTHER_SAMPLES: usize = 10;

/// When a response arrived, in µs: head and end from the schedule, end from
/// the actual send.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timings {
    pub(crate) ttfb_us: u64,
    pub(crate) ttlb_us: u64,
    pub(crate) service_us: u64,
}

pub(crate) struct Recorder {
    ttfb: Histogram<u64>,
    ttlb: Histogram<u64>,
    service: Histogram<u64>,
    requests: Requests,
    failures: BTreeMap<FailureClass, u64>,
    other_samples: Vec<String>,
    retries: u64,
    dropped: u64,
    max_lag_us: u64,
    timeline: Timeline,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        let histogram = || Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds");
        Recorder {
            ttfb: histogram(),
            ttlb: histogram(),
            service: histogram(),
            requests: Requests::default(),
            failures: BTreeMap::new(),
            other_samples: Vec::new(),
            retries: 0,
            dropped: 0,
            max_lag_us: 0,
            timeline: Timeline::default(),
        }
    }

    /// A finished request due in `second`.
    pub(crate) fn record(
        &mut self,
        second: u64,
        failure: Option<Failure>,
        timings: Option<Timings>,
        retried: bool,
    ) {
        self.requests.total += 1;
        self.retries += u64::from(retried);
        if let Some(t) = timings {
            self.ttfb.saturating_record(t.ttfb_us.max(1));
            self.ttlb.saturating_record(t.ttlb_us.max(1));
            self.service.saturating_record(t.service_us.max(1));
        }
        let class = failure.map(|f| {
            self.requests.failed += 1;
            *self.failures.entry(f.class).or_default() += 1;
            if let Some(message) = f.message
                && self.other_samples.len() < OTHER_SAMPLES
                && !self.other_samples.contains(&message)
            {
                self.other_samples.push(message);
            }
            f.class
        });
        self.requests.ok = self.requests.total - self.requests.failed;
        self.timeline
            .record(second, class, timings.map(|t| t.ttlb_us));
    }

    /// A due request not sent because the in-flight limit was reached.
    pub(crate) fn drop_iteration(&mut self, second: u64) {
        self.dropped += 1;
        self.timeline.drop_iteration(second);
    }

    /// The generator sent a batch of arrivals due in `second` `us` late.
    pub(crate) fn lagged(&mut self, second: u64, us: u64) {
        self.max_lag_us = self.max_lag_us.max(us);
        self.timeline.lagged(second, us);
    }

    /// The most the generator fell behind, in µs.
    pub(crate) fn max_lag_us(&self) -> u64 {
        self.max_lag_us
    }

    pub(crate) fn seal_before(&mut self, second: u64) {
        self.timeline.seal_before(second);
    }

    pub(crate) fn requests(&self) -> Requests {
        self.requests
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(crate) fn retries(&self) -> u64 {
        self.retries
    }

    /// Failures by report key, the standard classes listed even at zero.
    pub(crate) fn failures(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = STANDARD_CLASSES
            .iter()
            .map(|c| (c.to_string(), 0))
            .collect();
        for (class, n) in &self.failures {
            out.insert(class.to_string(), *n);
        }
        out
    }

    pub(crate) fn other_samples(&self) -> Vec<String> {
        self.other_samples.clone()
    }

    pub(crate) fn ttfb(&self) -> Percentiles {
        percentiles(&self.ttfb)
    }

    pub(crate) fn ttlb(&self) -> Percentiles {
        percentiles(&self.ttlb)
    }

    /// Time to last byte above each of [`SLOW_MS`] ms, by bound.
    pub(crate) fn over_ms(&self) -> BTreeMap<u64, u64> {
        SLOW_MS
            .iter()
            .map(|&ms| {
                let above = if self.ttlb.max() > ms * 1000 {
                    self.ttlb.count_between(ms * 1000 + 1, self.ttlb.max())
                } else {
                    0
                };
                (ms, above)
            })
            .collect()
    }

    pub(crate) fn service(&self) -> Percentiles {
        percentiles(&self.service)
    }

    pub(crate) fn timeline(&self) -> &Timeline {
        &self.timeline
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        min: ms(h.min()),
        p50: ms(h.value_at_quantile(0.50)),
        p80: ms(h.value_at_quantile(0.80)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        count: h.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_counts_once_and_samples_are_bounded() {
        let mut r = Recorder::new();
        let t = Timings {
            ttfb_us: 1_000,
            ttlb_us: 2_000,
            service_us: 1_500,
        };
        r.record(0, None, Some(t), false);
        r.record(
            0,
            Some(Failure::new(FailureClass::Http(503))),
            Some(t),
            true,
        );
        for i in 0..20 {
            r.record(
                1,
                Some(Failure::other(format!("odd {}", i % 12))),
                None,
                false,
            );
        }
        assert_eq!(
            r.requests(),
            Requests {
                total: 22,
                ok: 1,
                failed: 21
            }
        );
        assert_eq!(r.retries(), 1);
        let failures = r.failures();
        assert_eq!(
            (failures["http_503"], failures["other"], failures["eof"]),
            (1, 20, 0)
        );
        assert_eq!(r.other_samples().len(), OTHER_SAMPLES);
        assert_eq!(r.ttlb().count, 2);
        assert_eq!(r.service().max, 1.5);
    }

    #[test]
    fn requests_above_the_slow_bounds_are_counted() {
        let mut r = Recorder::new();
        for ttlb_ms in [3, 99, 101, 500, 901, 1_020] {
            let t = Timings {
                ttfb_us: 1_000,
                ttlb_us: ttlb_ms * 1_000,
                service_us: 1_000,
            };
            r.record(0, None, Some(t), false);
        }
        assert_eq!(r.over_ms(), BTreeMap::from([(100, 4), (900, 2)]));
        assert_eq!(
            Recorder::new().over_ms(),
            BTreeMap::from([(100, 0), (900, 0)])
        );
    }
}
