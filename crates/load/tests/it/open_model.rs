//! The open model keeps its schedule and measures latency from it.

use std::time::Duration;

use crate::support::{self, Action};
use crate::{assert_consistent, failures, open, run};

/// 2000 req/s for 3 s: every due request is sent, on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn achieved_rate_is_within_one_percent() {
    let server = support::fast().await;
    let report = run(&open(&server.url("http"), 2000.0, Duration::from_secs(3))).await;
    assert_consistent(&report);
    assert_eq!(report.requests.total, 6000);
    assert_eq!((report.requests.failed, report.dropped_iterations), (0, 0));
    let error = (report.rate.achieved_per_s - 2000.0).abs() / 2000.0;
    assert!(
        error < 0.01,
        "achieved {} req/s",
        report.rate.achieved_per_s
    );
    assert_eq!(report.timeline.len(), 3);
    assert!(
        report.timeline.iter().all(|s| s.sent == 2000),
        "{:?}",
        report.timeline
    );
}

/// One connection; its 200th request stalls 1.2 s. The requests due during
/// the stall wait for the connection: their latency from the schedule shows
/// the stall, their service time (from the actual send) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shows_in_latency_from_the_schedule_not_in_service_time() {
    let server = support::misbehaving(|_| {
        let mut script = vec![Action::Ok; 199];
        script.push(Action::Stall(Duration::from_millis(1200)));
        script
    })
    .await;
    let mut config = open(&server.url("http"), 200.0, Duration::from_secs(3));
    config.connections = Some(1);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!((report.requests.total, report.requests.failed), (600, 0));
    assert!(
        report.latency_ms.ttlb.p99 >= 1000.0,
        "{:?}",
        report.latency_ms.ttlb
    );
    assert!(
        report.service_time_ms.p99 < 200.0,
        "{:?}",
        report.service_time_ms
    );
    assert!(
        report.service_time_ms.max >= 1200.0,
        "{:?}",
        report.service_time_ms
    );
    let worst = report
        .timeline
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(0.0, f64::max);
    assert!(worst >= 1000.0, "{:?}", report.timeline);
}

/// At the in-flight limit, due requests are counted as dropped iterations.
#[tokio::test]
async fn requests_beyond_max_in_flight_are_dropped_iterations() {
    let server = support::misbehaving(|_| vec![Action::Hang]).await;
    let mut config = open(&server.url("http"), 100.0, Duration::from_secs(1));
    config.max_in_flight = 5;
    config.timeout = Duration::from_secs(30);
    config.grace = Duration::from_millis(100);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(report.dropped_iterations, 95);
    // Still hanging at the end of the grace: counted as timeouts.
    assert_eq!(failures(&report), [("timeout", 5)]);
}

/// 20 000 req/s hands arrivals over in batches: the in-flight limit reached
/// inside a batch still drops exactly every later arrival, one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_within_a_batch_drops_exactly_the_rest() {
    let server = support::misbehaving(|_| vec![Action::Hang]).await;
    let mut config = open(&server.url("http"), 20_000.0, Duration::from_millis(500));
    config.max_in_flight = 7;
    config.timeout = Duration::from_secs(30);
    config.grace = Duration::from_millis(100);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(report.dropped_iterations, 10_000 - 7);
    assert_eq!(failures(&report), [("timeout", 7)]);
}

/// A request count reached in the middle of a batch ends the run on that
/// very request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_count_within_a_batch_is_exact() {
    let server = support::fast().await;
    let mut config = open(&server.url("http"), 20_000.0, Duration::from_secs(10));
    config.requests = Some(1234);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!((report.requests.total, report.requests.ok), (1234, 1234));
    assert_eq!(report.dropped_iterations, 0);
}

/// Two sending threads keep their idle connections apart, but never open
/// more than `--connections` between them: a thread without an idle
/// connection of its own takes the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sending_threads_share_the_connection_cap() {
    let server = support::fast().await;
    let mut config = open(&server.url("http"), 2000.0, Duration::from_secs(1));
    config.connections = Some(3);
    let report = run_on_two_threads(&config).await;
    assert_consistent(&report);
    assert_eq!((report.requests.total, report.requests.failed), (2000, 0));
    let opened = server.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=3).contains(&opened), "{opened} connections");
}

/// Two sending threads, as the CLI runs, against a server that answers
/// each request only 1.5 s after reading it (far longer than the schedule
/// lasts, so that a loaded machine's pauses cannot pass for waiting):
/// while no request finishes, every arrival of the 300 ms schedule leaves (each on a connection
/// of its own, none comes back), never before it is due and without
/// waiting for a response; the requests finish after the schedule ended;
/// and at the in-flight limit every later arrival is dropped, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sending_threads_send_every_arrival_while_nothing_finishes() {
    let rate = 2000.0;
    for (max_in_flight, sent) in [(10_000, 600), (250, 250)] {
        let stall = Duration::from_millis(1500);
        let server = support::misbehaving(move |_| vec![Action::Stall(stall)]).await;
        let mut config = open(&server.url("http"), rate, Duration::from_millis(300));
        config.max_in_flight = max_in_flight;
        let before = std::time::Instant::now();
        let report = run_on_two_threads(&config).await;
        assert_consistent(&report);
        assert_eq!(
            (report.requests.ok, report.dropped_iterations),
            (sent, 600 - sent)
        );
        assert!(report.latency_ms.ttlb.min >= 1500.0, "{report:?}");
        let mut accepted = server.accepted.lock().unwrap().clone();
        accepted.sort();
        assert_eq!(accepted.len() as u64, sent);
        // Never early: by the k-th connection, k arrivals were due.
        for (k, at) in accepted.iter().enumerate() {
            let due = before + Duration::from_secs_f64(k as f64 / rate);
            assert!(*at >= due, "connection {k} before its arrival was due");
        }
        // None waited for a response: the last arrived before the first
        // could have been answered.
        let (first, last) = (accepted[0], accepted[accepted.len() - 1]);
        assert!(last - first < stall, "{:?}", last - first);
    }
}

/// Two sending threads against a server that never answers: each request
/// ends as a timeout, by its own `--timeout` (long before the grace ends)
/// or, with a longer timeout, when the grace ends; either way exactly once,
/// and the run ends then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sending_threads_time_requests_out_by_timeout_or_grace() {
    for (timeout, grace) in [(200, 20_000), (20_000, 200)] {
        let server = support::misbehaving(|_| vec![Action::Hang]).await;
        let mut config = open(&server.url("http"), 1000.0, Duration::from_millis(200));
        config.timeout = Duration::from_millis(timeout);
        config.grace = Duration::from_millis(grace);
        let started = std::time::Instant::now();
        let report = run_on_two_threads(&config).await;
        let took = started.elapsed();
        assert_consistent(&report);
        assert_eq!(failures(&report), [("timeout", 200)]);
        assert_eq!(report.dropped_iterations, 0);
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }
}

/// Runs `config` on two sending threads, as the CLI does on two CPUs.
async fn run_on_two_threads(config: &dropless_load::Config) -> dropless_load::Report {
    let workers = dropless_load::Workers::dedicated(2).unwrap();
    dropless_load::start_on(config, &workers)
        .await
        .expect("the run starts")
        .report()
        .await
        .expect("a report")
}

/// At most `--max-connecting` connections are opened at once: against a
/// server that accepts connections and never answers a TLS ClientHello,
/// the 200 requests due in 200 ms open 8 connections, and no other until
/// those handshakes time out (at 1 s); the others wait for a slot, in
/// their latency, and all 200 end as timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_connections_are_opened_at_once_than_max_connecting() {
    let server = support::misbehaving(|_| vec![Action::Hang]).await;
    let mut config = open(&server.url("https"), 1000.0, Duration::from_millis(200));
    config.insecure = true;
    config.max_connecting = 8;
    config.timeout = Duration::from_secs(1);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(failures(&report), [("timeout", 200)]);
    let accepted = server.accepted.lock().unwrap().clone();
    let first = accepted[0];
    let before_any_timeout = accepted
        .iter()
        .filter(|at| at.duration_since(first) < Duration::from_millis(600))
        .count();
    assert_eq!(before_any_timeout, 8, "{} accepted in all", accepted.len());
}

/// A burst of due requests takes the connections its first requests give
/// back rather than wait for a connect slot each: with one slot, 200
/// requests due at once (a 100 ms batch) open a few connections, not 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reuses_the_connections_it_gives_back() {
    let server = support::fast().await;
    let mut config = open(&server.url("http"), 2000.0, Duration::from_millis(200));
    config.batch = Duration::from_millis(100);
    config.max_connecting = 1;
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!((report.requests.ok, report.requests.failed), (400, 0));
    let opened = server
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(opened < 100, "{opened} connections for 400 requests");
}
