//! A run in process: start it, watch its per-second snapshots, stop it, and
//! get its report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Connector, HttpTransport, Transport};
use crate::config::{Config, ConfigError, Model, Plan};
use crate::report::{Latency, Rate, Report, Snapshot};
use crate::schedule::{self, Shared, Until};
use crate::sessions::SessionsTransport;
use crate::workers::Workers;

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (a usage error).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The target host does not resolve.
    #[error("cannot resolve host '{host}': {reason}")]
    Resolve {
        /// The host of the target URL.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// The run's task ended abnormally.
    #[error("the load run failed: {0}")]
    Task(String),
}

/// A run in progress. Dropping it does not stop it; call [`Run::stop`].
pub struct Run {
    stopper: Stopper,
    snapshots: watch::Receiver<Snapshot>,
    task: JoinHandle<Report>,
}

/// Stops a run from anywhere (a signal handler, a trial script).
#[derive(Clone, Debug)]
pub struct Stopper {
    stop: CancellationToken,
    abandon: CancellationToken,
    interrupted: Arc<AtomicBool>,
}

/// Start a run of `config` on the current tokio runtime. Validates the
/// configuration and resolves the host first; no socket is opened on error.
pub async fn start(config: &Config) -> Result<Run, Error> {
    start_on(config, &Workers::current()).await
}

/// Start a run whose requests execute on `workers` (see [`Workers`]).
pub async fn start_on(config: &Config, workers: &Workers) -> Result<Run, Error> {
    let plan = config.plan()?;
    let connector = connector(&plan).await?;
    if let Some(count) = plan.sessions {
        let authority = plan
            .uri
            .authority()
            .expect("checked by the plan")
            .to_string();
        let transport = SessionsTransport::new(
            connector,
            authority,
            plan.uri.path(),
            count,
            plan.websocket,
            Instant::now(),
        );
        return Ok(start_with(plan, transport, workers));
    }
    let transport = HttpTransport::new(&plan, connector, workers.lanes());
    Ok(start_with(plan, transport, workers))
}

/// Resolves the plan's host and builds its connector.
pub(crate) async fn connector(plan: &Plan) -> Result<Connector, Error> {
    let resolve = |reason: String| Error::Resolve {
        host: plan.host.clone(),
        reason,
    };
    let addrs: Vec<_> = tokio::net::lookup_host((plan.host.as_str(), plan.port))
        .await
        .map_err(|e| resolve(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(resolve("no address".into()));
    }
    Ok(
        Connector::new(addrs, plan.tls, &plan.host, plan.insecure, plan.http2).map_err(|_| {
            ConfigError::Url {
                url: plan.url.clone(),
                reason: "the host is not a valid TLS server name",
            }
        })?,
    )
}

/// Start a run and wait for its report.
pub async fn run(config: &Config) -> Result<Report, Error> {
    start(config).await?.report().await
}

impl Run {
    /// Per-second snapshots; the last one has `done` set.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshots.clone()
    }

    /// A handle that stops this run.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Stop scheduling now; requests in flight get the grace period.
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Wait for the end of the run and its report.
    pub async fn report(self) -> Result<Report, Error> {
        self.task.await.map_err(|e| Error::Task(e.to_string()))
    }
}

impl Stopper {
    /// Stop scheduling; requests in flight get the grace period. The report
    /// is marked interrupted.
    pub fn stop(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
        self.stop.cancel();
    }

    /// End the run now as planned (the caller decides how long it lasts, say
    /// until a deploy command has ended): requests in flight get the grace
    /// period, and the report is not marked interrupted.
    pub fn finish(&self) {
        self.stop.cancel();
    }

    /// Stop scheduling and count every request still in flight as a timeout
    /// at once (a second Ctrl-C).
    pub fn abandon(&self) {
        self.stop();
        self.abandon.cancel();
    }
}

/// Start a run of `plan` over any transport.
pub(crate) fn start_with<T: Transport>(plan: Plan, transport: T, workers: &Workers) -> Run {
    let start = Instant::now();
    let stopper = Stopper {
        stop: CancellationToken::new(),
        abandon: CancellationToken::new(),
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    let until = Until::new(start + plan.duration, plan.requests, stopper.stop.clone());
    let shared = Arc::new(Shared::new(
        &plan,
        transport,
        start,
        until,
        &stopper.abandon,
        workers.handles(),
    ));
    let (tx, snapshots) = watch::channel(Snapshot::default());
    let task = tokio::spawn(drive(plan, shared, tx, stopper.clone()));
    Run {
        stopper,
        snapshots,
        task,
    }
}

async fn drive<T: Transport>(
    plan: Plan,
    shared: Arc<Shared<T>>,
    tx: watch::Sender<Snapshot>,
    stopper: Stopper,
) -> Report {
    let tracker = TaskTracker::new();
    let mut tick = tokio::time::interval_at(
        shared.start + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let scheduling = async {
        match plan.model {
            Model::Open { rate } => {
                schedule::open(&shared, rate, plan.max_in_flight, plan.batch, &tracker).await
            }
            Model::Closed { vus } => schedule::closed(&shared, vus, &tracker).await,
        }
    };
    tokio::pin!(scheduling);
    let end = loop {
        tokio::select! {
            end = &mut scheduling => break end,
            _ = tick.tick() => publish(&shared, &tx, &plan, false),
        }
    };
    // Requests still in flight get the grace period, then count as timeouts.
    tracker.close();
    let grace = tokio::time::sleep(plan.grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            () = tracker.wait() => break,
            () = &mut grace, if !stopper.abandon.is_cancelled() => stopper.abandon.cancel(),
            _ = tick.tick() => publish(&shared, &tx, &plan, false),
        }
    }
    shared.transport.finish().await;
    let report = report(
        &plan,
        &shared,
        end,
        stopper.interrupted.load(Ordering::Relaxed),
    );
    publish(&shared, &tx, &plan, true);
    report
}

fn publish<T: Transport>(
    shared: &Shared<T>,
    tx: &watch::Sender<Snapshot>,
    plan: &Plan,
    done: bool,
) {
    let elapsed = shared.start.elapsed();
    let mut recorder = shared.recorder.lock().expect("recorder lock");
    // A request due in second t has finished by t + 1 s + timeout.
    let settled = elapsed.saturating_sub(plan.timeout + Duration::from_secs(1));
    recorder.seal_before(if done { u64::MAX } else { settled.as_secs() });
    let snapshot = Snapshot {
        elapsed_s: elapsed.as_secs_f64(),
        requests: recorder.requests(),
        in_flight: shared.in_flight.load(Ordering::Relaxed) as u64,
        dropped_iterations: recorder.dropped(),
        retries: recorder.retries(),
        failures: recorder.failures(),
        timeline: recorder.timeline().rows(),
        sessions: shared.transport.sessions(),
        done,
    };
    drop(recorder);
    tx.send_replace(snapshot);
}

fn report<T: Transport>(
    plan: &Plan,
    shared: &Shared<T>,
    end: Instant,
    interrupted: bool,
) -> Report {
    let mut recorder = shared.recorder.lock().expect("recorder lock");
    recorder.seal_before(u64::MAX);
    let duration_s = end.saturating_duration_since(shared.start).as_secs_f64();
    let requests = recorder.requests();
    let (model, vus, target_per_s) = crate::report::model_fields(plan.model);
    let achieved_per_s = match duration_s > 0.0 {
        true => requests.total as f64 / duration_s,
        false => 0.0,
    };
    Report {
        schema_version: crate::report::SCHEMA_VERSION,
        target: plan.url.clone(),
        model: model.to_owned(),
        vus,
        rate: Rate {
            target_per_s,
            achieved_per_s,
        },
        duration_s,
        requests,
        failures: recorder.failures(),
        other_samples: recorder.other_samples(),
        dropped_iterations: recorder.dropped(),
        retries: recorder.retries(),
        interrupted,
        latency_ms: Latency {
            ttfb: recorder.ttfb(),
            ttlb: recorder.ttlb(),
            over_ms: recorder.over_ms(),
        },
        service_time_ms: recorder.service(),
        generator_lag_ms: recorder.max_lag_us() as f64 / 1000.0,
        timeline: recorder.timeline().rows(),
        sessions: shared.transport.sessions(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Answer, Marks};
    use crate::outcome::Failure;

    /// The plan of an open-model run at `rate` for `duration`, against a
    /// transport of the test's own.
    fn open_plan(rate: f64, duration: Duration) -> Plan {
        let mut config = run_of("http://127.0.0.1:1/".into(), rate);
        config.duration = duration;
        config.plan().unwrap()
    }

    /// Answers at once: the run's own costs are all that is measured.
    struct Instant200;

    impl Transport for Instant200 {
        type Session = ();

        async fn exchange(&self, _: &mut (), marks: &mut Marks) -> Result<Answer, Failure> {
            let now = Instant::now();
            (marks.sent, marks.head) = (Some(now), Some(now));
            Ok(Answer {
                status: 200,
                body_ok: true,
            })
        }
    }

    /// 20 000 req/s, answered at once: every arrival is sent, in the second
    /// it was due, and late by no more than the dispatcher's batching (1
    /// ms) plus the scheduling of a loaded machine: the time to first byte,
    /// measured from the schedule, is that lateness.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_model_arrivals_stay_on_schedule_at_a_high_rate() {
        let plan = open_plan(20_000.0, Duration::from_secs(1));
        let report = start_with(plan, Instant200, &Workers::current())
            .report()
            .await
            .unwrap();
        assert_eq!((report.requests.ok, report.dropped_iterations), (20_000, 0));
        let sent: Vec<u64> = report.timeline.iter().map(|s| s.sent).collect();
        assert_eq!(sent, [20_000]);
        let late = &report.latency_ms.ttfb;
        assert!(late.p50 < 5.0, "{late:?}");
        assert!(late.min < 1.0, "{late:?}");
    }

    /// Answers every request at `release`: until then, every request sent
    /// is in flight at once. The response head is marked when the request
    /// starts, so the time to first byte (from the schedule) is how late the
    /// request started.
    struct HeldUntil {
        release: Instant,
    }

    impl Transport for HeldUntil {
        type Session = ();

        async fn exchange(&self, _: &mut (), marks: &mut Marks) -> Result<Answer, Failure> {
            let now = Instant::now();
            (marks.sent, marks.head) = (Some(now), Some(now));
            tokio::time::sleep_until(self.release).await;
            Ok(Answer {
                status: 200,
                body_ok: true,
            })
        }
    }

    /// 2 000 req/s for 0.2 s on two sending threads while no request ends:
    /// every arrival still starts when it is due (no request waits for an
    /// earlier one to finish), and once `--max-in-flight` requests are in
    /// flight, every later arrival is a dropped iteration, exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_model_arrivals_start_on_schedule_while_none_has_finished() {
        for (max_in_flight, dropped) in [(10_000, 0), (150, 250)] {
            let mut config = Config::new("http://127.0.0.1:1/");
            config.model = Model::Open { rate: 2_000.0 };
            config.duration = Duration::from_millis(200);
            config.max_in_flight = max_in_flight;
            let plan = config.plan().unwrap();
            let release = Instant::now() + Duration::from_millis(600);
            let workers = Workers::dedicated(2).unwrap();
            let report = start_with(plan, HeldUntil { release }, &workers)
                .report()
                .await
                .unwrap();
            let sent = 400 - dropped;
            assert_eq!(
                (report.requests.ok, report.dropped_iterations),
                (sent, dropped)
            );
            let late = &report.latency_ms.ttfb;
            assert_eq!(late.count, sent);
            assert!(late.max < 100.0, "{late:?}");
            let ttlb = &report.latency_ms.ttlb;
            assert!(ttlb.min >= 350.0, "{ttlb:?}");
        }
    }

    /// Answers at once, but its `block`th request blocks its thread for
    /// 250 ms, as a machine that pauses the generator would.
    struct BlocksOnce {
        seen: std::sync::atomic::AtomicUsize,
        block: usize,
    }

    impl Transport for BlocksOnce {
        type Session = ();

        async fn exchange(&self, _: &mut (), marks: &mut Marks) -> Result<Answer, Failure> {
            if self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == self.block {
                std::thread::sleep(Duration::from_millis(250));
            }
            Instant200.exchange(&mut (), marks).await
        }
    }

    /// A generator paused for 250 ms (its one sending thread blocked) sends
    /// the arrivals due meanwhile as soon as it can, and says how far it
    /// fell behind: in the report and in the second those arrivals were
    /// due. Their latency from the schedule shows the pause too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_generator_reports_how_far_it_fell_behind() {
        let plan = open_plan(1_000.0, Duration::from_millis(600));
        let transport = BlocksOnce {
            seen: Default::default(),
            block: 200,
        };
        let workers = Workers::dedicated(1).unwrap();
        let report = start_with(plan, transport, &workers)
            .report()
            .await
            .unwrap();
        assert_eq!((report.requests.ok, report.dropped_iterations), (600, 0));
        let lag = report.generator_lag_ms;
        assert!((200.0..2_000.0).contains(&lag), "{lag}");
        assert_eq!(report.timeline.len(), 1);
        assert_eq!(report.timeline[0].lag_ms, Some(lag));
        assert!(
            report.latency_ms.ttfb.max >= 200.0,
            "{:?}",
            report.latency_ms
        );
        assert!(report.to_json().contains("\"generator_lag_ms\""));
    }

    /// A keep-alive HTTP/1.1 server on 127.0.0.1 port 0 that answers every
    /// request `after` a while (`None`: never) and counts the connections
    /// it accepted.
    async fn counting_server(
        after: Option<Duration>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                        let Some(after) = after else { continue };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            tokio::time::sleep(after).await;
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    /// An open-model run of 1.5 s at `rate` against `url`.
    fn run_of(url: String, rate: f64) -> Config {
        let mut config = Config::new(url);
        config.model = Model::Open { rate };
        config.duration = Duration::from_millis(1_500);
        config
    }

    /// Runs `config` on one sending thread, blocked for `pause` after the
    /// first second's snapshot (`at_pause` says what was then); returns
    /// the report.
    async fn paused_run<P>(
        config: &Config,
        pause: Duration,
        at_pause: impl FnOnce() -> P,
    ) -> (Report, P) {
        let workers = Workers::dedicated(1).unwrap();
        let run = start_on(config, &workers).await.unwrap();
        let mut snapshots = run.subscribe();
        snapshots.changed().await.unwrap();
        let then = at_pause();
        workers.handles()[0].spawn(async move { std::thread::sleep(pause) });
        (run.report().await.unwrap(), then)
    }

    /// The generator's one sending thread is blocked for 200 ms in the
    /// middle of a run at 2 000 req/s: the 400 requests due meanwhile go
    /// out at once when it resumes, on the connections they give back to
    /// each other, not on a new one each (about 420 connections without
    /// the wait for a returned connection; none with it, the arrivals due
    /// while the burst drains queuing behind it). All are answered, and the
    /// report says how far the generator fell behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_catch_up_burst_reuses_connections_instead_of_opening_hundreds() {
        let (url, accepted) = counting_server(Some(Duration::ZERO)).await;
        let (report, before) =
            paused_run(&run_of(url, 2_000.0), Duration::from_millis(200), || {
                accepted.load(std::sync::atomic::Ordering::Relaxed)
            })
            .await;
        assert_eq!((report.requests.ok, report.requests.failed), (3_000, 0));
        assert!(
            report.generator_lag_ms >= 150.0,
            "{}",
            report.generator_lag_ms
        );
        let opened = accepted.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            opened < 50,
            "{opened} connections opened for the burst ({before} before)"
        );
    }

    /// The same pause against a server that never answers: no connection
    /// comes back, so the overdue requests wait for one only a while, then
    /// each opens its own (every request sent, on a connection of its own),
    /// and all end as timeouts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overdue_requests_still_connect_when_no_connection_comes_back() {
        let (url, accepted) = counting_server(None).await;
        let mut config = run_of(url, 200.0);
        config.timeout = Duration::from_millis(1_500);
        let (report, ()) = paused_run(&config, Duration::from_millis(200), || ()).await;
        assert_eq!(report.requests.failed, 300, "{:?}", report.failures);
        assert_eq!(report.failure_count("timeout"), 300);
        assert!(
            report.generator_lag_ms >= 150.0,
            "{}",
            report.generator_lag_ms
        );
        let opened = accepted.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(opened, 300, "one connection per request");
    }

    /// A pause of 400 ms against a server that answers in 50 ms: the pool
    /// is about as large as the steady concurrency (50), so connections
    /// come back about as fast as new requests arrive and would never drain
    /// the pause's backlog. The overdue requests wait for them only a
    /// while, then open connections: the seconds after the pause's are
    /// back to the server's 50 ms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pause_backlog_drains_when_the_pool_only_just_keeps_up() {
        let (url, _) = counting_server(Some(Duration::from_millis(50))).await;
        let mut config = run_of(url, 1_000.0);
        config.duration = Duration::from_secs(4);
        let (report, ()) = paused_run(&config, Duration::from_millis(400), || ()).await;
        assert_eq!((report.requests.ok, report.requests.failed), (4_000, 0));
        let p99: Vec<_> = report.timeline.iter().map(|s| s.p99_ms).collect();
        assert!(p99[1].is_some_and(|ms| ms >= 300.0), "{p99:?}");
        assert!(
            p99[2..].iter().all(|ms| ms.is_some_and(|ms| ms < 150.0)),
            "{p99:?}"
        );
    }

    /// Answers at once and counts the requests each thread sent.
    type Counts = std::sync::Mutex<std::collections::HashMap<std::thread::ThreadId, u64>>;

    struct PerThread {
        sent: Arc<Counts>,
    }

    impl Transport for PerThread {
        type Session = ();

        async fn exchange(&self, _: &mut (), marks: &mut Marks) -> Result<Answer, Failure> {
            let now = Instant::now();
            (marks.sent, marks.head) = (Some(now), Some(now));
            let thread = std::thread::current().id();
            *self.sent.lock().unwrap().entry(thread).or_default() += 1;
            Ok(Answer {
                status: 200,
                body_ok: true,
            })
        }
    }

    /// Each sending thread times its own share of the schedule: together
    /// they send every arrival once (the whole rate, none twice, none
    /// dropped), every thread takes its turn (below one arrival per batch
    /// too, where the batches would otherwise all fall to one thread), and
    /// arrivals leave on time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_model_threads_split_the_schedule_and_keep_the_whole_rate() {
        for (threads, rate) in [(2, 1_000.0), (2, 20_000.0), (3, 15_000.0)] {
            let mut config = Config::new("http://127.0.0.1:1/");
            config.model = Model::Open { rate };
            config.duration = Duration::from_millis(400);
            let plan = config.plan().unwrap();
            let workers = Workers::dedicated(threads).unwrap();
            let counts = Arc::new(Counts::default());
            let transport = PerThread {
                sent: Arc::clone(&counts),
            };
            let report = start_with(plan, transport, &workers)
                .report()
                .await
                .unwrap();
            let total = (rate * 0.4) as u64;
            assert_eq!(
                (report.requests.ok, report.dropped_iterations),
                (total, 0),
                "{threads} threads at {rate} req/s"
            );
            let sent = counts.lock().unwrap().clone();
            assert_eq!(sent.len(), threads, "{sent:?}");
            // The batches (every 1 ms) go to the threads in turn.
            let batch = (rate * 0.001).ceil() as u64;
            for count in sent.values() {
                assert!(
                    count.abs_diff(total / threads as u64) <= batch + 1,
                    "{threads} threads at {rate} req/s: {sent:?}"
                );
            }
            // On time: within a batch period, with room for a busy machine
            // (the precision itself is a benchmark's, not a test's).
            let late = &report.latency_ms.ttfb;
            assert!(late.min < 1.0 && late.p50 < 20.0, "{late:?}");
        }
    }

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// A million requests keep histograms and per-second buckets only: the
    /// memory of the process grows by far less than one record per request
    /// would take (16 MB at 16 bytes each).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_million_requests_keep_no_per_request_storage() {
        let mut config = Config::new("http://127.0.0.1:1/");
        config.model = Model::Closed { vus: 8 };
        config.duration = Duration::from_secs(120);
        config.requests = Some(1_000_000);
        let plan = config.plan().unwrap();
        let before = resident_bytes();
        let run = start_with(plan, Instant200, &Workers::current());
        let mut snapshots = run.subscribe();
        let sampler = tokio::spawn(async move {
            let mut peak = resident_bytes();
            while snapshots.changed().await.is_ok() {
                peak = peak.max(resident_bytes());
            }
            peak
        });
        let report = run.report().await.unwrap();
        let peak = sampler.await.unwrap().max(resident_bytes());
        assert_eq!(
            (report.requests.total, report.requests.ok),
            (1_000_000, 1_000_000)
        );
        assert_eq!(report.latency_ms.ttlb.count, 1_000_000);
        assert!(!report.interrupted);
        assert!(
            report.timeline.len() <= 120,
            "{} rows",
            report.timeline.len()
        );
        let growth = peak.saturating_sub(before);
        assert!(growth < 8 << 20, "memory grew by {} KiB", growth >> 10);
    }
}
