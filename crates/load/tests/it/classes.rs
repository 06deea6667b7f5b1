//! Every outcome lands in exactly one class, with exact counts.

use std::time::Duration;

use dropless_load::Model;

use crate::support::{self, Action};
use crate::{assert_consistent, failures, open, run};

const SLOW: Duration = Duration::from_secs(5);

/// One connection per request: connection n misbehaves by n % 5.
#[tokio::test]
async fn no_keepalive_counts_each_class_exactly() {
    let server = support::misbehaving(|n| {
        vec![match n % 5 {
            0 => Action::Ok,
            1 => Action::Status(503),
            2 => Action::Close,
            3 => Action::Reset,
            _ => Action::Stall(SLOW),
        }]
    })
    .await;
    let mut config = open(&server.url("http"), 100.0, Duration::from_millis(500));
    config.keepalive = false;
    config.timeout = Duration::from_millis(300);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(report.requests.total, 50);
    assert_eq!(report.requests.ok, 10);
    let expected = [
        ("eof", 10),
        ("http_503", 10),
        ("reset", 10),
        ("timeout", 10),
    ];
    assert_eq!(failures(&report), expected);
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        50
    );
    // Responses (ok and 503) have latencies; transport failures do not.
    assert_eq!(report.latency_ms.ttlb.count, 20);
}

/// One user on keep-alive connections: each failure ends its connection and
/// the next request opens a new one.
#[tokio::test]
async fn keepalive_counts_each_class_exactly() {
    use Action::*;
    let server = support::misbehaving(|n| match n {
        0 => vec![Ok, Ok, Status(503), Close],
        1 => vec![Ok, Reset],
        2 => vec![Stall(SLOW)],
        _ => vec![],
    })
    .await;
    let mut config = open(&server.url("http"), 1.0, Duration::from_secs(10));
    config.model = Model::Closed { vus: 1 };
    config.requests = Some(10);
    config.timeout = Duration::from_millis(300);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(report.requests.total, 10);
    assert_eq!(report.requests.ok, 6);
    let expected = [("eof", 1), ("http_503", 1), ("reset", 1), ("timeout", 1)];
    assert_eq!(failures(&report), expected);
    assert_eq!(report.retries, 0);
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        4
    );
}

/// `retry_reused`: a reused connection closed before any response byte is
/// retried once on a new one, and counted.
#[tokio::test]
async fn retry_reused_retries_a_closed_keepalive_connection() {
    for retry in [false, true] {
        let server = support::misbehaving(|n| match n {
            0 => vec![Action::Ok, Action::Close],
            _ => vec![],
        })
        .await;
        let mut config = open(&server.url("http"), 1.0, Duration::from_secs(10));
        config.model = Model::Closed { vus: 1 };
        config.requests = Some(3);
        config.retry_reused = retry;
        let report = run(&config).await;
        assert_consistent(&report);
        assert_eq!(report.requests.total, 3);
        match retry {
            false => assert_eq!((failures(&report), report.retries), (vec![("eof", 1)], 0)),
            true => assert_eq!((failures(&report), report.retries), (vec![], 1)),
        }
    }
}

#[tokio::test]
async fn closed_port_is_refused() {
    let addr = support::closed_port().await;
    let report = run(&open(
        &format!("http://{addr}/"),
        20.0,
        Duration::from_millis(500),
    ))
    .await;
    assert_consistent(&report);
    assert_eq!(failures(&report), [("refused", 10)]);
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    let server = support::misbehaving(|_| vec![Action::Hang]).await;
    let mut config = open(&server.url("http"), 20.0, Duration::from_millis(500));
    config.timeout = Duration::from_millis(200);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(failures(&report), [("timeout", 10)]);
}

#[tokio::test]
async fn expectations_on_status_and_body_decide_ok() {
    let server = support::misbehaving(|n| {
        vec![if n % 2 == 0 {
            Action::Ok
        } else {
            Action::Status(404)
        }]
    })
    .await;
    let mut config = open(&server.url("http"), 20.0, Duration::from_millis(500));
    config.keepalive = false;
    config.expect_status = "200-299,404".into();
    config.expect_body = Some("ok".into());
    let report = run(&config).await;
    assert_consistent(&report);
    // 404s now have an expected status, but their body is "no".
    assert_eq!(
        (report.requests.ok, failures(&report)),
        (5, vec![("other", 5)])
    );
    assert_eq!(report.other_samples, ["the body does not contain \"ok\""]);
}
