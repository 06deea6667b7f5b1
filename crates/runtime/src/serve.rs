//! The runtime as a whole: supervisors for the configured services (resumed
//! from the persisted state when there is one), the proxy, the control API,
//! the persister, and the ordered shutdown.

use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::config::{Config, ConfigError};
use crate::control::{self, ControlLimits, ControlListener, TcpControl};
use crate::event::Event;
use crate::process::SpawnError;
use crate::proxy::Proxy;
use crate::route::Router;
use crate::signal::Shutdown;
use crate::state::{Desired, Release, State, StateError};
use crate::supervisor::{Supervisor, SupervisorOptions};

/// Events kept for a slow subscriber before it misses some.
pub const EVENT_BUFFER: usize = 1024;

/// The runtime behind `dropless serve`.
#[derive(Debug)]
pub struct Runtime {
    config: Config,
    router: Router,
    events: broadcast::Sender<Event>,
    state_path: PathBuf,
    tls: Option<crate::tls::TlsAcceptor>,
    tcp_control: Option<TcpControl>,
}

/// `serve` could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file is unreadable.
    #[error(transparent)]
    State(#[from] StateError),
    /// A replica could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A replica of the first release exited or was not ready in time, so
    /// the service never came up: the command or its probe is wrong.
    #[error("service {service} did not start: {reason}")]
    NotReady {
        /// The service.
        service: String,
        /// The replica, its probe and what it answered last.
        reason: String,
    },
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Runtime {
    /// Validates `config`, loads the persisted state from its state dir and
    /// builds the supervisors; nothing runs yet.
    pub fn new(config: Config) -> Result<Self, ServeError> {
        config.validate()?;
        let tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        std::fs::create_dir_all(&config.state_dir).map_err(|source| ServeError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let state_path = config.state_dir.join("state.json");
        let persisted = State::load(&state_path)?.unwrap_or_default();
        for s in &config.services {
            if let Some(d) = persisted.services.get(&s.name)
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
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let supervisors = config
            .services
            .iter()
            .map(|s| {
                let desired = persisted
                    .services
                    .get(&s.name)
                    .cloned()
                    .unwrap_or_else(|| Desired {
                        current: Release {
                            generation: 1,
                            version: s.version.clone(),
                        },
                        previous: None,
                        replicas: s.replicas,
                    });
                Supervisor::new(
                    s.clone(),
                    desired,
                    SupervisorOptions {
                        log_dir: config.state_dir.join("logs"),
                        pool_idle_timeout: config.proxy.pool_idle_timeout,
                        events: events.clone(),
                    },
                )
            })
            .collect();
        Ok(Self {
            router: Router::new(supervisors),
            config,
            events,
            state_path,
            tls,
            tcp_control: None,
        })
    }

    /// Also serves the control API on a TCP address, with a token
    /// ([`TcpControl`]).
    pub fn with_tcp_control(mut self, tcp: TcpControl) -> Self {
        self.tcp_control = Some(tcp);
        self
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
        &self.state_path
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
            config,
            router,
            events,
            state_path,
            tls,
            tcp_control,
        } = self;
        let limits = ControlLimits::of(&config);
        let proxy_config = within_fd_limit(config.proxy.clone(), limits);
        let mut first_release = Vec::new();
        for s in router.services() {
            match s.start() {
                Ok(replicas) => first_release.extend(replicas.into_iter().map(|r| (s.clone(), r))),
                Err(e) => {
                    // Replicas already started must not outlive a failed start.
                    let stops = router.services().iter().map(|s| s.shutdown(true));
                    futures_util::future::join_all(stops).await;
                    return Err(e.into());
                }
            }
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
            std::future::pending().await
        };
        save(&router, &state_path);
        let stop_background = CancellationToken::new();
        let persister = tokio::spawn(persist(
            router.clone(),
            state_path.clone(),
            stop_background.clone(),
        ));
        let control = (control.is_some() || tcp_control.is_some()).then(|| {
            tokio::spawn(control::serve(
                control,
                tcp_control,
                router.clone(),
                events.clone(),
                limits,
                stop_background.clone(),
            ))
        });
        let mode = std::sync::Arc::new(std::sync::Mutex::new(Shutdown::Graceful));
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let recorded = std::sync::Arc::clone(&mode);
        let failed_start = std::sync::Arc::clone(&failed);
        let proxy_shutdown = async move {
            let m = tokio::select! {
                m = shutdown => m,
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
        let mut proxy = Proxy::new(router.clone(), proxy_config);
        if let Some(tls) = tls {
            proxy = proxy.with_tls(tls);
        }
        proxy.run(listener, proxy_shutdown).await;
        let fast = *mode.lock().expect("mode lock") == Shutdown::Fast;
        let retirements = router.services().iter().map(|s| s.shutdown(fast));
        futures_util::future::join_all(retirements).await;
        stop_background.cancel();
        let _ = persister.await;
        if let Some(c) = control {
            let _ = c.await;
        }
        save(&router, &state_path);
        tracing::info!("stopped");
        match failed.lock().expect("failure lock").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
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

fn snapshot(router: &Router) -> State {
    State {
        services: router
            .services()
            .iter()
            .map(|s| (s.name().to_string(), s.desired()))
            .collect(),
    }
}

fn save(router: &Router, path: &std::path::Path) {
    if let Err(e) = snapshot(router).save(path) {
        tracing::error!("{e}");
    }
}

/// Writes the state file whenever a service's desired state changes.
async fn persist(router: Router, path: PathBuf, stop: CancellationToken) {
    let mut watches: Vec<_> = router
        .services()
        .iter()
        .map(Supervisor::watch_desired)
        .collect();
    loop {
        let changed =
            futures_util::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            (result, _, _) = changed => if result.is_err() { return },
            () = stop.cancelled() => return,
        }
        save(&router, &path);
    }
}
