//! The stateful game: a move counter per session, in memory only, with a
//! WebSocket stream of every move; with `--handoff` the sessions are stashed
//! at shutdown and taken back on first touch by the successor.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{
        Path, Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use dropless_lifecycle::{
    CLOSE_REASON, CLOSE_SERVICE_RESTART, Lifecycle, Stash, WebSocketGuard, error_chain,
};
use serde::Deserialize;
use tokio::sync::{OnceCell, broadcast};

/// Moves a WebSocket may fall behind before it misses some (and its client
/// sees a gap).
const STREAM_BACKLOG: usize = 1024;
/// Most moves replayed to a WebSocket that connects with `?after=N`.
const MAX_REPLAY: u64 = 100_000;

/// Every session of the process.
#[derive(Debug, Clone)]
pub(crate) struct Games {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sessions: Mutex<HashMap<String, Arc<OnceCell<Arc<Session>>>>>,
    /// With `--handoff`: where sessions go at shutdown and come from on
    /// first touch.
    stash: Option<Stash>,
    lifecycle: Lifecycle,
}

/// One game session.
#[derive(Debug)]
struct Session {
    moves: Mutex<u64>,
    stream: broadcast::Sender<u64>,
}

#[derive(Debug, Deserialize)]
struct StreamParams {
    /// The last move the client saw: moves after it are replayed first.
    #[serde(default)]
    after: u64,
}

impl Games {
    /// The game of `lifecycle`; with a stash, a shutdown hook hands every
    /// session off to it.
    pub(crate) fn new(lifecycle: &Lifecycle, stash: Option<Stash>) -> Self {
        let games = Games {
            inner: Arc::new(Inner {
                sessions: Mutex::new(HashMap::new()),
                stash,
                lifecycle: lifecycle.clone(),
            }),
        };
        if games.inner.stash.is_some() {
            let hook = games.clone();
            lifecycle.on_shutdown("game-handoff", move || async move { hook.hand_off().await });
        }
        games
    }

    /// `POST /game/{id}/move` and `GET /game/{id}/ws`.
    pub(crate) fn router(self) -> Router {
        Router::new()
            .route("/game/{id}/move", post(play))
            .route("/game/{id}/ws", get(stream))
            .with_state(self)
    }

    /// The session `id`, created on first touch: from the stash when there
    /// is one and it holds the session, else new.
    async fn session(&self, id: &str) -> Result<Arc<Session>, Response> {
        let cell = {
            let mut sessions = lock(&self.inner.sessions);
            Arc::clone(sessions.entry(id.to_owned()).or_default())
        };
        let session = cell
            .get_or_try_init(|| async {
                let moves = match &self.inner.stash {
                    Some(stash) => match stash.take(id).await {
                        Ok(Some(bytes)) => parse_moves(&bytes).ok_or_else(|| {
                            tracing::error!(session = id, "stashed session is not a move number");
                            unavailable("the stashed session is unreadable".into())
                        })?,
                        Ok(None) => 0,
                        Err(error) => {
                            tracing::warn!(session = id, error = %error_chain(&error), "cannot take the session from the stash");
                            return Err(unavailable(error.to_string()));
                        }
                    },
                    None => 0,
                };
                Ok(Arc::new(Session {
                    moves: Mutex::new(moves),
                    stream: broadcast::Sender::new(STREAM_BACKLOG),
                }))
            })
            .await?;
        Ok(Arc::clone(session))
    }

    /// Puts every session into the stash: the shutdown hook.
    async fn hand_off(&self) {
        let Some(stash) = &self.inner.stash else {
            return;
        };
        let sessions: Vec<(String, u64)> = lock(&self.inner.sessions)
            .iter()
            .filter_map(|(id, cell)| Some((id.clone(), *lock(&cell.get()?.moves))))
            .collect();
        let (mut stashed, mut failed) = (0, 0);
        for (id, moves) in &sessions {
            match stash.put(id, moves.to_string()).await {
                Ok(()) => stashed += 1,
                Err(error) => {
                    failed += 1;
                    tracing::error!(session = %id, error = %error_chain(&error), "session not handed off");
                }
            }
        }
        if failed == 0 {
            tracing::info!(sessions = stashed, "game: every session handed off");
        } else {
            tracing::error!(
                stashed,
                failed,
                "game: sessions NOT handed off (lost at exit)"
            );
        }
    }
}

impl Session {
    /// One move: the new move number, also sent to the session's streams.
    fn play(&self) -> u64 {
        let mut moves = lock(&self.moves);
        *moves += 1;
        // No stream listening is fine.
        let _ = self.stream.send(*moves);
        *moves
    }

    /// The current move number and a receiver of the moves after it.
    fn watch(&self) -> (u64, broadcast::Receiver<u64>) {
        let moves = lock(&self.moves);
        (*moves, self.stream.subscribe())
    }
}

async fn play(State(games): State<Games>, Path(id): Path<String>) -> Response {
    match games.session(&id).await {
        Ok(session) => session.play().to_string().into_response(),
        Err(response) => response,
    }
}

async fn stream(
    State(games): State<Games>,
    Path(id): Path<String>,
    Query(params): Query<StreamParams>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let session = match games.session(&id).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let guard = games.inner.lifecycle.websocket();
    upgrade.on_upgrade(move |socket| async move {
        if let Err(error) = send_moves(socket, &session, params.after, &guard).await {
            tracing::debug!(session = %id, %error, "game stream ended");
        }
    })
}

/// Replays the moves after `after`, then sends each new one, until the
/// client goes or the lifecycle closes the socket with 1012.
async fn send_moves(
    mut socket: WebSocket,
    session: &Session,
    after: u64,
    guard: &WebSocketGuard,
) -> Result<(), axum::Error> {
    let (current, mut moves) = session.watch();
    let first = after.max(current.saturating_sub(MAX_REPLAY)) + 1;
    for n in first..=current {
        socket.send(Message::Text(n.to_string().into())).await?;
    }
    loop {
        tokio::select! {
            () = guard.closing() => {
                let close = CloseFrame { code: CLOSE_SERVICE_RESTART, reason: CLOSE_REASON.into() };
                return socket.send(Message::Close(Some(close))).await;
            }
            next = moves.recv() => match next {
                Ok(n) => socket.send(Message::Text(n.to_string().into())).await?,
                // Too slow a reader misses moves: its client sees the gap.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            message = socket.recv() => match message {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
            },
        }
    }
}

fn parse_moves(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

fn unavailable(reason: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
