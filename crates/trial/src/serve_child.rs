//! The trial's `dropless serve` child: started with its log in the output
//! directory, waited on until its replicas serve, stopped with SIGTERM and
//! if need be SIGKILL.

use std::{path::Path, process::Stdio, time::Duration};

use dropless_runtime::{control::ControlClient, event::ReplicaState};
use tokio::{
    process::{Child, Command},
    time::Instant,
};

use crate::run::{Env, TrialError, io};

/// Time the replicas have to be ready before the load starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time `dropless serve` has to stop after SIGTERM on top of its replicas'
/// grace period.
pub const SERVE_STOP_MARGIN: Duration = Duration::from_secs(15);

/// Starts `dropless serve --config config`, its output in `out/serve.log`.
pub(crate) fn start_serve(env: &Env, config: &Path, out: &Path) -> Result<Child, TrialError> {
    let log_path = out.join("serve.log");
    let log = std::fs::File::create(&log_path)
        .map_err(io(format!("cannot create {}", log_path.display())))?;
    let err = log.try_clone().map_err(io("cannot share the serve log"))?;
    Command::new(&env.dropless)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("DROPLESS_CONTROL")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("cannot start {} serve", env.dropless.display())))
}

/// Waits until `replicas` replicas are ready, or says why not.
pub(crate) async fn wait_ready(
    control: &ControlClient,
    serve: &mut Child,
    replicas: usize,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("the control socket never answered");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = serve.try_wait() {
            return Err(format!(
                "exited with {status} before its replicas were ready"
            ));
        }
        match control.status().await {
            Ok(services) => {
                let ready: Vec<_> = services
                    .iter()
                    .flat_map(|s| &s.replicas)
                    .filter(|r| r.state == ReplicaState::Ready)
                    .collect();
                // Ready is not always listening (the Kubernetes emulation of
                // a replica without a readiness probe): the first release
                // must really serve before the load starts, so that only
                // the events are measured.
                let mut listening = 0;
                for replica in &ready {
                    if tokio::net::TcpStream::connect(replica.addr).await.is_ok() {
                        listening += 1;
                    }
                }
                if listening >= replicas {
                    return Ok(());
                }
                last = format!(
                    "{} of {replicas} replica(s) ready, {listening} listening",
                    ready.len()
                );
            }
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not ready after {READY_TIMEOUT:?}: {last}"))
}

/// [`stop_serve`] for a runtime that may have been upgraded (an `upgrade`
/// event): the `serve` answering at `control` is stopped, whether it is
/// `serve` or the process that took over from it.
pub(crate) async fn stop_current_serve(
    control: &dropless_runtime::control::ControlClient,
    serve: &mut Child,
    patience: Duration,
) {
    let current = control.runtime().await.ok().map(|r| r.pid);
    let Some(pid) = current.filter(|pid| Some(*pid) != serve.id()) else {
        return stop_serve(serve, patience).await;
    };
    // The first `serve` handed over and exited; the current one is no
    // child of ours: signal it and watch its /proc entry.
    let _ = serve.wait().await;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let gone = async {
        while nix::sys::signal::kill(pid, None).is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(patience, gone).await.is_err() {
        tracing::warn!("dropless serve (pid {pid}) did not stop within {patience:?}: killing it");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `patience`.
pub(crate) async fn stop_serve(serve: &mut Child, patience: Duration) {
    if let Some(pid) = serve.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(patience, serve.wait()).await.is_err() {
        tracing::warn!("dropless serve did not stop within {patience:?}: killing it");
        let _ = serve.kill().await;
    }
}
