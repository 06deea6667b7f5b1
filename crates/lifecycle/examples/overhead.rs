//! The same handler behind plain `axum::serve` or behind
//! `dropless-lifecycle`, for `bench/lifecycle_overhead.sh`.
//!
//! Usage: `overhead axum|lifecycle` — binds 127.0.0.1:0, prints
//! `listening on http://ADDR`, serves until SIGTERM or SIGINT.

use std::io::Write;

use axum::{Router, routing::get};
use dropless_lifecycle::{Config, Lifecycle, signal::Signals};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let signals = Signals::listen()?;
    let app = Router::new().route("/", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    match mode.as_str() {
        "axum" => {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    signals.recv().await;
                })
                .await?
        }
        "lifecycle" => {
            let lifecycle = Lifecycle::new(Config::default());
            lifecycle.set_ready();
            lifecycle.serve(listener, app, signals.recv()).await?
        }
        other => return Err(format!("unknown mode {other:?}: expected axum or lifecycle").into()),
    }
    Ok(())
}
