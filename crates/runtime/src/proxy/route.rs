//! Routing of a request to a service by its Host header.

use std::collections::HashMap;

use crate::supervisor::Supervisor;

/// Maps Host header values to services; a service without hosts takes the
/// rest.
#[derive(Debug, Clone, Default)]
pub struct Router {
    by_host: HashMap<String, Supervisor>,
    default: Option<Supervisor>,
    services: Vec<Supervisor>,
}

impl Router {
    /// A router over `services`, using each one's configured hosts.
    pub fn new(services: Vec<Supervisor>) -> Self {
        let mut router = Self::default();
        for s in &services {
            if s.config().hosts.is_empty() {
                router.default = Some(s.clone());
            }
            for h in &s.config().hosts {
                router.by_host.insert(h.to_ascii_lowercase(), s.clone());
            }
        }
        router.services = services;
        router
    }

    /// The service for `host` (port ignored), or the default service.
    pub fn route(&self, host: Option<&str>) -> Option<&Supervisor> {
        if self.by_host.is_empty() {
            return self.default.as_ref();
        }
        let host = host.map(strip_port).map(str::to_ascii_lowercase);
        host.and_then(|h| self.by_host.get(&h))
            .or(self.default.as_ref())
    }

    /// The service named `name`, or the only one when `name` is `None`.
    pub fn service(&self, name: Option<&str>) -> Option<&Supervisor> {
        match name {
            Some(n) => self.services.iter().find(|s| s.name() == n),
            None if self.services.len() == 1 => self.services.first(),
            None => None,
        }
    }

    /// All services.
    pub fn services(&self) -> &[Supervisor] {
        &self.services
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}
