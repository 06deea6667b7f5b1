//! The routes a client sees.

use std::collections::HashSet;

use crate::fixtures::{Demo, Outcome, get_once, http};

#[tokio::test]
async fn sum_datetime_and_hello_answer_with_a_version() {
    let demo = Demo::start(&[
        "--profile",
        "v9",
        "--work-ms",
        "10",
        "--hello-delay",
        "0.05",
        "--version-label",
        "v7.1",
    ])
    .await;
    let base = format!("http://{}", demo.addr);

    let (status, body) = http(&base, "GET", "/sum?a=1&b=2", "").await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"result":3}"#));
    let (status, body) = http(&base, "GET", "/", "").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "Hello World!"));
    let (status, body) = http(&base, "GET", "/datetime", "").await.unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let datetime = json["datetime"].as_str().unwrap();
    humantime::parse_rfc3339(datetime).unwrap_or_else(|e| panic!("{datetime}: {e}"));

    // Every app response names the version; every calculation has its id.
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let stream = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let response = send
            .send_request(
                http::Request::get("/sum?a=40&b=2")
                    .header("host", "demo")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()["x-version"], "v7.1");
        assert!(ids.insert(response.headers()["x-op-id"].to_str().unwrap().to_owned()));
    }
    assert_eq!(http(&base, "GET", "/healthz", "").await.unwrap().0, 200);
    assert_eq!(http(&base, "GET", "/livez", "").await.unwrap().0, 200);
}

#[tokio::test]
async fn bad_sum_arguments_get_400() {
    let demo = Demo::start(&["--work-ms", "0"]).await;
    for path in ["/sum?a=x&b=2", "/sum?a=1", "/sum?a=9223372036854775807&b=1"] {
        match get_once(demo.addr, path).await {
            Outcome::Response { status, op_id } => {
                assert_eq!(status, 400, "{path}");
                assert_eq!(op_id, None, "no calculation, no id: {path}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}
