//! What the runtime keeps on disk: a private state dir (0700), state file
//! and logs (0600).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
