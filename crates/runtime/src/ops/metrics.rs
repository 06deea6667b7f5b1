//! Prometheus metrics: counters and histograms kept in atomics per
//! service (no lock on the request path: a request adds to a few atomics of
//! its service when it finishes), read and encoded in the Prometheus text
//! format by [prometheus-client] only when `/metrics` is scraped. Served on
//! an address of its own ([`serve`]), never on the proxy's port.
//!
//! Cardinality is bounded: labels are the service (one per configured
//! service), and fixed small sets (status class, error kind, retry reason,
//! hold reason, replica state, rollout outcome, protocol); no replica name,
//! path or status code is a label.
//!
//! [prometheus-client]: https://docs.rs/prometheus-client

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ErrorKind, HoldReason, Ops, RetryReason};
use crate::event::{Event, EventKind, ReplicaState, RolloutPhase};
use crate::proxy::route::Router;

/// Upper bounds (seconds) of the request and rollout duration histograms'
/// buckets; a last bucket takes the rest.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The protocol of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 over plain TCP.
    Http1,
    /// HTTP/2 over plain TCP (prior knowledge).
    H2c,
    /// TLS (HTTP/1.1 or HTTP/2 by ALPN).
    Https,
}

/// The metrics of the whole runtime.
#[derive(Debug, Default)]
pub struct Metrics {
    services: ArcSwap<HashMap<String, Arc<ServiceStats>>>,
    connections: [AtomicU64; 3],
    /// Idle client connections parked now (see `proxy::park`).
    parked: AtomicU64,
    /// Start of each rollout in progress, by service and id.
    rollouts: Mutex<HashMap<(String, u64), Instant>>,
}

/// The counters of one service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    requests: [AtomicU64; 5],
    errors: [AtomicU64; ErrorKind::ALL.len()],
    retries: [AtomicU64; RetryReason::ALL.len()],
    held: [AtomicU64; HoldReason::ALL.len()],
    held_micros: [AtomicU64; HoldReason::ALL.len()],
    duration: Histogram,
    upstream: Histogram,
    transitions: [AtomicU64; 6],
    rollouts: [AtomicU64; 3],
    rollout_duration: Histogram,
}

/// A histogram over [`BUCKETS`] in atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// What one finished request adds to its service.
#[derive(Debug)]
pub(super) struct Finished {
    pub(super) status: u16,
    pub(super) error: Option<ErrorKind>,
    pub(super) duration: Duration,
    pub(super) upstream: Option<Duration>,
    pub(super) retries: [u16; RetryReason::ALL.len()],
    pub(super) held: [Option<Duration>; HoldReason::ALL.len()],
}

impl Metrics {
    /// The counters of service `name`, created at its first use.
    pub fn service(&self, name: &str) -> Arc<ServiceStats> {
        if let Some(s) = self.services.load().get(name) {
            return Arc::clone(s);
        }
        let mut created = None;
        self.services.rcu(|map| {
            let mut map = HashMap::clone(map);
            let s = map.entry(name.to_string()).or_default();
            created = Some(Arc::clone(s));
            map
        });
        created.expect("rcu ran")
    }

    /// Counts a client connection.
    pub fn connection(&self, protocol: Protocol) {
        self.connections[protocol as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection was parked (`true`) or resumed or closed
    /// from parking (`false`).
    pub fn parked(&self, parked: bool) {
        if parked {
            self.parked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts what `event` says: replica state changes, rollouts ended and
    /// their duration.
    pub fn observe(&self, event: &Event) {
        let stats = self.service(&event.service);
        match &event.kind {
            EventKind::Replica { state, .. } => {
                stats.transitions[*state as usize].fetch_add(1, Ordering::Relaxed);
            }
            EventKind::Rollout { id, phase, .. } => {
                let key = (event.service.clone(), *id);
                let mut started = self.rollouts.lock().expect("rollouts lock");
                let outcome = match phase {
                    RolloutPhase::Completed => 0,
                    RolloutPhase::RolledBack => 1,
                    RolloutPhase::Aborted => {
                        // Ends as rolled back, or here when that fails too.
                        stats.rollouts[2].fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    _ => {
                        started.entry(key).or_insert_with(Instant::now);
                        return;
                    }
                };
                stats.rollouts[outcome].fetch_add(1, Ordering::Relaxed);
                if let Some(at) = started.remove(&key) {
                    stats.rollout_duration.observe(at.elapsed());
                }
            }
            // Its replicas' changes come as replica events.
            EventKind::Discovery { .. } => {}
        }
    }

    /// Adds a finished request to the counters of service `name`: read in
    /// place, without taking a reference of their own (an atomic both proxy
    /// threads would write per request).
    pub(super) fn finish_for(&self, name: &str, f: &Finished) {
        match self.services.load().get(name) {
            Some(stats) => self.finish(stats, f),
            None => self.finish(&self.service(name), f),
        }
    }

    fn finish(&self, stats: &ServiceStats, f: &Finished) {
        let class = match f.status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            500..=599 => 3,
            _ => 4,
        };
        stats.requests[class].fetch_add(1, Ordering::Relaxed);
        if let Some(e) = f.error {
            stats.errors[e as usize].fetch_add(1, Ordering::Relaxed);
        }
        stats.duration.observe(f.duration);
        if let Some(u) = f.upstream {
            stats.upstream.observe(u);
        }
        for (i, n) in f.retries.iter().enumerate().filter(|(_, n)| **n > 0) {
            stats.retries[i].fetch_add(u64::from(*n), Ordering::Relaxed);
        }
        for (i, held) in f.held.iter().enumerate() {
            if let Some(d) = held {
                stats.held[i].fetch_add(1, Ordering::Relaxed);
                stats.held_micros[i].fetch_add(d.as_micros() as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Histogram {
    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn encode(&self, encoder: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, bound) in BUCKETS.iter().chain([&f64::INFINITY]).enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, cumulative, &buckets, None)
    }
}

/// Encodes the metrics of `ops` and of the services of `router`.
#[derive(Debug)]
pub struct Exporter {
    ops: Arc<Ops>,
    router: Router,
}

impl Exporter {
    /// An exporter of `ops`' metrics, with the replicas of `router`'s
    /// services.
    pub fn new(ops: Arc<Ops>, router: Router) -> Self {
        Self { ops, router }
    }

    /// The Prometheus text exposition of everything now.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String");
        out
    }
}

/// A family of metrics labelled by service and one more label.
type Series<'a> = Vec<([(&'static str, &'a str); 2], u64)>;

impl prometheus_client::collector::Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let metrics = &self.ops.metrics;
        let services = metrics.services.load();
        // Every configured service appears, even before its first request.
        let running = self.router.services();
        for s in &running {
            if !services.contains_key(s.name()) {
                metrics.service(s.name());
            }
        }
        let services = metrics.services.load();
        let mut names: Vec<&String> = services.keys().collect();
        names.sort();
        let by = |label: &'static str,
                  values: &[&'static str],
                  of: &dyn Fn(&ServiceStats) -> &[AtomicU64]| {
            let mut series: Series<'_> = Vec::new();
            for name in &names {
                let stats = &services[*name];
                for (i, v) in values.iter().enumerate() {
                    let n = of(stats)[i].load(Ordering::Relaxed);
                    series.push(([("service", name.as_str()), (label, v)], n));
                }
            }
            series
        };
        counters(
            &mut encoder,
            "dropless_requests",
            "Requests answered, by status class.",
            by("class", &["2xx", "3xx", "4xx", "5xx", "other"], &|s| {
                &s.requests
            }),
        )?;
        counters(
            &mut encoder,
            "dropless_request_errors",
            "Requests dropless answered with its own error, by kind.",
            by("kind", &ErrorKind::ALL.map(ErrorKind::name), &|s| &s.errors),
        )?;
        counters(
            &mut encoder,
            "dropless_retries",
            "Requests sent again to a replica, by reason.",
            by("reason", &RetryReason::ALL.map(RetryReason::name), &|s| {
                &s.retries
            }),
        )?;
        counters(
            &mut encoder,
            "dropless_requests_held",
            "Requests that waited before going to a replica, by reason.",
            by("reason", &HoldReason::ALL.map(HoldReason::name), &|s| {
                &s.held
            }),
        )?;
        let held: Series<'_> = by("reason", &HoldReason::ALL.map(HoldReason::name), &|s| {
            &s.held_micros
        });
        let mut m = encoder.encode_descriptor(
            "dropless_held_seconds",
            "Time requests waited before going to a replica, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (labels, micros) in &held {
            ConstCounter::new(*micros as f64 / 1e6).encode(m.encode_family(labels)?)?;
        }
        counters(
            &mut encoder,
            "dropless_replica_transitions",
            "Replica state changes, by the state entered (starting counts starts and restarts, failed counts crashes and probe failures).",
            by("state", &STATES.map(ReplicaState::as_str), &|s| {
                &s.transitions
            }),
        )?;
        let mut probes: Vec<(String, (u64, u64))> = running
            .iter()
            .map(|s| (s.name().to_owned(), s.probe_failures()))
            .collect();
        probes.sort();
        let probe_series: Series<'_> = probes
            .iter()
            .flat_map(|(name, (starting, ready))| {
                [
                    (
                        [("service", name.as_str()), ("replica_state", "starting")],
                        *starting,
                    ),
                    (
                        [("service", name.as_str()), ("replica_state", "ready")],
                        *ready,
                    ),
                ]
            })
            .collect();
        counters(
            &mut encoder,
            "dropless_probe_failures",
            "Failed probes of the service's replicas, by the state of the replica probed (a probe that could not run here is not counted).",
            probe_series,
        )?;
        counters(
            &mut encoder,
            "dropless_rollouts",
            "Rollouts ended, by outcome.",
            by("outcome", &["completed", "rolled_back", "aborted"], &|s| {
                &s.rollouts
            }),
        )?;
        for (name, help, of) in [
            (
                "dropless_request_duration_seconds",
                "Time from a request's head read to its last byte sent.",
                (|s: &ServiceStats| &s.duration) as fn(&ServiceStats) -> &Histogram,
            ),
            (
                "dropless_upstream_duration_seconds",
                "Time from the last attempt's start to the replica's response head.",
                |s| &s.upstream,
            ),
            (
                "dropless_rollout_duration_seconds",
                "Time from a rollout's first phase to its end.",
                |s| &s.rollout_duration,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for n in &names {
                of(&services[*n]).encode(&mut m.encode_family(&[("service", n.as_str())])?)?;
            }
        }
        let mut in_flight = encoder.encode_descriptor(
            "dropless_requests_in_flight",
            "Requests on the service's replicas now.",
            None,
            MetricType::Gauge,
        )?;
        for s in &running {
            let n: usize = s.replicas().iter().map(|r| r.in_flight()).sum();
            ConstGauge::new(n as i64).encode(in_flight.encode_family(&[("service", s.name())])?)?;
        }
        let mut replicas = encoder.encode_descriptor(
            "dropless_replicas",
            "Replicas now, by state.",
            None,
            MetricType::Gauge,
        )?;
        for s in &running {
            let all = s.replicas();
            for state in STATES {
                let n = all.iter().filter(|r| r.state() == state).count();
                ConstGauge::new(n as i64).encode(
                    replicas.encode_family(&[("service", s.name()), ("state", state.as_str())])?,
                )?;
            }
        }
        let mut conns = encoder.encode_descriptor(
            "dropless_client_connections",
            "Client connections accepted, by protocol.",
            None,
            MetricType::Counter,
        )?;
        for (i, p) in ["http1", "h2c", "https"].iter().enumerate() {
            let n = metrics.connections[i].load(Ordering::Relaxed);
            ConstCounter::new(n).encode(conns.encode_family(&[("protocol", *p)])?)?;
        }
        ConstGauge::new(metrics.parked.load(Ordering::Relaxed) as i64)
            .encode(encoder.encode_descriptor(
            "dropless_connections_parked",
            "Idle keep-alive client connections parked in a small task until their next request.",
            None,
            MetricType::Gauge,
        )?)?;
        let dropped = self.ops.access_log.as_ref().map_or(0, |l| l.dropped());
        ConstCounter::new(dropped).encode(encoder.encode_descriptor(
            "dropless_access_log_dropped",
            "Access log lines dropped because the writer was behind.",
            None,
            MetricType::Counter,
        )?)?;
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let open = dir.count() as i64;
            ConstGauge::new(open).encode(encoder.encode_descriptor(
                "dropless_process_open_fds",
                "File descriptors the runtime holds open.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            ConstGauge::new(soft as i64).encode(encoder.encode_descriptor(
                "dropless_process_max_fds",
                "The runtime's open-file limit.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// Every replica state, in the order of [`ServiceStats`]' transitions.
const STATES: [ReplicaState; 6] = [
    ReplicaState::Starting,
    ReplicaState::Ready,
    ReplicaState::Draining,
    ReplicaState::Stopping,
    ReplicaState::Exited,
    ReplicaState::Failed,
];

fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: Series<'_>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, n) in &series {
        ConstCounter::new(*n).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Serves `GET /metrics` from `exporter` on `listener` (HTTP/1.1) until
/// `stop` is cancelled; any other path gets a 404.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    crate::throttle::warn_throttled!("metrics: accept failed: {e}");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let exporter = Arc::clone(&exporter);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let exporter = Arc::clone(&exporter);
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            http::Response::builder()
                                .header(
                                    http::header::CONTENT_TYPE,
                                    "text/plain; version=0.0.4; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(exporter.render())))
                        } else {
                            http::Response::builder()
                                .status(http::StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"metrics are on /metrics\n")))
                        };
                        Ok::<_, Infallible>(resp.expect("static parts form a response"))
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
