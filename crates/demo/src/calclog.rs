//! The calculation log: one record per `/sum`, written in tasks or batches
//! depending on the profile, to InfluxDB or a file.

use std::{
    future::Future,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dropless_lifecycle::{BatchConfig, Batcher, Lifecycle};
use serde::Serialize;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::{CalcLogMode, influx::Influx, logfile::LogFile, opid::OpIds};

/// First pause before retrying a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two retries.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Once shutdown has begun, failing writes are retried until this long
/// before the grace period ends: the summary is logged and the process
/// exits on its own, rather than being cut off by the grace period (or a
/// supervisor's SIGKILL).
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(500);

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
    budget: Budget,
}

/// How long failing writes are retried once shutdown has begun: until
/// [`SHUTDOWN_MARGIN`] before the grace period ends.
#[derive(Debug)]
struct Budget {
    shutdown: CancellationToken,
    grace: Duration,
    /// When this log first saw the shutdown.
    began: OnceLock<Instant>,
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
            budget: Budget {
                shutdown: lifecycle.shutdown_token(),
                grace: lifecycle.config().grace,
                began: OnceLock::new(),
            },
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

    /// Acknowledged calculations that are not written (yet): at exit,
    /// the ones lost. 0 without a sink (nothing is meant to be written).
    pub(crate) fn unwritten(&self) -> u64 {
        if self.shared.sink.is_none() {
            return 0;
        }
        let acknowledged = self.shared.acknowledged.load(Ordering::Relaxed);
        acknowledged.saturating_sub(self.shared.written.load(Ordering::Relaxed))
    }

    /// Calculations acknowledged so far.
    pub(crate) fn acknowledged(&self) -> u64 {
        self.shared.acknowledged.load(Ordering::Relaxed)
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
        match retry(|| sink.write(&records), &self.budget, count).await {
            Ok(()) => {
                self.written.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                self.not_written.fetch_add(count, Ordering::Relaxed);
                tracing::error!(records = count, %error, "calculation log: giving up on a write: the grace period ends");
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

impl Budget {
    /// When retrying stops: `None` until shutdown has begun.
    fn deadline(&self) -> Option<Instant> {
        self.shutdown.is_cancelled().then(|| {
            *self.began.get_or_init(Instant::now) + self.grace.saturating_sub(SHUTDOWN_MARGIN)
        })
    }
}

/// Calls `attempt` until it succeeds, pausing [`RETRY_FIRST`] doubling to
/// [`RETRY_MAX`] between attempts. Once shutdown has begun the next attempt
/// is made at once and retrying goes on until the budget's deadline; then
/// the last error is returned.
async fn retry<F, Fut>(mut attempt: F, budget: &Budget, records: u64) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut pause = RETRY_FIRST;
    loop {
        let result = match budget.deadline() {
            Some(deadline) => timeout_at(deadline, attempt())
                .await
                .unwrap_or_else(|_| Err("no answer before the grace period ended".into())),
            None => attempt().await,
        };
        let Err(error) = result else {
            return Ok(());
        };
        let now = Instant::now();
        match budget.deadline() {
            Some(deadline) if now >= deadline => return Err(error),
            Some(deadline) => {
                let wait = pause.min(deadline - now);
                tracing::warn!(records, %error, retry_in = ?wait, "calculation log: write failed, retrying until the grace period ends");
                sleep(wait).await;
            }
            None => {
                tracing::warn!(records, %error, retry_in = ?pause, "calculation log: write failed, retrying");
                tokio::select! {
                    () = sleep(pause) => {}
                    // The final flush begins: try again at once.
                    () = budget.shutdown.cancelled() => {
                        pause = RETRY_FIRST;
                        continue;
                    }
                }
            }
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn budget(grace: Duration) -> Budget {
        Budget {
            shutdown: CancellationToken::new(),
            grace,
            began: OnceLock::new(),
        }
    }

    /// An attempt that fails until `ok_from` after the start, counting
    /// its calls.
    fn attempts(
        ok_from: Duration,
        calls: &AtomicU32,
    ) -> impl FnMut() -> std::future::Ready<Result<(), String>> + '_ {
        let start = Instant::now();
        move || {
            calls.fetch_add(1, Ordering::Relaxed);
            std::future::ready(if start.elapsed() >= ok_from {
                Ok(())
            } else {
                Err("connection refused".into())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_a_failing_write_is_retried_with_backoff_until_the_grace_ends() {
        let budget = budget(Duration::from_secs(10));
        budget.shutdown.cancel();
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let result = retry(attempts(Duration::MAX, &calls), &budget, 1).await;
        assert!(result.is_err());
        // 9.5 s of retries: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s, then the
        // pause is cut to the deadline.
        assert_eq!(start.elapsed(), Duration::from_millis(9500));
        assert_eq!(calls.load(Ordering::Relaxed), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_a_database_back_within_the_grace_gets_the_write() {
        let budget = budget(Duration::from_secs(10));
        budget.shutdown.cancel();
        let calls = AtomicU32::new(0);
        let result = retry(attempts(Duration::from_secs(4), &calls), &budget, 1).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn while_running_writes_are_retried_and_shutdown_retries_at_once() {
        let budget = budget(Duration::from_secs(2));
        let calls = AtomicU32::new(0);
        let shutdown = budget.shutdown.clone();
        tokio::spawn(async move {
            sleep(Duration::from_secs(60)).await;
            shutdown.cancel();
        });
        let start = Instant::now();
        let result = retry(attempts(Duration::MAX, &calls), &budget, 1).await;
        assert!(result.is_err());
        // Retried every 5 s at most until the shutdown at 60 s, then for
        // the 1.5 s of its budget.
        assert_eq!(start.elapsed(), Duration::from_millis(61_500));
        assert!(calls.load(Ordering::Relaxed) > 12);
    }
}
