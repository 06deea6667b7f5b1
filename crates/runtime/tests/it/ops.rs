//! Operating the proxy: request ids, the access log, metrics, pause and
//! maintenance.

use std::time::Duration;

use dropless_runtime::ops::hold::{HoldCommand, HoldStatus, MaintenancePage};
use dropless_runtime::signal::Shutdown;
use http_body_util::BodyExt;

use crate::fixtures::load::{self, Client, Load};
use crate::fixtures::{self, Harness, Mode};

/// How long a test waits for the access log's writer.
const WAIT: Duration = Duration::from_secs(5);

/// One GET of `path` over HTTP/1.1 (the fast path) or h2c (the hyper
/// path), with `X-Request-Id: id` when given: status, the response's id,
/// body.
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    id: Option<&str>,
    h2: bool,
) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    // HTTP/1.1 in origin form with Host; HTTP/2 with :authority.
    let mut req = if h2 {
        http::Request::get(format!("http://{addr}{path}"))
    } else {
        http::Request::get(path).header("host", addr.to_string())
    };
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, rid, String::from_utf8_lossy(&body).into_owned())
}

/// The access log's lines once it has `n`.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    tokio::time::timeout(WAIT, async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} lines in {}", path.display()))
}

/// Keep-alive load on `h` at [`fixtures::RATE`] for at most 30 s, once 50
/// requests succeeded.
async fn load_running(h: &Harness) -> Load {
    let url = h.url("/sum?a=1&b=2");
    let mut run = Load::start(
        &url,
        fixtures::RATE,
        Duration::from_secs(30),
        Client::KeepAlive,
    )
    .await;
    run.wait_ok(50).await;
    run
}

/// A runtime of `replicas` ready backends writing its access log to the
/// path returned.
async fn start_logged(replicas: usize) -> (tempfile::TempDir, Harness, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let version = fixtures::backend(Mode::Graceful, "v1");
    let service = fixtures::service("web", version, replicas);
    let mut config = fixtures::config(dir.path(), vec![service]);
    let log = dir.path().join("access.log");
    config.access_log = Some(log.clone());
    let h = Harness::start(config).await;
    h.wait_routable(replicas).await;
    (dir, h, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_replica_and_client_and_every_request_is_logged() {
    let (_dir, h, log) = start_logged(1).await;
    let mut ids = Vec::new();
    for h2 in [false, true] {
        // Kept when the client sends one.
        let (status, id, body) = get(h.addr, "/headers", Some("given-1"), h2).await;
        assert_eq!((status, id.as_str()), (200, "given-1"), "h2 {h2}");
        assert!(body.contains("x-request-id: given-1\n"), "{body}");
        ids.push(id);
        // Generated otherwise: the replica and the client get the same.
        let (status, id, body) = get(h.addr, "/headers", None, h2).await;
        assert_eq!((status, id.len()), (200, 32), "h2 {h2}: {id}");
        assert!(body.contains(&format!("x-request-id: {id}\n")), "{body}");
        ids.push(id);
    }
    let lines = log_lines(&log, 4).await;
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert_eq!(line["service"], "web", "{line}");
        assert_eq!(line["replica"], "web-1", "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], "/headers", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["attempts"], 1, "{line}");
        assert!(line["error"].is_null(), "{line}");
        assert!(line["bytes"].as_u64().unwrap() > 0, "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    h.stop(Shutdown::Fast).await;
}

/// The value of the series `name{labels}` in a Prometheus text exposition
/// (labels as written, in their order), or `None`.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// `GET /metrics` from `addr`.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, _, body) = fixtures::get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_during_a_rollout_under_load_agree_with_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 2);
    let config = fixtures::config(dir.path(), vec![service]);
    let (h, metrics) = Harness::start_with_metrics(config).await;
    h.wait_routable(2).await;
    // Not on the proxy's port: there /metrics goes to the application.
    let (_, _, body) = fixtures::get(&h.url("/metrics")).await;
    assert!(!body.contains("dropless_requests_total"), "{body}");
    let mut run = load_running(&h).await;
    let restart = dropless_runtime::rollout::RolloutRequest::Restart {
        plan: dropless_runtime::rollout::Plan::default(),
    };
    h.client().rollout(None, restart).await.expect("restart");
    // During the load: the rollout is counted, its replicas are ready.
    let during = scrape(metrics).await;
    let rollouts = r#"dropless_rollouts_total{service="web",outcome="completed"}"#;
    assert_eq!(series(&during, rollouts), Some(1.0), "{during}");
    let ready = r#"dropless_replicas{service="web",state="ready"}"#;
    assert_eq!(series(&during, ready), Some(2.0), "{during}");
    let starts = r#"dropless_replica_transitions_total{service="web",state="starting"}"#;
    assert_eq!(series(&during, starts), Some(4.0), "{during}");
    let ok = run.ok();
    run.wait_ok(ok + 20).await;
    let report = run.finish().await;
    load::assert_clean(&report, 100);
    // Every request the load saw, the metrics counted, as a 2xx without a
    // dropless error (and the request for `/metrics` above).
    let ok_2xx = r#"dropless_requests_total{service="web",class="2xx"}"#;
    let sent = report.requests.ok as f64 + 1.0;
    let text = tokio::time::timeout(WAIT, async {
        loop {
            let text = scrape(metrics).await;
            if series(&text, ok_2xx) == Some(sent) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never {sent} 2xx in the metrics"));
    for kind in ["upstream", "no_replica", "timeout", "client"] {
        let errors = format!(r#"dropless_request_errors_total{{service="web",kind="{kind}"}}"#);
        assert_eq!(series(&text, &errors), Some(0.0), "{kind}: {text}");
    }
    let retries: f64 = ["not_sent", "idempotent", "stale_connection"]
        .iter()
        .map(|r| {
            let name = format!(r#"dropless_retries_total{{service="web",reason="{r}"}}"#);
            series(&text, &name).expect("retries")
        })
        .sum();
    // A graceful replica closes no connection under a request: nothing is
    // sent twice.
    assert_eq!(retries, 0.0, "{text}");
    // Failed probes are exposed per service and state of the replica (the
    // counting itself is unit-tested in supervisor::probe).
    for state in ["starting", "ready"] {
        let name =
            format!(r#"dropless_probe_failures_total{{service="web",replica_state="{state}"}}"#);
        assert!(series(&text, &name).is_some(), "{state}: {text}");
    }
    let count = r#"dropless_request_duration_seconds_count{service="web"}"#;
    assert_eq!(series(&text, count), Some(sent), "{text}");
    let conns = r#"dropless_client_connections_total{protocol="http1"}"#;
    assert!(series(&text, conns).unwrap() >= 1.0, "{text}");
    assert!(
        series(&text, "dropless_process_open_fds").unwrap() > 0.0,
        "{text}"
    );
    h.stop(Shutdown::Fast).await;
}

fn pause(timeout_ms: u64, spread_ms: u64) -> HoldCommand {
    HoldCommand::Pause {
        timeout: Duration::from_millis(timeout_ms),
        spread: Duration::from_millis(spread_ms),
    }
}

/// The wall-clock end of an access log line's request, in milliseconds.
fn end_ms(line: &serde_json::Value) -> f64 {
    let time = humantime::parse_rfc3339(line["time"].as_str().unwrap()).unwrap();
    let start = time.duration_since(std::time::UNIX_EPOCH).unwrap();
    start.as_secs_f64() * 1000.0 + line["duration_ms"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_pause_under_load_holds_requests_and_releases_them_spread() {
    let (_dir, h, log) = start_logged(2).await;
    let mut run = load_running(&h).await;
    let control = h.client();
    assert_eq!(
        control.hold(pause(30_000, 1000)).await.unwrap(),
        HoldStatus::Paused
    );
    // The maintenance window: requests wait, none fails.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        control.hold(HoldCommand::Resume).await.unwrap(),
        HoldStatus::Open
    );
    let ok = run.ok();
    run.wait_ok(ok + 400).await;
    let report = run.finish().await;
    load::assert_clean(&report, 400);
    // The first held request waited the whole pause.
    assert!(
        report.latency_ms.ttlb.max >= 2000.0,
        "{:?}",
        report.latency_ms
    );
    h.stop(Shutdown::Fast).await;
    let lines = log_lines(&log, report.requests.ok as usize).await;
    let held: Vec<f64> = lines
        .iter()
        .filter(|l| l["duration_ms"].as_f64().unwrap() > 500.0)
        .map(end_ms)
        .collect();
    assert!(held.len() >= 200, "{} requests held", held.len());
    // Released over the 1 s spread, not at once.
    let first = held.iter().copied().fold(f64::MAX, f64::min);
    let last = held.iter().copied().fold(f64::MIN, f64::max);
    assert!(last - first >= 700.0, "released within {} ms", last - first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_past_its_timeout_answers_503_with_retry_after_and_maintenance_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let control = h.client();
    control.hold(pause(300, 0)).await.unwrap();
    let url = h.url("/sum?a=1&b=2");
    let mut run = Load::start(&url, 20, Duration::from_secs(5), Client::KeepAlive).await;
    let (status, headers, _) = fixtures::get_with_headers(url.clone()).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "5");
    run.wait_failed(10).await;
    let report = run.finish().await;
    assert_eq!(report.requests.ok, 0, "{report:?}");
    assert!(report.failures["http_503"] >= 10, "{:?}", report.failures);
    control.hold(HoldCommand::Resume).await.unwrap();
    assert_eq!(fixtures::get(&url).await.0, 200);

    let page = MaintenancePage {
        body: "<h1>back soon</h1>".into(),
        content_type: "text/html".into(),
    };
    let on = HoldCommand::MaintenanceOn { page };
    assert_eq!(control.hold(on).await.unwrap(), HoldStatus::Maintenance);
    for h2 in [false, true] {
        let (status, _, body) = get(h.addr, "/sum?a=1&b=2", None, h2).await;
        assert_eq!(
            (status, body.as_str()),
            (503, "<h1>back soon</h1>"),
            "h2 {h2}"
        );
    }
    let (_, headers, _) = fixtures::get_with_headers(url.clone()).await;
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(headers["content-type"], "text/html");
    // Probes go on: the replica stays ready.
    assert_eq!(h.router.service(None).unwrap().routable().len(), 1);
    control.hold(HoldCommand::MaintenanceOff).await.unwrap();
    assert_eq!(fixtures::get(&url).await.0, 200);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_logs_read_back_interleaved_with_exited_replicas() {
    use dropless_runtime::supervisor::logs::reader::{Filter, Logs};
    let (dir, h, _) = start_logged(2).await;
    let restart = dropless_runtime::rollout::RolloutRequest::Restart {
        plan: dropless_runtime::rollout::Plan::default(),
    };
    h.client().rollout(None, restart).await.expect("restart");
    h.stop(Shutdown::Graceful).await;
    let logs_dir = dir.path().join("logs");
    let mut logs = Logs::open(&logs_dir, None, Filter::default())
        .unwrap()
        .expect("logs");
    let lines = logs.next_lines().unwrap();
    let of = |replica: &str, text: &str| {
        lines
            .iter()
            .position(|l| l.replica == replica && l.text.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} from {replica}: {lines:?}"))
    };
    // The first two replicas exited in the restart; the next two at stop.
    for r in ["web-1", "web-2", "web-3", "web-4"] {
        assert!(of(r, "listening") < of(r, "SIGTERM"), "{lines:?}");
    }
    assert!(of("web-1", "SIGTERM") < of("web-4", "SIGTERM"), "{lines:?}");
    assert!(lines.windows(2).all(|w| w[0].at <= w[1].at), "{lines:?}");
    let only = Filter {
        replica: Some("web-3".into()),
        ..Filter::default()
    };
    let mut logs = Logs::open(&logs_dir, None, only).unwrap().unwrap();
    let lines = logs.next_lines().unwrap();
    assert!(!lines.is_empty() && lines.iter().all(|l| l.replica == "web-3"));
}
