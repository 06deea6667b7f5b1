//! Replicas: process group, PORT, logs, state machine, probes, replacement.

use std::time::Duration;

use dropless_runtime::config::{ServiceConfig, Version};
use dropless_runtime::event::EventKind;
use dropless_runtime::event::ReplicaState::*;
use dropless_runtime::rollout::{Plan, RolloutRequest};
use dropless_runtime::signal::Shutdown;

use crate::fixtures::load::Client;
use crate::fixtures::{self, Harness, Mode, UnderLoad};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_starts_ready_serves_and_retires_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let mut h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    let first = fixtures::next_event(&mut h.events, |e| {
        matches!(e.kind, EventKind::Replica { .. })
    })
    .await;
    let EventKind::Replica {
        replica,
        state,
        addr,
        ..
    } = first.kind
    else {
        unreachable!()
    };
    assert_eq!((replica.as_str(), state), ("web-1", Starting));
    assert!(addr.ip().is_loopback());
    h.wait_routable(1).await;

    let (status, version, body) = fixtures::get(&h.url("/sum?a=1&b=2")).await;
    assert_eq!(
        (status, version.as_deref(), body.as_str()),
        (200, Some("v1"), "{\"result\":3}")
    );

    let status = h.router.service(None).unwrap().status();
    let r = &status.replicas[0];
    let pid = r.pid.expect("managed replica has a pid");
    // Its own process group, and PORT is the address the runtime chose.
    assert_eq!(
        nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))
            .unwrap()
            .as_raw(),
        pid as i32
    );
    let log = std::fs::read_to_string(r.log.as_ref().unwrap()).unwrap();
    assert!(
        log.contains(&format!("listening on {}", r.addr.port())),
        "{log}"
    );

    let mut events = h.events.resubscribe();
    h.stop(Shutdown::Graceful).await;
    let states = fixtures::states_of(&mut events, "web-1").await;
    assert_eq!(states, vec![Draining, Stopping, Exited]);
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err(),
        "process gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_is_used_without_a_health_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", fixtures::backend(Mode::NeverReady, "v1"), 1);
    service.probe.path = String::new();
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    // Health says 503, but a TCP connect succeeds: ready.
    h.wait_routable(1).await;
    h.stop(Shutdown::Fast).await;
}

/// Stops a service whose one replica ignores SIGTERM and whose grace is
/// `grace`; returns what the replica's exit said and how long it took.
async fn stop_a_replica_ignoring_sigterm(grace: Duration, how: Shutdown) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", fixtures::backend(Mode::IgnoreTerm, "v1"), 1);
    service.retire.grace = grace;
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let mut events = h.events.resubscribe();
    let began = std::time::Instant::now();
    h.stop(how).await;
    let exited = fixtures::next_event(&mut events, |e| {
        matches!(&e.kind, EventKind::Replica { state: Exited, .. })
    })
    .await;
    let EventKind::Replica { detail, .. } = exited.kind else {
        unreachable!()
    };
    (detail.unwrap(), began.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ignored_means_sigkill_after_grace() {
    let (detail, took) =
        stop_a_replica_ignoring_sigterm(Duration::from_millis(300), Shutdown::Graceful).await;
    assert!(detail.contains("killed after grace"), "{detail}");
    assert!(took >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_stop_kills_at_once_and_says_so_not_that_the_grace_passed() {
    let (detail, _) =
        stop_a_replica_ignoring_sigterm(Duration::from_secs(30), Shutdown::Fast).await;
    assert!(detail.contains("killed at once by a fast stop"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_is_replaced_and_gets_no_traffic_meanwhile() {
    let service = fixtures::service("web", fixtures::demo("v4", "v1", &[]), 2);
    let mut run = UnderLoad::start(service, Client::KeepAlive).await;
    let victim = run.h.router.service(None).unwrap().status().replicas[0].clone();
    let group = nix::unistd::Pid::from_raw(victim.pid.unwrap() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
    let failed = fixtures::next_event(&mut run.h.events, |e| matches!(&e.kind, EventKind::Replica { replica, state: Failed, .. } if *replica == victim.name)).await;
    assert!(failed.to_string().contains("exited on its own"), "{failed}");
    // A replacement (a new replica name) becomes ready.
    fixtures::next_event(&mut run.h.events, |e| matches!(&e.kind, EventKind::Replica { replica, state: Ready, .. } if *replica != victim.name)).await;
    run.h.wait_routable(2).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_is_probed_routed_drained_and_never_signalled() {
    let (mut first, first_addr) = fixtures::spawn_demo("v3", "t1");
    let (_second, second_addr) = fixtures::spawn_demo("v3", "t2");
    let service = fixtures::service("web", Version::target(first_addr), 1);
    let mut run = UnderLoad::start(service, Client::KeepAlive).await;
    assert_eq!(
        fixtures::get(&run.h.url("/sum?a=1&b=2")).await.1.as_deref(),
        Some("t1")
    );
    let deploy = RolloutRequest::Deploy {
        version: Version::target(second_addr),
        plan: Plan::default(),
    };
    run.h
        .client()
        .rollout(None, deploy)
        .await
        .expect("deploy to the second target");
    assert_eq!(
        fixtures::get(&run.h.url("/sum?a=1&b=2")).await.1.as_deref(),
        Some("t2")
    );
    let exited = fixtures::next_event(&mut run.h.events, |e| matches!(&e.kind, EventKind::Replica { replica, state: Exited, .. } if replica == "web-1")).await;
    assert!(exited.to_string().contains("not signalled"), "{exited}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first target still runs"
    );
    run.finish().await;
    assert!(
        first.try_wait().unwrap().is_none(),
        "stopping serve leaves targets alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_given_its_listening_socket_when_its_version_takes_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut bound = fixtures::backend(Mode::Graceful, "v1");
    bound.socket_activation = false;
    let config = fixtures::config(
        dir.path(),
        vec![
            fixtures::service("passed", fixtures::backend(Mode::Graceful, "v1"), 2),
            ServiceConfig {
                hosts: vec!["bound.test".into()],
                ..fixtures::service("bound", bound, 1)
            },
        ],
    );
    let h = Harness::start(config).await;
    h.wait_routable_in(Some("passed"), 2).await;
    h.wait_routable_in(Some("bound"), 1).await;
    for _ in 0..4 {
        let (status, _, body) = fixtures::get(&h.url("/activation")).await;
        assert_eq!((status, body.as_str()), (200, "passed"));
    }
    let (status, _, body) = fixtures::get_with_host(&h.url("/activation"), "bound.test").await;
    assert_eq!((status, body.as_str()), (200, "bound"));
    h.stop(Shutdown::Fast).await;
}
