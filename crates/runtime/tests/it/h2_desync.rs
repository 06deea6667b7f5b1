//! HTTP/2 requests written frame by frame, as an attacker would, to make
//! the proxy's HTTP/1.1 request to the replica say something else than the
//! client's HTTP/2 request (an "h2 desync"): a `content-length` that the
//! DATA frames contradict, a `transfer-encoding`, a CR or LF inside a
//! field or a pseudo-header. A proxy that copied such a request to its
//! pooled replica socket would have the replica read a second request the
//! proxy never saw, or hand the next client's request a wrong body.
//!
//! Each case is sent on an h2c connection of its own; whatever the proxy
//! answers (a 400, a stream reset, GOAWAY), the replica must never see the
//! smuggled request or field, and a request sent after it, on the same
//! pooled replica socket, must get its own response.

use dropless_runtime::signal::Shutdown;

use crate::fixtures::WAIT;
use crate::fixtures::h2raw::*;
use crate::fixtures::raw::*;

/// How the proxy answered stream 1.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A response head (a 400, or the replica's response).
    Response,
    /// RST_STREAM on stream 1.
    Reset,
    /// GOAWAY, or the connection closed.
    Closed,
}

/// Sends `frames` (stream 1) after the preface on a new h2c connection and
/// reads until the proxy answers stream 1.
async fn attempt(h: &crate::fixtures::Harness, frames: &[Vec<u8>]) -> Answer {
    let mut client = RawH2::connect(h.addr).await;
    // The proxy may reset the connection before it reads it all.
    let _ = client.send(frames).await;
    tokio::time::timeout(WAIT, async {
        while let Some(f) = client.next().await {
            match (f.kind, f.stream) {
                (HEADERS, 1) => return Answer::Response,
                (RST_STREAM, 1) => return Answer::Reset,
                (GOAWAY, 0) => return Answer::Closed,
                _ => {}
            }
        }
        Answer::Closed
    })
    .await
    .expect("the proxy answers the stream or closes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_h2_request_written_frame_by_frame_smuggles_a_request_or_a_field_to_the_replica() {
    let backend = Backend::start(vec![
        ("/one", Reply::Keep(ok("one"))),
        ("/smuggled", Reply::Keep(ok("smuggled"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let chunked_smuggled = [&b"0\r\n\r\n"[..], smuggled].concat();
    let post = |fields: &[(&[u8], &[u8])], body: &[u8]| {
        vec![
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &block(b"POST", b"/one", b"app.test", fields),
            ),
            frame(DATA, END_STREAM, 1, body),
        ]
    };
    let bare = |method: &[u8], path: &[u8], authority: &[u8], fields: &[(&[u8], &[u8])]| {
        vec![frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &block(method, path, authority, fields),
        )]
    };
    // The frames are right: the same request, its length true, is served,
    // its body (a request's text) read as a body.
    let length = smuggled.len().to_string();
    let control = post(&[(b"content-length", length.as_bytes())], smuggled);
    assert_eq!(attempt(&h, &control).await, Answer::Response);
    let received = backend.requests(1).await;
    assert_eq!(
        (received[0].method.as_str(), received[0].path.as_str()),
        ("POST", "/one")
    );
    assert!(
        received[0].body == smuggled,
        "{:?}",
        lossy(&received[0].raw)
    );
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "content-length 0, a request in DATA",
            post(&[(b"content-length", b"0")], smuggled),
        ),
        (
            "content-length above the DATA sent",
            post(&[(b"content-length", b"100")], b"short"),
        ),
        (
            "transfer-encoding chunked, a request after its last chunk",
            post(&[(b"transfer-encoding", b"chunked")], &chunked_smuggled),
        ),
        (
            "a field value with CR LF and a request",
            bare(
                b"GET",
                b"/one",
                b"app.test",
                &[(b"x-a", b"b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test")],
            ),
        ),
        (
            "a field value with LF and a field",
            bare(
                b"GET",
                b"/one",
                b"app.test",
                &[(b"x-a", b"b\nx-injected: 1")],
            ),
        ),
        (
            "a field name with CR LF",
            bare(
                b"GET",
                b"/one",
                b"app.test",
                &[(b"x-a\r\nx-injected", b"1")],
            ),
        ),
        (
            "a method with a request line in it",
            bare(
                b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\nGET",
                b"/one",
                b"app.test",
                &[],
            ),
        ),
        (
            "a path with a request in it",
            bare(
                b"GET",
                b"/one HTTP/1.1\r\nHost: app.test\r\n\r\nGET /smuggled",
                b"app.test",
                &[],
            ),
        ),
        (
            "an authority with a field in it",
            bare(b"GET", b"/one", b"app.test\r\nx-injected: 1", &[]),
        ),
        (
            "a host field with a field in it",
            bare(
                b"GET",
                b"/one",
                b"app.test",
                &[(b"host", b"app.test\r\nx-injected: 1")],
            ),
        ),
    ];
    for (case, frames) in &cases {
        let answer = attempt(&h, frames).await;
        // The next client's request, on the replica socket the case's
        // request would have left desynchronised.
        let mut client = Client::connect(h.addr).await;
        client.send(&get("/one")).await;
        let resp = client.response(false).await;
        assert_eq!(
            (resp.status, lossy(&resp.body).as_str()),
            (200, "one"),
            "{case} ({answer:?}): the request after it"
        );
        let received = backend.received();
        for r in &received {
            assert_ne!(r.path, "/smuggled", "{case} ({answer:?}): smuggled");
            assert!(
                r.all("x-injected").is_empty(),
                "{case} ({answer:?}): a field injected: {:?}",
                lossy(&r.raw)
            );
            let length = r.all("content-length");
            if let [n] = length[..] {
                assert_eq!(
                    n.parse::<usize>().ok(),
                    Some(r.body.len()),
                    "{case}: the length the replica was told is its body's"
                );
            }
        }
    }
    h.stop(Shutdown::Fast).await;
}
