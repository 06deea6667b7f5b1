//! Sessions mode against a game server that resets, skips, repeats and
//! holds moves on purpose: each session's outcome is classified.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{GameServer, Twist};
use crate::{assert_consistent, open, run};

fn twist(index: usize) -> Twist {
    match index {
        0 => Twist::Reset,
        1 => Twist::Skip,
        2 => Twist::Repeat,
        3 => Twist::Held,
        4 => Twist::StreamSkip,
        _ => Twist::None,
    }
}

#[tokio::test]
async fn each_session_is_classified_ok_reset_lost_update_or_duplicate() {
    let server = GameServer::start(twist).await;
    // 10 sessions, 5 moves each.
    let mut config = open(
        &format!("http://{}/", server.addr),
        100.0,
        Duration::from_millis(500),
    );
    config.sessions = Some(10);
    let report = run(&config).await;
    assert_consistent(&report);
    assert_eq!(
        (report.requests.total, report.requests.failed),
        (50, 0),
        "{report:#?}"
    );
    let sessions = report.sessions.clone().expect("a sessions report");
    assert_eq!(
        (
            sessions.total,
            sessions.ok,
            sessions.resets,
            sessions.lost_updates,
            sessions.duplicates
        ),
        (10, 7, 1, 1, 1),
        "{sessions:#?}"
    );
    assert_eq!(sessions.max_hold_ms, 250);
    assert_eq!(
        (sessions.gaps, sessions.disconnects),
        (0, 0),
        "no streams without --websocket"
    );
    let moves: u64 = sessions.timeline.iter().map(|s| s.moves).sum();
    let resets: u64 = sessions.timeline.iter().map(|s| s.resets).sum();
    assert_eq!(
        (moves, resets),
        (47, 1),
        "per second: every checked move once"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for field in [
        "total",
        "resets",
        "lost_updates",
        "duplicates",
        "gaps",
        "disconnects",
        "reconnects",
        "max_hold_ms",
    ] {
        assert!(
            json["sessions"][field].is_u64(),
            "sessions.{field} in {json}"
        );
    }
}

#[tokio::test]
async fn websocket_clients_reconnect_after_1012_and_count_gaps() {
    let server = GameServer::start(|i| {
        if i == 4 {
            Twist::StreamSkip
        } else {
            Twist::None
        }
    })
    .await;
    let mut config = open(
        &format!("http://{}/", server.addr),
        40.0,
        Duration::from_millis(1500),
    );
    config.sessions = Some(8);
    config.websocket = true;
    let started = dropless_load::start(&config).await.unwrap();
    // Once every stream is open, the server "restarts" them all with 1012.
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.open_streams.load(Ordering::SeqCst) < 8 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("8 streams open");
    server.close_streams.notify_waiters();
    let report = started.report().await.unwrap();
    let sessions = report.sessions.expect("a sessions report");
    assert_eq!(sessions.restart_closes, 8, "{sessions:#?}");
    assert_eq!(
        (sessions.disconnects, sessions.reconnects),
        (8, 8),
        "{sessions:#?}"
    );
    // Only the session whose stream left out a move has a gap: the others
    // resumed after their last move seen.
    assert_eq!(sessions.gaps, 1, "{sessions:#?}");
}
