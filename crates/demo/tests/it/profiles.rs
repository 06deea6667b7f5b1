//! One test per SIGTERM behaviour: the demo under load, SIGTERM mid-load,
//! and what the clients saw.

use std::time::{Duration, Instant};

use crate::fixtures::{Demo, Load, Outcome, get_once};

const SUM: &str = "/sum?a=1&b=2";

/// Starts `args`, puts 8 clients on `/sum` (300 ms each), sends SIGTERM
/// while requests are in flight; returns the load and the 200s seen before.
async fn sigterm_under_load(args: &[&str]) -> (Demo, Load, usize) {
    let mut all = vec!["--work-ms", "300"];
    all.extend_from_slice(args);
    let demo = Demo::start(&all).await;
    let load = Load::start(demo.addr, SUM, 8);
    load.until_ok(8).await;
    // Each client has sent its next request (300 ms of work each).
    load.until_in_flight(8).await;
    let before = load.summary().ok;
    demo.sigterm();
    (demo, load, before)
}

#[tokio::test]
async fn v3_finishes_in_flight_requests_and_refuses_new_connections() {
    let (mut demo, load, before) = sigterm_under_load(&["--profile", "v3"]).await;
    let status = demo.exited().await;
    load.until(|s| s.refused > 0).await;
    let seen = load.stop().await;
    assert!(status.success(), "{status}: {}", demo.log());
    assert!(seen.cut.is_empty(), "v3 cut requests: {:?}", seen.cut);
    assert!(seen.other_status.is_empty(), "{:?}", seen.other_status);
    assert!(
        seen.ok > before,
        "requests in flight at SIGTERM must complete ({} ok, {before} before)",
        seen.ok
    );
}

#[tokio::test]
async fn v4_cuts_in_flight_requests() {
    let (mut demo, load, _) = sigterm_under_load(&["--profile", "v4"]).await;
    demo.exited().await;
    load.until(|s| s.refused > 0).await;
    let seen = load.stop().await;
    assert!(
        !seen.cut.is_empty(),
        "v4 must cut the requests in flight: {seen:?}"
    );
}

#[tokio::test]
async fn v5_serves_during_pre_stop_with_readiness_503_then_finishes_in_flight() {
    let pre_stop = Duration::from_secs(2);
    let (mut demo, load, before) =
        sigterm_under_load(&["--profile", "v5", "--pre-stop", "2s"]).await;
    let signalled = Instant::now();
    // Readiness turns 503 at once while the app still answers.
    loop {
        match get_once(demo.addr, "/healthz").await {
            Outcome::Response { status: 503, .. } => break,
            Outcome::Response { status: 200, .. } => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => panic!("/healthz during pre-stop: {other:?}"),
        }
    }
    let sum = get_once(demo.addr, SUM).await;
    assert!(
        matches!(sum, Outcome::Response { status: 200, .. }),
        "{sum:?}"
    );
    assert!(
        signalled.elapsed() < pre_stop,
        "checks ran past the pre-stop delay"
    );
    assert!(demo.alive());

    let status = demo.exited().await;
    assert!(
        signalled.elapsed() >= pre_stop,
        "exited before the pre-stop delay ended"
    );
    load.until(|s| s.refused > 0).await;
    let seen = load.stop().await;
    assert!(status.success(), "{status}: {}", demo.log());
    assert!(seen.cut.is_empty(), "v5 cut requests: {:?}", seen.cut);
    assert!(seen.ok > before);
}

/// v1 and v2 ignore SIGTERM: they keep serving until SIGKILL.
async fn ignores_sigterm(profile: &str, healthz: u16) {
    let mut demo = Demo::start(&["--profile", profile, "--work-ms", "10"]).await;
    demo.sigterm();
    // The signal was handled, and nothing happened.
    demo.logged("SIGTERM ignored").await;
    assert!(demo.alive(), "{profile} exited on SIGTERM: {}", demo.log());
    assert!(matches!(
        get_once(demo.addr, SUM).await,
        Outcome::Response { status: 200, .. }
    ));
    match get_once(demo.addr, "/healthz").await {
        Outcome::Response { status, .. } => assert_eq!(status, healthz, "{profile} /healthz"),
        other => panic!("{other:?}"),
    }
    assert!(demo.log().contains("SIGTERM ignored"), "{}", demo.log());
}

#[tokio::test]
async fn v1_ignores_sigterm_and_has_no_health_endpoints() {
    ignores_sigterm("v1", 404).await;
}

#[tokio::test]
async fn v2_ignores_sigterm_and_stays_ready() {
    ignores_sigterm("v2", 200).await;
}
