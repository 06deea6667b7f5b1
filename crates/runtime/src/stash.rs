//! The stash: a per-service key → bytes store through which a retiring
//! replica hands its sessions to their next owner. Replicas reach it over
//! HTTP/1.1 on a Unix socket (mode 0600) named in their environment
//! ([`STASH_ENV`]):
//!
//! - `PUT /stash/{key}` with the bytes as body → 204; 413 above
//!   [`MAX_VALUE`]; 409 when the put comes after the key's handoff
//!   deadline (its session already moved on, see
//!   [`crate::proxy::affinity`]). `X-Dropless-Ttl: <seconds>` sets its
//!   expiry ([`DEFAULT_TTL`] otherwise).
//! - `POST /stash/{key}/take` → 200 with the bytes, and the entry is gone
//!   (a key is taken once); 404 when there is none.
//!
//! `{key}` is percent-encoded. Each entry is a file in the state directory
//! (its expiry, then its bytes), written whole and renamed into place, so a
//! restarted `serve` keeps them; a take claims the file by renaming it, so
//! two takes of one key never both get it.

use std::convert::Infallible;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::control::ControlListener;
use crate::proxy::affinity::Affinity;

/// The environment variable that gives a replica its stash's socket path.
pub const STASH_ENV: &str = "DROPLESS_STASH";
/// How long an entry is kept when its put gives no `X-Dropless-Ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
/// The largest value a put may carry (1 MiB).
pub const MAX_VALUE: usize = 1024 * 1024;
/// The longest key, in bytes once decoded (its file name is twice as long).
pub const MAX_KEY: usize = 120;
/// The header of a put that sets its entry's expiry, in seconds.
pub const TTL_HEADER: &str = "x-dropless-ttl";
/// How often expired entries are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A stash operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StashError {
    /// The key is empty or too long.
    #[error("stash key must be 1 to {MAX_KEY} bytes, not {0}")]
    Key(usize),
    /// The put came after the key's handoff deadline.
    #[error("stash put too late: the session's handoff deadline has passed and it has a new owner")]
    Late,
    /// The directory could not be read or written.
    #[error("stash {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The stash of one service: its entries' directory, and its affinity
/// (which tells a late put).
#[derive(Debug)]
pub struct Stash {
    dir: PathBuf,
    affinity: Option<Arc<Affinity>>,
}

impl Stash {
    /// The stash whose entries are in `dir` (created private, 0700).
    pub fn open(dir: &Path, affinity: Option<Arc<Affinity>>) -> Result<Self, StashError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::desired::DIR_MODE)
            .create(dir)
            .map_err(|source| io(dir, source))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            affinity,
        })
    }

    /// Keeps `value` under `key` for `ttl`, replacing what was there.
    pub fn put(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<(), StashError> {
        let path = self.path_of(key)?;
        if self.affinity.as_ref().is_some_and(|a| a.put_is_late(key)) {
            return Err(StashError::Late);
        }
        let expires = unix_ms(SystemTime::now() + ttl);
        let mut file = tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| io(&self.dir, e))?;
        file.write_all(&expires.to_be_bytes())
            .and_then(|()| file.write_all(value))
            .map_err(|e| io(file.path(), e))?;
        file.persist(&path).map_err(|e| io(&path, e.error))?;
        Ok(())
    }

    /// Takes the value under `key`, which is then gone; `None` when there
    /// is none (or it expired).
    pub fn take(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StashError> {
        let path = self.path_of(key)?;
        // The rename is the claim: of two takes, one finds no file.
        let claimed = self.dir.join(format!(".taken-{}", rand::random::<u64>()));
        match std::fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        }
        let read = std::fs::read(&claimed);
        let _ = std::fs::remove_file(&claimed);
        let bytes = read.map_err(|e| io(&path, e))?;
        Ok(live_value(bytes, SystemTime::now()))
    }

    /// Removes the expired entries (and those a take left half done).
    pub fn sweep(&self) -> Result<usize, StashError> {
        let now = unix_ms(SystemTime::now());
        let mut removed = 0;
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let stale = if name.to_string_lossy().starts_with('.') {
                true
            } else {
                let mut head = [0u8; 8];
                std::fs::File::open(&path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                    .map_or(true, |()| u64::from_be_bytes(head) <= now)
            };
            if stale && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn path_of(&self, key: &[u8]) -> Result<PathBuf, StashError> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(StashError::Key(key.len()));
        }
        let name: String = key.iter().map(|b| format!("{b:02x}")).collect();
        Ok(self.dir.join(name))
    }
}

/// The socket of service `service`'s stash under `state_dir`.
pub fn socket_path(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("stash").join(format!("{service}.sock"))
}

/// The entries' directory of service `service`'s stash under `state_dir`.
pub fn entries_dir(state_dir: &Path, service: &str) -> PathBuf {
    state_dir.join("stash").join(service)
}

/// Serves `stash` on `listener` until `stop` is cancelled, removing
/// expired entries every minute.
pub async fn serve(listener: ControlListener, stash: Arc<Stash>, stop: CancellationToken) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            accepted = listener.listener().accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let stash = Arc::clone(&stash);
                let service = hyper::service::service_fn(move |req| {
                    let stash = Arc::clone(&stash);
                    async move { Ok::<_, Infallible>(answer(&stash, req).await) }
                });
                let stop = stop.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            _ = sweep.tick() => {
                let stash = Arc::clone(&stash);
                let swept = tokio::task::spawn_blocking(move || stash.sweep()).await;
                if let Ok(Err(e)) = swept {
                    tracing::warn!("{e}");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Answers one stash request.
async fn answer(stash: &Arc<Stash>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (key, take) = match path.strip_prefix("/stash/") {
        Some(rest) => match rest.strip_suffix("/take") {
            Some(key) => (key, true),
            None => (rest, false),
        },
        None => return text(StatusCode::NOT_FOUND, "not a stash path: use /stash/{key}"),
    };
    let key: Vec<u8> = percent_encoding::percent_decode_str(key).collect();
    let method = req.method().clone();
    let stash = Arc::clone(stash);
    match (method, take) {
        (Method::PUT, false) => {
            let ttl = match req.headers().get(TTL_HEADER).map(|v| v.to_str()) {
                None => DEFAULT_TTL,
                Some(Ok(v)) => match v.trim().parse::<u64>() {
                    Ok(secs) => Duration::from_secs(secs),
                    Err(_) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "x-dropless-ttl must be whole seconds",
                        );
                    }
                },
                Some(Err(_)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "x-dropless-ttl must be whole seconds",
                    );
                }
            };
            let body = match Limited::new(req.into_body(), MAX_VALUE).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "stash values are at most 1 MiB",
                    );
                }
                Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            let put = tokio::task::spawn_blocking(move || stash.put(&key, &body, ttl)).await;
            match put.expect("a stash put does not panic") {
                Ok(()) => status(StatusCode::NO_CONTENT, Bytes::new()),
                Err(e) => error(&e),
            }
        }
        (Method::POST, true) => {
            let taken = tokio::task::spawn_blocking(move || stash.take(&key)).await;
            match taken.expect("a stash take does not panic") {
                Ok(Some(value)) => status(StatusCode::OK, Bytes::from(value)),
                Ok(None) => text(StatusCode::NOT_FOUND, "no such key"),
                Err(e) => error(&e),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT /stash/{key} or POST /stash/{key}/take",
        ),
    }
}

fn error(e: &StashError) -> Response<Full<Bytes>> {
    let code = match e {
        StashError::Key(_) => StatusCode::BAD_REQUEST,
        StashError::Late => StatusCode::CONFLICT,
        StashError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if code == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("{e}");
    }
    text(code, &e.to_string())
}

fn text(code: StatusCode, message: &str) -> Response<Full<Bytes>> {
    status(code, Bytes::from(format!("{message}\n")))
}

fn status(code: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = code;
    resp
}

/// The value of an entry file's bytes, `None` once it expired.
fn live_value(mut bytes: Vec<u8>, now: SystemTime) -> Option<Vec<u8>> {
    let expires = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    if expires <= unix_ms(now) {
        return None;
    }
    bytes.drain(..8);
    Some(bytes)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn io(path: &Path, source: std::io::Error) -> StashError {
    StashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let stash = Stash::open(dir.path(), None).unwrap();
        stash.put(b"a/b c", b"state", DEFAULT_TTL).unwrap();
        assert_eq!(stash.take(b"a/b c").unwrap(), Some(b"state".to_vec()));
        assert_eq!(stash.take(b"a/b c").unwrap(), None);
        stash.put(b"k", b"old", Duration::ZERO).unwrap();
        assert_eq!(stash.take(b"k").unwrap(), None);
        stash.put(b"k", b"x", Duration::ZERO).unwrap();
        assert_eq!(stash.sweep().unwrap(), 1);
        assert!(matches!(
            stash.put(b"", b"x", DEFAULT_TTL),
            Err(StashError::Key(0))
        ));
        let long = [b'k'; MAX_KEY + 1];
        assert!(matches!(stash.take(&long), Err(StashError::Key(_))));
    }
}
