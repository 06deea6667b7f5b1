//! How a scenario's strategy maps onto the runtime's retirement settings.

use dropless_runtime::config::ServiceConfig;

use crate::scenario::{Service, Strategy};

/// Whether the runtime can run `strategy`.
pub(crate) fn supported(strategy: Strategy) -> bool {
    strategy == Strategy::Dropless
}

/// Applies `service.strategy` to the runtime service.
pub(crate) fn apply(_runtime: &mut ServiceConfig, service: &Service) {
    debug_assert!(supported(service.strategy));
}
