//! The trial's `dropless serve` child: started with its log in the output
//! directory, waited on until its replicas serve, stopped with SIGTERM and
//! if need be SIGKILL.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use dropless_runtime::{control::ControlClient, event::ReplicaState};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
    time::Instant,
};

use crate::run::{Env, TrialError, io};

/// Time the replicas have to be ready before the load starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time `dropless serve` has to stop after SIGTERM on top of its replicas'
/// grace period.
pub const SERVE_STOP_MARGIN: Duration = Duration::from_secs(15);

/// A started `dropless serve`: the process, and the address of its proxy
/// once it has printed it.
pub(crate) struct ServeChild {
    /// The process.
    pub child: Child,
    /// The proxy's address, from serve's `proxy on http://ADDR, …` line.
    address: Option<oneshot::Receiver<SocketAddr>>,
}

/// Starts `dropless serve --config config`, its output in `out/serve.log`.
/// The config listens on port 0: serve binds a free port itself and prints
/// it, so no port is picked here and released for serve to take.
pub(crate) fn start_serve(env: &Env, config: &Path, out: &Path) -> Result<ServeChild, TrialError> {
    let log_path = out.join("serve.log");
    let log = std::fs::File::create(&log_path)
        .map_err(io(format!("cannot create {}", log_path.display())))?;
    let err = log.try_clone().map_err(io("cannot share the serve log"))?;
    let mut child = Command::new(&env.dropless)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("DROPLESS_CONTROL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("cannot start {} serve", env.dropless.display())))?;
    let (tx, rx) = oneshot::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    tokio::spawn(copy_stdout(stdout, tokio::fs::File::from_std(log), tx));
    Ok(ServeChild {
        child,
        address: Some(rx),
    })
}

/// Copies serve's stdout into its log, line by line, and sends the proxy's
/// address from the first `proxy on http://ADDR, …` line.
async fn copy_stdout(
    stdout: tokio::process::ChildStdout,
    mut log: tokio::fs::File,
    tx: oneshot::Sender<SocketAddr>,
) {
    let mut tx = Some(tx);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addr) = proxy_address(&line)
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(addr);
        }
        if log.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = log.flush().await;
}

/// The address in serve's `proxy on http://ADDR, control socket PATH`.
fn proxy_address(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("proxy on http://")?;
    rest.split(',').next()?.parse().ok()
}

/// Waits until serve has printed its address and `replicas` replicas are
/// ready; returns the proxy's address, or says why not.
pub(crate) async fn wait_ready(
    control: &ControlClient,
    serve: &mut ServeChild,
    replicas: usize,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let Some(address) = serve.address.take() else {
        return Err("already waited on".into());
    };
    let address = tokio::select! {
        address = tokio::time::timeout_at(deadline, address) => match address {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => {
                let status = serve.child.wait().await;
                return Err(format!("exited ({}) before it printed its address", describe(status)));
            }
            Err(_) => return Err(format!("did not print its address within {READY_TIMEOUT:?}")),
        },
        status = serve.child.wait() => {
            return Err(format!("exited ({}) before it printed its address", describe(status)));
        }
    };
    let serve = &mut serve.child;
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
                    return Ok(address);
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
    serve: &mut ServeChild,
    patience: Duration,
) {
    let current = control.runtime().await.ok().map(|r| r.pid);
    let Some(pid) = current.filter(|pid| Some(*pid) != serve.child.id()) else {
        return stop_serve(serve, patience).await;
    };
    // The first `serve` handed over and exited; the current one is no
    // child of ours: signal it and watch its /proc entry.
    let _ = serve.child.wait().await;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    // Gone, or a zombie its new parent has not reaped yet.
    let running = move || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    };
    let gone = async {
        while running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(patience, gone).await.is_err() {
        tracing::warn!("dropless serve (pid {pid}) did not stop within {patience:?}: killing it");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// An exit status, or why it could not be had.
fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => error.to_string(),
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `patience`.
pub(crate) async fn stop_serve(serve: &mut ServeChild, patience: Duration) {
    let serve = &mut serve.child;
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

#[cfg(test)]
mod tests {
    use super::proxy_address;

    #[test]
    fn the_proxy_address_is_read_from_serves_first_line() {
        assert_eq!(
            proxy_address("proxy on http://127.0.0.1:43121, control socket /tmp/x/control.sock"),
            Some(([127, 0, 0, 1], 43121).into())
        );
        assert_eq!(
            proxy_address("control API also on http://127.0.0.1:9"),
            None
        );
        assert_eq!(proxy_address("proxy on http://nonsense, control"), None);
    }
}
