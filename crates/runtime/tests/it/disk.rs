//! What the runtime keeps on disk: a private state dir (0700), state file
//! and logs (0600).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dropless_runtime::config::Version;
use dropless_runtime::rollout::{Plan, RolloutRequest};
use dropless_runtime::signal::Shutdown;

use crate::fixtures::{self, Harness, Mode};

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_state_file_and_logs_are_private_to_the_user() {
    let dir = tempfile::tempdir().unwrap();
    // A state dir that does not exist yet: the runtime creates it.
    let state = dir.path().join("state");
    let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
    let h = Harness::start(fixtures::config(&state, vec![service])).await;
    h.wait_routable(1).await;
    let secret = fixtures::backend(Mode::Graceful, "v2").with_env("DB_PASSWORD", "s3cret");
    h.client()
        .rollout(
            None,
            RolloutRequest::Deploy {
                version: secret,
                plan: Plan::default(),
            },
        )
        .await
        .expect("deploy");
    let state_file = state.join("state.json");
    let logs = state.join("logs");
    let mut modes = vec![
        (state.clone(), mode(&state)),
        (state_file.clone(), mode(&state_file)),
        (logs.clone(), mode(&logs)),
    ];
    for log in std::fs::read_dir(&logs).unwrap() {
        let log = log.unwrap().path();
        modes.push((log.clone(), mode(&log)));
    }
    assert!(modes.len() >= 5, "two replica logs at least: {modes:?}");
    for (path, mode) in &modes {
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, expected, "{} is {mode:o}: {modes:?}", path.display());
    }
    // Saved before the deploy was reported complete.
    assert!(
        std::fs::read_to_string(&state_file)
            .unwrap()
            .contains("s3cret")
    );
    h.stop(Shutdown::Fast).await;
}

/// `version` run by `sh`, which first writes `bytes` of 17-byte lines.
fn flooding(version: Version, bytes: usize) -> Version {
    let mut command = vec![
        "sh".to_string(),
        "-c".into(),
        format!("yes 0123456789abcdef | head -c {bytes}; exec \"$0\" \"$@\""),
    ];
    command.extend(version.command.iter().cloned());
    Version { command, ..version }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_writing_fast_is_not_blocked_and_its_log_is_rotated() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB of output before it listens: far more than a pipe holds.
    let version = flooding(fixtures::backend(Mode::Graceful, "v1"), 1024 * 1024);
    let service = fixtures::service("web", version, 1);
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.logs.max_bytes = 64 * 1024;
    config.logs.keep = 2;
    let h = Harness::start(config).await;
    h.wait_routable(1).await;
    let status = h.router.service(None).unwrap().status();
    let log = status.replicas[0].log.clone().unwrap();
    // The backend says where it listens after the flood; the copier writes
    // in order, so once that line is in the file, the flood was copied.
    let deadline = std::time::Instant::now() + fixtures::WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("listening on")
    {
        assert!(std::time::Instant::now() < deadline, "{}", log.display());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let file = log.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(
        names(&dir.path().join("logs")),
        [file.clone(), format!("{file}.1"), format!("{file}.2")]
    );
    for suffix in ["", ".1", ".2"] {
        let part = std::fs::read(format!("{}{suffix}", log.display())).unwrap();
        assert!(part.len() <= 64 * 1024, "{suffix}: {}", part.len());
        assert!(part.ends_with(b"\n"), "{suffix}: cut at a line end");
    }
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_never_write_to_the_same_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut logs = Vec::new();
    for _ in 0..2 {
        let service = fixtures::service("web", fixtures::backend(Mode::Graceful, "v1"), 1);
        let h = Harness::start(fixtures::config(dir.path(), vec![service])).await;
        h.wait_routable(1).await;
        let status = h.router.service(None).unwrap().status();
        assert_eq!(status.replicas[0].name, "web-1");
        logs.push(status.replicas[0].log.clone().unwrap());
        h.stop(Shutdown::Graceful).await;
    }
    assert_ne!(logs[0], logs[1], "web-1 of each run has its own file");
    let first = std::fs::read_to_string(&logs[0]).unwrap();
    assert_eq!(first.matches("listening on").count(), 1, "{first}");
}
