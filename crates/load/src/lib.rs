//! dropless-load: the open-model load generator behind `dropless load`.
//!
//! It sends requests at a constant arrival rate ([`Model::Open`], latency
//! measured from each request's *scheduled* instant, so a stalled server
//! cannot hide behind coordinated omission) or from concurrent loops
//! ([`Model::Closed`]), classifies every outcome exactly once
//! ([`FailureClass`]: `http_<code>`, `refused`, `reset`, `eof`, `timeout`,
//! `tls`, `other`), and keeps only histograms and per-second buckets, never a
//! record per request.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dropless_load::Error> {
//! use std::time::Duration;
//! use dropless_load::{Config, Model};
//!
//! let mut config = Config::new("http://127.0.0.1:8080/sum?a=1&b=2");
//! config.model = Model::Open { rate: 200.0 };
//! config.duration = Duration::from_secs(30);
//! let run = dropless_load::start(&config).await?;
//! let mut snapshots = run.subscribe(); // one Snapshot per second
//! let stopper = run.stopper(); // stopper.stop() ends it early
//! tokio::spawn(async move {
//!     while snapshots.changed().await.is_ok() {
//!         let s = snapshots.borrow().clone();
//!         println!("{:.0}s: {} ok, {} failed", s.elapsed_s, s.requests.ok, s.requests.failed);
//!     }
//! });
//! let report = run.report().await?;
//! println!("{}", report.summary());
//! # drop(stopper); Ok(()) }
//! ```
//!
//! Sessions mode ([`Config::sessions`]) plays N stateful sessions instead
//! of one request: each client checks that every move number is the
//! previous plus one, and the report gets [`Sessions`] (resets, lost
//! updates, duplicates, and with [`Config::websocket`] stream gaps,
//! disconnects and reconnects).
//!
//! [`Probe`] drives single connections one request at a time and reports
//! what happened on each (`dropless check` observes shutdowns with it).
//!
//! Main types: [`Config`] (validated before any socket opens), [`Run`] and
//! [`Stopper`], [`Snapshot`], [`Report`] (the JSON of `dropless load --json`),
//! [`Thresholds`], and [`Workers`] (dedicated sending threads, for
//! [`start_on`]).
// One module registers a timerfd with tokio (`lane_timer`), which tokio
// only takes through an `unsafe` call; everything else is safe code.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod config;
mod lane_timer;
pub mod out;
mod outcome;
mod report;
mod run;
mod schedule;
mod sessions;
mod stats;
mod summary;
mod threshold;
mod timeline;
mod workers;

pub use client::probe::{Answer, Closed, GoAway, Lost, LostH2, Probe, ProbeConn, ProbeH2};
pub use config::{
    Config, ConfigError, DEFAULT_BATCH, DEFAULT_DURATION, DEFAULT_EXPECT_STATUS, DEFAULT_GRACE,
    DEFAULT_MAX_CONNECTING, DEFAULT_MAX_IN_FLIGHT, DEFAULT_RATE, DEFAULT_TIMEOUT, MAX_BATCH, Model,
    StatusSet,
};
pub use outcome::FailureClass;
pub use report::{
    LAG_MS, LAG_NOTE_MS, Latency, Percentiles, Rate, Report, Requests, SCHEMA_VERSION, SLOW_MS,
    Second, SessionSecond, Sessions, Snapshot, failure_list, nonzero_failures,
};
pub use run::{Error, Run, Stopper, run, start, start_on};
pub use threshold::Thresholds;
pub use workers::Workers;
