//! The demo's profiles, whose shutdowns are known (docs/demo.md): each
//! check's verdict per profile.

use dropless_check::Verdict::{self, Fail, NotApplicable as Na, Pass};

use crate::fixtures::{HELLO_DELAY, check, expect};

/// Checks demo `profile` (with short delays) and asserts the verdicts
/// given (`None`: not asserted, it depends on a race).
async fn profile(
    profile: &str,
    health: bool,
    expected: [Option<Verdict>; 8],
) -> dropless_check::Report {
    let delay = format!("{}", HELLO_DELAY.as_secs_f64());
    let args = [
        "--profile",
        profile,
        "--hello-delay",
        &delay,
        "--pre-stop",
        "500ms",
        "--grace",
        "2s",
    ];
    let report = check("demo", &args, health).await;
    for (i, verdict) in expected.into_iter().enumerate() {
        if let Some(verdict) = verdict {
            expect(&report, u8::try_from(i + 1).expect("eight"), verdict);
        }
    }
    report
}

#[tokio::test]
async fn v1_ignores_sigterm_and_is_killed_after_the_grace() {
    let report = profile(
        "v1",
        false,
        [
            Some(Na),
            Some(Fail),
            Some(Pass),
            Some(Fail),
            Some(Na),
            Some(Fail),
            Some(Fail),
            Some(Pass),
        ],
    )
    .await;
    assert!(
        report.meaning.fixes[0].starts_with("handle SIGTERM"),
        "{}",
        report.text()
    );
    assert!(
        report.meaning.dropless.starts_with("safe but slow"),
        "{}",
        report.text()
    );
}

#[tokio::test]
async fn v2_has_probes_but_ignores_sigterm() {
    let report = profile(
        "v2",
        true,
        [
            Some(Fail),
            Some(Fail),
            Some(Pass),
            Some(Fail),
            Some(Na),
            Some(Fail),
            Some(Fail),
            Some(Pass),
        ],
    )
    .await;
    assert!(report.exit.killed);
}

#[tokio::test]
async fn v3_finishes_in_flight_and_closes_keepalive_cleanly_but_has_no_pre_stop() {
    let report = profile(
        "v3",
        true,
        [
            Some(Fail),
            Some(Pass),
            Some(Pass),
            Some(Pass),
            Some(Pass),
            Some(Pass),
            Some(Pass),
            Some(Pass),
        ],
    )
    .await;
    // One more message: idle keep-alive connections stay open for the
    // lifecycle's drain idle wait (1 s), then close with a FIN.
    let closed = &report.timeline.idle_closed_ms;
    assert!(
        !closed.is_empty() && closed.iter().all(|&ms| ms >= 900),
        "{closed:?}\n{}",
        report.text()
    );
    // New requests are refused at once: a Service's endpoint lag loses them.
    assert!(
        report.meaning.kubernetes_failed_requests > 0,
        "{}",
        report.text()
    );
    assert!(
        report.meaning.fixes[0].starts_with("a preStop sleep of 1 s"),
        "{}",
        report.text()
    );
}

#[tokio::test]
async fn v4_cuts_in_flight_requests() {
    let report = profile(
        "v4",
        true,
        [
            Some(Fail),
            None,
            Some(Fail),
            Some(Fail),
            None,
            Some(Fail),
            Some(Pass),
            Some(Pass),
        ],
    )
    .await;
    assert!(
        report.meaning.fixes[0].starts_with("finish the requests in flight"),
        "{}",
        report.text()
    );
}

#[tokio::test]
async fn v5_turns_readiness_503_and_serves_through_its_pre_stop_delay() {
    let report = profile("v5", true, [Some(Pass); 8]).await;
    assert!(report.passed, "{}", report.text());
    let t = &report.timeline;
    let (off, until) = (t.readiness_off_ms.unwrap(), t.served_until_ms.unwrap());
    // The 500 ms pre-stop: 503 at once, new requests served for about as long.
    assert!(off < 200 && until - off > 200, "{t:?}");
    assert_eq!(report.exit_code(), dropless_check::EXIT_PASS);
}
