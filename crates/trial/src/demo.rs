//! `dropless demo`: the built-in pair of trials (the demo service behind
//! dropless, then the same service and events under the Kubernetes
//! emulation) and their side-by-side comparison.

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use crate::{
    report::{TrialReport, Verdict},
    scenario::{Action, Audit, ClientMode, Event, Expect, Load, Scenario, Service, Strategy},
};

/// Requests per second of the demo's load.
pub const RATE: f64 = 300.0;
/// Length of each of the demo's trials.
pub const DURATION: Duration = Duration::from_secs(30);

/// The application on both sides: the demo's v9 (graceful, its last batch
/// of calculations flushed at shutdown) without its own pre-stop delay, so
/// that only the deployer decides whether requests reach a replica that is
/// stopping.
pub const PROFILE: &str = "v9";
/// Flags of the demo on both sides.
pub const DEMO_ARGS: [&str; 2] = ["--pre-stop", "0s"];

/// The two scenarios: the same application (demo v9 ×3 with `--pre-stop
/// 0s`), load and events, deployed by dropless and by the Kubernetes
/// emulation without a pre-stop delay: the deployer is the only difference.
pub fn scenarios() -> [Scenario; 2] {
    [
        scenario("dropless", Strategy::Dropless),
        scenario("kubernetes", Strategy::Kubernetes),
    ]
}

fn scenario(name: &str, strategy: Strategy) -> Scenario {
    let at = |s: u64, action: Action| Event {
        at: Duration::from_secs(s),
        action,
        expect: Expect::Completed,
    };
    Scenario {
        name: name.to_owned(),
        service: Service {
            demo: Some(PROFILE.to_owned()),
            command: Vec::new(),
            env: Default::default(),
            version: "v1".into(),
            replicas: 3,
            strategy,
            health_path: None,
            endpoint_lag: None,
            pre_stop: None,
            grace: Some(Duration::from_secs(10)),
            work_ms: crate::scenario::DEFAULT_WORK_MS,
            startup_delay: Some(Duration::from_millis(300)),
            demo_args: DEMO_ARGS.map(String::from).to_vec(),
            affinity: None,
        },
        load: Load {
            path: crate::scenario::DEFAULT_PATH.into(),
            rate: RATE,
            duration: DURATION,
            client: ClientMode::Keepalive,
            ..Load::default()
        },
        events: vec![
            at(4, Action::Restart),
            at(
                12,
                Action::Deploy {
                    version: "v2".into(),
                    profile: None,
                    command: Vec::new(),
                    rollout: None,
                },
            ),
            at(19, Action::Scale { replicas: 5 }),
            at(24, Action::Scale { replicas: 3 }),
        ],
        audit: Audit::default(),
    }
}

/// The reports side by side: requests, failures by class, latency, how far
/// the load generator fell behind, lost operations, verdict.
pub fn comparison(reports: &[TrialReport]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, cell: &dyn Fn(&TrialReport) -> String| {
        rows.push((name.to_owned(), reports.iter().map(cell).collect()));
    };
    row("", &|r| format!("{} ({})", r.strategy, r.service));
    row("requests", &|r| r.load.requests.total.to_string());
    row("ok", &|r| r.load.requests.ok.to_string());
    row("failed", &|r| r.load.requests.failed.to_string());
    let classes: BTreeSet<String> = reports
        .iter()
        .flat_map(|r| dropless_load::nonzero_failures(&r.load.failures).map(|(c, _)| c.to_owned()))
        .collect();
    for class in &classes {
        row(&format!("  {class}"), &|r| {
            r.load.failure_count(class).to_string()
        });
    }
    row("dropped iterations", &|r| {
        r.load.dropped_iterations.to_string()
    });
    row("p99 latency", &|r| {
        format!("{:.1} ms", r.load.latency_ms.ttlb.p99)
    });
    row("max latency", &|r| {
        format!("{:.1} ms", r.load.latency_ms.ttlb.max)
    });
    // The runs are compared on equal terms only if the generator kept its
    // schedule in both: a pause of its own moves the latency rows above.
    row("generator lag", &|r| {
        format!("{:.1} ms", r.load.generator_lag_ms)
    });
    row("operations lost", &|r| match &r.audit {
        Some(audit) => match audit.lost {
            Some(lost) => format!("{lost} of {}", audit.acknowledged),
            None => "audit failed".into(),
        },
        None => "-".into(),
    });
    row("verdict", &|r| match r.verdict {
        Verdict::Pass => "PASS".into(),
        Verdict::Fail => "FAIL".into(),
    });
    let first = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..reports.len())
        .map(|i| {
            rows.iter()
                .map(|(_, cells)| cells[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (name, cells) in &rows {
        let _ = write!(out, "{name:<first$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(out, "   {cell:>width$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_differs_only_in_the_deployer() {
        let [a, b] = scenarios();
        a.validate().unwrap();
        assert_eq!(a.events, b.events);
        assert_eq!(a.load, b.load);
        assert_eq!(a.audit, b.audit);
        assert_ne!(a.service.strategy, b.service.strategy);
        let same_service = Service {
            strategy: a.service.strategy,
            ..b.service.clone()
        };
        assert_eq!(a.service, same_service);
        assert_eq!(a.service.demo.as_deref(), Some("v9"));
        assert_eq!(a.service.demo_args, ["--pre-stop", "0s"]);
        assert!(a.events.iter().all(|e| e.at < a.load.duration));
    }

    /// The side-by-side table has a row for each measure, the generator's
    /// lag among them, and a column for each run.
    #[test]
    fn the_comparison_shows_each_run_in_a_column() {
        let config = dropless_load::Config::new("http://127.0.0.1:1/");
        let report = |strategy: &str, lag: f64| {
            let mut load = dropless_load::Report::not_started(&config);
            load.generator_lag_ms = lag;
            TrialReport::new(
                "t".into(),
                "demo v9 ×3".into(),
                strategy.into(),
                load,
                Vec::new(),
                None,
            )
        };
        let table = comparison(&[report("dropless", 0.0), report("kubernetes", 212.4)]);
        let lag = table.lines().find(|l| l.starts_with("generator lag"));
        let cells: Vec<&str> = lag.unwrap_or_default().split_whitespace().collect();
        assert_eq!(
            cells,
            ["generator", "lag", "0.0", "ms", "212.4", "ms"],
            "{table}"
        );
        assert!(
            table
                .lines()
                .next()
                .is_some_and(|l| l.contains("kubernetes (demo v9 ×3)")),
            "{table}"
        );
    }
}
