//! Holding traffic: `dropless pause` makes new requests wait (those in
//! flight finish) for a maintenance window such as a database migration;
//! `dropless resume` releases them spread over a time (`--spread`), not all
//! at once; a request held longer than the pause's timeout gets a 503 with
//! `Retry-After`. `dropless maintenance on` answers every request with a
//! 503, a page and `Retry-After` until `off`; probes and rollouts go on.
//!
//! While traffic flows, a request pays one atomic load ([`Hold::admit`]);
//! only a request arriving during a pause or maintenance takes the slow
//! path, which waits on a `watch` of the hold's state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a paused request waits before its 503, unless the pause says.
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Over how long the held requests are released on resume, unless the
/// pause says.
pub const DEFAULT_SPREAD: Duration = Duration::from_secs(1);
/// The `Retry-After` (seconds) of a 503 for a pause timeout or maintenance.
pub const RETRY_AFTER_SECS: u64 = 5;
/// The page of `maintenance on` without `--message` or `--page`.
pub const DEFAULT_MAINTENANCE_MESSAGE: &str =
    "The service is down for maintenance. Please try again in a few minutes.\n";

/// A change asked of the hold (the control API's request body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HoldCommand {
    /// New requests wait.
    Pause {
        /// Longest wait of a request before its 503.
        #[serde(with = "crate::config::duration")]
        timeout: Duration,
        /// Over how long the held requests are released on resume.
        #[serde(with = "crate::config::duration")]
        spread: Duration,
    },
    /// Held requests are released (spread), new ones go through.
    Resume,
    /// Every request gets 503 with this page.
    MaintenanceOn {
        /// The page.
        page: MaintenancePage,
    },
    /// Requests go through again.
    MaintenanceOff,
}

/// The page of a maintenance 503.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenancePage {
    /// Its body.
    pub body: String,
    /// Its `Content-Type`.
    pub content_type: String,
}

/// What the hold is doing now, as the control API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// Requests go through.
    Open,
    /// Requests wait.
    Paused,
    /// Requests get the maintenance page.
    Maintenance,
}

/// Why a held request is answered by the proxy itself.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// It waited the pause's whole timeout.
    PauseTimeout(Duration),
    /// Maintenance is on.
    Maintenance(Arc<MaintenancePage>),
}

/// The hold of the whole proxy.
#[derive(Debug)]
pub struct Hold {
    /// Whether requests may take the fast way through: one load each.
    open: AtomicBool,
    state: watch::Sender<State>,
    /// Numbers the requests that take the slow path, in arrival order.
    tickets: AtomicU64,
    waiting: AtomicUsize,
}

#[derive(Debug, Clone)]
enum State {
    Open {
        /// The release of the last pause, for its late waiters.
        release: Option<Release>,
    },
    Paused {
        timeout: Duration,
        spread: Duration,
        /// The first ticket of the pause.
        base: u64,
    },
    Maintenance(Arc<MaintenancePage>),
}

/// How the requests held by a pause leave it: ticket `base + i` of `held`
/// at `at + spread * i / held`.
#[derive(Debug, Clone, Copy)]
struct Release {
    at: Instant,
    spread: Duration,
    base: u64,
    held: u64,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            open: AtomicBool::new(true),
            state: watch::Sender::new(State::Open { release: None }),
            tickets: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl Hold {
    /// Lets a request through: at once while traffic flows; after the
    /// pause (`Ok(Some(waited))`) when paused; `Err` at the pause's timeout
    /// or in maintenance.
    pub async fn admit(&self) -> Result<Option<Duration>, Refusal> {
        if self.open.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let admitted = self.wait().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        admitted
    }

    /// Applies `command`; returns the status after it.
    pub fn apply(&self, command: HoldCommand) -> HoldStatus {
        match command {
            HoldCommand::Pause { timeout, spread } => {
                let base = self.tickets.load(Ordering::SeqCst);
                self.state.send_modify(|s| match s {
                    // Paused again: the new settings, the same waiters.
                    State::Paused {
                        timeout: t,
                        spread: sp,
                        ..
                    } => (*t, *sp) = (timeout, spread),
                    _ => {
                        *s = State::Paused {
                            timeout,
                            spread,
                            base,
                        }
                    }
                });
                self.open.store(false, Ordering::Release);
            }
            HoldCommand::Resume => {
                let mut released = false;
                self.state.send_if_modified(|s| {
                    let State::Paused { spread, base, .. } = *s else {
                        return false;
                    };
                    let held = self.tickets.load(Ordering::SeqCst) - base;
                    *s = State::Open {
                        release: Some(Release {
                            at: Instant::now(),
                            spread,
                            base,
                            held,
                        }),
                    };
                    released = true;
                    true
                });
                if released {
                    self.open.store(true, Ordering::Release);
                }
            }
            HoldCommand::MaintenanceOn { page } => {
                self.state.send_replace(State::Maintenance(Arc::new(page)));
                self.open.store(false, Ordering::Release);
            }
            HoldCommand::MaintenanceOff => {
                let mut ended = false;
                self.state.send_if_modified(|s| {
                    ended = matches!(s, State::Maintenance(_));
                    if ended {
                        *s = State::Open { release: None };
                    }
                    ended
                });
                if ended {
                    self.open.store(true, Ordering::Release);
                }
            }
        }
        self.status()
    }

    /// What the hold does now.
    pub fn status(&self) -> HoldStatus {
        match &*self.state.borrow() {
            State::Open { .. } => HoldStatus::Open,
            State::Paused { .. } => HoldStatus::Paused,
            State::Maintenance(_) => HoldStatus::Maintenance,
        }
    }

    /// Requests waiting in a pause now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    async fn wait(&self) -> Result<Option<Duration>, Refusal> {
        let arrived = Instant::now();
        let mut state = self.state.subscribe();
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst);
        let mut current = state.borrow_and_update().clone();
        let timeout = match &current {
            State::Paused { timeout, .. } => *timeout,
            _ => Duration::ZERO,
        };
        let deadline = arrived + timeout;
        loop {
            match current {
                State::Open { release } => {
                    if let Some(r) = release
                        && (r.base..r.base + r.held).contains(&ticket)
                    {
                        let i = (ticket - r.base) as f64;
                        let at = r.at + r.spread.mul_f64(i / r.held as f64);
                        tokio::time::sleep_until(at).await;
                    }
                    return Ok(Some(arrived.elapsed()));
                }
                State::Maintenance(page) => return Err(Refusal::Maintenance(page)),
                State::Paused { timeout, .. } => {
                    match tokio::time::timeout_at(deadline, state.changed()).await {
                        Err(_) => return Err(Refusal::PauseTimeout(timeout)),
                        // The hold is gone: the proxy stops.
                        Ok(Err(_)) => return Ok(Some(arrived.elapsed())),
                        Ok(Ok(())) => current = state.borrow_and_update().clone(),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(hold: &Hold, timeout: u64, spread: u64) {
        hold.apply(HoldCommand::Pause {
            timeout: Duration::from_secs(timeout),
            spread: Duration::from_secs(spread),
        });
    }

    /// Lets the spawned tasks run until `n` wait.
    async fn until_waiting(hold: &Hold, n: usize) {
        while hold.waiting() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn held_requests_are_released_in_order_spread_over_the_spread() {
        let hold = Arc::new(Hold::default());
        assert_eq!(hold.admit().await.unwrap(), None);
        pause(&hold, 30, 1);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let held = Arc::clone(&hold);
            tasks.push(tokio::spawn(async move {
                held.admit().await.unwrap().expect("held");
                Instant::now()
            }));
            until_waiting(&hold, tasks.len()).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(hold.waiting(), 10, "released before the resume");
        assert_eq!(hold.apply(HoldCommand::Resume), HoldStatus::Open);
        // A new request goes through at once, ahead of the held ones.
        assert_eq!(hold.admit().await.unwrap(), None);
        let mut released = Vec::new();
        for t in tasks {
            released.push(t.await.unwrap() - start);
        }
        // The i-th held request leaves at 2 s + i × 100 ms.
        for (i, at) in released.iter().enumerate() {
            let expected = Duration::from_secs(2) + Duration::from_millis(100 * i as u64);
            assert_eq!(*at, expected, "request {i}: {released:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_past_its_timeout_refuses_and_maintenance_refuses_at_once() {
        let hold = Hold::default();
        pause(&hold, 2, 1);
        let start = Instant::now();
        assert!(matches!(
            hold.admit().await,
            Err(Refusal::PauseTimeout(t)) if t == Duration::from_secs(2)
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let page = MaintenancePage {
            body: "back soon".into(),
            content_type: "text/plain".into(),
        };
        hold.apply(HoldCommand::MaintenanceOn { page });
        assert!(
            matches!(hold.admit().await, Err(Refusal::Maintenance(p)) if p.body == "back soon")
        );
        assert_eq!(hold.apply(HoldCommand::MaintenanceOff), HoldStatus::Open);
        assert_eq!(hold.admit().await.unwrap(), None);
    }
}
