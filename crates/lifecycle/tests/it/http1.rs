//! HTTP/1.1: in-flight requests finish, keep-alive connections are told to
//! close, new connections are refused once the listener is closed.

use std::time::Duration;

use dropless_lifecycle::{Config, KeepAliveOnDrain, Phase, signal::Signal};
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::fixtures::{H1, PATIENCE, TestServer, says_close};

#[tokio::test]
async fn request_in_flight_at_shutdown_completes_with_200() {
    let mut server = TestServer::start(Config::default()).await;
    let mut client = H1::connect(server.addr).await;
    let slow = tokio::spawn(async move { client.must_get("/slow").await });
    server.slow_in_flight().await;
    server.shutdown(Signal::Terminate);

    let (response, body) = slow.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body, "slow");
    assert!(
        says_close(&response),
        "the last response must carry Connection: close"
    );
    server.finished().await.unwrap();
}

#[tokio::test]
async fn busy_keep_alive_connection_gets_connection_close_and_is_closed() {
    let mut server = TestServer::start(Config::default()).await;
    let mut client = H1::connect(server.addr).await;
    let (first, _) = client.must_get("/fast").await;
    assert!(
        !says_close(&first),
        "before shutdown the connection stays open"
    );

    let slow = tokio::spawn(async move {
        let response = client.must_get("/slow").await;
        (response, client)
    });
    server.slow_in_flight().await;
    server.shutdown(Signal::Terminate);
    let ((response, body), client) = slow.await.unwrap();
    assert_eq!((response.status().as_u16(), body.as_str()), (200, "slow"));
    assert!(says_close(&response));
    // The server closed the connection after that response.
    tokio::time::timeout(PATIENCE, client.closed)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.finished().await.unwrap();
}

#[tokio::test]
async fn idle_keep_alive_connection_gets_one_more_message() {
    let mut server = TestServer::start(Config {
        drain_idle_wait: Duration::from_secs(5),
        ..Config::default()
    })
    .await;
    let mut client = H1::connect(server.addr).await;
    let (first, _) = client.must_get("/fast").await;
    assert!(!says_close(&first));

    server.shutdown(Signal::Terminate);
    server.reached(Phase::Draining).await;
    // The reused connection is still open during the drain: its next
    // request is answered, and the answer says the connection closes.
    let (response, body) = client.must_get("/fast").await;
    assert_eq!((response.status().as_u16(), body.as_str()), (200, "fast"));
    assert!(says_close(&response));
    tokio::time::timeout(PATIENCE, client.closed)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.finished().await.unwrap();
}

#[tokio::test]
async fn idle_keep_alive_connection_that_stays_silent_is_closed_after_the_wait() {
    let mut server = TestServer::start(Config {
        drain_idle_wait: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut client = H1::connect(server.addr).await;
    client.must_get("/fast").await;
    server.shutdown(Signal::Terminate);
    // A connection that never sent anything and a used idle one are both
    // closed by the server (EOF), and serve returns in time.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, 0, "expected EOF from the server");
    tokio::time::timeout(PATIENCE, client.closed)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.finished().await.unwrap();
}

#[tokio::test]
async fn hang_up_closes_idle_connections_at_once() {
    let mut server = TestServer::start(Config {
        keep_alive_on_drain: KeepAliveOnDrain::HangUp,
        drain_idle_wait: Duration::from_secs(30),
        ..Config::default()
    })
    .await;
    let mut client = H1::connect(server.addr).await;
    client.must_get("/fast").await;
    server.shutdown(Signal::Terminate);
    // Closed well before the (long) one-more-message wait would end.
    tokio::time::timeout(Duration::from_secs(5), client.closed)
        .await
        .expect("idle connection not hung up")
        .unwrap()
        .unwrap();
    server.finished().await.unwrap();
}

#[tokio::test]
async fn new_connection_after_stop_accepting_is_refused() {
    let mut server = TestServer::start(Config::default()).await;
    // Keep the server in the drain with a request in flight.
    let mut client = H1::connect(server.addr).await;
    let slow = tokio::spawn(async move { client.must_get("/slow").await });
    server.slow_in_flight().await;
    server.shutdown(Signal::Terminate);
    server.reached(Phase::Draining).await;

    let error = TcpStream::connect(server.addr)
        .await
        .expect_err("the listener should be closed");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(server.lifecycle.phase(), Phase::Draining);
    assert_eq!(slow.await.unwrap().0.status(), 200);
    server.finished().await.unwrap();
}
