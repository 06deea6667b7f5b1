//! The progress bar of a trial on stderr.

use std::{io::IsTerminal, time::Duration};

use dropless_load::Snapshot;
use dropless_trial::{
    report::{EventRecord, Outcome},
    run::Progress,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr: seconds of load, ok and failed so far; events
/// printed above it as they end.
pub(crate) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub(crate) fn new(quiet: bool) -> Bar {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar { bar }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn phase(&self, text: &str) {
        self.bar.set_message(text.to_owned());
    }

    fn load_started(&self, duration: Duration) {
        self.bar.set_length(duration.as_secs().max(1));
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len}s {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
    }

    fn second(&self, snapshot: &Snapshot) {
        self.bar.set_position(snapshot.elapsed_s as u64);
        self.bar.set_message(format!(
            "{} ok, {} failed, {} in flight",
            snapshot.requests.ok, snapshot.requests.failed, snapshot.in_flight
        ));
    }

    fn event(&self, record: &EventRecord) {
        let detail = match (record.outcome, &record.detail) {
            (Outcome::Aborted | Outcome::Failed, Some(detail)) => format!(": {detail}"),
            _ => String::new(),
        };
        self.bar.println(format!(
            "  {:>5.1}s {} {}{detail} ({:.1}s)",
            record.started_s,
            record.action,
            record.outcome_text(),
            record.ended_s - record.started_s
        ));
    }
}
