//! WebSockets at shutdown: open through the drain and the hooks, then
//! closed with 1012.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message},
    },
    response::Response,
    routing::get,
};
use dropless_lifecycle::{
    CLOSE_REASON, CLOSE_SERVICE_RESTART, Config, Lifecycle, Phase, signal::Signal,
};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode};

use crate::fixtures::PATIENCE;

type Order = Arc<Mutex<Vec<&'static str>>>;

async fn ws(
    upgrade: WebSocketUpgrade,
    State((lifecycle, order)): State<(Lifecycle, Order)>,
) -> Response {
    let guard = lifecycle.websocket();
    upgrade.on_upgrade(move |mut socket| async move {
        let _ = socket.send(Message::Text("hello".into())).await;
        guard.closing().await;
        order.lock().unwrap().push("close");
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: CLOSE_SERVICE_RESTART,
                reason: CLOSE_REASON.into(),
            })))
            .await;
    })
}

#[tokio::test]
async fn websockets_stay_open_through_the_hooks_then_close_with_1012() {
    let lifecycle = Lifecycle::new(Config::default());
    let order: Order = Arc::default();
    lifecycle.on_shutdown("stash", {
        let order = order.clone();
        move || async move { order.lock().unwrap().push("stash") }
    });
    let app = Router::new()
        .route("/ws", get(ws))
        .with_state((lifecycle.clone(), order.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    lifecycle.set_ready();
    let (trigger, shutdown) = tokio::sync::oneshot::channel::<Signal>();
    let served = tokio::spawn({
        let lifecycle = lifecycle.clone();
        async move {
            lifecycle
                .serve(listener, app, async move { shutdown.await.unwrap() })
                .await
        }
    });

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let hello = socket.next().await.unwrap().unwrap();
    assert_eq!(hello, tungstenite::Message::Text("hello".into()));
    trigger.send(Signal::Terminate).unwrap();

    let close = tokio::time::timeout(PATIENCE, socket.next())
        .await
        .expect("no close frame in time")
        .unwrap()
        .unwrap();
    let tungstenite::Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}");
    };
    assert_eq!(frame.code, CloseCode::Restart);
    assert_eq!(u16::from(frame.code), 1012);
    assert_eq!(
        *order.lock().unwrap(),
        ["stash", "close"],
        "closed after the hooks"
    );
    tokio::time::timeout(PATIENCE, served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(lifecycle.phase(), Phase::Stopped);
}
