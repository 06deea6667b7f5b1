//! The configuration of the trial's private `dropless serve`: one service,
//! its releases (the demo with its flags, or a command), the strategy.

use std::path::Path;

use dropless_runtime::config::{Config as RuntimeConfig, ServiceConfig, Version};

use crate::{run::Env, scenario::Scenario};

/// The runtime configuration of a trial: one service, the proxy on
/// 127.0.0.1 port 0 (serve prints the port it bound).
pub(crate) fn runtime_config(
    scenario: &Scenario,
    release: &Release,
    state: &Path,
) -> RuntimeConfig {
    let mut config = RuntimeConfig::default();
    config.proxy.listen = ([127, 0, 0, 1], 0).into();
    config.state_dir = state.to_path_buf();
    config.control = Some(state.join("control.sock"));
    let service = &scenario.service;
    let mut runtime_service = ServiceConfig {
        name: "trial".into(),
        replicas: service.replicas,
        version: release.version(&service.version, service.demo.as_deref(), &service.command),
        ..ServiceConfig::default()
    };
    runtime_service.probe.path = match &service.health_path {
        Some(path) => path.clone(),
        None if service.without_readiness() => String::new(),
        None => runtime_service.probe.path.clone(),
    };
    if let Some(grace) = service.grace {
        runtime_service.retire.grace = grace;
    }
    if let Some(pre_stop) = service.pre_stop {
        runtime_service.retire.pre_stop = pre_stop;
    }
    runtime_service.affinity = service
        .affinity
        .as_ref()
        .map(dropless_runtime::config::AffinityConfig::new);
    config.services = vec![runtime_service];
    crate::strategy::apply(&mut config, service);
    config
}

/// What a new release of the service is made of.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub(crate) scenario: Scenario,
    pub(crate) env: Env,
    /// The demo's calculation-log flags.
    pub(crate) sink_flags: Vec<String>,
}

impl Release {
    /// The runtime version of a release: the demo with its flags, or the
    /// command; `VERSION` in the environment either way.
    pub(crate) fn version(
        &self,
        label: &str,
        profile: Option<&str>,
        command: &[String],
    ) -> Version {
        let service = &self.scenario.service;
        let version = match profile {
            Some(profile) => {
                let mut argv = self.env.demo.clone();
                // The demo's shutdown budget is the time the runtime gives
                // it between SIGTERM and SIGKILL: it gives up on its last
                // writes (and says so) before it would be killed.
                let grace = service.grace.unwrap_or(crate::scenario::DEFAULT_GRACE);
                argv.extend([
                    "--profile".into(),
                    profile.to_ascii_lowercase(),
                    "--version-label".into(),
                    label.to_owned(),
                    "--work-ms".into(),
                    service.work_ms.to_string(),
                    "--grace".into(),
                    humantime::format_duration(grace).to_string(),
                ]);
                if let Some(delay) = service.startup_delay {
                    argv.extend([
                        "--startup-delay".into(),
                        humantime::format_duration(delay).to_string(),
                    ]);
                }
                argv.extend(service.demo_args.iter().cloned());
                argv.extend(self.sink_flags.iter().cloned());
                let version = Version::command(argv);
                // The demo takes its socket from the runtime, so no other
                // process can take its port first, whenever readiness is
                // probed over HTTP. Without a readiness probe (a v1 pod in
                // the emulation) the kernel would queue requests on the
                // passed socket before the demo serves, where a cluster
                // refuses them: it binds `PORT` itself then.
                if service.without_readiness() {
                    version
                } else {
                    version.with_socket_activation()
                }
            }
            None => {
                let mut version = Version::command(command.iter().cloned());
                version.env = service.env.clone();
                version
            }
        };
        version.with_env("VERSION", label)
    }
}
