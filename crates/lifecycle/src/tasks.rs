//! Tracked background tasks: awaited at shutdown, counted by name.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex},
};

use tokio_util::task::TaskTracker;

/// The set of tracked tasks of one lifecycle.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// Decrements its task's count when the task ends, however it ends.
struct Running {
    name: String,
    running: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(count) = running.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.name);
            }
        }
    }
}

impl Tasks {
    pub(crate) fn spawn<F>(&self, name: &str, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        *lock(&self.running).entry(name.to_owned()).or_default() += 1;
        let guard = Running {
            name: name.to_owned(),
            running: Arc::clone(&self.running),
        };
        self.tracker.spawn(async move {
            let _guard = guard;
            future.await
        })
    }

    /// Waits until every tracked task has ended. Tasks spawned while waiting
    /// are awaited too.
    pub(crate) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// The tasks still running: (name, count), sorted by name.
    pub(crate) fn running(&self) -> Vec<(String, usize)> {
        lock(&self.running)
            .iter()
            .map(|(name, count)| (name.clone(), *count))
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the map consistent (each
    // critical section is a single insert or decrement), so keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
