//! Request smuggling and desynchronisation, tried the way an attacker
//! would: a corpus of ambiguous requests (and responses) and generated
//! pipelines go through the proxy to a backend that parses strictly and
//! records every request it receives, raw.
//!
//! The invariant, for every case: each request the backend sees was
//! decided by the proxy (it carries the proxy's `X-Forwarded-For` naming
//! the case's client address), parses strictly (one `Host`, one framing,
//! no bare LF), and leaves nothing unparsed on its connection; the client
//! got exactly one response from the backend for each of those requests, in
//! order, and nothing else but the proxy's own 4xx/5xx; and a request sent
//! after the case (same address, new connection, same pooled upstream
//! sockets) gets its own response.
//!
//! Each case comes from its own loopback address (127.1.x.y), so that
//! concurrent cases can be told apart in the backend's log.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dropless_runtime::config::Version;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::fixtures::raw::lossy;
use crate::fixtures::{self, Harness, WAIT};

/// Sent after every case: a plain request that closes the connection, so
/// that the client knows when the proxy has answered everything it will.
const SENTINEL: &[u8] = b"GET /end HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";

/// A request the backend received and parsed strictly.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    path: String,
    /// The last address of `X-Forwarded-For`: the client the proxy saw.
    client: Option<String>,
    body: Vec<u8>,
    raw: Vec<u8>,
}

/// What the backend saw.
#[derive(Debug, Default)]
struct Log {
    seen: Vec<Seen>,
    /// Bytes on a backend connection that were not a strict request: the
    /// proxy and the backend disagreed on a boundary.
    violations: Vec<String>,
    next: u64,
}

/// A raw backend: requests parsed strictly; `/r/K` answered with response
/// case K, everything else with a 200 naming the request (`x-seq`,
/// `x-path`).
struct Backend {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(serve(stream, Arc::clone(&shared)));
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, log, task }
    }

    /// The requests from `client` (an IP address), in the order received.
    fn from(&self, client: &str) -> Vec<Seen> {
        let log = self.log.lock().unwrap();
        log.seen
            .iter()
            .filter(|s| s.client.as_deref() == Some(client))
            .cloned()
            .collect()
    }

    fn check_clean(&self) {
        let log = self.log.lock().unwrap();
        assert!(
            log.violations.is_empty(),
            "the backend got bytes that were not a strict request: {:#?}",
            log.violations
        );
        let strays: Vec<_> = log
            .seen
            .iter()
            .filter(|s| s.client.as_ref().is_none_or(|c| !c.starts_with("127.1.")))
            .collect();
        assert!(
            strays.is_empty(),
            "requests the proxy did not write: {strays:#?}"
        );
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    loop {
        let parsed = loop {
            match strict_request(&buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(e) => {
                    log.lock()
                        .unwrap()
                        .violations
                        .push(format!("{e}: {:?}", lossy(&buf)));
                    return;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                // What is left is the start of a request (it parsed so far)
                // that the proxy abandoned: a client's body that broke off.
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let (path, client, body, len) = parsed;
        let raw: Vec<u8> = buf.drain(..len).collect();
        let seq = {
            let mut log = log.lock().unwrap();
            log.next += 1;
            let seq = log.next;
            log.seen.push(Seen {
                seq,
                path: path.clone(),
                client,
                body,
                raw,
            });
            seq
        };
        let (reply, close) = match path
            .strip_prefix("/r/")
            .and_then(|k| k.parse::<usize>().ok())
        {
            Some(k) => {
                let case: &ResponseCase = &response_cases()[k];
                (case.raw.clone(), case.close)
            }
            None => (
                format!(
                    "HTTP/1.1 200 OK\r\nx-seq: {seq}\r\nx-path: {path}\r\ncontent-length: 0\r\n\r\n"
                )
                .into_bytes(),
                false,
            ),
        };
        if stream.write_all(&reply).await.is_err() || close {
            return;
        }
    }
}

/// A whole request at the front of `buf`, parsed as strictly as RFC 9112
/// allows: `(path, client, body, length)`; `None` while incomplete.
#[allow(clippy::type_complexity)]
fn strict_request(buf: &[u8]) -> Result<Option<(String, Option<String>, Vec<u8>, usize)>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 256 * 1024 {
            return Err("no end of head in 256 KiB".into());
        }
        if buf.contains(&0) || bare_lf(buf) {
            return Err("NUL or bare LF in a head".into());
        }
        return Ok(None);
    };
    let head = &buf[..head_end + 4];
    if head.contains(&0) || bare_lf(head) {
        return Err("NUL or bare LF in a head".into());
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        other => return Err(format!("head does not parse: {other:?}")),
    }
    if req.version != Some(1) {
        return Err("not HTTP/1.1".into());
    }
    let all = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    if all("host").len() != 1 {
        return Err(format!("{} Host headers", all("host").len()));
    }
    let xff = all("x-forwarded-for");
    if xff.len() > 1 {
        return Err("two X-Forwarded-For headers".into());
    }
    let client = xff.first().map(|v| {
        let v = String::from_utf8_lossy(v);
        v.rsplit(',').next().unwrap_or_default().trim().to_string()
    });
    let lengths = all("content-length");
    let codings = all("transfer-encoding");
    let rest = &buf[head.len()..];
    let (body, body_len) = match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => (Vec::new(), 0),
        ([n], []) => {
            let n = std::str::from_utf8(n)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or("a content-length that is not plain digits")?;
            if rest.len() < n {
                return Ok(None);
            }
            (rest[..n].to_vec(), n)
        }
        ([], [te]) if te.eq_ignore_ascii_case(b"chunked") => match strict_dechunk(rest)? {
            Some(decoded) => decoded,
            None => return Ok(None),
        },
        _ => return Err("ambiguous framing".into()),
    };
    let path = req.path.unwrap_or_default().to_string();
    Ok(Some((path, client, body, head.len() + body_len)))
}

fn bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// A chunked body at the front of `bytes`, strictly: `(data, length)`.
fn strict_dechunk(bytes: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &bytes[at..at + end];
        if bare_lf(line) {
            return Err("bare LF in a chunk size line".into());
        }
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("chunk size {:?}", lossy(line)))?;
        at += end + 2;
        if size == 0 {
            loop {
                let Some(end) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((data, at)));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return Ok(None);
        }
        data.extend_from_slice(&bytes[at..at + size]);
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// A response the client got.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The responses in `bytes` (everything a connection got until it
/// closed), read as a strict client would; what follows the last whole
/// response is returned too.
fn responses(mut bytes: &[u8]) -> (Vec<Got>, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(bytes) else {
            return (out, bytes.to_vec());
        };
        let status = resp.code.unwrap_or_default();
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let rest = &bytes[n..];
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let (body, used) = if status == 204 || status == 304 || (100..200).contains(&status) {
            (Vec::new(), 0)
        } else if find("transfer-encoding").is_some() {
            match strict_dechunk(rest) {
                Ok(Some(decoded)) => decoded,
                _ => return (out, bytes.to_vec()),
            }
        } else if let Some(len) = find("content-length") {
            let len: usize = len.parse().expect("a content-length from the proxy");
            if rest.len() < len {
                return (out, bytes.to_vec());
            }
            (rest[..len].to_vec(), len)
        } else {
            (rest.to_vec(), rest.len())
        };
        out.push(Got {
            status,
            headers,
            body,
        });
        bytes = &rest[used..];
        if (100..200).contains(&status) {
            out.pop();
        }
    }
}

/// A connection to `proxy` from `ip`.
async fn connect_from(ip: Ipv4Addr, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    tokio::time::timeout(WAIT, socket.connect(proxy))
        .await
        .expect("connect in time")
        .expect("connect to the proxy")
}

/// Sends `bytes` on a new connection from `ip` and reads until the proxy
/// closes it.
async fn exchange(ip: Ipv4Addr, proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = connect_from(ip, proxy).await;
    // The proxy may close before it read everything (a 400): not an error.
    let _ = stream.write_all(bytes).await;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the proxy never closed; got {:?}", lossy(&got)));
    got
}

/// A fresh client address for each case.
fn next_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8)
}

/// What the client must get for the first request of a case.
#[derive(Debug, Clone, Copy)]
enum First {
    /// Whatever the proxy decided, as long as the invariant holds.
    Any,
    /// This status from the proxy itself, and the backend sees nothing.
    Refused(u16),
    /// A response from the backend.
    Served,
}

/// Runs one request case and checks the invariant; returns what the
/// backend saw from it.
async fn check_case(h: &Harness, backend: &Backend, name: &str, bytes: &[u8], first: First) {
    let ip = next_ip();
    let got = exchange(ip, h.addr, &[bytes, SENTINEL].concat()).await;
    let (got, rest) = responses(&got);
    let seen = backend.from(&ip.to_string());
    let context = || {
        format!(
            "case {name}: sent {:?}\nclient got {got:#?} then {:?}\nbackend saw {:#?}",
            lossy(bytes),
            lossy(&rest),
            seen.iter().map(|s| lossy(&s.raw)).collect::<Vec<_>>()
        )
    };
    assert!(rest.is_empty(), "bytes that are no response: {}", context());
    let served: Vec<u64> = got
        .iter()
        .filter_map(|g| g.header("x-seq").map(|s| s.parse().unwrap()))
        .collect();
    let executed: Vec<u64> = seen.iter().map(|s| s.seq).collect();
    assert_eq!(
        served,
        executed,
        "each request the backend executed must be answered to this client, once and in order: {}",
        context()
    );
    // Anything else is the proxy's own refusal (from its error path, or
    // hyper's answer to a head that does not parse).
    for g in got.iter().filter(|g| g.header("x-seq").is_none()) {
        assert!(
            g.status >= 400,
            "a response that neither the backend nor the proxy wrote: {}",
            context()
        );
    }
    match first {
        First::Any => {}
        First::Refused(status) => {
            assert_eq!(got.first().map(|g| g.status), Some(status), "{}", context());
            // Nothing of the case reached the backend (the sentinel may, when
            // the connection stayed in step).
            assert!(seen.iter().all(|s| s.path == "/end"), "{}", context());
        }
        First::Served => assert!(
            got.first().is_some_and(|g| g.header("x-seq").is_some()),
            "{}",
            context()
        ),
    }
    // A request after the case gets its own response, not one left over.
    let victim = b"GET /victim HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let after = exchange(ip, h.addr, victim).await;
    let (after, _) = responses(&after);
    assert_eq!(after.len(), 1, "{}", context());
    assert_eq!(after[0].header("x-path"), Some("/victim"), "{}", context());
}

/// The request corpus: `(name, bytes, what the first request gets)`.
fn request_cases() -> Vec<(&'static str, Vec<u8>, First)> {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let n = smuggled.len();
    let chunked_smuggled = format!("{n:x}\r\n{smuggled}\r\n0\r\n\r\n");
    let cases: Vec<(&'static str, String, First)> = vec![
        ("plain", "GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Served),
        ("connection names content-length", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nConnection: content-length\r\nContent-Length: {n}\r\n\r\n{smuggled}"), First::Served),
        ("connection names content-length, close", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, Content-Length\r\nContent-Length: {n}\r\n\r\n{smuggled}"), First::Served),
        ("connection names transfer-encoding", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggled}"), First::Served),
        ("connection names host", "GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: host\r\n\r\n".into(), First::Served),
        ("connection names both framings", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nConnection: content-length, transfer-encoding\r\nContent-Length: {n}\r\n\r\n{smuggled}"), First::Served),
        ("connection names x-forwarded-for", "GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: x-forwarded-for\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n".into(), First::Served),
        ("cl then te", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("te then cl", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("duplicate cl, same", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into(), First::Any),
        ("duplicate cl, different", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{smuggled}"), First::Refused(400)),
        ("cl list", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: {n}, {n}\r\n\r\n{smuggled}"), First::Any),
        ("cl list, different", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0, {n}\r\n\r\n{smuggled}"), First::Refused(400)),
        ("cl plus sign", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: +{n}\r\n\r\n{smuggled}"), First::Refused(400)),
        ("cl negative", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: -1\r\n\r\nx".into(), First::Refused(400)),
        ("cl leading space", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length:  3\r\n\r\nabc".into(), First::Served),
        ("cl huge", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 99999999999999999999999\r\n\r\nabc".into(), First::Refused(400)),
        ("cl overflow u64", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 18446744073709551616\r\n\r\nabc".into(), First::Refused(400)),
        ("cl hex", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0x10\r\n\r\nabc".into(), First::Refused(400)),
        ("cl empty", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: \r\n\r\nabc".into(), First::Refused(400)),
        ("cl with letters", "POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3a\r\n\r\nabc".into(), First::Refused(400)),
        ("te chunked, identity", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("te identity", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: identity\r\n\r\n{smuggled}"), First::Refused(400)),
        ("te twice", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggled}"), First::Any),
        ("te chunked then identity headers", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("te xchunked", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("te uppercase", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: CHUNKED\r\n\r\n{chunked_smuggled}"), First::Any),
        ("te tab", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\tchunked\r\n\r\n{chunked_smuggled}"), First::Any),
        ("te space before colon", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("cl space before colon", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length : {n}\r\n\r\n{smuggled}"), First::Refused(400)),
        ("chunk size overflow", "POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n".into(), First::Refused(400)),
        ("chunk size negative", "POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n".into(), First::Refused(400)),
        ("chunk lines with bare LF", "POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n".into(), First::Any),
        ("chunk data without CRLF", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX{chunked_smuggled}"), First::Refused(400)),
        ("chunk extension", "POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n".into(), First::Served),
        ("chunk trailer", "POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n".into(), First::Served),
        ("te on http/1.0", format!("POST /a HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("http/1.0 with cl", "POST /a HTTP/1.0\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc".into(), First::Served),
        ("obs-fold", "GET /a HTTP/1.1\r\nHost: app.test\r\nX-A: a\r\n b\r\n\r\n".into(), First::Any),
        ("obs-fold in cl", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n {n}\r\n\r\n{smuggled}"), First::Refused(400)),
        ("obs-fold in te", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n{chunked_smuggled}"), First::Refused(400)),
        ("bare LF head", "GET /a HTTP/1.1\nHost: app.test\n\n".into(), First::Any),
        ("bare CR", "GET /a HTTP/1.1\rHost: app.test\r\n\r\n".into(), First::Refused(400)),
        ("NUL in a value", "GET /a HTTP/1.1\r\nHost: app.test\r\nX-A: a\0b\r\n\r\n".into(), First::Refused(400)),
        ("NUL in the path", "GET /a\0b HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Refused(400)),
        ("space in a header name", "GET /a HTTP/1.1\r\nHost: app.test\r\nX A: b\r\n\r\n".into(), First::Refused(400)),
        ("absolute form", "GET http://app.test/a HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Served),
        ("absolute form, other host", "GET http://app.test/a HTTP/1.1\r\nHost: other.test\r\n\r\n".into(), First::Served),
        ("absolute form without host", "GET http://app.test/a HTTP/1.1\r\n\r\n".into(), First::Refused(400)),
        ("no host", "GET /a HTTP/1.1\r\n\r\n".into(), First::Refused(400)),
        ("no host, post", format!("POST /a HTTP/1.1\r\nContent-Length: {n}\r\n\r\n{smuggled}"), First::Refused(400)),
        ("two hosts", "GET /a HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n".into(), First::Refused(400)),
        ("two different hosts", "GET /a HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n".into(), First::Refused(400)),
        ("host list", "GET /a HTTP/1.1\r\nHost: app.test, other.test\r\n\r\n".into(), First::Any),
        ("empty host", "GET /a HTTP/1.1\r\nHost: \r\n\r\n".into(), First::Any),
        ("http/1.0 without host", "GET /a HTTP/1.0\r\n\r\n".into(), First::Served),
        ("pipeline of three", "GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: app.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Served),
        ("pipeline, malformed first", "GET /1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Refused(400)),
        ("pipeline, malformed second", "GET /1 HTTP/1.1\r\nHost: app.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: app.test\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Served),
        ("pipeline, body then request", "POST /1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Served),
        ("pipeline, chunked then request", "POST /1 HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Served),
        ("pipeline, short body", "POST /1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc".into(), First::Any),
        ("expect 100-continue", "POST /a HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc".into(), First::Served),
        ("upgrade to a backend that does not", "GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".into(), First::Served),
        ("close with a body", format!("POST /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n{smuggled}"), First::Served),
        ("get with a body", format!("GET /a HTTP/1.1\r\nHost: app.test\r\nContent-Length: {n}\r\n\r\n{smuggled}"), First::Served),
        ("get with a chunked body", format!("GET /a HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_smuggled}"), First::Served),
        ("extra spaces in the request line", "GET  /a HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Refused(400)),
        ("unknown version", "GET /a HTTP/1.2\r\nHost: app.test\r\n\r\n".into(), First::Any),
        ("version 2 over h1", "GET /a HTTP/2.0\r\nHost: app.test\r\n\r\n".into(), First::Any),
        ("lowercase method", "get /a HTTP/1.1\r\nHost: app.test\r\n\r\n".into(), First::Any),
        ("connect", "CONNECT app.test:80 HTTP/1.1\r\nHost: app.test:80\r\n\r\n".into(), First::Any),
        ("hop-by-hop headers", "GET /a HTTP/1.1\r\nHost: app.test\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\r\n".into(), First::Served),
        ("two x-forwarded-for", "GET /a HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n".into(), First::Served),
        ("head too large", format!("GET /a HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024)), First::Refused(431)),
        ("too many headers", format!("GET /a HTTP/1.1\r\nHost: app.test\r\n{}\r\n", "X-A: 1\r\n".repeat(120)), First::Any),
    ];
    cases
        .into_iter()
        .map(|(name, bytes, first)| (name, bytes.into_bytes(), first))
        .collect()
}

/// A response the backend sends for `/r/K`.
struct ResponseCase {
    name: &'static str,
    raw: Vec<u8>,
    /// The backend closes its connection after it.
    close: bool,
    /// The body the client must get with a 2xx, or `None` for a 502 (or
    /// anything, with `any`).
    body: Option<&'static [u8]>,
    /// Whatever the proxy makes of it, as long as nothing desynchronises.
    any: bool,
}

fn response_cases() -> &'static [ResponseCase] {
    static CASES: std::sync::OnceLock<Vec<ResponseCase>> = std::sync::OnceLock::new();
    CASES.get_or_init(|| {
        let inner = "HTTP/1.1 200 OK\r\nx-path: /victim\r\nContent-Length: 4\r\n\r\nevil";
        let chunked_inner = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
        let case = |name, raw: String, close, body, any| ResponseCase {
            name,
            raw: raw.into_bytes(),
            close,
            body,
            any,
        };
        let inner_body: &'static [u8] = Box::leak(inner.as_bytes().to_vec().into_boxed_slice());
        vec![
            case("connection names content-length", format!("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{inner}", inner.len()), false, Some(inner_body), false),
            case("connection names transfer-encoding", format!("HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_inner}"), false, Some(inner_body), false),
            case("cl and te", format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_inner}"), false, None, false),
            case("two different cl", format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{inner}", 5 + inner.len()), false, None, false),
            case("te chunked, identity", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunked_inner}"), false, None, false),
            case("cl plus sign", format!("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello{inner}"), false, None, false),
            case("cl huge", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello".into(), false, None, false),
            case("te identity", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello{inner}"), false, None, false),
            case("interim then final", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".into(), false, Some(b"hello"), false),
            case("204 with a body", format!("HTTP/1.1 204 No Content\r\nContent-Length: {}\r\n\r\n{inner}", inner.len()), false, None, true),
            case("304 with a body", format!("HTTP/1.1 304 Not Modified\r\nContent-Length: {}\r\n\r\n{inner}", inner.len()), false, None, true),
            case("a second response after the first", format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{inner}"), false, Some(b"hello"), false),
            case("chunk size overflow", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n".into(), false, None, true),
            case("bare LF head", "HTTP/1.1 200 OK\nContent-Length: 5\n\nhello".into(), false, None, true),
            case("obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello".into(), false, None, true),
            case("until close", "HTTP/1.1 200 OK\r\n\r\nhello".into(), true, Some(b"hello"), false),
            case("until close with connection naming content-length", "HTTP/1.1 200 OK\r\nConnection: content-length\r\n\r\nhello".into(), true, Some(b"hello"), false),
        ]
    })
}

/// Starts a proxy (one thread, so that requests share pooled upstream
/// sockets; short timeouts, so that short bodies end soon) in front of a
/// fresh strict backend.
async fn start() -> (tempfile::TempDir, Harness, Backend) {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = fixtures::service("web", Version::target(backend.addr), 1);
    service.probe.path = String::new();
    let mut config = fixtures::config(dir.path(), vec![service]);
    config.proxy.threads = 1;
    config.proxy.header_read_timeout = Duration::from_secs(1);
    config.proxy.body_read_timeout = Duration::from_secs(1);
    let h = Harness::start(config).await;
    h.wait_routable(1).await;
    (dir, h, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_of_the_corpus_is_smuggled_or_desynchronised() {
    let (_dir, h, backend) = start().await;
    let cases = request_cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let h = &h;
    let backend = &backend;
    let checks = cases.iter().map(|(name, bytes, first)| async move {
        check_case(h, backend, name, bytes, *first).await;
    });
    futures_util::future::join_all(checks).await;
    backend.check_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smuggling_request_reaches_the_backend_as_one_post_with_its_body() {
    let (_dir, h, backend) = start().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let ip = next_ip();
    let request = format!(
        "POST /a HTTP/1.1\r\nHost: app.test\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    exchange(ip, h.addr, &[request.as_bytes(), SENTINEL].concat()).await;
    let seen = backend.from(&ip.to_string());
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/end"]);
    assert_eq!(seen[0].body, smuggled.as_bytes());
    backend.check_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_of_the_corpus_desynchronises_the_next_request() {
    let (_dir, h, backend) = start().await;
    for (k, case) in response_cases().iter().enumerate() {
        let ip = next_ip();
        let request = format!(
            "GET /r/{k} HTTP/1.1\r\nHost: app.test\r\n\r\nGET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        );
        let got = exchange(ip, h.addr, request.as_bytes()).await;
        let (got, rest) = responses(&got);
        let context = format!(
            "response case {}: client got {got:#?} then {:?}",
            case.name,
            lossy(&rest)
        );
        let first = got
            .first()
            .unwrap_or_else(|| panic!("no response: {context}"));
        if !case.any {
            match case.body {
                Some(body) => {
                    assert_eq!(first.status / 100, 2, "{context}");
                    assert_eq!(first.body, body, "{context}");
                }
                None => {
                    assert_eq!(first.status, 502, "{context}");
                    assert_eq!(
                        first.header("x-dropless-error"),
                        Some("upstream"),
                        "{context}"
                    );
                }
            }
        }
        // Whatever came of it, the next request on the connection (if it
        // stayed open) and on a new one get their own responses.
        for g in &got[1..] {
            assert_eq!(g.header("x-path"), Some("/after"), "{context}");
        }
        let victim = b"GET /victim HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
        let (after, _) = responses(&exchange(ip, h.addr, victim).await);
        assert_eq!(after.len(), 1, "{context}");
        assert_eq!(
            after[0].header("x-path"),
            Some("/victim"),
            "{context}: victim got {after:#?}"
        );
        assert!(after[0].header("x-seq").is_some(), "{context}");
    }
    backend.check_clean();
}

/// A generated request: each part drawn from valid and hostile choices.
#[derive(Debug, Clone)]
struct GenRequest {
    method: &'static str,
    host: &'static str,
    framing: u8,
    connection: &'static str,
    body: Vec<u8>,
}

impl GenRequest {
    fn bytes(&self, i: usize) -> Vec<u8> {
        let mut head = format!("{} /g{i} HTTP/1.1\r\n{}", self.method, self.host);
        let n = self.body.len();
        let mut body = self.body.clone();
        match self.framing {
            0 => body.clear(),
            1 => head += &format!("Content-Length: {n}\r\n"),
            2 => head += &format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"),
            3 => head += &format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1),
            4 => {
                head += "Transfer-Encoding: chunked\r\n";
                body = [format!("{n:x}\r\n").as_bytes(), &body, b"\r\n0\r\n\r\n"].concat();
            }
            5 => {
                head += &format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n");
            }
            6 => {
                head += "Transfer-Encoding: chunked, identity\r\n";
                body = [format!("{n:x}\r\n").as_bytes(), &body, b"\r\n0\r\n\r\n"].concat();
            }
            _ => head += &format!("Content-Length: +{n}\r\n"),
        }
        head += self.connection;
        head += "\r\n";
        [head.as_bytes(), &body].concat()
    }
}

fn gen_request() -> impl Strategy<Value = GenRequest> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]);
    let host = prop::sample::select(vec![
        "Host: app.test\r\n",
        "Host: app.test\r\n",
        "",
        "Host: app.test\r\nHost: app.test\r\n",
    ]);
    let connection = prop::sample::select(vec![
        "",
        "Connection: content-length\r\n",
        "Connection: transfer-encoding\r\n",
        "Connection: host\r\n",
        "Connection: keep-alive\r\n",
        "X-Forwarded-For: 10.1.1.1\r\n",
    ]);
    let piece = prop::sample::select(vec![
        &b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"[..],
        b"0\r\n\r\n",
        b"abc",
        b"\r\n",
        b"Content-Length: 5\r\n",
    ]);
    let body = prop::collection::vec(piece, 0..3).prop_map(|p| p.concat());
    (method, host, 0u8..8, connection, body).prop_map(
        |(method, host, framing, connection, body)| GenRequest {
            method,
            host,
            framing,
            connection,
            body,
        },
    )
}

#[test]
fn generated_pipelines_are_never_smuggled_or_desynchronised() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_dir, h, backend) = runtime.block_on(start());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let pipelines = prop::collection::vec(gen_request(), 1..4);
    runner
        .run(&pipelines, |pipeline| {
            let bytes: Vec<u8> = pipeline
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.bytes(i))
                .collect();
            runtime.block_on(check_case(&h, &backend, "generated", &bytes, First::Any));
            Ok(())
        })
        .unwrap();
    runtime.block_on(async { backend.check_clean() });
}
