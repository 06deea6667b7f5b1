//! Routing of a request to a service by its Host header.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::supervisor::Supervisor;

/// Maps Host header values to services; a service without hosts takes the
/// rest. Cheap to clone: clones share one table, which a reload replaces
/// ([`Router::replace`]) while each request reads the table of its moment
/// without a lock.
#[derive(Debug, Clone, Default)]
pub struct Router {
    table: Arc<ArcSwap<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    by_host: HashMap<String, Supervisor>,
    default: Option<Supervisor>,
    services: Vec<Supervisor>,
}

impl Router {
    /// A router over `services`, using each one's configured hosts.
    pub fn new(services: Vec<Supervisor>) -> Self {
        let router = Self::default();
        router.replace(services);
        router
    }

    /// Routes to `services` from now on, by their hosts as configured now;
    /// every clone of this router sees the change.
    pub fn replace(&self, services: Vec<Supervisor>) {
        let mut table = Table::default();
        for s in &services {
            let config = s.config();
            if config.hosts.is_empty() {
                table.default = Some(s.clone());
            }
            for h in &config.hosts {
                table.by_host.insert(h.to_ascii_lowercase(), s.clone());
            }
        }
        table.services = services;
        self.table.store(Arc::new(table));
    }

    /// The service for `host` (port ignored), or the default service.
    pub fn route(&self, host: Option<&str>) -> Option<Supervisor> {
        let table = self.table.load();
        if table.by_host.is_empty() {
            return table.default.clone();
        }
        let host = host.map(strip_port).map(str::to_ascii_lowercase);
        host.and_then(|h| table.by_host.get(&h))
            .or(table.default.as_ref())
            .cloned()
    }

    /// The service named `name`, or the only one when `name` is `None`.
    pub fn service(&self, name: Option<&str>) -> Option<Supervisor> {
        let table = self.table.load();
        match name {
            Some(n) => table.services.iter().find(|s| s.name() == n).cloned(),
            None if table.services.len() == 1 => table.services.first().cloned(),
            None => None,
        }
    }

    /// All services now.
    pub fn services(&self) -> Vec<Supervisor> {
        self.table.load().services.clone()
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}
