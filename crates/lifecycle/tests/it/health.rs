//! Readiness and liveness probes through the life of a service.

use std::time::Duration;

use dropless_lifecycle::{Config, Lifecycle, Phase, signal::Signal};

use crate::fixtures::{H1, TestServer};

#[tokio::test]
async fn readiness_follows_the_phase() {
    let lifecycle = Lifecycle::new(Config::default());
    let mut server = TestServer::start_with(lifecycle.clone(), false).await;
    let mut client = H1::connect(server.addr).await;
    let (starting, body) = client.must_get("/healthz").await;
    assert_eq!(starting.status(), 503, "{body}");
    assert_eq!(client.must_get("/livez").await.0.status(), 200);

    lifecycle.set_ready();
    assert_eq!(client.must_get("/healthz").await.0.status(), 200);

    server.shutdown(Signal::Terminate);
    server.reached(Phase::Stopped).await;
    server.finished().await.unwrap();
}

#[tokio::test]
async fn during_pre_stop_readiness_is_503_and_other_routes_answer() {
    let mut server = TestServer::start(Config {
        pre_stop: Duration::from_millis(800),
        ..Config::default()
    })
    .await;
    server.shutdown(Signal::Terminate);
    server.reached(Phase::PreStop).await;

    // New connections are still accepted during the pre-stop delay.
    let mut client = H1::connect(server.addr).await;
    let (health, body) = client.must_get("/healthz").await;
    assert_eq!(health.status(), 503);
    assert_eq!(body, "shutting down\n");
    let mut other = H1::connect(server.addr).await;
    let (fast, body) = other.must_get("/fast").await;
    assert_eq!(fast.status(), 200);
    assert_eq!(body, "fast");
    assert_eq!(
        server.lifecycle.phase(),
        Phase::PreStop,
        "the pre-stop delay ended too early"
    );
    server.finished().await.unwrap();
}

#[tokio::test]
async fn health_paths_are_configurable_and_can_be_off() {
    let server = TestServer::start(Config {
        health_path: Some("/ready".into()),
        liveness_path: None,
        ..Config::default()
    })
    .await;
    let mut client = H1::connect(server.addr).await;
    assert_eq!(client.must_get("/ready").await.0.status(), 200);
    // Not probes any more: the app answers, and it has no such route.
    assert_eq!(client.must_get("/healthz").await.0.status(), 404);
    assert_eq!(client.must_get("/livez").await.0.status(), 404);
}
