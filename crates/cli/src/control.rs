//! The client commands of the control API: `deploy`, `restart`, `scale`,
//! `rollback`, `status`, `events` and `reload`. Rollouts wait for their end: exit 0 when
//! completed, 1 when aborted (the message names the replica and the probe).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use dropless_runtime::config::{Strategy, Version};
use dropless_runtime::control::{ControlClient, ControlError};
use dropless_runtime::event::Replay;
use dropless_runtime::rollout::{Plan, RolloutRequest};
use dropless_runtime::supervisor::ServiceStatus;

/// Where the runtime is and which service.
#[derive(Debug, Args)]
pub struct Target {
    /// Control socket of `dropless serve`, or `http://HOST:PORT` for its TCP
    /// control API (`serve --control-tcp`; the token in
    /// DROPLESS_CONTROL_TOKEN).
    #[arg(
        long,
        env = "DROPLESS_CONTROL",
        default_value = ".dropless/dropless.sock"
    )]
    control: PathBuf,
    /// The service, when the runtime has several.
    #[arg(long)]
    service: Option<String>,
}

/// Strategy and limits of a rollout.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// `rolling` or `blue-green` [default: from the service config].
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// Replicas above the desired count during the rollout.
    #[arg(long)]
    max_surge: Option<usize>,
    /// Replicas below the desired count during the rollout.
    #[arg(long)]
    max_unavailable: Option<usize>,
}

/// A rollout strategy on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    /// A few replicas at a time.
    Rolling,
    /// All new replicas ready, then switch at once.
    BlueGreen,
}

/// `dropless deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    plan: PlanArgs,
    /// The new command, split on whitespace [default: the current one].
    #[arg(long, conflicts_with = "address")]
    cmd: Option<String>,
    /// An environment variable for the new version (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Route to this address (IP:PORT or NAME:PORT) instead of a command.
    #[arg(long = "target", id = "address", value_parser = crate::value::socket_addr)]
    address: Option<SocketAddr>,
}

/// `dropless restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    plan: PlanArgs,
}

/// `dropless scale N`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    target: Target,
    /// The new replica count, at most the service's max_replicas (64 by
    /// default).
    replicas: usize,
    /// Allow a count of 0: every replica stops and requests get a 503 at
    /// once until the service is scaled up again.
    #[arg(long)]
    allow_zero: bool,
}

/// `dropless rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    plan: PlanArgs,
}

/// `dropless status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `dropless events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// First print the events of this recent past, e.g. 5m (the runtime
    /// keeps its last 1000 events), then follow.
    #[arg(long, value_parser = crate::value::duration, conflicts_with = "last")]
    since: Option<std::time::Duration>,
    /// First print the last N events the runtime kept (at most 1000), then
    /// follow.
    #[arg(long)]
    last: Option<usize>,
}

/// Where the runtime is: `--control` alone, for the commands that name
/// no service.
#[derive(Debug, Args)]
pub struct Control {
    /// Control socket of `dropless serve`, or `http://HOST:PORT` for its TCP
    /// control API (the token in DROPLESS_CONTROL_TOKEN).
    #[arg(
        long,
        env = "DROPLESS_CONTROL",
        default_value = ".dropless/dropless.sock"
    )]
    pub control: PathBuf,
}

/// `dropless reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    control: Control,
}

/// Runs `dropless reload`: prints what the reload applied and what it left
/// as it was; a refused file exits 2 with the reason.
pub fn reload(args: ReloadArgs) -> ExitCode {
    block_on(async move {
        let report = ControlClient::for_target(&args.control.control)?
            .reload()
            .await?;
        for line in report.lines {
            println!("{line}");
        }
        Ok(())
    })
}

/// Runs `dropless deploy`.
pub fn deploy(args: DeployArgs) -> ExitCode {
    block_on(async move {
        let client = ControlClient::for_target(&args.target.control)?;
        let service = args.target.service.clone();
        let mut version = match (args.cmd, args.address) {
            (Some(cmd), _) => Version::command(cmd.split_whitespace()),
            (None, Some(addr)) => Version::target(addr),
            (None, None) => current_version(&client, service.as_deref()).await?,
        };
        version.env.extend(args.env);
        let request = RolloutRequest::Deploy {
            version,
            plan: plan(args.plan),
        };
        rollout(&client, service, request).await
    })
}

/// Runs `dropless restart`.
pub fn restart(args: RestartArgs) -> ExitCode {
    run_rollout(
        args.target,
        RolloutRequest::Restart {
            plan: plan(args.plan),
        },
    )
}

/// Runs `dropless scale N`.
pub fn scale(args: ScaleArgs) -> ExitCode {
    run_rollout(
        args.target,
        RolloutRequest::Scale {
            replicas: args.replicas,
            allow_zero: args.allow_zero,
        },
    )
}

/// Runs `dropless rollback`.
pub fn rollback(args: RollbackArgs) -> ExitCode {
    run_rollout(
        args.target,
        RolloutRequest::Rollback {
            plan: plan(args.plan),
        },
    )
}

/// Runs `dropless status`.
pub fn status(args: StatusArgs) -> ExitCode {
    block_on(async move {
        let services = ControlClient::for_target(&args.target.control)?
            .status()
            .await?;
        if let Some(name) = &args.target.service {
            known_service(&services, name)?;
        }
        let services: Vec<_> = services
            .into_iter()
            .filter(|s| args.target.service.as_ref().is_none_or(|n| *n == s.name))
            .collect();
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&services).expect("status serializes")
            );
            return Ok(());
        }
        if let Some(r) = services.first().and_then(|s| s.runtime.as_ref()) {
            println!("{}", runtime_line(r));
        }
        for s in services {
            let d = &s.desired;
            match &s.discovery {
                Some(found) => {
                    let addrs: Vec<String> = found.addrs.iter().map(|a| a.to_string()).collect();
                    println!(
                        "service {}: replicas from {} ({} address(es): {})",
                        s.name,
                        found.source,
                        addrs.len(),
                        list(&addrs)
                    );
                    if let Some(e) = &found.failing {
                        println!("  resolving fails, the addresses above are kept: {e}");
                    }
                }
                None => println!(
                    "service {}: {} replica(s) of generation {} ({})",
                    s.name,
                    d.replicas,
                    d.current.generation,
                    describe(&d.current.version)
                ),
            }
            if let Some((id, phase)) = s.rollout {
                println!("  last rollout {id}: {phase}");
            }
            for r in s.replicas {
                let pid = r.pid.map_or("-".into(), |p| p.to_string());
                let log = r.log.map_or("-".into(), |l| l.display().to_string());
                println!(
                    "  {:<10} {:<9} gen {:<3} {:<21} pid {:<7} in-flight {:<4} log {log}",
                    r.name,
                    r.state.as_str(),
                    r.generation,
                    r.addr,
                    pid,
                    r.in_flight
                );
            }
        }
        Ok(())
    })
}

/// Runs `dropless events`.
pub fn events(args: EventsArgs) -> ExitCode {
    block_on(async move {
        let service = args.target.service;
        let client = ControlClient::for_target(&args.target.control)?;
        if let Some(name) = &service {
            known_service(&client.status().await?, name)?;
        }
        let replay = match (args.since, args.last) {
            (Some(since), _) => Replay::Since(since),
            (None, Some(n)) => Replay::Last(n),
            (None, None) => Replay::None,
        };
        client
            .events_with(replay, |e| {
                if service.as_ref().is_some_and(|s| *s != e.service) {
                    return true;
                }
                let line = if args.json {
                    serde_json::to_string(&e).expect("events serialize")
                } else {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms);
                    format!("{} {e}", humantime::format_rfc3339_millis(at))
                };
                // A reader that went away (`| head`) ends the stream quietly;
                // `println!` would panic on the broken pipe.
                use std::io::Write;
                writeln!(std::io::stdout(), "{line}").is_ok()
            })
            .await
    })
}

/// Logs to stderr; `RUST_LOG` overrides the level (info by default).
/// Colours only on a terminal and without `NO_COLOR`: a log file or a CI
/// log must not fill with escape codes.
pub fn init_logging() {
    dropless_lifecycle::logging::init();
}

/// `Ok` when the runtime has a service `name`; else the usage error that
/// lists the services it has.
fn known_service(services: &[ServiceStatus], name: &str) -> Result<(), ControlError> {
    if services.iter().any(|s| s.name == name) {
        return Ok(());
    }
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    Err(ControlError::Rejected(format!(
        "no service \"{name}\": the services are {}; pass one of them to --service",
        list(&names)
    )))
}

fn run_rollout(target: Target, request: RolloutRequest) -> ExitCode {
    block_on(async move {
        rollout(
            &ControlClient::for_target(&target.control)?,
            target.service,
            request,
        )
        .await
    })
}

async fn rollout(
    client: &ControlClient,
    service: Option<String>,
    request: RolloutRequest,
) -> Result<(), ControlError> {
    let report = client.rollout(service, request).await?;
    println!(
        "rollout {} of {} completed in {} ms: {} replica(s) of generation {} ({}); started {}, retired {}",
        report.id,
        report.service,
        report.duration_ms,
        report.desired.replicas,
        report.desired.current.generation,
        describe(&report.desired.current.version),
        list(&report.started),
        list(&report.retired)
    );
    Ok(())
}

async fn current_version(
    client: &ControlClient,
    service: Option<&str>,
) -> Result<Version, ControlError> {
    let services = client.status().await?;
    let found = match service {
        Some(name) => services.into_iter().find(|s| s.name == name),
        None if services.len() == 1 => services.into_iter().next(),
        None => None,
    };
    found
        .map(|s| s.desired.current.version)
        .ok_or_else(|| ControlError::Rejected("name the service with --service".into()))
}

/// One line on the runtime: its version, pid and last upgrade.
fn runtime_line(r: &dropless_runtime::upgrade::state::RuntimeInfo) -> String {
    let upgraded = match &r.last_upgrade {
        Some(at) => format!("last upgraded {at} ({} upgrades)", r.upgrades),
        None => "never upgraded".to_string(),
    };
    format!(
        "runtime: dropless {} pid {}, running since {}, {upgraded}",
        r.version, r.pid, r.running_since
    )
}

/// For `dropless version`: the line on the runtime answering at the
/// default control socket (`DROPLESS_CONTROL`), if one answers.
pub fn print_runtime() {
    let control = std::env::var_os(dropless_runtime::control::CONTROL_ENV)
        .map_or_else(|| PathBuf::from(".dropless/dropless.sock"), PathBuf::from);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let info = runtime.block_on(async {
        let client = ControlClient::for_target(&control).ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(2), client.runtime())
            .await
            .ok()?
            .ok()
    });
    if let Some(info) = info {
        println!("{} (at {})", runtime_line(&info), control.display());
    }
}

pub(crate) fn block_on(work: impl Future<Output = Result<(), ControlError>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        // A request the runtime refused, or no runtime at the socket given:
        // the user must fix the flags or start `dropless serve`.
        Err(
            e @ (ControlError::Rejected(_)
            | ControlError::Connect { .. }
            | ControlError::Token { .. }),
        ) => {
            eprintln!("dropless: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("dropless: {e}");
            ExitCode::from(1)
        }
    }
}

fn plan(args: PlanArgs) -> Plan {
    Plan {
        strategy: args.strategy.map(|s| match s {
            StrategyArg::Rolling => Strategy::Rolling,
            StrategyArg::BlueGreen => Strategy::BlueGreen,
        }),
        max_surge: args.max_surge,
        max_unavailable: args.max_unavailable,
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("invalid --env {text:?}: write KEY=VALUE"))
}

/// A version as a user wrote it: its command, or `target ADDR`.
pub(crate) fn describe(version: &Version) -> String {
    match version.target {
        Some(t) => format!("target {t}"),
        None => version.command.join(" "),
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
