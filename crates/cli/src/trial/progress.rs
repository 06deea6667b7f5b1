//! The progress of a trial: a bar on stderr at a terminal, plain lines on
//! stdout otherwise (a CI log).

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use dropless_load::Snapshot;
use dropless_trial::{
    report::{EventRecord, Outcome},
    run::Progress,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between two progress lines without a terminal.
pub(crate) const PLAIN_EVERY_S: u64 = 5;

/// The progress of a trial: at a terminal, a bar on stderr (seconds of
/// load, ok and failed so far) with the events printed above it as they
/// end; without one, a line on stdout per phase and event as it happens,
/// and one every [`PLAIN_EVERY_S`] seconds of load; the `--during`
/// command's output as it comes, prefixed `[cmd]`, either way; nothing with
/// `--quiet`.
pub(crate) struct Bar {
    bar: ProgressBar,
    /// Plain lines instead of the bar, from this instant.
    plain: Option<Instant>,
    /// The last second of load a plain line was printed for.
    printed_s: AtomicU64,
}

impl Bar {
    pub(crate) fn new(quiet: bool) -> Bar {
        let terminal = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
        let target = if quiet || !terminal {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar {
            bar,
            plain: (!quiet && !terminal).then(Instant::now),
            printed_s: AtomicU64::new(0),
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// A plain line `[  3.0s] text`, the time since the trial started.
    fn line(&self, text: &str) {
        if let Some(start) = self.plain {
            println!("[{:>5.1}s] {text}", start.elapsed().as_secs_f64());
        }
    }
}

impl Progress for Bar {
    fn phase(&self, text: &str) {
        self.line(text);
        self.bar.set_message(text.to_owned());
    }

    fn load_started(&self, duration: Duration) {
        self.line(&format!("load started, {} s", duration.as_secs()));
        self.bar.set_length(duration.as_secs().max(1));
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len}s {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
    }

    fn second(&self, snapshot: &Snapshot) {
        let mut text = format!(
            "{} ok, {} failed, {} in flight",
            snapshot.requests.ok, snapshot.requests.failed, snapshot.in_flight
        );
        if let Some(s) = &snapshot.sessions {
            text.push_str(&format!(
                "; sessions: {} reset, {} lost, {} dup, {} gap, {} reconnects",
                s.resets, s.lost_updates, s.duplicates, s.gaps, s.reconnects
            ));
        }
        let second = snapshot.elapsed_s as u64;
        if second >= self.printed_s.load(Ordering::Relaxed) + PLAIN_EVERY_S {
            self.printed_s.store(second, Ordering::Relaxed);
            self.line(&format!("load {second} s: {text}"));
        }
        self.bar.set_position(second);
        self.bar.set_message(text);
    }

    fn event_started(&self, name: &str) {
        self.line(&format!("{name} started"));
    }

    fn command_output(&self, line: &str) {
        if self.plain.is_some() {
            self.line(&format!("[cmd] {line}"));
        } else if !self.bar.is_hidden() {
            self.bar.println(format!("[cmd] {line}"));
        }
    }

    fn event(&self, record: &EventRecord) {
        let detail = match (record.outcome, &record.detail) {
            (Outcome::Aborted | Outcome::Failed, Some(detail)) => format!(": {detail}"),
            _ => String::new(),
        };
        let outcome = match record.outcome_text() {
            "ok" => "completed",
            other => other,
        };
        let text = format!(
            "{} {outcome}{detail} in {:.1} s",
            record.name(),
            record.ended_s - record.started_s
        );
        if self.plain.is_some() {
            self.line(&text);
        } else {
            self.bar
                .println(format!("  {:>5.1}s {text}", record.started_s));
        }
    }
}
