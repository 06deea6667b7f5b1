//! The eight checks: each reads what the clients saw ([`crate::traffic`])
//! and says pass, fail, not applicable or unexpected, with the evidence in
//! milliseconds from SIGTERM and counts. What matches none of a check's
//! descriptions is "unexpected", never a pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dropless_load::{Closed, GoAway};
use serde::Serialize;
use tokio::time::Instant;

use crate::program::{Exit, signal_name};
use crate::traffic::{Client, End, Exchange, Outcome, Seen};

/// Serving new requests for less than this after readiness turned 503 is
/// the listener closing, not a pre-stop delay (connections that were
/// already in its backlog).
const MIN_PRE_STOP_MS: i64 = 100;
/// A close seen this close to the exit is the exit's, not the program's.
const EXIT_MARGIN_MS: i64 = 20;

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The program does the right thing.
    Pass,
    /// It does not.
    Fail,
    /// The check does not apply (no health path, no HTTP/2, nothing in flight).
    NotApplicable,
    /// What happened fits none of the check's descriptions.
    Unexpected,
}

/// One check's line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Its number in the list (1..=8).
    pub number: u8,
    /// Its short name (`readiness`, `new connections`, ...).
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was seen: times in ms from SIGTERM, counts.
    pub evidence: String,
}

/// The moments behind the checks, in ms from SIGTERM (startup in ms from
/// the start), for scripts reading the JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// Start to the first accepted connection.
    pub listening_ms: u64,
    /// Start to the first 2xx of the readiness (or main) path.
    pub ready_ms: u64,
    /// The first non-2xx answer of the readiness path after SIGTERM.
    pub readiness_off_ms: Option<i64>,
    /// The last request on a new connection answered 2xx after SIGTERM.
    pub served_until_ms: Option<i64>,
    /// The first refused connection before the exit.
    pub listener_closed_ms: Option<i64>,
    /// When each idle keep-alive connection was closed by the server.
    pub idle_closed_ms: Vec<i64>,
    /// The first GOAWAY on the HTTP/2 connection.
    pub goaway_ms: Option<i64>,
    /// The exit (or the kill).
    pub exit_ms: i64,
    /// Requests in flight at SIGTERM, and how many of them were cut.
    pub in_flight: usize,
    /// Of those, the cut ones.
    pub in_flight_cut: usize,
}

/// What the check observed, with SIGTERM as time zero.
pub(crate) struct Facts {
    pub(crate) sigterm: Instant,
    pub(crate) started: Instant,
    pub(crate) listening: Instant,
    pub(crate) ready: Instant,
    /// Answers of the readiness (or main) path that were not 2xx while it
    /// was listening and not ready yet.
    pub(crate) not_ready_answers: usize,
    pub(crate) health: bool,
    pub(crate) exit: Exit,
    pub(crate) exited: Instant,
    pub(crate) grace_ms: u64,
    /// `None`: it does not speak h2c. `Some(goaway)`: it does.
    pub(crate) h2: Option<Option<GoAway>>,
    pub(crate) seen: Seen,
}

impl Facts {
    /// Milliseconds from SIGTERM (negative before it).
    pub(crate) fn ms(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.sigterm) {
            Some(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            None => -i64::try_from((self.sigterm - at).as_millis()).unwrap_or(i64::MAX),
        }
    }

    pub(crate) fn exit_ms(&self) -> i64 {
        self.ms(self.exited)
    }

    fn of(&self, client: Client) -> impl Iterator<Item = &Exchange> {
        self.seen
            .exchanges
            .iter()
            .filter(move |e| e.client == client)
    }

    /// Requests of the traffic (not the readiness path).
    pub(crate) fn traffic(&self) -> impl Iterator<Item = &Exchange> {
        self.seen
            .exchanges
            .iter()
            .filter(|e| e.client != Client::Health)
    }

    /// When the program closed its listener after SIGTERM (the first
    /// refused connection), if it did before it ended.
    pub(crate) fn listener_closed(&self) -> Option<Instant> {
        self.seen
            .exchanges
            .iter()
            .filter(|e| e.outcome == Outcome::Refused && e.sent >= self.sigterm)
            .map(|e| e.sent)
            .min()
            .filter(|&at| self.ms(at) + EXIT_MARGIN_MS < self.ms(self.end()))
    }

    /// When it ended: the SIGKILL for a killed program, else its exit.
    fn end(&self) -> Instant {
        match self.exit.killed {
            true => self.sigterm + std::time::Duration::from_millis(self.grace_ms),
            false => self.exited,
        }
    }

    /// When it began to drain, as seen on the wire: the listener closed or
    /// the first GOAWAY, whichever came first before it ended.
    fn drain_start(&self) -> Option<Instant> {
        let goaway = self
            .h2
            .flatten()
            .map(|g| g.at)
            .filter(|&at| self.ms(at) + EXIT_MARGIN_MS < self.ms(self.end()));
        [self.listener_closed(), goaway].into_iter().flatten().min()
    }

    /// Whether the exit cut a request: one lost within a few ms of it.
    fn exit_cut_requests(&self) -> bool {
        self.traffic().any(|e| {
            matches!(e.outcome, Outcome::Lost(_))
                && (self.ms(e.done) - self.exit_ms()).abs() <= EXIT_MARGIN_MS
        })
    }

    /// Half the median time to a 2xx before SIGTERM: a request lost sooner
    /// than that after it was sent was lost to a close racing it, not cut
    /// while being answered.
    fn race_window(&self) -> std::time::Duration {
        let mut times: Vec<_> = self
            .traffic()
            .filter(|e| e.done <= self.sigterm && ok(e))
            .map(|e| e.done - e.sent)
            .collect();
        times.sort();
        times
            .get(times.len() / 2)
            .map_or(std::time::Duration::ZERO, |t| *t / 2)
    }

    /// The last request on a new connection after SIGTERM that was answered
    /// with a 2xx.
    pub(crate) fn served_until(&self) -> Option<Instant> {
        self.of(Client::Fresh)
            .filter(|e| e.sent >= self.sigterm && ok(e))
            .map(|e| e.sent)
            .max()
    }

    /// The first answer of the readiness path after SIGTERM that was not
    /// a 2xx.
    fn readiness_off(&self) -> Option<&Exchange> {
        self.of(Client::Health).find(|e| {
            e.sent >= self.sigterm
                && matches!(e.outcome, Outcome::Answered(a) if !(200..300).contains(&a.status))
        })
    }

    /// Requests sent before SIGTERM and not finished at it.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &Exchange> {
        self.traffic()
            .filter(|e| e.sent < self.sigterm && e.done > self.sigterm)
    }
}

/// Whether a request got a 2xx.
pub(crate) fn ok(e: &Exchange) -> bool {
    matches!(e.outcome, Outcome::Answered(a) if (200..300).contains(&a.status))
}

/// Whether a request failed for its client (refused, lost, or not 2xx);
/// an HTTP/2 request the client held back is not a failure.
pub(crate) fn failed(e: &Exchange) -> bool {
    !ok(e) && e.outcome != Outcome::Unsent
}

/// `eof 3, reset 2` (or `http_503 4`).
pub(crate) fn classes<'a>(exchanges: impl Iterator<Item = &'a Exchange>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in exchanges {
        let class = match e.outcome {
            Outcome::Answered(a) => format!("http_{}", a.status),
            Outcome::Refused => "refused".to_owned(),
            Outcome::Unsent => "unsent".to_owned(),
            Outcome::Lost(lost) => lost.class.to_string(),
        };
        *counts.entry(class).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
    parts.join(", ")
}

fn check(number: u8, name: &'static str, verdict: Verdict, evidence: String) -> Check {
    Check {
        number,
        name,
        verdict,
        evidence,
    }
}

/// The moments behind the checks.
pub(crate) fn timeline(f: &Facts) -> Timeline {
    let mut idle_closed_ms: Vec<i64> = f
        .seen
        .idle
        .iter()
        .filter_map(|i| i.closed.map(|(at, _)| f.ms(at)))
        .collect();
    idle_closed_ms.sort_unstable();
    let in_flight: Vec<&Exchange> = f.in_flight().collect();
    Timeline {
        listening_ms: crate::program::millis(f.listening - f.started),
        ready_ms: crate::program::millis(f.ready - f.started),
        readiness_off_ms: f.readiness_off().map(|e| f.ms(e.sent)),
        served_until_ms: f.served_until().map(|at| f.ms(at)),
        listener_closed_ms: f.listener_closed().map(|at| f.ms(at)),
        idle_closed_ms,
        goaway_ms: f.h2.flatten().map(|g| f.ms(g.at)),
        exit_ms: f.exit_ms(),
        in_flight: in_flight.len(),
        in_flight_cut: in_flight.iter().filter(|e| failed(e)).count(),
    }
}

/// All eight checks.
pub(crate) fn all(f: &Facts) -> Vec<Check> {
    vec![
        readiness(f),
        new_connections(f),
        in_flight(f),
        idle_keepalive(f),
        busy_keepalive(f),
        http2(f),
        exit(f),
        startup(f),
    ]
}

/// Check 1: Readiness turns 503 before the listener closes, and for how long
/// requests are still served.
fn readiness(f: &Facts) -> Check {
    let name = "readiness";
    if !f.health {
        return check(
            1,
            name,
            Verdict::NotApplicable,
            "no --health-path given".into(),
        );
    }
    let after: Vec<&Exchange> = f
        .of(Client::Health)
        .filter(|e| e.sent >= f.sigterm)
        .collect();
    let not_ready = f.readiness_off();
    let closed = f.listener_closed();
    let end = match closed {
        Some(at) => format!("the listener closed at {} ms", f.ms(at)),
        None => format!("the process exited at {} ms", f.exit_ms()),
    };
    let Some(not_ready) = not_ready else {
        return check(
            1,
            name,
            Verdict::Fail,
            format!(
                "readiness never turned 503 after SIGTERM ({} answers); {end}",
                after.len()
            ),
        );
    };
    let status = match not_ready.outcome {
        Outcome::Answered(a) => a.status,
        _ => 0,
    };
    let turned = not_ready.sent;
    if let Some(back) = after.iter().find(|e| e.sent > turned && ok(e)) {
        return check(
            1,
            name,
            Verdict::Unexpected,
            format!(
                "readiness turned {status} at {} ms, then 2xx again at {} ms",
                f.ms(turned),
                f.ms(back.sent)
            ),
        );
    }
    let served = f
        .of(Client::Fresh)
        .filter(|e| e.sent > turned && ok(e))
        .map(|e| e.sent)
        .max();
    let pre_stop = served.map(|until| f.ms(until) - f.ms(turned));
    match pre_stop {
        Some(ms) if ms >= MIN_PRE_STOP_MS => check(
            1,
            name,
            Verdict::Pass,
            format!(
                "readiness {status} at {} ms; new requests still served until {} ms (pre-stop ≈ {ms} ms); {end}",
                f.ms(turned),
                f.ms(turned) + ms,
            ),
        ),
        _ => check(
            1,
            name,
            Verdict::Fail,
            format!(
                "readiness {status} at {} ms, but new requests served for only {} ms after it (no pre-stop delay); {end}",
                f.ms(turned),
                pre_stop.unwrap_or(0)
            ),
        ),
    }
}

/// Check 2: New connections: accepted until when, refused after; none accepted
/// and then dropped.
fn new_connections(f: &Facts) -> Check {
    let name = "new connections";
    let after: Vec<&Exchange> = f
        .of(Client::Fresh)
        .filter(|e| e.sent >= f.sigterm)
        .collect();
    let answered: Vec<&&Exchange> = after
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Answered(_)))
        .collect();
    let refused: Vec<&&Exchange> = after
        .iter()
        .filter(|e| e.outcome == Outcome::Refused)
        .collect();
    let dropped: Vec<&&Exchange> = after
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Lost(_)))
        .collect();
    let mut evidence = String::new();
    match answered.iter().map(|e| e.sent).max() {
        Some(last) => {
            let _ = write!(
                evidence,
                "accepted and answered until {} ms ({})",
                f.ms(last),
                answered.len()
            );
        }
        None => evidence.push_str("none answered after SIGTERM"),
    }
    let first_refused = refused.iter().map(|e| e.sent).min();
    match first_refused {
        Some(first) => {
            let _ = write!(
                evidence,
                "; refused from {} ms ({})",
                f.ms(first),
                refused.len()
            );
        }
        None => evidence.push_str("; none refused"),
    }
    if !dropped.is_empty() {
        let first = dropped.iter().map(|e| e.sent).min().expect("not empty");
        let last = dropped.iter().map(|e| e.sent).max().expect("not empty");
        let _ = write!(
            evidence,
            "; {} accepted but not answered ({}), sent {}..{} ms",
            dropped.len(),
            classes(dropped.iter().map(|e| **e)),
            f.ms(first),
            f.ms(last)
        );
        return check(2, name, Verdict::Fail, evidence);
    }
    // Accepting again after refusing: the listener came back.
    if let Some(first) = first_refused
        && let Some(late) = answered.iter().find(|e| e.sent > first && e.done > first)
        && f.ms(late.sent) > f.ms(first) + EXIT_MARGIN_MS
    {
        let _ = write!(
            evidence,
            "; accepted again at {} ms after refusing",
            f.ms(late.sent)
        );
        return check(2, name, Verdict::Unexpected, evidence);
    }
    if after.is_empty() {
        return check(
            2,
            name,
            Verdict::NotApplicable,
            "no new connection was tried after SIGTERM".into(),
        );
    }
    check(2, name, Verdict::Pass, evidence)
}

/// Check 3: Requests in flight at SIGTERM: completed or cut.
fn in_flight(f: &Facts) -> Check {
    let name = "in-flight requests";
    let all: Vec<&Exchange> = f.in_flight().collect();
    if all.is_empty() {
        return check(
            3,
            name,
            Verdict::NotApplicable,
            "no request was in flight at SIGTERM (answers are faster than the arrivals; try a slower --path)".into(),
        );
    }
    let cut: Vec<&&Exchange> = all.iter().filter(|e| failed(e)).collect();
    let last = all.iter().map(|e| e.done).max().expect("not empty");
    if cut.is_empty() {
        return check(
            3,
            name,
            Verdict::Pass,
            format!(
                "{} in flight at SIGTERM, all completed (the last at {} ms)",
                all.len(),
                f.ms(last)
            ),
        );
    }
    let at = cut.iter().map(|e| e.done).min().expect("not empty");
    check(
        3,
        name,
        Verdict::Fail,
        format!(
            "{} of {} in flight at SIGTERM cut ({}), from {} ms",
            cut.len(),
            all.len(),
            classes(cut.iter().map(|e| **e)),
            f.ms(at)
        ),
    )
}

/// Check 4: Idle keep-alive connections: closed cleanly or left to die; a
/// request sent on one after SIGTERM: answered, refused by a clean close
/// before it was sent, or lost in the race.
fn idle_keepalive(f: &Facts) -> Check {
    let name = "idle keep-alive";
    let idle = &f.seen.idle;
    if idle.is_empty() {
        return check(
            4,
            name,
            Verdict::NotApplicable,
            "no idle connection could be opened".into(),
        );
    }
    if idle.iter().all(|i| i.no_keepalive) {
        return check(
            4,
            name,
            Verdict::NotApplicable,
            "the server does not keep connections alive (Connection: close on every response)"
                .into(),
        );
    }
    let watched: Vec<_> = idle.iter().filter(|i| !i.no_keepalive).collect();
    let exit = f.exit_ms();
    // A FIN at the exit looks the same whether the program closed the
    // connection just before exiting or the kernel did as it exited: clean,
    // unless the process was killed or died of a signal.
    let exited_itself = !f.exit.killed && f.exit.code.is_some() && !f.exit_cut_requests();
    let (mut clean, mut died, mut reset, mut data, mut early) = (vec![], 0, 0, 0, 0);
    for i in &watched {
        match i.closed {
            Some((at, _)) if at < f.sigterm => early += 1,
            Some((at, Closed::Fin)) if f.ms(at) < exit - EXIT_MARGIN_MS || exited_itself => {
                clean.push(f.ms(at));
            }
            Some((at, Closed::Reset)) if f.ms(at) < exit - EXIT_MARGIN_MS => reset += 1,
            Some((_, Closed::Data)) => data += 1,
            _ => died += 1,
        }
    }
    let mut evidence = String::new();
    let _ = write!(evidence, "{} idle: ", watched.len());
    let mut parts = Vec::new();
    if !clean.is_empty() {
        let (lo, hi) = (
            clean.iter().min().expect("some"),
            clean.iter().max().expect("some"),
        );
        parts.push(format!("{} closed (FIN) at {lo}..{hi} ms", clean.len()));
    }
    if died > 0 {
        parts.push(format!("{died} left to die with the process ({exit} ms)"));
    }
    if reset > 0 {
        parts.push(format!("{reset} reset before the exit"));
    }
    if data > 0 {
        parts.push(format!("{data} got bytes nobody asked for"));
    }
    if early > 0 {
        parts.push(format!("{early} closed before SIGTERM (idle timeout)"));
    }
    evidence.push_str(&parts.join(", "));
    // Requests sent on a reused keep-alive connection after SIGTERM.
    let reused: Vec<&Exchange> = f
        .of(Client::KeepAlive)
        .filter(|e| e.reused && e.sent >= f.sigterm)
        .collect();
    let answered = reused
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Answered(_)))
        .count();
    let with_close = reused
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Answered(a) if a.close))
        .count();
    let window = f.race_window();
    let lost = |e: &&&Exchange| matches!(e.outcome, Outcome::Lost(l) if !l.partial);
    let raced = reused
        .iter()
        .filter(lost)
        .filter(|e| e.done - e.sent <= window)
        .count();
    let cut = reused
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Lost(_)))
        .count()
        - raced;
    let refused_clean = f
        .seen
        .ends
        .iter()
        .filter(|e| e.end == End::ClosedWhileIdle && e.at >= f.sigterm && f.ms(e.at) < exit)
        .count();
    let _ = write!(
        evidence,
        "; after SIGTERM {} requests on reused connections: {answered} answered ({with_close} with Connection: close), \
         {refused_clean} found closed cleanly before sending, {raced} lost in the race (eof/reset within {} ms), {cut} cut while being answered",
        reused.len() + refused_clean,
        window.as_millis()
    );
    let verdict = if data > 0 {
        Verdict::Unexpected
    } else if died > 0 || reset > 0 || raced > 0 || cut > 0 {
        Verdict::Fail
    } else if clean.is_empty() {
        Verdict::NotApplicable
    } else {
        Verdict::Pass
    };
    check(4, name, verdict, evidence)
}

/// Check 5: A busy keep-alive connection: does the last response before the
/// server closes it carry `Connection: close`.
fn busy_keepalive(f: &Facts) -> Check {
    let name = "busy keep-alive";
    // Connections whose last response came once the drain had begun and
    // that the server then ended: a response sent before it could not
    // have said close.
    let Some(drain) = f.drain_start() else {
        return check(
            5,
            name,
            Verdict::NotApplicable,
            "it never began to drain (listener open, no GOAWAY) before it ended".into(),
        );
    };
    let ended: Vec<_> = f
        .seen
        .ends
        .iter()
        .filter(|e| matches!(e.last, Some((done, _)) if done >= drain))
        .filter(|e| e.end != End::Cut)
        .collect();
    if ended.is_empty() {
        return check(
            5,
            name,
            Verdict::NotApplicable,
            format!(
                "no keep-alive connection got a response after the drain began ({} ms)",
                f.ms(drain)
            ),
        );
    }
    let open = ended.iter().filter(|e| e.end == End::Open).count();
    let said_close = ended
        .iter()
        .filter(|e| matches!(e.last, Some((_, true))))
        .count();
    let silent = ended.len() - open - said_close;
    let last_close = ended
        .iter()
        .filter_map(|e| e.last.filter(|l| l.1).map(|l| f.ms(l.0)))
        .min();
    let mut evidence = format!(
        "{} keep-alive connections answered after the drain began ({} ms) and then closed: {said_close} with Connection: close",
        ended.len() - open,
        f.ms(drain)
    );
    if let Some(first) = last_close {
        let _ = write!(evidence, " (from {first} ms)");
    }
    let _ = write!(evidence, ", {silent} closed without it");
    if open > 0 {
        let _ = write!(evidence, "; {open} still open after the process exited");
        return check(5, name, Verdict::Unexpected, evidence);
    }
    let verdict = match silent {
        0 => Verdict::Pass,
        _ => Verdict::Fail,
    };
    check(5, name, verdict, evidence)
}

/// Check 6: HTTP/2: GOAWAY sent (last stream id), open streams completed.
fn http2(f: &Facts) -> Check {
    let name = "h2 GOAWAY";
    let Some(goaway) = f.h2 else {
        return check(
            6,
            name,
            Verdict::NotApplicable,
            "the program does not speak h2c (prior knowledge)".into(),
        );
    };
    let streams: Vec<&Exchange> = f.of(Client::H2).collect();
    let sent_after = |at: Instant| streams.iter().filter(move |e| e.sent < at && e.done > at);
    let unsent = streams
        .iter()
        .filter(|e| e.outcome == Outcome::Unsent)
        .count();
    let Some(goaway) = goaway.filter(|g| g.at <= f.exited) else {
        let lost: Vec<&&Exchange> = streams
            .iter()
            .filter(|e| e.done >= f.sigterm && matches!(e.outcome, Outcome::Lost(_)))
            .collect();
        return check(
            6,
            name,
            Verdict::Fail,
            format!(
                "no GOAWAY before the exit at {} ms; {} streams lost ({})",
                f.exit_ms(),
                lost.len(),
                classes(lost.iter().map(|e| **e))
            ),
        );
    };
    let open: Vec<&&Exchange> = sent_after(goaway.at).collect();
    let cut: Vec<&&&Exchange> = open.iter().filter(|e| failed(e)).collect();
    let mut evidence = format!(
        "GOAWAY (error {}, last stream id {}) at {} ms; {} of {} open streams completed",
        goaway.error_code,
        goaway.last_stream_id,
        f.ms(goaway.at),
        open.len() - cut.len(),
        open.len()
    );
    if !cut.is_empty() {
        let _ = write!(
            evidence,
            " ({} cut: {})",
            cut.len(),
            classes(cut.iter().map(|e| ***e))
        );
    }
    let _ = write!(
        evidence,
        "; {unsent} new streams held back by the client after it"
    );
    let verdict = if goaway.error_code != 0 {
        Verdict::Unexpected
    } else if cut.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    check(6, name, verdict, evidence)
}

/// Check 7: Exit: time from SIGTERM, exit code, within the grace period or killed.
fn exit(f: &Facts) -> Check {
    let name = "exit";
    let e = f.exit;
    if e.killed {
        return check(
            7,
            name,
            Verdict::Fail,
            format!(
                "still running after the {} ms grace period: killed (SIGKILL)",
                f.grace_ms
            ),
        );
    }
    match (e.code, e.signal) {
        (Some(0), _) => check(
            7,
            name,
            Verdict::Pass,
            format!(
                "exited with code 0 at {} ms (grace {} ms)",
                e.after_ms, f.grace_ms
            ),
        ),
        (Some(code), _) => check(
            7,
            name,
            Verdict::Fail,
            format!("exited with code {code} at {} ms", e.after_ms),
        ),
        // The signal's default action: no handler, or one that re-raised
        // it after its cleanup (terminus does); what it cut is check 3's.
        (None, Some(15)) => check(
            7,
            name,
            Verdict::Pass,
            format!(
                "ended by SIGTERM's default action at {} ms (grace {} ms)",
                e.after_ms, f.grace_ms
            ),
        ),
        (None, Some(signal)) => check(
            7,
            name,
            Verdict::Unexpected,
            format!("ended by {} at {} ms", signal_name(signal), e.after_ms),
        ),
        (None, None) => check(
            7,
            name,
            Verdict::Unexpected,
            "ended with an unknown status".into(),
        ),
    }
}

/// Check 8: Startup: time to listen and to ready; accepts connections before it
/// is ready; everything before SIGTERM served.
fn startup(f: &Facts) -> Check {
    let name = "startup";
    let listen = (f.listening - f.started).as_millis();
    let ready = (f.ready - f.started).as_millis();
    let what = match f.health {
        true => "ready (health 2xx)",
        false => "first 2xx",
    };
    let mut evidence = format!("listening after {listen} ms, {what} after {ready} ms");
    if f.not_ready_answers > 0 {
        let _ = write!(
            evidence,
            "; accepted connections before it was ready ({} answers not 2xx)",
            f.not_ready_answers
        );
    }
    let before: Vec<&Exchange> = f.traffic().filter(|e| e.done <= f.sigterm).collect();
    let bad: Vec<&&Exchange> = before.iter().filter(|e| failed(e)).collect();
    let _ = write!(evidence, "; {} requests before SIGTERM", before.len());
    if !bad.is_empty() {
        let _ = write!(
            evidence,
            ", {} failed ({})",
            bad.len(),
            classes(bad.iter().map(|e| **e))
        );
        return check(8, name, Verdict::Unexpected, evidence);
    }
    evidence.push_str(", all 2xx");
    if f.seen.skipped > 0 {
        let _ = write!(
            evidence,
            "; {} arrivals skipped (too many in flight)",
            f.seen.skipped
        );
    }
    // Without a readiness path, connections accepted before the program
    // can answer are requests a load balancer would send and lose.
    let verdict = match !f.health && f.not_ready_answers > 0 {
        true => Verdict::Fail,
        false => Verdict::Pass,
    };
    check(8, name, verdict, evidence)
}
