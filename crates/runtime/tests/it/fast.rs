//! The HTTP/1.1 fast path on the wire: raw clients against a scripted raw
//! backend in the test process, so that every byte either side sees can be
//! checked, and the backend can tell which of its connections a request
//! came on.

use dropless_runtime::config::Version;
use dropless_runtime::signal::Shutdown;

use crate::fixtures::raw::*;
use crate::fixtures::{self, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_pipelined_large_and_handed_to_hyper_on_one_tls_connection() {
    let data = pattern(1 << 20);
    let big = with_length("200 OK", &data);
    let backend = Backend::start(vec![
        ("/one", Reply::Keep(ok("one"))),
        ("/two", Reply::Keep(ok("second"))),
        ("/big", Reply::Keep(big.clone())),
        ("/upload", Reply::Keep(ok("uploaded"))),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h, tls) = start_tls(&backend).await;
    let mut client = Client::connect_tls(h.addr, tls).await;
    // Two requests in one write (one TLS record): the first exactly fills
    // the proxy's 8 KiB read buffer, so the second is decrypted with it and
    // then waits in the TLS session, not in the socket.
    let head = "GET /one HTTP/1.1\r\nHost: app.test\r\nx-pad: ";
    let pad = "p".repeat(8192 - head.len() - 4);
    let first = format!("{head}{pad}\r\n\r\n");
    assert_eq!(first.len(), 8192);
    client
        .send(&[first.as_bytes(), &get("/two")].concat())
        .await;
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("second"))
    );
    // A body larger than what a TLS session buffers.
    client.send(&get("/big")).await;
    let resp = client.response(false).await;
    assert!(resp.raw == big, "the 1 MiB response differs");
    // A chunked upload goes to hyper, and the connection goes on.
    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nabcd\r\n0\r\n\r\n",
        )
        .await;
    let resp = client.response(false).await;
    assert_eq!((resp.status, lossy(&resp.body).as_str()), (200, "uploaded"));
    // hyper serves the rest of the connection (it adds a `date`; the fast
    // path's answers above are the replica's bytes).
    client.send(&get("/after")).await;
    let resp = client.response(false).await;
    assert_eq!((resp.status, lossy(&resp.body).as_str()), (200, "after"));
    let received = backend.requests(5).await;
    let paths: Vec<_> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/one", "/two", "/big", "/upload", "/after"]);
    for r in &received {
        assert_eq!(r.all("x-forwarded-proto"), ["https"], "{}", r.path);
    }
    assert_eq!(lossy(&received[3].body), "abcd");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_get_complete_responses_in_order_on_one_connection() {
    let backend = Backend::start(vec![
        ("/one", Reply::Keep(ok("one"))),
        ("/two", Reply::Keep(ok("second"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&[get("/one"), get("/two")].concat()).await;
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("second"))
    );
    let paths: Vec<_> = backend
        .requests(2)
        .await
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/one", "/two"]);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_passes_byte_exact_and_its_upstream_connection_is_reused() {
    // `Trailer` announces the trailer fields: end to end, not hop by hop.
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-kind: chunks\r\n\
        Trailer: x-checksum, x-more\r\n\r\n\
        5;name=value\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n"
        .to_vec();
    let backend = Backend::start(vec![
        ("/chunked", Reply::Keep(response.clone())),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/chunked")).await;
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&response));
    client.send(&get("/after")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("after"))
    );
    let conns: Vec<_> = backend.requests(2).await.iter().map(|r| r.conn).collect();
    assert_eq!(conns[0], conns[1], "one upstream connection for both");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_responses_reach_the_client_without_a_body_and_the_connection_goes_on() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec();
    let no_content = b"HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n".to_vec();
    let not_modified =
        b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n".to_vec();
    let backend = Backend::start(vec![
        ("/five", Reply::Keep(head.clone())),
        ("/no-content", Reply::Keep(no_content.clone())),
        ("/not-modified", Reply::Keep(not_modified.clone())),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&request("HEAD", "/five")).await;
    assert_eq!(lossy(&client.response(true).await.raw), lossy(&head));
    client.send(&get("/no-content")).await;
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&no_content));
    client.send(&get("/not-modified")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&not_modified)
    );
    client.send(&get("/after")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("after"))
    );
    assert!(client.buf.is_empty(), "nothing beyond the responses");
    let received = backend.requests(4).await;
    assert_eq!(received[0].method, "HEAD");
    assert!(
        received.iter().all(|r| r.conn == received[0].conn),
        "the upstream connection stays in step: {:?}",
        received.iter().map(|r| r.conn).collect::<Vec<_>>()
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_close_keeps_the_client_connection_and_opens_a_new_upstream_one() {
    let backend = Backend::start(vec![
        (
            "/close",
            Reply::Close(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nclose".to_vec(),
            ),
        ),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/close")).await;
    // `Connection` is hop-by-hop: the replica's close is not the client's.
    assert_eq!(
        lossy(&client.response(false).await.raw),
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclose"
    );
    client.send(&get("/after")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("after"))
    );
    let received = backend.requests(2).await;
    assert_ne!(
        received[0].conn, received[1].conn,
        "a new upstream connection"
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_until_close_reaches_the_client_whole_and_then_the_proxy_closes_the_connection() {
    let body = pattern(200 * 1024);
    let mut response =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    response.extend_from_slice(&body);
    let backend = Backend::start(vec![("/until-close", Reply::Close(response))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/until-close")).await;
    let got = client.read_to_close().await;
    let resp = parse_response(&got, false, true).expect("a whole response");
    assert_eq!(
        lossy(&got[..got.len() - resp.body.len()]),
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        resp.body == body,
        "body of {} bytes, {} expected",
        resp.body.len(),
        body.len()
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_replaced_without_an_error() {
    let backend = Backend::start(vec![
        // A keep-alive response, and then the backend closes anyway.
        ("/first", Reply::Close(ok("first"))),
        ("/second", Reply::Keep(ok("second"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/first")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("first"))
    );
    let first = backend.requests(1).await[0].conn;
    backend
        .wait(|log| log.closed.contains(&first).then_some(()))
        .await;
    client.send(&get("/second")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("second"))
    );
    let received = backend.requests(2).await;
    assert_ne!(received[1].conn, first, "a fresh upstream connection");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_is_forwarded_byte_exact_with_forwarded_headers_and_without_hop_by_hop_ones() {
    let backend = Backend::start(vec![(
        "/upload?x=1",
        Reply::Keep(with_length("201 Created", b"stored")),
    )])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    // Larger than a read buffer, and with the bytes that end a head.
    let mut body = pattern(40_000);
    body[100..104].copy_from_slice(b"\r\n\r\n");
    let mut req = format!(
        "POST /upload?x=1 HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-secret\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nx-secret: hush\r\nX-Forwarded-For: 10.0.0.1\r\n\
         X-Forwarded-Proto: https\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut client = Client::connect(h.addr).await;
    client.send(&req).await;
    let resp = client.response(false).await;
    assert_eq!(
        lossy(&resp.raw),
        lossy(&with_length("201 Created", b"stored"))
    );
    let r = &backend.requests(1).await[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/upload?x=1")
    );
    assert!(r.body == body, "body of {} bytes forwarded", r.body.len());
    assert!(
        r.raw.starts_with(b"POST /upload?x=1 HTTP/1.1\r\n") && r.raw.ends_with(&body),
        "{}",
        lossy(&r.raw)
    );
    assert_eq!(r.all("host"), ["app.test"]);
    assert_eq!(r.all("content-length"), [body.len().to_string()]);
    assert_eq!(r.all("content-type"), ["application/octet-stream"]);
    assert_eq!(r.all("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(r.all("x-forwarded-proto"), ["http"]);
    assert_eq!(r.all("x-forwarded-host"), ["app.test"]);
    for hop in ["connection", "keep-alive", "te", "x-secret"] {
        assert!(r.all(hop).is_empty(), "{hop} forwarded: {:?}", r.headers);
    }
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mebibyte_bodies_arrive_intact_with_a_length_and_chunked() {
    let data = pattern(1 << 20);
    let with_len = with_length("200 OK", &data);
    let mut chunked_response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked_response.extend_from_slice(&chunked(&data));
    let backend = Backend::start(vec![
        ("/big", Reply::Keep(with_len.clone())),
        ("/big-chunked", Reply::Keep(chunked_response.clone())),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/big")).await;
    let resp = client.response(false).await;
    assert_eq!((resp.status, resp.body.len()), (200, data.len()));
    assert!(resp.raw == with_len, "the length-framed response differs");
    client.send(&get("/big-chunked")).await;
    let resp = client.response(false).await;
    assert_eq!(resp.status, 200);
    let (decoded, _) = dechunk(&resp.body).expect("a whole chunked body");
    assert!(decoded == data, "the chunked body's data differs");
    assert!(resp.raw == chunked_response, "the chunked response differs");
    let received = backend.requests(2).await;
    assert_eq!(
        received[0].conn, received[1].conn,
        "one upstream connection"
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asking_to_close_gets_connection_close_and_the_proxy_closes() {
    let backend = Backend::start(vec![("/bye", Reply::Keep(ok("bye")))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client
        .send(b"GET /bye HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(
        lossy(&client.read_to_close().await),
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nconnection: close\r\n\r\nbye"
    );
    assert!(backend.requests(1).await[0].all("connection").is_empty());
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_breaking_off_mid_body_closes_the_client_connection_after_the_partial_body() {
    let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec();
    let backend = Backend::start(vec![("/broken", Reply::Close(partial.clone()))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/broken")).await;
    assert_eq!(lossy(&client.read_to_close().await), lossy(&partial));
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_upstream_is_a_502_upstream_error_and_the_connection_goes_on() {
    let backend = Backend::start(vec![
        (
            "/garbage",
            Reply::Close(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()),
        ),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/garbage")).await;
    let resp = client.response(false).await;
    assert_eq!(resp.status, 502, "{}", lossy(&resp.raw));
    assert_eq!(resp.header("x-dropless-error"), Some("upstream"));
    client.send(&get("/after")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("after"))
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_post_is_handed_to_hyper_between_fast_requests_on_one_connection() {
    let backend = Backend::start(vec![
        ("/before", Reply::Keep(ok("before"))),
        ("/upload", Reply::Keep(ok("uploaded"))),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/before")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("before"))
    );
    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n",
        )
        .await;
    let resp = client.response(false).await;
    assert_eq!(
        (resp.status, lossy(&resp.body).as_str()),
        (200, "uploaded"),
        "{}",
        lossy(&resp.raw)
    );
    client.send(&get("/after")).await;
    let resp = client.response(false).await;
    assert_eq!(
        (resp.status, lossy(&resp.body).as_str()),
        (200, "after"),
        "{}",
        lossy(&resp.raw)
    );
    let received = backend.requests(3).await;
    let paths: Vec<_> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/before", "/upload", "/after"]);
    assert_eq!(received[1].method, "POST");
    assert_eq!(lossy(&received[1].body), "abcdefg");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_421_from_the_fast_path_and_the_connection_goes_on() {
    let backend = Backend::start(vec![("/known", Reply::Keep(ok("known")))]).await;
    let (_dir, h) = start(&backend, |s| s.hosts = vec!["app.test".into()]).await;
    let mut client = Client::connect(h.addr).await;
    client
        .send(b"GET /unknown HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await;
    let resp = client.response(false).await;
    assert_eq!(resp.status, 421, "{}", lossy(&resp.raw));
    assert_eq!(resp.header("x-dropless-error"), Some("client"));
    assert!(
        lossy(&resp.body).contains("other.test"),
        "{}",
        lossy(&resp.raw)
    );
    // Hyper would have added a date: the fast path answered.
    assert_eq!(resp.header("date"), None, "{}", lossy(&resp.raw));
    client.send(&get("/known")).await;
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("known"))
    );
    let paths: Vec<_> = backend.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/known"]);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_to_an_unknown_host_gets_a_421_without_a_body() {
    let backend = Backend::start(vec![("/known", Reply::Keep(ok("known")))]).await;
    let (_dir, h) = start(&backend, |s| s.hosts = vec!["app.test".into()]).await;
    let mut client = Client::connect(h.addr).await;
    client
        .send(b"HEAD /unknown HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await;
    let resp = client.response(true).await;
    assert_eq!(resp.status, 421, "{}", lossy(&resp.raw));
    client.send(&get("/known")).await;
    // A body after the HEAD response would be read as the next response.
    let rest = lossy(&client.buf);
    assert!(
        client.buf.is_empty() || rest.starts_with("HTTP/1.1 200"),
        "bytes after the head of a response to HEAD: {rest:?}"
    );
    assert_eq!(
        lossy(&client.response(false).await.raw),
        lossy(&ok("known"))
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_gets_a_504_after_the_response_timeout_on_both_paths() {
    let backend = Backend::start(vec![
        ("/silent", Reply::Silent),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", Version::target(backend.addr), 1);
    service.probe.path = String::new();
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.proxy.response_timeout = std::time::Duration::from_millis(300);
    let h = Harness::start(config).await;
    h.wait_routable(1).await;
    let mut client = Client::connect(h.addr).await;
    // The fast path, then hyper's (a chunked body is hyper's).
    let chunked_post =
        b"POST /silent HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n";
    for request in [get("/silent"), chunked_post.to_vec()] {
        let began = std::time::Instant::now();
        client.send(&request).await;
        let resp = client.response(false).await;
        assert_eq!(resp.status, 504, "{}", lossy(&resp.raw));
        assert_eq!(resp.header("x-dropless-error"), Some("upstream"));
        assert!(
            began.elapsed() >= std::time::Duration::from_millis(300),
            "504 before the timeout: {:?}",
            began.elapsed()
        );
        // The client's connection goes on (with hyper once handed over).
        client.send(&get("/after")).await;
        let after = client.response(false).await;
        assert_eq!((after.status, lossy(&after.body)), (200, "after".into()));
    }
    // Not retried: the replica may be working on it.
    let silent = backend
        .received()
        .into_iter()
        .filter(|r| r.path == "/silent")
        .count();
    assert_eq!(silent, 2);
    h.stop(Shutdown::Fast).await;
}

fn post(path: &str, extra: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Content-Length: 2\r\n\r\nhi")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_replica_read_and_then_dropped_is_executed_once_and_answered_502() {
    let backend = Backend::start(vec![
        ("/crash", Reply::Close(Vec::new())),
        ("/reset", Reply::Reset),
        ("/warm", Reply::Keep(ok("warm"))),
        ("/stale", Reply::Close(Vec::new())),
        ("/chunked-crash", Reply::Close(Vec::new())),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    // Read, then the connection closed without a byte of response.
    client.send(&post("/crash", "")).await;
    let r = client.response(false).await;
    assert_eq!(
        (r.status, r.header("x-dropless-error")),
        (502, Some("upstream"))
    );
    // Read, then reset.
    client.send(&post("/reset", "")).await;
    assert_eq!(client.response(false).await.status, 502);
    // A pooled connection that the replica closes after reading the request.
    client.send(&get("/warm")).await;
    assert_eq!(client.response(false).await.status, 200);
    client.send(&post("/stale", "")).await;
    assert_eq!(client.response(false).await.status, 502);
    // The same on the hyper path (a chunked body).
    client
        .send(b"POST /chunked-crash HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        .await;
    assert_eq!(client.response(false).await.status, 502);
    for path in ["/crash", "/reset", "/stale", "/chunked-crash"] {
        assert_eq!(executions(&backend, path), 1, "{path} executed once");
    }
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_the_replica_dropped_is_sent_again_and_succeeds() {
    let backend = Backend::start(vec![
        ("/flaky-get", Reply::FailFirst(ok("second try"))),
        ("/flaky-post", Reply::FailFirst(ok("second try"))),
        ("/flaky-put", Reply::FailFirst(ok("second try"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/flaky-get")).await;
    let r = client.response(false).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"second try"[..]));
    assert_eq!(executions(&backend, "/flaky-get"), 2);
    client
        .send(b"PUT /flaky-put HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert_eq!(client.response(false).await.status, 200);
    assert_eq!(executions(&backend, "/flaky-put"), 2);
    // Not idempotent: once, and the client is told.
    client.send(&post("/flaky-post", "")).await;
    assert_eq!(client.response(false).await.status, 502);
    assert_eq!(executions(&backend, "/flaky-post"), 1);
    // An idempotency key does not change that unless configured.
    client
        .send(&post("/flaky-post", "Idempotency-Key: k1\r\n"))
        .await;
    assert_eq!(client.response(false).await.status, 200);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_an_idempotency_key_is_sent_again_only_when_configured() {
    let backend = Backend::start(vec![
        ("/keyed", Reply::FailFirst(ok("second try"))),
        ("/unkeyed", Reply::FailFirst(ok("second try"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    // Default: off.
    let mut client = Client::connect(h.addr).await;
    client
        .send(&post("/keyed", "Idempotency-Key: k1\r\n"))
        .await;
    assert_eq!(client.response(false).await.status, 502);
    assert_eq!(executions(&backend, "/keyed"), 1);
    h.stop(Shutdown::Fast).await;

    let backend = Backend::start(vec![
        ("/keyed", Reply::FailFirst(ok("second try"))),
        ("/unkeyed", Reply::FailFirst(ok("second try"))),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", Version::target(backend.addr), 1);
    service.probe.path = String::new();
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.proxy.retry_idempotency_key = true;
    let h = Harness::start(config).await;
    h.wait_routable(1).await;
    let mut client = Client::connect(h.addr).await;
    client
        .send(&post("/keyed", "Idempotency-Key: k1\r\n"))
        .await;
    assert_eq!(client.response(false).await.status, 200);
    assert_eq!(executions(&backend, "/keyed"), 2);
    client.send(&post("/unkeyed", "")).await;
    assert_eq!(client.response(false).await.status, 502);
    assert_eq!(executions(&backend, "/unkeyed"), 1);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_parked_with_its_session_and_served_again() {
    use dropless_runtime::proxy::PARK_AFTER;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dir, h, metrics, tls) = tls_proxy(&backend, |_| {}).await;
    let idle = || tokio::time::sleep(3 * PARK_AFTER);

    // Idle after its handshake: parked. The first request comes as half a
    // TLS record (the session resumed keeps it: a request under way, not
    // parked again), then the rest.
    let mut stream = tls_connect(h.addr, tls).await;
    idle().await;
    assert_eq!(
        fixtures::parked(metrics).await,
        1,
        "parked after its handshake"
    );
    let mut record = Vec::new();
    let (tcp, session) = stream.get_mut();
    std::io::Write::write_all(&mut session.writer(), &get("/one")).unwrap();
    while session.wants_write() {
        session.write_tls(&mut record).unwrap();
    }
    tcp.write_all(&record[..10]).await.unwrap();
    idle().await;
    assert_eq!(fixtures::parked(metrics).await, 0, "a request under way");
    tcp.write_all(&record[10..]).await.unwrap();
    let mut client = Client {
        stream: Box::new(stream),
        buf: Vec::new(),
    };
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    // Parked after each request, its session kept: the next is served.
    for _ in 0..2 {
        idle().await;
        assert_eq!(fixtures::parked(metrics).await, 1, "parked after a request");
        client.send(&get("/one")).await;
        assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    }
    assert_eq!(executions(&backend, "/one"), 3);
    // A stopping proxy closes a parked TLS connection that sends nothing
    // (after its linger), with no response on it.
    idle().await;
    let stopped = tokio::spawn(h.stop(Shutdown::Graceful));
    let rest = tokio::time::timeout(Duration::from_secs(10), client.read_to_close())
        .await
        .expect("closed after the stop's linger");
    assert!(rest.is_empty(), "{:?}", lossy(&rest));
    stopped.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_closed_with_a_close_notify() {
    use dropless_runtime::proxy::PARK_AFTER;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    // Closed at its header read deadline while it waits (shorter than the
    // time before it is parked), parked first then closed at its deadline,
    // and parked then closed by a stopping proxy after its linger.
    let cases = [
        ("deadline", PARK_AFTER / 2),
        ("parked, deadline", PARK_AFTER * 3),
        ("parked, stop", Duration::from_secs(60)),
    ];
    for (case, timeout) in cases {
        let (_dir, h, metrics, tls) =
            tls_proxy(&backend, |c| c.proxy.header_read_timeout = timeout).await;
        let mut stream = tls_connect(h.addr, tls).await;
        stream.write_all(&get("/one")).await.unwrap();
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.unwrap();
        // `Ok` at the end only if the proxy said close_notify before it
        // closed: rustls reports a bare end as an unexpected EOF (a
        // possible truncation).
        let mut rest = Vec::new();
        let read = async {
            tokio::time::timeout(fixtures::WAIT, stream.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("{case}: the idle connection is closed"))
        };
        let closed = if case == "parked, stop" {
            let stop = async {
                tokio::time::timeout(fixtures::WAIT, async {
                    while fixtures::parked(metrics).await != 1 {
                        tokio::time::sleep(PARK_AFTER / 4).await;
                    }
                })
                .await
                .expect("parked");
                h.stop(Shutdown::Graceful).await;
            };
            tokio::join!(read, stop).0
        } else {
            let closed = read.await;
            h.stop(Shutdown::Fast).await;
            closed
        };
        assert!(closed.is_ok(), "{case}: {closed:?}");
        assert!(lossy(&rest).ends_with("one"), "{case}: {:?}", lossy(&rest));
    }
}

/// A proxy serving HTTPS (a self-signed certificate for `localhost`) in
/// front of `backend`, routable, with its metrics address and a client
/// configuration that trusts it.
async fn tls_proxy(
    backend: &Backend,
    configure: impl FnOnce(&mut dropless_runtime::config::Config),
) -> (
    tempfile::TempDir,
    Harness,
    std::net::SocketAddr,
    std::sync::Arc<rustls::ClientConfig>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, tls) = client_tls(dir.path());
    let mut service = fixtures::service("web", Version::target(backend.addr), 1);
    service.probe.path = String::new();
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.proxy.tls_cert = Some(cert);
    config.proxy.tls_key = Some(key);
    configure(&mut config);
    let (h, metrics) = Harness::start_with_metrics(config).await;
    h.wait_routable(1).await;
    (dir, h, metrics, tls)
}

/// How long a client may take nothing of its response, in the send-timeout
/// tests.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);

/// Clients that connect and send nothing wait in the kernel until it hands
/// them over anyway (`TCP_DEFER_ACCEPT`, 1 s), then get the header read
/// timeout like any other: none is held for longer, and a client that
/// sends its request meanwhile is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_connect_and_send_nothing_are_closed_after_the_header_read_timeout() {
    use tokio::io::AsyncReadExt;
    let timeout = std::time::Duration::from_millis(300);
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dir, h) = start_with(&backend, |_| {}, |c| c.proxy.header_read_timeout = timeout).await;
    let began = tokio::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(h.addr).await.unwrap());
    }
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/one")).await;
    assert_eq!(client.response(false).await.body, b"one");
    for mut s in silent {
        let mut got = Vec::new();
        let read = tokio::time::timeout(fixtures::WAIT, s.read_to_end(&mut got)).await;
        assert!(
            matches!(read, Ok(Ok(0))) && got.is_empty(),
            "closed without an answer: {read:?}, {got:?}"
        );
    }
    let waited = began.elapsed();
    // Accepted after the kernel's 1 s (its SYN-ACK resent), then cut at
    // the header read timeout: well within 1 s + the timeout + slack.
    assert!(
        waited >= timeout && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    h.stop(Shutdown::Fast).await;
}

/// The payload the send-timeout tests' clients leave unread.
const BIG: usize = 24 << 20;

/// Clients that send `requests` (each answered by the backend's `/big`
/// route with `big`, [`BIG`] bytes of payload) and read nothing are cut
/// after the send timeout; the next client is served.
async fn clients_that_stop_reading_are_cut(big: Vec<u8>, requests: &[&[u8]]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start(vec![
        ("/big", Reply::Keep(big)),
        ("/one", Reply::Keep(ok("one"))),
    ])
    .await;
    let (_dir, h) = start_with(&backend, |_| {}, |c| c.proxy.send_timeout = SEND_TIMEOUT).await;
    let mut clients = Vec::new();
    for request in requests {
        let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        clients.push(tcp);
    }
    backend.requests(requests.len()).await;
    // The clients read nothing for four send timeouts: no event tells when
    // the proxy gives up, so the test waits that long.
    tokio::time::sleep(4 * SEND_TIMEOUT).await;
    for (mut tcp, request) in clients.into_iter().zip(requests) {
        let request = String::from_utf8_lossy(request);
        let mut got = Vec::new();
        let read = tokio::time::timeout(fixtures::WAIT, tcp.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "{request:?}: the proxy ended the connection");
        assert!(
            got.len() < BIG,
            "{request:?}: {} bytes: the proxy stopped sending, and closed",
            got.len()
        );
    }
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/one")).await;
    assert_eq!(client.response(false).await.body, b"one");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    clients_that_stop_reading_are_cut(
        with_length("200 OK", &vec![b'b'; BIG]),
        &[b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n"],
    )
    .await;
}

/// The requests the fast path leaves to hyper (HTTP/1.0, a chunked body,
/// `Expect: 100-continue`) are held to the same send timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_served_by_hyper_that_stops_reading_is_cut_after_the_send_timeout() {
    clients_that_stop_reading_are_cut(
        with_length("200 OK", &vec![b'b'; BIG]),
        &[
            b"GET /big HTTP/1.0\r\nHost: app.test\r\n\r\n",
            b"POST /big HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /big HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        ],
    )
    .await;
}

/// So is a WebSocket tunnel whose client reads nothing of what the replica
/// sends (one binary frame of [`BIG`] bytes after the 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let mut big =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            .to_vec();
    // FIN + binary, unmasked (server to client), 64-bit length.
    big.extend_from_slice(&[0x82, 127]);
    big.extend_from_slice(&(BIG as u64).to_be_bytes());
    big.extend_from_slice(&vec![b'w'; BIG]);
    clients_that_stop_reading_are_cut(
        big,
        &[b"GET /big HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"],
    )
    .await;
}
