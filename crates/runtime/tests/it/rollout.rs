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

/// A service of `replicas` demo replicas in `profile`. v1 has no health
/// endpoints (TCP probe) and ignores SIGTERM (short grace, then SIGKILL).
fn demo_service(profile: &str, replicas: usize) -> dropless_runtime::config::ServiceConfig {
    let mut service = fixtures::service("web", demo(profile, "v1"), replicas);
    if profile == "v1" {
        service.probe.path = String::new();
        service.retire.grace = Duration::from_millis(300);
    }
    service
}

async fn rolling_restarts_under_load(profile: &str, client: Client) {
    let run = UnderLoad::start(demo_service(profile, 3), client).await;
    let control = run.h.client();
    for _ in 0..3 {
        let restart = RolloutRequest::Restart {
            plan: Plan::default(),
        };
        let report = control.rollout(None, restart).await.expect("restart");
        assert_eq!(
            (report.started.len(), report.retired.len()),
            (3, 3),
            "{report:?}"
        );
    }
    run.finish().await;
}

/// A rolling deploy of v2, then a blue-green deploy of v3: `x-version`
/// switches each time.
async fn deploy_then_blue_green_under_load(profile: &str, client: Client) {
    let run = UnderLoad::start(demo_service(profile, 2), client).await;
    let control = run.h.client();
    let url = run.h.url("/sum?a=1&b=2");
    let blue_green = Plan {
        strategy: Some(Strategy::BlueGreen),
        ..Plan::default()
    };
    for (label, plan) in [("v2", Plan::default()), ("v3", blue_green)] {
        let deploy = RolloutRequest::Deploy {
            version: demo(profile, label),
            plan,
        };
        control.rollout(None, deploy).await.expect("deploy");
        assert_eq!(fixtures::get(&url).await.1.as_deref(), Some(label));
    }
    run.finish().await;
}

async fn scale_two_five_one_under_load(profile: &str, client: Client) {
    let run = UnderLoad::start(demo_service(profile, 2), client).await;
    let control = run.h.client();
    let web = run.h.router.service(None).unwrap().clone();
    for n in [5, 1] {
        control
            .rollout(
                None,
                RolloutRequest::Scale {
                    replicas: n,
                    allow_zero: false,
                },
            )
            .await
            .expect("scale");
        // The rollout's promise: n members, each ready when it joined. One
        // may be out of routing a moment later if its probes failed since
        // (a starved CI machine), and back once they pass.
        assert_eq!(web.members().len(), n);
        assert_eq!(web.desired().replicas, n);
        run.h.wait_routable(n).await;
    }
    run.finish().await;
}

/// One test per profile (v4: exits at once on SIGTERM; v1: ignores it) and
/// client (keep-alive, no keep-alive, h2) of `scenario`.
macro_rules! matrix {
    ($scenario:ident: $($name:ident => $profile:literal, $client:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $scenario($profile, Client::$client).await;
            }
        )*
    };
}

matrix! { rolling_restarts_under_load:
    three_rolling_restarts_v4_keepalive => "v4", KeepAlive;
    three_rolling_restarts_v4_no_keepalive => "v4", NoKeepAlive;
    three_rolling_restarts_v4_h2 => "v4", H2;
    three_rolling_restarts_v1_keepalive => "v1", KeepAlive;
    three_rolling_restarts_v1_no_keepalive => "v1", NoKeepAlive;
    three_rolling_restarts_v1_h2 => "v1", H2;
}

matrix! { deploy_then_blue_green_under_load:
    deploy_and_blue_green_v4_keepalive => "v4", KeepAlive;
    deploy_and_blue_green_v4_h2 => "v4", H2;
    deploy_and_blue_green_v1_no_keepalive => "v1", NoKeepAlive;
}

matrix! { scale_two_five_one_under_load:
    scale_2_5_1_v4_keepalive => "v4", KeepAlive;
    scale_2_5_1_v4_no_keepalive => "v4", NoKeepAlive;
    scale_2_5_1_v1_h2 => "v1", H2;
}

/// Deploys `bad`: the rollout is aborted with an error containing `expect`
/// and, after the name of the replica's log, each of `logged` (what the
/// replica wrote).
async fn failed_deploy_is_aborted(
    bad: dropless_runtime::config::Version,
    expect: &str,
    logged: &[&str],
) {
    let mut service = demo_service("v4", 2);
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
    let (_, tail) = message
        .split_once("of its log ")
        .unwrap_or_else(|| panic!("no log lines in: {message}"));
    assert!(tail.contains("web-3."), "the replica's own log: {message}");
    for line in logged {
        assert!(tail.contains(line), "{line:?} not in: {message}");
    }
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
    failed_deploy_is_aborted(
        demo("v99", "v2"),
        "exited (exit status: 2)",
        &["invalid value 'v99'"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_never_ready_version_is_aborted() {
    // v1 has no /healthz (404): never ready.
    failed_deploy_is_aborted(demo("v1", "v2"), "not ready after 800ms", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_of_a_crashing_test_backend_is_aborted() {
    failed_deploy_is_aborted(
        fixtures::backend(Mode::Crash, "v2"),
        "exit status: 3",
        &["crashing on purpose"],
    )
    .await;
}

/// The Kubernetes emulation reproduces the "Adventures in zero-downtime" talk: routing stops only after
/// the endpoint delay, so a replica that exits at once on SIGTERM (v4) fails
/// requests unless the pre-stop delay outlasts the endpoint delay.
async fn restart_like_kubernetes(pre_stop: Duration) -> dropless_load::Report {
    let mut service = demo_service("v4", 2);
    service.retire.kubernetes_endpoint_delay = Some(Duration::from_millis(500));
    service.retire.pre_stop = pre_stop;
    // A cluster's kube-proxy does not retry on another pod.
    let mut run =
        UnderLoad::start_with(service, Client::KeepAlive, |c| c.proxy.max_attempts = 1).await;
    let restart = RolloutRequest::Restart {
        plan: Plan::default(),
    };
    run.h
        .client()
        .rollout(None, restart)
        .await
        .expect("restart");
    let before = run.load.ok();
    run.load.wait_ok(before + 20).await;
    let report = run.load.finish().await;
    run.h.stop(dropless_runtime::signal::Shutdown::Fast).await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_emulation_fails_requests_without_a_pre_stop() {
    let report = restart_like_kubernetes(Duration::ZERO).await;
    assert!(report.requests.failed > 0, "{:?}", report.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_emulation_with_a_long_enough_pre_stop_drops_nothing() {
    let report = restart_like_kubernetes(Duration::from_millis(800)).await;
    crate::fixtures::load::assert_clean(&report, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_under_load_returns_to_the_previous_version() {
    let run = UnderLoad::start(demo_service("v4", 2), Client::KeepAlive).await;
    let control = run.h.client();
    let url = run.h.url("/sum?a=1&b=2");
    let deploy = RolloutRequest::Deploy {
        version: demo("v4", "v2"),
        plan: Plan::default(),
    };
    control.rollout(None, deploy).await.expect("deploy v2");
    assert_eq!(fixtures::get(&url).await.1.as_deref(), Some("v2"));
    let report = control
        .rollout(
            None,
            RolloutRequest::Rollback {
                plan: Plan::default(),
            },
        )
        .await
        .expect("rollback");
    assert_eq!(report.desired.current.generation, 1, "{report:?}");
    assert_eq!(fixtures::get(&url).await.1.as_deref(), Some("v1"));
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_max_unavailable_instead_of_surge() {
    let run = UnderLoad::start(demo_service("v4", 3), Client::KeepAlive).await;
    let web = run.h.router.service(None).unwrap().clone();
    let mut events = run.h.events.resubscribe();
    let plan = Plan {
        max_surge: Some(0),
        max_unavailable: Some(1),
        ..Plan::default()
    };
    let report = run
        .h
        .client()
        .rollout(None, RolloutRequest::Restart { plan })
        .await
        .expect("restart");
    assert_eq!(
        (report.started.len(), report.retired.len()),
        (3, 3),
        "{report:?}"
    );
    // Never more than 3 replicas at once: each new one starts after an old one drained.
    let mut alive = 3i32;
    let mut most = alive;
    while let Ok(e) = events.try_recv() {
        if let dropless_runtime::event::EventKind::Replica { state, .. } = e.kind {
            match state {
                dropless_runtime::event::ReplicaState::Starting => alive += 1,
                dropless_runtime::event::ReplicaState::Draining => alive -= 1,
                _ => {}
            }
            most = most.max(alive);
        }
    }
    assert_eq!(most, 3, "surge above the desired count");
    assert_eq!(web.routable().len(), 3);
    run.finish().await;
}

/// A version whose first start finds its port taken (as when another
/// process binds the port between the runtime's check and the command's own
/// bind), then starts normally: the rollout starts it again on another port
/// instead of aborting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_port_was_taken_is_started_again_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("first-start-done");
    let backend = fixtures::backend(Mode::Graceful, "v2");
    // The test backend binds PORT itself: no socket is passed.
    let mut command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            "if [ ! -e '{}' ]; then touch '{}'; echo 'Error: Address already in use (os error 98)' >&2; exit 1; fi; exec \"$@\"",
            mark.display(),
            mark.display()
        ),
        "sh".to_owned(),
    ];
    command.extend(backend.command.iter().cloned());
    let mut version = dropless_runtime::config::Version::command(command);
    version.env = backend.env.clone();
    let run = UnderLoad::start(
        fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1),
        Client::KeepAlive,
    )
    .await;
    let request = RolloutRequest::Deploy {
        version,
        plan: Plan::default(),
    };
    let report = run
        .h
        .client()
        .rollout(None, request)
        .await
        .expect("the rollout completes");
    assert!(mark.exists(), "the first start found its port taken");
    assert_eq!(report.started.len(), 2, "{report:?}");
    assert_eq!(
        fixtures::get(&run.h.url("/sum?a=1&b=2")).await.1.as_deref(),
        Some("v2")
    );
    let load = run.finish().await;
    assert_eq!(load.requests.failed, 0);
}
