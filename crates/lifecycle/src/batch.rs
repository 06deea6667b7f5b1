//! Batch writers that flush on shutdown.

use std::{future::Future, time::Duration};

use tokio::{
    sync::mpsc,
    time::{MissedTickBehavior, interval_at},
};
use tokio_util::sync::CancellationToken;

use crate::Lifecycle;

/// Default number of items that triggers a flush.
pub const DEFAULT_BATCH_MAX_ITEMS: usize = 500;
/// Default time between two flushes of a partial batch.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_secs(30);

/// When a [`Batcher`] flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush as soon as this many items are waiting. Default
    /// [`DEFAULT_BATCH_MAX_ITEMS`].
    pub max_items: usize,
    /// Flush what is waiting at this interval. Default
    /// [`DEFAULT_BATCH_INTERVAL`].
    pub interval: Duration,
    /// Flush the rest at shutdown (a shutdown hook). Turning it off loses
    /// what is waiting when the process exits; the demo's `v8` profile does
    /// that on purpose. Default `true`.
    pub flush_on_shutdown: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_items: DEFAULT_BATCH_MAX_ITEMS,
            interval: DEFAULT_BATCH_INTERVAL,
            flush_on_shutdown: true,
        }
    }
}

/// Collects items and hands them to a flush function in batches: at
/// [`BatchConfig::max_items`] items, every [`BatchConfig::interval`], and
/// the rest at shutdown. Cheap to clone; clones feed the same batch.
#[derive(Debug)]
pub struct Batcher<T> {
    items: mpsc::UnboundedSender<T>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            items: self.items.clone(),
        }
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts a batcher named `name`. With `flush_on_shutdown`, a shutdown
    /// hook of the same name flushes the rest (hooks run after the tracked
    /// tasks, so items that tasks push are flushed too).
    pub fn new<F, Fut>(lifecycle: &Lifecycle, name: &str, config: BatchConfig, flush: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (items, receiver) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let worker = tokio::spawn(run(receiver, config, flush, stop.clone(), name.to_owned()));
        if config.flush_on_shutdown {
            lifecycle.on_shutdown(name, move || async move {
                stop.cancel();
                if let Err(error) = worker.await {
                    tracing::error!(%error, "batch worker failed");
                }
            });
        }
        Self { items }
    }

    /// Adds an item to the current batch.
    pub fn push(&self, item: T) {
        if self.items.send(item).is_err() {
            // The worker has stopped: shutdown already flushed. Say so
            // rather than lose the item silently.
            tracing::error!("batch item pushed after the final flush: not written");
        }
    }
}

async fn run<T, F, Fut>(
    mut receiver: mpsc::UnboundedReceiver<T>,
    config: BatchConfig,
    mut flush: F,
    stop: CancellationToken,
    name: String,
) where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    let max_items = config.max_items.max(1);
    let mut batch = Vec::with_capacity(max_items);
    let mut ticks = interval_at(
        tokio::time::Instant::now() + config.interval,
        config.interval,
    );
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = receiver.recv() => match item {
                Some(item) => {
                    batch.push(item);
                    if batch.len() >= max_items {
                        flush(std::mem::replace(&mut batch, Vec::with_capacity(max_items))).await;
                    }
                }
                None => break,
            },
            _ = ticks.tick() => {
                if !batch.is_empty() {
                    flush(std::mem::replace(&mut batch, Vec::with_capacity(max_items))).await;
                }
            }
            () = stop.cancelled() => break,
        }
    }
    receiver.close();
    while let Ok(item) = receiver.try_recv() {
        batch.push(item);
    }
    if !config.flush_on_shutdown {
        if !batch.is_empty() {
            tracing::warn!(batch = %name, items = batch.len(), "not flushed (flush_on_shutdown is off): lost");
        }
        return;
    }
    if !batch.is_empty() {
        tracing::info!(batch = %name, items = batch.len(), "final flush");
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(max_items));
            flush(std::mem::replace(&mut batch, rest)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::Config;

    /// Each flush: when (from the start), and what.
    type Flushed = Arc<Mutex<Vec<(Duration, Vec<u32>)>>>;

    /// A batcher of `max_items` every `interval`, and what it flushed.
    fn batcher(max_items: usize, interval: Duration) -> (Batcher<u32>, Flushed) {
        let lifecycle = Lifecycle::new(Config::default());
        let flushed: Flushed = Arc::default();
        let start = tokio::time::Instant::now();
        let batcher = Batcher::new(
            &lifecycle,
            "test",
            BatchConfig {
                max_items,
                interval,
                flush_on_shutdown: true,
            },
            {
                let flushed = Arc::clone(&flushed);
                move |batch: Vec<u32>| {
                    let flushed = Arc::clone(&flushed);
                    async move { flushed.lock().unwrap().push((start.elapsed(), batch)) }
                }
            },
        );
        (batcher, flushed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_is_flushed_at_the_interval_and_a_full_one_at_once() {
        let (batcher, flushed) = batcher(3, Duration::from_secs(5));
        batcher.push(1);
        batcher.push(2);
        tokio::time::sleep(Duration::from_millis(4_999)).await;
        assert!(
            flushed.lock().unwrap().is_empty(),
            "not before the interval"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            *flushed.lock().unwrap(),
            [(Duration::from_secs(5), vec![1, 2])]
        );
        // Three items: flushed at once, not at the next tick.
        for item in 3..=5 {
            batcher.push(item);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            flushed.lock().unwrap().last(),
            Some(&(Duration::from_millis(5_001), vec![3, 4, 5]))
        );
        // An empty batch is not flushed at the next ticks.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(flushed.lock().unwrap().len(), 2);
    }
}
