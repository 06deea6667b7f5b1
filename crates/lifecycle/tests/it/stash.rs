//! The stash client against a directory and against a small Unix-socket
//! server that speaks the runtime's contract.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use dropless_lifecycle::{Stash, StashError};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{net::UnixListener, task::JoinHandle};

/// The runtime's stash as the contract says: `PUT /stash/{key}` → 204, or
/// 409 for a key whose handoff deadline has passed; `POST
/// /stash/{key}/take` → 200 with the bytes (removed) or 404.
struct StashServer {
    path: PathBuf,
    /// Raw (still encoded) key → value.
    entries: Arc<Mutex<HashMap<String, Bytes>>>,
    /// Encoded keys whose puts are refused with 409.
    late: Arc<Mutex<HashSet<String>>>,
    /// The `x-dropless-ttl` header of each put, by encoded key.
    ttls: Arc<Mutex<HashMap<String, String>>>,
    _dir: tempfile::TempDir,
    _task: JoinHandle<()>,
}

impl StashServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stash.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let entries = Arc::new(Mutex::new(HashMap::new()));
        let late = Arc::new(Mutex::new(HashSet::new()));
        let ttls = Arc::new(Mutex::new(HashMap::new()));
        let state = (entries.clone(), late.clone(), ttls.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = state.clone();
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, hyper::Error>(answer(request, state).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        StashServer {
            path,
            entries,
            late,
            ttls,
            _dir: dir,
            _task: task,
        }
    }

    fn stash(&self) -> Stash {
        Stash::parse(self.path.to_str().unwrap()).unwrap()
    }
}

type State = (
    Arc<Mutex<HashMap<String, Bytes>>>,
    Arc<Mutex<HashSet<String>>>,
    Arc<Mutex<HashMap<String, String>>>,
);

async fn answer(request: Request<Incoming>, (entries, late, ttls): State) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    };
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let ttl = request.headers().get("x-dropless-ttl").cloned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let Some(rest) = path.strip_prefix("/stash/") else {
        return reply(StatusCode::NOT_FOUND, Bytes::new());
    };
    match (method, rest.strip_suffix("/take")) {
        (Method::PUT, None) => {
            if late.lock().unwrap().contains(rest) {
                return reply(
                    StatusCode::CONFLICT,
                    Bytes::from("handoff deadline passed 2 s ago"),
                );
            }
            if let Some(ttl) = ttl {
                ttls.lock()
                    .unwrap()
                    .insert(rest.to_owned(), ttl.to_str().unwrap().to_owned());
            }
            entries.lock().unwrap().insert(rest.to_owned(), body);
            reply(StatusCode::NO_CONTENT, Bytes::new())
        }
        (Method::POST, Some(key)) => match entries.lock().unwrap().remove(key) {
            Some(value) => reply(StatusCode::OK, value),
            None => reply(StatusCode::NOT_FOUND, Bytes::new()),
        },
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    }
}

#[tokio::test]
async fn socket_stash_puts_and_takes_once_with_encoded_keys() {
    let server = StashServer::start();
    let stash = server.stash();
    stash.put("game/7 é", "41").await.unwrap();
    assert!(
        server
            .entries
            .lock()
            .unwrap()
            .contains_key("game%2F7%20%C3%A9"),
        "the key travels percent-encoded"
    );
    assert_eq!(
        stash.take("game/7 é").await.unwrap(),
        Some(Bytes::from("41"))
    );
    assert_eq!(stash.take("game/7 é").await.unwrap(), None, "taken once");
    assert_eq!(stash.take("never").await.unwrap(), None);

    stash
        .put_with_ttl("t", "x", std::time::Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(server.ttls.lock().unwrap()["t"], "90");
}

#[tokio::test]
async fn socket_stash_reports_a_put_after_the_handoff_deadline() {
    let server = StashServer::start();
    server.late.lock().unwrap().insert("late-1".into());
    let error = server.stash().put("late-1", "3").await.unwrap_err();
    assert!(matches!(error, StashError::Late { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "stash key \"late-1\": put refused, the handoff deadline has passed: handoff deadline passed 2 s ago"
    );
}

#[tokio::test]
async fn socket_stash_refuses_values_over_1_mib_and_names_a_missing_socket() {
    let server = StashServer::start();
    let big = vec![0u8; dropless_lifecycle::MAX_STASH_BYTES + 1];
    let error = server.stash().put("big", big).await.unwrap_err();
    assert!(matches!(error, StashError::TooLarge { .. }), "{error}");

    let missing = Stash::socket("/nonexistent/stash.sock");
    let error = missing.take("k").await.unwrap_err().to_string();
    assert!(
        error.starts_with("stash at /nonexistent/stash.sock: "),
        "{error}"
    );
}

#[tokio::test]
async fn dir_stash_takes_a_key_once_among_concurrent_takers() {
    let dir = tempfile::tempdir().unwrap();
    let stash = Stash::parse(&format!("dir:{}", dir.path().join("s").display())).unwrap();
    stash.put("../escape", "1").await.unwrap();
    stash.put("../escape", "2").await.unwrap();
    assert!(
        !dir.path().join("escape").exists(),
        "keys stay inside the directory"
    );

    let takers: Vec<_> = (0..16)
        .map(|_| {
            let stash = stash.clone();
            tokio::spawn(async move { stash.take("../escape").await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for taker in takers {
        taken.extend(taker.await.unwrap());
    }
    assert_eq!(taken, vec![Bytes::from("2")], "one taker, the last value");
    assert_eq!(stash.take("../escape").await.unwrap(), None);
    assert_eq!(
        std::fs::read_dir(dir.path().join("s")).unwrap().count(),
        0,
        "no file left behind"
    );
}
