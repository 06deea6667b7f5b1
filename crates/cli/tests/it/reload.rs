//! `serve`'s SIGHUP and `dropless reload`: the config file read again and
//! applied while requests flow.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixtures::{dropless, is_gone, read_bound, run, stderr};

/// A `dropless serve --config FILE` in its own temporary directory,
/// SIGTERMed (then killed) when dropped.
struct Served {
    child: Child,
    port: u16,
    control: String,
    config: PathBuf,
    dir: tempfile::TempDir,
}

/// A `[[service]]` of the demo service (v4) named `name`.
fn demo_service(name: &str, hosts: &[&str], replicas: usize) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "[[service]]\nname = {name:?}\nhosts = [{}]\nreplicas = {replicas}\nversion.command = [{:?}, \"demo-service\", \"--profile\", \"v4\", \"--work-ms\", \"10\"]\nprobe.interval = \"200ms\"\n",
        hosts.join(", "),
        env!("CARGO_BIN_EXE_dropless"),
    )
}

impl Served {
    /// Serves `config` (TOML); returns once `ready` replicas are ready.
    fn start(config: &str, ready: usize) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, config).unwrap();
        let control = dir.path().join("c.sock").display().to_string();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut child = dropless()
            .args(["serve", "--config", path.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--control", &control])
            .args(["--state-dir", dir.path().to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // The port it bound, as it prints it: none is bound and released.
        let (port, _) = read_bound(&mut child);
        let served = Served {
            child,
            port,
            control,
            config: path,
            dir,
        };
        served.wait_ready(ready);
        served
    }

    /// Waits until `n` replicas are ready.
    fn wait_ready(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready() < n {
            assert!(Instant::now() < deadline, "not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> usize {
        let status = run(&["status", "--control", &self.control, "--json"]);
        String::from_utf8_lossy(&status.stdout)
            .matches("\"ready\"")
            .count()
    }

    /// The pids of the replicas of `service`.
    fn pids(&self, service: &str) -> Vec<i32> {
        let status = run(&["status", "--control", &self.control, "--json"]);
        let services: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        services
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == service)
            .flat_map(|s| s["replicas"].as_array().unwrap().clone())
            .filter_map(|r| r["pid"].as_i64())
            .map(|p| i32::try_from(p).unwrap())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn rewrite(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// `dropless reload` against it.
    fn reload(&self) -> std::process::Output {
        run(&["reload", "--control", &self.control])
    }

    /// The status code of a GET with `Host: host`, and how long it took.
    fn get(&self, host: &str) -> (u16, Duration) {
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "GET /sum?a=1&b=2 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let code = answer
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {answer:?}"));
        (code, started.elapsed())
    }

    /// SIGTERM, and the exit status within 20 s.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM);
        wait_exit(&mut self.child, Duration::from_secs(20)).expect("serve stops")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            if wait_exit(&mut self.child, Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits until `check` holds, for at most `within`.
fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn sighup_under_load_drops_no_request_and_serve_keeps_running() {
    let web = demo_service("web", &[], 2);
    let served = Served::start(&web, 2);
    let pids = served.pids("web");
    let url = format!("http://127.0.0.1:{}/sum?a=1&b=2", served.port);
    // Open-model load that fails (exit 3) if a single request fails.
    let load = dropless()
        .args(["load", &url, "--rate", "100", "--duration", "4s"])
        .args(["--max-failures", "0", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each SIGHUP reloads a file whose settings alternate.
    for n in 0..6 {
        let timeout = if n % 2 == 0 { "3s" } else { "10s" };
        served.rewrite(&format!("[proxy]\nqueue_timeout = {timeout:?}\n{web}"));
        served.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(400));
    }
    let load = load.wait_with_output().unwrap();
    assert_eq!(
        load.status.code(),
        Some(0),
        "no request failed: {}{}",
        String::from_utf8_lossy(&load.stdout),
        String::from_utf8_lossy(&load.stderr)
    );
    assert_eq!(served.pids("web"), pids, "the same replicas serve");
    let log = served.log();
    assert!(
        log.matches("reload: proxy: queue_timeout applied").count() >= 5,
        "{log}"
    );
    assert_eq!(served.stop().code(), Some(0), "serve still ran, and stops");
}

#[test]
fn reload_applies_hosts_and_queue_timeout_and_refuses_an_invalid_file() {
    let web = demo_service("web", &["a.test"], 1);
    let served = Served::start(&web, 1);
    assert_eq!(served.get("a.test").0, 200);
    assert_eq!(served.get("b.test").0, 421, "no service for b.test yet");
    // hosts changes routing; a service that never gets ready shows the
    // queue timeout; the upstream pool's idle timeout cannot change.
    let never_ready = "[[service]]\nname = \"slow\"\nhosts = [\"slow.test\"]\nversion.command = [\"sleep\", \"60\"]\n";
    served.rewrite(&format!(
        "[proxy]\npool_idle_timeout = \"5s\"\nqueue_timeout = \"300ms\"\n{}\n{never_ready}",
        demo_service("web", &["b.test"], 1)
    ));
    let output = served.reload();
    let text = lines(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    for expected in [
        "pool_idle_timeout cannot change without a restart: still 30s",
        "proxy: queue_timeout applied",
        "service web: hosts applied",
        "service slow added: 1 replica(s) starting",
    ] {
        assert!(text.contains(expected), "{expected:?} in {text}");
    }
    assert_eq!(served.get("b.test").0, 200, "b.test now routed to web");
    assert_eq!(served.get("a.test").0, 421, "a.test no longer routed");
    let (code, took) = served.get("slow.test");
    assert_eq!(code, 503);
    assert!(
        took < Duration::from_secs(3),
        "the 300ms queue timeout: {took:?}"
    );
    // A file that does not parse is refused; nothing changes.
    served.rewrite("[proxy]\nqueue_timeout = \"soon\"\n");
    let output = served.reload();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    assert!(
        text.contains("soon") && text.contains("nothing changed"),
        "{text}"
    );
    assert_eq!(served.get("b.test").0, 200, "still serving");
    let (code, took) = served.get("slow.test");
    assert!(
        code == 503 && took < Duration::from_secs(3),
        "{code} {took:?}"
    );
    assert_eq!(served.stop().code(), Some(0));
}

#[test]
fn a_service_removed_by_reload_drains_and_its_replicas_exit() {
    let web = demo_service("web", &["web.test"], 1);
    let api = demo_service("api", &["api.test"], 2);
    let served = Served::start(&format!("{web}\n{api}"), 3);
    let api_pids = served.pids("api");
    assert_eq!(api_pids.len(), 2);
    assert_eq!(served.get("api.test").0, 200);
    served.rewrite(&web);
    served.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(20), "the api replicas exit", || {
        api_pids.iter().all(|p| is_gone(*p))
    });
    assert_eq!(served.get("api.test").0, 421, "api is no longer routed");
    assert_eq!(served.get("web.test").0, 200, "web still serves");
    let log = served.log();
    assert!(log.contains("service api removed"), "{log}");
    assert_eq!(served.stop().code(), Some(0));
}

#[test]
fn reload_without_a_config_file_says_so_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let serve = crate::fixtures::Serve::start_in(dir.path(), "v4", &[], &[]);
    let output = run(&["reload", "--control", &serve.control]);
    let text = lines(&output);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(text.contains("without --config"), "{text}");
    assert_eq!(serve.stop().code(), Some(0));
}
