//! The routes: calc, datetime, hello, and the game's.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use crate::{calclog::CalcLog, game::Games};

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) work: Duration,
    pub(crate) hello_delay: Duration,
    pub(crate) calc_log: CalcLog,
}

/// The demo's routes, each response stamped with `x-version`.
pub(crate) fn router(state: AppState, games: Games, version: HeaderValue) -> Router {
    Router::new()
        .route("/sum", get(sum))
        .route("/datetime", get(datetime))
        .route("/", get(hello))
        .with_state(Arc::new(state))
        .merge(games.router())
        .layer(axum::middleware::map_response(
            move |mut response: Response| {
                let version = version.clone();
                async move {
                    response.headers_mut().insert("x-version", version);
                    response
                }
            },
        ))
}

#[derive(Debug, Deserialize)]
struct SumParams {
    a: i64,
    b: i64,
}

async fn sum(State(state): State<Arc<AppState>>, Query(params): Query<SumParams>) -> Response {
    tokio::time::sleep(state.work).await;
    let Some(result) = params.a.checked_add(params.b) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "a + b overflows a 64-bit integer"})),
        )
            .into_response();
    };
    let id = state.calc_log.next_id();
    let header = HeaderValue::from_str(&id).expect("op ids are ASCII");
    state.calc_log.record(id, result);
    (
        [("x-op-id", header)],
        Json(serde_json::json!({ "result": result })),
    )
        .into_response()
}

async fn datetime() -> Json<serde_json::Value> {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    Json(serde_json::json!({ "datetime": now }))
}

async fn hello(State(state): State<Arc<AppState>>) -> &'static str {
    tokio::time::sleep(state.hello_delay).await;
    "Hello World!"
}
