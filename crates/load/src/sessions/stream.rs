//! Following one session's WebSocket stream: reconnect when it is closed,
//! resume after the last move seen, count gaps.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, protocol::CloseFrame};
use tokio_util::sync::CancellationToken;

use super::{Event, Tally};
use crate::client::Connector;

/// Pause before connecting again after a failed connect (the server may
/// be restarting): bounded retries, not a wait for a condition.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
/// The close code of a restarting service.
const SERVICE_RESTART: u16 = 1012;

/// Follows the stream at `path` of session `index` until `stop`.
pub(super) async fn follow(
    connector: Arc<Connector>,
    authority: String,
    path: String,
    index: usize,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut connected_before = false;
    while !stop.is_cancelled() {
        let after = tally.seen[index].load(Ordering::Relaxed);
        let url = format!("ws://{authority}{path}?after={after}");
        let connected = async {
            let stream = connector.stream().await.ok()?;
            let request = url.into_client_request().ok()?;
            tokio_tungstenite::client_async(request, stream).await.ok()
        };
        let socket = tokio::select! {
            socket = connected => socket,
            () = stop.cancelled() => return,
        };
        let Some((mut socket, _)) = socket else {
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_BACKOFF) => continue,
                () = stop.cancelled() => return,
            }
        };
        if connected_before {
            tally.record(index, Event::Reconnect);
        }
        connected_before = true;
        loop {
            let message = tokio::select! {
                message = socket.next() => message,
                () = stop.cancelled() => {
                    let _ = socket.close(None).await;
                    return;
                }
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(n) = text.trim().parse::<u64>() else {
                        continue;
                    };
                    let seen = tally.seen[index].swap(n, Ordering::Relaxed);
                    if n != seen + 1 {
                        tally.record(index, Event::Gap);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if frame.as_ref().map(|f: &CloseFrame| u16::from(f.code))
                        == Some(SERVICE_RESTART)
                    {
                        tally.restart_closes.fetch_add(1, Ordering::Relaxed);
                    }
                    tally.record(index, Event::Disconnect);
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    tally.record(index, Event::Disconnect);
                    break;
                }
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    }
}
