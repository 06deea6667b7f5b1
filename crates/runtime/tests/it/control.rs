//! The control socket, persisted state, and the runtime's own shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use dropless_runtime::control::{ControlClient, ControlError, ControlListener, TcpControl};
use dropless_runtime::event::EventKind;
use dropless_runtime::event::RolloutPhase;
use dropless_runtime::rollout::{Plan, RolloutRequest};
use dropless_runtime::signal::Shutdown;

use crate::fixtures::{self, Harness, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_private_single_and_streams_events() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    let mode = std::fs::metadata(&h.control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = ControlListener::bind(&h.control).expect_err("a second serve is refused");
    assert!(matches!(second, ControlError::InUse { .. }), "{second}");
    assert!(
        second
            .to_string()
            .contains("in use by another `dropless serve`"),
        "{second}"
    );

    h.wait_routable(1).await;
    let status = h.client().status().await.unwrap();
    let log = status[0].replicas[0]
        .log
        .clone()
        .expect("log path in status");
    assert!(log.starts_with(dir.path()), "{log:?}");

    let mut stream = h.client().subscribe().await.unwrap();
    scale(&h, 2).await;
    let completed = tokio::time::timeout(fixtures::WAIT, async {
        loop {
            let e = stream.next().await.unwrap().expect("stream open");
            if matches!(
                e.kind,
                EventKind::Rollout {
                    phase: RolloutPhase::Completed,
                    ..
                }
            ) {
                return e;
            }
        }
    })
    .await
    .expect("completed event on the stream");
    assert_eq!(completed.service, "web");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_runtime_resumes_the_persisted_version_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service.clone()])).await;
    h.wait_routable(1).await;
    let client = h.client();
    let v2 = RolloutRequest::Deploy {
        version: fixtures::backend(Mode::Graceful, "v2"),
        plan: Plan::default(),
    };
    client.rollout(None, v2).await.unwrap();
    client
        .rollout(
            None,
            RolloutRequest::Scale {
                replicas: 3,
                allow_zero: false,
            },
        )
        .await
        .unwrap();
    h.stop(Shutdown::Graceful).await;

    // Same state dir, same config (still v1 x1): the persisted state wins.
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(3).await;
    assert_eq!(fixtures::get(&h.url("/")).await.1.as_deref(), Some("v2"));
    let desired = h.router.service(None).unwrap().desired();
    assert_eq!((desired.current.generation, desired.replicas), (2, 3));
    // And rollback still knows v1.
    h.client()
        .rollout(
            None,
            RolloutRequest::Rollback {
                plan: Plan::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(fixtures::get(&h.url("/")).await.1.as_deref(), Some("v1"));
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_then_retires() {
    let dir = tempfile::tempdir().unwrap();
    let version = fixtures::backend(Mode::ExitOnTerm, "v1").with_env("WORK_MS", "400");
    let service = fixtures::service("web", version, 2);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(2).await;
    let web = h.router.service(None).unwrap().clone();
    let url = h.url("/sum?a=2&b=3");
    let requests: Vec<_> = (0..6)
        .map(|_| tokio::spawn(fixtures::get_with_headers(url.clone())))
        .collect();
    fixtures::wait_in_flight(&web, 6).await;
    let mut events = h.events.resubscribe();
    h.stop(Shutdown::Graceful).await;
    for r in requests {
        let (status, headers, body) = r.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "{\"result\":5}"));
        assert_eq!(
            headers.get("connection").map(|v| v.to_str().unwrap()),
            Some("close"),
            "{headers:?}"
        );
    }
    // Both replicas were retired, in order, after the clients were served.
    use dropless_runtime::event::ReplicaState::*;
    let mut seen =
        std::collections::BTreeMap::<String, Vec<dropless_runtime::event::ReplicaState>>::new();
    while seen
        .values()
        .filter(|s| s.last().is_some_and(|l| l.is_terminal()))
        .count()
        < 2
    {
        let e = fixtures::next_event(&mut events, |e| matches!(e.kind, EventKind::Replica { .. }))
            .await;
        let EventKind::Replica { replica, state, .. } = e.kind else {
            unreachable!()
        };
        seen.entry(replica).or_default().push(state);
    }
    for states in seen.values() {
        assert_eq!(states, &vec![Draining, Stopping, Exited], "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_ends_after_the_retirements_when_serve_stops() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let mut stream = h.client().subscribe().await.unwrap();
    h.stop(Shutdown::Graceful).await;
    let mut states = Vec::new();
    let ended = tokio::time::timeout(fixtures::WAIT, async {
        while let Some(e) = stream
            .next()
            .await
            .expect("a clean end, not a broken stream")
        {
            if let EventKind::Replica { state, .. } = e.kind {
                states.push(state);
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
    use dropless_runtime::event::ReplicaState::*;
    assert_eq!(states, vec![Draining, Stopping, Exited]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_h2_streams_finish() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let version = fixtures::backend(Mode::ExitOnTerm, "v1").with_env("WORK_MS", "400");
    let h = Harness::start(fixtures::config(
        dir.path(),
        vec![fixtures::service("web", version, 1)],
    ))
    .await;
    h.wait_routable(1).await;
    let web = h.router.service(None).unwrap().clone();
    let stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let mut sender = sender.clone();
            let url = h.url("/sum?a=20&b=22");
            tokio::spawn(async move {
                let req = http::Request::get(url)
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.expect("h2 response");
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .expect("h2 body")
                    .to_bytes();
                (status, body)
            })
        })
        .collect();
    fixtures::wait_in_flight(&web, 4).await;
    h.stop(Shutdown::Graceful).await;
    for r in requests {
        let (status, body) = r.await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"{\"result\":42}"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_control_api_answers_only_requests_with_the_token() {
    const TOKEN: &str = "a-token-of-some-length";
    let loopback = "127.0.0.1:0".parse().unwrap();
    let short = TcpControl::bind(loopback, "short").await.unwrap_err();
    assert!(
        matches!(short, ControlError::Token { given: true }),
        "{short}"
    );
    assert!(
        short.to_string().contains("DROPLESS_CONTROL_TOKEN"),
        "{short}"
    );

    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let tcp = TcpControl::bind(loopback, TOKEN).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let h = Harness::start_with_tcp_control(fixtures::config(dir.path(), vec![service]), Some(tcp))
        .await;
    h.wait_routable(1).await;

    // With the token: status, and a rollout that changes the runtime.
    let client = ControlClient::tcp(addr.to_string(), TOKEN);
    assert_eq!(client.status().await.unwrap()[0].name, "web");
    client
        .rollout(
            None,
            RolloutRequest::Scale {
                replicas: 2,
                allow_zero: false,
            },
        )
        .await
        .unwrap();
    h.wait_routable(2).await;

    // A wrong token, and none at all: 401, nothing done.
    let wrong = ControlClient::tcp(addr.to_string(), "a-wrong-token-of-some-length");
    let err = wrong
        .rollout(
            None,
            RolloutRequest::Scale {
                replicas: 1,
                allow_zero: false,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::Rejected(m) if m.contains("token")),
        "{err}"
    );
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(fixtures::WAIT, raw.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(h.client().status().await.unwrap()[0].desired.replicas, 2);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_connections_are_limited_per_listener_and_cut_when_silent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOKEN: &str = "a-token-of-some-length";
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.control_max_connections = 2;
    config.control_read_timeout = Duration::from_secs(1);
    let tcp = TcpControl::bind("127.0.0.1:0".parse().unwrap(), TOKEN)
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    let h = Harness::start_with_tcp_control(config, Some(tcp)).await;
    h.wait_routable(1).await;

    // Two silent connections hold both slots of the TCP address.
    let began = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /v1/status HTTP/1.1\r\nHost")
        .await
        .unwrap();
    // A third is closed unanswered, token or not...
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let _ = third.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(fixtures::WAIT, third.read_to_end(&mut answer))
        .await
        .expect("the third connection is closed");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // ... while the control socket, a listener of its own, still answers.
    assert_eq!(h.client().status().await.unwrap()[0].name, "web");

    // The silent ones are cut at the read timeout.
    for silent in [&mut idle, &mut half] {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(fixtures::WAIT, silent.read_to_end(&mut rest))
            .await
            .expect("a silent control connection is closed");
    }
    let cut_after = began.elapsed();
    assert!(
        cut_after >= Duration::from_secs(1) && cut_after < Duration::from_secs(5),
        "cut after {cut_after:?}"
    );
    // Their slots are free again.
    let client = ControlClient::tcp(addr.to_string(), TOKEN);
    assert_eq!(client.status().await.unwrap()[0].name, "web");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_is_bounded_and_a_service_scaled_to_zero_answers_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    service.max_replicas = 3;
    let mut config = fixtures::config(dir.path(), vec![service]);
    // Far longer than the test: a 503 that waited for it would time out.
    config.proxy.queue_timeout = Duration::from_secs(120);
    let h = Harness::start(config).await;
    h.wait_routable(1).await;
    let client = h.client();
    let scale = |replicas, allow_zero| {
        client.rollout(
            None,
            RolloutRequest::Scale {
                replicas,
                allow_zero,
            },
        )
    };

    let err = scale(4, false).await.unwrap_err();
    assert!(
        matches!(&err, ControlError::Rejected(m) if m.contains("max_replicas is 3")),
        "{err}"
    );
    let err = scale(0, false).await.unwrap_err();
    assert!(
        matches!(&err, ControlError::Rejected(m) if m.contains("--allow-zero")),
        "{err}"
    );
    assert_eq!(h.router.service(None).unwrap().routable().len(), 1);

    scale(0, true).await.unwrap();
    let url = h.url("/sum?a=1&b=2");
    let began = Instant::now();
    // HTTP/1.1 (the fast path) and h2c (the general path).
    let (status, _, body) = fixtures::get(&url).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("web is scaled to zero"), "{body}");
    let (status, body) = h2_get(&url).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("web is scaled to zero"), "{body}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "503s after {:?}",
        began.elapsed()
    );

    scale(2, false).await.unwrap();
    h.wait_routable(2).await;
    assert_eq!(fixtures::get(&url).await.0, 200);
    assert_eq!(h2_get(&url).await.0, 200);
    h.stop(Shutdown::Fast).await;
}

/// One h2c GET over its own connection: status and body.
async fn h2_get(url: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse().unwrap();
    let stream = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(url)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Scales the only service of `h` to `replicas`.
async fn scale(h: &Harness, replicas: usize) {
    let request = RolloutRequest::Scale {
        replicas,
        allow_zero: false,
    };
    h.client().rollout(None, request).await.unwrap();
}

/// The next event of `stream`, within [`fixtures::WAIT`].
async fn next(
    stream: &mut dropless_runtime::control::EventStream,
) -> dropless_runtime::event::Event {
    tokio::time::timeout(fixtures::WAIT, stream.next())
        .await
        .expect("an event in time")
        .unwrap()
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_starts_with_the_recent_history_asked_for() {
    use dropless_runtime::event::{Replay, ReplicaState};
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let state = |e: &dropless_runtime::event::Event| match &e.kind {
        EventKind::Replica { replica, state, .. } => Some((replica.clone(), *state)),
        _ => None,
    };
    let started = Some(("web-1".to_string(), ReplicaState::Starting));
    let ready = Some(("web-1".to_string(), ReplicaState::Ready));
    // Everything within the last hour: web-1 starting, then ready.
    let mut stream = h
        .client()
        .subscribe_with(Replay::Since(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(state(&next(&mut stream).await), started);
    assert_eq!(state(&next(&mut stream).await), ready);
    // The last one only: web-1 ready; then the live events follow, none
    // repeated or missed.
    let mut last = h.client().subscribe_with(Replay::Last(1)).await.unwrap();
    assert_eq!(state(&next(&mut last).await), ready);
    scale(&h, 2).await;
    let live = next(&mut last).await;
    assert!(
        matches!(
            live.kind,
            EventKind::Rollout {
                phase: RolloutPhase::Pending,
                ..
            }
        ),
        "{live:?}"
    );
    assert_eq!(live, next(&mut stream).await, "both streams go on alike");
    h.stop(Shutdown::Fast).await;
}
