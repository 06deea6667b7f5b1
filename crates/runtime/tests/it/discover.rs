//! DNS discovery (`discover.from = "dns:NAME:PORT"`): replicas follow the
//! answers of a test DNS server that changes them under load.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use dropless_runtime::config::{ServiceConfig, Version};
use dropless_runtime::event::{Event, EventKind, ReplicaState};
use dropless_runtime::signal::Shutdown;
use dropless_runtime::supervisor::discover::DiscoverConfig;

use crate::fixtures::discovery::{self, Backend, Dns, Zone};
use crate::fixtures::load::{Client, Load, assert_clean};
use crate::fixtures::{self, Harness, RATE};

/// Resolution interval of the tests: short, so that a change shows soon.
const INTERVAL: Duration = Duration::from_millis(100);

/// A service whose replicas are the addresses `dns` gives for `app.test`,
/// on `port`.
fn discovered(port: u16, dns: &Dns) -> ServiceConfig {
    let mut s = fixtures::service("app", Version::default(), 1);
    let mut discover = DiscoverConfig::new(format!("dns:app.test:{port}").parse().unwrap());
    discover.interval = INTERVAL;
    discover.nameserver = Some(dns.addr);
    s.discover = Some(discover);
    s
}

/// A runtime whose one service is [`discovered`], once it has `routable`
/// ready replicas.
async fn serve(port: u16, dns: &Dns, routable: usize) -> (tempfile::TempDir, Harness) {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(fixtures::config(dir.path(), vec![discovered(port, dns)])).await;
    h.wait_routable(routable).await;
    (dir, h)
}

/// Keep-alive load through `h` at [`RATE`], once `ok` requests succeeded.
async fn load_until(h: &Harness, ok: u64) -> Load {
    let url = h.url("/sum?a=1&b=2");
    let mut load = Load::start(&url, RATE, Duration::from_secs(30), Client::KeepAlive).await;
    load.wait_ok(ok).await;
    load
}

fn ips(backends: &[&Backend]) -> Zone {
    Zone::Addrs(backends.iter().map(|b| b.ip()).collect())
}

fn is_replica(e: &Event, at: SocketAddr, state: ReplicaState) -> bool {
    matches!(&e.kind, EventKind::Replica { addr, state: s, .. } if *addr == at && *s == state)
}

fn is_discovery(e: &Event, state: &str) -> bool {
    matches!(&e.kind, EventKind::Discovery { state: s, .. } if s == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_removed_mid_load_fails_no_request() {
    let (port, backends) = discovery::backends(3).await;
    let [kept, other, gone] = [&backends[0], &backends[1], &backends[2]];
    let dns = Dns::start(ips(&[kept, other, gone])).await;
    let (_dir, mut h) = serve(port, &dns, 3).await;
    let mut load = load_until(&h, 100).await;
    assert!(gone.served() > 0, "the address to remove got no traffic");
    dns.set(ips(&[kept, other]));
    // Drained and retired, never signalled: its process is not ours.
    let exited = fixtures::next_event(&mut h.events, |e| {
        is_replica(e, gone.addr, ReplicaState::Exited)
    })
    .await;
    let EventKind::Replica { detail, .. } = exited.kind else {
        unreachable!()
    };
    assert_eq!(detail.as_deref(), Some("unmanaged target, not signalled"));
    let served = gone.served();
    let before = load.ok();
    load.wait_ok(before + 100).await;
    assert_eq!(gone.served(), served, "a removed address got requests");
    let report = load.finish().await;
    assert_clean(&report, before + 100);
    let status = h.router.service(None).unwrap().status();
    let addrs: BTreeSet<_> = status.replicas.iter().map(|r| r.addr).collect();
    assert_eq!(addrs, BTreeSet::from([kept.addr, other.addr]));
    let discovery = status.discovery.expect("a discovered service shows it");
    assert_eq!(discovery.source, format!("dns:app.test:{port}"));
    assert_eq!(discovery.addrs, [kept.addr, other.addr]);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_added_gets_traffic_once_ready_and_not_before() {
    let (port, backends) = discovery::backends(2).await;
    let [first, late] = [&backends[0], &backends[1]];
    late.set_ready(false);
    let dns = Dns::start(ips(&[first])).await;
    let (_dir, mut h) = serve(port, &dns, 1).await;
    let mut load = load_until(&h, 50).await;
    dns.set(ips(&[first, late]));
    fixtures::next_event(&mut h.events, |e| {
        is_replica(e, late.addr, ReplicaState::Starting)
    })
    .await;
    // Probed, failing its probe: a second of load and none of it.
    let before = load.ok();
    load.wait_ok(before + RATE as u64).await;
    assert_eq!(late.served(), 0, "a replica that is not ready got traffic");
    assert_eq!(h.router.service(None).unwrap().routable().len(), 1);
    late.set_ready(true);
    h.wait_routable(2).await;
    let mut rounds = 0;
    while late.served() == 0 {
        rounds += 1;
        assert!(rounds < 20, "a ready discovered replica got no traffic");
        let now = load.ok();
        load.wait_ok(now + 20).await;
    }
    let report = load.finish().await;
    assert_clean(&report, before + RATE as u64);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_failure_or_one_empty_answer_keeps_the_replicas() {
    let (port, backends) = discovery::backends(2).await;
    let both = ips(&[&backends[0], &backends[1]]);
    let dns = Dns::start(both.clone()).await;
    let (_dir, mut h) = serve(port, &dns, 2).await;
    let service = h.router.service(None).unwrap();

    dns.set(Zone::ServFail);
    let failing = fixtures::next_event(&mut h.events, |e| is_discovery(e, "failing")).await;
    assert!(
        failing
            .to_string()
            .contains("keeping the last 2 replica(s)"),
        "{failing}"
    );
    dns.wait_queries(5).await;
    assert_eq!(service.routable().len(), 2);
    let shown = service.status().discovery.unwrap();
    assert!(shown.failing.is_some(), "{shown:?}");
    assert_eq!(shown.addrs.len(), 2);
    dns.set(both);
    fixtures::next_event(&mut h.events, |e| is_discovery(e, "resolving")).await;

    // One empty answer between good ones: a hiccup, not an empty service.
    dns.set_once(Zone::NxDomain);
    dns.wait_queries(5).await;
    assert_eq!(service.routable().len(), 2);
    let mut seen = Vec::new();
    while let Ok(e) = h.events.try_recv() {
        seen.push(e.to_string());
    }
    let failed_again = seen.iter().filter(|e| e.contains(" failing: ")).count();
    assert_eq!(failed_again, 0, "failure logged more than once: {seen:?}");
    assert!(
        !seen.iter().any(|e| e.contains("draining")),
        "a replica drained: {seen:?}"
    );

    // Confirmed, the empty answer empties the service.
    dns.set(Zone::NxDomain);
    h.wait_routable(0).await;
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_discovery_but_does_not_switch_it_off() {
    let (port, backends) = discovery::backends(2).await;
    let dns = Dns::start(ips(&[&backends[0]])).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fixtures::config(dir.path(), vec![discovered(port, &dns)]);
    let h = Harness::start(config.clone()).await;
    h.wait_routable(1).await;
    let file = std::sync::Arc::new(std::sync::Mutex::new(config.clone()));
    let read = std::sync::Arc::clone(&file);
    h.reloader.set_source(std::sync::Arc::new(move || {
        Ok(Some(read.lock().unwrap().clone()))
    }));

    // Another nameserver, read from the next round on.
    let other = Dns::start(ips(&[&backends[0], &backends[1]])).await;
    let mut changed = config.clone();
    changed.services[0].discover.as_mut().unwrap().nameserver = Some(other.addr);
    *file.lock().unwrap() = changed;
    let report = h.reloader.reload().await.unwrap();
    assert!(
        report
            .lines
            .contains(&"service app: discover applied".to_string()),
        "{report:?}"
    );
    h.wait_routable(2).await;

    let mut switched = config;
    switched.services[0].discover = None;
    switched.services[0].version = Version::target(backends[0].addr);
    *file.lock().unwrap() = switched;
    let refused = h.reloader.reload().await.unwrap_err().to_string();
    assert!(
        refused.contains("switch between discover and version"),
        "{refused}"
    );
    assert_eq!(h.router.service(None).unwrap().routable().len(), 2);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_dies_while_still_listed_fails_no_get() {
    let (port, mut backends) = discovery::backends(2).await;
    let dns = Dns::start(ips(&[&backends[0], &backends[1]])).await;
    let (_dir, mut h) = serve(port, &dns, 2).await;
    let mut load = load_until(&h, 100).await;
    // Killed before it left DNS (the demo's v4 under an orchestrator):
    // requests cut or refused there are sent again to the other.
    let dead = backends.pop().unwrap();
    let at = dead.addr;
    drop(dead);
    fixtures::next_event(&mut h.events, |e| is_replica(e, at, ReplicaState::Failed)).await;
    // Still listed: probed again as a new replica, not routed to.
    fixtures::next_event(&mut h.events, |e| is_replica(e, at, ReplicaState::Starting)).await;
    let before = load.ok();
    load.wait_ok(before + 100).await;
    assert_eq!(h.router.service(None).unwrap().routable().len(), 1);
    let report = load.finish().await;
    assert_clean(&report, before + 100);
    h.stop(Shutdown::Fast).await;
}
