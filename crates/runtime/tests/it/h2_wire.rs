//! What the proxy writes on an HTTP/2 connection, frame by frame. Its
//! response heads are encoded by dropless itself (HPACK without a dynamic
//! table), so these read them as a strict client would: the table size
//! update a smaller SETTINGS_HEADER_TABLE_SIZE calls for, heads split into
//! CONTINUATION frames at the frame size, every status decoded.

use dropless_runtime::signal::Shutdown;
use http::Request;

use crate::fixtures::WAIT;
use crate::fixtures::h2raw::*;
use crate::fixtures::raw::*;

/// SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
const HEADER_TABLE_SIZE: u16 = 0x1;
/// The largest frame payload until SETTINGS say otherwise.
const MAX_FRAME: usize = 16_384;

/// The frames the proxy sends on stream `id` until one ends it.
async fn stream_frames(client: &mut RawH2, id: u32) -> Vec<Frame> {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(f) = client.next().await {
            if f.stream != id {
                continue;
            }
            let end = f.flags & END_STREAM != 0 && (f.kind == HEADERS || f.kind == DATA);
            seen.push(f);
            if end {
                return;
            }
        }
    })
    .await
    .expect("the stream ends in time");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_shrinks_the_header_table_is_sent_the_size_update_first() {
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let mut client = RawH2::settled(h.addr).await;
    // A decoder told of a smaller table expects the encoder to say which
    // size it uses, first thing in the next block (RFC 7541 §4.2);
    // nghttp2 (curl, h2load) fails the connection otherwise.
    let mut table = HEADER_TABLE_SIZE.to_be_bytes().to_vec();
    table.extend_from_slice(&0u32.to_be_bytes());
    assert!(client.send(&[frame(SETTINGS, 0, 0, &table)]).await);
    assert!(client.send(&[get_on(1, "/one")]).await);
    let frames = stream_frames(&mut client, 1).await;
    let head = &frames[0];
    assert_eq!(head.kind, HEADERS);
    // 001 and a 5-bit size: 0; then `:status: 200`, static index 8.
    assert_eq!(&head.payload[..2], &[0x20, 0x88], "{head:?}");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_larger_than_a_frame_comes_in_continuation_frames() {
    let big = "v".repeat(40_000);
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Big: {big}\r\n\r\none");
    let backend = Backend::start(vec![("/big", Reply::Keep(reply.into_bytes()))]).await;
    let (_dir, h) = start(&backend, |_| {}).await;

    let mut client = RawH2::settled(h.addr).await;
    assert!(client.send(&[get_on(1, "/big")]).await);
    let frames = stream_frames(&mut client, 1).await;
    let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.flags)).collect();
    assert_eq!(
        kinds,
        vec![
            (HEADERS, 0),
            (CONTINUATION, 0),
            (CONTINUATION, END_HEADERS),
            (DATA, END_STREAM)
        ],
        "each frame within {MAX_FRAME} bytes"
    );
    assert!(frames.iter().all(|f| f.payload.len() <= MAX_FRAME));

    // And the block decodes, by the `h2` crate's client.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = h2::client::Builder::new()
        .max_header_list_size(1 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("an h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://app.test/big").body(()).unwrap();
    let (resp, _) = sender.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-big"], big.as_str());
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_reaches_the_client_indexed_or_literal() {
    let statuses = [200, 201, 204, 206, 299, 304, 400, 404, 418, 500, 503];
    let script: Vec<(String, Reply)> = statuses
        .iter()
        .map(|s| {
            let head = format!("HTTP/1.1 {s} X\r\nContent-Length: 0\r\n\r\n");
            (format!("/{s}"), Reply::Keep(head.into_bytes()))
        })
        .collect();
    let backend = Backend::start(
        script
            .iter()
            .map(|(p, r)| (p.as_str(), r.clone()))
            .collect(),
    )
    .await;
    let (_dir, h) = start(&backend, |_| {}).await;
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    tokio::spawn(conn);
    for s in statuses {
        let req = Request::get(format!("http://app.test/{s}"))
            .body(())
            .unwrap();
        let (resp, _) = sender.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
        assert_eq!(resp.status().as_u16(), s);
    }
    h.stop(Shutdown::Fast).await;
}
