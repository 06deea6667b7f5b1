//! Request and response heads on the fast path: parsing a client's request
//! and deciding whether the fast path takes it, the request the replica
//! gets, and the response head the client gets.

use std::mem::MaybeUninit;

use crate::config::ProxyConfig;
use crate::ops::request_id;
use crate::proxy::forward::{IDEMPOTENCY_KEY, Replay};
use crate::proxy::{ClientInfo, headers};

/// Most headers parsed in a request or response head (hyper's default).
pub(super) const MAX_HEADERS: usize = 100;

/// Most header names a `Connection` header may list on the fast path.
const MAX_CONNECTION_TOKENS: usize = 8;

/// What the fast path keeps of a request head once it decided to handle it.
pub(super) struct RequestPlan {
    /// Index of the service's host value in the head buffer, for routing.
    pub(super) host: std::ops::Range<usize>,
    /// Length of the head in the client's buffer.
    pub(super) head_len: usize,
    /// Length of the body that follows it.
    pub(super) body_len: usize,
    /// A HEAD request: the response has no body whatever it says.
    pub(super) head_method: bool,
    /// The client asked to close after this response.
    pub(super) close: bool,
    /// Whether the request may be sent again once written.
    pub(super) replay: Replay,
    /// The head the replica gets (the body follows it as it came).
    pub(super) upstream: Vec<u8>,
    /// Index of the method and of the path in the head buffer, for the
    /// access log.
    pub(super) method: std::ops::Range<usize>,
    pub(super) path: std::ops::Range<usize>,
    /// Its `X-Request-Id`: the client's, or generated.
    pub(super) request_id: http::HeaderValue,
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, passed through as it is.
    Chunked,
    /// Until the replica closes; the client connection closes after it too.
    UntilClose,
}

/// A response head from a replica, interpreted.
pub(super) struct ResponseHead {
    /// The head to send to the client.
    pub(super) head: Vec<u8>,
    /// Its length in the replica's buffer.
    pub(super) len: usize,
    /// Its status code.
    pub(super) status: u16,
    /// How its body ends.
    pub(super) framing: Framing,
    /// Whether the replica keeps the connection open after the response.
    pub(super) keep: bool,
}

/// What parsing the front of a client's input found.
pub(super) enum Parsed {
    /// A request the fast path handles (its body may not be read yet).
    Complete(RequestPlan),
    /// More bytes are needed.
    Partial,
    /// A request for hyper (or not a valid request: hyper answers it).
    NotFast,
    /// A request whose framing or host is ambiguous: refused with a 400
    /// before any of it goes anywhere, whatever a lenient parser would make
    /// of it.
    Invalid(&'static str),
}

/// Parses the request head at the front of `input`, decides whether the
/// fast path handles it and, when it does, writes the head the replica gets.
///
/// Only unambiguous requests are taken: one `Host`, at most one distinct
/// `Content-Length` of plain digits, no `Transfer-Encoding`; anything else
/// goes to hyper, which rejects what is malformed.
pub(super) fn parse_request(input: &[u8], config: &ProxyConfig, client: &ClientInfo) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(input, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotFast,
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::NotFast;
    };
    if req.version != Some(1) || method == "CONNECT" || !path.starts_with('/') {
        return Parsed::NotFast;
    }
    let mut host = None;
    let mut body_len: Option<usize> = None;
    let mut close = false;
    let mut has_key = false;
    let mut chunked = false;
    let mut given_id = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Parsed::Invalid("two Host headers");
            }
            let start = h.value.as_ptr() as usize - input.as_ptr() as usize;
            host = Some(start..start + h.value.len());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (n, body_len) {
                (Some(n), None) => body_len = Some(n),
                (Some(n), Some(m)) if n == m => {}
                (Some(_), Some(_)) => {
                    return Parsed::Invalid("two different Content-Length values");
                }
                (None, _) => return Parsed::Invalid("a Content-Length that is not a number"),
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::NotFast;
                }
            }
            if tokens(h.value).count() > MAX_CONNECTION_TOKENS {
                return Parsed::NotFast;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
            return Parsed::NotFast;
        } else if name.eq_ignore_ascii_case(IDEMPOTENCY_KEY) {
            has_key = true;
        } else if name.eq_ignore_ascii_case(request_id::HEADER) {
            given_id.get_or_insert(h.value);
        }
    }
    let Some(host) = host else {
        return Parsed::Invalid("an HTTP/1.1 request without Host");
    };
    if chunked {
        if body_len.is_some() {
            return Parsed::Invalid("both Content-Length and Transfer-Encoding");
        }
        return Parsed::NotFast;
    }
    if body_len.unwrap_or(0) > config.retry_body_limit {
        return Parsed::NotFast;
    }
    let request_id = request_id::keep_or_generate(given_id);
    let upstream = upstream_head(
        &req,
        &input[host.clone()],
        body_len,
        head_len,
        client,
        &request_id,
    );
    let offset = |s: &str| {
        let start = s.as_ptr() as usize - input.as_ptr() as usize;
        start..start + s.len()
    };
    Parsed::Complete(RequestPlan {
        method: offset(method),
        path: offset(path),
        request_id,
        host,
        head_len,
        body_len: body_len.unwrap_or(0),
        head_method: method == "HEAD",
        close,
        replay: Replay::of(method.as_bytes(), has_key, config),
        upstream,
    })
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether `name` is hop-by-hop: a standard one or named in `Connection`.
fn is_hop_by_hop(name: &str, named: &[&[u8]]) -> bool {
    headers::HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
        || named
            .iter()
            .any(|n| name.as_bytes().eq_ignore_ascii_case(n))
}

/// The header names a `Connection` header lists, among `headers`.
fn connection_named<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .collect()
}

/// The request head for the replica: the client's request line and
/// headers without the hop-by-hop ones; `Host` and `Content-Length` written
/// from the proxy's own parse (whatever `Connection` names), every
/// `X-Forwarded-For` value the client sent kept in order with the client
/// appended, `X-Forwarded-Proto` and `-Host` (`host`) set, and
/// `X-Request-Id` set to `request_id`.
fn upstream_head(
    req: &httparse::Request<'_, '_>,
    host: &[u8],
    body_len: Option<usize>,
    head_len: usize,
    client: &ClientInfo,
    request_id: &http::HeaderValue,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_len + 128);
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_named(req.headers);
    let mut prior_for: Vec<&[u8]> = Vec::new();
    let (mut host_done, mut length_done) = (false, false);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case(headers::X_FORWARDED_FOR.as_str()) {
            prior_for.push(h.value);
        } else if name.eq_ignore_ascii_case("host") {
            // Where the client put it, as it spelled it; from the parse.
            if !std::mem::replace(&mut host_done, true) {
                push_header(&mut out, name.as_bytes(), host);
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if let (Some(n), false) = (body_len, std::mem::replace(&mut length_done, true)) {
                push_header(&mut out, name.as_bytes(), n.to_string().as_bytes());
            }
        } else if !(name.eq_ignore_ascii_case(headers::X_FORWARDED_PROTO.as_str())
            || name.eq_ignore_ascii_case(headers::X_FORWARDED_HOST.as_str())
            || name.eq_ignore_ascii_case(request_id::HEADER)
            || is_hop_by_hop(name, &named))
        {
            push_header(&mut out, name.as_bytes(), h.value);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for prior in prior_for {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(client.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(&mut out, b"x-forwarded-host", host);
    push_header(
        &mut out,
        request_id::HEADER.as_bytes(),
        request_id.as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    out
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head at the front of `buf` and writes the head the
/// client gets: `HTTP/1.1`, the status and reason, the headers without the
/// hop-by-hop ones, and the framing (`Content-Length`, or
/// `Transfer-Encoding` ending in `chunked`: a chunked body passes through as
/// it is) written from the proxy's own parse, whatever `Connection` names.
/// Ambiguous framing (two lengths, a length and chunked, an encoding not
/// ending in chunked) is an error: the client gets a 502, never a body whose
/// end the proxy and the client would see in different places.
pub(super) fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let status = resp.code.unwrap_or_default();
    let mut keep = resp.version == Some(1);
    let mut length = None;
    let mut codings: Vec<&[u8]> = Vec::new();
    // Where the framing header goes in the rewritten head, and its name.
    let mut framing_at: Option<(usize, &str)> = None;
    let named = connection_named(resp.headers);
    let mut head = Vec::with_capacity(len + 32);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(itoa3(status).as_slice());
    head.push(b' ');
    head.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err("invalid content-length in the response".into()),
            }
            // Its place and spelling are kept, its value written below.
            framing_at.get_or_insert((head.len(), name));
            continue;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(tokens(h.value));
            framing_at.get_or_insert((head.len(), name));
            continue;
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep = true;
                }
            }
        }
        if is_hop_by_hop(name, &named) {
            continue;
        }
        push_header(&mut head, name.as_bytes(), h.value);
    }
    let no_body = (100..200).contains(&status) || status == 204;
    let (mut framing, header) = match (codings.split_last(), length) {
        (None, None) => (Framing::UntilClose, None),
        // A 304 (and the answer to a HEAD) may announce the length of the
        // body it does not carry; a 1xx or 204 may not.
        (None, Some(n)) => (
            Framing::Length(n),
            (!no_body).then(|| n.to_string().into_bytes()),
        ),
        (Some(_), Some(_)) => {
            return Err("both content-length and transfer-encoding in the response".into());
        }
        (Some((last, rest)), None) => {
            let chunked = |t: &&[u8]| t.eq_ignore_ascii_case(b"chunked");
            if !chunked(last) || rest.iter().any(chunked) {
                return Err("a transfer-encoding that does not end in chunked once".into());
            }
            (Framing::Chunked, Some(codings.join(&b", "[..])))
        }
    };
    if let (Some((at, name)), Some(value)) = (framing_at, header) {
        let mut line = Vec::with_capacity(name.len() + value.len() + 4);
        push_header(&mut line, name.as_bytes(), &value);
        head.splice(at..at, line);
    }
    if no_body || status == 304 {
        framing = Framing::Empty;
    }
    head.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head,
        len,
        status,
        framing,
        keep,
    }))
}

/// A status code as its three digits.
fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            peer: "127.0.0.1:5000".parse().unwrap(),
            ip: headers::client_ip("127.0.0.1".parse().unwrap()),
            proto: "http",
            activity: None,
        }
    }

    fn config() -> ProxyConfig {
        ProxyConfig {
            retry_body_limit: 1024,
            ..ProxyConfig::default()
        }
    }

    fn plan(input: &[u8]) -> RequestPlan {
        match parse_request(input, &config(), &info()) {
            Parsed::Complete(plan) => plan,
            Parsed::Partial => panic!("partial"),
            Parsed::NotFast => panic!("not fast"),
            Parsed::Invalid(why) => panic!("invalid: {why}"),
        }
    }

    #[test]
    fn plain_requests_are_fast_and_the_rest_is_hyper_s() {
        let p = plan(b"GET /a HTTP/1.1\r\nHost: x:1\r\n\r\n");
        assert_eq!((p.head_len, p.body_len, p.close), (30, 0, false));
        let p = plan(
            b"POST / HTTP/1.1\r\nhost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        assert_eq!((p.body_len, p.close), (3, true));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n", &config(), &info()),
            Parsed::Partial
        ));
        for not_fast in [
            &b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
            b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(not_fast, &config(), &info()), Parsed::NotFast),
                "{}",
                String::from_utf8_lossy(not_fast)
            );
        }
    }

    #[test]
    fn ambiguous_requests_are_refused_before_anything_is_sent() {
        for (invalid, why) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "an HTTP/1.1 request without Host"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "two Host headers"),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "two different Content-Length values",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
                "a Content-Length that is not a number",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
        ] {
            match parse_request(invalid, &config(), &info()) {
                Parsed::Invalid(reason) => assert_eq!(reason, why),
                _ => panic!("not refused: {}", String::from_utf8_lossy(invalid)),
            }
        }
    }

    #[test]
    fn the_upstream_request_drops_hop_by_hop_headers_and_adds_forwarded_ones() {
        let input = b"POST /p?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, x-secret\r\n\
            x-secret: 1\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
            Accept: */*\r\nContent-Length: 2\r\n\r\nhi";
        let p = plan(input);
        let out = [&p.upstream[..], &input[p.head_len..]].concat();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "POST /p?q=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nContent-Length: 2\r\n\
                 x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
                 x-forwarded-host: example.test\r\nx-request-id: {}\r\n\r\nhi",
                p.request_id.to_str().unwrap()
            )
        );
    }

    #[test]
    fn response_heads_are_rewritten_and_framed() {
        let input = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-version: v2\r\n\r\nhello";
        let head = parse_response(input).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(head.head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-version: v2\r\n\r\n"
        );
        assert_eq!(
            (head.framing, head.keep, head.len),
            (Framing::Length(5), true, input.len() - 5)
        );
        let chunked = parse_response(
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (chunked.framing, chunked.keep, chunked.status),
            (Framing::Chunked, false, 503)
        );
        let until_close = parse_response(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(until_close.framing, Framing::UntilClose);
        let empty = parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(empty.framing, Framing::Empty);
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
                .unwrap()
                .is_none()
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
                .is_err()
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .is_err()
        );
    }
}
