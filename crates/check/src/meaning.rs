//! What the observations mean in production, in three lines: behind
//! dropless, behind Kubernetes without a preStop hook, and the smallest fix.

use std::time::Duration;

use serde::Serialize;

use crate::checks::{Check, Facts, Verdict, classes, failed};
use crate::config::KUBERNETES_ENDPOINT_LAG;
use crate::traffic::Outcome;

/// The three lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Meaning {
    /// Behind dropless: safe or not, and why.
    pub dropless: String,
    /// Behind Kubernetes without a preStop hook: failed requests expected
    /// per pod restart at the check's rate.
    pub kubernetes: String,
    /// Expected failed requests per pod restart behind Kubernetes.
    pub kubernetes_failed_requests: usize,
    /// The smallest fix first, then the others.
    pub fixes: Vec<String>,
}

/// Derives the lines from the facts and the checks.
pub(crate) fn derive(f: &Facts, checks: &[Check], rate: f64) -> Meaning {
    let verdict = |n: u8| checks[usize::from(n - 1)].verdict;
    let exit = f.exit;
    let dropless = if exit.killed {
        format!(
            "safe but slow: dropless stops routing to a replica and waits for its requests before SIGTERM, \
             so nothing is lost, but each retirement waits the whole {} ms grace period",
            f.grace_ms
        )
    } else {
        format!(
            "safe: dropless stops routing to a replica and waits for its requests before SIGTERM, then closes its \
             idle connections, so what happens after SIGTERM reaches no client; it exits {} ms after SIGTERM",
            exit.after_ms
        )
    };
    // Behind a Service the pod keeps getting the traffic for the endpoint
    // lag after SIGTERM: every request sent until then that failed here
    // would fail there, at the same rate.
    let lag = f.sigterm + KUBERNETES_ENDPOINT_LAG;
    // An HTTP/2 request held back after GOAWAY goes out on a new
    // connection, which the Service may still give this pod.
    let lost: Vec<_> = f
        .traffic()
        .filter(|e| {
            e.sent < lag && (failed(e) || (e.sent >= f.sigterm && e.outcome == Outcome::Unsent))
        })
        .collect();
    let kubernetes = match lost.len() {
        0 => format!(
            "safe: no request sent before SIGTERM or in the {} s after it failed at {rate} req/s",
            KUBERNETES_ENDPOINT_LAG.as_secs()
        ),
        n => format!(
            "≈ {n} failed requests per pod restart at {rate} req/s ({}): those in flight at SIGTERM \
             and those a Service still sends in its {} s endpoint lag",
            classes(lost.iter().copied()),
            KUBERNETES_ENDPOINT_LAG.as_secs()
        ),
    };
    let mut fixes = Vec::new();
    let started_draining =
        f.listener_closed().is_some() || verdict(1) == Verdict::Pass || verdict(6) == Verdict::Pass;
    if exit.killed && !started_draining {
        fixes.push(
            "handle SIGTERM: stop accepting, finish the requests in flight, then exit".to_owned(),
        );
    } else if exit.killed {
        fixes.push(format!(
            "a longer grace period: it was still shutting down when killed after {} ms",
            f.grace_ms
        ));
    }
    if verdict(3) == Verdict::Fail && !exit.killed {
        fixes.push("finish the requests in flight before exiting (a graceful shutdown)".to_owned());
    }
    // New requests refused (or lost) within the endpoint lag: a pre-stop
    // sleep keeps serving until the Service has forgotten the pod.
    let accepting_ms = f.served_until().map_or(0, |at| f.ms(at).max(0));
    let window_failures = f
        .traffic()
        .filter(|e| e.sent >= f.sigterm && e.sent < lag && failed(e))
        .count();
    if window_failures > 0 {
        let lag_ms = i64::try_from(KUBERNETES_ENDPOINT_LAG.as_millis()).unwrap_or(i64::MAX);
        let needed = Duration::from_millis(u64::try_from(lag_ms - accepting_ms).unwrap_or(0));
        let seconds = needed.as_secs() + u64::from(needed.subsec_millis() > 0);
        fixes.push(format!(
            "a preStop sleep of {} s (it serves new requests for {accepting_ms} ms after SIGTERM; the endpoint lag is {} s)",
            seconds.max(1),
            KUBERNETES_ENDPOINT_LAG.as_secs()
        ));
    }
    if matches!(verdict(4), Verdict::Fail) || matches!(verdict(5), Verdict::Fail) {
        fixes.push(
            "`Connection: close` on responses during the drain, and close idle keep-alive connections before exiting"
                .to_owned(),
        );
    }
    if verdict(6) == Verdict::Fail {
        fixes.push("send GOAWAY and finish open HTTP/2 streams before exiting".to_owned());
    }
    if verdict(7) == Verdict::Fail && !exit.killed && fixes.is_empty() {
        fixes.push("exit 0 after a graceful shutdown".to_owned());
    }
    Meaning {
        dropless,
        kubernetes,
        kubernetes_failed_requests: lost.len(),
        fixes,
    }
}
