//! The supervisor of one service: starts replicas (a process, or an
//! unmanaged target address), probes them, replaces members that die on their
//! own (with backoff), retires them, and publishes the set of routable
//! replicas to the proxy.

pub mod discover;
pub mod leftovers;
pub mod logs;
pub mod probe;
pub mod process;
pub mod replica;
pub mod retire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ProbeConfig, ServiceConfig};
use crate::desired::{Desired, Release, StateError, StateFile};
use crate::event::{Event, EventKind, Events, ReplicaState, RolloutPhase};
use leftovers::{ProcessId, RecordedReplica, Registry};
use logs::LogFile;
use probe::Probe;
use process::{Listen, Process, SpawnError};
use replica::{OnChange, ProbeFailures, Replica, ReplicaParts};
use retire::Retired;

use crate::proxy::affinity::Affinity;

/// Longest wait for a failed replica's last output to reach its log (its
/// children may hold the pipe open) before the log's tail is read.
pub const LOG_FLUSH_WAIT: Duration = Duration::from_millis(500);

/// Supervises the replicas of one service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Where a supervisor writes and what it shares with the runtime.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Directory of the per-replica log files.
    pub log_dir: PathBuf,
    /// This run's part of the log file names ([`crate::supervisor::logs::run_id`]).
    pub log_run: String,
    /// Rotation of the log files.
    pub logs: crate::config::LogsConfig,
    /// Idle timeout of each replica's connection pool.
    pub pool_idle_timeout: Duration,
    /// Where events go.
    pub events: Events,
    /// The state file, written before a rollout completes.
    pub state_file: Arc<StateFile>,
    /// The record of the running replica processes.
    pub registry: Arc<Registry>,
    /// The state directory (each service's stash lives in it).
    pub state_dir: PathBuf,
}

/// A snapshot of one service for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Hosts routed to it (empty: the default service).
    pub hosts: Vec<String>,
    /// Desired state.
    pub desired: Desired,
    /// The last rollout and its phase, if any.
    pub rollout: Option<(u64, RolloutPhase)>,
    /// Replicas not yet gone.
    pub replicas: Vec<ReplicaStatus>,
    /// The runtime serving it (its version, pid, last upgrade), when
    /// answered by the control API of a `dropless serve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::upgrade::state::RuntimeInfo>,
    /// Where its replicas come from, for a discovered service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<discover::DiscoveryStatus>,
}

/// A snapshot of one replica for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    /// Replica name.
    pub name: String,
    /// Its state.
    pub state: ReplicaState,
    /// Generation it runs.
    pub generation: u64,
    /// Address it serves on.
    pub addr: std::net::SocketAddr,
    /// Process id (and process group id), if managed.
    pub pid: Option<u32>,
    /// Log file, if managed.
    pub log: Option<PathBuf>,
    /// Requests in flight.
    pub in_flight: usize,
    /// Counted in the desired replicas (and routed to when ready).
    pub member: bool,
}

#[derive(Debug)]
struct Inner {
    name: String,
    /// Replaced by a reload; each use reads the settings of its moment.
    config: ArcSwap<ServiceConfig>,
    options: SupervisorOptions,
    replicas: Mutex<Vec<Arc<Replica>>>,
    /// The ready members, published on every change: what each request
    /// reads, without a lock.
    routable: ArcSwap<Vec<Arc<Replica>>>,
    /// Bumped after each publication, so that waiting requests look again.
    topology: watch::Sender<u64>,
    desired: watch::Sender<Desired>,
    scaled_to_zero: AtomicBool,
    next_replica: AtomicU64,
    restarts: AtomicU32,
    rollout_lock: tokio::sync::Mutex<()>,
    phase: Mutex<Option<(u64, RolloutPhase)>>,
    next_rollout: AtomicU64,
    shutdown: CancellationToken,
    /// The last resolution of a discovered service.
    discovery: Mutex<Option<discover::DiscoveryStatus>>,
    /// Failed probes of its replicas, for the metrics.
    probe_failures: Arc<ProbeFailures>,
    /// Session affinity, when the service has it.
    affinity: Option<Arc<Affinity>>,
    /// The stash's socket, when the service has one; it is served from the
    /// start until the last replica is retired.
    stash: Option<PathBuf>,
    stash_stop: CancellationToken,
    /// The stash's server, awaited at the end of the shutdown.
    stash_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    /// Publishes the ready members (taking the list's lock: on a change,
    /// not per request) and wakes the requests waiting for one.
    fn publish(&self) {
        let routable: Vec<_> = self
            .replicas
            .lock()
            .expect("replicas lock")
            .iter()
            .filter(|r| r.is_member() && r.state() == ReplicaState::Ready)
            .cloned()
            .collect();
        self.routable.store(Arc::new(routable));
        self.topology.send_modify(|n| *n += 1);
    }
}

impl Supervisor {
    /// A supervisor for the service `config` whose desired state is `desired`
    /// (from the config, or the persisted state). Nothing runs until
    /// [`Supervisor::start`].
    pub fn new(config: ServiceConfig, desired: Desired, options: SupervisorOptions) -> Self {
        let affinity = config
            .affinity
            .as_ref()
            .map(|a| Arc::new(Affinity::new(a).expect("a validated affinity key")));
        let stash = (affinity.is_some() || config.stash)
            .then(|| crate::stash::socket_path(&options.state_dir, &config.name));
        Self {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                options,
                replicas: Mutex::new(Vec::new()),
                routable: ArcSwap::from_pointee(Vec::new()),
                topology: watch::Sender::new(0),
                // A discovered service has no desired count: with no address
                // yet, requests wait for one.
                scaled_to_zero: AtomicBool::new(desired.replicas == 0 && config.discover.is_none()),
                desired: watch::Sender::new(desired),
                next_replica: AtomicU64::new(1),
                restarts: AtomicU32::new(0),
                rollout_lock: tokio::sync::Mutex::new(()),
                phase: Mutex::new(None),
                next_rollout: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                affinity,
                stash,
                stash_stop: CancellationToken::new(),
                stash_task: Mutex::new(None),
                discovery: Mutex::new(None),
                probe_failures: Arc::default(),
                config: ArcSwap::from_pointee(config),
            }),
        }
    }

    /// Starts the desired replicas as members; they get traffic once ready.
    /// A discovered service starts its discovery instead, which adds them.
    pub fn start(&self) -> Result<Vec<Arc<Replica>>, SpawnError> {
        self.start_stash()?;
        if self.config().discover.is_some() {
            let shutdown = self.inner.shutdown.clone();
            tokio::spawn(discover::run(self.clone(), shutdown));
            return Ok(Vec::new());
        }
        let desired = self.desired();
        let mut started = Vec::with_capacity(desired.replicas);
        for _ in 0..desired.replicas {
            let replica = self.start_replica(&desired.current)?;
            replica.set_member(true);
            started.push(replica);
        }
        Ok(started)
    }

    /// Its session affinity, when it has one.
    pub fn affinity(&self) -> Option<&Arc<Affinity>> {
        self.inner.affinity.as_ref()
    }

    /// The socket of its stash (given to replicas as `DROPLESS_STASH`),
    /// when it has one.
    pub fn stash_socket(&self) -> Option<&std::path::Path> {
        self.inner.stash.as_deref()
    }

    /// Binds its stash's socket and serves it until the service's last
    /// replica is retired.
    fn start_stash(&self) -> Result<(), SpawnError> {
        let Some(socket) = &self.inner.stash else {
            return Ok(());
        };
        let options = &self.inner.options;
        let stash_err = |message: String| SpawnError::Stash {
            path: socket.clone(),
            message,
        };
        let dir = crate::stash::entries_dir(&options.state_dir, self.name());
        let stash = crate::stash::Stash::open(&dir, self.inner.affinity.clone())
            .map_err(|e| stash_err(e.to_string()))?;
        let listener =
            crate::control::ControlListener::bind(socket).map_err(|e| stash_err(e.to_string()))?;
        let task = tokio::spawn(crate::stash::serve(
            listener,
            Arc::new(stash),
            self.inner.stash_stop.clone(),
        ));
        *self.inner.stash_task.lock().expect("stash lock") = Some(task);
        Ok(())
    }

    /// Service name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Service configuration now.
    pub fn config(&self) -> Arc<ServiceConfig> {
        self.inner.config.load_full()
    }

    /// Applies `config` (a reload) from now on: to the next probe of each
    /// replica, the next retirement, rollout and replacement. The name,
    /// affinity and stash are kept; the version and replica count in `config` are not used after
    /// the start (the desired state holds them).
    pub fn update_config(&self, mut config: ServiceConfig) {
        config.name = self.inner.name.clone();
        // Fixed at start, as the table and the stash built from them.
        let current = self.config();
        config.affinity = current.affinity.clone();
        config.stash = current.stash;
        self.inner.config.store(Arc::new(config));
    }

    /// Desired state now.
    pub fn desired(&self) -> Desired {
        self.inner.desired.borrow().clone()
    }

    /// A receiver of desired-state changes (the persister's input).
    pub fn watch_desired(&self) -> watch::Receiver<Desired> {
        self.inner.desired.subscribe()
    }

    /// Saves `desired` in the state file, then makes it the desired state.
    /// When the save fails, nothing changes: the file and the desired state
    /// stay the old ones.
    pub async fn commit_desired(&self, desired: Desired) -> Result<(), StateError> {
        let file = Arc::clone(&self.inner.options.state_file);
        let (name, saved) = (self.name().to_string(), desired.clone());
        tokio::task::spawn_blocking(move || file.commit(&name, saved))
            .await
            .expect("the state file write does not panic")?;
        self.inner.desired.send_replace(desired);
        Ok(())
    }

    /// Whether the service is scaled to zero on purpose (`scale 0
    /// --allow-zero`): a request that finds no ready replica gets a 503 at
    /// once rather than waiting for one.
    pub fn is_scaled_to_zero(&self) -> bool {
        self.inner.scaled_to_zero.load(Ordering::SeqCst)
    }

    /// Marks the service scaled to zero (or not) and wakes the requests
    /// waiting for a replica, so they see it.
    pub(crate) fn set_scaled_to_zero(&self, zero: bool) {
        if self.inner.scaled_to_zero.swap(zero, Ordering::SeqCst) != zero {
            self.inner.publish();
        }
    }

    /// A receiver that changes whenever a replica changes state or membership.
    pub fn watch_topology(&self) -> watch::Receiver<u64> {
        self.inner.topology.subscribe()
    }

    /// Where events go.
    pub fn events(&self) -> &Events {
        &self.inner.options.events
    }

    /// All replicas not yet removed.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.inner.replicas.lock().expect("replicas lock").clone()
    }

    /// Members that are not gone: the replicas counted as the service.
    pub fn members(&self) -> Vec<Arc<Replica>> {
        self.replicas()
            .into_iter()
            .filter(|r| {
                r.is_member()
                    && !r.is_retiring()
                    && matches!(r.state(), ReplicaState::Starting | ReplicaState::Ready)
            })
            .collect()
    }

    /// Failed probes of its replicas so far: of starting ones, of ready ones.
    pub fn probe_failures(&self) -> (u64, u64) {
        self.inner.probe_failures.counts()
    }

    /// Members that are ready: where requests go. A snapshot published on
    /// every change of a replica's state or membership; reading it takes no
    /// lock.
    pub fn routable(&self) -> Arc<Vec<Arc<Replica>>> {
        self.inner.routable.load_full()
    }

    /// Starts one replica of `release` (not a member yet) and its probe and
    /// exit watcher.
    pub fn start_replica(&self, release: &Release) -> Result<Arc<Replica>, SpawnError> {
        let n = self.inner.next_replica.fetch_add(1, Ordering::SeqCst);
        let name = format!("{}-{n}", self.name());
        let version = &release.version;
        let (addr, process, log) = match version.target {
            Some(addr) => (addr, None, None),
            None => {
                let exec_error = |source| SpawnError::Exec {
                    program: version.command.first().cloned().unwrap_or_default(),
                    source,
                };
                // The socket itself when the command takes it; else a port
                // that is free now, which the command binds.
                let listen = if version.socket_activation {
                    let listener = dropless_lifecycle::listen::bind_std(([127, 0, 0, 1], 0).into())
                        .map_err(exec_error)?;
                    Listen::Socket(listener)
                } else {
                    Listen::Port(process::free_port().map_err(exec_error)?)
                };
                let addr = listen.addr().map_err(exec_error)?;
                let options = &self.inner.options;
                let log = LogFile::new(&options.log_dir, &name, &options.log_run, &options.logs);
                let env = match &self.inner.stash {
                    Some(socket) => {
                        let mut env = version.env.clone();
                        let socket = socket.to_string_lossy().into_owned();
                        env.insert(crate::stash::STASH_ENV.to_string(), socket);
                        std::borrow::Cow::Owned(env)
                    }
                    None => std::borrow::Cow::Borrowed(&version.env),
                };
                let process = Process::spawn(&version.command, &env, listen, &name, &log)?;
                self.record(&name, &process);
                (addr, Some(process), Some(log.path().to_path_buf()))
            }
        };
        self.launch(name, release, addr, process, log)
    }

    /// Records `process` in the registry (see [`leftovers`]).
    fn record(&self, name: &str, process: &Process) {
        if let Some(start_time) = process.start_time() {
            self.inner.options.registry.add(RecordedReplica {
                service: self.name().to_string(),
                replica: name.to_string(),
                process: ProcessId {
                    pid: process.pid(),
                    start_time,
                },
            });
        }
    }

    /// Makes a replica of `release` with its address, process and log,
    /// lists it, and starts its probe and exit watcher.
    fn launch(
        &self,
        name: String,
        release: &Release,
        addr: std::net::SocketAddr,
        process: Option<Process>,
        log: Option<PathBuf>,
    ) -> Result<Arc<Replica>, SpawnError> {
        let replica = Replica::new(ReplicaParts {
            name,
            service: self.name().to_string(),
            generation: release.generation,
            addr,
            process,
            log,
            events: self.inner.options.events.clone(),
            on_change: OnChange(Arc::new({
                let inner = Arc::downgrade(&self.inner);
                move || {
                    if let Some(inner) = inner.upgrade() {
                        inner.publish();
                    }
                }
            })),
            pool_idle_timeout: self.inner.options.pool_idle_timeout,
            probe_failures: Arc::clone(&self.inner.probe_failures),
        });
        {
            // Checked under the lock `shutdown` takes: a replica is either in
            // the list it retires, or never started.
            let mut replicas = self.inner.replicas.lock().expect("replicas lock");
            if self.inner.shutdown.is_cancelled() {
                if let Some(p) = replica.process() {
                    p.signal_group(nix::sys::signal::Signal::SIGKILL);
                }
                return Err(SpawnError::ShuttingDown);
            }
            replicas.push(Arc::clone(&replica));
        }
        tokio::spawn(
            self.clone()
                .watch_replica(Arc::clone(&replica), release.clone()),
        );
        Ok(replica)
    }

    /// Waits until `replica` is ready or has failed; the error says why,
    /// naming the replica and its probe, followed by the last lines of its
    /// log.
    pub async fn await_ready(&self, replica: &Replica) -> Result<(), String> {
        let mut state = replica.watch_state();
        let outcome = *state
            .wait_for(|s| *s != ReplicaState::Starting)
            .await
            .expect("the replica holds the sender");
        if outcome == ReplicaState::Ready {
            return Ok(());
        }
        let reason = replica
            .detail()
            .unwrap_or_else(|| format!("replica {} {outcome}", replica.name()));
        Err(format!("{reason}{}", log_tail(replica).await))
    }

    /// Makes `replica` a member: it counts and gets traffic once ready.
    pub fn promote(&self, replica: &Replica) {
        replica.set_member(true);
        self.inner.publish();
    }

    /// Takes `replica` out of routing now and returns its retirement to run.
    pub fn retire(&self, replica: Arc<Replica>) -> impl Future<Output = Retired> + Send + 'static {
        self.retire_with(replica, self.config().retire.clone())
    }

    fn retire_with(
        &self,
        replica: Arc<Replica>,
        config: crate::config::RetireConfig,
    ) -> impl Future<Output = Retired> + Send + 'static {
        replica.set_retiring();
        // Under the Kubernetes emulation routing stops only when the
        // endpoint removal has propagated; otherwise at once.
        if config.kubernetes_endpoint_delay.is_none() {
            replica.set_member(false);
            replica.set_state(ReplicaState::Draining, None);
        }
        let this = self.clone();
        async move {
            let retired = retire::retire(&replica, &config).await;
            this.remove(&replica);
            retired
        }
    }

    /// Stops replacing replicas and retires them all; `fast` skips the
    /// drain and grace periods (SIGKILL at once).
    pub async fn shutdown(&self, fast: bool) {
        {
            let _replicas = self.inner.replicas.lock().expect("replicas lock");
            self.inner.shutdown.cancel();
        }
        let mut config = self.config().retire.clone();
        if fast {
            config = crate::config::RetireConfig {
                drain_timeout: Duration::ZERO,
                pre_stop: Duration::ZERO,
                grace: Duration::ZERO,
                kubernetes_endpoint_delay: None,
            };
        }
        let retirements: Vec<_> = self
            .replicas()
            .into_iter()
            .map(|r| self.retire_with(r, config.clone()))
            .collect();
        futures_util::future::join_all(retirements).await;
        // Retiring replicas stash their sessions: the stash closes last,
        // its socket removed before `shutdown` returns.
        self.inner.stash_stop.cancel();
        let task = self.inner.stash_task.lock().expect("stash lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// A snapshot for `status`.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.name().to_string(),
            hosts: self.config().hosts.clone(),
            desired: self.desired(),
            rollout: *self.inner.phase.lock().expect("phase lock"),
            discovery: self.inner.discovery.lock().expect("discovery lock").clone(),
            replicas: self
                .replicas()
                .iter()
                .map(|r| ReplicaStatus {
                    name: r.name().to_string(),
                    state: r.state(),
                    generation: r.generation(),
                    addr: r.addr(),
                    pid: r.process().map(Process::pid),
                    log: r.log().cloned(),
                    in_flight: r.in_flight(),
                    member: r.is_member(),
                })
                .collect(),
            runtime: None,
        }
    }

    /// The numbers the next replica and rollout get, and the last rollout.
    pub(crate) fn counters(&self) -> (u64, u64, Option<(u64, RolloutPhase)>) {
        (
            self.inner.next_replica.load(Ordering::SeqCst),
            self.inner.next_rollout.load(Ordering::SeqCst),
            *self.inner.phase.lock().expect("phase lock"),
        )
    }

    /// Takes over the replicas another `serve` ran (an upgrade), as
    /// members that start in `Starting` and are probed (never restarted),
    /// and its counters: each replica's record and its log pipe, its exit
    /// status from `spawner`.
    pub(crate) fn adopt(
        &self,
        service: &crate::upgrade::state::ServiceHandover,
        replicas: Vec<(
            crate::upgrade::state::ReplicaHandover,
            Option<std::io::PipeReader>,
        )>,
        spawner: &crate::upgrade::spawner::SpawnerClient,
    ) -> Result<Vec<Arc<Replica>>, SpawnError> {
        self.inner
            .next_replica
            .store(service.next_replica, Ordering::SeqCst);
        self.inner
            .next_rollout
            .store(service.next_rollout, Ordering::SeqCst);
        *self.inner.phase.lock().expect("phase lock") = service.last_rollout;
        let desired = self.desired();
        let options = &self.inner.options;
        let mut adopted = Vec::with_capacity(replicas.len());
        for (record, pipe) in replicas {
            let release = match &desired.previous {
                Some(p) if p.generation == record.generation => p.clone(),
                _ => desired.current.clone(),
            };
            let (process, log) = match &record.process {
                None => (None, None),
                Some(p) => {
                    let log = LogFile::new(
                        &options.log_dir,
                        &record.name,
                        &options.log_run,
                        &options.logs,
                    );
                    let exit = spawner.watch_exit(p.pid);
                    let process = Process::adopted(p.pid, p.start_time, exit, pipe, &log).map_err(
                        |source| SpawnError::Log {
                            path: log.path().to_path_buf(),
                            source,
                        },
                    )?;
                    self.record(&record.name, &process);
                    (Some(process), Some(log.path().to_path_buf()))
                }
            };
            let replica = self.launch(record.name, &release, record.addr, process, log)?;
            replica.set_member(true);
            adopted.push(replica);
        }
        Ok(adopted)
    }

    /// Stops replacing failed replicas and starting new ones, without
    /// retiring any: this `serve` handed its replicas over.
    pub(crate) fn stop_supervising(&self) {
        let _replicas = self.inner.replicas.lock().expect("replicas lock");
        self.inner.shutdown.cancel();
    }

    pub(crate) fn set_discovery(&self, status: discover::DiscoveryStatus) {
        *self.inner.discovery.lock().expect("discovery lock") = Some(status);
    }

    pub(crate) fn rollout_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.rollout_lock
    }

    pub(crate) fn next_rollout(&self) -> u64 {
        self.inner.next_rollout.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Records and broadcasts a rollout phase.
    pub(crate) fn set_phase(&self, id: u64, phase: RolloutPhase, detail: Option<String>) {
        *self.inner.phase.lock().expect("phase lock") = Some((id, phase));
        let event = Event::now(self.name(), EventKind::Rollout { id, phase, detail });
        tracing::info!("{event}");
        self.inner.options.events.send(event);
    }

    fn remove(&self, replica: &Replica) {
        self.inner
            .replicas
            .lock()
            .expect("replicas lock")
            .retain(|r| !std::ptr::eq(Arc::as_ptr(r), replica));
        self.inner.publish();
    }

    /// The life of one replica after its start: exit watcher, probes, and
    /// replacement when a member fails on its own.
    async fn watch_replica(self, replica: Arc<Replica>, release: Release) {
        let probe_config: ProbeConfig = self.config().probe.clone();
        if replica.process().is_some() {
            let replica = Arc::clone(&replica);
            let probe = Probe::new(replica.addr(), &probe_config).to_string();
            let registry = Arc::clone(&self.inner.options.registry);
            // The exit watcher owns nothing but the replica; it ends with it.
            let exited = async move {
                let process = replica.process().expect("managed replica");
                let status = process.exited().await;
                registry.remove(process.pid());
                let state = replica.state();
                // A retiring replica's exit is reported by its retirement.
                if !replica.is_retiring() && !state.is_terminal() {
                    let detail = if state == ReplicaState::Starting {
                        format!(
                            "replica {} exited ({status}) before {probe} succeeded",
                            replica.name()
                        )
                    } else {
                        format!(
                            "replica {} exited on its own ({status}) while {state}",
                            replica.name()
                        )
                    };
                    replica.set_state(ReplicaState::Failed, Some(detail));
                    // Children it left behind go with it.
                    process.signal_group(nix::sys::signal::Signal::SIGKILL);
                }
            };
            tokio::spawn(exited);
        }
        if probe::wait_ready(&replica, &probe_config).await.is_ok() {
            if replica.is_member() {
                self.inner.restarts.store(0, Ordering::SeqCst);
            }
            let inner = &self.inner;
            let current = || inner.config.load().probe.clone();
            if let Some(err) = probe::watch_ready(&replica, current).await {
                let detail = format!(
                    "replica {} failed {} probes in a row: {err}",
                    replica.name(),
                    self.config().probe.failure_threshold
                );
                replica.set_state(ReplicaState::Failed, Some(detail));
            }
        }
        let mut state = replica.watch_state();
        let last = *state
            .wait_for(|s| s.is_terminal())
            .await
            .expect("sender held");
        let replace = replica.is_member() && !replica.is_retiring();
        if last == ReplicaState::Failed && replace && !self.is_shutting_down() {
            replica.set_member(false);
            if let Some(process) = replica.process() {
                process.signal_group(nix::sys::signal::Signal::SIGKILL);
            }
            self.remove(&replica);
            // A discovered address gets a new replica from its discovery,
            // while the name still resolves to it.
            if self.config().discover.is_none() {
                self.replace(release).await;
            }
        }
    }

    /// Starts a member of `release` in place of one that failed, after an
    /// exponential backoff.
    async fn replace(&self, release: Release) {
        loop {
            let restart = self.config().restart.clone();
            let n = self.inner.restarts.fetch_add(1, Ordering::SeqCst).min(16);
            let delay = restart
                .backoff
                .saturating_mul(1 << n)
                .min(restart.backoff_max);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
            match self.start_replica(&release) {
                Ok(replica) => {
                    replica.set_member(true);
                    tracing::info!(
                        service = self.name(),
                        replica = replica.name(),
                        "replacement started after {delay:?}"
                    );
                    return;
                }
                Err(e) => tracing::error!(service = self.name(), "cannot start a replacement: {e}"),
            }
        }
    }
}

/// The last lines of `replica`'s log, for an error saying why it failed:
/// `"; the last lines of its log PATH:"` and the lines, indented; empty for a
/// replica without a log.
async fn log_tail(replica: &Replica) -> String {
    let (Some(process), Some(path)) = (replica.process(), replica.log()) else {
        return String::new();
    };
    // An exited replica's last words may still be in the pipe.
    if process.exit_status().is_some() {
        process.logged(LOG_FLUSH_WAIT).await;
    }
    let shown = path.display();
    match logs::tail(path, logs::TAIL_LINES, logs::TAIL_BYTES) {
        Ok(lines) if lines.is_empty() => format!("; its log {shown} is empty"),
        Ok(lines) => {
            let quoted: String = lines.iter().map(|l| format!("\n    {l}")).collect();
            format!("; the last lines of its log {shown}:{quoted}")
        }
        Err(e) => format!("; its log {shown} cannot be read: {e}"),
    }
}
