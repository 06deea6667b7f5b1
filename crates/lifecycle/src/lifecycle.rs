//! The handle a service keeps: configuration, phase, tasks and hooks.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Config, Phase, hooks::Hooks, tasks::Tasks, websocket::WebSockets};

/// Graceful lifecycle of one service. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) tasks: Tasks,
    pub(crate) hooks: Hooks,
    pub(crate) websockets: WebSockets,
    pub(crate) shutdown: CancellationToken,
    pub(crate) served: AtomicBool,
    /// Mirrors `phase.is_shutting_down()` for the per-response check, which
    /// should not take the watch's lock.
    pub(crate) closing: AtomicBool,
}

impl Lifecycle {
    /// A lifecycle in [`Phase::Starting`].
    pub fn new(config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                phase: watch::Sender::new(Phase::Starting),
                tasks: Tasks::default(),
                hooks: Hooks::default(),
                websockets: WebSockets::default(),
                shutdown: CancellationToken::new(),
                served: AtomicBool::new(false),
                closing: AtomicBool::new(false),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Says the service is ready: the readiness probe answers 200 from now
    /// on. Does nothing once shutdown has begun.
    pub fn set_ready(&self) {
        self.advance(Phase::Ready);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.inner.phase.borrow()
    }

    /// A receiver that sees every phase change.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.inner.phase.subscribe()
    }

    /// A token cancelled the moment shutdown begins, for tasks that want to
    /// stop early (a poller, a consumer loop).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Spawns a tracked task: shutdown waits for it (after the connections
    /// have drained, within the grace period), and one still running when
    /// the grace period ends is reported by `name`.
    pub fn spawn<F>(&self, name: &str, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.tasks.spawn(name, future)
    }

    /// Registers a shutdown hook. Hooks run after the tracked tasks have
    /// finished, one at a time, in reverse order of registration (the last
    /// registered runs first), within the grace period.
    pub fn on_shutdown<F, Fut>(&self, name: &str, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner
            .hooks
            .register(name, Box::new(move || Box::pin(hook())));
    }

    /// Moves to `next` if it is later than the current phase.
    pub(crate) fn advance(&self, next: Phase) {
        let moved = self.inner.phase.send_if_modified(|phase| {
            if next > *phase {
                *phase = next;
                true
            } else {
                false
            }
        });
        if moved {
            tracing::info!(phase = %next, "lifecycle phase");
            if next.is_shutting_down() {
                self.inner.closing.store(true, Ordering::Relaxed);
                self.inner.shutdown.cancel();
            }
        }
    }

    /// Marks `serve` as called; false if it already was.
    pub(crate) fn claim_serve(&self) -> bool {
        !self.inner.served.swap(true, Ordering::SeqCst)
    }
}
