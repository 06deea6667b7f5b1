//! What the binary's tests share: running `dropless`, a `dropless serve` of
//! the demo service on port 0 (it prints the ports it bound).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// The `dropless` binary, without a control socket from the environment.
pub fn dropless() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dropless"));
    command
        .env_remove("DROPLESS_CONTROL")
        .env("RUST_LOG", "warn");
    command
}

/// Runs `dropless ARGS` to the end.
pub fn run(args: &[&str]) -> Output {
    dropless().args(args).output().expect("dropless runs")
}

/// What a run printed on stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `dropless serve FLAGS -- COMMAND` with its state (and control
/// socket) in `dir` until it exits.
pub fn serve_until_exit_in(dir: &std::path::Path, flags: &[&str], command: &[&str]) -> Output {
    let control = dir.join("c.sock");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--control",
        control.to_str().unwrap(),
        "--state-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    run(&args)
}

/// True when process `pid` no longer runs; a zombie nobody reaps yet counts
/// as gone.
pub fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// A loopback port nothing listens on (bound, then released), for a
/// connection that must be refused; never to serve on.
pub fn closed_port() -> u16 {
    dropless_runtime::supervisor::process::free_port()
        .expect("a free loopback port")
        .port()
}

/// A `dropless serve` of the demo on the port it bound (port 0 asked
/// for), stopped when dropped.
pub struct Serve {
    pub child: Child,
    /// The proxy's port.
    pub port: u16,
    pub control: String,
    /// `http://ADDR` of the TCP control API, when `--control-tcp` was given.
    pub control_tcp: Option<String>,
    /// What it logs (at `warn`), read with [`Serve::stderr`].
    stderr: tempfile::NamedTempFile,
    _dir: Option<tempfile::TempDir>,
}

/// What `serve` prints on stdout once it has bound its sockets: the proxy's
/// port and the TCP control address, if any. Panics when it prints no
/// proxy address within 30 s. A thread reads its stdout to the end, so
/// that what it prints later never blocks it.
pub fn read_bound(child: &mut Child) -> (u16, Option<String>) {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut control_tcp = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = printed.recv_timeout(left) else {
            let exited = child.try_wait();
            // Its replicas get SIGTERM from the kernel.
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve printed no proxy address within 30 s: {exited:?}");
        };
        if let Some(rest) = line.strip_prefix("control API also on ") {
            control_tcp = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("proxy on http://") {
            let addr = rest.split(',').next().unwrap();
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            assert_ne!(addr.port(), 0, "{line}");
            return (addr.port(), control_tcp);
        }
    }
}

/// The demo service with `profile`, as a replica command.
fn demo_command(profile: &str) -> [&str; 6] {
    [
        env!("CARGO_BIN_EXE_dropless"),
        "demo-service",
        "--profile",
        profile,
        "--work-ms",
        "10",
    ]
}

impl Serve {
    pub fn start(profile: &str) -> Serve {
        Self::start_with(profile, &[])
    }

    /// Two replicas of the demo with `profile`, `serve_args` added to the
    /// `serve` command line; returns once both are ready.
    pub fn start_with(profile: &str, serve_args: &[&str]) -> Serve {
        Self::start_with_env(profile, serve_args, &[])
    }

    /// The same, with `env` added to serve's environment.
    pub fn start_with_env(profile: &str, serve_args: &[&str], env: &[(&str, &str)]) -> Serve {
        Self::start_on("127.0.0.1", profile, serve_args, env)
    }

    /// The same, listening on `host` (an IP or a name) and a free port.
    pub fn start_on(host: &str, profile: &str, serve_args: &[&str], env: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let demo = demo_command(profile);
        let mut serve = Self::start_command_on(host, dir.path(), &demo, serve_args, env);
        serve._dir = Some(dir);
        serve
    }

    /// The same, with the state (and control socket) in `dir`, which the
    /// caller keeps.
    pub fn start_in(
        dir: &std::path::Path,
        profile: &str,
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Serve {
        Self::start_command(dir, &demo_command(profile), serve_args, env)
    }

    /// Two replicas of `command`, with the state (and control socket) in
    /// `dir`; returns once both are ready.
    pub fn start_command(
        dir: &std::path::Path,
        command: &[&str],
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Serve {
        Self::start_command_on("127.0.0.1", dir, command, serve_args, env)
    }

    /// The same, listening on `host` (an IP or a name).
    pub fn start_command_on(
        host: &str,
        dir: &std::path::Path,
        command: &[&str],
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Serve {
        let control = dir.join("control.sock").display().to_string();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = dropless()
            .args([
                "serve",
                "--listen",
                &format!("{host}:0"),
                "--control",
                &control,
            ])
            .args(["--state-dir", dir.to_str().unwrap(), "--replicas", "2"])
            .args(serve_args)
            .envs(env.iter().copied())
            .arg("--")
            .args(command)
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let (port, control_tcp) = read_bound(&mut child);
        let serve = Serve {
            child,
            port,
            control,
            control_tcp,
            stderr: log,
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = run(&["status", "--control", &serve.control, "--json"]);
            let ready = String::from_utf8_lossy(&status.stdout)
                .matches("\"ready\"")
                .count();
            if ready >= 2 {
                return serve;
            }
            assert!(
                Instant::now() < deadline,
                "serve not ready: {}",
                stderr(&status)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Serve {
    /// A `serve --discover SOURCE`: replicas from DNS, none waited for.
    pub fn discovering(source: &str) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.sock").display().to_string();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = dropless()
            .args(["serve", "--listen", "127.0.0.1:0", "--control", &control])
            .args(["--state-dir", dir.path().to_str().unwrap()])
            .args(["--discover", source])
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let (port, control_tcp) = read_bound(&mut child);
        Serve {
            child,
            port,
            control,
            control_tcp,
            stderr: log,
            _dir: Some(dir),
        }
    }

    /// What it has logged on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap()
    }

    /// The pids of its replicas, from `status`.
    pub fn replica_pids(&self) -> Vec<i32> {
        let status = run(&["status", "--control", &self.control, "--json"]);
        let services: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        services[0]["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["pid"].as_i64())
            .map(|p| i32::try_from(p).unwrap())
            .collect()
    }

    /// SIGTERM; waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("serve did not stop within 20 s")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Serve {
    /// SIGTERM, so that serve retires its replicas; SIGKILL only if it
    /// hangs (its replicas would then be left behind).
    fn drop(&mut self) {
        if self.terminate().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
