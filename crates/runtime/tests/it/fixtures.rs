//! Shared fixtures: the misbehaving test backend, a bounded load client, and
//! a runtime started in-process (or in its own process, [`serve`]) on
//! 127.0.0.1 port 0 with its control socket and state in a temporary
//! directory.

pub mod backend;
pub mod discovery;
pub mod h2raw;
pub mod load;
pub mod raw;
pub mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dropless_runtime::config::{Config, ServiceConfig, Version};
use dropless_runtime::control::{ControlClient, ControlListener};
use dropless_runtime::event::ReplicaState;
use dropless_runtime::event::{Event, EventKind};
use dropless_runtime::proxy::route::Router;
use dropless_runtime::serve::Runtime;
use dropless_runtime::signal::Shutdown;
use tokio::sync::{broadcast, oneshot};

/// Longest a test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(15);

/// How the test backend behaves (see [`backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Finishes in-flight requests on SIGTERM.
    Graceful,
    /// Exits at once on SIGTERM (the demo's v4).
    ExitOnTerm,
    /// Ignores SIGTERM (the demo's v1).
    IgnoreTerm,
    /// Exits 3 at start.
    Crash,
    /// Health is always 503.
    NeverReady,
}

/// A version that runs the test backend in `mode`, labelled `label`.
pub fn backend(mode: Mode, label: &str) -> Version {
    let exe = std::env::current_exe().expect("test binary path");
    let mode = match mode {
        Mode::Graceful => "graceful",
        Mode::ExitOnTerm => "exit-on-term",
        Mode::IgnoreTerm => "ignore-term",
        Mode::Crash => "crash",
        Mode::NeverReady => "never-ready",
    };
    Version::command([
        exe.to_string_lossy().into_owned(),
        "--ignored".into(),
        "--exact".into(),
        "fixtures::backend::backend_process".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        "-q".into(),
    ])
    .with_env("DROPLESS_TEST_BACKEND", "1")
    .with_env("BACKEND_MODE", mode)
    .with_env("VERSION", label)
    .with_socket_activation()
}

/// A version that runs the demo service (`dropless-demo`) in `profile`,
/// labelled `label`, with `extra` flags.
pub fn demo(profile: &str, label: &str, extra: &[&str]) -> Version {
    let mut command = vec![
        demo_binary().to_string_lossy().into_owned(),
        "--profile".into(),
        profile.into(),
        "--version-label".into(),
        label.into(),
    ];
    command.extend(extra.iter().map(|s| s.to_string()));
    Version::command(command).with_socket_activation()
}

/// The demo binary in the target dir this test binary lives in.
/// `cargo test --workspace` has built it already (the demo's own tests need
/// it); only when it is missing (`cargo test -p dropless-runtime` on a fresh
/// checkout) is it built here. A nested `cargo build -p dropless-demo`
/// resolves features differently from the workspace build, so it would
/// rebuild shared dependencies rather than be a no-op.
fn demo_binary() -> &'static PathBuf {
    static DEMO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEMO.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // <target>/<profile>/deps/it-<hash>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("profile dir")
            .to_path_buf();
        let binary = profile_dir.join("dropless-demo");
        if binary.exists() {
            return binary;
        }
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "dropless-demo", "--target-dir"])
            .arg(target_dir);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let out = build.output().expect("run cargo build -p dropless-demo");
        assert!(
            out.status.success(),
            "cargo build -p dropless-demo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        binary
    })
}

/// Starts the demo in `profile` as a process the runtime does not own, on a
/// free loopback port; it is killed when the child is dropped.
pub fn spawn_demo(profile: &str, label: &str) -> (tokio::process::Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(demo_binary())
        .args([
            "--profile",
            profile,
            "--version-label",
            label,
            "--port",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A service with short timeouts fit for tests.
pub fn service(name: &str, version: Version, replicas: usize) -> ServiceConfig {
    let mut s = ServiceConfig {
        name: name.into(),
        replicas,
        version,
        ..ServiceConfig::default()
    };
    s.probe.fast_interval = Duration::from_millis(20);
    s.probe.interval = Duration::from_millis(200);
    s.probe.timeout = Duration::from_millis(500);
    s.probe.ready_timeout = Duration::from_secs(5);
    s.retire.drain_timeout = Duration::from_secs(5);
    s.retire.grace = Duration::from_secs(2);
    s.restart.backoff = Duration::from_millis(50);
    s
}

/// A runtime config for `services` with its state in `dir`.
pub fn config(dir: &std::path::Path, services: Vec<ServiceConfig>) -> Config {
    let mut c = Config {
        state_dir: dir.to_path_buf(),
        services,
        ..Config::default()
    };
    c.proxy.listen = "127.0.0.1:0".parse().unwrap();
    c.proxy.queue_timeout = Duration::from_secs(5);
    c.proxy.shutdown_grace = Duration::from_secs(5);
    c
}

/// A runtime running in-process.
pub struct Harness {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// The control socket.
    pub control: PathBuf,
    /// The services.
    pub router: Router,
    /// Its reloads (no config source until a test sets one).
    pub reloader: dropless_runtime::reload::Reloader,
    /// Events from before the first replica started.
    pub events: broadcast::Receiver<Event>,
    stop: Option<oneshot::Sender<Shutdown>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    /// Starts a runtime for `config` on 127.0.0.1:0.
    pub async fn start(config: Config) -> Self {
        Self::start_with_tcp_control(config, None).await
    }

    /// The same, with the control API on `tcp` as well.
    pub async fn start_with_tcp_control(
        config: Config,
        tcp: Option<dropless_runtime::control::TcpControl>,
    ) -> Self {
        Self::start_with(config, |runtime| match tcp {
            Some(tcp) => runtime.with_tcp_control(tcp),
            None => runtime,
        })
        .await
    }

    /// The same, with metrics served on a port of their own: the runtime
    /// and that address.
    pub async fn start_with_metrics(config: Config) -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = Self::start_with(config, |runtime| runtime.with_metrics(listener)).await;
        (h, addr)
    }

    /// Starts a runtime for `config`, changed by `tweak` before it runs.
    async fn start_with(config: Config, tweak: impl FnOnce(Runtime) -> Runtime) -> Self {
        let control = config.control_path();
        let runtime = tweak(Runtime::new(config).expect("runtime"));
        let router = runtime.router().clone();
        let reloader = runtime.reloader();
        let events = runtime.subscribe();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control_listener = ControlListener::bind(&control).expect("control socket");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let shutdown = async { stopped.await.unwrap_or(Shutdown::Graceful) };
            runtime
                .run(listener, Some(control_listener), shutdown)
                .await
                .expect("runtime run");
        });
        Self {
            addr,
            control,
            router,
            reloader,
            events,
            stop: Some(stop),
            task,
        }
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A control client.
    pub fn client(&self) -> ControlClient {
        ControlClient::new(&self.control)
    }

    /// Waits until the only service has `n` ready members.
    pub async fn wait_routable(&self, n: usize) {
        self.wait_routable_in(None, n).await;
    }

    /// Waits until service `name` (or the only one) has `n` ready members.
    pub async fn wait_routable_in(&self, name: Option<&str>, n: usize) {
        let service = self.router.service(name).expect("service");
        let mut topology = service.watch_topology();
        tokio::time::timeout(WAIT, async {
            while service.routable().len() != n {
                topology.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never {n} routable replicas: {:?}", service.status()));
    }

    /// Stops the runtime and waits for it.
    pub async fn stop(mut self, mode: Shutdown) {
        let _ = self.stop.take().unwrap().send(mode);
        tokio::time::timeout(WAIT * 2, &mut self.task)
            .await
            .expect("runtime stops")
            .expect("runtime task");
    }
}

impl Drop for Harness {
    /// A test that panicked before `stop` leaves no replica process behind.
    fn drop(&mut self) {
        if self.stop.is_none() {
            return;
        }
        for service in self.router.services() {
            for replica in service.replicas() {
                if let Some(process) = replica.process() {
                    process.signal_group(nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// Waits for the next event matching `pred`.
pub async fn next_event(
    events: &mut broadcast::Receiver<Event>,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = events.recv().await.expect("events");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event in time")
}

/// The replica states of `replica` in the order they were broadcast, until
/// it reaches a terminal state.
pub async fn states_of(
    events: &mut broadcast::Receiver<Event>,
    replica: &str,
) -> Vec<ReplicaState> {
    let mut states = Vec::new();
    loop {
        let e = next_event(
            events,
            |e| matches!(&e.kind, EventKind::Replica { replica: r, .. } if r == replica),
        )
        .await;
        let EventKind::Replica { state, .. } = e.kind else {
            unreachable!()
        };
        states.push(state);
        if state.is_terminal() {
            return states;
        }
    }
}

/// A WebSocket upgrade of `GET /ws` through the proxy at `addr`: the
/// connection once its 101 head is read, and that head (lowercase).
pub async fn websocket(addr: SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ws = tokio::net::TcpStream::connect(addr).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        ws.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    (ws, head)
}

/// The proxy's parked connections, by the gauge its metrics listener at
/// `metrics` serves.
pub async fn parked(metrics: SocketAddr) -> u64 {
    gauge(metrics, "dropless_connections_parked ").await
}

/// The value of the first series whose line starts with `series` that the
/// metrics listener at `metrics` serves.
pub async fn gauge(metrics: SocketAddr, series: &str) -> u64 {
    let (_, _, body) = get(&format!("http://{metrics}/metrics")).await;
    let line = body
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in {body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// One GET through the proxy: status, `x-version`, body.
pub async fn get(url: &str) -> (u16, Option<String>, String) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client.get(url.parse().unwrap()).await.expect("GET");
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-version")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// One GET over its own HTTP/1.1 keep-alive connection: status, headers, body.
pub async fn get_with_headers(url: String) -> (u16, http::HeaderMap, String) {
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.authority().unwrap().to_string();
    get_with_host(&url, &host).await
}

/// One GET of `url` with `Host: host`: status, headers, body.
pub async fn get_with_host(url: &str, host: &str) -> (u16, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri.path_and_query().unwrap().as_str())
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Rate of the load the tests run through the proxy, per second.
pub const RATE: u32 = 200;

/// A runtime serving one service, all replicas ready, with open-model load
/// running through it (`GET /sum?a=1&b=2` at [`RATE`]).
pub struct UnderLoad {
    _dir: tempfile::TempDir,
    /// The runtime.
    pub h: Harness,
    /// The load.
    pub load: load::Load,
}

impl UnderLoad {
    /// Starts `service` with the test defaults.
    pub async fn start(service: ServiceConfig, client: load::Client) -> Self {
        Self::start_with(service, client, |_| {}).await
    }

    /// Starts `service` with the test defaults changed by `tweak`.
    pub async fn start_with(
        service: ServiceConfig,
        client: load::Client,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let replicas = service.replicas;
        let mut config = config(dir.path(), vec![service]);
        tweak(&mut config);
        let h = Harness::start(config).await;
        h.wait_routable(replicas).await;
        let url = h.url("/sum?a=1&b=2");
        let mut load = load::Load::start(&url, RATE, Duration::from_secs(60), client).await;
        load.wait_ok(50).await;
        Self { _dir: dir, h, load }
    }

    /// Lets the load run a little longer, then asserts zero failed requests
    /// and zero dropped iterations, and stops the runtime.
    pub async fn finish(mut self) -> dropless_load::Report {
        let before = self.load.ok();
        self.load.wait_ok(before + 20).await;
        let report = self.load.finish().await;
        load::assert_clean(&report, before + 20);
        self.h.stop(Shutdown::Fast).await;
        report
    }
}

/// Waits until `n` requests are in flight on the replicas of `service`.
pub async fn wait_in_flight(service: &dropless_runtime::supervisor::Supervisor, n: usize) {
    let in_flight = || {
        service
            .replicas()
            .iter()
            .map(|r| r.in_flight())
            .sum::<usize>()
    };
    let reached = tokio::time::timeout(WAIT, async {
        // In-flight counts change without a topology event: poll them.
        while in_flight() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "never {n} requests in flight (saw {})",
        in_flight()
    );
}
