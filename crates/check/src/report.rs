//! The result of a check: the eight lines, what they mean, and the figures
//! behind them; printed as text, written as JSON (`--json`) and HTML
//! (`--html`, [`crate::html`]).

use std::fmt::Write as _;

use serde::Serialize;

use crate::checks::{Check, Timeline, Verdict};
use crate::meaning::Meaning;
use crate::program::Exit;

/// Exit code when every applicable check passes.
pub const EXIT_PASS: u8 = 0;
/// Exit code when the program could not be started (or never became ready).
pub const EXIT_NOT_STARTED: u8 = 1;
/// Exit code for bad usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when a check failed or saw something unexpected.
pub const EXIT_FAIL: u8 = 3;

/// The whole result (the JSON of `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The program checked.
    pub command: Vec<String>,
    /// The traffic's path.
    pub path: String,
    /// The readiness path, if given.
    pub health_path: Option<String>,
    /// Requests per second, all clients together.
    pub rate: f64,
    /// Grace period, SIGTERM to SIGKILL, in ms.
    pub grace_ms: u64,
    /// Whether every applicable check passed.
    pub passed: bool,
    /// The eight checks, in order.
    pub checks: Vec<Check>,
    /// The three lines of what it means.
    pub meaning: Meaning,
    /// How the program ended.
    pub exit: Exit,
    /// The moments behind the checks.
    pub timeline: Timeline,
    /// Requests sent by the traffic (not the readiness path).
    pub requests: usize,
    /// The last lines of the program's output.
    pub program_log_tail: Vec<String>,
}

impl Report {
    /// 0 when every applicable check passes, 3 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self.passed {
            true => EXIT_PASS,
            false => EXIT_FAIL,
        }
    }

    /// The text `dropless check` prints.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "dropless check: {}", self.command.join(" "));
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  {} {:<18} {:<14} {}",
                c.number,
                c.name,
                word(c.verdict),
                c.evidence
            );
        }
        let _ = writeln!(out, "behind dropless: {}", self.meaning.dropless);
        let _ = writeln!(
            out,
            "behind Kubernetes without a preStop hook: {}",
            self.meaning.kubernetes
        );
        let _ = match self.meaning.fixes.split_first() {
            None => writeln!(out, "smallest fix: none needed"),
            Some((first, [])) => writeln!(out, "smallest fix: {first}"),
            Some((first, rest)) => {
                writeln!(out, "smallest fix: {first} (then: {})", rest.join("; "))
            }
        };
        let _ = writeln!(
            out,
            "{}",
            match self.passed {
                true => "PASS",
                false => "FAIL",
            }
        );
        out
    }
}

/// `pass`, `FAIL`, `not applicable`, `UNEXPECTED`.
pub fn word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL",
        Verdict::NotApplicable => "not applicable",
        Verdict::Unexpected => "UNEXPECTED",
    }
}
