//! The stateful game: moves, the WebSocket stream, and the handoff of the
//! sessions across a restart of the process through a directory stash.

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

use crate::fixtures::{Demo, PATIENCE, http};

async fn play(demo: &Demo, id: &str) -> u64 {
    let (status, body) = http(
        &format!("http://{}", demo.addr),
        "POST",
        &format!("/game/{id}/move"),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body.parse()
        .unwrap_or_else(|_| panic!("not a move number: {body:?}"))
}

/// Plays `moves` moves of session `id`, restarts the demo (SIGTERM, then a
/// new process with the same flags and stash), and returns the next move.
async fn move_after_restart(args: &[&str], env: &[(&str, &str)], moves: u64) -> u64 {
    let mut old = Demo::start_with_env(args, env).await;
    for expected in 1..=moves {
        assert_eq!(play(&old, "g-1").await, expected);
    }
    assert_eq!(play(&old, "other").await, 1, "sessions are separate");
    old.sigterm();
    assert!(old.exited().await.success(), "{}", old.log());
    let new = Demo::start_with_env(args, env).await;
    play(&new, "g-1").await
}

#[tokio::test]
async fn moves_count_per_session_and_stream_over_a_websocket_closed_with_1012() {
    let mut demo = Demo::start(&["--pre-stop", "0s"]).await;
    for expected in 1..=3 {
        assert_eq!(play(&demo, "a").await, expected);
    }
    let url = format!("ws://{}/game/a/ws?after=1", demo.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut next = async || {
        tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("no message in time")
            .unwrap()
            .unwrap()
    };
    // Moves after 1 are replayed, then new ones streamed.
    assert_eq!(next().await, Message::Text("2".into()));
    assert_eq!(next().await, Message::Text("3".into()));
    assert_eq!(play(&demo, "a").await, 4);
    assert_eq!(next().await, Message::Text("4".into()));

    demo.sigterm();
    let Message::Close(Some(frame)) = next().await else {
        panic!("expected a close frame");
    };
    assert_eq!(frame.code, CloseCode::Restart, "1012: service restart");
    assert!(demo.exited().await.success(), "{}", demo.log());
}

#[tokio::test]
async fn with_handoff_a_session_survives_a_restart_through_a_dir_stash() {
    let dir = tempfile::tempdir().unwrap();
    let stash = format!("dir:{}", dir.path().display());
    let args = ["--pre-stop", "0s", "--handoff"];
    let next = move_after_restart(&args, &[("DROPLESS_STASH", &stash)], 5).await;
    assert_eq!(next, 6, "no reset: the session was handed off");
}

#[tokio::test]
async fn without_handoff_a_session_resets_at_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let stash = format!("dir:{}", dir.path().display());
    let next = move_after_restart(&["--pre-stop", "0s"], &[("DROPLESS_STASH", &stash)], 5).await;
    assert_eq!(next, 1, "the session's state lived in the old process only");
}

#[tokio::test]
async fn handoff_without_a_stash_is_a_usage_error() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dropless-demo"))
        .args(["--port", "0", "--handoff"])
        .env_remove("DROPLESS_STASH")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--handoff needs DROPLESS_STASH: run under dropless serve, or set DROPLESS_STASH=dir:/some/path"),
        "{stderr}"
    );
}
