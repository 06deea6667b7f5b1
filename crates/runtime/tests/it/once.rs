//! At most once, with real replica processes: POSTs carrying request ids
//! through the proxy while a replica is SIGKILLed or the service is
//! restarted, each execution appended to a log by the replica on receipt.
//! A POST is executed at most once, and exactly once when its client got a
//! 200; a rolling restart executes every one exactly once and fails none.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dropless_runtime::config::ServiceConfig;
use dropless_runtime::rollout::{Plan, RolloutRequest};
use dropless_runtime::signal::Shutdown;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::fixtures::{self, Harness, Mode, WAIT};

/// What the clients got, by request id.
type Outcomes = Vec<(String, u16)>;

/// `workers` keep-alive clients, each sending `per_worker` POST /exec one
/// after the other (so the load is bounded by the replica's work time);
/// `done` counts finished requests as they finish. A client whose
/// connection fails opens a new one.
async fn post_load(
    addr: SocketAddr,
    workers: usize,
    per_worker: usize,
    done: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
) -> Outcomes {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (done, stop) = (Arc::clone(&done), stop.clone());
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            let mut sender = None;
            for i in 0..per_worker {
                if *stop.borrow() {
                    break;
                }
                let id = format!("{w}-{i}");
                if sender.is_none() {
                    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let req = http::Request::post("/exec")
                    .header("host", "app.test")
                    .header("x-request-id", &id)
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap();
                let s = sender.as_mut().unwrap();
                let status = match s.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        status
                    }
                    Err(_) => {
                        sender = None;
                        0
                    }
                };
                if status == 0 || sender.as_ref().is_some_and(|s| s.is_closed()) {
                    sender = None;
                }
                outcomes.push((id, status));
                done.fetch_add(1, Ordering::Relaxed);
            }
            outcomes
        });
    }
    let mut all = Vec::new();
    while let Some(outcomes) = tasks.join_next().await {
        all.extend(outcomes.expect("client task"));
    }
    all
}

/// How many times each id was executed, from the replicas' log.
fn executions(log: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts = HashMap::new();
    for id in text.lines() {
        *counts.entry(id.to_string()).or_default() += 1;
    }
    counts
}

fn exec_service(log: &Path, work_ms: u64, replicas: usize) -> ServiceConfig {
    let version = fixtures::backend(Mode::Graceful, "v1")
        .with_env("EXEC_LOG", log.to_string_lossy())
        .with_env("WORK_MS", work_ms.to_string());
    fixtures::service("web", version, replicas)
}

async fn wait_done(done: &AtomicUsize, n: usize) {
    tokio::time::timeout(WAIT, async {
        while done.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the clients make progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_through_a_sigkilled_replica_are_executed_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exec.log");
    let config = fixtures::config(dir.path(), vec![exec_service(&log, 100, 2)]);
    let h = Harness::start(config).await;
    h.wait_routable(2).await;
    let done = Arc::new(AtomicUsize::new(0));
    let (_stop, stopped) = watch::channel(false);
    let load = tokio::spawn(post_load(h.addr, 8, 12, Arc::clone(&done), stopped));
    wait_done(&done, 16).await;
    let web = h.router.service(None).unwrap();
    let victim = web.replicas()[0].process().expect("a process").pid();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the replica");
    let outcomes = tokio::time::timeout(WAIT * 2, load)
        .await
        .expect("the load ends")
        .expect("load task");
    let executed = executions(&log);
    let twice: Vec<_> = executed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTs executed more than once: {twice:?}");
    for (id, status) in &outcomes {
        match status {
            200 => assert_eq!(executed.get(id), Some(&1), "{id} got 200"),
            502 => {}
            other => panic!("{id}: status {other} (a POST that may have run is a 502)"),
        }
    }
    assert_eq!(outcomes.len(), 8 * 12);
    h.stop(Shutdown::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_post_load_executes_every_post_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exec.log");
    let config = fixtures::config(dir.path(), vec![exec_service(&log, 10, 2)]);
    let h = Harness::start(config).await;
    h.wait_routable(2).await;
    let done = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    let load = tokio::spawn(post_load(h.addr, 4, 100_000, Arc::clone(&done), stopped));
    wait_done(&done, 40).await;
    let restart = RolloutRequest::Restart {
        plan: Plan::default(),
    };
    let report = h.client().rollout(None, restart).await.expect("restart");
    assert_eq!(report.started.len(), 2, "{report:?}");
    let after = done.load(Ordering::Relaxed);
    wait_done(&done, after + 40).await;
    stop.send_replace(true);
    let outcomes = tokio::time::timeout(WAIT, load)
        .await
        .expect("the load ends")
        .expect("load task");
    let failed: Vec<_> = outcomes.iter().filter(|(_, s)| *s != 200).collect();
    assert!(failed.is_empty(), "failed POSTs: {failed:?}");
    let executed = executions(&log);
    for (id, _) in &outcomes {
        assert_eq!(executed.get(id), Some(&1), "{id} executed exactly once");
    }
    assert_eq!(
        executed.len(),
        outcomes.len(),
        "nothing executed that no client sent"
    );
    h.stop(Shutdown::Fast).await;
}
