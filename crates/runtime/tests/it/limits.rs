//! Bad clients (malformed requests, slowloris, huge heads, too many
//! connections, a flood of the control API) and TLS on the front.

use std::time::Duration;

use dropless_runtime::signal::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fixtures::load::{self, Client};
use crate::fixtures::serve::ServeProcess;
use crate::fixtures::{self, Harness, Mode, UnderLoad};

/// Reads what the server sends until it closes (at most `WAIT`).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(fixtures::WAIT, stream.read_to_end(&mut out))
        .await
        .expect("server closes");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_slow_and_huge_requests_do_not_disturb_a_concurrent_load() {
    let service = fixtures::service("web", fixtures::demo("v4", "v1", &[]), 2);
    let run = UnderLoad::start_with(service, Client::KeepAlive, |c| {
        c.proxy.header_read_timeout = Duration::from_millis(500);
        c.proxy.max_header_bytes = 16 * 1024;
    })
    .await;
    let addr = run.h.addr;

    // Malformed: 400, and only that connection is affected.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut bad).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    // A head larger than max_header_bytes: 431, connection closed.
    let mut huge = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = huge.write_all(head.as_bytes()).await;
    let answer = read_to_close(&mut huge).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // Slowloris: twenty heads trickling in a byte at a time are cut at the
    // header read timeout.
    let began = std::time::Instant::now();
    let slow: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
                for _ in 0..100 {
                    if s.write_all(b"x").await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 64];
                    match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for s in slow {
        s.await.unwrap();
    }
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "slow clients held on for {:?}",
        began.elapsed()
    );

    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.proxy.max_connections = 3;
    let h = Harness::start(config).await;
    h.wait_routable(1).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(b"GET /sum?a=1&b=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut extra = TcpStream::connect(h.addr).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        read_to_close(&mut extra).await,
        "",
        "fourth connection closed unanswered"
    );
    drop(held.pop());
    // The freed slot is usable again once the proxy noticed the close.
    let deadline = tokio::time::Instant::now() + fixtures::WAIT;
    loop {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        if read_to_close(&mut s).await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::task::yield_now().await;
    }
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_alpn_h2_and_forwarded_proto() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 2);
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.proxy.tls_cert = Some(cert_path);
    config.proxy.tls_key = Some(key_path);
    let h = Harness::start(config).await;
    h.wait_routable(2).await;
    for http2 in [true, false] {
        let mut c =
            dropless_load::Config::new(format!("https://127.0.0.1:{}/headers", h.addr.port()));
        c.model = dropless_load::Model::Open { rate: 100.0 };
        c.requests = Some(50);
        c.duration = Duration::from_secs(5);
        c.insecure = true;
        c.http2 = http2;
        c.expect_status = "200".into();
        c.expect_body = Some("x-forwarded-proto: https".into());
        let report = dropless_load::run(&c).await.unwrap();
        load::assert_clean(&report, 50);
    }
    h.stop(Shutdown::Fast).await;
}

/// A chunked upload that sends `chunks` one-byte chunks `every` apart, then
/// ends; returns the status the proxy answered with (0: none).
async fn slow_upload(addr: std::net::SocketAddr, chunks: usize, every: Duration) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    for _ in 0..chunks {
        // The client's own pace: what is under test.
        tokio::time::sleep(every).await;
        if s.write_all(b"1\r\na\r\n").await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let answer = read_to_close(&mut s).await;
    answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_at_most_their_limit_of_a_replica_and_a_load_goes_on() {
    // The replica works 200 ms on each upload it has read before it
    // answers: its slot is not free before that (once the body had ended,
    // the next upload reached a replica still busy with 4: 5 at once).
    let backend = fixtures::backend(Mode::Graceful, "v1").with_env("WORK_MS", "200");
    let service = fixtures::service("web", backend, 1);
    let run = UnderLoad::start_with(service, Client::KeepAlive, |c| {
        c.proxy.max_streamed_uploads = 4;
    })
    .await;
    let addr = run.h.addr;
    // Twelve uploaders, each 5 bytes 100 ms apart: three rounds of four.
    let uploads: Vec<_> = (0..12)
        .map(|_| tokio::spawn(slow_upload(addr, 5, Duration::from_millis(100))))
        .collect();
    let statuses = futures_util::future::join_all(uploads).await;
    let statuses: Vec<u16> = statuses.into_iter().map(|s| s.unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Uploads the replica worked on at once (the replica counts them from
    // its first byte to its answer), whatever else it served.
    let (status, _, most) = fixtures::get(&run.h.url("/uploads/most")).await;
    assert_eq!(status, 200);
    assert_eq!(
        most.trim(),
        "4",
        "the limit is 4 uploads at once on the replica"
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_gets_a_408_blaming_the_client() {
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let run = UnderLoad::start_with(service, Client::KeepAlive, |c| {
        c.proxy.body_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut s = TcpStream::connect(run.h.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("x-dropless-error: client"), "{answer:?}");
    // A malformed chunk is the client's fault too: 400, not a 502.
    let mut s = TcpStream::connect(run.h.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\na\r\n0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains("x-dropless-error: client"), "{answer:?}");
    run.finish().await;
}

/// Open-file limit of the runtime under the control flood.
const FLOOD_NOFILE: u64 = 1024;
/// Control connections opened, at [`FLOOD_RATE`] per second: four times
/// the runtime's open-file limit.
const FLOOD: usize = 4096;
/// Connections opened per second.
const FLOOD_RATE: u64 = 1000;
/// Longest a flood connection is held.
const FLOOD_HOLD: Duration = Duration::from_secs(3);
/// Most log lines the runtime may write in the whole test.
const MAX_LOG_LINES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_control_connections_leaves_the_load_and_the_replicas_alone() {
    use dropless_runtime::event::EventKind;
    use dropless_runtime::event::ReplicaState;

    // The flood is held from this process too: it needs the descriptors.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    assert!(hard > FLOOD as u64 + 1024, "open-file limit {hard} too low");

    let dir = tempfile::tempdir().unwrap();
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 2);
    let config = fixtures::config(dir.path(), vec![service]);
    let serve = ServeProcess::start(config, FLOOD_NOFILE).await;
    let client = serve.client();
    let replicas = |services: Vec<dropless_runtime::supervisor::ServiceStatus>| {
        let mut r: Vec<_> = services[0]
            .replicas
            .iter()
            .map(|r| (r.name.clone(), r.pid, r.state))
            .collect();
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    };
    let before = replicas(client.status().await.unwrap());
    let mut events = client.subscribe().await.unwrap();
    let url = format!("http://{}/sum?a=1&b=2", serve.addr);
    let mut load = load::Load::start(
        &url,
        fixtures::RATE,
        Duration::from_secs(60),
        Client::KeepAlive,
    )
    .await;
    load.wait_ok(50).await;

    // Idle connections and half-sent requests, opened at a bounded rate and
    // each held until the runtime closes it or FLOOD_HOLD passes.
    let target = serve.control_tcp;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / FLOOD_RATE));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        tick.tick().await;
        flood.spawn(async move {
            let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target));
            let Ok(Ok(mut s)) = connect.await else {
                return;
            };
            if i % 2 == 1 {
                let _ = s
                    .write_all(b"POST /v1/rollout HTTP/1.1\r\nHost: x\r\nContent-Le")
                    .await;
            }
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(FLOOD_HOLD, s.read(&mut buf)).await;
        });
    }
    while flood.join_next().await.is_some() {}

    let ok = load.ok();
    load.wait_ok(ok + 20).await;
    let report = load.finish().await;
    load::assert_clean(&report, ok + 20);
    // The control socket still answers, and no replica was replaced.
    assert_eq!(replicas(client.status().await.unwrap()), before);
    let log = serve.stop().await;
    let mut seen = Vec::new();
    while let Ok(Some(e)) = events.next().await {
        if let EventKind::Replica { replica, state, .. } = e.kind {
            seen.push((replica, state));
        }
    }
    assert!(
        seen.iter()
            .all(|(r, s)| *s != ReplicaState::Failed && before.iter().any(|b| b.0 == *r)),
        "replicas failed or were replaced: {seen:?}"
    );
    assert!(
        log.lines <= MAX_LOG_LINES,
        "{} log lines ({} bytes), the first: {:#?}",
        log.lines,
        log.bytes,
        log.head
    );
}
