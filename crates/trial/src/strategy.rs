//! How a scenario's strategy maps onto the runtime's settings.

use dropless_runtime::config::Config;

use crate::scenario::{DEFAULT_ENDPOINT_LAG, DEFAULT_K8S_PRE_STOP, Service, Strategy};

/// Applies `service.strategy` to the runtime configuration of a trial (one
/// service).
///
/// - `dropless`: the runtime's own retirement (stop routing, drain, then
///   SIGTERM) and safe retries.
/// - `kubernetes`: routing stops only `endpoint_lag` after the retirement
///   starts while SIGTERM is sent at once (the runtime's
///   `kubernetes_endpoint_delay`), and the proxy never retries, as a
///   cluster's Service does not.
/// - `kubernetes-prestop`: the same with a pre-stop delay longer than the
///   lag before SIGTERM, as a `preStop` sleep gives.
///
/// Under both Kubernetes strategies a service without a readiness endpoint
/// (the demo's v1, or `health_path = ""`) is ready as soon as its process
/// has started, as a pod without a readiness probe is.
pub(crate) fn apply(config: &mut Config, service: &Service) {
    if service.strategy == Strategy::Dropless {
        return;
    }
    config.proxy.max_attempts = 1;
    let lag = service.endpoint_lag.unwrap_or(DEFAULT_ENDPOINT_LAG);
    // A pod without a readiness probe is ready once its container started.
    let no_readiness = service.without_readiness();
    for runtime in &mut config.services {
        runtime.probe.ready_on_start = no_readiness;
        runtime.retire.kubernetes_endpoint_delay = Some(lag);
        runtime.retire.pre_stop = match (service.strategy, service.pre_stop) {
            (_, Some(pre_stop)) => pre_stop,
            (Strategy::KubernetesPrestop, None) => DEFAULT_K8S_PRE_STOP.max(lag * 2),
            _ => std::time::Duration::ZERO,
        };
    }
}
