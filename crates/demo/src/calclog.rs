//! The calculation log: one record per `/sum`, written in tasks or batches
//! depending on the profile, to InfluxDB or a file.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dropless_lifecycle::{BatchConfig, Batcher, Lifecycle};
use serde::Serialize;

use crate::{CalcLogMode, influx::Influx, logfile::LogFile, opid::OpIds};

/// First pause before retrying a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two retries.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts a failing write still gets once shutdown has begun, so a dead
/// database cannot hold the shutdown until the grace period ends.
const ATTEMPTS_AFTER_SHUTDOWN: u32 = 3;

/// One logged calculation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Record {
    /// The operation id, also sent to the client as `x-op-id`.
    pub id: String,
    /// The result of the calculation.
    pub result: i64,
    /// Nanoseconds since the Unix epoch, unique in this process.
    pub ts_ns: i64,
}

/// Where records are written.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    Influx(Box<Influx>),
    File(LogFile),
}

impl Sink {
    async fn write(&self, records: &[Record]) -> Result<(), String> {
        match self {
            Sink::Influx(influx) => influx.write(records).await,
            Sink::File(file) => file.write(records).await,
        }
    }
}

/// The calculation log of one process.
#[derive(Debug, Clone)]
pub(crate) struct CalcLog {
    shared: Arc<Shared>,
    path: Path,
}

#[derive(Debug)]
struct Shared {
    ids: OpIds,
    sink: Option<Sink>,
    lifecycle: Lifecycle,
    acknowledged: AtomicU64,
    written: AtomicU64,
    not_written: AtomicU64,
}

/// How a record travels from the handler to the sink.
#[derive(Debug, Clone)]
enum Path {
    Off,
    Task { tracked: bool, delay: Duration },
    Batch(Batcher<Record>),
}

impl CalcLog {
    pub(crate) fn new(
        lifecycle: &Lifecycle,
        mode: CalcLogMode,
        sink: Option<Sink>,
        log_delay: Duration,
        batch: BatchConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            ids: OpIds::new(),
            sink,
            lifecycle: lifecycle.clone(),
            acknowledged: AtomicU64::new(0),
            written: AtomicU64::new(0),
            not_written: AtomicU64::new(0),
        });
        if mode != CalcLogMode::Off {
            // Registered first, so it runs last: after the batch flush.
            let summary = Arc::clone(&shared);
            lifecycle.on_shutdown(
                "calc-log-summary",
                move || async move { summary.summarize() },
            );
        }
        let path = match mode {
            CalcLogMode::Off => Path::Off,
            CalcLogMode::Tasks { tracked } => Path::Task {
                tracked,
                delay: log_delay,
            },
            CalcLogMode::Batches { flush_on_shutdown } => {
                let writer = Arc::clone(&shared);
                Path::Batch(Batcher::new(
                    lifecycle,
                    "calc-log-batch",
                    BatchConfig {
                        flush_on_shutdown,
                        ..batch
                    },
                    move |records: Vec<Record>| {
                        let writer = Arc::clone(&writer);
                        async move { writer.write(records).await }
                    },
                ))
            }
        };
        Self { shared, path }
    }

    /// A new operation id.
    pub(crate) fn next_id(&self) -> String {
        self.shared.ids.next_id()
    }

    /// Logs a calculation whose response is about to be acknowledged.
    pub(crate) fn record(&self, id: String, result: i64) {
        let record = Record {
            id,
            result,
            ts_ns: self.shared.ids.next_timestamp(),
        };
        match &self.path {
            Path::Off => return,
            Path::Task { tracked, delay } => {
                let shared = Arc::clone(&self.shared);
                let delay = *delay;
                let task = async move {
                    tokio::time::sleep(delay).await;
                    shared.write(vec![record]).await;
                };
                if *tracked {
                    self.shared.lifecycle.spawn("calc-log-task", task);
                } else {
                    tokio::spawn(task);
                }
            }
            Path::Batch(batcher) => batcher.push(record),
        }
        self.shared.acknowledged.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Writes with retries and backoff; what cannot be written is counted
    /// and logged, never dropped silently.
    async fn write(&self, records: Vec<Record>) {
        let count = records.len() as u64;
        let Some(sink) = &self.sink else {
            return;
        };
        let shutdown = self.lifecycle.shutdown_token();
        let mut pause = RETRY_FIRST;
        let mut attempts_after_shutdown = 0;
        loop {
            match sink.write(&records).await {
                Ok(()) => {
                    self.written.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    if shutdown.is_cancelled() {
                        attempts_after_shutdown += 1;
                        if attempts_after_shutdown >= ATTEMPTS_AFTER_SHUTDOWN {
                            self.not_written.fetch_add(count, Ordering::Relaxed);
                            tracing::error!(records = count, %error, "calculation log: giving up on a write during shutdown");
                            return;
                        }
                    }
                    tracing::warn!(records = count, %error, retry_in = ?pause, "calculation log: write failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn summarize(&self) {
        let acknowledged = self.acknowledged.load(Ordering::Relaxed);
        let written = self.written.load(Ordering::Relaxed);
        let not_written = self.not_written.load(Ordering::Relaxed);
        let unwritten = acknowledged.saturating_sub(written + not_written);
        if self.sink.is_none() {
            tracing::info!(
                acknowledged,
                "calculation log: no sink configured, nothing written"
            );
        } else if not_written == 0 && unwritten == 0 {
            tracing::info!(
                acknowledged,
                written,
                "calculation log: every calculation written"
            );
        } else {
            tracing::error!(
                acknowledged,
                written,
                not_written,
                still_pending = unwritten,
                "calculation log: calculations NOT written (lost at exit)"
            );
        }
    }
}
