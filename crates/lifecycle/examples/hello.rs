//! The example of docs/lifecycle.md: a hello service with probes and a
//! graceful shutdown. It listens on 127.0.0.1 and the port in `PORT` (8080
//! without it), so it runs alone or, unchanged, as replicas of `dropless
//! serve`, which gives each replica its own `PORT`:
//!
//! ```sh
//! cargo build --release -p dropless-lifecycle --example hello
//! dropless serve --replicas 2 -- target/release/examples/hello
//! ```
//!
//! Its log lines (the lifecycle's phases, the requests cut by a grace period
//! that ran out) go to stderr through a tracing subscriber; `RUST_LOG`
//! changes the level (info by default). Behind `dropless serve` they are in
//! each replica's log file (`dropless status` lists them).

use std::io::IsTerminal;

use axum::{Router, routing::get};
use dropless_lifecycle::{Config, Lifecycle, signal::Signals};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Without a subscriber the lifecycle's `tracing` events go nowhere.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?}: expected a port number, e.g. 8080"))?,
        Err(_) => 8080,
    };
    let signals = Signals::listen()?; // SIGTERM = graceful, SIGINT = fast
    let lifecycle = Lifecycle::new(Config::default());
    let app = Router::new().route("/", get(|| async { "hello\n" }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    lifecycle.set_ready(); // /healthz: 503 → 200
    lifecycle.serve(listener, app, signals.recv()).await?; // Err if the grace period ran out
    Ok(())
}
