//! Operating the proxy: request ids and the access log.

use std::time::Duration;

use dropless_runtime::signal::Shutdown;
use http_body_util::BodyExt;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_replica_and_client_and_every_request_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let mut config = fixtures::config(dir.path(), vec![service]);
    let log = dir.path().join("access.log");
    config.access_log = Some(log.clone());
    let h = Harness::start(config).await;
    h.wait_routable(1).await;
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
