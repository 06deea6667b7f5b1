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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_services_are_routed_by_host() {
    let dir = tempfile::tempdir().unwrap();
    let quote = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let api = fixtures::demo("v4", "api-v1", &[]).command;
    let web = fixtures::demo("v4", "web-v1", &[]).command;
    let toml = format!(
        r#"
        state_dir = {dir:?}
        [proxy]
        listen = "127.0.0.1:0"
        [[service]]
        name = "api"
        hosts = ["api.test"]
        replicas = 2
        version.command = [{api}]
        probe.fast_interval = "20ms"
        [[service]]
        name = "web"
        version.command = [{web}]
        probe.fast_interval = "20ms"
        "#,
        dir = dir.path(),
        api = quote(&api),
        web = quote(&web),
    );
    let path = dir.path().join("dropless.toml");
    std::fs::write(&path, toml).unwrap();
    let config = dropless_runtime::config::Config::from_file(&path).expect("valid TOML");
    let h = Harness::start(config).await;
    h.wait_routable_in(Some("api"), 2).await;
    h.wait_routable_in(Some("web"), 1).await;
    for (host, label) in [
        ("api.test", "api-v1"),
        ("API.test:8080", "api-v1"),
        ("other.test", "web-v1"),
    ] {
        let url = format!("http://{}/sum?a=1&b=2", h.addr);
        let (status, headers, _) = fixtures::get_with_host(&url, host).await;
        assert_eq!(
            (status, headers.get("x-version").unwrap().to_str().unwrap()),
            (200, label),
            "{host}"
        );
    }
    let err = h
        .client()
        .rollout(
            None,
            dropless_runtime::rollout::RolloutRequest::Scale {
                replicas: 1,
                allow_zero: false,
            },
        )
        .await
        .expect_err("ambiguous service");
    assert!(err.to_string().contains("name one with --service"), "{err}");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through_and_closes_at_the_end_of_the_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    service.retire.drain_timeout = Duration::from_millis(500);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let (mut ws, head) = fixtures::websocket(h.addr).await;
    assert!(head.contains("upgrade: websocket"), "{head}");
    ws.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    ws.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");

    // A restart drains the replica; the tunnel is not a request in flight:
    // the drain does not wait for it, and it is closed at the drain's end,
    // before the replica's SIGTERM.
    let restart = dropless_runtime::rollout::RolloutRequest::Restart {
        plan: Default::default(),
    };
    h.client().rollout(None, restart).await.expect("restart");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(fixtures::WAIT, ws.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "tunnel closed at the end of the drain");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_survive_idle_release_and_pipelining() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let get = "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    // Read until `n` complete responses (each ends with its Content-Length body).
    async fn responses(s: &mut tokio::net::TcpStream, n: usize) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let complete = |text: &str| {
            let mut count = 0;
            let mut rest = text;
            while let Some(i) = rest.find("\r\n\r\n") {
                let head = &rest[..i];
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if rest.len() < i + 4 + len {
                    break;
                }
                count += 1;
                rest = &rest[i + 4 + len..];
            }
            count
        };
        while complete(&String::from_utf8_lossy(&out)) < n {
            let read = tokio::time::timeout(fixtures::WAIT, s.read(&mut buf))
                .await
                .expect("responses in time")
                .unwrap();
            assert!(read > 0, "closed after {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..read]);
        }
        String::from_utf8(out).unwrap()
    }
    // One request that the fast path hands to hyper (a chunked body): the
    // rest of the connection is a hyper session. Then the client idles
    // longer than the session's linger, so it is taken apart, and the
    // pipelined requests below must find the connection whole.
    s.write_all(b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        .await
        .unwrap();
    let first = responses(&mut s, 1).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(4 * dropless_runtime::proxy::IDLE_LINGER).await;
    // Two pipelined requests and half of a third in one write, the rest later.
    let third = "GET /datetime HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let (a, b) = third.split_at(10);
    s.write_all(format!("{get}{get}{a}").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(4 * dropless_runtime::proxy::IDLE_LINGER).await;
    s.write_all(b.as_bytes()).await.unwrap();
    let rest = responses(&mut s, 3).await;
    assert_eq!(rest.matches("HTTP/1.1 200").count(), 3, "{rest}");
    h.stop(Shutdown::Fast).await;
}

/// Reads one response (its head and its `Content-Length` body) from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text[..i]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if text.len() >= i + 4 + len {
                return text;
            }
        }
        let read = tokio::time::timeout(fixtures::WAIT, s.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(read > 0, "closed after {text:?}");
        out.extend_from_slice(&buf[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_parked_served_again_and_closed_at_its_deadline() {
    use dropless_runtime::proxy::PARK_AFTER;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let mut config = fixtures::config(dir.path(), vec![service]);
    let timeout = Duration::from_millis(800);
    config.proxy.header_read_timeout = timeout;
    let (h, metrics) = Harness::start_with_metrics(config).await;
    h.wait_routable(1).await;
    let parked = || fixtures::parked(metrics);
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let get = "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    for _ in 0..3 {
        s.write_all(get.as_bytes()).await.unwrap();
        let answer = read_response(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Idle long enough to be parked (the scrape's own connection is
        // not: it closes); the next request resumes it.
        tokio::time::sleep(3 * PARK_AFTER).await;
        assert_eq!(parked().await, 1, "the idle connection is parked");
    }
    // A head that comes in two parts, the connection parked in between.
    let (a, b) = get.split_at(10);
    s.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(3 * PARK_AFTER).await;
    s.write_all(b.as_bytes()).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Parked and silent: closed at the header read timeout, not before.
    let idle = std::time::Instant::now();
    tokio::time::sleep(3 * PARK_AFTER).await;
    assert_eq!(parked().await, 1);
    let mut rest = Vec::new();
    tokio::time::timeout(fixtures::WAIT, s.read_to_end(&mut rest))
        .await
        .expect("a parked connection is closed at its deadline")
        .unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        idle.elapsed() >= timeout - Duration::from_millis(50),
        "closed after {:?}",
        idle.elapsed()
    );
    assert_eq!(parked().await, 0, "closed, not parked");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_served_while_the_proxy_stops() {
    use dropless_runtime::proxy::PARK_AFTER;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let addr = h.addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let get = "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    s.write_all(get.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(3 * PARK_AFTER).await;
    let stopping = tokio::spawn(h.stop(Shutdown::Graceful));
    // Once the proxy no longer accepts, the parked client sends a request:
    // it is answered, with `Connection: close`, not cut.
    let stopped = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(fixtures::WAIT, stopped)
        .await
        .expect("the proxy stops accepting");
    s.write_all(get.as_bytes()).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let mut rest = Vec::new();
    tokio::time::timeout(fixtures::WAIT, s.read_to_end(&mut rest))
        .await
        .expect("closed after its answer")
        .unwrap();
    stopping.await.unwrap();
}
