//! Stateful sessions end to end: `dropless serve --affinity path:/game/{id}`
//! with the demo's game, `dropless load --sessions 200` at 100 moves/s, and
//! a rolling restart in the middle, or a replica killed.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::fixtures::{Serve, dropless, run, stderr};

/// When the restart is issued, from the start of the load: a scripted
/// event, as a trial's `at`.
const RESTART_AT: Duration = Duration::from_secs(2);

/// The demo's game as a replica command: graceful (v9) with no pre-stop
/// delay, and `--handoff` when asked.
fn game(handoff: bool) -> Vec<&'static str> {
    let mut command = vec![
        env!("CARGO_BIN_EXE_dropless"),
        "demo-service",
        "--profile",
        "v9",
        "--pre-stop",
        "0s",
    ];
    if handoff {
        command.push("--handoff");
    }
    command
}

/// What happens at [`RESTART_AT`].
#[derive(Clone, Copy)]
enum Event {
    /// `dropless restart`: a rolling restart.
    Restart,
    /// One replica is SIGKILLed.
    Kill,
}

/// 200 sessions at 100 moves/s for 7 s against `serve`, a rolling restart
/// at [`RESTART_AT`]; the load's JSON report.
fn sessions_through_a_restart(handoff: bool, websocket: bool) -> serde_json::Value {
    sessions_through(Event::Restart, handoff, websocket)
}

/// The same with any event.
fn sessions_through(event: Event, handoff: bool, websocket: bool) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_command(
        dir.path(),
        &game(handoff),
        &["--affinity", "path:/game/{id}"],
        &[],
    );
    let report = dir.path().join("load.json");
    let url = format!("http://127.0.0.1:{}/", serve.port);
    let mut load_args = vec![
        "load",
        &url,
        "--sessions",
        "200",
        "--rate",
        "100",
        "--duration",
        "7s",
        "--quiet",
        "--json",
    ];
    let report_arg = report.display().to_string();
    load_args.push(&report_arg);
    if websocket {
        load_args.push("--websocket");
    }
    let mut load: Child = dropless()
        .args(&load_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(RESTART_AT);
    match event {
        Event::Restart => {
            let restart = run(&["restart", "--control", &serve.control]);
            assert!(restart.status.success(), "restart: {}", stderr(&restart));
        }
        Event::Kill => {
            let pid = nix::unistd::Pid::from_raw(serve.replica_pids()[0]);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        }
    }
    let status = load.wait().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap())
        .unwrap_or_else(|e| panic!("load report ({status:?}): {e}"));
    drop(serve);
    let mut sessions = json["sessions"].clone();
    sessions.as_object_mut().map(|s| s.remove("timeline"));
    eprintln!("requests {}, sessions {sessions}", json["requests"]);
    json
}

#[test]
fn without_handoff_every_session_resets_at_a_rolling_restart() {
    let report = sessions_through_a_restart(false, false);
    let sessions = &report["sessions"];
    assert_eq!(sessions["total"], 200, "{sessions}");
    // The failure being fixed: state in memory only dies with its replica.
    assert_eq!(sessions["resets"], 200, "{sessions}");
}

#[test]
fn with_handoff_no_session_resets_at_a_rolling_restart() {
    let report = sessions_through_a_restart(true, false);
    let sessions = &report["sessions"];
    assert_eq!(report["requests"]["failed"], 0, "{report}");
    assert_eq!(
        (
            &sessions["resets"],
            &sessions["lost_updates"],
            &sessions["duplicates"]
        ),
        (&0.into(), &0.into(), &0.into()),
        "{sessions}"
    );
    assert!(
        sessions["max_hold_ms"].as_u64().unwrap() > 0,
        "a hold is reported: {sessions}"
    );
}

#[test]
fn with_handoff_websocket_clients_are_closed_with_1012_and_reconnect_without_a_gap() {
    let report = sessions_through_a_restart(true, true);
    let sessions = &report["sessions"];
    assert_eq!(report["requests"]["failed"], 0, "{report}");
    assert_eq!(
        (&sessions["resets"], &sessions["gaps"]),
        (&0.into(), &0.into()),
        "{sessions}"
    );
    let disconnects = sessions["disconnects"].as_u64().unwrap();
    assert!(
        disconnects >= 200,
        "every stream was closed by the restart: {sessions}"
    );
    assert_eq!(
        sessions["restart_closes"].as_u64().unwrap(),
        disconnects,
        "all with 1012: {sessions}"
    );
    assert_eq!(
        sessions["reconnects"].as_u64().unwrap(),
        disconnects,
        "{sessions}"
    );
}

#[test]
fn a_sigkilled_replica_resets_its_own_sessions_only() {
    let report = sessions_through(Event::Kill, true, false);
    let sessions = &report["sessions"];
    // State that was never stashed cannot be saved; the other replica's
    // sessions go on.
    let resets = sessions["resets"].as_u64().unwrap();
    assert!(resets > 0 && resets < 200, "{sessions}");
    assert_eq!(
        (&sessions["lost_updates"], &sessions["duplicates"]),
        (&0.into(), &0.into()),
        "{sessions}"
    );
    assert_eq!(sessions["ok"].as_u64().unwrap(), 200 - resets, "{sessions}");
}
