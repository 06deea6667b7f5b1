//! `dropless`: the command line. Parsing and wiring only; every subcommand
//! calls into a library crate.

mod check;
mod control;
mod demo;
mod hold;
mod interrupt;
mod k8s;
mod lint;
mod load;
mod logs;
mod serve;
mod swarm;
mod trial;
mod upgrade;
mod value;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc: ~1.4 us less CPU per proxied request than glibc's malloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (its `malloc_conf`, read once at start): freed pages
/// go back to the system after 1 s (jemalloc's default is 10 s), purged by
/// a background thread even when nothing allocates. After a burst of
/// requests, 10 000 idle keep-alive connections then cost their own memory
/// only, not the burst's (1.2 KB each after 1 s with the default, 0.75 KB
/// once purged). A thread's cache of freed blocks is trimmed after each
/// 1 MiB it allocates, not each 64 KiB: at 64 KiB the proxy's 8 KiB read
/// buffers trimmed it every 8 requests and refilled it from the arena, 2.5 %
/// of the instructions of an HTTP/2 request (callgrind, docs/benchmarks.md).
/// `_RJEM_MALLOC_CONF` in the environment overrides them.
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 72] =
    b"background_thread:true,dirty_decay_ms:1000,tcache_gc_incr_bytes:1048576\0";

/// Deploy a service without dropping a request, and prove it.
///
/// Exit codes: 0 success, 1 runtime error, 2 usage or configuration error,
/// 3 a threshold or verdict failed.
#[derive(Debug, Parser)]
#[command(name = "dropless", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the parts this build contains.
    Version,
    Load(Box<load::LoadArgs>),
    /// Run replicas behind a proxy; deploy them without dropping a request.
    Serve(Box<serve::ServeArgs>),
    /// Roll out a new version and wait until it is done (exit 1 if aborted).
    Deploy(Box<control::DeployArgs>),
    /// Replace every replica with a fresh one of the same version.
    Restart(control::RestartArgs),
    /// Change the replica count.
    Scale(control::ScaleArgs),
    /// Roll back to the previous version.
    Rollback(control::RollbackArgs),
    /// Show services, replicas, states, pids and log files.
    Status(control::StatusArgs),
    /// Stream the runtime's events.
    Events(control::EventsArgs),
    /// Print the replicas' output, interleaved by time (exited replicas
    /// included).
    Logs(logs::LogsArgs),
    /// Make `serve` read its config file again and apply what can change
    /// without a restart (as SIGHUP does).
    Reload(control::ReloadArgs),
    Upgrade(upgrade::UpgradeArgs),
    /// Hold new requests (in-flight ones finish) until `resume`, e.g. for a
    /// database migration.
    Pause(hold::PauseArgs),
    /// Release the held requests, spread over the pause's --spread.
    Resume(hold::ResumeArgs),
    /// Answer every request with a 503 maintenance page (on) or not (off).
    #[command(subcommand)]
    Maintenance(hold::MaintenanceCommand),
    /// Load plus deploy events against a real runtime, then a verdict.
    Trial(Box<trial::TrialArgs>),
    /// The main job: the demo service deployed under load behind dropless,
    /// then under the Kubernetes emulation, side by side.
    Demo(demo::DemoArgs),
    /// Does a program shut down gracefully? Start it, send it SIGTERM under
    /// load, and report what happened on the wire.
    Check(Box<check::CheckArgs>),
    /// Kubernetes helpers.
    #[command(subcommand)]
    K8s(k8s::K8sCommand),
    /// Docker Swarm helpers.
    #[command(subcommand)]
    Swarm(swarm::SwarmCommand),
    /// Run the built-in demo service: the app `dropless demo` and trials
    /// deploy, with behaviour profiles v1..v9 (see docs/demo.md).
    DemoService(Box<dropless_demo::Args>),
    /// The process that forks the replicas of `serve` (started by `serve`).
    #[command(hide = true)]
    Spawner,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("dropless {}", env!("CARGO_PKG_VERSION"));
            println!("parts: lifecycle (crate dropless-lifecycle), demo service (dropless-demo)");
            control::print_runtime();
            ExitCode::SUCCESS
        }
        Command::Load(args) => load::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Deploy(args) => control::deploy(*args),
        Command::Restart(args) => control::restart(args),
        Command::Scale(args) => control::scale(args),
        Command::Rollback(args) => control::rollback(args),
        Command::Status(args) => control::status(args),
        Command::Events(args) => control::events(args),
        Command::Reload(args) => control::reload(args),
        Command::Upgrade(args) => upgrade::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Pause(args) => hold::pause(args),
        Command::Resume(args) => hold::resume(args),
        Command::Maintenance(command) => hold::maintenance(command),
        Command::Trial(args) => trial::run(*args),
        Command::Demo(args) => demo::run(args),
        Command::Check(args) => check::run(*args),
        Command::K8s(command) => k8s::run(command),
        Command::Swarm(command) => swarm::run(command),
        Command::DemoService(args) => demo::service(*args),
        Command::Spawner => serve::spawner(),
    }
}
