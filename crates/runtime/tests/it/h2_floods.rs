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

/// The most streams a client may have open at once (hyper's default, which
/// the proxy kept: `hyper_path::an_h2_client_may_open_200_streams_at_once`).
const MAX_STREAMS: usize = 200;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_for_the_client_s_errors_end_the_connection_after_a_bound() {
    let (backend, _dir, h) = setup().await;
    let mut client = RawH2::settled(h.addr).await;
    // Each request lacks its `:path`: malformed, its stream is reset.
    let malformed: Vec<u8> = [
        literal(b":method", b"GET"),
        literal(b":scheme", b"http"),
        literal(b":authority", b"app.test"),
    ]
    .concat();
    let streams: Vec<Vec<u8>> = (0..1_100)
        .map(|i| frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &malformed))
        .collect();
    let _ = client.send(&streams).await;
    let seen = read_until(&mut client, |f| f.kind == GOAWAY).await;
    let resets = seen.iter().filter(|f| f.kind == RST_STREAM).count();
    assert_eq!(
        seen.last()
            .filter(|f| f.kind == GOAWAY)
            .and_then(Frame::error_code),
        Some(ENHANCE_YOUR_CALM),
        "after {resets} resets"
    );
    assert!(resets <= 1_024, "{resets} resets before GOAWAY");
    next_client_is_served(&h).await;
    assert_eq!(
        executions(&backend, "/one"),
        1,
        "only the next client's request"
    );
    h.stop(Shutdown::Fast).await;
}

/// A padded DATA frame takes its padding from the windows too (RFC 9113
/// §6.1): an upload in small, heavily padded frames is twice the windows
/// in padding alone, and arrives whole only if the proxy gives back the
/// window its padding took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_in_padded_frames_gets_its_padding_s_window_back_and_arrives_whole() {
    const PADDED: u8 = 0x8;
    let backend = Backend::start(vec![("/upload", Reply::Keep(ok("stored")))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    // Not `settled`: the proxy's SETTINGS and first WINDOW_UPDATE count.
    let mut client = RawH2::connect(h.addr).await;
    let body = pattern(4 * 1024 * 1024);
    let length = body.len().to_string();
    let head = block(
        b"POST",
        b"/upload",
        b"app.test",
        &[(b"content-length", length.as_bytes())],
    );
    assert!(client.send(&[frame(HEADERS, END_HEADERS, 1, &head)]).await);
    // The windows as the client counts them: the defaults, then what the
    // proxy's SETTINGS and WINDOW_UPDATEs say.
    let (mut conn, mut stream) = (65_535_i64, 65_535_i64);
    let mut sent = 0;
    while sent < body.len() {
        let mut batch = Vec::new();
        while sent < body.len() {
            let n = 512.min(body.len() - sent);
            let cost = (n + 256) as i64;
            if cost > conn.min(stream) {
                break;
            }
            let mut payload = vec![255u8];
            payload.extend_from_slice(&body[sent..sent + n]);
            payload.extend_from_slice(&[0; 255]);
            sent += n;
            let end = if sent == body.len() { END_STREAM } else { 0 };
            batch.push(frame(DATA, PADDED | end, 1, &payload));
            conn -= cost;
            stream -= cost;
        }
        assert!(client.send(&batch).await, "the proxy closed the connection");
        if sent == body.len() {
            break;
        }
        // Blocked: wait for window.
        let f = tokio::time::timeout(WAIT, client.next())
            .await
            .unwrap_or_else(|_| panic!("no window after {sent} bytes: the upload stalls"))
            .expect("the connection is open");
        match (f.kind, f.stream) {
            (WINDOW_UPDATE, 0) => {
                conn += i64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()))
            }
            (WINDOW_UPDATE, 1) => {
                stream += i64::from(u32::from_be_bytes(f.payload[..4].try_into().unwrap()))
            }
            (SETTINGS, 0) if f.flags & ACK == 0 => {
                // SETTINGS_INITIAL_WINDOW_SIZE (0x4), if set.
                for s in f.payload.chunks(6) {
                    if s[..2] == [0, 4] {
                        let w = i64::from(u32::from_be_bytes(s[2..6].try_into().unwrap()));
                        stream += w - 65_535;
                    }
                }
            }
            (RST_STREAM | GOAWAY, _) => panic!("{f:?} after {sent} bytes"),
            _ => {}
        }
    }
    let seen = read_until(&mut client, |f| {
        f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM)
    })
    .await;
    assert!(
        seen.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "no response: {:?}",
        seen.iter().map(|f| (f.kind, f.stream)).collect::<Vec<_>>()
    );
    let received = backend.requests(1).await;
    assert!(
        received[0].body == body,
        "the body differs ({} bytes)",
        received[0].body.len()
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_gets_no_content_even_in_the_proxy_s_own_error_response() {
    let (_backend, _dir, h) = setup().await;
    // No service answers for this host: the proxy's own 404, which has a
    // body for a GET.
    let mut lengths = Vec::new();
    for (id, method) in [(1, &b"GET"[..]), (3, b"HEAD")] {
        let mut client = RawH2::settled(h.addr).await;
        let head = block(method, b"/one", b"nowhere.test", &[]);
        assert!(
            client
                .send(&[frame(HEADERS, END_HEADERS | END_STREAM, id, &head)])
                .await
        );
        let seen = read_until(&mut client, |f| {
            f.stream == id && (f.flags & END_STREAM != 0 || f.kind == RST_STREAM)
        })
        .await;
        let data: usize = seen
            .iter()
            .filter(|f| f.kind == DATA && f.stream == id)
            .map(|f| f.payload.len())
            .sum();
        assert!(seen.iter().any(|f| f.kind == HEADERS && f.stream == id));
        lengths.push(data);
    }
    assert!(lengths[0] > 0, "the GET's error response has a body");
    assert_eq!(lengths[1], 0, "a HEAD's response carries no content");
    h.stop(Shutdown::Fast).await;
}

/// A stopping proxy's GOAWAY races the streams the client is opening: one
/// sent before the client saw the GOAWAY reaches the proxy after it. The
/// first GOAWAY names the largest stream id and comes with a PING, so that
/// such a stream is still served; the last GOAWAY, after the PING's
/// answer, names the streams served (RFC 9113 §6.8). A single GOAWAY with
/// the last stream the proxy had seen refused it (`dropless load` counted a
/// reset during `dropless upgrade`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_as_the_proxy_stops_is_served_and_the_last_goaway_names_it() {
    let (_backend, _dir, h) = setup().await;
    let addr = h.addr;
    let mut client = RawH2::settled(addr).await;
    assert!(client.send(&[get_on(1, "/one")]).await);
    read_until(&mut client, |f| f.stream == 1 && f.flags & END_STREAM != 0).await;
    let stopping = tokio::spawn(h.stop(Shutdown::Graceful));
    let seen = read_until(&mut client, |f| f.kind == GOAWAY).await;
    let first = seen.last().filter(|f| f.kind == GOAWAY).expect("a GOAWAY");
    let last_id = |f: &Frame| u32::from_be_bytes(f.payload[..4].try_into().unwrap()) & 0x7fff_ffff;
    assert_eq!(
        last_id(first),
        0x7fff_ffff,
        "the first GOAWAY refuses nothing yet"
    );
    // Sent before this client saw the GOAWAY, as far as the proxy can tell.
    assert!(client.send(&[get_on(3, "/one")]).await);
    let mut ping = None;
    let seen = read_until(&mut client, |f| {
        if f.kind == PING && f.flags & ACK == 0 {
            ping = Some(f.payload.clone());
        }
        f.stream == 3 && (f.flags & END_STREAM != 0 || f.kind == RST_STREAM)
    })
    .await;
    assert!(
        seen.iter().any(|f| f.kind == HEADERS && f.stream == 3),
        "stream 3 is served: {:?}",
        seen.iter().map(|f| (f.kind, f.stream)).collect::<Vec<_>>()
    );
    let ping = match ping {
        Some(p) => p,
        None => {
            read_until(&mut client, |f| f.kind == PING)
                .await
                .pop()
                .filter(|f| f.kind == PING)
                .expect("a PING with the first GOAWAY")
                .payload
        }
    };
    assert!(client.send(&[frame(PING, ACK, 0, &ping)]).await);
    let seen = read_until(&mut client, |f| f.kind == GOAWAY).await;
    let last = seen
        .last()
        .filter(|f| f.kind == GOAWAY)
        .expect("the last GOAWAY");
    assert_eq!((last_id(last), last.error_code()), (3, Some(0)));
    let end = tokio::time::timeout(WAIT, async { while client.next().await.is_some() {} }).await;
    assert!(end.is_ok(), "the connection ends once its streams have");
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}

/// A proxy whose header read timeout, which is also HTTP/2's idle
/// timeout, is [`IDLE`], in front of `/one` and `/slow`.
async fn setup_idle() -> (Backend, tempfile::TempDir, crate::fixtures::Harness) {
    let backend = Backend::start(vec![
        ("/one", Reply::Keep(ok("one"))),
        ("/slow", Reply::Silent),
    ])
    .await;
    let (dir, h) = start_with(&backend, |_| {}, |c| c.proxy.header_read_timeout = IDLE).await;
    (backend, dir, h)
}

const IDLE: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gets_goaway_after_the_header_read_timeout_and_ends() {
    let (_backend, _dir, h) = setup_idle().await;
    let mut client = RawH2::settled(h.addr).await;
    assert!(client.send(&[get_on(1, "/one")]).await);
    let seen = read_until(&mut client, |f| f.stream == 1 && f.flags & END_STREAM != 0).await;
    assert!(seen.iter().any(|f| f.kind == DATA && f.payload == b"one"));
    let answered = std::time::Instant::now();
    let seen = read_until(&mut client, |f| f.kind == GOAWAY).await;
    let away = seen.last().filter(|f| f.kind == GOAWAY).expect("a GOAWAY");
    let idle_for = answered.elapsed();
    assert!(
        idle_for >= IDLE - Duration::from_millis(50),
        "GOAWAY {idle_for:?} after the response"
    );
    assert_eq!(away.error_code(), Some(0), "NO_ERROR");
    assert_eq!(
        &away.payload[..4],
        &1u32.to_be_bytes(),
        "the last stream: 1"
    );
    let rest = tokio::time::timeout(WAIT, client.next()).await;
    assert!(matches!(rest, Ok(None)), "the connection ends: {rest:?}");
    next_client_is_served(&h).await;
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_stream_open_is_not_idle() {
    let (backend, _dir, h) = setup_idle().await;
    let mut client = RawH2::settled(h.addr).await;
    assert!(client.send(&[get_on(1, "/slow")]).await);
    backend.requests(1).await;
    // Three idle timeouts pass while the request waits for its replica.
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(3 * IDLE, async {
        while let Some(f) = client.next().await {
            seen.push(f);
        }
    })
    .await
    .is_ok();
    assert!(!ended, "the connection ended: {seen:?}");
    assert!(seen.iter().all(|f| f.kind != GOAWAY), "{seen:?}");
    // It is served still.
    assert!(client.send(&[frame(PING, 0, 0, &[7; 8])]).await);
    let seen = read_until(&mut client, |f| f.kind == PING).await;
    assert!(seen.iter().all(|f| f.kind != GOAWAY), "{seen:?}");
    assert!(
        seen.last()
            .is_some_and(|f| f.kind == PING && f.flags & ACK != 0)
    );
    h.stop(Shutdown::Fast).await;
}

/// SETTINGS and a WINDOW_UPDATE that make every window as large as it
/// goes (2³¹−1), then `frame_after`.
fn largest_windows_then(frame_after: Vec<u8>) -> Vec<Vec<u8>> {
    let mut largest = 0x4u16.to_be_bytes().to_vec();
    largest.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    let more = (0x7fff_ffffu32 - 65_535).to_be_bytes();
    vec![
        frame(SETTINGS, 0, 0, &largest),
        frame(WINDOW_UPDATE, 0, 0, &more),
        frame_after,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_download_may_still_upload() {
    const DOWNLOAD: usize = 24 << 20;
    const UPLOAD: usize = 512 << 10;
    let backend = Backend::start(vec![
        (
            "/big",
            Reply::Keep(with_length("200 OK", &vec![b'd'; DOWNLOAD])),
        ),
        ("/up", Reply::Keep(ok("up"))),
    ])
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = RawH2::settled(h.addr).await;
    // Windows as large as they go: the download is held back by the
    // socket alone, which this client never reads from.
    assert!(client.send(&largest_windows_then(get_on(1, "/big"))).await);
    // Until what the proxy wrote stops coming: its socket is full, and
    // its writer holds what the socket did not take. No event says so;
    // three equal peeks 100 ms apart do.
    let mut peeked = vec![0; 8 << 20];
    let mut last = 0;
    let mut same = 0;
    while same < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = client.tcp.peek(&mut peeked).await.unwrap();
        same = if n == last { same + 1 } else { 0 };
        last = n;
    }
    let head = [
        literal(b":method", b"POST"),
        literal(b":scheme", b"http"),
        literal(b":path", b"/up"),
        literal(b":authority", b"app.test"),
        literal(b"content-length", UPLOAD.to_string().as_bytes()),
    ]
    .concat();
    let mut upload = vec![frame(HEADERS, END_HEADERS, 3, &head)];
    let chunk = vec![b'u'; 16 << 10];
    for i in 0..UPLOAD / chunk.len() {
        let end = if i + 1 == UPLOAD / chunk.len() {
            END_STREAM
        } else {
            0
        };
        upload.push(frame(DATA, end, 3, &chunk));
    }
    let sent = tokio::time::timeout(WAIT, client.send(&upload)).await;
    assert!(matches!(sent, Ok(true)), "the upload is read");
    let received = tokio::time::timeout(WAIT, backend.requests(2))
        .await
        .expect("the upload reaches the replica");
    let up = received.iter().find(|r| r.path == "/up").unwrap();
    assert_eq!(up.body.len(), UPLOAD);
    h.stop(Shutdown::Fast).await;
}

/// How long a client may take nothing of its response, in the send-timeout
/// tests.
const SEND_TIMEOUT: Duration = Duration::from_millis(300);

/// A replica with a 24 MiB response at `/big` and `/one`, behind a proxy
/// whose send timeout is [`SEND_TIMEOUT`].
async fn setup_send() -> (Backend, tempfile::TempDir, crate::fixtures::Harness) {
    let backend = Backend::start(vec![
        (
            "/big",
            Reply::Keep(with_length("200 OK", &vec![b'b'; 24 << 20])),
        ),
        ("/one", Reply::Keep(ok("one"))),
    ])
    .await;
    let (dir, h) = start_with(&backend, |_| {}, |c| c.proxy.send_timeout = SEND_TIMEOUT).await;
    (backend, dir, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_window_stays_closed_is_reset_after_the_send_timeout() {
    let (_backend, _dir, h) = setup_send().await;
    let mut client = RawH2::settled(h.addr).await;
    // The stream's window stays the default 65 535 bytes; the connection's
    // is opened, for the next stream.
    let more = (1u32 << 20).to_be_bytes();
    assert!(
        client
            .send(&[frame(WINDOW_UPDATE, 0, 0, &more), get_on(1, "/big")])
            .await
    );
    let seen = read_until(&mut client, |f| f.kind == RST_STREAM && f.stream == 1).await;
    let reset = seen.last().filter(|f| f.kind == RST_STREAM);
    assert_eq!(
        reset.and_then(Frame::error_code),
        Some(CANCEL),
        "the stalled stream is reset"
    );
    let data: usize = seen
        .iter()
        .filter(|f| f.kind == DATA)
        .map(|f| f.payload.len())
        .sum();
    assert_eq!(data, 65_535, "what the window let through");
    // The connection serves on.
    assert!(client.send(&[get_on(3, "/one")]).await);
    let seen = read_until(&mut client, |f| f.kind == DATA && f.stream == 3).await;
    assert!(seen.iter().any(|f| f.kind == DATA && f.payload == b"one"));
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    let (_backend, _dir, h) = setup_send().await;
    let mut client = RawH2::settled(h.addr).await;
    assert!(client.send(&largest_windows_then(get_on(1, "/big"))).await);
    // The client reads nothing for four send timeouts: no event tells when
    // the proxy gives up, so the test waits that long.
    tokio::time::sleep(4 * SEND_TIMEOUT).await;
    let seen = read_until(&mut client, |_| false).await;
    let data: usize = seen
        .iter()
        .filter(|f| f.kind == DATA)
        .map(|f| f.payload.len())
        .sum();
    assert!(data < 24 << 20, "{data} bytes: the proxy stopped sending");
    assert!(client.next().await.is_none(), "and dropped the connection");
    next_client_is_served(&h).await;
    h.stop(Shutdown::Fast).await;
}
