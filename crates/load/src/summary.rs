//! The end-of-run summary for a terminal, in the style of k6.

use std::fmt::{self, Write};

use crate::report::{LAG_NOTE_MS, Percentiles, Report, failure_list};

/// Width of the dotted label column.
const LABEL: usize = 22;

impl Report {
    /// A k6-style summary: totals, failures by class, ttfb/ttlb/service time
    /// (min/med/p80/p99/max/count), target and achieved rate, dropped
    /// iterations.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        self.write_summary(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        let line = |out: &mut String, label: &str, value: fmt::Arguments<'_>| {
            writeln!(out, "  {label:.<LABEL$}: {value}")
        };
        if self.interrupted {
            writeln!(out, "  (interrupted: partial results)")?;
        }
        line(out, "target ", format_args!("{}", self.target))?;
        let model = match self.vus {
            Some(vus) => format!("closed, {vus} vus"),
            None => format!(
                "open, {} req/s",
                trim(self.rate.target_per_s.unwrap_or_default())
            ),
        };
        line(
            out,
            "model ",
            format_args!("{model}, {:.1}s", self.duration_s),
        )?;
        let r = &self.requests;
        let pct = if r.total == 0 {
            0.0
        } else {
            100.0 * r.failed as f64 / r.total as f64
        };
        line(
            out,
            "requests ",
            format_args!(
                "{} total, {} ok, {} failed ({pct:.2}%)",
                r.total, r.ok, r.failed
            ),
        )?;
        let mut failures = failure_list(&self.failures, "=", " ");
        if failures.is_empty() {
            failures = "none".to_owned();
        }
        line(out, "failures ", format_args!("{failures}"))?;
        for sample in &self.other_samples {
            writeln!(out, "      other: {sample}")?;
        }
        let target = match self.rate.target_per_s {
            Some(rate) => format!(", target {}/s", trim(rate)),
            None => String::new(),
        };
        line(
            out,
            "rate ",
            format_args!("{:.1}/s achieved{target}", self.rate.achieved_per_s),
        )?;
        line(
            out,
            "dropped_iterations ",
            format_args!("{}", self.dropped_iterations),
        )?;
        if self.retries > 0 {
            line(out, "retries ", format_args!("{}", self.retries))?;
        }
        line(
            out,
            "ttfb ",
            format_args!("{}", Dist(&self.latency_ms.ttfb)),
        )?;
        line(
            out,
            "ttlb ",
            format_args!("{}", Dist(&self.latency_ms.ttlb)),
        )?;
        line(
            out,
            "service_time ",
            format_args!("{}", Dist(&self.service_time_ms)),
        )?;
        if self.generator_lag_ms >= LAG_NOTE_MS {
            let worst = self
                .timeline
                .iter()
                .filter_map(|s| s.lag_ms.map(|lag| (lag, s.t_s)))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let at = worst.map_or(String::new(), |(_, t)| format!(" in second {t}"));
            line(
                out,
                "generator_lag ",
                format_args!(
                    "{} behind its schedule{at}: the latency from the schedule of requests \
                     due then includes it (the machine paused or starved this generator)",
                    Ms(self.generator_lag_ms)
                ),
            )?;
        }
        if let Some(s) = &self.sessions {
            line(
                out,
                "sessions ",
                format_args!(
                    "{} total, {} ok, {} reset, {} lost update, {} duplicate, {} gap",
                    s.total, s.ok, s.resets, s.lost_updates, s.duplicates, s.gaps
                ),
            )?;
            line(
                out,
                "streams ",
                format_args!(
                    "{} disconnects ({} with 1012), {} reconnects; longest hold {} ms",
                    s.disconnects, s.restart_closes, s.reconnects, s.max_hold_ms
                ),
            )?;
        }
        Ok(())
    }
}

/// `min=… med=… p(80)=… p(99)=… max=… count=…`, or `-` without a sample:
/// zeros would read as an instant answer from a server that never answered.
struct Dist<'a>(&'a Percentiles);

impl fmt::Display for Dist<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        if p.count == 0 {
            return f.write_str("-");
        }
        write!(
            f,
            "min={} med={} p(80)={} p(99)={} max={} count={}",
            Ms(p.min),
            Ms(p.p50),
            Ms(p.p80),
            Ms(p.p99),
            Ms(p.max),
            p.count
        )
    }
}

/// A duration in ms, printed like k6: `850µs`, `12.34ms`, `1.2s`.
struct Ms(f64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ms if ms < 1.0 => write!(f, "{:.0}µs", ms * 1000.0),
            ms if ms < 1000.0 => write!(f, "{ms:.2}ms"),
            ms => write!(f, "{:.2}s", ms / 1000.0),
        }
    }
}

/// A rate without a useless `.0`.
fn trim(rate: f64) -> String {
    if rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::report::{Latency, Rate, Requests};

    use super::*;

    #[test]
    fn summary_lists_totals_classes_and_latency() {
        let p = Percentiles {
            min: 0.5,
            p50: 12.345,
            p80: 20.0,
            p99: 1500.0,
            max: 2000.0,
            count: 9,
        };
        let report = Report {
            schema_version: crate::report::SCHEMA_VERSION,
            target: "http://127.0.0.1:8080/".into(),
            model: "open".into(),
            vus: None,
            rate: Rate {
                target_per_s: Some(200.0),
                achieved_per_s: 199.84,
            },
            duration_s: 3.0,
            requests: Requests {
                total: 10,
                ok: 7,
                failed: 3,
            },
            failures: BTreeMap::from([
                ("eof".into(), 1),
                ("http_503".into(), 2),
                ("reset".into(), 0),
            ]),
            other_samples: vec![],
            dropped_iterations: 0,
            retries: 0,
            interrupted: true,
            latency_ms: Latency {
                ttfb: p.clone(),
                ttlb: p.clone(),
                ..Default::default()
            },
            service_time_ms: p,
            generator_lag_ms: 0.0,
            timeline: vec![],
            sessions: Some(crate::report::Sessions {
                total: 200,
                ok: 198,
                resets: 2,
                ..Default::default()
            }),
        };
        let text = report.summary();
        assert!(text.starts_with("  (interrupted"), "{text}");
        assert!(text.contains("10 total, 7 ok, 3 failed (30.00%)"), "{text}");
        assert!(
            text.contains("failures .............: eof=1 http_503=2\n"),
            "{text}"
        );
        assert!(text.contains("199.8/s achieved, target 200/s"), "{text}");
        assert!(text.contains("min=500µs med=12.35ms p(80)=20.00ms p(99)=1.50s max=2.00s count=9"));
        assert!(
            text.contains("sessions .............: 200 total, 198 ok, 2 reset, 0 lost update, 0 duplicate, 0 gap\n"),
            "{text}"
        );
        assert!(!text.contains("generator_lag"), "{text}");
        // A lag of the generator is pointed out, with its second, from 10 ms.
        let mut lagged = report.clone();
        lagged.generator_lag_ms = 212.5;
        lagged.timeline = (0..3)
            .map(|t| crate::report::Second {
                t_s: t,
                lag_ms: [Some(3.0), Some(212.5), None][t as usize],
                ..Default::default()
            })
            .collect();
        let text = lagged.summary();
        assert!(
            text.contains("generator_lag ........: 212.50ms behind its schedule in second 1:"),
            "{text}"
        );
        lagged.generator_lag_ms = 9.0;
        assert!(!lagged.summary().contains("generator_lag"));
    }
}
