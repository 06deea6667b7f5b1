//! Discovery: a service whose replicas are the addresses a DNS name resolves
//! to (`dns:NAME:PORT`), as an orchestrator publishes them (Docker Swarm's
//! `tasks.SERVICE`, a Kubernetes headless service, Consul's DNS). The name
//! is resolved every [`DiscoverConfig::interval`]; a new address becomes a
//! replica that is probed and routed to once ready; an address that leaves
//! the answer is retired like any replica (routing stops at once, idle
//! pooled sockets close, requests in flight finish within the drain
//! timeout) but never signalled: the orchestrator owns the process.
//!
//! A failed resolution keeps the last good set; an empty answer counts only
//! once it is seen [`EMPTY_CONFIRMATIONS`] times in a row.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Version;
use crate::desired::Release;
use crate::event::{Event, EventKind};
use crate::supervisor::Supervisor;

/// Default time between two resolutions of a discovered name.
pub const DEFAULT_DISCOVER_INTERVAL: Duration = Duration::from_millis(500);
/// Empty answers (no such name, or no address) in a row before the set of
/// replicas really becomes empty.
pub const EMPTY_CONFIRMATIONS: u32 = 2;
/// Longest wait for one answer of the nameserver, per attempt.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts per resolution before it counts as failed.
pub const RESOLVE_ATTEMPTS: usize = 2;

/// Where a service's replicas come from instead of a command or a target
/// (`[service.discover]` in the config, `serve --discover`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscoverConfig {
    /// The name to resolve and the port every address serves on.
    pub from: DnsSource,
    /// Time between two resolutions ([`DEFAULT_DISCOVER_INTERVAL`]).
    #[serde(with = "crate::config::duration", default = "default_interval")]
    pub interval: Duration,
    /// A nameserver to ask (UDP, then TCP) instead of the system's resolver
    /// configuration (`/etc/resolv.conf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<SocketAddr>,
}

/// `dns:NAME:PORT`: the A and AAAA records of `NAME`, each address serving
/// on `PORT` (one port for all, as in Swarm and Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsSource {
    /// The name resolved, e.g. `tasks.app`.
    pub name: String,
    /// The port of every address.
    pub port: u16,
}

/// A discovery source that does not parse; the message says how to write it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("discovery source {given:?} {problem}: write dns:NAME:PORT, e.g. dns:tasks.app:8080")]
pub struct SourceError {
    given: String,
    problem: &'static str,
}

/// What `status` shows of a discovered service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiscoveryStatus {
    /// `dns:NAME:PORT`.
    pub source: String,
    /// The last good answer: the addresses that are replicas.
    pub addrs: Vec<SocketAddr>,
    /// Why resolving fails now (the replicas above are kept), if it does.
    pub failing: Option<String>,
}

impl DiscoverConfig {
    /// Discovery from `from` with the default interval and the system's
    /// resolver.
    pub fn new(from: DnsSource) -> Self {
        Self {
            from,
            interval: DEFAULT_DISCOVER_INTERVAL,
            nameserver: None,
        }
    }
}

fn default_interval() -> Duration {
    DEFAULT_DISCOVER_INTERVAL
}

impl FromStr for DnsSource {
    type Err = SourceError;

    fn from_str(text: &str) -> Result<Self, SourceError> {
        let bad = |problem| SourceError {
            given: text.to_string(),
            problem,
        };
        let rest = text
            .strip_prefix("dns:")
            .ok_or(bad("is not a DNS source"))?;
        let (name, port) = rest.rsplit_once(':').ok_or(bad("has no port"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(bad("has no port from 1 to 65535"))?;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || !name.chars().all(valid) {
            return Err(bad("has no valid DNS name"));
        }
        Ok(Self {
            name: name.to_string(),
            port,
        })
    }
}

impl TryFrom<String> for DnsSource {
    type Error = SourceError;

    fn try_from(text: String) -> Result<Self, SourceError> {
        text.parse()
    }
}

impl From<DnsSource> for String {
    fn from(source: DnsSource) -> Self {
        source.to_string()
    }
}

impl fmt::Display for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dns:{}:{}", self.name, self.port)
    }
}

/// Resolves the service's name until `shutdown`, and makes the replicas
/// follow the answers. Reads the service's config at each round, so a
/// reload changes the name, interval or nameserver from the next one.
pub(crate) async fn run(supervisor: Supervisor, shutdown: CancellationToken) {
    let mut tracker = Tracker::default();
    // Built again when the config changes, or while it cannot be built.
    let mut resolver: Option<(DiscoverConfig, TokioResolver)> = None;
    loop {
        let Some(config) = supervisor.config().discover.clone() else {
            return;
        };
        let built = match resolver.take() {
            Some((c, r)) if c == config => Ok(r),
            _ => build_resolver(&config),
        };
        let answer = match &built {
            Ok(r) => tokio::select! {
                a = resolve(r, &config.from) => a,
                _ = shutdown.cancelled() => return,
            },
            Err(e) => Answer::Failed(e.clone()),
        };
        resolver = built.ok().map(|r| (config.clone(), r));
        if let Some(failing) = tracker.observe(answer) {
            report_health(&supervisor, &config.from, failing);
        }
        // Every round, not only when the answer changes: an address whose
        // replica failed its probes gets a new one, probed again.
        follow(&supervisor, &tracker.good, &config.from);
        supervisor.set_discovery(DiscoveryStatus {
            source: config.from.to_string(),
            addrs: tracker.good.iter().copied().collect(),
            failing: tracker.failing.clone(),
        });
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The outcome of one resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Addresses (with the source's port).
    Found(BTreeSet<SocketAddr>),
    /// The name does not exist, or has no address.
    Empty,
    /// No answer (timeout, refused, server failure).
    Failed(String),
}

/// Turns answers into changes of the replica set: the last good set, the
/// empty answers in a row, and whether resolving fails now (so that a
/// failure is logged once per change of state, not once per interval).
#[derive(Debug, Default)]
struct Tracker {
    good: BTreeSet<SocketAddr>,
    empty_in_a_row: u32,
    failing: Option<String>,
}

impl Tracker {
    /// Takes in one answer; returns the change of health, if any:
    /// `Some(error)` when resolving starts failing, `None` inside when it
    /// works again.
    fn observe(&mut self, answer: Answer) -> Option<Option<String>> {
        let failing = match &answer {
            Answer::Failed(e) => Some(e.clone()),
            _ => None,
        };
        let change = (failing.is_some() != self.failing.is_some()).then(|| failing.clone());
        self.failing = failing;
        match answer {
            Answer::Found(addrs) => {
                self.empty_in_a_row = 0;
                self.good = addrs;
            }
            // One empty answer may be a resolver's hiccup (a DNS server
            // restarting, an orchestrator between two updates of its
            // records); taken at once, it would drain every replica. Two in
            // a row, an interval apart, are an empty service.
            Answer::Empty => {
                self.empty_in_a_row += 1;
                if self.empty_in_a_row >= EMPTY_CONFIRMATIONS {
                    self.good.clear();
                }
            }
            // A failure says nothing of the replicas: keep the last set;
            // the empty answers before it are no longer "in a row".
            Answer::Failed(_) => self.empty_in_a_row = 0,
        }
        change
    }
}

/// A resolver of `config`: its nameserver (UDP, then TCP), or the system's.
/// The cache is off: every round asks again, whatever the answer's TTL
/// (Docker's DNS answers with 600 s, far longer than a task lives after it
/// leaves).
fn build_resolver(config: &DiscoverConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match config.nameserver {
        Some(addr) => {
            let on_port = |mut c: ConnectionConfig| {
                c.port = addr.port();
                c
            };
            let server = NameServerConfig::new(
                addr.ip(),
                true,
                vec![
                    on_port(ConnectionConfig::udp()),
                    on_port(ConnectionConfig::tcp()),
                ],
            );
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                provider,
            )
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = RESOLVE_TIMEOUT;
    options.attempts = RESOLVE_ATTEMPTS;
    builder.build().map_err(|e| e.to_string())
}

async fn resolve(resolver: &TokioResolver, source: &DnsSource) -> Answer {
    match resolver.lookup_ip(source.name.as_str()).await {
        Ok(lookup) => {
            let addrs: BTreeSet<_> = lookup
                .iter()
                .map(|ip| SocketAddr::new(ip, source.port))
                .collect();
            if addrs.is_empty() {
                Answer::Empty
            } else {
                Answer::Found(addrs)
            }
        }
        Err(e) if e.is_no_records_found() => Answer::Empty,
        Err(e) => Answer::Failed(format!("resolving {}: {e}", source.name)),
    }
}

/// Starts a replica (probed, a member once started, routed to once ready)
/// for each address of `addrs` that has none, and retires those whose
/// address left.
fn follow(supervisor: &Supervisor, addrs: &BTreeSet<SocketAddr>, source: &DnsSource) {
    // Its shutdown retires every replica; none starts after it.
    if supervisor.is_shutting_down() {
        return;
    }
    let live: Vec<_> = supervisor
        .replicas()
        .into_iter()
        .filter(|r| r.is_member() && !r.is_retiring() && !r.state().is_terminal())
        .collect();
    let mut added = Vec::new();
    for &addr in addrs {
        if live.iter().any(|r| r.addr() == addr) {
            continue;
        }
        let release = Release {
            generation: supervisor.desired().current.generation,
            version: Version::target(addr),
        };
        match supervisor.start_replica(&release) {
            Ok(replica) => {
                replica.set_member(true);
                added.push(addr.to_string());
            }
            Err(e) => tracing::error!(service = supervisor.name(), "replica for {addr}: {e}"),
        }
    }
    let mut removed = Vec::new();
    for replica in live.into_iter().filter(|r| !addrs.contains(&r.addr())) {
        removed.push(replica.addr().to_string());
        tokio::spawn(supervisor.retire(replica));
    }
    if added.is_empty() && removed.is_empty() {
        return;
    }
    let detail = format!(
        "{} address(es); new replicas for {}; retiring those for {}",
        addrs.len(),
        or_none(&added),
        or_none(&removed)
    );
    send(supervisor, source, "replicas", detail);
}

/// Logs and broadcasts that resolving started failing (`Some`) or works
/// again (`None`).
fn report_health(supervisor: &Supervisor, source: &DnsSource, failing: Option<String>) {
    let kept = supervisor.members().len();
    match failing {
        Some(e) => send(
            supervisor,
            source,
            "failing",
            format!("{e}; keeping the last {kept} replica(s)"),
        ),
        None => send(supervisor, source, "resolving", "answers again".into()),
    }
}

fn send(supervisor: &Supervisor, source: &DnsSource, state: &str, detail: String) {
    let event = Event::now(
        supervisor.name(),
        EventKind::Discovery {
            source: source.to_string(),
            state: state.to_string(),
            detail,
        },
    );
    if state == "failing" {
        tracing::warn!("{event}");
    } else {
        tracing::info!("{event}");
    }
    supervisor.events().send(event);
}

fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<SocketAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn sources_parse_or_say_how_to_write_them() {
        let s: DnsSource = "dns:tasks.app:8080".parse().unwrap();
        assert_eq!((s.name.as_str(), s.port), ("tasks.app", 8080));
        assert_eq!(s.to_string(), "dns:tasks.app:8080");
        for bad in [
            "tasks.app:8080",
            "dns:tasks.app",
            "dns::80",
            "dns:a:0",
            "dns:a b:1",
        ] {
            let e = bad.parse::<DnsSource>().unwrap_err().to_string();
            assert!(e.contains("write dns:NAME:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_config_takes_discover_or_a_version_not_both() {
        let config: crate::config::Config = toml::from_str(
            r#"
            [[service]]
            name = "app"
            discover.from = "dns:tasks.app:8080"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let discover = config.services[0].discover.as_ref().unwrap();
        assert_eq!(discover.interval, DEFAULT_DISCOVER_INTERVAL);
        let mut both = config.services[0].clone();
        both.version = Version::command(["./app"]);
        let e = both.validate().unwrap_err().to_string();
        assert!(e.contains("give one"), "{e}");
        let e = toml::from_str::<crate::config::Config>(
            "[[service]]\ndiscover.from = \"tasks.app:8080\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("write dns:NAME:PORT"), "{e}");
    }

    #[test]
    fn an_empty_answer_counts_only_when_confirmed() {
        let mut t = Tracker::default();
        let two = set(&["127.0.0.2:80", "127.0.0.3:80"]);
        t.observe(Answer::Found(two.clone()));
        t.observe(Answer::Empty);
        assert_eq!(t.good, two);
        t.observe(Answer::Found(two.clone()));
        t.observe(Answer::Empty);
        assert_eq!(t.good, two);
        t.observe(Answer::Empty);
        assert!(t.good.is_empty());
    }

    #[test]
    fn a_failure_keeps_the_set_and_is_reported_once_per_change() {
        let mut t = Tracker::default();
        let one = set(&["127.0.0.2:80"]);
        assert_eq!(t.observe(Answer::Found(one.clone())), None);
        let failed = || Answer::Failed("timed out".into());
        assert_eq!(t.observe(failed()), Some(Some("timed out".into())));
        assert_eq!(t.observe(failed()), None);
        assert_eq!(t.good, one);
        // Empty answers with a failure between them are not in a row.
        assert_eq!(t.observe(Answer::Empty), Some(None));
        t.observe(failed());
        t.observe(Answer::Empty);
        assert_eq!(t.good, one);
    }
}
