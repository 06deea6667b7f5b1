//! Sessions: affinity (a key sticks to its owner), the handoff at
//! retirement (requests held, then the next owner takes the stashed state),
//! the stash over its Unix socket, and WebSocket tunnels closed with 1012 at
//! the drain deadline. The test backend counts each session's requests in
//! memory and stashes the counts when it stops gracefully, so a reset shows
//! as a count that starts again at 1.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use dropless_runtime::config::AffinityConfig;
use dropless_runtime::signal::Shutdown;
use dropless_runtime::stash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixtures::backend::{stash_request, stash_request_with};
use crate::fixtures::{self, Harness, Mode, WAIT};

/// One answer to a session's request.
#[derive(Debug)]
struct Touch {
    status: u16,
    /// The session's count, as the replica says.
    n: u64,
    replica: String,
    held_ms: Option<u64>,
}

/// One request of session `key` (cookie `sid`) on its own connection: a
/// plain GET (the fast path), or a chunked POST (the hyper path).
async fn touch(addr: SocketAddr, key: &str, hyper_path: bool) -> Touch {
    let request = if hyper_path {
        format!(
            "POST /count/{key} HTTP/1.1\r\nHost: x\r\nCookie: a=1; sid={key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        )
    } else {
        format!(
            "GET /count/{key} HTTP/1.1\r\nHost: x\r\nCookie: sid={key}\r\nConnection: close\r\n\r\n"
        )
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
        .await
        .expect("an answer in time")
        .unwrap();
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&bytes).expect("a response") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("a partial response: {bytes:?}"),
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let body = String::from_utf8_lossy(&bytes[head_len..]).into_owned();
    Touch {
        status: resp.code.unwrap(),
        n: body.trim().parse().unwrap_or(0),
        replica: header("x-replica").unwrap_or_default(),
        held_ms: header("x-dropless-held-ms").map(|v| v.parse().unwrap()),
    }
}

fn sessions_service(mode: Mode, replicas: usize) -> dropless_runtime::config::ServiceConfig {
    let mut s = fixtures::service("web", fixtures::backend(mode, "v1"), replicas);
    s.affinity = Some(AffinityConfig::new("cookie:sid"));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_key_sticks_to_its_owner_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let service = sessions_service(Mode::Graceful, 3);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(3).await;
    let mut owners = BTreeSet::new();
    for k in 0..12 {
        let key = format!("s{k}");
        let first = touch(h.addr, &key, false).await;
        assert_eq!((first.status, first.n), (200, 1), "{first:?}");
        for i in 2..=4 {
            let t = touch(h.addr, &key, i % 2 == 0).await;
            assert_eq!((t.status, t.n), (200, i), "{key}: {t:?}");
            assert_eq!(t.replica, first.replica, "{key} moved");
            assert_eq!(t.held_ms, None, "{t:?}");
        }
        owners.insert(first.replica);
    }
    // New keys are balanced, not all given to one replica.
    assert!(owners.len() >= 2, "every key on {owners:?}");
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_owner_hands_its_sessions_off_without_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = sessions_service(Mode::Graceful, 2);
    // Each owner hands off for at least this long: some requests find it.
    service.retire.pre_stop = Duration::from_millis(200);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(2).await;
    let keys: Vec<String> = (0..8).map(|k| format!("g{k}")).collect();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut before = BTreeSet::new();
    for key in &keys {
        let t = touch(h.addr, key, false).await;
        assert_eq!((t.status, t.n), (200, 1), "{t:?}");
        counts.insert(key, 1);
        before.insert(t.replica);
    }
    let client = h.client();
    let restart = tokio::spawn(async move {
        let request = dropless_runtime::rollout::RolloutRequest::Restart {
            plan: Default::default(),
        };
        client.rollout(None, request).await.expect("restart")
    });
    // Sessions keep playing, at most 200 requests a second, through the
    // whole restart and one round after it.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    let mut max_held = 0;
    let mut after = BTreeSet::new();
    let mut rounds_after = 0;
    let began = std::time::Instant::now();
    while rounds_after < 2 {
        assert!(began.elapsed() < WAIT * 2, "the restart never ended");
        if restart.is_finished() {
            rounds_after += 1;
        }
        for (i, key) in keys.iter().enumerate() {
            pace.tick().await;
            let t = touch(h.addr, key, i % 2 == 1).await;
            let n = counts.get_mut(key.as_str()).unwrap();
            assert_eq!(t.status, 200, "{key}: {t:?}");
            assert_eq!(t.n, *n + 1, "{key} was reset or lost an update: {t:?}");
            *n = t.n;
            max_held = max_held.max(t.held_ms.unwrap_or(0));
            if rounds_after > 0 {
                after.insert(t.replica);
            }
        }
    }
    restart.await.unwrap();
    assert!(max_held > 0, "no request was held for a handoff");
    assert!(
        after.is_disjoint(&before),
        "old replicas {before:?} still serve: {after:?}"
    );
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_s_sessions_move_and_the_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let service = sessions_service(Mode::Graceful, 2);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(2).await;
    let mut owner = BTreeMap::new();
    for k in 0..16 {
        let key = format!("k{k}");
        let t = touch(h.addr, &key, false).await;
        assert_eq!(touch(h.addr, &key, false).await.n, 2);
        owner.insert(key, t.replica);
    }
    let service = h.router.service(None).unwrap();
    let victim = service.routable()[0].clone();
    assert!(
        owner.values().any(|r| r == victim.name()) && owner.values().any(|r| r != victim.name()),
        "the keys are all on one replica: {owner:?}"
    );
    victim
        .process()
        .unwrap()
        .signal_group(nix::sys::signal::Signal::SIGKILL);
    for (key, was) in &owner {
        let t = touch(h.addr, key, false).await;
        assert_eq!(t.status, 200, "{key}: {t:?}");
        if was == victim.name() {
            // Never stashed: its state is lost, the session starts again.
            assert_eq!(t.n, 1, "{key}: {t:?}");
            assert_ne!(&t.replica, was);
        } else {
            assert_eq!((t.n, &t.replica), (3, was), "{key} was affected: {t:?}");
        }
    }
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_ends_at_the_handoff_timeout_and_a_later_put_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = sessions_service(Mode::IgnoreTerm, 2);
    service.affinity.as_mut().unwrap().handoff_timeout = Duration::from_millis(300);
    service.retire.grace = Duration::from_secs(3);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(2).await;
    let first = touch(h.addr, "late", false).await;
    let service = h.router.service(None).unwrap();
    let owner = service
        .routable()
        .iter()
        .find(|r| r.name() == first.replica)
        .cloned()
        .unwrap();
    // It ignores SIGTERM: it runs for the whole grace period, and never
    // stashes.
    let retired = tokio::spawn(service.retire(owner));
    let t = touch(h.addr, "late", false).await;
    assert_eq!((t.status, t.n), (200, 1), "{t:?}");
    assert_ne!(t.replica, first.replica);
    let held = t.held_ms.expect("the request was held");
    assert!((300..3000).contains(&held), "held {held} ms");
    let socket = stash::socket_path(dir.path(), "web");
    let (status, body) = stash_request(&socket, "PUT", "/stash/late", "1".into()).await;
    assert_eq!(status, 409, "{body:?}");
    assert!(String::from_utf8_lossy(&body).contains("deadline"));
    // Once the old owner is gone, a put is an ordinary put again.
    tokio::time::timeout(WAIT, retired).await.unwrap().unwrap();
    let (status, _) = stash_request(&socket, "PUT", "/stash/late", "1".into()).await;
    assert_eq!(status, 204);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stash_is_private_takes_once_expires_and_survives_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    service.stash = true;
    let config = fixtures::config(dir.path(), vec![service]);
    let h = Harness::start(config.clone()).await;
    h.wait_routable(1).await;
    let socket = stash::socket_path(dir.path(), "web");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let (status, _) = stash_request(&socket, "PUT", "/stash/a%2Fb%20c", "kept".into()).await;
    assert_eq!(status, 204);
    let (status, _) = stash_request(&socket, "PUT", "/stash/gone", "x".into()).await;
    assert_eq!(status, 204);
    let (status, body) = stash_request(&socket, "POST", "/stash/gone/take", String::new()).await;
    assert_eq!((status, &body[..]), (200, &b"x"[..]));
    let (status, _) = stash_request(&socket, "POST", "/stash/gone/take", String::new()).await;
    assert_eq!(status, 404, "a key is taken once");
    let ttl = [(stash::TTL_HEADER, "0")];
    let (status, _) = stash_request_with(&socket, "PUT", "/stash/old", "x".into(), &ttl).await;
    assert_eq!(status, 204);
    let (status, _) = stash_request(&socket, "POST", "/stash/old/take", String::new()).await;
    assert_eq!(status, 404, "an expired entry is gone");
    let big = "x".repeat(stash::MAX_VALUE + 1);
    let (status, _) = stash_request(&socket, "PUT", "/stash/big", big).await;
    assert_eq!(status, 413);
    let (status, _) = stash_request(&socket, "GET", "/stash/gone", String::new()).await;
    assert_eq!(status, 405);
    h.stop(Shutdown::Graceful).await;
    assert!(!socket.exists(), "the socket is removed at the stop");

    let h = Harness::start(config).await;
    h.wait_routable(1).await;
    let (status, body) =
        stash_request(&socket, "POST", "/stash/a%2Fb%20c/take", String::new()).await;
    assert_eq!(
        (status, &body[..]),
        (200, &b"kept"[..]),
        "kept across a restart"
    );
    h.stop(Shutdown::Fast).await;
}

/// Reads a close frame from `ws` and returns its code, then expects the
/// connection's end (the proxy closes it first, as a server does).
async fn close_code(ws: &mut tokio::net::TcpStream) -> u16 {
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, ws.read_to_end(&mut rest))
        .await
        .expect("the tunnel ends")
        .unwrap();
    assert!(
        rest.len() >= 4 && rest[0] == 0x88,
        "no close frame: {rest:?}"
    );
    assert_eq!(
        rest.len(),
        2 + rest[1] as usize,
        "more after the close: {rest:?}"
    );
    u16::from_be_bytes([rest[2], rest[3]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_get_a_1012_close_at_a_frame_boundary_at_the_end_of_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    service.retire.drain_timeout = Duration::from_millis(300);
    // The tunnels are closed after the pre-stop; SIGTERM waits for them, so
    // the frame in progress can end.
    service.retire.pre_stop = Duration::from_millis(300);
    let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
    h.wait_routable(1).await;
    let (mut idle, _) = fixtures::websocket(h.addr).await;
    let (mut busy, _) = fixtures::websocket(h.addr).await;
    // A masked binary frame of 10 bytes, half sent: the echo is half a frame.
    let mut frame = vec![0x82, 0x80 | 10, 1, 2, 3, 4];
    frame.extend_from_slice(b"0123456789");
    busy.write_all(&frame[..11]).await.unwrap();
    let mut echo = [0u8; 11];
    busy.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo[..], &frame[..11]);

    let client = h.client();
    let _restart = tokio::spawn(async move {
        let restart = dropless_runtime::rollout::RolloutRequest::Restart {
            plan: Default::default(),
        };
        client.rollout(None, restart).await
    });
    // The idle tunnel is at a frame boundary: it is closed at once.
    assert_eq!(close_code(&mut idle).await, 1012);
    // The busy one ends its frame first, then gets the close.
    busy.write_all(&frame[11..]).await.unwrap();
    let mut rest = [0u8; 5];
    busy.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"56789");
    assert_eq!(close_code(&mut busy).await, 1012);
    h.stop(Shutdown::Fast).await;
}
