//! The whole service: sink, listener, lifecycle, signals per profile.

use std::{io::Write, net::SocketAddr, process::ExitCode, time::Duration};

use dropless_lifecycle::{
    BatchConfig, Config, Lifecycle, STASH_ENV, Stash,
    signal::{Signal, Signals},
};

use crate::{
    Args, CalcLogMode, Error, OnSigterm, Profile,
    app::{self, AppState},
    calclog::{CalcLog, Sink},
    game::Games,
    influx::Influx,
    logfile::LogFile,
};

/// The whole process for a binary: logging on stderr (`RUST_LOG`, default
/// `info`), a tokio runtime, [`run`], and the exit code; errors are printed
/// as one line prefixed with `name`.
pub fn main(args: Args, name: &str) -> ExitCode {
    dropless_lifecycle::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs the demo service until it is stopped, as its profile says.
///
/// Under [`OnSigterm::Exit`] (v4) SIGTERM ends the process at once, from
/// here, with exit code 0: that is the behaviour being demonstrated.
pub async fn run(args: Args) -> Result<(), Error> {
    // Handlers first: a SIGTERM during a slow boot must not kill the process
    // with the default action, whatever the profile.
    let mut signals = Signals::listen()?;
    args.validate()?;
    let profile = args.profile;
    let stash = handoff_stash(&args)?;

    let sink = match (&args.influx_url, &args.log_file) {
        (Some(url), _) => Some(Sink::Influx(Box::new(
            Influx::connect(url, &args.influx_db).await?,
        ))),
        (None, Some(path)) => Some(Sink::File(LogFile::open(path)?)),
        (None, None) => None,
    };
    if profile.calc_log() != CalcLogMode::Off && sink.is_none() {
        tracing::warn!(%profile, "no --influx-url or --log-file: calculations are counted, not written");
    }

    if !args.startup_delay.is_zero() {
        tracing::info!(delay = ?args.startup_delay, "emulating a slow boot");
        tokio::time::sleep(args.startup_delay).await;
    }
    let addr = SocketAddr::new(args.host, args.port);
    // The socket `dropless serve` passed (socket activation), else `addr`.
    let listener = dropless_lifecycle::listen::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr()?;

    let lifecycle = Lifecycle::new(lifecycle_config(&args));
    let calc_log = CalcLog::new(
        &lifecycle,
        profile.calc_log(),
        sink,
        args.log_delay,
        BatchConfig {
            max_items: args.batch_size,
            interval: args.batch_interval,
            flush_on_shutdown: true,
        },
    );
    let version = http::HeaderValue::from_str(&args.version_label).map_err(|_| {
        Error::Usage(format!(
            "--version-label {:?} is not a valid header",
            args.version_label
        ))
    })?;
    let games = Games::new(&lifecycle, stash);
    let app = app::router(
        AppState {
            work: Duration::from_millis(args.work_ms),
            hello_delay: args.hello_delay(),
            calc_log: calc_log.clone(),
        },
        games,
        version,
    );

    lifecycle.set_ready();
    tracing::info!(%profile, version = %args.version_label, addr = %local, "ready");
    announce(local)?;

    let shutdown = async move {
        match profile.on_sigterm() {
            OnSigterm::Graceful { .. } => signals.next().await,
            OnSigterm::Ignore => loop {
                match signals.next().await {
                    Signal::Terminate => tracing::warn!(%profile, "SIGTERM ignored"),
                    Signal::Interrupt => break Signal::Interrupt,
                }
            },
            OnSigterm::Exit => match signals.next().await {
                Signal::Terminate => {
                    tracing::warn!(%profile, "SIGTERM: exiting at once, in-flight requests are cut");
                    std::process::exit(0)
                }
                Signal::Interrupt => Signal::Interrupt,
            },
        }
    };
    lifecycle.serve(listener, app, shutdown).await?;
    // v7 and v9 mean to write every calculation: one they could not write
    // within the grace period is a failed shutdown, which the exit code
    // tells the supervisor. v6 and v8 lose theirs as the apps they
    // reproduce do, unaware: they log it and exit 0.
    let unwritten = calc_log.unwritten();
    if profile.keeps_calculations() && unwritten > 0 {
        return Err(Error::NotWritten {
            unwritten,
            acknowledged: calc_log.acknowledged(),
        });
    }
    Ok(())
}

/// With `--handoff`, the stash `DROPLESS_STASH` names; it must name one.
fn handoff_stash(args: &Args) -> Result<Option<Stash>, Error> {
    if !args.handoff {
        return Ok(None);
    }
    match Stash::from_env() {
        Ok(Some(stash)) => Ok(Some(stash)),
        Ok(None) => Err(Error::Usage(format!(
            "--handoff needs {STASH_ENV}: run under dropless serve, or set {STASH_ENV}=dir:/some/path"
        ))),
        Err(error) => Err(Error::Usage(format!("--handoff: {error}"))),
    }
}

/// The lifecycle settings of a profile.
fn lifecycle_config(args: &Args) -> Config {
    let mut config = Config {
        grace: args.grace,
        ..Config::default()
    };
    if !args.profile.health_endpoints() {
        config.health_path = None;
        config.liveness_path = None;
    }
    if let OnSigterm::Graceful { pre_stop: true } = args.profile.on_sigterm() {
        config.pre_stop = args.pre_stop;
    }
    debug_assert!(args.profile != Profile::V3 || config.pre_stop.is_zero());
    config
}

/// Tells whoever started the process where it listens (tests, the runtime
/// with `--port 0`).
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()
}
