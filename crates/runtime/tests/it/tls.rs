//! The TLS front (rustls's unbuffered API, buffers of its own) against
//! clients that do what a browser would not: update their keys mid-way,
//! speak plain HTTP to the TLS port, send a handshake larger than allowed
//! or one byte at a time, stall in it, upload more than a record, or end
//! mid-request without a close_notify. After each, a well-behaved client
//! is still served.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use dropless_runtime::signal::Shutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::fixtures::WAIT;
use crate::fixtures::raw::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_update_mid_connection_is_answered_and_requests_go_on() {
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dirs, h, tls) = start_tls(&backend).await;
    let mut stream = tls_connect(h.addr, tls).await;
    let mut client_bytes = Vec::new();
    for round in 0..3 {
        stream.write_all(&get("/one")).await.unwrap();
        let resp = read_response(&mut stream, &mut client_bytes).await;
        assert_eq!(lossy(&resp), lossy(&ok("one")), "round {round}");
        // TLS 1.3 KeyUpdate asking the proxy to update its keys too: the
        // proxy must send its own, or the next response cannot be read.
        stream.get_mut().1.refresh_traffic_keys().unwrap();
        stream.flush().await.unwrap();
    }
    assert_eq!(executions(&backend, "/one"), 3);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_or_an_oversized_handshake_is_cut_off_and_others_are_served() {
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dirs, h, tls) = start_tls(&backend).await;

    // Plain HTTP on the TLS port: an alert or nothing, then the end.
    let mut plain = TcpStream::connect(h.addr).await.unwrap();
    plain.write_all(&get("/one")).await.unwrap();
    let answer = read_until_closed(&mut plain).await;
    assert!(
        answer.is_empty() || answer[0] == 21,
        "a TLS alert (21) or nothing, not {:?}",
        lossy(&answer)
    );

    // A ClientHello that says it is 16 MiB long, sent as full records: the
    // proxy stops reading it long before (rustls takes 64 KiB at most).
    let mut huge = TcpStream::connect(h.addr).await.unwrap();
    let mut first = vec![1u8, 0xff, 0xff, 0xff];
    first.resize(16 * 1024, 0);
    let record = |payload: &[u8]| {
        let len = u16::try_from(payload.len()).unwrap().to_be_bytes();
        [&[22u8, 3, 1, len[0], len[1]][..], payload].concat()
    };
    let sent = async {
        huge.write_all(&record(&first)).await?;
        for _ in 0..63 {
            huge.write_all(&record(&[0u8; 16 * 1024])).await?;
        }
        std::io::Result::Ok(())
    };
    // Cut off before all 1 MiB went (or just after): either way it ends.
    let _ = tokio::time::timeout(WAIT, sent)
        .await
        .expect("the proxy reads or closes, it does not stall the writer");
    let answer = read_until_closed(&mut huge).await;
    assert!(answer.is_empty() || answer[0] == 21, "{:?}", lossy(&answer));

    let mut client = Client::connect_tls(h.addr, tls).await;
    client.send(&get("/one")).await;
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    assert_eq!(executions(&backend, "/one"), 1, "only the TLS client's");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_many_records_arrives_whole_and_the_connection_goes_on() {
    let backend = Backend::start(vec![
        ("/upload", Reply::Keep(ok("uploaded"))),
        ("/one", Reply::Keep(ok("one"))),
    ])
    .await;
    let (_dirs, h, tls) = start_tls(&backend).await;
    let mut client = Client::connect_tls(h.addr, tls).await;
    // 200 KiB: a dozen TLS records, more than a read buffer, sent in
    // writes that split records anywhere.
    let data = pattern(200 * 1024);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    client.send(&[head.as_bytes(), &data].concat()).await;
    let resp = client.response(false).await;
    assert_eq!((resp.status, lossy(&resp.body).as_str()), (200, "uploaded"));
    // (A body this large goes to hyper, which serves the rest of the
    // connection.)
    client.send(&get("/one")).await;
    let resp = client.response(false).await;
    assert_eq!((resp.status, lossy(&resp.body).as_str()), (200, "one"));
    let received = backend.requests(2).await;
    assert!(received[0].body == data, "the upload differs");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ends_mid_request_without_close_notify_reaches_no_replica() {
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dirs, h, tls) = start_tls(&backend).await;
    let mut stream = tls_connect(h.addr, tls.clone()).await;
    // Half a request head, in whole records, then the socket's end alone.
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: app")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let (tcp, _) = stream.get_mut();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the connection");
    // Served after: the first request never was.
    let mut client = Client::connect_tls(h.addr, tls).await;
    client.send(&get("/one")).await;
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    assert_eq!(executions(&backend, "/one"), 1);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_sent_one_byte_at_a_time_completes_and_the_request_is_served() {
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let (_dirs, h, tls) = start_tls(&backend).await;
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    // Every TLS record reaches the proxy in pieces of one byte: each read
    // of it ends inside a record header or body.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(tls).connect(name, OneByte(tcp)),
    )
    .await
    .expect("a handshake in time")
    .expect("a handshake");
    let mut client = Client {
        stream: Box::new(stream),
        buf: Vec::new(),
    };
    client.send(&get("/one")).await;
    // (tokio-rustls keeps what a short write left until it is flushed.)
    client.stream.flush().await.unwrap();
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_stalls_is_closed_at_the_header_read_timeout() {
    let backend = Backend::start(vec![("/one", Reply::Keep(ok("one")))]).await;
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key, tls) = client_tls(tls_dir.path());
    let timeout = Duration::from_millis(300);
    let (_dir, h) = start_with(
        &backend,
        |_| {},
        |c| {
            c.proxy.tls_cert = Some(cert);
            c.proxy.tls_key = Some(key);
            c.proxy.header_read_timeout = timeout;
        },
    )
    .await;
    // Half a TLS record header, then nothing.
    let mut stalled = TcpStream::connect(h.addr).await.unwrap();
    stalled.write_all(&[22, 3, 1]).await.unwrap();
    let start = tokio::time::Instant::now();
    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.is_empty(), "{:?}", lossy(&answer));
    assert!(start.elapsed() >= timeout - Duration::from_millis(50));
    let mut client = Client::connect_tls(h.addr, tls).await;
    client.send(&get("/one")).await;
    assert_eq!(lossy(&client.response(false).await.raw), lossy(&ok("one")));
    h.stop(Shutdown::Fast).await;
}

/// A socket whose writes take one byte at a time.
struct OneByte(TcpStream);

impl AsyncRead for OneByte {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneByte {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let one = &buf[..buf.len().min(1)];
        let written = std::task::ready!(Pin::new(&mut self.0).poll_write(cx, one));
        // Each byte its own segment, as far as the kernel goes.
        let _ = self.0.set_nodelay(true);
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Reads one response with a body of known length from `stream` (bytes
/// beyond it kept in `buf`).
async fn read_response(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    buf: &mut Vec<u8>,
) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = parse_response(buf, false, false) {
                buf.drain(..r.raw.len());
                return without_request_id(&r.raw);
            }
            buf.reserve(4096);
            let n = stream.read_buf(buf).await.expect("a response");
            assert!(n > 0, "closed mid-response: {:?}", lossy(buf));
        }
    })
    .await
    .expect("a response in time")
}

/// Everything the proxy sends until it closes (a reset ends it too).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .expect("the proxy closes the connection");
    got
}
