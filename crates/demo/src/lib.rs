//! dropless-demo: the apps of the graceful-shutdown talks, on `dropless-lifecycle`.
//!
//! - calc: `GET /sum?a=1&b=2` → `{"result":3}` after `--work-ms`, with an
//!   `x-op-id` per calculation that the calculation log records;
//! - `GET /datetime` → the current time in RFC 3339, as JSON;
//! - `GET /` → `Hello World!` after `HELLO_REST_REQUEST_DELAY` seconds;
//! - the game: `POST /game/{id}/move` → the session's move number (memory
//!   only), `GET /game/{id}/ws` → every move of the session on a
//!   WebSocket; `--handoff` stashes the sessions at shutdown and takes them
//!   back on first touch (`DROPLESS_STASH`).
//!
//! Every response carries `x-version`. The [`Profile`] (`v1`..`v9`)
//! switches the graceful parts off and on, to reproduce each failure of a
//! deploy: no probes, SIGTERM ignored or cutting in-flight requests, a
//! pre-stop delay, and a calculation log in tasks or batches that is lost or
//! kept at shutdown. [`run`] is the whole service and [`main`] the whole
//! process; the binary only parses [`Args`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod app;
mod args;
mod calclog;
mod error;
mod game;
mod influx;
mod logfile;
mod opid;
mod profile;
mod service;

pub use args::Args;
pub use calclog::Record;
pub use error::Error;
pub use profile::{CalcLogMode, OnSigterm, Profile};
pub use service::{main, run};
