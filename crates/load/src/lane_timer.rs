//! A precise timer on a sending thread's own event loop.
//!
//! The open model's arrivals are timed by each sending thread itself, so
//! the thread must wake at an instant with sub-millisecond precision
//! without a thread of its own: tokio's timer wheel has millisecond ticks
//! (and rounds every sleep up to the next one, adding up to two of them to
//! every latency measured from the schedule). A Linux timerfd registered
//! with the thread's reactor wakes its `epoll_wait` at the instant asked,
//! and costs no thread and no cross-thread wake-up. Where no timerfd can be
//! had, tokio's sleep stands in. The timerfd runs on the real clock: a
//! runtime whose time is paused (`tokio::time::pause`) does not drive it,
//! so the open model's schedule is tested in real time.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A one-shot timer for the thread (runtime) it was created on.
pub(crate) struct LaneTimer {
    fd: Option<AsyncFd<Fd>>,
}

/// A timerfd, as tokio's reactor takes it.
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl LaneTimer {
    /// A timer on the current runtime (a timerfd when one can be had).
    pub(crate) fn new() -> Self {
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .ok()
        .and_then(register);
        LaneTimer { fd }
    }

    /// Wait until `at` (returns at once if it has passed).
    pub(crate) async fn sleep_until(&self, at: Instant) {
        let Some(fd) = &self.fd else {
            return tokio::time::sleep_until(at).await;
        };
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if arm(&fd.get_ref().0, left).is_err() {
            return tokio::time::sleep_until(at).await;
        }
        // The timerfd reads as ready once it expired; one read clears it.
        // Readiness is waited for before the first read, and cleared after
        // it, so a wait costs one read.
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep_until(at).await;
            };
            match fd.get_ref().0.wait() {
                Ok(()) => return ready.clear_ready(),
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(_) => return tokio::time::sleep_until(at).await,
            }
        }
    }
}

/// The timerfd, registered with the current runtime's reactor.
#[allow(unsafe_code)]
fn register(timer: TimerFd) -> Option<AsyncFd<Fd>> {
    // SAFETY: `Fd` owns the timerfd (an `OwnedFd` inside `TimerFd`), which
    // stays open for as long as the `AsyncFd` holds it, and `as_raw_fd`
    // always returns that same descriptor.
    unsafe { AsyncFd::register(Fd(timer)) }.ok()
}

/// Arm `timer` to expire once, `after` from now (a zero expiration would
/// disarm it, so at least a nanosecond).
fn arm(timer: &TimerFd, after: Duration) -> nix::Result<()> {
    let after = after.max(Duration::from_nanos(1));
    timer.set(
        Expiration::OneShot(TimeSpec::from_duration(after)),
        TimerSetTimeFlags::empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timer never wakes before the instant asked, and an instant
    /// already past returns at once. (How late it wakes is a matter of the
    /// machine's load: measured in docs/benchmarks.md, not asserted here.)
    #[tokio::test]
    async fn wakes_at_the_instant_asked_and_never_before() {
        let timer = LaneTimer::new();
        assert!(timer.fd.is_some(), "no timerfd");
        for _ in 0..20 {
            let at = Instant::now() + Duration::from_micros(300);
            timer.sleep_until(at).await;
            assert!(Instant::now() >= at);
        }
        let past = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), timer.sleep_until(past))
            .await
            .expect("a past instant returns at once");
    }
}
