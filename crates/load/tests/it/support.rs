//! Test servers on 127.0.0.1 port 0: one that misbehaves on purpose, request
//! by request and connection by connection; an HTTP/2 one; a TLS one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// When each connection was accepted (misbehaving server only).
    pub accepted: Arc<Mutex<Vec<Instant>>>,
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
    let accepted = server.accepted.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.lock().unwrap().push(Instant::now());
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
        accepted: Arc::new(Mutex::new(Vec::new())),
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

/// What the game server does to one session, on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Twist {
    /// Counts every move.
    None,
    /// At the 3rd move, the counter starts over (the state is lost).
    Reset,
    /// At the 3rd move, the counter skips one.
    Skip,
    /// At the 3rd move, the counter does not move.
    Repeat,
    /// The 2nd move's response says it was held 250 ms for a handoff.
    Held,
    /// The stream leaves out the 2nd move.
    StreamSkip,
}

/// A game server as the demo's: `POST /game/{id}/move` answers the move
/// number, `GET /game/{id}/ws?after=N` streams the moves. Session keys end
/// in `-{index}`; `twist(index)` says how it misbehaves.
pub struct GameServer {
    pub addr: SocketAddr,
    /// Closes every open stream with this close code when notified.
    pub close_streams: Arc<tokio::sync::Notify>,
    /// Streams open now.
    pub open_streams: Arc<AtomicUsize>,
}

/// A session: its move number, the moves played, its stream.
type Game = (u64, u64, tokio::sync::broadcast::Sender<u64>);

struct GameState {
    twist: Box<dyn Fn(usize) -> Twist + Send + Sync>,
    games: std::sync::Mutex<std::collections::HashMap<String, Game>>,
    close: Arc<tokio::sync::Notify>,
    open: Arc<AtomicUsize>,
}

impl GameServer {
    pub async fn start(twist: impl Fn(usize) -> Twist + Send + Sync + 'static) -> GameServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let close = Arc::new(tokio::sync::Notify::new());
        let open = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(GameState {
            twist: Box::new(twist),
            games: Default::default(),
            close: close.clone(),
            open: open.clone(),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(game_answer(&state, request)) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        GameServer {
            addr,
            close_streams: close,
            open_streams: open,
        }
    }
}

fn game_answer(
    state: &Arc<GameState>,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("game"), Some(id), Some(action)) = (parts.next(), parts.next(), parts.next()) else {
        return hyper::Response::builder()
            .status(404)
            .body(Full::default())
            .unwrap();
    };
    let index: usize = id.rsplit('-').next().unwrap().parse().unwrap();
    let twist = (state.twist)(index);
    let mut games = state.games.lock().unwrap();
    let (moves, played, stream) = games
        .entry(id.to_owned())
        .or_insert_with(|| (0, 0, tokio::sync::broadcast::Sender::new(1024)));
    match action {
        "move" => {
            *played += 1;
            *moves = match (twist, *played) {
                (Twist::Reset, 3) => 1,
                (Twist::Skip, 3) => *moves + 2,
                (Twist::Repeat, 3) => *moves,
                _ => *moves + 1,
            };
            if !(twist == Twist::StreamSkip && *played == 2) {
                let _ = stream.send(*moves);
            }
            let mut response = hyper::Response::builder();
            if twist == Twist::Held && *played == 2 {
                response = response.header("x-dropless-held-ms", "250");
            }
            response
                .body(Full::new(Bytes::from(moves.to_string())))
                .unwrap()
        }
        "ws" => {
            let after: u64 = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("after="))
                .map_or(0, |n| n.parse().unwrap());
            let key = request.headers()["sec-websocket-key"].as_bytes().to_vec();
            let (current, mut moves) = (*moves, stream.subscribe());
            let (close, open) = (state.close.clone(), state.open.clone());
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                use tokio_tungstenite::tungstenite::Message;
                use tokio_tungstenite::tungstenite::protocol::{
                    CloseFrame, Role, frame::coding::CloseCode,
                };
                let upgraded = hyper::upgrade::on(request).await.unwrap();
                let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                // Registered before the stream counts as open, and kept
                // across the loop: `notify_waiters` wakes only registered
                // waiters, and a `notified()` made per iteration missed it
                // while a move was being sent.
                let closing = close.notified();
                tokio::pin!(closing);
                closing.as_mut().enable();
                open.fetch_add(1, Ordering::SeqCst);
                for n in after + 1..=current {
                    let _ = socket.send(Message::Text(n.to_string().into())).await;
                }
                loop {
                    tokio::select! {
                        () = closing.as_mut() => {
                            let frame = CloseFrame { code: CloseCode::Restart, reason: "service restart".into() };
                            let _ = socket.send(Message::Close(Some(frame))).await;
                            break;
                        }
                        n = moves.recv() => match n {
                            Ok(n) => { let _ = socket.send(Message::Text(n.to_string().into())).await; }
                            Err(_) => break,
                        },
                        message = socket.next() => if !matches!(message, Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) { break },
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(Full::default())
                .unwrap()
        }
        _ => hyper::Response::builder()
            .status(404)
            .body(Full::default())
            .unwrap(),
    }
}
