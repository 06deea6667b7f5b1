//! Reload: the config file read again while `serve` runs (SIGHUP,
//! `dropless reload`, `POST /v1/reload`), and what of it can change without
//! a restart applied: the proxy's per-request settings, each service's
//! probe, retire, rollout and restart settings, `max_replicas` and `hosts`,
//! services added (started) or removed (drained and retired in the safe
//! order). Settings fixed at start are reported, one line each, and kept.
//! A service's version and replica count are not changed: that is a
//! deploy or a scale. A file that does not parse or validate changes
//! nothing.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use crate::config::{Config, ProxyConfig, ServiceConfig};
use crate::desired::{Desired, Release};
use crate::proxy::LiveConfig;
use crate::proxy::route::Router;
use crate::supervisor::{Supervisor, SupervisorOptions};

/// Reads the config again: `Ok(None)` when `serve` was started without a
/// config file, `Err` with the reason when the file is not a valid config.
pub type ConfigSource = Arc<dyn Fn() -> Result<Option<Config>, String> + Send + Sync>;

/// The proxy settings a reload applies; read per request.
pub const RELOADABLE_PROXY: &[&str] = &[
    "queue_timeout",
    "response_timeout",
    "max_attempts",
    "retry_body_limit",
    "body_read_timeout",
    "send_timeout",
    "retry_idempotency_key",
    "max_streamed_uploads",
];

/// Settings outside `[proxy]` and `[[service]]` are all fixed at start
/// (`control`, `control_tcp`, the control limits, `state_dir`, `logs`).
const SECTIONS_RELOADED: &[&str] = &["proxy", "service"];

/// What a reload did, one line per change or per setting left as it was.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Lines such as `proxy: queue_timeout applied` or `listen cannot
    /// change without a restart: still 127.0.0.1:8080`.
    pub lines: Vec<String>,
}

/// A reload that changed nothing.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReloadError {
    /// The file does not parse or validate, or asks for what cannot be.
    #[error("reload refused, nothing changed: {0}")]
    Invalid(String),
    /// `serve` is stopping.
    #[error("reload refused: serve is stopping")]
    Stopping,
}

/// Applies reloads to a running runtime. Cheap to clone; reloads run one at
/// a time.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    source: Mutex<Option<ConfigSource>>,
    /// The config applied last; `None` once the runtime stops.
    applied: tokio::sync::Mutex<Option<Config>>,
    router: Router,
    proxy: LiveConfig,
    options: SupervisorOptions,
    /// Retirements of removed services, awaited at shutdown.
    removals: TaskTracker,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader of the runtime started with `config`, routing with
    /// `router`, its proxy reading `proxy`; new services get `options`.
    pub(crate) fn new(
        config: Config,
        router: Router,
        proxy: LiveConfig,
        options: SupervisorOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source: Mutex::new(None),
                applied: tokio::sync::Mutex::new(Some(config)),
                router,
                proxy,
                options,
                removals: TaskTracker::new(),
            }),
        }
    }

    /// Where reloads read the config from; without one, a reload reads
    /// nothing and says so.
    pub fn set_source(&self, source: ConfigSource) {
        *self.inner.source.lock().expect("source lock") = Some(source);
    }

    /// Reloads on every signal `hangups` receives (SIGHUP), logging what
    /// each reload did; runs until the process ends.
    pub async fn on_signals(self, mut hangups: tokio::signal::unix::Signal) {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            if let Err(e) = self.reload().await {
                tracing::error!("{e}");
            }
        }
    }

    /// Reads the config again and applies what can change without a
    /// restart; each line of the report is logged too.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut applied = self.inner.applied.lock().await;
        let Some(old) = applied.as_ref() else {
            return Err(ReloadError::Stopping);
        };
        let source = self.inner.source.lock().expect("source lock").clone();
        let read = match source {
            Some(source) => source().map_err(ReloadError::Invalid)?,
            None => None,
        };
        let Some(new) = read else {
            let line = "serve was started without --config: there is no file to re-read";
            tracing::info!("reload: {line}");
            return Ok(ReloadReport {
                lines: vec![line.into()],
            });
        };
        new.validate()
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let mut lines = fixed_at_start(old, &new);
        let router = &self.inner.router;
        let running = router.services();
        for s in &new.services {
            if let Some(sup) = running.iter().find(|r| r.name() == s.name) {
                if sup.config().discover.is_some() != s.discover.is_some() {
                    return Err(ReloadError::Invalid(format!(
                        "service {:?} would switch between discover and version: restart serve for that (or add it under another name)",
                        s.name
                    )));
                }
                let replicas = sup.desired().replicas;
                if replicas > s.max_replicas {
                    return Err(ReloadError::Invalid(format!(
                        "service {:?} runs {replicas} replicas, above the file's max_replicas {}: raise max_replicas or scale down first",
                        s.name, s.max_replicas
                    )));
                }
            }
        }
        // Added services start first: one that cannot start refuses the
        // whole reload before anything else changed.
        let mut added = Vec::new();
        for s in &new.services {
            if running.iter().any(|r| r.name() == s.name) {
                continue;
            }
            match self.start_service(s).await {
                Ok(sup) => added.push(sup),
                Err(e) => {
                    for sup in &added {
                        sup.shutdown(true).await;
                    }
                    return Err(ReloadError::Invalid(e));
                }
            }
        }
        let changed = self.apply_proxy(&new.proxy);
        if !changed.is_empty() {
            lines.push(format!("proxy: {} applied", changed.join(", ")));
        }
        let mut next = Vec::new();
        for s in &new.services {
            if let Some(sup) = added.iter().find(|a| a.name() == s.name) {
                lines.push(match &s.discover {
                    Some(d) => format!("service {} added: replicas from {}", s.name, d.from),
                    None => format!(
                        "service {} added: {} replica(s) starting",
                        s.name, s.replicas
                    ),
                });
                next.push(sup.clone());
                continue;
            }
            let sup = running
                .iter()
                .find(|r| r.name() == s.name)
                .expect("a service not added runs");
            lines.extend(apply_service(sup, s));
            next.push(sup.clone());
        }
        let removed: Vec<_> = running
            .into_iter()
            .filter(|r| !new.services.iter().any(|s| s.name == r.name()))
            .collect();
        // Routing changes before a removed service drains: it gets no new
        // request, and those it has finish.
        router.replace(next);
        for sup in removed {
            lines.push(format!(
                "service {} removed: its replicas drain and stop",
                sup.name()
            ));
            self.inner
                .removals
                .spawn(async move { sup.shutdown(false).await });
        }
        if lines.is_empty() {
            lines.push("nothing changed".into());
        }
        for line in &lines {
            tracing::info!("reload: {line}");
        }
        *applied = Some(new);
        Ok(ReloadReport { lines })
    }

    /// Refuses reloads from now on and waits for the removed services'
    /// retirements; the runtime calls it when it stops.
    pub(crate) async fn stop(&self) {
        self.inner.applied.lock().await.take();
        self.inner.removals.close();
        self.inner.removals.wait().await;
    }

    async fn start_service(&self, s: &ServiceConfig) -> Result<Supervisor, String> {
        let desired = Desired {
            current: Release {
                generation: 1,
                version: s.version.clone(),
            },
            previous: None,
            replicas: if s.discover.is_some() { 0 } else { s.replicas },
        };
        // Its own log run: a service removed and added again never writes
        // to the files of its replicas still draining.
        let mut options = self.inner.options.clone();
        options.log_run = crate::supervisor::logs::run_id();
        let sup = Supervisor::new(s.clone(), desired.clone(), options);
        // A discovered service's desired state is not persisted (see serve).
        if s.discover.is_none() {
            sup.commit_desired(desired)
                .await
                .map_err(|e| format!("service {:?}: {e}", s.name))?;
        }
        if let Err(e) = sup.start() {
            sup.shutdown(true).await;
            return Err(format!("service {:?}: {e}", s.name));
        }
        Ok(sup)
    }

    /// Swaps in the reloadable settings of `new`; returns their names.
    fn apply_proxy(&self, new: &ProxyConfig) -> Vec<&'static str> {
        let mut next = (**self.inner.proxy.load()).clone();
        let before = next.clone();
        next.queue_timeout = new.queue_timeout;
        next.response_timeout = new.response_timeout;
        next.max_attempts = new.max_attempts;
        next.retry_body_limit = new.retry_body_limit;
        next.body_read_timeout = new.body_read_timeout;
        next.retry_idempotency_key = new.retry_idempotency_key;
        next.max_streamed_uploads = new.max_streamed_uploads;
        let changed = differing(&before, &next, |_| true);
        if !changed.is_empty() {
            self.inner.proxy.store(Arc::new(next));
        }
        RELOADABLE_PROXY
            .iter()
            .copied()
            .filter(|k| changed.iter().any(|(c, ..)| c == k))
            .collect()
    }
}

/// Applies the reloadable settings of `new` to the running service `sup`;
/// the lines say what changed and what reload leaves to deploy and scale.
fn apply_service(sup: &Supervisor, new: &ServiceConfig) -> Vec<String> {
    let old = sup.config();
    let name = sup.name();
    let mut lines = Vec::new();
    let parts = [
        ("hosts", old.hosts != new.hosts),
        ("discover", old.discover != new.discover),
        ("max_replicas", old.max_replicas != new.max_replicas),
        ("probe", old.probe != new.probe),
        ("retire", old.retire != new.retire),
        ("rollout", old.rollout != new.rollout),
        ("restart", old.restart != new.restart),
    ];
    let changed: Vec<_> = parts.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect();
    if !changed.is_empty() {
        sup.update_config(new.clone());
        lines.push(format!("service {name}: {} applied", changed.join(", ")));
    }
    if old.affinity != new.affinity || old.stash != new.stash {
        let was = old.affinity.as_ref().map_or("none", |a| a.key.as_str());
        lines.push(format!(
            "service {name}: affinity and stash cannot change without a restart: still affinity {was}, stash {}",
            old.stash || old.affinity.is_some()
        ));
    }
    let desired = sup.desired();
    if new.discover.is_some() {
        return lines;
    }
    if desired.current.version != new.version {
        lines.push(format!(
            "service {name}: the file's version (command/env) differs from the one running; reload does not deploy it: run `dropless deploy`"
        ));
    }
    if desired.replicas != new.replicas {
        lines.push(format!(
            "service {name}: replicas {} in the file, {} running; reload does not scale: run `dropless scale {}`",
            new.replicas, desired.replicas, new.replicas
        ));
    }
    lines
}

/// One line per setting fixed at start whose value in `new` differs.
fn fixed_at_start(old: &Config, new: &Config) -> Vec<String> {
    let mut lines: Vec<String> = differing(old, new, |k| !SECTIONS_RELOADED.contains(&k))
        .into_iter()
        .map(|(k, was, _)| format!("{k} cannot change without a restart: still {was}"))
        .collect();
    lines.extend(
        differing(&old.proxy, &new.proxy, |k| !RELOADABLE_PROXY.contains(&k))
            .into_iter()
            .map(|(k, was, _)| format!("{k} cannot change without a restart: still {was}")),
    );
    lines
}

/// The top-level fields of `old` and `new` (as written in TOML) that
/// differ and that `select` keeps: name, old value, new value.
fn differing<T: Serialize>(
    old: &T,
    new: &T,
    select: impl Fn(&str) -> bool,
) -> Vec<(String, String, String)> {
    let table = |v: &T| match toml::Value::try_from(v) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::map::Map::new(),
    };
    let (old, new) = (table(old), table(new));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&toml::Value>| match v {
        None => "none".to_string(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    keys.into_iter()
        .filter(|k| select(k) && old.get(*k) != new.get(*k))
        .map(|k| (k.clone(), show(old.get(k)), show(new.get(k))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_fixed_at_start_are_named_with_the_value_kept() {
        let old = Config::default();
        let mut new = Config::default();
        new.proxy.listen = "127.0.0.1:9999".parse().unwrap();
        new.proxy.threads = 3;
        new.proxy.queue_timeout = std::time::Duration::from_millis(5);
        new.state_dir = "elsewhere".into();
        let lines = fixed_at_start(&old, &new);
        assert_eq!(
            lines,
            [
                "state_dir cannot change without a restart: still .dropless",
                "listen cannot change without a restart: still 127.0.0.1:8080",
                "threads cannot change without a restart: still 0",
            ]
        );
    }

    #[test]
    fn every_reloadable_proxy_setting_is_a_proxy_field() {
        let fields = toml::Value::try_from(ProxyConfig::default()).unwrap();
        for k in RELOADABLE_PROXY {
            assert!(fields.get(k).is_some(), "{k}");
        }
    }
}
