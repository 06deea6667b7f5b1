//! The load report (the JSON of `dropless load --json`, with `retries`,
//! `service_time_ms` and `interrupted`) and the live per-second snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Model};

/// The classes of `failures` with a non-zero count, in class order.
pub fn nonzero_failures(failures: &BTreeMap<String, u64>) -> impl Iterator<Item = (&str, u64)> {
    failures
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(class, n)| (class.as_str(), *n))
}

/// The classes of `failures` with a non-zero count as `class{pair}count`,
/// joined by `separator`: `failure_list(&failures, " ", ", ")` gives
/// `"eof 1, http_502 12"`. Empty when nothing failed.
pub fn failure_list(failures: &BTreeMap<String, u64>, pair: &str, separator: &str) -> String {
    nonzero_failures(failures)
        .map(|(class, n)| format!("{class}{pair}{n}"))
        .collect::<Vec<_>>()
        .join(separator)
}

/// The result of a run. Serializes to the JSON of `dropless load --json`
/// (docs/load.md, "Output").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The version of this report's layout ([`SCHEMA_VERSION`]); raised
    /// when a field changes meaning or goes away.
    #[serde(default)]
    pub schema_version: u32,
    /// The target URL.
    pub target: String,
    /// `open` (constant arrival rate) or `closed` (virtual users).
    pub model: String,
    /// Number of virtual users (closed model only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vus: Option<usize>,
    /// Target (open model only) and achieved request rate.
    pub rate: Rate,
    /// How long requests were started, in seconds (shorter than planned when
    /// the run was interrupted).
    pub duration_s: f64,
    /// Requests sent, by outcome.
    pub requests: Requests,
    /// Failed requests by class (`http_<code>`, `refused`, `reset`, `eof`,
    /// `timeout`, `tls`, `other`).
    pub failures: BTreeMap<String, u64>,
    /// Up to ten messages of `other` failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_samples: Vec<String>,
    /// Requests the schedule asked for that were not sent because
    /// `max_in_flight` requests were already in flight.
    pub dropped_iterations: u64,
    /// Requests retried once because their reused connection had been closed.
    pub retries: u64,
    /// Whether the run was stopped before its planned end.
    pub interrupted: bool,
    /// Latency from the scheduled send instant, for requests that got a
    /// response (ok or an unexpected status).
    pub latency_ms: Latency,
    /// Time to last byte from the actual send (service time), for the same
    /// requests.
    pub service_time_ms: Percentiles,
    /// The most the generator itself fell behind its schedule (open
    /// model): how long after it was due it sent a batch of arrivals,
    /// counted from [`LAG_MS`] (0 when it never fell that far behind). A
    /// paused or starved generator shows here; the latency from the
    /// schedule of the requests it sent late includes it, their service
    /// time does not.
    #[serde(default)]
    pub generator_lag_ms: f64,
    /// One entry per second of the run, by the second each request was due.
    pub timeline: Vec<Second>,
    /// Sessions mode (`--sessions N`): what the sessions saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Sessions>,
}

/// What the sessions of a sessions-mode run saw. `resets`, `lost_updates`,
/// `duplicates` and `gaps` count sessions (a session with two resets counts
/// once); `disconnects` and `reconnects` count events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sessions {
    /// Sessions played.
    pub total: u64,
    /// Sessions that saw none of the anomalies below.
    pub ok: u64,
    /// Sessions whose move number went back (their state was lost).
    pub resets: u64,
    /// Sessions whose move number skipped.
    pub lost_updates: u64,
    /// Sessions that got the same move number twice.
    pub duplicates: u64,
    /// Sessions whose WebSocket stream missed or repeated a move.
    pub gaps: u64,
    /// WebSocket streams closed by the server or cut.
    pub disconnects: u64,
    /// WebSocket streams connected again after a disconnect.
    pub reconnects: u64,
    /// Of the disconnects, close frames with code 1012 (service restart).
    #[serde(default)]
    pub restart_closes: u64,
    /// The longest a move was held for a handoff (`x-dropless-held-ms`), 0
    /// when none was.
    pub max_hold_ms: u64,
    /// Events per second of the run, by the second they were seen.
    #[serde(default)]
    pub timeline: Vec<SessionSecond>,
}

/// The session events of one second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSecond {
    /// Seconds since the start of the run.
    pub t_s: u64,
    /// Moves whose number followed on.
    pub moves: u64,
    /// Moves whose number went back.
    pub resets: u64,
    /// Moves whose number skipped.
    pub lost_updates: u64,
    /// Moves whose number repeated.
    pub duplicates: u64,
    /// Stream messages that did not follow on.
    pub gaps: u64,
    /// Streams closed.
    pub disconnects: u64,
    /// Streams connected again.
    pub reconnects: u64,
}

impl Sessions {
    /// Whether any session saw a reset, a lost update, a duplicate or a gap:
    /// what fails a trial.
    pub fn broken(&self) -> u64 {
        self.resets + self.lost_updates + self.duplicates + self.gaps
    }
}

/// Request rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// The open model's rate; `null` for the closed model.
    pub target_per_s: Option<f64>,
    /// Requests sent per second of `duration_s`.
    pub achieved_per_s: f64,
}

/// Request counts: `total = ok + failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    /// Requests sent.
    pub total: u64,
    /// Requests with an expected status (and body).
    pub ok: u64,
    /// Requests with any failure class.
    pub failed: u64,
}

/// Time to first byte (response head) and to last byte (whole body).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Time to first byte.
    pub ttfb: Percentiles,
    /// Time to last byte.
    pub ttlb: Percentiles,
    /// Requests whose time to last byte was above each of [`SLOW_MS`]
    /// milliseconds, keyed by that bound: a stall shows here even when it
    /// is too rare to move p99.
    #[serde(default)]
    pub over_ms: BTreeMap<u64, u64>,
}

/// The bounds (ms) of [`Latency::over_ms`]: 100 ms is slow for a request to
/// a service answering in a few, 900 ms catches the one-second stalls of a
/// retransmitted SYN or a one-second timer.
pub const SLOW_MS: [u64; 2] = [100, 900];

/// A latency distribution in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Smallest value.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 80th percentile.
    pub p80: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: u64,
}

/// The requests due in one second of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start of the run.
    pub t_s: u64,
    /// Requests sent (and finished) that were due in this second.
    pub sent: u64,
    /// Of those, ok.
    pub ok: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Requests due in this second that were dropped.
    #[serde(default)]
    pub dropped: u64,
    /// 99th percentile of time to last byte from the schedule, if any
    /// response arrived.
    pub p99_ms: Option<f64>,
    /// The slowest time to last byte from the schedule, if any response
    /// arrived: a stall at a moment of the run shows in its second.
    #[serde(default)]
    pub max_ms: Option<f64>,
    /// Failed requests by class.
    #[serde(default)]
    pub failures: BTreeMap<String, u64>,
    /// The most the generator fell behind its schedule sending requests
    /// due in this second, when [`LAG_MS`] or more (open model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<f64>,
}

/// The generator's lateness counted in [`Report::generator_lag_ms`] and
/// [`Second::lag_ms`]: below it, a batch left on time (timer precision).
pub const LAG_MS: u64 = 1;

/// The generator's lag that summaries point out: less is a busy machine's
/// usual timer lateness, more moves latencies a reader would blame on the
/// server.
pub const LAG_NOTE_MS: f64 = 10.0;

/// The layout version of the JSON report.
pub const SCHEMA_VERSION: u32 = 1;

/// The state of a run, published once per second and at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Finished requests so far.
    pub requests: Requests,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Dropped iterations so far.
    pub dropped_iterations: u64,
    /// Retries so far.
    pub retries: u64,
    /// Failures by class so far.
    pub failures: BTreeMap<String, u64>,
    /// The timeline so far; the last few seconds still fill in as their
    /// requests finish.
    pub timeline: Vec<Second>,
    /// Sessions mode: what the sessions saw so far.
    pub sessions: Option<Sessions>,
    /// Whether this is the last snapshot (the report is ready).
    pub done: bool,
}

/// How a model is reported: its name, the virtual users (closed) and the
/// target rate (open).
pub(crate) fn model_fields(model: Model) -> (&'static str, Option<usize>, Option<f64>) {
    match model {
        Model::Open { rate } => ("open", None, Some(rate)),
        Model::Closed { vus } => ("closed", Some(vus), None),
    }
}

impl Report {
    /// The report of a run that never started (its target never became
    /// ready, it was stopped first): nothing sent, latency rows empty.
    pub fn not_started(config: &Config) -> Report {
        let (model, vus, target_per_s) = model_fields(config.model);
        Report {
            schema_version: SCHEMA_VERSION,
            target: config.url.clone(),
            model: model.to_owned(),
            vus,
            rate: Rate {
                target_per_s,
                achieved_per_s: 0.0,
            },
            duration_s: 0.0,
            requests: Requests::default(),
            failures: BTreeMap::new(),
            other_samples: Vec::new(),
            dropped_iterations: 0,
            retries: 0,
            interrupted: false,
            latency_ms: Latency::default(),
            service_time_ms: Percentiles::default(),
            generator_lag_ms: 0.0,
            timeline: Vec::new(),
            sessions: None,
        }
    }

    /// The JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The count of one failure class (`"http_503"`, `"eof"`, ...), 0 if absent.
    pub fn failure_count(&self, class: &str) -> u64 {
        self.failures.get(class).copied().unwrap_or(0)
    }
}
