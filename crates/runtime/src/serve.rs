//! The runtime as a whole: supervisors for the configured services (resumed
//! from the persisted state when there is one), the proxy, the control API,
//! and the ordered shutdown.

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::config::{Config, ConfigError};
use crate::control::{self, ControlLimits, ControlListener, TcpControl};
use crate::desired::{self, Desired, Release, State, StateError, StateFile};
use crate::event::{Event, Events};
use crate::ops::Ops;
use crate::ops::access_log::AccessLog;
use crate::ops::metrics::Exporter;
use crate::proxy::route::Router;
use crate::proxy::{LiveConfig, Proxy};
use crate::reload::Reloader;
use crate::signal::Shutdown;
use crate::supervisor::leftovers::{InUse, Registry};
use crate::supervisor::process::SpawnError;
use crate::supervisor::{Supervisor, SupervisorOptions};
use crate::upgrade::adopt::{AdoptError, Adoption};
use crate::upgrade::handover::{Sockets, Upgrader};
use crate::upgrade::state::RuntimeInfo;

/// Events kept for a slow subscriber before it misses some.
pub const EVENT_BUFFER: usize = 1024;

/// Where each service's desired state comes from at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The persisted state, for a service it has; the config otherwise.
    #[default]
    Saved,
    /// The config (`serve --fresh`): it replaces the persisted state, as a
    /// new generation whose previous release is the one persisted, so that
    /// `rollback` returns to it.
    Config,
}

/// A service resumed from the persisted state although the config asks for
/// another version or replica count: what runs and what is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The service.
    pub service: String,
    /// The persisted desired state, which runs.
    pub saved: Desired,
    /// The config's version, not run.
    pub configured: crate::config::Version,
    /// The config's replica count, not run.
    pub configured_replicas: usize,
}

/// The runtime behind `dropless serve`.
#[derive(Debug)]
pub struct Runtime {
    resumed: Vec<Resumed>,
    config: Config,
    router: Router,
    events: Events,
    state_file: Arc<StateFile>,
    registry: Arc<Registry>,
    tls: Option<crate::proxy::tls::TlsAcceptor>,
    tcp_control: Option<TcpControl>,
    proxy: LiveConfig,
    reloader: Reloader,
    /// The binary and arguments an upgrade starts by default.
    upgrades: Option<(std::path::PathBuf, Vec<std::ffi::OsString>)>,
    adoption: Option<Adoption>,
    ops: Arc<Ops>,
    metrics: Option<TcpListener>,
}

/// `serve` could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory or file is unusable: unreadable, unwritable, or
    /// not private to the user running `serve`.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another `serve` runs on the state directory.
    #[error(transparent)]
    InUse(#[from] InUse),
    /// A replica could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::proxy::tls::TlsError),
    /// The runtime handed over by another `serve` could not be taken.
    #[error(transparent)]
    Adopt(#[from] AdoptError),
    /// The access log cannot be opened.
    #[error(transparent)]
    AccessLog(#[from] crate::ops::access_log::OpenError),
    /// A replica of the first release exited or was not ready in time, so
    /// the service never came up: the command or its probe is wrong.
    #[error("service {service} did not start: {reason}")]
    NotReady {
        /// The service.
        service: String,
        /// The replica, its probe and what it answered last.
        reason: String,
    },
}

impl Runtime {
    /// Validates `config`, checks that its state dir is private (creating it
    /// 0700), loads the persisted state from it, writes it back (so that a
    /// state dir that cannot be written stops `serve` now, not at the first
    /// deploy) and builds the supervisors; nothing runs yet.
    pub fn new(config: Config) -> Result<Self, ServeError> {
        Self::start_from(config, StartFrom::Saved)
    }

    /// [`Runtime::new`], with each service's desired state taken from
    /// `from`.
    pub fn start_from(config: Config, from: StartFrom) -> Result<Self, ServeError> {
        config.validate()?;
        let tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
            (Some(cert), Some(key)) => Some(crate::proxy::tls::acceptor(cert, key)?),
            _ => None,
        };
        let mut ops = Ops::default();
        if let Some(path) = &config.access_log {
            ops = ops.with_access_log(AccessLog::open(path)?);
        }
        desired::create_private_dir(&config.state_dir)?;
        let state_path = config.state_dir.join("state.json");
        desired::check_private(&state_path)?;
        let persisted = State::load(&state_path)?.unwrap_or_default();
        for s in &config.services {
            if let Some(d) = persisted.services.get(&s.name)
                && from == StartFrom::Saved
                && s.discover.is_none()
                && d.replicas > s.max_replicas
            {
                return Err(ConfigError::Invalid(format!(
                    "{} asks for {} replicas of service {:?}, above its max_replicas {}: raise max_replicas (or move the state file away)",
                    state_path.display(),
                    d.replicas,
                    s.name,
                    s.max_replicas
                ))
                .into());
            }
        }
        // The persisted state of each configured service, or the config's.
        let mut resumed = Vec::new();
        let initial = State {
            services: config
                .services
                .iter()
                .map(|s| {
                    // A discovered service's replicas are DNS's, never
                    // a persisted release.
                    let saved = persisted
                        .services
                        .get(&s.name)
                        .filter(|_| s.discover.is_none());
                    let desired = match (saved, from) {
                        (Some(saved), StartFrom::Saved) => {
                            if saved.current.version != s.version || saved.replicas != s.replicas {
                                resumed.push(Resumed {
                                    service: s.name.clone(),
                                    saved: saved.clone(),
                                    configured: s.version.clone(),
                                    configured_replicas: s.replicas,
                                });
                            }
                            saved.clone()
                        }
                        (Some(saved), StartFrom::Config) => {
                            let generation = saved
                                .current
                                .generation
                                .max(saved.previous.as_ref().map_or(0, |p| p.generation));
                            let previous = if saved.current.version == s.version {
                                saved.previous.clone()
                            } else {
                                Some(saved.current.clone())
                            };
                            Desired {
                                current: Release {
                                    generation: generation + 1,
                                    version: s.version.clone(),
                                },
                                previous,
                                replicas: s.replicas,
                            }
                        }
                        (None, _) => Desired {
                            current: Release {
                                generation: 1,
                                version: s.version.clone(),
                            },
                            previous: None,
                            replicas: if s.discover.is_some() { 0 } else { s.replicas },
                        },
                    };
                    (s.name.clone(), desired)
                })
                .collect(),
        };
        let registry = Arc::new(Registry::new(config.state_dir.join("replicas.json"))?);
        // A discovered service has nothing to resume: kept out of the file,
        // it cannot leave an empty release behind for a later config that
        // gives the same name a command.
        let saved = State {
            services: initial
                .services
                .iter()
                .filter(|(name, _)| {
                    let service = config.services.iter().find(|s| s.name == **name);
                    service.is_none_or(|s| s.discover.is_none())
                })
                .map(|(name, d)| (name.clone(), d.clone()))
                .collect(),
        };
        let state_file = Arc::new(StateFile::create(state_path, saved)?);
        let events = Events::new(EVENT_BUFFER);
        let options = SupervisorOptions {
            log_dir: config.state_dir.join("logs"),
            log_run: crate::supervisor::logs::run_id(),
            logs: config.logs.clone(),
            pool_idle_timeout: config.proxy.pool_idle_timeout,
            events: events.clone(),
            state_file: Arc::clone(&state_file),
            registry: Arc::clone(&registry),
            state_dir: config.state_dir.clone(),
        };
        let supervisors = config
            .services
            .iter()
            .map(|s| {
                let desired = initial.services[&s.name].clone();
                Supervisor::new(s.clone(), desired, options.clone())
            })
            .collect();
        let router = Router::new(supervisors);
        let proxy: LiveConfig = Arc::new(arc_swap::ArcSwap::from_pointee(config.proxy.clone()));
        let reloader = Reloader::new(config.clone(), router.clone(), Arc::clone(&proxy), options);
        Ok(Self {
            resumed,
            router,
            proxy,
            reloader,
            config,
            events,
            state_file,
            registry,
            tls,
            tcp_control: None,
            upgrades: None,
            adoption: None,
            ops: Arc::new(ops),
            metrics: None,
        })
    }

    /// Makes it upgradable (`dropless upgrade`, SIGUSR2): a new `serve`
    /// is `binary` started with `args`, unless the upgrade names another
    /// binary. It takes effect when replicas are forked by a spawner
    /// process ([`crate::upgrade::spawner`]).
    pub fn with_upgrades(
        mut self,
        binary: std::path::PathBuf,
        args: Vec<std::ffi::OsString>,
    ) -> Self {
        self.upgrades = Some((binary, args));
        self
    }

    /// Takes over the replicas handed over in `adoption` instead of
    /// starting replicas (this `serve` was started by an upgrade).
    pub fn with_adoption(mut self, adoption: Adoption) -> Self {
        self.adoption = Some(adoption);
        self
    }

    /// The services resumed from the persisted state whose config asks
    /// for something else (see [`StartFrom`]).
    pub fn resumed(&self) -> &[Resumed] {
        &self.resumed
    }

    /// Also serves the control API on a TCP address, with a token
    /// ([`TcpControl`]).
    pub fn with_tcp_control(mut self, tcp: TcpControl) -> Self {
        self.tcp_control = Some(tcp);
        self
    }

    /// Also serves Prometheus metrics on `listener` (`GET /metrics`; see
    /// [`crate::ops::metrics`]).
    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    /// Its reloads (SIGHUP, `POST /v1/reload`); give it the config file
    /// with [`Reloader::set_source`].
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// The services, by host and by name.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// A subscription to every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Path of the persisted state.
    pub fn state_path(&self) -> &std::path::Path {
        self.state_file.path()
    }

    /// Starts the replicas, serves clients on `listener` and the control API
    /// on `control` (and the TCP control address, if one was given) until
    /// `shutdown` resolves; then stops accepting, lets the
    /// client connections finish, and retires every replica.
    pub async fn run(
        self,
        listener: TcpListener,
        control: Option<ControlListener>,
        shutdown: impl Future<Output = Shutdown>,
    ) -> Result<(), ServeError> {
        let Runtime {
            resumed: _,
            config,
            router,
            events,
            state_file: _,
            registry,
            tls,
            tcp_control,
            proxy: live_proxy,
            reloader,
            upgrades,
            adoption,
            ops,
            metrics,
        } = self;
        let limits = ControlLimits::of(&config);
        live_proxy.store(Arc::new(within_fd_limit(config.proxy.clone(), limits)));
        // Subscribed before the first replica starts: its events count.
        let observer = observe_events(events.subscribe(), Arc::clone(&ops));
        let info = match &adoption {
            Some(a) => RuntimeInfo::upgraded_from(a.previous()),
            None => RuntimeInfo::started(),
        };
        let upgrader = match upgrades {
            Some((binary, args)) if crate::upgrade::spawner::client().is_some() => {
                let sockets = Sockets {
                    proxy: std::os::fd::AsFd::as_fd(&listener),
                    control: control
                        .as_ref()
                        .map(|c| (c.as_fd(), c.path().to_path_buf())),
                    control_tcp: tcp_control.as_ref().map(TcpControl::as_fd),
                };
                match Upgrader::new(router.clone(), sockets, binary, args, info) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        tracing::warn!("upgrades are off: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let adopted = adoption.is_some();
        let first_release = match adoption {
            None => {
                // Replicas a killed `serve` left go before any new one starts.
                let grace = |service: &str| {
                    config
                        .services
                        .iter()
                        .find(|s| s.name == service)
                        .map_or(crate::config::DEFAULT_GRACE, |s| s.retire.grace)
                };
                registry.retire_leftovers(grace).await;
                let mut first_release = Vec::new();
                for s in &router.services() {
                    match s.start() {
                        Ok(replicas) => {
                            first_release.extend(replicas.into_iter().map(|r| (s.clone(), r)))
                        }
                        Err(e) => {
                            // Replicas already started must not outlive a failed start.
                            let services = router.services();
                            let stops = services.iter().map(|s| s.shutdown(true));
                            futures_util::future::join_all(stops).await;
                            return Err(e.into());
                        }
                    }
                }
                first_release
            }
            Some(mut adoption) => {
                // Adopted replicas are probed before this one reports ready;
                // one that fails fails the upgrade, and the old one goes on.
                let adopted = adoption.adopt(&router.services());
                let adopted = match adopted {
                    Ok(adopted) => adopted,
                    Err(e) => {
                        adoption.refuse(&e.to_string());
                        return Err(e.into());
                    }
                };
                for (service, replica) in adopted {
                    if let Err(reason) = service.await_ready(&replica).await {
                        let error = format!("service {}: {reason}", service.name());
                        adoption.refuse(&error);
                        return Err(AdoptError(error).into());
                    }
                }
                tokio::spawn(adoption.committed());
                Vec::new()
            }
        };
        if let Some(u) = &upgrader {
            tokio::spawn(u.clone().on_signals());
        }
        // The first release must come up: a replica of it that exits or is
        // never ready means a wrong command or probe, said once and clearly
        // rather than restarted forever.
        let startup = async move {
            for (service, replica) in first_release {
                if let Err(reason) = service.await_ready(&replica).await {
                    return ServeError::NotReady {
                        service: service.name().to_string(),
                        reason,
                    };
                }
            }
            if !adopted {
                crate::upgrade::notify::notify("READY=1");
            }
            std::future::pending().await
        };
        let stop_background = CancellationToken::new();
        let metrics = metrics.map(|listener| {
            let exporter = Arc::new(Exporter::new(Arc::clone(&ops), router.clone()));
            tokio::spawn(crate::ops::metrics::serve(
                listener,
                exporter,
                stop_background.clone(),
            ))
        });
        let control = (control.is_some() || tcp_control.is_some()).then(|| {
            tokio::spawn(control::serve(
                control,
                tcp_control,
                router.clone(),
                reloader.clone(),
                events.clone(),
                limits,
                stop_background.clone(),
                upgrader.clone(),
                Arc::clone(&ops),
            ))
        });
        let handed_over = upgrader
            .as_ref()
            .map(Upgrader::handed_over)
            .unwrap_or_default();
        let mode = std::sync::Arc::new(std::sync::Mutex::new(Shutdown::Graceful));
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let recorded = std::sync::Arc::clone(&mode);
        let failed_start = std::sync::Arc::clone(&failed);
        let (stepping_down, stop_control) = (handed_over.clone(), stop_background.clone());
        let proxy_shutdown = async move {
            let m = tokio::select! {
                m = shutdown => m,
                () = stepping_down.cancelled() => {
                    // The new `serve` answers the control API from now on.
                    stop_control.cancel();
                    Shutdown::Graceful
                }
                error = startup => {
                    *failed_start.lock().expect("failure lock") = Some(error);
                    Shutdown::Fast
                }
            };
            tracing::info!(
                "shutdown ({m:?}): stop accepting, finish in-flight requests, retire replicas"
            );
            *recorded.lock().expect("mode lock") = m;
            m
        };
        let access_log = Arc::clone(&ops);
        let mut proxy = Proxy::with_live_config(router.clone(), live_proxy).with_ops(ops);
        if let Some(tls) = tls {
            proxy = proxy.with_tls(tls);
        }
        proxy.run(listener, proxy_shutdown).await;
        // Every request is answered: its access log line goes to disk now.
        access_log.flush_access_log(ACCESS_LOG_FLUSH).await;
        if handed_over.is_cancelled() {
            // The replicas, the sockets and the state dir are the new
            // `serve`'s: nothing is retired, removed or signalled.
            reloader.stop().await;
            stop_background.cancel();
            if let Some(c) = control {
                let _ = c.await;
            }
            tracing::info!("stopped after handing the runtime over");
            return Ok(());
        }
        let fast = *mode.lock().expect("mode lock") == Shutdown::Fast;
        // No reload from now on: the services are the ones retired here.
        reloader.stop().await;
        let services = router.services();
        let retirements = services.iter().map(|s| s.shutdown(fast));
        futures_util::future::join_all(retirements).await;
        stop_background.cancel();
        observer.abort();
        if let Some(c) = control {
            let _ = c.await;
        }
        if let Some(m) = metrics {
            let _ = m.await;
        }
        registry.close();
        tracing::info!("stopped");
        match failed.lock().expect("failure lock").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// How long a stopping `serve` waits for its access log to be written.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Counts every event into `ops`' metrics (replica states, rollouts).
fn observe_events(
    mut events: broadcast::Receiver<Event>,
    ops: Arc<Ops>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => ops.metrics().observe(&event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("metrics: {n} events missed, their counts are low");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// `proxy` with `max_connections` lowered, if need be, so that client and
/// control connections at their limits leave [`crate::fds::RESERVE`]
/// descriptors for probes and replica starts; the soft open-file limit is
/// raised to the hard one first.
fn within_fd_limit(mut proxy: ProxyConfig, control: ControlLimits) -> ProxyConfig {
    let Some(limit) = crate::fds::raise_limit() else {
        return proxy;
    };
    let budget = crate::fds::connection_budget(limit, 2 * control.max_connections);
    if proxy.max_connections > budget {
        tracing::info!(
            "proxy.max_connections {} lowered to {budget}: the open-file limit is {limit} and {} descriptors are kept for probes and replica starts (raise the limit with `ulimit -n`)",
            proxy.max_connections,
            crate::fds::RESERVE
        );
        proxy.max_connections = budget;
    }
    proxy
}
