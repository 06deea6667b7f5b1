//! Test servers on 127.0.0.1 port 0: one that misbehaves on purpose, request
//! by request and connection by connection; an HTTP/2 one; a TLS one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the misbehaving server does with one request.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// `200 OK`, body `ok`, connection kept.
    Ok,
    /// This status, body `no`, connection kept.
    Status(u16),
    /// Close the connection without a response.
    Close,
    /// Reset the connection (RST) without a response.
    Reset,
    /// Wait, then `200 OK`.
    Stall(Duration),
    /// Never answer; keep the connection open.
    Hang,
}

/// A running test server.
pub struct Server {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Most HTTP/2 streams in progress at once (HTTP/2 server only).
    pub max_streams: Arc<AtomicUsize>,
}

impl Server {
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/", self.addr)
    }
}

/// An HTTP/1.1 server whose connection number `n` (from 0) plays
/// `script(n)`, one action per request, then answers `200 OK` forever.
pub async fn misbehaving(script: impl Fn(usize) -> Vec<Action> + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = server_for(&listener);
    let connections = server.connections.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, script(n)));
        }
    });
    server
}

/// A server answering `200 OK` to every request, as fast as it can.
pub async fn fast() -> Server {
    misbehaving(|_| Vec::new()).await
}

/// A plain TCP server that answers anything (a TLS ClientHello too) with
/// `400 Bad Request` and closes, as a plain HTTP server on a TLS URL does.
pub async fn plain_text_only() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = server_for(&listener);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    server
}

/// How each connection of the HTTP/2 server ends.
#[derive(Clone, Copy, Debug)]
pub enum H2End {
    /// When the client closes it.
    Never,
    /// A graceful shutdown (GOAWAY, in-flight streams finish) this long after
    /// it opened.
    GoAway(Duration),
    /// Dropped abruptly, streams in flight and all, this long after it opened.
    Drop(Duration),
}

/// An HTTP/2 (h2c) server that answers `ok` after `delay`; each connection
/// ends as `end` says.
pub async fn http2(delay: Duration, end: H2End) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = server_for(&listener);
    let (connections, max_streams) = (server.connections.clone(), server.max_streams.clone());
    let streams = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let (streams, max_streams) = (streams.clone(), max_streams.clone());
            let service = service_fn(move |_request| {
                let (streams, max_streams) = (streams.clone(), max_streams.clone());
                async move {
                    let now = streams.fetch_add(1, Ordering::SeqCst) + 1;
                    max_streams.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    streams.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(async move {
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let after = match end {
                    H2End::Never => Duration::MAX,
                    H2End::GoAway(after) | H2End::Drop(after) => after,
                };
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = tokio::time::sleep(after) => match end {
                        H2End::Drop(_) => return,
                        _ => conn.as_mut().graceful_shutdown(),
                    },
                }
                let _ = conn.await;
            });
        }
    });
    server
}

/// An HTTPS server with a self-signed certificate for `localhost`, speaking
/// HTTP/2 (ALPN `h2`) or HTTP/1.1.
pub async fn tls(h2: bool) -> Server {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = server_for(&listener);
    let connections = server.connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let io = TokioIo::new(stream);
                let _ = match h2 {
                    true => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    }
                    false => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    }
                };
            });
        }
    });
    server
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn server_for(listener: &TcpListener) -> Server {
    Server {
        addr: listener.local_addr().unwrap(),
        connections: Arc::new(AtomicUsize::new(0)),
        max_streams: Arc::new(AtomicUsize::new(0)),
    }
}

/// Serve one connection: read each request head, play the next action.
async fn serve(mut stream: TcpStream, script: Vec<Action>) {
    let mut actions = script.into_iter();
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Requests in these tests have no body: a head ends the request.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let close = buf[..end]
            .windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
        buf.drain(..end);
        let status = match actions.next().unwrap_or(Action::Ok) {
            Action::Ok => 200,
            Action::Status(code) => code,
            Action::Close => return,
            Action::Reset => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return;
            }
            Action::Stall(delay) => {
                tokio::time::sleep(delay).await;
                200
            }
            Action::Hang => {
                let _ = stream.read(&mut [0u8; 1]).await;
                return;
            }
        };
        let body = if status == 200 { "ok" } else { "no" };
        let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{body}");
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}
