//! The scheduler, written once for every transport and stop condition.
//!
//! Two arrival models feed one `execute`: in the open model each sending
//! thread starts a task per due instant of its share of the schedule, in
//! batches (so a slow server never delays the schedule), the closed model's
//! loops send back to back. Both stop on the same [`Until`]:
//! the deadline, a request count, or a stop from the caller.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Marks, Transport};
use crate::config::{Plan, StatusSet};
use crate::lane_timer::LaneTimer;
use crate::outcome::{Failure, FailureClass};
use crate::stats::{Recorder, Timings};

/// Waiters on the abandon signal are spread over this many tokens, so that
/// thousands of requests in flight do not queue on one lock.
const ABANDON_SHARDS: usize = 16;

/// A request that starts this long after it was due was held up by the
/// generator itself (a pause, a starved thread): it is one of a catch-up
/// burst, and waits for a connection to come back rather than open one
/// ([`Marks::overdue`]).
const OVERDUE: Duration = Duration::from_millis(10);

/// What every request of a run shares.
pub(crate) struct Shared<T> {
    pub(crate) transport: T,
    pub(crate) recorder: Mutex<Recorder>,
    pub(crate) start: Instant,
    pub(crate) timeout: Duration,
    pub(crate) expect_status: StatusSet,
    pub(crate) expect_body: Option<String>,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) until: Until,
    abandon: Vec<CancellationToken>,
    /// The runtimes requests run on, in turn.
    handles: Vec<Handle>,
}

/// When scheduling stops.
pub(crate) struct Until {
    pub(crate) deadline: Instant,
    limit: Option<u64>,
    issued: AtomicU64,
    exhausted: Notify,
    pub(crate) stop: CancellationToken,
}

impl<T: Transport> Shared<T> {
    pub(crate) fn new(
        plan: &Plan,
        transport: T,
        start: Instant,
        until: Until,
        abandon: &CancellationToken,
        handles: Vec<Handle>,
    ) -> Self {
        Shared {
            transport,
            recorder: Mutex::new(Recorder::new()),
            start,
            timeout: plan.timeout,
            expect_status: plan.expect_status.clone(),
            expect_body: plan
                .expect_body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            in_flight: AtomicUsize::new(0),
            until,
            abandon: (0..ABANDON_SHARDS).map(|_| abandon.child_token()).collect(),
            handles,
        }
    }

    /// The second of the run `instant` falls in.
    pub(crate) fn second(&self, instant: Instant) -> u64 {
        instant.saturating_duration_since(self.start).as_secs()
    }

    /// The lane (sending thread) of the `n`th loop or batch.
    fn lane(&self, n: usize) -> usize {
        n % self.handles.len()
    }

    /// The runtime for the `n`th loop or batch.
    fn handle(&self, n: usize) -> &Handle {
        &self.handles[self.lane(n)]
    }
}

impl Until {
    pub(crate) fn new(deadline: Instant, limit: Option<u64>, stop: CancellationToken) -> Self {
        Until {
            deadline,
            limit,
            issued: AtomicU64::new(0),
            exhausted: Notify::new(),
            stop,
        }
    }

    /// Take the right to start one more request (or drop it), unless the
    /// request count is reached.
    fn ticket(&self) -> bool {
        let Some(limit) = self.limit else { return true };
        if self.issued.fetch_add(1, Ordering::Relaxed) < limit {
            return true;
        }
        self.exhausted.notify_one();
        false
    }
}

/// Open model: a request due every `1/rate` s from the start. Returns when
/// scheduling ended.
///
/// Each sending thread (lane) times its own share of the schedule, so no
/// arrival crosses threads: arrival `i` is due at `i / rate`, the batches
/// go to the lanes in turn, and the lanes together keep the whole rate and
/// every arrival its exact instant. A batch is the arrivals due within one
/// `batch` window (`--batch`), sent at once when its last arrival is due:
/// an arrival leaves at most that late (and its latency, measured from the
/// schedule, shows it), in exchange for one wake-up per batch. At 20 000
/// req/s and 1 ms that is 20 requests per batch and each of two threads
/// waking every 2 ms; below one arrival per window each goes alone, on
/// time. (0.5 ms cost the open model about 15 % more CPU per request at
/// 20 000 req/s: each batch costs a timer wake-up and its responses'
/// wake-ups, whatever its size; docs/benchmarks.md.) A lane sleeps on a
/// timer of its own event loop ([`LaneTimer`]: sub-millisecond, no thread of its
/// own) until its next batch is due, and starts the batch's requests in
/// that one poll: no dispatcher thread, no cross-thread hand-over, one
/// wake-up per batch; requests of a batch that go out together come back
/// together, so the thread wakes once for several responses.
pub(crate) async fn open<T: Transport>(
    shared: &Arc<Shared<T>>,
    rate: f64,
    max_in_flight: usize,
    batch: Duration,
    tracker: &TaskTracker,
) -> Instant {
    let lanes = shared.handles.len();
    let schedules: Vec<_> = (0..lanes)
        .map(|lane| {
            let lane = Lane {
                shared: Arc::clone(shared),
                tracker: tracker.clone(),
                cadence: Cadence {
                    start: shared.start,
                    lane,
                    lanes,
                    rate,
                    batch: batch.as_secs_f64(),
                },
                max_in_flight,
            };
            shared.handles[lane.cadence.lane].spawn(lane.run())
        })
        .collect();
    let mut end = shared.start;
    for schedule in schedules {
        // A lane whose runtime was shut down ended its schedule then.
        end = end.max(schedule.await.unwrap_or_else(|_| Instant::now()));
    }
    end
}

/// One sending thread's share of the open model's schedule.
struct Lane<T> {
    shared: Arc<Shared<T>>,
    tracker: TaskTracker,
    cadence: Cadence,
    max_in_flight: usize,
}

/// When a lane's arrivals are due and which of them it sends.
#[derive(Debug, Clone, Copy)]
struct Cadence {
    /// The schedule's instant 0.
    start: Instant,
    /// This lane's number, of `lanes`.
    lane: usize,
    lanes: usize,
    /// Arrivals per second (of the whole schedule).
    rate: f64,
    /// The batch window, in seconds (0: every arrival alone).
    batch: f64,
}

impl Cadence {
    /// When arrival `n` is due.
    fn due_at(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.rate)
    }

    /// The batch of arrival `n`: the window whose end is the first at or
    /// after its due instant (without a window, its own).
    fn batch(&self, n: u64) -> u64 {
        if self.batch == 0.0 {
            return n;
        }
        // One division by the arrivals per window: exact for round rates
        // (20 000 req/s and 1 ms: 20.0, where n / rate / window rounds
        // arrival 20 past the end of its window).
        (n as f64 / (self.rate * self.batch)).ceil() as u64
    }
}

/// A lane's walk through the schedule's batches: the arrivals due within
/// one batch window form a batch, and the batches that have any arrival go
/// to the lanes in turn (so below one arrival per window, arrivals go to
/// the lanes in turn, each alone and on time).
struct Batches {
    /// The first arrival not walked yet.
    next: u64,
    /// Batches walked so far (by every lane: the walk is the same).
    seen: u64,
    /// Arrivals due from then on are not sent.
    deadline: Instant,
}

impl Batches {
    /// The first and last arrival of this lane's next batch; `None` when
    /// the schedule ends before it.
    fn next_of(&mut self, lane: &Cadence) -> Option<(u64, u64)> {
        loop {
            let first = self.next;
            if lane.due_at(first) >= self.deadline {
                return None;
            }
            let batch = lane.batch(first);
            let mut end = first;
            while lane.batch(end + 1) == batch && lane.due_at(end + 1) < self.deadline {
                end += 1;
            }
            self.next = end + 1;
            self.seen += 1;
            if (self.seen - 1) % lane.lanes as u64 == lane.lane as u64 {
                return Some((first, end));
            }
        }
    }
}

impl<T: Transport> Lane<T> {
    /// Start this lane's arrivals as they fall due; returns when its
    /// schedule ended (the deadline, or the instant it stopped).
    async fn run(self) -> Instant {
        let shared = &self.shared;
        let until = &shared.until;
        let timer = LaneTimer::new();
        let stop = until.stop.cancelled();
        tokio::pin!(stop);
        let mut batches = Batches {
            next: 0,
            seen: 0,
            deadline: until.deadline,
        };
        // Each request's timeout is a timer of this thread's tokio runtime,
        // and tokio wakes its own thread (an eventfd write) for every timer
        // set while its thread is awake that is due before all the timers
        // pending when it last slept: with none pending (the thread sleeps
        // on the timerfd between batches, its requests all answered), that
        // is every request. A timer kept pending, due before any request's
        // timeout, spares those writes.
        let guard_period = shared.timeout / 2;
        let guard = tokio::time::sleep(guard_period);
        tokio::pin!(guard);
        let mut last = shared.start;
        let cadence = self.cadence;
        while let Some((first, end)) = batches.next_of(&cadence) {
            // A batch is sent at once, when its last arrival is due.
            loop {
                tokio::select! {
                    biased;
                    () = &mut stop => return Instant::now(),
                    () = &mut guard => guard.as_mut().reset(Instant::now() + guard_period),
                    () = timer.sleep_until(cadence.due_at(end)) => break,
                }
            }
            let now = Instant::now();
            let due = cadence.due_at(end);
            let lag = now.saturating_duration_since(due);
            if lag >= Duration::from_millis(crate::report::LAG_MS) {
                let mut recorder = shared.recorder.lock().expect("recorder lock");
                recorder.lagged(shared.second(due), lag.as_micros() as u64);
            }
            for n in first..=end {
                if !until.ticket() {
                    return last;
                }
                last = now;
                self.start(cadence.due_at(n), n);
            }
        }
        last.max(until.deadline)
    }

    /// Start arrival `n`, due at `due`, in a task of its own on this
    /// thread, or count it as dropped when `--max-in-flight` requests are
    /// already in flight (checked and taken in one step: the lanes share
    /// the bound).
    fn start(&self, due: Instant, n: u64) {
        let shared = &self.shared;
        let taken =
            shared
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |in_flight| {
                    (in_flight < self.max_in_flight).then_some(in_flight + 1)
                });
        if taken.is_err() {
            shared
                .recorder
                .lock()
                .expect("recorder lock")
                .drop_iteration(shared.second(due));
            return;
        }
        let (task, lane) = (Arc::clone(shared), self.cadence.lane);
        self.tracker.spawn(async move {
            let mut session = task.transport.session(lane);
            task.execute(&mut session, due, n as usize).await;
            task.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Closed model: `vus` loops back to back. Returns when scheduling ended.
pub(crate) async fn closed<T: Transport>(
    shared: &Arc<Shared<T>>,
    vus: usize,
    tracker: &TaskTracker,
) -> Instant {
    for vu in 0..vus {
        let handle = shared.handle(vu).clone();
        let shared = Arc::clone(shared);
        tracker.spawn_on(
            async move {
                let mut session = shared.transport.session(shared.lane(vu));
                let until = &shared.until;
                loop {
                    let now = Instant::now();
                    if now >= until.deadline || until.stop.is_cancelled() || !until.ticket() {
                        break;
                    }
                    shared.in_flight.fetch_add(1, Ordering::Relaxed);
                    shared.execute(&mut session, now, vu).await;
                    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                    // A transport that never waits must not starve its thread.
                    tokio::task::consume_budget().await;
                }
            },
            &handle,
        );
    }
    let until = &shared.until;
    tokio::select! {
        () = tokio::time::sleep_until(until.deadline) => until.deadline,
        () = until.stop.cancelled() => Instant::now(),
        () = until.exhausted.notified() => Instant::now(),
    }
}

impl<T: Transport> Shared<T> {
    /// Send one request due at `due` and record its one outcome.
    async fn execute(&self, session: &mut T::Session, due: Instant, shard: usize) {
        let mut marks = Marks {
            overdue: Instant::now().saturating_duration_since(due) >= OVERDUE,
            ..Marks::default()
        };
        let abandon = &self.abandon[shard % ABANDON_SHARDS];
        let result = tokio::select! {
            biased;
            result = tokio::time::timeout(self.timeout, self.transport.exchange(session, &mut marks)) => {
                result.unwrap_or_else(|_| Err(Failure::new(FailureClass::Timeout)))
            }
            // The end of the run's grace: still in flight counts as timeout.
            () = abandon.cancelled() => Err(Failure::new(FailureClass::Timeout)),
        };
        let done = Instant::now();
        let us = |from: Instant, to: Instant| to.saturating_duration_since(from).as_micros() as u64;
        let (failure, timings) = match result {
            Ok(answer) => {
                let timings = Timings {
                    ttfb_us: us(due, marks.head.unwrap_or(done)),
                    ttlb_us: us(due, done),
                    service_us: us(marks.sent.unwrap_or(due), done),
                };
                let failure = if !self.expect_status.contains(answer.status) {
                    Some(Failure::new(FailureClass::Http(answer.status)))
                } else if !answer.body_ok {
                    let needle = self.expect_body.as_deref().unwrap_or_default();
                    Some(Failure::other(format!(
                        "the body does not contain {needle:?}"
                    )))
                } else {
                    None
                };
                (failure, Some(timings))
            }
            Err(failure) => (Some(failure), None),
        };
        let second = self.second(due);
        self.recorder.lock().expect("recorder lock").record(
            second,
            failure,
            timings,
            marks.retried,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every batch each of `lanes` lanes walks, with `batch` seconds of
    /// window at `rate` over one second.
    fn walk(rate: f64, batch: f64, lanes: usize) -> Vec<Vec<(u64, u64)>> {
        let start = Instant::now();
        (0..lanes)
            .map(|lane| {
                let cadence = Cadence {
                    start,
                    lane,
                    lanes,
                    rate,
                    batch,
                };
                let mut batches = Batches {
                    next: 0,
                    seen: 0,
                    deadline: start + Duration::from_secs(1),
                };
                std::iter::from_fn(|| batches.next_of(&cadence)).collect()
            })
            .collect()
    }

    /// The window groups the arrivals due within it, and no arrival leaves
    /// before it is due or later than the window: each batch is sent when
    /// its last arrival is due, and its first was due at most one window
    /// earlier. Every arrival of the schedule is in exactly one lane's
    /// batch, the lanes in turn.
    #[test]
    fn arrivals_within_one_window_leave_together_and_never_early() {
        for (rate, batch, size) in [
            (20_000.0, 0.001, 20),
            (20_000.0, 0.0005, 10),
            (2_000.0, 0.0, 1),
        ] {
            let lanes = walk(rate, batch, 2);
            let cadence = Cadence {
                start: Instant::now(),
                lane: 0,
                lanes: 2,
                rate,
                batch,
            };
            let mut all: Vec<(u64, u64)> = lanes.iter().flatten().copied().collect();
            all.sort_unstable();
            let mut next = 0;
            for &(first, end) in &all {
                assert_eq!(first, next, "{rate} req/s, {batch} s: a gap or a repeat");
                next = end + 1;
                // Arrival 0 is due at 0 and alone in the batch that ends
                // there; the last batch ends with the second.
                if first > 0 && end + 1 < rate as u64 {
                    assert_eq!(end - first + 1, size, "{rate} req/s, {batch} s");
                }
                let early = cadence.due_at(end) - cadence.due_at(first);
                assert!(early.as_secs_f64() < batch.max(1e-9), "{first}..={end}");
            }
            assert_eq!(
                next as f64, rate,
                "{rate} req/s, {batch} s: the whole second"
            );
            let (a, b) = (lanes[0].len(), lanes[1].len());
            assert!(
                a.abs_diff(b) <= 1,
                "{rate} req/s, {batch} s: {a} and {b} batches"
            );
        }
    }

    /// A batch window of 100 ms is accepted, a longer one is refused.
    #[test]
    fn a_batch_window_longer_than_100_ms_is_refused() {
        let mut config = crate::Config::new("http://127.0.0.1:1/");
        config.batch = crate::MAX_BATCH;
        assert!(config.plan().is_ok());
        config.batch = crate::MAX_BATCH + Duration::from_micros(1);
        let refused = config.plan().err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.starts_with("batch must be at most 100ms")),
            "{refused:?}"
        );
    }
}
