//! The data plane: headers, h2c, queueing, retries, unknown hosts.

use std::time::Duration;

use dropless_runtime::signal::Shutdown;

use crate::fixtures::load::{self, Client, Load};
use crate::fixtures::{self, Harness, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_set_and_hop_by_hop_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/headers")
        .header("host", "app.test")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.2.3")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    use http_body_util::BodyExt;
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        body.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: app.test\n"), "{body}");
    assert!(body.contains("host: app.test\n"), "{body}");
    assert!(!body.contains("x-private"), "{body}");
    assert!(!body.contains("keep-alive"), "{body}");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http1_share_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 2);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(2).await;
    let url = h.url("/sum?a=1&b=2");
    let mut h2 = Load::start(&url, 100, Duration::from_secs(10), Client::H2).await;
    let mut h1 = Load::start(&url, 100, Duration::from_secs(10), Client::NoKeepAlive).await;
    h2.wait_ok(50).await;
    h1.wait_ok(50).await;
    load::assert_clean(&h2.finish().await, 50);
    load::assert_clean(&h1.finish().await, 50);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_ready_replica_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let version = fixtures::backend(Mode::Graceful, "v1").with_env("STARTUP_DELAY_MS", "400");
    let service = fixtures::service("web", version, 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    // Sent before any replica is ready: queued, then served.
    let (status, version, _) = fixtures::get(&h.url("/sum?a=1&b=2")).await;
    assert_eq!((status, version.as_deref()), (200, Some("v1")));
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_replica_within_queue_timeout_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::NeverReady, "v1"), 1);
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.proxy.queue_timeout = Duration::from_millis(200);
    let h = Harness::start(config).await;
    let began = std::time::Instant::now();
    let (status, _, body) = fixtures::get(&h.url("/")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no ready replica of web"), "{body}");
    assert!(began.elapsed() >= Duration::from_millis(200));
    h.stop(Shutdown::Fast).await;
}
