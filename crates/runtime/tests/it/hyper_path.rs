//! HTTP/2 clients against the proxy (`proxy::h2`, its requests forwarded
//! by `proxy::session`): a request whose body is buffered goes to the
//! replica as HTTP/1.1 bytes on a pooled plain socket and its response body
//! is read from that socket. An h2c client (prior knowledge) talks to the
//! proxy in front of the scripted raw backend, which tells which of its
//! connections each request came on: a socket the proxy reused carries the
//! next request.

use std::net::SocketAddr;

use bytes::Bytes;
use dropless_runtime::signal::Shutdown;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::fixtures::WAIT;
use crate::fixtures::raw::*;

/// An h2c connection to the proxy (HTTP/2 with prior knowledge); its
/// sender is cloned for concurrent streams.
async fn h2(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the proxy");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A request for `path` on `app.test` (its `:authority`), with `body`.
fn request(method: &str, path: &str, body: &[u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://app.test{path}"))
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    request("GET", path, b"")
}

/// A response as the h2 client got it.
#[derive(Debug)]
struct Got {
    /// 0 when the stream failed before a response head.
    status: u16,
    headers: HeaderMap,
    /// The data of the body, as far as it came.
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// What ended the body's stream when it did not end cleanly.
    error: Option<String>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body as text, after asserting a clean end of stream.
    fn text(&self) -> String {
        assert_eq!(self.error, None, "the stream ended cleanly");
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Sends `req` on `sender` and reads the whole response.
async fn send(sender: &SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Got {
    let mut sender = sender.clone();
    let what = format!("{} {}", req.method(), req.uri());
    tokio::time::timeout(WAIT, async move {
        let mut got = Got {
            status: 0,
            headers: HeaderMap::new(),
            data: Vec::new(),
            trailers: None,
            error: None,
        };
        let (parts, mut body) = match sender.send_request(req).await {
            Ok(resp) => resp.into_parts(),
            Err(e) => {
                got.error = Some(format!("{e:?}"));
                return got;
            }
        };
        got.status = parts.status.as_u16();
        got.headers = parts.headers;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => got.data.extend_from_slice(&data),
                    Err(frame) => got.trailers = frame.into_trailers().ok(),
                },
                Err(e) => {
                    got.error = Some(format!("{e:?}"));
                    break;
                }
            }
        }
        got
    })
    .await
    .unwrap_or_else(|_| panic!("no whole response to {what} in time"))
}

/// Asserts whether the request to `next` came on the backend connection
/// the one to `first` came on: whether the proxy reused that socket.
fn assert_reused(backend: &Backend, first: &str, next: &str, reused: bool) {
    let (a, b) = (conn_of(backend, first), conn_of(backend, next));
    assert_eq!(
        a == b,
        reused,
        "{first} came on backend connection {a}, {next} on {b}"
    );
}

/// Asserts that the backend received all of `received` on one connection.
fn assert_one_connection(received: &[Received]) {
    let conns: Vec<_> = received.iter().map(|r| (&r.path, r.conn)).collect();
    assert!(
        conns.iter().all(|(_, c)| *c == conns[0].1),
        "one upstream connection: {conns:?}"
    );
}

/// The backend connection the first request to `path` came on.
fn conn_of(backend: &Backend, path: &str) -> usize {
    backend
        .received()
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no request to {path} received"))
        .conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_s_data_and_trailers_reach_an_h2_client_and_its_socket_is_reused() {
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-kind: chunks\r\n\
        Trailer: x-checksum, x-more\r\n\r\n\
        5;name=value\r\nhello\r\n1;a=\"q;x\"\r\n,\r\n6\r\n world\r\n0;last\r\n\
        x-checksum: abc\r\nx-more: 1\r\n\r\n";
    let backend = Backend::start(vec![
        ("/chunked", Reply::Keep(response.to_vec())),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/chunked")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello, world"));
    assert_eq!(got.header("x-kind"), Some("chunks"));
    assert_eq!(got.header("transfer-encoding"), None);
    // End to end (RFC 9110 §6.6.2): the client learns what trailers come.
    assert_eq!(got.header("trailer"), Some("x-checksum, x-more"));
    let trailers = got.trailers.expect("trailers");
    assert_eq!(trailers.len(), 2, "{trailers:?}");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(trailers["x-more"], "1");
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/chunked", "/after", true);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mebibyte_bodies_with_a_length_and_chunked_reach_an_h2_client_intact() {
    let data = pattern(1 << 20);
    let mut chunked_response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked_response.extend_from_slice(&chunked(&data));
    let backend = Backend::start(vec![
        ("/big", Reply::Keep(with_length("200 OK", &data))),
        ("/big-chunked", Reply::Keep(chunked_response)),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    for path in ["/big", "/big-chunked"] {
        let got = send(&client, get(path)).await;
        assert_eq!((got.status, &got.error), (200, &None), "{path}");
        assert_eq!(got.data.len(), data.len(), "{path}");
        assert!(got.data == data, "the body of {path} differs");
        assert!(got.trailers.is_none(), "{path}: {:?}", got.trailers);
    }
    // A chunked body's end is read with its last chunk: the socket is
    // given back.
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/big-chunked", "/after", true);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_until_close_reaches_an_h2_client_whole_and_the_next_request_connects_anew() {
    let body = pattern(200 * 1024);
    let mut response =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    response.extend_from_slice(&body);
    let backend = Backend::start(vec![
        ("/until-close", Reply::Close(response)),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/until-close")).await;
    assert_eq!((got.status, &got.error), (200, &None), "a clean end");
    assert!(
        got.data == body,
        "body of {} bytes, {} expected",
        got.data.len(),
        body.len()
    );
    assert_eq!(got.header("content-length"), None);
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/until-close", "/after", false);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_reach_an_h2_client_without_a_body_and_the_socket_is_reused_after_each() {
    let backend = Backend::start(vec![
        (
            "/head",
            Reply::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nx-n: 0\r\n\r\n".to_vec()),
        ),
        (
            "/no-content",
            Reply::Keep(b"HTTP/1.1 204 No Content\r\nx-n: 1\r\n\r\n".to_vec()),
        ),
        (
            "/not-modified",
            Reply::Keep(
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n".to_vec(),
            ),
        ),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, request("HEAD", "/head", b"")).await;
    assert_eq!((got.status, got.text().as_str()), (200, ""));
    assert_eq!(
        got.header("content-length"),
        Some("1234"),
        "the announced length"
    );
    assert_eq!(got.header("x-n"), Some("0"));
    let got = send(&client, get("/no-content")).await;
    assert_eq!((got.status, got.text().as_str()), (204, ""));
    assert_eq!(got.header("x-n"), Some("1"));
    let got = send(&client, get("/not-modified")).await;
    assert_eq!((got.status, got.text().as_str()), (304, ""));
    assert_eq!(got.header("etag"), Some("\"v1\""));
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    let received = backend.requests(4).await;
    assert_eq!(received[0].method, "HEAD");
    assert_one_connection(&received);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_breaking_off_mid_body_fails_only_that_h2_stream_and_its_socket_is_dropped() {
    let body = pattern(100);
    let mut partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
    partial.extend_from_slice(&body[..50]);
    // Framing that breaks mid-body on a connection the replica keeps open:
    // only the proxy can decide not to use it again.
    let bad_chunk =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n".to_vec();
    let backend = Backend::start(vec![
        ("/broken", Reply::Close(partial)),
        ("/bad-chunk", Reply::Keep(bad_chunk)),
        ("/other", Reply::Keep(ok("other"))),
        ("/after", Reply::Keep(ok("after"))),
        ("/after-chunk", Reply::Keep(ok("after chunk"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    // Two streams at once on one h2 connection: one breaks.
    let (broken, other) = tokio::join!(send(&client, get("/broken")), send(&client, get("/other")));
    // The stream is reset, with or without its head and part of its body
    // (the proxy may have written some of it before the replica broke off).
    assert!(
        broken.error.is_some(),
        "a clean end after {} of 100 bytes",
        broken.data.len()
    );
    assert!(
        body.starts_with(&broken.data) && broken.data.len() <= 50,
        "{} bytes",
        broken.data.len()
    );
    assert_eq!(other.text(), "other");
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/broken", "/after", false);
    let got = send(&client, get("/bad-chunk")).await;
    assert!(got.error.is_some(), "a clean end after {:?}", got.data);
    assert_eq!(
        send(&client, get("/after-chunk")).await.text(),
        "after chunk"
    );
    assert_reused(&backend, "/bad-chunk", "/after-chunk", false);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_length_body_are_not_given_to_the_h2_client_and_the_socket_is_not_reused() {
    // What follows the body looks like the next response: on a reused
    // socket it would answer the next request.
    let mut response = ok("body");
    response.extend_from_slice(&with_length("200 OK", b"forged"));
    let backend = Backend::start(vec![
        ("/extra", Reply::Keep(response)),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/extra")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "body"));
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/extra", "/after", false);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_100_and_103_responses_before_the_final_one_are_skipped() {
    let response = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-final: 1\r\n\r\nok";
    let backend = Backend::start(vec![
        ("/hints", Reply::Keep(response.to_vec())),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/hints")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert_eq!(got.header("x-final"), Some("1"));
    assert_eq!(
        got.header("link"),
        None,
        "the hint's header is not the response's"
    );
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/hints", "/after", true);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_h2_post_reaches_the_replica_with_its_exact_length_and_not_chunked() {
    let backend = Backend::start(vec![
        (
            "/upload?x=1",
            Reply::Keep(with_length("201 Created", b"stored")),
        ),
        ("/empty", Reply::Keep(ok("empty"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    // With the bytes that end an HTTP/1.1 head, and what looks like a
    // request after them.
    let mut body = pattern(3000);
    body[100..104].copy_from_slice(b"\r\n\r\n");
    body[104..139].copy_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = send(&client, request("POST", "/upload?x=1", &body)).await;
    assert_eq!((got.status, got.text().as_str()), (201, "stored"));
    let got = send(&client, request("POST", "/empty", b"")).await;
    assert_eq!(got.text(), "empty");
    let received = backend.requests(2).await;
    let r = &received[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/upload?x=1")
    );
    assert_eq!(r.all("content-length"), [body.len().to_string()]);
    assert!(r.all("transfer-encoding").is_empty(), "{:?}", r.headers);
    assert!(r.body == body, "body of {} bytes forwarded", r.body.len());
    assert!(r.raw.ends_with(&body), "{}", lossy(&r.raw));
    assert_eq!(r.all("host"), ["app.test"]);
    assert_eq!(r.all("x-forwarded-proto"), ["http"]);
    assert_eq!(r.all("x-forwarded-host"), ["app.test"]);
    // A POST without a body says so.
    let r = &received[1];
    assert_eq!(r.all("content-length"), ["0"]);
    assert!(r.all("transfer-encoding").is_empty(), "{:?}", r.headers);
    assert!(r.body.is_empty());
    assert_eq!(received.len(), 2, "nothing smuggled");
    assert_eq!(backend.received().len(), 2, "nothing smuggled");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_post_the_replica_read_and_then_dropped_is_executed_once_and_answered_502() {
    let backend = Backend::start(vec![
        ("/crash", Reply::Close(Vec::new())),
        ("/reset", Reply::Reset),
        ("/warm", Reply::Keep(ok("warm"))),
        ("/stale", Reply::Close(Vec::new())),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    for path in ["/crash", "/reset"] {
        let got = send(&client, request("POST", path, b"hi")).await;
        assert_eq!(
            (got.status, got.header("x-dropless-error")),
            (502, Some("upstream")),
            "{path}"
        );
    }
    // A pooled socket that the replica closes after reading the request.
    assert_eq!(send(&client, get("/warm")).await.text(), "warm");
    let got = send(&client, request("POST", "/stale", b"hi")).await;
    assert_eq!(got.status, 502);
    assert_reused(&backend, "/warm", "/stale", true);
    for path in ["/crash", "/reset", "/stale"] {
        assert_eq!(executions(&backend, path), 1, "{path} executed once");
    }
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_get_the_replica_dropped_is_sent_again_and_succeeds() {
    let backend = Backend::start(vec![
        ("/flaky-get", Reply::FailFirst(ok("second try"))),
        ("/flaky-put", Reply::FailFirst(ok("second try"))),
        ("/flaky-post", Reply::FailFirst(ok("second try"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/flaky-get")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "second try"));
    assert_eq!(executions(&backend, "/flaky-get"), 2);
    let got = send(&client, request("PUT", "/flaky-put", b"hi")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "second try"));
    assert_eq!(executions(&backend, "/flaky-put"), 2);
    // Not idempotent: once, and the client is told.
    let got = send(&client, request("POST", "/flaky-post", b"hi")).await;
    assert_eq!(got.status, 502);
    assert_eq!(executions(&backend, "/flaky-post"), 1);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_request_without_authority_or_host_gets_the_replica_address_as_host_and_no_forwarded_host()
 {
    let backend = Backend::start(vec![("/who", Reply::Keep(ok("me")))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    // A relative URI in an HTTP/1.1-versioned request: hyper's h2 client
    // sends `:scheme http` and `:path`, no `:authority`; no `Host` either.
    // The client's own forwarding fields are not believed, its split
    // cookies are joined.
    let req = Request::get("/who")
        .header("x-forwarded-host", "evil.test")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "10.0.0.1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&client, req).await;
    assert_eq!((got.status, got.text().as_str()), (200, "me"));
    let r = &backend.requests(1).await[0];
    assert_eq!(r.all("host"), [backend.addr.to_string()]);
    assert!(r.all("x-forwarded-host").is_empty(), "{:?}", r.headers);
    assert_eq!(r.all("x-forwarded-proto"), ["http"]);
    assert_eq!(r.all("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(r.all("cookie"), ["a=1; b=2"]);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_says_it_closes_does_not_give_its_socket_back_even_if_left_open() {
    // Both keep their connection open: only their heads say they close.
    let backend = Backend::start(vec![
        (
            "/says-close",
            Reply::Keep(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            ),
        ),
        (
            "/http10",
            Reply::Keep(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ),
        ("/after", Reply::Keep(ok("after"))),
        ("/after-10", Reply::Keep(ok("after 1.0"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/says-close")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"));
    assert_eq!(got.header("connection"), None);
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/says-close", "/after", false);
    assert_eq!(send(&client, get("/http10")).await.text(), "ok");
    assert_eq!(send(&client, get("/after-10")).await.text(), "after 1.0");
    assert_reused(&backend, "/http10", "/after-10", false);
    h.stop(Shutdown::Fast).await;
}

/// Sends `streams` requests at once on one h2 connection, 3 rounds, each
/// to a path of its own whose body (`size(i)` bytes, marked with its
/// number, every `chunked_every`-th one chunked) must come back whole and
/// its own. Returns the backend and the proxy for more checks.
async fn each_stream_gets_its_own_body(
    streams: usize,
    size: impl Fn(usize) -> usize,
    chunked_every: usize,
) -> (Backend, tempfile::TempDir, crate::fixtures::Harness) {
    let bodies: Vec<Vec<u8>> = (0..streams)
        .map(|i| {
            let mut b = pattern(size(i));
            b[..8].copy_from_slice(format!("body{i:04}").as_bytes());
            b
        })
        .collect();
    let paths: Vec<String> = (0..streams).map(|i| format!("/p{i}")).collect();
    let script = paths
        .iter()
        .zip(&bodies)
        .enumerate()
        .map(|(i, (path, body))| {
            let response = if i % chunked_every == 0 {
                let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                r.extend_from_slice(&chunked(body));
                r
            } else {
                with_length("200 OK", body)
            };
            (path.as_str(), Reply::Keep(response))
        })
        .collect();
    let backend = Backend::start(script).await;
    let (dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    for round in 0..3 {
        let all = paths.iter().map(|p| send(&client, get(p)));
        let got = futures_util::future::join_all(all).await;
        for (i, got) in got.iter().enumerate() {
            assert_eq!(
                (got.status, &got.error),
                (200, &None),
                "round {round} /p{i}"
            );
            assert!(
                got.data == bodies[i],
                "round {round}: /p{i} got {} bytes starting {:?}",
                got.data.len(),
                lossy(&got.data[..got.data.len().min(8)])
            );
        }
    }
    (backend, dir, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_h2_streams_each_get_their_own_body_and_share_the_pooled_sockets() {
    const STREAMS: usize = 24;
    // Bodies of different sizes, every third one chunked.
    let (backend, _dir, h) = each_stream_gets_its_own_body(STREAMS, |i| 1000 + i * 7919, 3).await;
    let received = backend.requests(3 * STREAMS).await;
    let mut conns: Vec<_> = received.iter().map(|r| r.conn).collect();
    conns.sort_unstable();
    conns.dedup();
    assert!(
        conns.len() < 3 * STREAMS,
        "no socket reused: {} connections for {} requests",
        conns.len(),
        3 * STREAMS
    );
    h.stop(Shutdown::Fast).await;
}

/// More streams wait for their replica at once than a proxy thread keeps
/// read buffers (32), and their small bodies are copied out of buffers that
/// are then read into again by the next response: every stream must still
/// get its own bytes, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_h2_streams_than_kept_read_buffers_each_get_their_own_small_body() {
    // Sizes around the 1 KiB below which a body is copied out of its read
    // buffer, every fourth one chunked.
    let (_backend, _dir, h) = each_stream_gets_its_own_body(96, |i| 16 + (i * 97) % 3000, 4).await;
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_answers_an_h2_request_gets_a_504_after_the_response_timeout() {
    let backend = Backend::start(vec![
        ("/silent", Reply::Silent),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let timeout = std::time::Duration::from_millis(300);
    let (_dir, h) = start_with(&backend, |_| {}, |c| c.proxy.response_timeout = timeout).await;
    let client = h2(h.addr).await;
    let began = std::time::Instant::now();
    let got = send(&client, get("/silent")).await;
    assert_eq!(
        (got.status, got.header("x-dropless-error")),
        (504, Some("upstream"))
    );
    assert!(
        began.elapsed() >= timeout,
        "504 after {:?}",
        began.elapsed()
    );
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    // Not sent again: the replica may be working on it.
    assert_eq!(executions(&backend, "/silent"), 1);
    assert_reused(&backend, "/silent", "/after", false);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_gets_chunked_data_and_trailers_and_reuses_the_socket() {
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n";
    let backend = Backend::start(vec![
        ("/chunked", Reply::Keep(response.to_vec())),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h, tls) = start_tls(&backend).await;
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let stream = tls_connect(h.addr, std::sync::Arc::new(tls)).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an h2 handshake");
    tokio::spawn(conn);
    let got = send(&client, get("/chunked")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello"));
    assert_eq!(got.trailers.expect("trailers")["x-checksum"], "abc");
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    assert_reused(&backend, "/chunked", "/after", true);
    let received = backend.requests(2).await;
    assert_eq!(received[0].all("x-forwarded-proto"), ["https"]);
    h.stop(Shutdown::Fast).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_handed_to_hyper_get_head_lengths_and_chunked_bodies_on_a_reused_socket() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec();
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        .to_vec();
    let backend = Backend::start(vec![
        ("/head", Reply::Keep(head)),
        ("/chunked", Reply::Keep(chunked)),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = Client::connect(h.addr).await;
    // `Expect` makes the fast path hand the connection to hyper.
    client
        .send(b"HEAD /head HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let resp = client.response(true).await;
    assert!(
        resp.header("date").is_some(),
        "hyper answered: {}",
        lossy(&resp.raw)
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-length"),
        Some("1234"),
        "{}",
        lossy(&resp.raw)
    );
    client.send(&crate::fixtures::raw::get("/chunked")).await;
    let resp = client.response(false).await;
    assert_eq!(resp.status, 200, "{}", lossy(&resp.raw));
    let body = match resp.header("transfer-encoding") {
        Some(_) => dechunk(&resp.body).expect("a whole chunked body").0,
        None => resp.body.clone(),
    };
    assert_eq!(lossy(&body), "hello world");
    client.send(&crate::fixtures::raw::get("/after")).await;
    assert_eq!(lossy(&client.response(false).await.body), "after");
    assert!(client.buf.is_empty(), "nothing beyond the responses");
    let received = backend.requests(3).await;
    assert_one_connection(&received);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_of_a_length_body_longer_than_a_read_is_reused() {
    let data = pattern(1 << 20);
    let backend = Backend::start(vec![
        ("/big", Reply::Keep(with_length("200 OK", &data))),
        ("/after", Reply::Keep(ok("after"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/big")).await;
    assert_eq!((got.status, &got.error), (200, &None));
    assert!(got.data == data, "the body differs");
    assert_eq!(send(&client, get("/after")).await.text(), "after");
    // The body ended cleanly with nothing after it: its socket goes back
    // to the pool (as a chunked body's does).
    assert_reused(&backend, "/big", "/after", true);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_fields_reach_the_replica_as_one_cookie_header() {
    let backend = Backend::start(vec![("/cookies", Reply::Keep(ok("ok")))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    // HTTP/2 clients send each cookie as its own field (RFC 9113 §8.2.3,
    // for compression); HTTP/1.1 has one `Cookie` line.
    let mut req = get("/cookies");
    req.headers_mut().append("cookie", "a=1".parse().unwrap());
    req.headers_mut().append("cookie", "b=2".parse().unwrap());
    assert_eq!(send(&client, req).await.text(), "ok");
    let r = &backend.requests(1).await[0];
    assert_eq!(r.all("cookie"), ["a=1; b=2"], "{}", lossy(&r.raw));
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_specific_trailer_fields_are_dropped_and_the_h2_stream_ends_cleanly() {
    // Connection-specific fields make an HTTP/2 message malformed (RFC
    // 9113 §8.2.2): a proxy translating from HTTP/1.1 removes them, from
    // trailers as from headers (h2 refuses to send them and resets).
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\nx-checksum: abc\r\nconnection: close\r\nkeep-alive: timeout=5\r\n\r\n";
    let backend = Backend::start(vec![("/trailers", Reply::Keep(response.to_vec()))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/trailers")).await;
    assert_eq!(
        (got.status, got.error.as_deref(), lossy(&got.data).as_str()),
        (200, None, "hello")
    );
    let trailers = got.trailers.expect("trailers");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(trailers["x-checksum"], "abc");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upload_larger_than_the_flow_control_windows_reaches_the_replica_whole() {
    let backend = Backend::start(vec![(
        "/big",
        Reply::Keep(with_length("201 Created", b"stored")),
    )])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    // Three times the proxy's 1 MiB windows: the client sends the rest
    // only if the proxy gives back the window of what it read.
    let body = pattern(3 << 20);
    let got = send(&client, request("POST", "/big", &body)).await;
    assert_eq!((got.status, got.text().as_str()), (201, "stored"));
    let r = &backend.requests(1).await[0];
    assert!(r.body == body, "{} of {} bytes", r.body.len(), body.len());
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_an_h2_stream_cancels_its_request_and_keeps_its_connection() {
    use crate::fixtures::{self, Harness};
    use dropless_runtime::config::Version;
    let backend = Backend::start(vec![
        ("/silent", Reply::Silent),
        ("/one", Reply::Keep(ok("one"))),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", Version::target(backend.addr), 1);
    service.probe.path = String::new();
    let (h, metrics) =
        Harness::start_with_metrics(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let in_flight = || fixtures::gauge(metrics, "dropless_requests_in_flight{");
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    tokio::spawn(conn);
    let request = |path: &str| {
        Request::get(format!("http://app.test{path}"))
            .body(())
            .unwrap()
    };
    let (silent, _) = sender.send_request(request("/silent"), true).unwrap();
    backend.requests(1).await;
    assert_eq!(in_flight().await, 1, "the replica has the request");
    // Dropped before its response: the client resets the stream.
    drop(silent);
    tokio::time::timeout(WAIT, async {
        while in_flight().await != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the reset stream's request ends at the proxy");
    // The connection serves on.
    let (one, _) = sender.send_request(request("/one"), true).unwrap();
    let resp = tokio::time::timeout(WAIT, one).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_may_open_200_streams_at_once() {
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    tokio::spawn(conn);
    // Once a response came, so have the proxy's settings.
    let req = Request::get("http://app.test/one").body(()).unwrap();
    let (resp, _) = sender.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sender.current_max_send_streams(), 200);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_connection_named_response_fields_do_not_reach_an_h2_client() {
    let response = b"HTTP/1.1 200 OK\r\nConnection: x-private, keep-alive\r\n\
X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n\
Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
        .to_vec();
    let backend = Backend::start(vec![("/fields", Reply::Keep(response))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let client = h2(h.addr).await;
    let got = send(&client, get("/fields")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "ok"), "{got:?}");
    for name in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(got.header(name).is_none(), "{name} in {:?}", got.headers);
    }
    assert_eq!(got.header("x-kept"), Some("yes"));
    assert_eq!(got.header("content-length"), Some("2"));
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_tiny_windows_gets_a_large_body_whole_as_it_gives_window_back() {
    let data = pattern(300 * 1024);
    let backend = Backend::start(vec![("/big", Reply::Keep(with_length("200 OK", &data)))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // Windows of 1 000 bytes: the proxy may send that much, then waits
    // for the client's WINDOW_UPDATEs, hundreds of times.
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1_000)
        .initial_connection_window_size(1_000)
        .handshake(TokioIo::new(stream))
        .await
        .expect("an h2 handshake");
    tokio::spawn(conn);
    let got = tokio::time::timeout(WAIT, send(&sender, get("/big")))
        .await
        .expect("the body in time");
    assert_eq!((got.status, &got.error), (200, &None));
    assert!(
        got.data == data,
        "the body differs ({} bytes)",
        got.data.len()
    );
    h.stop(Shutdown::Fast).await;
}
