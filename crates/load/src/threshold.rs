//! Pass/fail limits on a report (`--max-failures`, `--max-p99`).

use std::time::Duration;

use crate::report::Report;

/// Limits a run must stay within. Unset limits always hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    /// Most failed requests allowed.
    pub max_failures: Option<u64>,
    /// Largest p99 time to last byte (from the schedule) allowed.
    pub max_p99: Option<Duration>,
}

impl Thresholds {
    /// One line per breached limit; empty when every limit holds.
    pub fn breaches(&self, report: &Report) -> Vec<String> {
        let mut breaches = Vec::new();
        if let Some(max) = self.max_failures
            && report.requests.failed > max
        {
            breaches.push(format!(
                "{} failed requests > max-failures {max}",
                report.requests.failed
            ));
        }
        if let Some(max) = self.max_p99 {
            let p99 = report.latency_ms.ttlb.p99;
            let max_ms = max.as_secs_f64() * 1000.0;
            if p99 > max_ms {
                breaches.push(format!("p99 ttlb {p99:.2}ms > max-p99 {max_ms}ms"));
            }
        }
        breaches
    }
}
