//! The scheduler, written once for every transport and stop condition.
//!
//! Two arrival models feed one `execute`: the open model's dispatcher starts
//! a task per due instant, handed over in batches to the sending threads (so
//! a slow server never delays the schedule), the closed model's loops send
//! back to back. Both stop on the same [`Until`]:
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
use crate::outcome::{Failure, FailureClass};
use crate::stats::{Recorder, Timings};

/// Waiters on the abandon signal are spread over this many tokens, so that
/// thousands of requests in flight do not queue on one lock.
const ABANDON_SHARDS: usize = 16;
/// The open dispatcher's longest sleep: how late it may notice a stop.
const MAX_NAP: Duration = Duration::from_millis(20);
/// The open dispatcher's shortest period between two wake-ups: an arrival
/// is sent at most this late (and its latency, measured from the schedule,
/// shows it), in exchange for one hand-over per batch of arrivals. At
/// 20 000 req/s that is 10 requests per batch; below 2 000 req/s every
/// request goes alone, on time.
const TICK: Duration = Duration::from_micros(500);

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
/// The dispatcher runs on a thread of its own and sleeps with the OS timer:
/// tokio's timer wheel has millisecond ticks and would add up to two of them
/// to every latency measured from the schedule; `thread::sleep` is late by
/// tens of microseconds. It wakes at most once per [`TICK`] and hands every
/// arrival due by then, in one batch, to one sending thread (the next in
/// turn), which starts them there: one cross-thread wake-up per batch, not
/// per request, and requests of a batch that go out together come back
/// together, so the sending thread wakes once for several responses.
pub(crate) async fn open<T: Transport>(
    shared: &Arc<Shared<T>>,
    rate: f64,
    max_in_flight: usize,
    tracker: &TaskTracker,
) -> Instant {
    let (shared, tracker) = (Arc::clone(shared), tracker.clone());
    let dispatcher =
        tokio::task::spawn_blocking(move || dispatch(&shared, rate, max_in_flight, &tracker));
    dispatcher.await.expect("the dispatcher does not panic")
}

/// One arrival handed to a sending thread: its number and when it was due.
type Arrival = (u64, Instant);

fn dispatch<T: Transport>(
    shared: &Arc<Shared<T>>,
    rate: f64,
    max_in_flight: usize,
    tracker: &TaskTracker,
) -> Instant {
    let until = &shared.until;
    let due_at = |n: u64| shared.start + Duration::from_secs_f64(n as f64 / rate);
    let mut last = shared.start;
    let mut woke: Option<Instant> = None;
    let mut batches = 0usize;
    let mut n = 0u64;
    loop {
        let next = due_at(n);
        if next >= until.deadline {
            return last.max(until.deadline);
        }
        let now = loop {
            if until.stop.is_cancelled() {
                return Instant::now();
            }
            let now = Instant::now();
            let wake = woke.map_or(next, |woke| next.max(woke + TICK));
            if wake <= now {
                break now;
            }
            // Short naps, so that a stop is seen within one.
            std::thread::sleep((wake - now).min(MAX_NAP));
        };
        woke = Some(now);
        let mut batch = Vec::new();
        loop {
            let due = due_at(n);
            if due > now || due >= until.deadline {
                break;
            }
            if !until.ticket() {
                send(shared, tracker, batches, batch);
                return last;
            }
            last = now;
            n += 1;
            if shared.in_flight.load(Ordering::Relaxed) >= max_in_flight {
                shared
                    .recorder
                    .lock()
                    .expect("recorder lock")
                    .drop_iteration(shared.second(due));
                continue;
            }
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            batch.push((n - 1, due));
        }
        send(shared, tracker, batches, batch);
        batches += 1;
    }
}

/// Start `batch` on the sending thread whose turn it is: one task crosses
/// threads, and it spawns each request's task where it runs.
fn send<T: Transport>(
    shared: &Arc<Shared<T>>,
    tracker: &TaskTracker,
    turn: usize,
    batch: Vec<Arrival>,
) {
    if batch.is_empty() {
        return;
    }
    let (shared, local) = (Arc::clone(shared), tracker.clone());
    let (handle, lane) = (shared.handle(turn).clone(), shared.lane(turn));
    tracker.spawn_on(
        async move {
            for (n, due) in batch {
                let task = Arc::clone(&shared);
                local.spawn(async move {
                    let mut session = task.transport.session(lane);
                    task.execute(&mut session, due, n as usize).await;
                    task.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        },
        &handle,
    );
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
        let mut marks = Marks::default();
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
