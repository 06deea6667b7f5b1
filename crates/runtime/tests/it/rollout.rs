//! Rollouts under open-model load: zero failed requests, zero dropped
//! iterations.

use std::time::Duration;

use dropless_runtime::config::Strategy;
use dropless_runtime::rollout::{Plan, RolloutRequest};

use crate::fixtures::load::Client;
use crate::fixtures::{self, Mode, UnderLoad};

/// The demo service in `profile`: `/sum` takes 100 ms.
fn demo(profile: &str, label: &str) -> dropless_runtime::config::Version {
    fixtures::demo(profile, label, &[])
}

async fn rolling_restarts_under_load(profile: &str, client: Client) {
    let mut service = fixtures::service("web", demo(profile, "v1"), 3);
    if profile == "v1" {
        // v1 has no health endpoints: TCP probe; it ignores SIGTERM: short grace.
        service.probe.path = String::new();
        service.retire.grace = Duration::from_millis(300);
    }
    let run = UnderLoad::start(service, client).await;
    let control = run.h.client();
    for _ in 0..3 {
        let report = control
            .rollout(
                None,
                RolloutRequest::Restart {
                    plan: Plan::default(),
                },
            )
            .await
            .expect("restart");
        assert_eq!(
            (report.started.len(), report.retired.len()),
            (3, 3),
            "{report:?}"
        );
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rolling_restarts_demo_v4_keepalive() {
    rolling_restarts_under_load("v4", Client::KeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rolling_restarts_demo_v1_no_keepalive() {
    rolling_restarts_under_load("v1", Client::NoKeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rolling_restarts_demo_v4_h2() {
    rolling_restarts_under_load("v4", Client::H2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_switches_version_and_blue_green_too() {
    let service = fixtures::service("web", demo("v4", "v1"), 2);
    let run = UnderLoad::start(service, Client::KeepAlive).await;
    let control = run.h.client();
    let v2 = RolloutRequest::Deploy {
        version: demo("v4", "v2"),
        plan: Plan::default(),
    };
    control.rollout(None, v2).await.expect("deploy v2");
    assert_eq!(
        fixtures::get(&run.h.url("/sum?a=1&b=2")).await.1.as_deref(),
        Some("v2")
    );
    let plan = Plan {
        strategy: Some(Strategy::BlueGreen),
        ..Plan::default()
    };
    let v3 = RolloutRequest::Deploy {
        version: demo("v4", "v3"),
        plan,
    };
    control.rollout(None, v3).await.expect("blue-green v3");
    assert_eq!(
        fixtures::get(&run.h.url("/sum?a=1&b=2")).await.1.as_deref(),
        Some("v3")
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_two_five_one_under_load() {
    let service = fixtures::service("web", demo("v4", "v1"), 2);
    let run = UnderLoad::start(service, Client::KeepAlive).await;
    let control = run.h.client();
    let web = run.h.router.service(None).unwrap().clone();
    control
        .rollout(None, RolloutRequest::Scale { replicas: 5 })
        .await
        .expect("scale 5");
    assert_eq!(web.routable().len(), 5);
    control
        .rollout(None, RolloutRequest::Scale { replicas: 1 })
        .await
        .expect("scale 1");
    assert_eq!(web.routable().len(), 1);
    run.finish().await;
}

async fn failed_deploy_is_aborted(bad: dropless_runtime::config::Version, expect: &str) {
    let mut service = fixtures::service("web", demo("v4", "v1"), 2);
    service.probe.ready_timeout = Duration::from_millis(800);
    service.retire.grace = Duration::from_millis(300);
    let run = UnderLoad::start(service, Client::KeepAlive).await;
    let request = RolloutRequest::Deploy {
        version: bad,
        plan: Plan::default(),
    };
    let err = run
        .h
        .client()
        .rollout(None, request)
        .await
        .expect_err("aborted");
    let message = err.to_string();
    assert!(
        message.contains("aborted")
            && message.contains("web-3")
            && message.contains("GET /healthz"),
        "{message}"
    );
    assert!(message.contains(expect), "{message}");
    let web = run.h.router.service(None).unwrap();
    assert_eq!(
        web.desired().current.generation,
        1,
        "old release still desired"
    );
    assert_eq!(
        fixtures::get(&run.h.url("/sum?a=1&b=2")).await.1.as_deref(),
        Some("v1")
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_version_that_exits_at_once_is_aborted() {
    // An unknown profile: the demo exits 2 before binding.
    failed_deploy_is_aborted(demo("v99", "v2"), "exited (exit status: 2)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_never_ready_version_is_aborted() {
    // v1 has no /healthz (404): never ready.
    failed_deploy_is_aborted(demo("v1", "v2"), "not ready after 800ms").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_crashing_test_backend_is_aborted() {
    failed_deploy_is_aborted(fixtures::backend(Mode::Crash, "v2"), "exit status: 3").await;
}
