//! `dropless upgrade`: the runtime replaces its own binary under load
//! without a failed request, a restarted replica or a cut tunnel; a new
//! binary that fails leaves the old one serving.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixtures::{Serve, dropless, is_gone, read_bound, run, stderr};

/// The runtime's pid and its replicas' pids, from `status --json`.
fn runtime_and_replicas(control: &str) -> (i64, Vec<i64>) {
    let status = run(&["status", "--control", control, "--json"]);
    let services: serde_json::Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stderr(&status)));
    let runtime = services[0]["runtime"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no runtime pid: {services}"));
    let mut replicas: Vec<i64> = services[0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .collect();
    replicas.sort_unstable();
    (runtime, replicas)
}

/// An open-model load (bounded: `rate` per second for `duration`) against
/// `port`, with `extra` flags; its JSON report on stdout.
fn load(port: u16, rate: &str, duration: &str, extra: &[&str]) -> Child {
    dropless()
        .args(["load", &format!("http://127.0.0.1:{port}/sum?a=1&b=2")])
        .args([
            "--rate",
            rate,
            "--duration",
            duration,
            "--quiet",
            "--json",
            "-",
        ])
        .args(["--threads", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a load and asserts it had no failure and no dropped
/// iteration; returns how many requests it sent.
fn assert_clean(name: &str, load: Child) -> u64 {
    let out = load.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name}: no report ({e}): {}", stderr(&out)));
    let failures = &report["failures"];
    assert!(
        failures.as_object().unwrap().values().all(|n| n == 0),
        "{name}: failures {failures}"
    );
    assert_eq!(report["dropped_iterations"], 0, "{name}: {report}");
    let ok = report["requests"]["ok"].as_u64().unwrap();
    assert!(ok > 0, "{name}: {report}");
    ok
}

/// SIGTERM to the runtime now serving (`pid`); waits until it is gone.
fn stop_runtime(pid: i64) {
    let pid = i32::try_from(pid).unwrap();
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_gone(pid) {
        assert!(Instant::now() < deadline, "runtime {pid} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops, when dropped (a test that failed too), whichever runtime answers
/// at its control socket: after an upgrade it is no child of the test.
struct StopsRuntime(String);

impl Drop for StopsRuntime {
    fn drop(&mut self) {
        let status = run(&["status", "--control", &self.0, "--json"]);
        let services: serde_json::Value =
            serde_json::from_slice(&status.stdout).unwrap_or_default();
        if let Some(pid) = services[0]["runtime"]["pid"].as_i64() {
            stop_runtime(pid);
        }
    }
}

/// Waits until `pid` is gone, for at most `within`.
fn wait_gone(pid: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !is_gone(i32::try_from(pid).unwrap()) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn five_upgrades_under_load_fail_no_request_and_keep_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_in(dir.path(), "v4", &[], &[]);
    let _stops = StopsRuntime(serve.control.clone());
    let (first, replicas) = runtime_and_replicas(&serve.control);
    assert_eq!(replicas.len(), 2);
    let loads = [
        ("keep-alive", load(serve.port, "40", "5s", &[])),
        (
            "no-keepalive",
            load(serve.port, "40", "5s", &["--no-keepalive"]),
        ),
        ("h2", load(serve.port, "40", "5s", &["--http2"])),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let mut runtimes = vec![first];
    for n in 1..=5 {
        let out = run(&["upgrade", "--control", &serve.control]);
        assert!(out.status.success(), "upgrade {n}: {}", stderr(&out));
        let (runtime, now) = runtime_and_replicas(&serve.control);
        assert!(
            !runtimes.contains(&runtime),
            "upgrade {n}: pid {runtime} again"
        );
        assert_eq!(now, replicas, "upgrade {n}: replicas restarted");
        // The old one finishes its connections and exits.
        let old = *runtimes.last().unwrap();
        assert!(
            wait_gone(old, Duration::from_secs(15)),
            "old serve {old} still runs"
        );
        runtimes.push(runtime);
        std::thread::sleep(Duration::from_millis(400));
    }
    for (name, load) in loads {
        assert_clean(name, load);
    }
    let (last, now) = runtime_and_replicas(&serve.control);
    assert_eq!(now, replicas);
    let status = run(&["status", "--control", &serve.control]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("(5 upgrades)"), "{text}");
    stop_runtime(last);
    // The last runtime retired the replicas it adopted.
    for pid in replicas {
        assert!(wait_gone(pid, Duration::from_secs(10)), "replica {pid}");
    }
}

#[test]
fn an_upgrade_to_a_binary_that_exits_at_once_fails_and_the_old_serve_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_in(dir.path(), "v4", &[], &[]);
    let _stops = StopsRuntime(serve.control.clone());
    let (runtime, replicas) = runtime_and_replicas(&serve.control);
    let broken = dir.path().join("broken-dropless");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let load = load(serve.port, "50", "2s", &[]);
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&[
        "upgrade",
        "--control",
        &serve.control,
        "--binary",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("exited"), "{said}");
    assert!(said.contains("broken build: cannot start"), "{said}");
    assert_clean("keep-alive", load);
    assert_eq!(runtime_and_replicas(&serve.control), (runtime, replicas));
    // Still upgradable: the spawner was handed back.
    let out = run(&["upgrade", "--control", &serve.control]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (after, _) = runtime_and_replicas(&serve.control);
    assert_ne!(after, runtime);
    stop_runtime(after);
}

/// A backend that answers an `Upgrade` request with 101 and then echoes
/// every byte; other connections (TCP probes) are closed.
fn echo_tunnel_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `text` through the tunnel and reads its echo.
fn echo(tunnel: &mut TcpStream, text: &str) -> String {
    tunnel.write_all(text.as_bytes()).unwrap();
    let mut buf = vec![0u8; text.len()];
    tunnel.read_exact(&mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

#[test]
fn a_tunnel_open_across_an_upgrade_is_not_cut() {
    let backend = echo_tunnel_backend();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("c.sock").display().to_string();
    let mut child = dropless()
        .args(["serve", "--listen", "127.0.0.1:0", "--control", &control])
        .args(["--state-dir", dir.path().to_str().unwrap()])
        .args(["--target", &backend.to_string(), "--health-path", ""])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let (port, _) = read_bound(&mut child);
    let _stops = StopsRuntime(control.clone());
    let mut tunnel = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        tunnel,
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tunnel.read_exact(&mut byte).is_err() {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
            panic!("no 101 ({:?}): {log}", String::from_utf8_lossy(&head));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo(&mut tunnel, "before"), "before");
    let (old, _) = runtime_and_replicas(&control);
    let out = run(&["upgrade", "--control", &control]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (new, _) = runtime_and_replicas(&control);
    assert_ne!(new, old);
    // The old serve keeps the tunnel within its grace.
    for n in 0..5 {
        let text = format!("after {n}");
        assert_eq!(echo(&mut tunnel, &text), text);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!is_gone(i32::try_from(old).unwrap()), "the old serve left");
    drop(tunnel);
    // New requests reach the new serve.
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        fresh,
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 12];
    fresh.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 101");
    drop(fresh);
    let status = child.wait().unwrap();
    assert!(status.success(), "old serve: {status}");
    stop_runtime(new);
}

#[test]
fn a_killed_serve_leaves_no_replica_and_no_spawner() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start_in(dir.path(), "v4", &[], &[]);
    let _stops = StopsRuntime(serve.control.clone());
    let (runtime, replicas) = runtime_and_replicas(&serve.control);
    let status = run(&["status", "--control", &serve.control, "--json"]);
    let services: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let spawner = services[0]["runtime"]["spawner_pid"].as_i64().unwrap();
    assert!(!is_gone(i32::try_from(spawner).unwrap()));
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    assert!(is_gone(i32::try_from(runtime).unwrap()));
    // The spawner sees its lifeline close and exits; the kernel then sends
    // each replica SIGTERM.
    assert!(
        wait_gone(spawner, Duration::from_secs(10)),
        "spawner survived"
    );
    for pid in replicas {
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "replica {pid} survived"
        );
    }
}

#[test]
fn an_upgrade_during_a_rollout_is_refused_and_serve_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_in(dir.path(), "v4", &["--ready-timeout", "3s"], &[]);
    let _stops = StopsRuntime(serve.control.clone());
    let (runtime, replicas) = runtime_and_replicas(&serve.control);
    // A version that never gets ready: the rollout runs for 3 s, then
    // rolls back.
    let deploy = dropless()
        .args(["deploy", "--control", &serve.control, "--cmd", "sleep 30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Under way once its new replica is listed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime_and_replicas(&serve.control).1.len() < 3 {
        assert!(Instant::now() < deadline, "the deploy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = run(&["upgrade", "--control", &serve.control]);
    let said = stderr(&refused);
    assert!(
        said.contains("a rollout of service web is under way"),
        "{said}"
    );
    assert_eq!(refused.status.code(), Some(1));
    let out = deploy.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the deploy is aborted");
    assert_eq!(
        runtime_and_replicas(&serve.control),
        (runtime, replicas.clone())
    );
    // Once it is over, the upgrade goes through.
    let out = run(&["upgrade", "--control", &serve.control]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (after, now) = runtime_and_replicas(&serve.control);
    assert_ne!(after, runtime);
    assert_eq!(now, replicas);
    stop_runtime(after);
}
