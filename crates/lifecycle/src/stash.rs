//! The stash client: a key→bytes store that carries a session's state from
//! a retiring replica to its successor.
//!
//! `dropless serve` gives every replica `DROPLESS_STASH=/path/stash.sock`, a
//! Unix socket that speaks HTTP/1.1 (`PUT /stash/{key}` → 204, or 409 once
//! the key's handoff deadline has passed; `POST /stash/{key}/take` → 200
//! with the bytes, removed, or 404). Without a runtime (tests, Kubernetes)
//! `DROPLESS_STASH=dir:/some/path` is a directory with the same semantics:
//! a key is taken once (rename, then read).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// The environment variable that gives a replica its stash.
pub const STASH_ENV: &str = "DROPLESS_STASH";
/// Largest value the stash keeps (1 MiB).
pub const MAX_STASH_BYTES: usize = 1 << 20;
/// Time limit of one request to the stash socket.
pub const STASH_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The header that sets an entry's time to live in seconds on a put.
const TTL_HEADER: &str = "x-dropless-ttl";
/// Prefix of the directory-backed form of [`STASH_ENV`].
const DIR_PREFIX: &str = "dir:";

/// A client of one service's stash. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stash {
    backend: Backend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    /// The runtime's Unix socket.
    Socket(PathBuf),
    /// A directory: one file per key.
    Dir(PathBuf),
}

/// Why a stash operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StashError {
    /// [`STASH_ENV`] is set to something that is neither a socket path nor
    /// `dir:PATH`.
    #[error(
        "{STASH_ENV}={value:?}: expected the path of the runtime's stash socket or dir:/some/path"
    )]
    BadAddress {
        /// The value given.
        value: String,
    },
    /// The value is larger than [`MAX_STASH_BYTES`].
    #[error("stash key {key:?}: {size} bytes is over the limit of {MAX_STASH_BYTES} bytes")]
    TooLarge {
        /// The key.
        key: String,
        /// The size of the value.
        size: usize,
    },
    /// The key's handoff deadline has passed: the runtime refused the put,
    /// the successor has already started without this state.
    #[error("stash key {key:?}: put refused, the handoff deadline has passed: {reason}")]
    Late {
        /// The key.
        key: String,
        /// What the runtime said.
        reason: String,
    },
    /// The stash answered with an unexpected status.
    #[error("stash at {at}: key {key:?}: HTTP {status}: {body}")]
    Status {
        /// The socket path.
        at: String,
        /// The key.
        key: String,
        /// The status.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// The stash could not be reached or read.
    #[error("stash at {at}: {reason}")]
    Unreachable {
        /// The socket or directory path.
        at: String,
        /// What failed.
        reason: String,
    },
}

impl Stash {
    /// The stash [`STASH_ENV`] names, or `None` when it is not set (no
    /// runtime, no directory: sessions are not handed off).
    pub fn from_env() -> Result<Option<Stash>, StashError> {
        match std::env::var_os(STASH_ENV) {
            None => Ok(None),
            Some(value) => Stash::parse(&value.to_string_lossy()).map(Some),
        }
    }

    /// A stash from an address: a socket path, or `dir:PATH`.
    pub fn parse(value: &str) -> Result<Stash, StashError> {
        let bad = || StashError::BadAddress {
            value: value.to_owned(),
        };
        match value.strip_prefix(DIR_PREFIX) {
            Some("") => Err(bad()),
            Some(dir) => Ok(Stash::dir(dir)),
            None if value.trim().is_empty() => Err(bad()),
            None => Ok(Stash::socket(value)),
        }
    }

    /// The runtime's stash behind the Unix socket at `path`.
    pub fn socket(path: impl Into<PathBuf>) -> Stash {
        Stash {
            backend: Backend::Socket(path.into()),
        }
    }

    /// A stash kept in the directory `path` (created on the first put).
    /// Entries do not expire: the directory is the caller's.
    pub fn dir(path: impl Into<PathBuf>) -> Stash {
        Stash {
            backend: Backend::Dir(path.into()),
        }
    }

    /// Stores `value` under `key`, replacing what was there. From a
    /// shutdown hook ([`crate::Lifecycle::on_shutdown`]) this runs inside
    /// the grace period. A put after the key's handoff deadline is
    /// [`StashError::Late`], never silently lost.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<(), StashError> {
        self.put_inner(key, value.into(), None).await
    }

    /// As [`Stash::put`], with a time to live for the entry (the socket
    /// stash's default is 10 minutes; the directory stash ignores it).
    pub async fn put_with_ttl(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<(), StashError> {
        self.put_inner(key, value.into(), Some(ttl)).await
    }

    /// Takes the value under `key`: returned once, then gone. `None` when
    /// nothing was stashed (or another replica took it first).
    pub async fn take(&self, key: &str) -> Result<Option<Bytes>, StashError> {
        match &self.backend {
            Backend::Socket(path) => {
                let uri = format!("/stash/{}/take", encode_key(key));
                let (status, body) = request(path, Method::POST, &uri, Bytes::new(), None).await?;
                match status {
                    StatusCode::OK => Ok(Some(body)),
                    StatusCode::NOT_FOUND => Ok(None),
                    _ => Err(status_error(path, key, status, &body)),
                }
            }
            Backend::Dir(dir) => take_file(dir, key).await,
        }
    }

    async fn put_inner(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StashError> {
        if value.len() > MAX_STASH_BYTES {
            return Err(StashError::TooLarge {
                key: key.to_owned(),
                size: value.len(),
            });
        }
        match &self.backend {
            Backend::Socket(path) => {
                let uri = format!("/stash/{}", encode_key(key));
                let (status, body) = request(path, Method::PUT, &uri, value, ttl).await?;
                match status {
                    s if s.is_success() => Ok(()),
                    StatusCode::CONFLICT => Err(StashError::Late {
                        key: key.to_owned(),
                        reason: String::from_utf8_lossy(&body).trim().to_owned(),
                    }),
                    _ => Err(status_error(path, key, status, &body)),
                }
            }
            Backend::Dir(dir) => put_file(dir, key, &value).await,
        }
    }
}

/// `key` percent-encoded for a path segment: RFC 3986 unreserved
/// characters as they are, every other byte as `%XX`.
pub fn encode_key(key: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// One request on a fresh connection to the stash socket: status and body.
async fn request(
    path: &Path,
    method: Method,
    uri: &str,
    body: Bytes,
    ttl: Option<Duration>,
) -> Result<(StatusCode, Bytes), StashError> {
    let unreachable = |reason: String| StashError::Unreachable {
        at: path.display().to_string(),
        reason,
    };
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| crate::error_chain(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "stash");
        if let Some(ttl) = ttl {
            request = request.header(TTL_HEADER, ttl.as_secs().max(1));
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| crate::error_chain(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_STASH_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(STASH_REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {STASH_REQUEST_TIMEOUT:?}")))?
        .map_err(unreachable)
}

fn status_error(path: &Path, key: &str, status: StatusCode, body: &[u8]) -> StashError {
    StashError::Status {
        at: path.display().to_string(),
        key: key.to_owned(),
        status: status.as_u16(),
        body: String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// The file of `key`: a prefix keeps `.`, `..` and temporary files apart.
fn key_file(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("k_{}", encode_key(key)))
}

/// A name no other put or take of this process uses at the same time.
fn scratch_file(dir: &Path, what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{what}-{}-{n}", std::process::id()))
}

/// Writes a temporary file, then renames it over the key's: a reader never
/// sees half a value.
async fn put_file(dir: &Path, key: &str, value: &[u8]) -> Result<(), StashError> {
    let io = |e: std::io::Error| StashError::Unreachable {
        at: dir.display().to_string(),
        reason: e.to_string(),
    };
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let scratch = scratch_file(dir, "put");
    tokio::fs::write(&scratch, value).await.map_err(io)?;
    tokio::fs::rename(&scratch, key_file(dir, key))
        .await
        .map_err(io)
}

/// Renames the key's file away (one taker wins the rename), then reads it.
async fn take_file(dir: &Path, key: &str) -> Result<Option<Bytes>, StashError> {
    let io = |e: std::io::Error| StashError::Unreachable {
        at: dir.display().to_string(),
        reason: e.to_string(),
    };
    let taken = scratch_file(dir, "take");
    match tokio::fs::rename(key_file(dir, key), &taken).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    let value = tokio::fs::read(&taken).await.map_err(io)?;
    let _ = tokio::fs::remove_file(&taken).await;
    Ok(Some(Bytes::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_except_unreserved() {
        assert_eq!(encode_key("game-1_a.b~"), "game-1_a.b~");
        assert_eq!(encode_key("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(encode_key("é"), "%C3%A9");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Stash::parse("/run/s.sock").unwrap(),
            Stash::socket("/run/s.sock")
        );
        assert_eq!(Stash::parse("dir:/tmp/x").unwrap(), Stash::dir("/tmp/x"));
        for bad in ["", "dir:", "  "] {
            let error = Stash::parse(bad).unwrap_err().to_string();
            assert!(error.contains("dir:/some/path"), "{error}");
        }
    }
}
