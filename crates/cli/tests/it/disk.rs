//! `serve`'s state on disk: a state dir or file another user could change is
//! refused, a desired state that cannot be saved fails the deploy.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::fixtures::{Serve, is_gone, run, serve_until_exit_in, stderr};

/// `serve --state-dir DIR` of a command that would leave a marker file;
/// returns its output and whether the command ran.
fn serve_in(dir: &Path) -> (std::process::Output, bool) {
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("ran");
    let script = format!("touch {}; exec sleep 30", marker.display());
    let output = serve_until_exit_in(dir, &["--ready-timeout", "1s"], &["sh", "-c", &script]);
    (output, marker.exists())
}

/// Asserts that `serve` refused `dir` in one line naming `path` and `fix`,
/// before running anything.
fn assert_refused(dir: &Path, path: &Path, fix: &str) {
    let (output, ran) = serve_in(dir);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(fix), "expected {fix:?} in {text}");
    assert!(!ran, "the command of a refused state dir ran: {text}");
}

#[test]
fn serve_refuses_a_state_dir_or_file_others_could_write_or_own() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };

    chmod(&state, 0o777);
    assert_refused(&state, &state, &format!("chmod 700 {}", state.display()));
    chmod(&state, 0o770);
    assert_refused(&state, &state, "chmod 700");
    chmod(&state, 0o700);

    let file = state.join("state.json");
    std::fs::write(&file, r#"{"services":{}}"#).unwrap();
    chmod(&file, 0o666);
    assert_refused(&state, &file, &format!("chmod 600 {}", file.display()));
    chmod(&file, 0o600);

    // Owned by another user (we run as root in the tests: chown works).
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::chown(&state, Some(nobody), None).unwrap();
    assert_refused(&state, &state, "chown");
    nix::unistd::chown(&state, Some(nix::unistd::getuid()), None).unwrap();
    nix::unistd::chown(&file, Some(nobody), None).unwrap();
    assert_refused(&state, &file, "chown");
}

/// A tmpfs of `size` mounted on `dir` (mode 0700) until dropped.
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// `None` when mounting is not possible here (not root, no `mount`).
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .ok()?;
        mounted.status.success().then(|| Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a file until the file system is full; returns it.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![b'x'; 4096];
        // Bounded by the size of the tmpfs.
        while file.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// `GET /sum?a=1&b=2` through the proxy on `port`: the `x-version` it
/// answered with.
fn version_served(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /sum?a=1&b=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-version: ")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no x-version in {response}"))
}

/// The demo command of version `label`, for `deploy --cmd`.
fn demo_cmd(label: &str) -> String {
    format!(
        "{} demo-service --profile v4 --work-ms 10 --version-label {label}",
        env!("CARGO_BIN_EXE_dropless")
    )
}

#[test]
fn a_deploy_whose_state_cannot_be_saved_fails_and_serve_restarts_on_the_saved_one() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(tmpfs) = Tmpfs::mount(&state, "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root and mount)");
        return;
    };
    // The replica logs live elsewhere (as on another volume), so that the
    // full disk fails the state file alone, not the replicas' output.
    let logs = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(logs.path(), state.join("logs")).unwrap();
    let serve = Serve::start_in(&state, "v4", &[], &[]);
    let deployed = run(&[
        "deploy",
        "--control",
        &serve.control,
        "--cmd",
        &demo_cmd("b"),
    ]);
    assert!(deployed.status.success(), "{}", stderr(&deployed));
    assert_eq!(version_served(serve.port), "b");

    let filler = tmpfs.fill();
    let refused = run(&[
        "deploy",
        "--control",
        &serve.control,
        "--cmd",
        &demo_cmd("c"),
    ]);
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    let state_file = state.join("state.json");
    assert!(
        text.contains(&state_file.display().to_string()) && text.contains("No space left"),
        "names the file and the cause: {text}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // What runs is what the file says: b.
    assert_eq!(version_served(serve.port), "b");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let command = &saved["services"]["web"]["current"]["version"]["command"];
    assert_eq!(command.as_array().unwrap().last().unwrap(), "b", "{saved}");
    assert_eq!(serve.stop().code(), Some(0));

    // A restarted serve (whose command line says the demo's default label)
    // runs what the state file says.
    std::fs::remove_file(filler).unwrap();
    let serve = Serve::start_in(&state, "v4", &[], &[]);
    assert_eq!(version_served(serve.port), "b");
    assert_eq!(serve.stop().code(), Some(0));
}

/// Process groups SIGKILLed when dropped, so that a failed test leaves no
/// process behind.
struct KillGroups(Vec<i32>);

impl Drop for KillGroups {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if !is_gone(pid) {
                let group = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// The parent pid of `pid` (`/proc/PID/stat`, field 4).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn replicas_that_ignore_sigterm_left_by_a_killed_serve_are_retired_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    // The group leader ignores SIGTERM, as do its `sleep`s; the demo it runs
    // exits on SIGTERM. Nothing in it writes once started, so none dies of
    // its broken output pipe when serve is gone.
    let script = format!(
        "trap '' TERM; {} demo-service --profile v4 --work-ms 10 & while :; do sleep 1; done",
        env!("CARGO_BIN_EXE_dropless")
    );
    let command = ["sh", "-c", &script];
    let flags = ["--grace", "1s"];
    let mut serve = Serve::start_command(dir.path(), &command, &flags, &[]);
    let pids = serve.replica_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    let _cleanup = KillGroups(pids.clone());
    let killed = i32::try_from(serve.child.id()).unwrap();
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    // Once a replica is reparented, the kernel has sent it its SIGTERM
    // (PR_SET_PDEATHSIG); it ignored it and runs on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| parent_of(p) == Some(killed)) {
        assert!(Instant::now() < deadline, "replicas never reparented");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pids.iter().all(|&p| !is_gone(p)),
        "the replicas ignored SIGTERM: {pids:?}"
    );

    // The next serve on the state dir retires them (SIGTERM, grace 1s,
    // SIGKILL) before it starts its own.
    let began = Instant::now();
    let serve = Serve::start_command(dir.path(), &command, &flags, &[]);
    let gone: Vec<_> = pids.iter().map(|&p| is_gone(p)).collect();
    assert_eq!(
        gone,
        [true, true],
        "leftovers {pids:?} outlived the next serve"
    );
    assert!(began.elapsed() >= Duration::from_secs(1), "after the grace");
    let new = serve.replica_pids();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|p| !pids.contains(p)), "{new:?} vs {pids:?}");
    assert_eq!(version_served(serve.port), "v1");
    assert_eq!(serve.stop().code(), Some(0));
}
