//! A lifecycle-served test app and small clients.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::State, routing::get};
use bytes::Bytes;
use dropless_lifecycle::{Config, Error, Lifecycle, Phase, signal::Signal};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// How long `/slow` takes.
pub const SLOW: Duration = Duration::from_millis(400);
/// Upper bound for anything a test waits on, so a broken build fails
/// instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A lifecycle serving `/fast` and `/slow` on a free loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub lifecycle: Lifecycle,
    trigger: Option<oneshot::Sender<Signal>>,
    pub served: JoinHandle<Result<(), Error>>,
    /// One message each time `/slow` starts handling a request.
    pub slow_started: mpsc::UnboundedReceiver<()>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let lifecycle = Lifecycle::new(config);
        Self::start_with(lifecycle, true).await
    }

    pub async fn start_with(lifecycle: Lifecycle, ready: bool) -> Self {
        let (started_tx, slow_started) = mpsc::unbounded_channel();
        let app = Router::new()
            .route("/fast", get(|| async { "fast" }))
            .route(
                "/slow",
                get(
                    |State(started): State<mpsc::UnboundedSender<()>>| async move {
                        let _ = started.send(());
                        tokio::time::sleep(SLOW).await;
                        "slow"
                    },
                ),
            )
            .with_state(started_tx);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        if ready {
            lifecycle.set_ready();
        }
        let (trigger, shutdown) = oneshot::channel::<Signal>();
        let served = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move {
                lifecycle
                    .serve(listener, app, async move {
                        shutdown.await.unwrap_or(Signal::Terminate)
                    })
                    .await
            }
        });
        Self {
            addr,
            lifecycle,
            trigger: Some(trigger),
            served,
            slow_started,
        }
    }

    /// Sends the shutdown signal.
    pub fn shutdown(&mut self, signal: Signal) {
        self.trigger
            .take()
            .expect("shutdown sent twice")
            .send(signal)
            .unwrap();
    }

    /// Waits until the lifecycle has reached `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut phases = self.lifecycle.subscribe();
        tokio::time::timeout(PATIENCE, phases.wait_for(|p| *p >= phase))
            .await
            .expect("phase not reached in time")
            .unwrap();
    }

    /// Waits for `serve` to return.
    pub async fn finished(self) -> Result<(), Error> {
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("serve did not return in time")
            .unwrap()
    }

    /// Waits until a `/slow` request is being handled.
    pub async fn slow_in_flight(&mut self) {
        tokio::time::timeout(PATIENCE, self.slow_started.recv())
            .await
            .expect("/slow never started")
            .unwrap();
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct H1 {
    send: http1::SendRequest<Empty<Bytes>>,
    pub closed: JoinHandle<Result<(), hyper::Error>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        let closed = tokio::spawn(conn);
        Self { send, closed }
    }

    /// Sends a GET; returns the head and the body as text.
    pub async fn get(&mut self, path: &str) -> Result<(Response<()>, String), hyper::Error> {
        self.send.ready().await?;
        let request = Request::get(path)
            .header("host", "test")
            .body(Empty::new())
            .unwrap();
        let response = self.send.send_request(request).await?;
        let (head, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((
            Response::from_parts(head, ()),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }

    /// Sends a GET and expects a response.
    pub async fn must_get(&mut self, path: &str) -> (Response<()>, String) {
        tokio::time::timeout(PATIENCE, self.get(path))
            .await
            .expect("request timed out")
            .unwrap_or_else(|error| panic!("GET {path} failed: {error}"))
    }
}

/// Whether the response asks the client to close the connection.
pub fn says_close(response: &Response<()>) -> bool {
    response
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"close"))
}
