//! dropless-lifecycle: graceful startup and shutdown for tokio/hyper/axum
//! services.
//!
//! A service adopts it in about ten lines:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use dropless_lifecycle::{Config, Lifecycle, signal};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let signals = signal::Signals::listen()?; // SIGTERM = graceful, SIGINT = fast
//! let lifecycle = Lifecycle::new(Config::default());
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! lifecycle.set_ready(); // the listener is bound: /healthz answers 200 from now on
//! lifecycle.serve(listener, app, signals.recv()).await?;
//! # Ok(()) }
//! ```
//!
//! The main types:
//! - [`Lifecycle`]: the handle a service keeps. It serves HTTP/1.1 and h2c
//!   on one port ([`Lifecycle::serve`]), answers the readiness and liveness
//!   probes, tracks background tasks ([`Lifecycle::spawn`]) and runs shutdown
//!   hooks ([`Lifecycle::on_shutdown`]).
//! - [`Phase`]: the explicit state machine `Starting → Ready → PreStop →
//!   Draining → Tasks → Hooks → Stopped`, broadcast on a watch channel.
//! - [`Batcher`]: collects items and flushes them in batches, and flushes
//!   the rest at shutdown.
//! - [`signal::Signals`]: SIGTERM and SIGINT mapped to [`signal::Signal`].
//! - [`Stash`]: hands a session's state from a retiring replica to its
//!   successor (`DROPLESS_STASH`: the runtime's socket, or a directory).
//! - [`WebSocketGuard`] ([`Lifecycle::websocket`]): open WebSockets close
//!   with code 1012 after the shutdown hooks.
//! - [`listen::bind`]: the listening socket a supervisor passed (socket
//!   activation), or one bound on an address with an accept queue of
//!   [`listen::BACKLOG`] (not 128).
//!
//! Shutdown runs in this order, all of it bounded by the grace period: the
//! readiness probe turns 503; the optional pre-stop delay passes while
//! requests are still served; the listener is closed; connections drain
//! (HTTP/1.1 responses carry `Connection: close`, idle connections are
//! closed, HTTP/2 connections get GOAWAY and their open streams finish);
//! tracked tasks are awaited; hooks run in reverse order of registration
//! (a hook may [`Stash::put`] the sessions' state); open WebSockets are told
//! to close with 1012 and awaited.
//! What did not finish within the grace period is logged by name and count
//! and [`Lifecycle::serve`] returns [`Error::GraceExceeded`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batch;
mod config;
mod error;
mod health;
mod hooks;
mod lifecycle;
pub mod listen;
#[cfg(feature = "logging")]
pub mod logging;
mod phase;
mod serve;
pub mod signal;
mod stash;
mod tasks;
mod websocket;

pub use batch::{BatchConfig, Batcher, DEFAULT_BATCH_INTERVAL, DEFAULT_BATCH_MAX_ITEMS};
pub use config::{
    Config, DEFAULT_DRAIN_IDLE_WAIT, DEFAULT_GRACE, DEFAULT_HEALTH_PATH, DEFAULT_LIVENESS_PATH,
    DEFAULT_PRE_STOP, KeepAliveOnDrain,
};
pub use error::{Error, Unfinished, error_chain};
pub use lifecycle::Lifecycle;
pub use phase::Phase;
pub use serve::{BoxError, HttpBody, HttpService};
pub use stash::{MAX_STASH_BYTES, STASH_ENV, STASH_REQUEST_TIMEOUT, Stash, StashError, encode_key};
pub use websocket::{CLOSE_REASON, CLOSE_SERVICE_RESTART, WebSocketGuard};
