//! HTTP/2: streams share a connection; a GOAWAY is classified, never a panic.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{self, H2End};
use dropless_load::Report;

use crate::support::Server;
use crate::{assert_consistent, open, run};

/// 200 req/s for 1 s over HTTP/2 to a server answering after `delay`.
async fn h2_run(delay_ms: u64, end: H2End) -> (Server, Report) {
    let server = support::http2(Duration::from_millis(delay_ms), end).await;
    let mut config = open(&server.url("http"), 200.0, Duration::from_secs(1));
    config.http2 = true;
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(report.requests.total, 200);
    (server, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection() {
    let (server, report) = h2_run(50, H2End::Never).await;
    assert_eq!(report.requests.ok, 200);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    assert!(server.max_streams.load(Ordering::SeqCst) >= 5);
}

/// Every connection sends GOAWAY 300 ms after it opened and finishes its
/// streams: requests move to a new connection and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_goaway_loses_no_request() {
    let (server, report) = h2_run(20, H2End::GoAway(Duration::from_millis(300))).await;
    assert_eq!(report.requests.ok, 200, "{:?}", report.failures);
    let connections = server.connections.load(Ordering::SeqCst);
    assert!(connections >= 3, "GOAWAY should force new connections");
}

/// Every connection is dropped 300 ms after it opened, streams in flight:
/// those fail as `eof` or `reset`, counted once; the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_fails_its_streams_once() {
    let (_server, report) = h2_run(100, H2End::Drop(Duration::from_millis(300))).await;
    let lost = report.failure_count("eof") + report.failure_count("reset");
    assert!(lost >= 10, "streams in flight fail: {:?}", report.failures);
    assert_eq!(lost, report.requests.failed, "{:?}", report.failures);
    assert!(report.requests.ok >= 50, "{:?}", report.requests);
}
