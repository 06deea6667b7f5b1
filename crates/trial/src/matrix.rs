//! `dropless trial --matrix`: the v1..v9 table of the Elixir graceful-shutdown talk. Each profile v1..v9 under
//! each strategy (the Kubernetes emulation without and with a pre-stop
//! delay, and dropless) gets a short trial with a scale-up and a rolling
//! restart under load, and an audit of its calculation log.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use dropless_demo::{OnSigterm, Profile};
use dropless_load::{failure_list, nonzero_failures};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    html::escape,
    influxd::Influxd,
    report::TrialReport,
    run::{Env, Progress, TrialError},
    scenario::{Action, Audit, ClientMode, Event, Expect, Load, Scenario, Service, Strategy},
};

/// Trials run at once by default (each is light: 100 req/s).
pub const DEFAULT_JOBS: usize = 3;
/// Load of one cell.
pub const CELL_RATE: f64 = 100.0;
/// Length of one cell's load.
pub const CELL_DURATION: Duration = Duration::from_secs(6);

/// One cell of the matrix, as written to `matrix.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Demo profile.
    pub profile: String,
    /// Strategy name.
    pub strategy: String,
    /// Requests sent.
    pub requests_total: u64,
    /// Requests failed.
    pub requests_failed: u64,
    /// Failed requests by class.
    pub failures: BTreeMap<String, u64>,
    /// Acknowledged calculations not found afterwards (`null` for profiles
    /// without a calculation log).
    pub ops_lost: Option<u64>,
    /// The matrix was stopped (Ctrl-C, SIGTERM) while this cell ran: its
    /// figures are partial.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Cell {
    fn of(profile: Profile, report: &TrialReport) -> Cell {
        Cell {
            profile: profile.to_string(),
            strategy: report.strategy.clone(),
            requests_total: report.load.requests.total,
            requests_failed: report.load.requests.failed,
            failures: nonzero_failures(&report.load.failures)
                .map(|(class, n)| (class.to_owned(), n))
                .collect(),
            ops_lost: report.audit.as_ref().and_then(|a| a.lost),
            interrupted: report.load.interrupted,
        }
    }

    /// `0`, `12 (http_502 12)`, plus `, 40 lost` when operations were lost.
    pub fn label(&self) -> String {
        let mut text = self.requests_failed.to_string();
        if !self.failures.is_empty() {
            let _ = write!(text, " ({})", failure_list(&self.failures, " ", ", "));
        }
        if let Some(lost) = self.ops_lost.filter(|n| *n > 0) {
            let _ = write!(text, ", {lost} lost");
        }
        if self.interrupted {
            text.push_str(", interrupted");
        }
        text
    }
}

/// The scenario of one cell: demo `profile` ×2 under `strategy`, a slow
/// boot (so a replica without readiness shows it), a scale-up at 1 s and a
/// rolling restart at 2.5 s under 100 req/s for 6 s.
pub fn scenario(profile: Profile, strategy: Strategy) -> Scenario {
    // The grace period covers the runtime's pre-stop, the demo's own
    // pre-stop and its final flush, as `terminationGracePeriodSeconds`
    // should; v1 and v2 ignore SIGTERM, so theirs only sets when SIGKILL
    // comes, and a short one keeps the matrix short.
    let grace = if profile.on_sigterm() == OnSigterm::Ignore {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(8)
    };
    Scenario {
        name: format!("{profile}-{}", strategy.name()),
        service: Service {
            demo: Some(profile.to_string()),
            command: Vec::new(),
            env: BTreeMap::new(),
            version: "v1".into(),
            replicas: 2,
            strategy,
            health_path: None,
            endpoint_lag: None,
            pre_stop: None,
            // v1 and v2 ignore SIGTERM: keep their SIGKILL near.
            grace: Some(grace),
            work_ms: crate::scenario::DEFAULT_WORK_MS,
            startup_delay: Some(Duration::from_millis(500)),
            // v6's tasks must outlive the demo's pre-stop to be lost.
            demo_args: ["--pre-stop", "1s", "--log-delay", "3s", "--grace", "10s"]
                .map(String::from)
                .to_vec(),
            affinity: None,
        },
        load: Load {
            path: crate::scenario::DEFAULT_PATH.into(),
            rate: CELL_RATE,
            duration: CELL_DURATION,
            client: ClientMode::Keepalive,
            ..Load::default()
        },
        events: vec![
            Event {
                at: Duration::from_secs(1),
                action: Action::Scale { replicas: 3 },
                expect: Expect::Completed,
            },
            Event {
                at: Duration::from_millis(2500),
                action: Action::Restart,
                expect: Expect::Completed,
            },
        ],
        audit: Audit::default(),
    }
}

/// Runs every (profile, strategy) cell, `jobs` at a time, each in
/// `out/PROFILE-STRATEGY/`; `watch` is told of each as its load starts and
/// as it ends. Writes
/// `out/matrix.json` and `out/matrix.html`.
///
/// When `stop` is cancelled (Ctrl-C, SIGTERM) the cells under way stop and
/// are kept marked `interrupted` (those that had not started their load
/// are left out), no further cell starts, and the two files hold the cells
/// done.
pub async fn run(
    profiles: &[Profile],
    strategies: &[Strategy],
    out: &Path,
    env: &Env,
    jobs: usize,
    watch: &dyn Watch,
    stop: &CancellationToken,
) -> Result<Vec<Cell>, TrialError> {
    std::fs::create_dir_all(out)
        .map_err(crate::run::io(format!("cannot create {}", out.display())))?;
    // One private InfluxDB for the whole matrix, a database per cell.
    let influxd = if Influxd::installed() {
        Some(
            tokio::task::spawn_blocking(Influxd::start)
                .await
                .map_err(|e| TrialError::Serve(e.to_string()))??,
        )
    } else {
        None
    };
    let mut scenarios = Vec::new();
    for profile in profiles {
        for strategy in strategies {
            let mut scenario = scenario(*profile, *strategy);
            // Only v6..v9 log calculations; `auto` audits just those.
            if let Some(influxd) = &influxd {
                scenario.audit.influx_url = Some(influxd.url().to_owned());
            }
            scenarios.push((*profile, scenario));
        }
    }
    let mut cells = Vec::new();
    for chunk in scenarios.chunks(jobs.max(1)) {
        if stop.is_cancelled() {
            break;
        }
        let runs = chunk.iter().map(|(profile, scenario)| async move {
            let dir = out.join(&scenario.name);
            let progress = LoadStarted(&scenario.name, watch);
            crate::run::run(scenario, &dir, env, &progress, stop)
                .await
                .map(|report| Cell::of(*profile, &report))
        });
        // Run together: each trial mostly waits on sockets and timers.
        for cell in futures_util::future::join_all(runs).await {
            let cell = match cell {
                Err(TrialError::Interrupted) => continue,
                cell => cell?,
            };
            watch.cell(&cell);
            cells.push(cell);
        }
    }
    let json = out.join("matrix.json");
    let text = serde_json::to_string_pretty(&cells).expect("cells serialize");
    std::fs::write(&json, text)
        .map_err(crate::run::io(format!("cannot write {}", json.display())))?;
    let page = out.join("matrix.html");
    std::fs::write(&page, html(&cells, strategies))
        .map_err(crate::run::io(format!("cannot write {}", page.display())))?;
    Ok(cells)
}

/// Told how the matrix goes.
pub trait Watch: Sync {
    /// The load of cell `name` (`v9-dropless`) started.
    fn load_started(&self, _name: &str) {}
    /// A cell ended.
    fn cell(&self, _cell: &Cell) {}
}

/// The progress of a cell: only when its load starts.
struct LoadStarted<'a>(&'a str, &'a dyn Watch);

impl Progress for LoadStarted<'_> {
    fn load_started(&self, _duration: Duration) {
        self.1.load_started(self.0);
    }
}

/// The table: a row per profile, a column per strategy.
pub fn table(cells: &[Cell], strategies: &[Strategy]) -> String {
    let mut profiles: Vec<&str> = Vec::new();
    for cell in cells {
        if !profiles.contains(&cell.profile.as_str()) {
            profiles.push(&cell.profile);
        }
    }
    let label = |profile: &str, strategy: Strategy| {
        cells
            .iter()
            .find(|c| c.profile == profile && c.strategy == strategy.name())
            .map(Cell::label)
            .unwrap_or_else(|| "-".into())
    };
    let widths: Vec<usize> = strategies
        .iter()
        .map(|s| {
            profiles
                .iter()
                .map(|p| label(p, *s).chars().count())
                .chain([s.name().len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::from("failed requests (by class), lost operations\n");
    let _ = write!(text, "{:<8}", "profile");
    for (strategy, width) in strategies.iter().zip(&widths) {
        let _ = write!(text, "  {:<width$}", strategy.name());
    }
    text.push('\n');
    for profile in profiles {
        let _ = write!(text, "{profile:<8}");
        for (strategy, width) in strategies.iter().zip(&widths) {
            let _ = write!(text, "  {:<width$}", label(profile, *strategy));
        }
        text.push('\n');
    }
    text
}

/// `matrix.html`: the table, green where nothing was dropped, each cell
/// linking to its trial's report.
pub fn html(cells: &[Cell], strategies: &[Strategy]) -> String {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dropless trial matrix</title>\
         <style>body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}\
         .ok{background:#e8f5e9}.bad{background:#ffebee}a{color:inherit}</style></head><body>\
         <h1>dropless trial matrix</h1><p>Each cell: demo profile ×2 under the strategy, a scale-up and a rolling \
         restart under 100 req/s; failed requests by class and lost calculations.</p><table><tr><th>profile</th>",
    );
    for strategy in strategies {
        let _ = write!(page, "<th>{}</th>", strategy.name());
    }
    page.push_str("</tr>");
    let mut profiles: Vec<&str> = Vec::new();
    for cell in cells {
        if !profiles.contains(&cell.profile.as_str()) {
            profiles.push(&cell.profile);
        }
    }
    for profile in profiles {
        let _ = write!(page, "<tr><td>{}</td>", escape(profile));
        for strategy in strategies {
            match cells
                .iter()
                .find(|c| c.profile == profile && c.strategy == strategy.name())
            {
                Some(cell) => {
                    let class = if cell.requests_failed == 0 && cell.ops_lost.unwrap_or(0) == 0 {
                        "ok"
                    } else {
                        "bad"
                    };
                    let _ = write!(
                        page,
                        "<td class=\"{class}\"><a href=\"{profile}-{strategy}/report.html\">{}</a></td>",
                        escape(&cell.label()),
                        profile = escape(profile),
                        strategy = strategy.name(),
                    );
                }
                None => page.push_str("<td>-</td>"),
            }
        }
        page.push_str("</tr>");
    }
    page.push_str("</table></body></html>\n");
    page
}
