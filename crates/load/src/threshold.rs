//! Pass/fail limits on a report (`--max-failures`, `--max-p99`).

use std::time::Duration;

use crate::report::Report;

/// Limits a run must stay within. Unset limits always hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    /// Most failed requests allowed. Unset, a run in which no request
    /// succeeded breaches it all the same: a target that never answered is
    /// not a pass.
    pub max_failures: Option<u64>,
    /// Largest p99 time to last byte (from the schedule) allowed.
    pub max_p99: Option<Duration>,
}

impl Thresholds {
    /// One line per breached limit; empty when every limit holds.
    pub fn breaches(&self, report: &Report) -> Vec<String> {
        let mut breaches = Vec::new();
        let r = &report.requests;
        match self.max_failures {
            Some(max) if r.failed > max => {
                breaches.push(format!("{} failed requests > max-failures {max}", r.failed));
            }
            None if r.ok == 0 => breaches.push(format!(
                "no request succeeded ({} of {} failed); --max-failures {} accepts that",
                r.failed, r.total, r.failed
            )),
            _ => {}
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
