//! HTTP/2: streams share a connection; a GOAWAY is classified, never a panic.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support;
use crate::{assert_consistent, open, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_connection() {
    let server = support::http2(Duration::from_millis(50), None).await;
    let mut config = open(&server.url("http"), 200.0, Duration::from_secs(1));
    config.http2 = true;
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!((report.requests.total, report.requests.ok), (200, 200));
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    assert!(server.max_streams.load(Ordering::SeqCst) >= 5);
}

/// Every connection sends GOAWAY 300 ms after it opened: requests move to a
/// new connection; anything that fails is reset or eof, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_mid_run_is_classified() {
    let server = support::http2(Duration::from_millis(20), Some(Duration::from_millis(300))).await;
    let mut config = open(&server.url("http"), 200.0, Duration::from_secs(1));
    config.http2 = true;
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(report.requests.total, 200);
    assert!(
        server.connections.load(Ordering::SeqCst) >= 3,
        "GOAWAY should force new connections"
    );
    for (class, n) in &report.failures {
        assert!(
            *n == 0 || class == "reset" || class == "eof",
            "{:?}",
            report.failures
        );
    }
    assert!(
        report.requests.ok >= 150,
        "{:?} {:?}",
        report.requests,
        report.failures
    );
}
