//! Reload of a running runtime under open-model load: a proxy setting
//! applied to the next request, a service added, then removed while a
//! request to it is in flight (it drains, its replicas exit), and a file
//! refused with nothing changed. Not one request of the load fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dropless_runtime::config::Config;
use dropless_runtime::event::{EventKind, ReplicaState};
use dropless_runtime::signal::Shutdown;

use crate::fixtures::{self, Harness, load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_apply_settings_add_and_drain_services_and_drop_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let web = fixtures::service("web", fixtures::demo("v4", "web", &[]), 2);
    let first = fixtures::config(dir.path(), vec![web]);
    let h = Harness::start(first.clone()).await;
    h.wait_routable_in(Some("web"), 2).await;
    let file: Arc<Mutex<Result<Config, String>>> = Arc::new(Mutex::new(Ok(first.clone())));
    let read = Arc::clone(&file);
    h.reloader
        .set_source(Arc::new(move || read.lock().unwrap().clone().map(Some)));
    let mut events = h.events.resubscribe();
    let url = h.url("/sum?a=1&b=2");
    let mut run = load::Load::start(
        &url,
        fixtures::RATE,
        Duration::from_secs(60),
        load::Client::KeepAlive,
    )
    .await;
    run.wait_ok(50).await;
    let client = h.client();
    let reload = |config: Result<Config, String>| {
        *file.lock().unwrap() = config;
        client.reload()
    };

    // A service added: started, routed by its host.
    let mut api = fixtures::service(
        "api",
        fixtures::demo("v4", "api", &["--work-ms", "1000"]),
        1,
    );
    api.hosts = vec!["api.test".into()];
    let mut with_api = first.clone();
    with_api.services.push(api);
    let report = reload(Ok(with_api.clone())).await.unwrap();
    assert_eq!(report.lines, ["service api added: 1 replica(s) starting"]);
    h.wait_routable_in(Some("api"), 1).await;
    let api_url = format!("http://{}/sum?a=1&b=2", h.addr);
    let (status, headers, _) = fixtures::get_with_host(&api_url, "api.test").await;
    assert_eq!(
        (status, &headers["x-version"]),
        (200, &"api".parse().unwrap())
    );

    // A shorter response timeout applies to the next request: a 504 at
    // once where the replica takes 1 s.
    let mut short = with_api.clone();
    short.proxy.response_timeout = Duration::from_millis(200);
    let report = reload(Ok(short.clone())).await.unwrap();
    assert_eq!(report.lines, ["proxy: response_timeout applied"]);
    let (status, _, _) = fixtures::get_with_host(&api_url, "api.test").await;
    assert_eq!(status, 504);

    // A file that does not validate changes nothing.
    let mut invalid = short.clone();
    invalid.proxy.max_attempts = 0;
    invalid.proxy.queue_timeout = Duration::from_millis(1);
    let refused = reload(Ok(invalid)).await.unwrap_err();
    let refused = refused.to_string();
    assert!(
        refused.contains("nothing changed") && refused.contains("max_attempts"),
        "{refused}"
    );
    let (status, _, _) = fixtures::get_with_host(&api_url, "api.test").await;
    assert_eq!(status, 504, "the short timeout is still the one applied");

    // Removed while a request to it is in flight: routing stops, the
    // request finishes, then its replica is retired.
    reload(Ok(with_api)).await.unwrap();
    let api_sup = h.router.service(Some("api")).unwrap();
    let slow = tokio::spawn(async move { fixtures::get_with_host(&api_url, "api.test").await });
    fixtures::wait_in_flight(&api_sup, 1).await;
    let report = reload(Ok(first)).await.unwrap();
    assert_eq!(
        report.lines,
        ["service api removed: its replicas drain and stop"]
    );
    assert!(h.router.service(Some("api")).is_none());
    let (status, headers, _) = slow.await.unwrap();
    assert_eq!(
        (status, &headers["x-version"]),
        (200, &"api".parse().unwrap())
    );
    fixtures::next_event(&mut events, |e| {
        e.service == "api"
            && matches!(
                e.kind,
                EventKind::Replica {
                    state: ReplicaState::Exited,
                    ..
                }
            )
    })
    .await;
    // Then the supervisor lets go of it.
    let mut topology = api_sup.watch_topology();
    let gone = tokio::time::timeout(fixtures::WAIT, async {
        while !api_sup.replicas().is_empty() {
            topology.changed().await.unwrap();
        }
    });
    gone.await
        .unwrap_or_else(|_| panic!("api replica not removed: {:?}", api_sup.status()));

    let before = run.ok();
    run.wait_ok(before + 20).await;
    let report = run.finish().await;
    load::assert_clean(&report, before + 20);
    h.stop(Shutdown::Graceful).await;
}
