//! Tracked tasks, batch writers, hooks and the grace period.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dropless_lifecycle::{BatchConfig, Batcher, Config, Error, Lifecycle, signal::Signal};

use crate::fixtures::TestServer;

#[tokio::test]
async fn tracked_tasks_finish_before_serve_returns() {
    let mut server = TestServer::start(Config::default()).await;
    let written = Arc::new(AtomicBool::new(false));
    server.lifecycle.spawn("log-write", {
        let written = Arc::clone(&written);
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            written.store(true, Ordering::SeqCst);
        }
    });
    server.shutdown(Signal::Terminate);
    server.finished().await.unwrap();
    assert!(
        written.load(Ordering::SeqCst),
        "serve returned before the task ended"
    );
}

#[tokio::test]
async fn batcher_flushes_full_batches_and_the_rest_at_shutdown() {
    let lifecycle = Lifecycle::new(Config::default());
    let flushed: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let batcher = Batcher::new(
        &lifecycle,
        "calc-log",
        BatchConfig {
            max_items: 100,
            interval: Duration::from_secs(3600),
            flush_on_shutdown: true,
        },
        {
            let flushed = Arc::clone(&flushed);
            move |batch: Vec<u32>| {
                let flushed = Arc::clone(&flushed);
                async move { flushed.lock().unwrap().push(batch) }
            }
        },
    );
    let mut server = TestServer::start_with(lifecycle, true).await;
    for item in 0..250 {
        batcher.push(item);
    }
    server.shutdown(Signal::Terminate);
    server.finished().await.unwrap();

    let flushed = flushed.lock().unwrap();
    let sizes: Vec<usize> = flushed.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![100, 100, 50]);
    let all: Vec<u32> = flushed.iter().flatten().copied().collect();
    assert_eq!(
        all,
        (0..250).collect::<Vec<_>>(),
        "every item once, in order"
    );
}

#[tokio::test]
async fn batcher_flushes_on_its_interval() {
    let lifecycle = Lifecycle::new(Config::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let batcher = Batcher::new(
        &lifecycle,
        "tick",
        BatchConfig {
            max_items: 1000,
            interval: Duration::from_millis(100),
            flush_on_shutdown: true,
        },
        move |batch: Vec<u8>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(batch);
            }
        },
    );
    batcher.push(1);
    batcher.push(2);
    let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        batch,
        vec![1, 2],
        "a partial batch is flushed on the interval, before any shutdown"
    );
}

#[tokio::test]
async fn hooks_run_in_reverse_order_after_tasks() {
    let mut server = TestServer::start(Config::default()).await;
    let order: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    for name in ["first", "second", "third"] {
        let order = Arc::clone(&order);
        server.lifecycle.on_shutdown(
            name,
            move || async move { order.lock().unwrap().push(name) },
        );
    }
    server.lifecycle.spawn("task", {
        let order = Arc::clone(&order);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            order.lock().unwrap().push("task");
        }
    });
    server.shutdown(Signal::Terminate);
    server.finished().await.unwrap();
    assert_eq!(
        *order.lock().unwrap(),
        vec!["task", "third", "second", "first"]
    );
}

#[tokio::test]
async fn task_outliving_the_grace_period_makes_serve_fail_naming_it() {
    let mut server = TestServer::start(Config {
        grace: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    server
        .lifecycle
        .spawn("stuck-writer", std::future::pending::<()>());
    server.lifecycle.spawn("quick", async {});
    server.shutdown(Signal::Terminate);
    let error = server.finished().await.expect_err("serve must fail");
    let Error::GraceExceeded { grace, unfinished } = &error else {
        panic!("unexpected error {error}");
    };
    assert_eq!(*grace, Duration::from_millis(300));
    assert_eq!(unfinished.tasks, vec![("stuck-writer".to_owned(), 1)]);
    assert!(error.to_string().contains("stuck-writer"), "{error}");
}

#[tokio::test]
async fn batcher_without_flush_on_shutdown_loses_the_rest() {
    let lifecycle = Lifecycle::new(Config::default());
    let flushed: Arc<Mutex<Vec<u8>>> = Arc::default();
    let batcher = Batcher::new(
        &lifecycle,
        "lossy",
        BatchConfig {
            max_items: 3,
            interval: Duration::from_secs(3600),
            flush_on_shutdown: false,
        },
        {
            let flushed = Arc::clone(&flushed);
            move |batch: Vec<u8>| {
                let flushed = Arc::clone(&flushed);
                async move { flushed.lock().unwrap().extend(batch) }
            }
        },
    );
    let mut server = TestServer::start_with(lifecycle, true).await;
    for item in 0..5 {
        batcher.push(item);
    }
    server.shutdown(Signal::Terminate);
    server.finished().await.unwrap();
    // Even once every sender is gone, the partial batch is not written.
    drop(batcher);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *flushed.lock().unwrap(),
        vec![0, 1, 2],
        "only the full batch"
    );
}
