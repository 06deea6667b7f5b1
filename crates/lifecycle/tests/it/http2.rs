//! HTTP/2 (h2c): GOAWAY at the drain, open streams finish.

use bytes::Bytes;
use dropless_lifecycle::{Config, signal::Signal};
use http::Request;
use tokio::net::TcpStream;

use crate::fixtures::{PATIENCE, TestServer};

#[tokio::test]
async fn h2_client_gets_goaway_and_its_stream_completes() {
    let mut server = TestServer::start(Config::default()).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    // Two concurrent streams on the one connection: one done before the
    // shutdown, one in flight during it.
    let (fast, _) = client
        .send_request(
            Request::get(format!("http://{}/fast", server.addr))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(fast.await.unwrap().status(), 200);
    let (slow, _) = client
        .send_request(
            Request::get(format!("http://{}/slow", server.addr))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    server.slow_in_flight().await;
    server.shutdown(Signal::Terminate);

    let response = tokio::time::timeout(PATIENCE, slow).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("connection").is_none());
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.unwrap();
        text.extend_from_slice(&chunk);
    }
    assert_eq!(text, b"slow");

    // The server sent GOAWAY: a new stream is refused and the connection ends.
    let refused = match client.ready().await {
        Err(error) => error,
        Ok(mut client) => match client.send_request(
            Request::get(format!("http://{}/fast", server.addr))
                .body(())
                .unwrap(),
            true,
        ) {
            Err(error) => error,
            Ok((response, _)) => response.await.expect_err("a stream after GOAWAY must fail"),
        },
    };
    assert!(refused.is_go_away(), "expected GOAWAY, got {refused:?}");
    let ended = tokio::time::timeout(PATIENCE, connection)
        .await
        .unwrap()
        .unwrap();
    if let Err(error) = ended {
        assert!(error.is_go_away(), "connection ended with {error:?}");
    }
    server.finished().await.unwrap();
}
