//! The hello app on dropless-lifecycle, with its defaults except the health
//! path (`/health`, the talk's).
use axum::{Router, routing::get};
use dropless_lifecycle::{Config, Lifecycle, signal::Signals};

#[tokio::main]
async fn main() {
    let signals = Signals::listen().unwrap();
    let lifecycle = Lifecycle::new(Config {
        health_path: Some("/health".to_owned()),
        ..Config::default()
    });
    let app = Router::new().route("/", get(|| async {
        tokio::time::sleep(frameworks_hello::delay()).await;
        "Hello World!"
    }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", frameworks_hello::port()))
        .await
        .unwrap();
    lifecycle.set_ready();
    lifecycle.serve(listener, app, signals.recv()).await.unwrap();
}
