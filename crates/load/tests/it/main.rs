//! Integration tests of dropless-load against real sockets on 127.0.0.1.
//! Every run is bounded in rate and time and stops by itself.

mod api;
mod classes;
mod http2;
mod open_model;
mod sessions;
mod support;
mod tls;

use std::time::Duration;

use dropless_load::{Config, Model, Report};

/// An open-model config against `url`: `rate` req/s for `duration`.
pub fn open(url: &str, rate: f64, duration: Duration) -> Config {
    let mut config = Config::new(url);
    config.model = Model::Open { rate };
    config.duration = duration;
    config
}

/// Run `config` and return its report, failing the test on a start error.
pub async fn run(config: &Config) -> Report {
    dropless_load::run(config).await.expect("the run starts")
}

/// Every request has exactly one outcome, in the totals and per second.
pub fn assert_consistent(report: &Report) {
    let r = &report.requests;
    assert_eq!(r.total, r.ok + r.failed, "{report:#?}");
    assert_eq!(
        report.failures.values().sum::<u64>(),
        r.failed,
        "{:?}",
        report.failures
    );
    let sent: u64 = report.timeline.iter().map(|s| s.sent).sum();
    let ok: u64 = report.timeline.iter().map(|s| s.ok).sum();
    let dropped: u64 = report.timeline.iter().map(|s| s.dropped).sum();
    assert_eq!(
        (sent, ok, dropped),
        (r.total, r.ok, report.dropped_iterations)
    );
    for second in &report.timeline {
        assert_eq!(
            second.failures.values().sum::<u64>(),
            second.failed,
            "{second:?}"
        );
    }
}

/// The non-zero failure counts, for exact comparisons.
pub fn failures(report: &Report) -> Vec<(&str, u64)> {
    report
        .failures
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.as_str(), *n))
        .collect()
}
