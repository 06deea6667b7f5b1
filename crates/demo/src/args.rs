//! The demo service's command line.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::Profile;

/// Default port when neither `--port` nor `PORT` is given.
pub const DEFAULT_PORT: u16 = 8080;
/// Default time `/sum` takes (the Elixir graceful-shutdown demo's calculation sleeps 100 ms).
pub const DEFAULT_WORK_MS: u64 = 100;
/// Default delay of `GET /` in seconds (the "Adventures in zero-downtime" talk's hello app).
pub const DEFAULT_HELLO_DELAY_S: f64 = 1.0;

/// The demo service: calc (`/sum`), `/datetime` and hello (`/`) on
/// dropless-lifecycle, with profiles v1..v9 that switch the graceful parts
/// off and on to reproduce each failure of a deploy.
///
/// Routes: `GET /sum?a=1&b=2` → `{"result":3}` (with `x-op-id`),
/// `GET /datetime` → `{"datetime":"<RFC 3339>"}`, `GET /` → `Hello World!`,
/// `POST /game/{id}/move` → the session's move number, `GET /game/{id}/ws`
/// → the session's moves on a WebSocket (`?after=N` replays from N+1);
/// probes `/healthz` (readiness) and `/livez` (liveness) except in v1. Every
/// response has `x-version`. Once the port is bound the service prints
/// `listening on http://ADDR` on stdout.
///
/// Profiles (the v1..v9 table of the Elixir graceful-shutdown talk, reproduced):
///   v1  no health endpoints; SIGTERM ignored (lives until SIGKILL)
///   v2  health endpoints; SIGTERM ignored
///   v3  graceful on SIGTERM: stop accepting, finish in-flight, Connection: close
///   v4  exits at once on SIGTERM: in-flight requests are cut
///   v5  readiness 503 and --pre-stop delay still serving, then graceful
///   v6  as v5, calculation log in untracked tasks (--log-delay): lost at shutdown
///   v7  as v6, the tasks are awaited: nothing lost
///   v8  as v5, calculation log in batches (--batch-size/--batch-interval): not flushed
///   v9  as v8, the last batch is flushed at shutdown: nothing lost
///
/// The calculation log goes to InfluxDB 1.x (--influx-url) or, without it,
/// to a JSON-lines file (--log-file). SIGINT (Ctrl-C) always stops the
/// service quickly. Exit codes: 0 stopped cleanly, 1 shutdown exceeded the
/// grace period, v7/v9 could not write every calculation within it, or
/// another runtime error, 2 bad flags or an unreachable InfluxDB at start.
#[derive(Debug, Clone, Parser)]
// A flag given twice takes its last value: the trial passes `--grace` and a
// scenario's `demo_args` may override it.
#[command(
    name = "dropless-demo",
    version,
    verbatim_doc_comment,
    args_override_self = true
)]
pub struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Behaviour profile, v1..v9 (see above).
    #[arg(long, value_enum, default_value_t = Profile::V9)]
    pub profile: Profile,

    /// Version label sent in the `x-version` header of every response.
    #[arg(long = "version-label", env = "VERSION", default_value = "v1")]
    pub version_label: String,

    /// How long `/sum` works before answering, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_WORK_MS)]
    pub work_ms: u64,

    /// Delay of `GET /` in seconds (env HELLO_REST_REQUEST_DELAY).
    #[arg(long, env = "HELLO_REST_REQUEST_DELAY", default_value_t = DEFAULT_HELLO_DELAY_S)]
    pub hello_delay: f64,

    /// Wait this long before binding the port, to emulate a slow boot
    /// (e.g. `2s`, `500ms`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub startup_delay: Duration,

    /// Pre-stop delay of v5..v9: readiness is 503 while requests are still
    /// served.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub pre_stop: Duration,

    /// Budget for the whole graceful shutdown; what is still running then is
    /// logged and the process exits 1. The final flush of the calculation
    /// log retries a failing database until 0.5 s before it ends.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub grace: Duration,

    /// InfluxDB 1.x base URL for the calculation log, e.g.
    /// `http://127.0.0.1:8086`.
    #[arg(long)]
    pub influx_url: Option<String>,

    /// InfluxDB database (created at start if missing).
    #[arg(long, default_value = "calc")]
    pub influx_db: String,

    /// Without --influx-url: append the calculation log to this file as JSON
    /// lines (fsync at each flush).
    #[arg(long, conflicts_with = "influx_url")]
    pub log_file: Option<PathBuf>,

    /// v6/v7: how long each calculation's log task waits before it writes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub log_delay: Duration,

    /// v8/v9: flush the calculation log at this many records.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,

    /// Game sessions survive a restart: stash every session at shutdown and
    /// take it back on first touch, through DROPLESS_STASH (set by dropless
    /// serve, or dir:/some/path). Off: sessions start again at move 1.
    #[arg(long)]
    pub handoff: bool,

    /// v8/v9: flush the calculation log at this interval.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub batch_interval: Duration,
}

impl Args {
    /// Checks what clap cannot: one message naming the flag and the fix.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let usage = |msg: String| Err(crate::Error::Usage(msg));
        if !self.hello_delay.is_finite() || self.hello_delay < 0.0 {
            return usage(format!(
                "--hello-delay / HELLO_REST_REQUEST_DELAY {}: expected a number of seconds ≥ 0",
                self.hello_delay
            ));
        }
        if self.batch_size == 0 {
            return usage("--batch-size 0: expected at least 1".into());
        }
        if self.batch_interval.is_zero() {
            return usage("--batch-interval 0s: expected a positive duration".into());
        }
        if http::HeaderValue::from_str(&self.version_label).is_err() {
            return usage(format!(
                "--version-label / VERSION {:?}: must be printable ASCII (it is sent as a header)",
                self.version_label
            ));
        }
        Ok(())
    }

    /// The delay of `GET /`.
    pub fn hello_delay(&self) -> Duration {
        Duration::from_secs_f64(self.hello_delay)
    }
}
