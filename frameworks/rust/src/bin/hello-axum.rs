//! The hello app on axum, with `with_graceful_shutdown` on SIGTERM (axum's
//! graceful-shutdown example).
use axum::{Router, routing::get};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/", get(|| async {
            tokio::time::sleep(frameworks_hello::delay()).await;
            "Hello World!"
        }))
        .route("/health", get(|| async { "OK" }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", frameworks_hello::port()))
        .await
        .unwrap();
    let mut term = signal(SignalKind::terminate()).unwrap();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await
        .unwrap();
}
