//! HTTPS through rustls: `insecure` accepts a self-signed certificate; a
//! failed handshake is `tls`.

use std::time::Duration;

use crate::support;
use crate::{assert_consistent, failures, open, run};

#[tokio::test]
async fn an_https_url_to_a_plain_server_is_tls() {
    let server = support::plain_text_only().await;
    let report = run(&open(
        &server.url("https"),
        20.0,
        Duration::from_millis(500),
    ))
    .await;
    assert_consistent(&report);
    assert_eq!(failures(&report), [("tls", 10)]);
}

#[tokio::test]
async fn a_self_signed_certificate_needs_insecure() {
    let server = support::tls(false).await;
    let url = format!("https://localhost:{}/", server.addr.port());
    let mut config = open(&url, 20.0, Duration::from_millis(500));
    let report = run(&config).await;
    assert_eq!(failures(&report), [("tls", 10)]);
    config.insecure = true;
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!((report.requests.ok, report.requests.failed), (10, 0));
}

#[tokio::test]
async fn http2_over_tls_is_negotiated_with_alpn() {
    let server = support::tls(true).await;
    let url = format!("https://localhost:{}/", server.addr.port());
    let mut config = open(&url, 20.0, Duration::from_millis(500));
    config.insecure = true;
    config.http2 = true;
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!((report.requests.ok, report.requests.failed), (10, 0));
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // A server that only speaks HTTP/1.1 does not agree to h2: a TLS failure.
    let http1_only = support::tls(false).await;
    config.url = format!("https://localhost:{}/", http1_only.addr.port());
    let report = run(&config).await;
    assert_eq!(failures(&report), [("tls", 10)]);
    assert_eq!(report.other_samples, Vec::<String>::new());
}
