//! Throttled log lines: an error that repeats (an accept loop out of file
//! descriptors, a flood of connections above a limit) is logged once per
//! [`PERIOD`] with a count, not once per occurrence.
//!
//! [`warn_throttled!`] keeps one [`LogThrottle`] per call site. The first
//! occurrence of a line is logged at once; identical lines within the period
//! are counted, and the count goes with the next occurrence logged after it
//! ("... (412 more in the last 1.0s)"). A burst that stops before the period
//! ends leaves its count unlogged until the line comes again.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shortest time between two identical lines.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Distinct lines remembered per call site; the one logged longest ago is
/// forgotten (its pending count logged) to make room.
const REMEMBERED: usize = 16;

/// Logs `format!(...)` at warn level, identical lines at most once per
/// [`PERIOD`] with a count (one throttle per call site).
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::LogThrottle = $crate::throttle::LogThrottle::new();
        for line in THROTTLE.admit(format_args!($($arg)+)) {
            ::tracing::warn!("{line}");
        }
    }};
}
pub(crate) use warn_throttled;

/// The lines of one call site and when each was last logged.
#[derive(Debug)]
pub struct LogThrottle {
    seen: Mutex<Vec<Seen>>,
}

#[derive(Debug)]
struct Seen {
    line: String,
    logged_at: Instant,
    repeats: u64,
}

impl LogThrottle {
    /// A throttle that has seen nothing.
    pub const fn new() -> Self {
        Self {
            seen: Mutex::new(Vec::new()),
        }
    }

    /// The lines to log now for an occurrence of `line`: none while it is
    /// throttled, else the line (with the count of those held back).
    pub fn admit(&self, line: fmt::Arguments<'_>) -> Vec<String> {
        self.admit_at(line.to_string(), Instant::now())
    }

    fn admit_at(&self, line: String, now: Instant) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = seen.iter_mut().find(|s| s.line == line) {
            let since = now.saturating_duration_since(s.logged_at);
            if since < PERIOD {
                s.repeats += 1;
                return Vec::new();
            }
            let out = with_count(line, s.repeats, since);
            (s.logged_at, s.repeats) = (now, 0);
            return vec![out];
        }
        let mut out = Vec::new();
        if seen.len() >= REMEMBERED
            && let Some(oldest) = (0..seen.len()).min_by_key(|&i| seen[i].logged_at)
        {
            let s = seen.swap_remove(oldest);
            if s.repeats > 0 {
                out.push(with_count(s.line, s.repeats, now - s.logged_at));
            }
        }
        seen.push(Seen {
            line: line.clone(),
            logged_at: now,
            repeats: 0,
        });
        out.push(line);
        out
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new()
    }
}

fn with_count(line: String, repeats: u64, since: Duration) -> String {
    if repeats == 0 {
        return line;
    }
    format!("{line} ({repeats} more in the last {since:.1?})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_is_logged_once_per_period_with_its_count() {
        let throttle = LogThrottle::new();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let line = || "accept failed: too many open files".to_string();
        assert_eq!(throttle.admit_at(line(), at(0)), vec![line()]);
        for ms in 1..1000 {
            assert!(throttle.admit_at(line(), at(ms)).is_empty(), "at {ms} ms");
        }
        // Another line is not held back by the first.
        assert_eq!(throttle.admit_at("other".into(), at(500)), vec!["other"]);
        assert_eq!(
            throttle.admit_at(line(), at(1000)),
            vec![format!("{} (999 more in the last 1.0s)", line())]
        );
        assert!(throttle.admit_at(line(), at(1500)).is_empty());
        assert_eq!(
            throttle.admit_at(line(), at(2500)),
            vec![format!("{} (1 more in the last 1.5s)", line())]
        );
        assert_eq!(throttle.admit_at(line(), at(4000)), vec![line()]);
    }

    #[test]
    fn a_forgotten_line_reports_its_pending_count() {
        let throttle = LogThrottle::new();
        let t0 = Instant::now();
        throttle.admit_at("first".into(), t0);
        throttle.admit_at("first".into(), t0);
        let mut logged = Vec::new();
        for i in 1..=REMEMBERED {
            logged.extend(throttle.admit_at(format!("line {i}"), t0 + Duration::from_millis(1)));
        }
        assert_eq!(logged.len(), REMEMBERED + 1, "{logged:?}");
        assert_eq!(logged[REMEMBERED - 1], "first (1 more in the last 1.0ms)");
        assert_eq!(throttle.seen.lock().unwrap().len(), REMEMBERED);
    }
}
