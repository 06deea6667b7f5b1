//! `dropless serve`: flags and config file to a runtime config, then run it
//! in the foreground until SIGTERM (graceful) or SIGINT (fast); SIGHUP
//! reloads the config file (with the same flags applied).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dropless_runtime::config::{
    AffinityConfig, Config, DEFAULT_SERVICE_NAME, ServiceConfig, Version,
};
use dropless_runtime::control::{ControlListener, TcpControl};
use dropless_runtime::serve::{Resumed, Runtime, StartFrom};
use dropless_runtime::supervisor::discover::{DiscoverConfig, DnsSource};
use dropless_runtime::upgrade::adopt::{AdoptError, Adoption};
use dropless_runtime::upgrade::spawner;

use crate::control::describe;

/// Run replicas of a service behind a proxy and deploy them without dropping
/// a request.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config (see docs/config.md); flags below override it. SIGHUP
    /// or `dropless reload` reads it again.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address the proxy listens on, IP:PORT or NAME:PORT (resolved at
    /// start) [default: 127.0.0.1:8080].
    #[arg(long, value_parser = crate::value::socket_addr)]
    listen: Option<SocketAddr>,
    /// Replicas of the service [default: 1].
    #[arg(long)]
    replicas: Option<usize>,
    /// Path probed with GET; an empty string probes with a TCP connect
    /// [default: /healthz].
    #[arg(long)]
    health_path: Option<String>,
    /// Session affinity for the service: requests with the same key go to
    /// the same replica, held while it hands its sessions off; KEY is
    /// cookie:NAME, header:NAME or path:/prefix/{id} (see docs/sessions.md).
    #[arg(long, value_name = "KEY", value_parser = affinity_key)]
    affinity: Option<String>,
    /// Control socket [default: STATE_DIR/dropless.sock].
    #[arg(long, env = "DROPLESS_CONTROL")]
    control: Option<PathBuf>,
    /// State directory: persisted state and replica logs [default: .dropless].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Route to this address instead of starting a command (probed, drained,
    /// never signalled).
    #[arg(long, conflicts_with = "command", value_parser = crate::value::socket_addr)]
    target: Option<SocketAddr>,
    /// Take the replicas from DNS instead of starting them: every address
    /// NAME resolves to (A/AAAA, asked again every 500 ms) is a replica on
    /// PORT, probed, routed to once ready, drained when it leaves the
    /// answer, never signalled. For Docker Swarm (dns:tasks.app:8080),
    /// Kubernetes headless services, Consul DNS; deploy, scale and restart
    /// are the orchestrator's then. Interval and nameserver: [service.discover]
    /// in --config (docs/config.md).
    #[arg(long, value_name = "dns:NAME:PORT", conflicts_with_all = ["command", "target", "replicas"], value_parser = discover_source)]
    discover: Option<DnsSource>,
    /// Time a new replica has to pass its probe, e.g. 30s.
    #[arg(long, value_parser = crate::value::duration)]
    ready_timeout: Option<Duration>,
    /// Interval between probes of a ready replica, e.g. 1s.
    #[arg(long, value_parser = crate::value::duration)]
    probe_interval: Option<Duration>,
    /// Longest wait for a retiring replica's in-flight requests, e.g. 30s.
    #[arg(long, value_parser = crate::value::duration)]
    drain_timeout: Option<Duration>,
    /// Delay between the end of draining and SIGTERM, e.g. 5s.
    #[arg(long, value_parser = crate::value::duration)]
    pre_stop: Option<Duration>,
    /// Time between SIGTERM and SIGKILL, e.g. 30s.
    #[arg(long, value_parser = crate::value::duration)]
    grace: Option<Duration>,
    /// Emulate Kubernetes: routing to a retiring replica stops only this long
    /// after its retirement starts, while pre-stop, SIGTERM and grace run from
    /// the start, with no drain (see docs/config.md).
    #[arg(long, value_parser = crate::value::duration)]
    kubernetes_endpoint_delay: Option<Duration>,
    /// How long a request waits for a ready replica before a 503, e.g. 10s.
    #[arg(long, value_parser = crate::value::duration)]
    queue_timeout: Option<Duration>,
    /// How long a replica has to start its response before the client gets a
    /// 504, e.g. 60s.
    #[arg(long, value_parser = crate::value::duration)]
    response_timeout: Option<Duration>,
    /// Also answer the control API on this TCP address; requires a token of
    /// at least 16 characters in DROPLESS_CONTROL_TOKEN, which clients send
    /// (`--control http://ADDR`).
    #[arg(long, value_parser = crate::value::socket_addr)]
    control_tcp: Option<SocketAddr>,
    /// Serve Prometheus metrics on this address (`GET /metrics`), never the
    /// proxy's; off by default (config `metrics.listen`).
    #[arg(long, value_parser = crate::value::socket_addr)]
    metrics: Option<SocketAddr>,
    /// Append one JSON line per request to this file, `-` for stdout
    /// (config `access_log`).
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Threads serving client connections, each with its own event loop
    /// (default: one per CPU).
    #[arg(long)]
    proxy_threads: Option<usize>,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Start from the command line or config, not from the state saved in
    /// STATE_DIR/state.json by earlier deploys; the saved state is replaced
    /// (its release stays the one `rollback` returns to).
    #[arg(long)]
    fresh: bool,
    /// The command each replica runs (after `--`); it gets PORT and
    /// DROPLESS_REPLICA.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Runs `dropless serve`.
pub fn run(args: ServeArgs) -> ExitCode {
    let reload_args = args.clone();
    let from = if args.fresh {
        StartFrom::Config
    } else {
        StartFrom::Saved
    };
    let asked_by = if describes_service(&args) {
        Some("the command line".to_string())
    } else {
        args.config
            .as_ref()
            .map(|path| format!("the config {}", path.display()))
    };
    let config = match config(args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("dropless serve: {message}");
            return ExitCode::from(2);
        }
    };
    crate::control::init_logging();
    // Started by `dropless upgrade`: take over from the running serve.
    let adoption = match Adoption::receive() {
        Some(Ok(adoption)) => Some(adoption),
        Some(Err(e)) => {
            eprintln!("dropless serve: {e}");
            return ExitCode::from(1);
        }
        None => None,
    };
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("dropless serve: cannot find its own binary (/proc/self/exe)");
        return ExitCode::from(1);
    };
    // Replicas are forked by the spawner process, which outlives an upgrade
    // (an adopted serve takes the old one's).
    if adoption.is_none()
        && let Err(e) = spawner::start(&exe, &[spawner::SUBCOMMAND])
    {
        eprintln!("dropless serve: cannot start the spawner process: {e}");
        return ExitCode::from(1);
    }
    let upgrades = (exe, std::env::args_os().skip(1).collect());
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let serving = match adoption {
        Some(adoption) => runtime.block_on(adopt(config, adoption, upgrades, reload_args)),
        None => runtime.block_on(serve(config, from, asked_by, reload_args, upgrades)),
    };
    match serving {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors name their cause in their message already.
            // Every error of serve is one of starting it (config, command,
            // probe, socket, address): the user has something to fix.
            eprintln!("dropless serve: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the spawner process (`dropless spawner`, started by `serve`).
pub fn spawner() -> ExitCode {
    match dropless_runtime::upgrade::spawner::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Runs `config`; `asked_by` names where the service's command and count
/// came from (the command line or a config file), for the line saying that
/// the saved state overrides them; `args` are read again on a reload.
async fn serve(
    config: Config,
    from: StartFrom,
    asked_by: Option<String>,
    args: ServeArgs,
    upgrades: (PathBuf, Vec<std::ffi::OsString>),
) -> anyhow::Result<()> {
    let (control_path, control_tcp) = (config.control_path(), config.control_tcp);
    let listen = config.proxy.listen;
    let metrics = config.metrics.listen;
    // First the config and the state dir (private, readable, writable):
    // nothing is created in a state dir that is refused.
    let mut runtime = Runtime::start_from(config, from)?.with_upgrades(upgrades.0, upgrades.1);
    if let Some(asked_by) = asked_by {
        for resumed in runtime.resumed() {
            tracing::warn!("{}", ignored(resumed, &asked_by, runtime.state_path()));
        }
    }
    reload_on_hangups(&runtime, args)?;
    let control = ControlListener::bind(&control_path)?;
    let tcp_control = match control_tcp {
        Some(addr) => {
            let token = std::env::var(dropless_runtime::control::TOKEN_ENV).unwrap_or_default();
            Some(TcpControl::bind(addr, &token).await?)
        }
        None => None,
    };
    // On stdout whatever the log level: with port 0 (tests, scripts) this
    // is how the caller learns the port.
    if let Some(tcp) = tcp_control {
        println!(
            "control API also on http://{} (token required)",
            tcp.local_addr()?
        );
        runtime = runtime.with_tcp_control(tcp);
    }
    if let Some(addr) = metrics {
        let listener = dropless_lifecycle::listen::bind_addr(addr)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot serve metrics on {addr} ({e}): pick another --metrics address"
                )
            })?;
        println!("metrics on http://{}/metrics", listener.local_addr()?);
        runtime = runtime.with_metrics(listener);
    }
    // An accept queue of listen::BACKLOG, not tokio's 128, which a burst of
    // new client connections overflows (each then waits a second).
    let listener = dropless_lifecycle::listen::bind_addr(listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on {listen} ({e}): pick another --listen address")
        })?;
    println!(
        "proxy on http://{}, control socket {}",
        listener.local_addr()?,
        control.path().display()
    );
    runtime
        .run(listener, Some(control), dropless_runtime::signal::recv())
        .await?;
    Ok(())
}

/// From here SIGHUP reloads `args`' config file (with the same flags over
/// it) instead of ending the process.
fn reload_on_hangups(runtime: &Runtime, args: ServeArgs) -> anyhow::Result<()> {
    let hangups = dropless_runtime::signal::hangups()?;
    let reloader = runtime.reloader();
    reloader.set_source(std::sync::Arc::new(move || {
        let args = args.clone();
        args.config
            .is_some()
            .then(|| self::config(args))
            .transpose()
    }));
    tokio::spawn(reloader.on_signals(hangups));
    Ok(())
}

/// Takes over from the `serve` that started this one (an upgrade): its
/// sockets, its replicas, the saved desired state (never `--fresh`).
async fn adopt(
    config: Config,
    mut adoption: Adoption,
    upgrades: (PathBuf, Vec<std::ffi::OsString>),
    args: ServeArgs,
) -> anyhow::Result<()> {
    let taken = adoption.sockets().and_then(|sockets| {
        let runtime =
            Runtime::start_from(config, StartFrom::Saved).map_err(|e| AdoptError(e.to_string()))?;
        Ok((sockets, runtime))
    });
    let (sockets, runtime) = match taken {
        Ok(taken) => taken,
        Err(e) => {
            adoption.refuse(&e.0);
            return Err(e.into());
        }
    };
    let mut runtime = runtime.with_upgrades(upgrades.0, upgrades.1);
    reload_on_hangups(&runtime, args)?;
    let control = match sockets.control {
        Some((listener, path)) => Some(ControlListener::from_std(listener, path)?),
        None => None,
    };
    if let Some(listener) = sockets.control_tcp {
        let token = std::env::var(dropless_runtime::control::TOKEN_ENV).unwrap_or_default();
        runtime = runtime.with_tcp_control(TcpControl::from_std(listener, &token)?);
    }
    sockets.proxy.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(sockets.proxy)?;
    tracing::info!(
        "upgrade: taking over proxy on http://{} from pid {}",
        listener.local_addr()?,
        adoption.previous().pid
    );
    runtime
        .with_adoption(adoption)
        .run(listener, control, dropless_runtime::signal::recv())
        .await?;
    Ok(())
}

/// The line saying that the saved state runs and what `asked_by` asked
/// for does not.
fn ignored(resumed: &Resumed, asked_by: &str, state: &std::path::Path) -> String {
    let saved = &resumed.saved;
    let (runs, asked) = (
        describe(&saved.current.version),
        describe(&resumed.configured),
    );
    // The same command with other settings (environment, socket activation).
    let other = if runs == asked && saved.current.version != resumed.configured {
        " with other settings"
    } else {
        ""
    };
    format!(
        "{} says {} runs `{runs}` ×{} (deployed as generation {}); `{asked}`{other} ×{} from {asked_by} is ignored: pass --fresh to start from {asked_by} (it then replaces {})",
        state.display(),
        resumed.service,
        saved.replicas,
        saved.current.generation,
        resumed.configured_replicas,
        state.display()
    )
}

/// Whether flags describe the service (its command, target, count or
/// probe), rather than the config file alone.
fn describes_service(args: &ServeArgs) -> bool {
    args.target.is_some()
        || args.discover.is_some()
        || !args.command.is_empty()
        || args.replicas.is_some()
        || args.health_path.is_some()
        || args.affinity.is_some()
}

/// An affinity key spec, checked.
fn affinity_key(spec: &str) -> Result<String, String> {
    dropless_runtime::proxy::affinity::KeySpec::parse(spec).map(|_| spec.to_string())
}

/// The config file (or the defaults) with the flags applied, validated.
fn config(args: ServeArgs) -> Result<Config, String> {
    let describes_service = describes_service(&args);
    let mut config = match &args.config {
        // Validated once the flags are applied: `--target` may give the
        // service a file without `[[service]]` lacks.
        Some(path) => Config::parse_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.proxy.listen = listen;
    }
    if args.control.is_some() {
        config.control = args.control;
    }
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if let Some(t) = args.response_timeout {
        config.proxy.response_timeout = t;
    }
    if let Some(addr) = args.control_tcp {
        config.control_tcp = Some(addr);
    }
    if args.metrics.is_some() {
        config.metrics.listen = args.metrics;
    }
    if args.access_log.is_some() {
        config.access_log = args.access_log;
    }
    if let Some(n) = args.proxy_threads {
        config.proxy.threads = n;
    }
    if let Some(t) = args.queue_timeout {
        config.proxy.queue_timeout = t;
    }
    if args.tls_cert.is_some() {
        config.proxy.tls_cert = args.tls_cert;
        config.proxy.tls_key = args.tls_key;
    }
    if describes_service {
        if config.services.len() > 1 {
            return Err(
                "the config has several services: describe them in the file, not with flags".into(),
            );
        }
        if config.services.is_empty() {
            config.services.push(ServiceConfig {
                name: DEFAULT_SERVICE_NAME.into(),
                ..ServiceConfig::default()
            });
        }
        let service = &mut config.services[0];
        if let Some(target) = args.target {
            service.version = Version::target(target);
            service.discover = None;
        } else if let Some(source) = args.discover {
            service.version = Version::default();
            service.discover = Some(DiscoverConfig::new(source));
        } else if !args.command.is_empty() {
            service.version = Version::command(args.command);
            service.discover = None;
        }
        if let Some(n) = args.replicas {
            service.replicas = n;
        }
        if let Some(path) = args.health_path {
            service.probe.path = path;
        }
        if let Some(key) = args.affinity {
            match &mut service.affinity {
                Some(affinity) => affinity.key = key,
                None => service.affinity = Some(AffinityConfig::new(key)),
            }
        }
    }
    // Timing flags apply to every service of the config.
    for service in &mut config.services {
        if let Some(t) = args.ready_timeout {
            service.probe.ready_timeout = t;
        }
        if let Some(t) = args.probe_interval {
            service.probe.interval = t;
        }
        if let Some(t) = args.drain_timeout {
            service.retire.drain_timeout = t;
        }
        if let Some(t) = args.pre_stop {
            service.retire.pre_stop = t;
        }
        if let Some(t) = args.grace {
            service.retire.grace = t;
        }
        if args.kubernetes_endpoint_delay.is_some() {
            service.retire.kubernetes_endpoint_delay = args.kubernetes_endpoint_delay;
        }
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// `dns:NAME:PORT`; the error says how to write it.
fn discover_source(text: &str) -> Result<DnsSource, String> {
    text.parse()
        .map_err(|e: dropless_runtime::supervisor::discover::SourceError| e.to_string())
}
