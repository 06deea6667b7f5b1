//! Shutdown hooks, run in reverse order of registration.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use futures_util::future::BoxFuture;

type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// The registered hooks of one lifecycle.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    hooks: Arc<Mutex<Vec<(String, Hook)>>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.names();
        f.debug_struct("Hooks").field("names", &names).finish()
    }
}

impl Hooks {
    pub(crate) fn register(&self, name: &str, hook: Hook) {
        self.lock().push((name.to_owned(), hook));
    }

    /// Takes every hook out, last registered first.
    pub(crate) fn take_reversed(&self) -> Vec<(String, Hook)> {
        let mut hooks = std::mem::take(&mut *self.lock());
        hooks.reverse();
        hooks
    }

    fn names(&self) -> Vec<String> {
        self.lock().iter().map(|(name, _)| name.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Hook)>> {
        self.hooks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
