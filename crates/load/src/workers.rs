//! Where requests run: the caller's runtime, or dedicated threads that each
//! drive a single-threaded runtime (as wrk's threads each own an event loop).
//!
//! A closed-model loop and its connection stay on one thread: no work
//! stealing, no cross-thread wake-ups, each thread sleeping in the poller
//! rather than on a futex. That is what lets one client keep up with a fast
//! server on a small machine.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The threads a run spreads its requests over. Keep it alive until the run's
/// report is in; dropping it stops its threads and whatever still runs there.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// `threads` dedicated threads, each with its own single-threaded runtime.
    pub fn dedicated(threads: usize) -> io::Result<Self> {
        let mut workers = Workers {
            handles: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            let thread = std::thread::Builder::new()
                .name(format!("dropless-load-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
            workers.threads.push((stop, thread));
        }
        Ok(workers)
    }

    /// The runtime of the caller (requires one).
    pub fn current() -> Self {
        Workers {
            handles: vec![Handle::current()],
            threads: Vec::new(),
        }
    }

    pub(crate) fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// How many runtimes (lanes) requests are spread over.
    pub(crate) fn lanes(&self) -> usize {
        self.handles.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (stop, thread) in self.threads.drain(..) {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}
