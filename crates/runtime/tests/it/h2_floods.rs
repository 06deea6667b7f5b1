//! HTTP/2 clients that try to make the proxy do unbounded work or hold
//! unbounded memory, frame by frame: streams opened and reset at once
//! (the "rapid reset" of CVE-2023-44487), more streams than the proxy
//! allows, flow-control windows pushed past their largest size, control
//! frames sent by a client that never reads the answers, a header block
//! that never ends (CONTINUATION frames, CVE-2024-27316). Whatever the
//! proxy answers, the replica must see a bounded number of requests, the
//! connection must end or stop being read, and the next client must be
//! served.

use std::time::Duration;

use dropless_runtime::signal::Shutdown;
use tokio::io::AsyncWriteExt;

use crate::fixtures::WAIT;
use crate::fixtures::h2raw::*;
use crate::fixtures::raw::*;

/// The most streams a client may have open at once (hyper's default,
/// which the proxy keeps: `hyper_path::an_h2_client_may_open_200_streams_at_once`).
const MAX_STREAMS: usize = 200;

/// A GET of `path` on stream `id`, its request whole.
fn get_on(id: u32, path: &str) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        id,
        &block(b"GET", path.as_bytes(), b"app.test", &[]),
    )
}

/// Reads what the proxy sends until the connection ends or `done` says so
/// (within [`WAIT`]); returns the frames read.
async fn read_until(client: &mut RawH2, mut done: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        while let Some(f) = client.next().await {
            let stop = done(&f);
            seen.push(f);
            if stop {
                return;
            }
        }
    })
    .await;
    seen
}

/// A replica that answers `/one` and never answers `/slow`, and the proxy
/// in front of it.
async fn setup() -> (Backend, tempfile::TempDir, crate::fixtures::Harness) {
    let backend = Backend::start(vec![
        ("/one", Reply::Keep(ok("one"))),
        ("/slow", Reply::Silent),
    ])
    .await;
    let (dir, h) = start(&backend, |_| {}).await;
    (backend, dir, h)
}

/// A new client is served after the attack: the proxy is not stuck.
async fn next_client_is_served(h: &crate::fixtures::Harness) {
    let mut client = Client::connect(h.addr).await;
    client.send(&get("/one")).await;
    let resp = client.response(false).await;
    assert_eq!((resp.status, lossy(&resp.body).as_str()), (200, "one"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_as_soon_as_opened_end_the_connection_before_they_flood_the_replica() {
    let (backend, _dir, h) = setup().await;
    let mut client = RawH2::settled(h.addr).await;
    const OPENED: u32 = 5_000;
    let burst: Vec<Vec<u8>> = (0..OPENED)
        .flat_map(|i| {
            let id = 1 + 2 * i;
            [
                get_on(id, "/slow"),
                frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()),
            ]
        })
        .collect();
    // The proxy may close the connection before it has read the burst.
    let _ = client.send(&burst).await;
    let seen = read_until(&mut client, |f| f.kind == GOAWAY).await;
    let goaway = seen.iter().find(|f| f.kind == GOAWAY);
    assert_eq!(
        goaway.and_then(Frame::error_code),
        Some(ENHANCE_YOUR_CALM),
        "the burst is answered with GOAWAY: {:?}",
        seen.iter().map(|f| (f.kind, f.stream)).collect::<Vec<_>>()
    );
    drop(client);
    // Counted once a later request has been served: what the proxy sent
    // for the burst has reached the replica by then.
    next_client_is_served(&h).await;
    let sent = executions(&backend, "/slow");
    assert!(
        sent < MAX_STREAMS,
        "{sent} of {OPENED} reset streams reached the replica"
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_never_reach_the_replica() {
    let (backend, _dir, h) = setup().await;
    let mut client = RawH2::settled(h.addr).await;
    let extra = 50;
    let opened = u32::try_from(MAX_STREAMS + extra).unwrap();
    let streams: Vec<Vec<u8>> = (0..opened).map(|i| get_on(1 + 2 * i, "/slow")).collect();
    assert!(client.send(&streams).await);
    // The replica never answers: the first MAX_STREAMS stay open; each of
    // the others must be refused.
    let mut refused = 0;
    let seen = read_until(&mut client, |f| {
        if f.kind == RST_STREAM && f.stream > 2 * u32::try_from(MAX_STREAMS).unwrap() {
            refused += 1;
        }
        refused == extra || f.kind == GOAWAY
    })
    .await;
    for f in &seen {
        if f.kind == RST_STREAM {
            assert!(
                f.stream > 2 * u32::try_from(MAX_STREAMS).unwrap(),
                "stream {} within the limit was reset",
                f.stream
            );
            assert!(
                matches!(f.error_code(), Some(REFUSED_STREAM | PROTOCOL_ERROR)),
                "stream {} reset with {:?}",
                f.stream,
                f.error_code()
            );
        }
    }
    assert_eq!(refused, extra, "every stream past the limit is refused");
    let sent = backend
        .wait(|log| (log.received.len() >= MAX_STREAMS).then_some(log.received.len()))
        .await;
    assert_eq!(
        sent, MAX_STREAMS,
        "the replica got only the streams allowed"
    );
    drop(client);
    next_client_is_served(&h).await;
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_past_its_largest_size_ends_the_stream_or_the_connection() {
    let (_backend, _dir, h) = setup().await;
    let most = 0x7fff_ffff_u32.to_be_bytes();
    // A stream's window: that stream is reset, the connection serves on.
    let mut client = RawH2::settled(h.addr).await;
    assert!(
        client
            .send(&[get_on(1, "/slow"), frame(WINDOW_UPDATE, 0, 1, &most)])
            .await
    );
    let seen = read_until(&mut client, |f| f.kind == RST_STREAM || f.kind == GOAWAY).await;
    let last = seen.last().expect("an answer");
    assert_eq!(
        (last.kind, last.stream, last.error_code()),
        (RST_STREAM, 1, Some(FLOW_CONTROL_ERROR))
    );
    assert!(client.send(&[get_on(3, "/one")]).await);
    let seen = read_until(&mut client, |f| f.kind == HEADERS && f.stream == 3).await;
    assert!(
        seen.iter().any(|f| f.kind == HEADERS && f.stream == 3),
        "the connection serves on: {seen:?}"
    );
    // The connection's window: GOAWAY.
    let mut client = RawH2::settled(h.addr).await;
    assert!(client.send(&[frame(WINDOW_UPDATE, 0, 0, &most)]).await);
    let seen = read_until(&mut client, |f| f.kind == GOAWAY).await;
    assert_eq!(
        seen.last().and_then(Frame::error_code),
        Some(FLOW_CONTROL_ERROR)
    );
    next_client_is_served(&h).await;
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_that_never_ends_closes_the_connection() {
    let (backend, _dir, h) = setup().await;
    let mut client = RawH2::settled(h.addr).await;
    // A HEADERS frame without END_HEADERS, then CONTINUATION frames of
    // 100 new 100-byte fields each: 2 MiB of header block, 32 times the
    // most the proxy accepts (`max_header_bytes`), and never its end.
    let mut frames = vec![frame(
        HEADERS,
        0,
        1,
        &block(b"GET", b"/one", b"app.test", &[]),
    )];
    let field = literal(b"x-flood", &[b'a'; 100]);
    frames.extend(std::iter::repeat_n(
        frame(CONTINUATION, 0, 1, &field.repeat(100)),
        190,
    ));
    // The proxy may close the connection before it has read them all.
    let _ = client.send(&frames).await;
    // Waiting for the block's end would hold it (and its memory) for good:
    // the proxy ends the connection instead.
    let seen = read_until(&mut client, |f| f.kind == GOAWAY).await;
    let end = tokio::time::timeout(WAIT, async { while client.next().await.is_some() {} }).await;
    assert!(
        end.is_ok(),
        "the connection is still open: {:?}",
        seen.iter().map(|f| (f.kind, f.stream)).collect::<Vec<_>>()
    );
    if let Some(goaway) = seen.iter().find(|f| f.kind == GOAWAY) {
        assert_ne!(goaway.error_code(), Some(0), "GOAWAY without an error");
    }
    assert_eq!(executions(&backend, "/one"), 0, "the request was sent on");
    next_client_is_served(&h).await;
    h.stop(Shutdown::Fast).await;
}

/// A client sends PING or SETTINGS frames, each of which the proxy must
/// answer, and reads nothing: the proxy must stop reading once its answers
/// cannot be sent, not keep them. The client writes until its writes stop
/// going through; if the proxy read all of 64 MiB of such frames, it kept
/// (or dropped) the answers to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_from_a_client_that_never_reads_are_not_read_without_end() {
    let (_backend, _dir, h) = setup().await;
    for (name, f) in [
        ("PING", frame(PING, 0, 0, &[7; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])),
    ] {
        let client = RawH2::settled(h.addr).await;
        let (_read, mut write) = client.tcp.into_split();
        let chunk = f.repeat(4096);
        let total = 64 * 1024 * 1024;
        let writer = tokio::spawn(async move {
            let mut written = 0;
            while written < total {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
                written += chunk.len();
            }
            written
        });
        // Writing 64 MiB to a proxy that reads it takes well under a
        // second on loopback; one that stopped reading never lets it end.
        // The bound decides which, so it is generous.
        let done = tokio::time::timeout(Duration::from_secs(3), writer).await;
        if let Ok(written) = done {
            let written = written.unwrap();
            assert!(
                written < total,
                "{name}: all {written} bytes were read from a client that read nothing"
            );
        }
        next_client_is_served(&h).await;
    }
    h.stop(Shutdown::Fast).await;
}
