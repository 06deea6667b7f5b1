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

/// What a response head is parsed into: the bytes an HTTP/1.1 client gets,
/// or where its fields are in the replica's buffer, for hyper to frame
/// (HTTP/2, HTTPS): one parse either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Bytes,
    Fields,
}

/// The response head as the client gets it.
pub(super) enum Out {
    /// The head's bytes, rewritten.
    Bytes(Vec<u8>),
    /// The fields passed on, as the positions of their name and value in
    /// the replica's buffer, without the framing ones: hyper writes its
    /// own (`ResponseHead::length` is the length to announce).
    Fields(Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>),
}

/// A response head from a replica, interpreted.
pub(super) struct ResponseHead {
    /// The head for the client.
    pub(super) out: Out,
    /// The `Content-Length` the client's head announces, if any (a 304's
    /// may announce the length of a body it does not carry).
    pub(super) length: Option<u64>,
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
    let host_value = &input[host.clone()];
    let upstream = Upstream {
        method,
        target: path,
        host: host_value,
        forwarded_host: Some(host_value),
        length: body_len,
        client_ip: client.ip.as_bytes(),
        proto: client.proto,
        request_id: &request_id,
    }
    .head(|| req.headers.iter().map(|h| (h.name, h.value)), head_len);
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
fn connection_named<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> Vec<&'h [u8]> {
    headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| tokens(value))
        .collect()
}

/// The request head a replica gets, besides the client's own fields.
pub(in crate::proxy) struct Upstream<'a> {
    pub(in crate::proxy) method: &'a str,
    /// The request target, in origin form.
    pub(in crate::proxy) target: &'a str,
    /// Its `Host`: the host the client named, or the replica's address
    /// when it named none.
    pub(in crate::proxy) host: &'a [u8],
    /// The host the client named, as `X-Forwarded-Host`.
    pub(in crate::proxy) forwarded_host: Option<&'a [u8]>,
    /// Its `Content-Length`, when it has one (the length of the body the
    /// proxy sends, whatever the client's header said).
    pub(in crate::proxy) length: Option<usize>,
    /// The client's address, appended to `X-Forwarded-For`.
    pub(in crate::proxy) client_ip: &'a [u8],
    /// `http` or `https`, as `X-Forwarded-Proto`.
    pub(in crate::proxy) proto: &'a str,
    /// Its `X-Request-Id`.
    pub(in crate::proxy) request_id: &'a http::HeaderValue,
}

impl Upstream<'_> {
    /// The request head for the replica, from the client's fields
    /// (`fields` gives them, as often as asked; hyper or the fast path's
    /// parse validated them): the request line; the fields without the
    /// hop-by-hop ones (standard or named in `Connection`); `Host` and
    /// `Content-Length` written from this head, whatever `Connection`
    /// names (where the client put them, as it spelled them, or at the
    /// end); the client's `Cookie` fields joined into one (an HTTP/2 client
    /// may send a field per cookie, RFC 9113 §8.2.3); every
    /// `X-Forwarded-For` value the client sent kept in order with the
    /// client appended; `X-Forwarded-Proto` and `-Host` set; `X-Request-Id`
    /// set to the request's id. Nothing is allocated but the head itself
    /// (and the list of names `Connection` gives, when there is one), once:
    /// `copied` is the size of the client's request line and fields (or
    /// more, to leave room after the head), to which it adds room for what
    /// it writes itself.
    pub(in crate::proxy) fn head<'h, I>(&self, fields: impl Fn() -> I, copied: usize) -> Vec<u8>
    where
        I: Iterator<Item = (&'h str, &'h [u8])>,
    {
        let mut out = Vec::with_capacity(copied + self.added());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let named = connection_named(fields());
        let is = |name: &str, other: &str| name.eq_ignore_ascii_case(other);
        let cookies = || fields().filter(|(n, _)| is(n, "cookie"));
        let (mut host_done, mut length_done, mut cookie_done) = (false, false, false);
        for (name, value) in fields() {
            // Host and framing are this head's whatever `Connection` says;
            // anything else it names goes no further than this hop.
            let hop = is_hop_by_hop(name, &named);
            if is(name, "host") {
                if !std::mem::replace(&mut host_done, true) {
                    push_header(&mut out, name.as_bytes(), self.host);
                }
            } else if is(name, "content-length") {
                if let (Some(n), false) = (self.length, std::mem::replace(&mut length_done, true)) {
                    push_header(&mut out, name.as_bytes(), n.to_string().as_bytes());
                }
            } else if hop
                || is(name, headers::X_FORWARDED_FOR.as_str())
                || is(name, headers::X_FORWARDED_PROTO.as_str())
                || is(name, headers::X_FORWARDED_HOST.as_str())
                || is(name, request_id::HEADER)
            {
                // Not passed on: hop-by-hop, or the proxy's own to write.
            } else if is(name, "cookie") {
                if !std::mem::replace(&mut cookie_done, true) {
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b": ");
                    for (i, (_, cookie)) in cookies().enumerate() {
                        if i > 0 {
                            out.extend_from_slice(b"; ");
                        }
                        out.extend_from_slice(cookie);
                    }
                    out.extend_from_slice(b"\r\n");
                }
            } else {
                push_header(&mut out, name.as_bytes(), value);
            }
        }
        if !host_done {
            push_header(&mut out, b"host", self.host);
        }
        if let (Some(n), false) = (self.length, length_done) {
            push_header(&mut out, b"content-length", n.to_string().as_bytes());
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        for (name, prior) in fields() {
            if is(name, headers::X_FORWARDED_FOR.as_str()) && !is_hop_by_hop(name, &named) {
                out.extend_from_slice(prior);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.client_ip);
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(host) = self.forwarded_host {
            push_header(&mut out, b"x-forwarded-host", host);
        }
        push_header(
            &mut out,
            request_id::HEADER.as_bytes(),
            self.request_id.as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Room for what [`head`](Self::head) writes beyond the client's
    /// fields: the request line's version, the `X-Forwarded-*` fields and
    /// `X-Request-Id`, `Host` and `Content-Length` when they are new.
    fn added(&self) -> usize {
        const NAMES: usize = " HTTP/1.1\r\n".len()
            + "x-forwarded-for: , \r\n".len()
            + "x-forwarded-proto: \r\n".len()
            + "x-forwarded-host: \r\n".len()
            + "x-request-id: \r\n".len()
            + "host: \r\n".len()
            + "content-length: 18446744073709551615\r\n".len()
            + "\r\n".len();
        NAMES
            + self.host.len()
            + self.forwarded_host.map_or(0, <[u8]>::len)
            + self.client_ip.len()
            + self.proto.len()
            + self.request_id.len()
    }
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
pub(super) fn parse_response(buf: &[u8], want: Want) -> Result<Option<ResponseHead>, String> {
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
    let named = connection_named(resp.headers.iter().map(|h| (h.name, h.value)));
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + s.len()
    };
    let mut head = Vec::new();
    let mut fields = Vec::new();
    if want == Want::Bytes {
        head.reserve(len + 32);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(itoa3(status).as_slice());
        head.push(b' ');
        head.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
        head.extend_from_slice(b"\r\n");
    } else {
        fields.reserve(resp.headers.len());
    }
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
        match want {
            Want::Bytes => push_header(&mut head, name.as_bytes(), h.value),
            Want::Fields => fields.push((at(name.as_bytes()), at(h.value))),
        }
    }
    let no_body = (100..200).contains(&status) || status == 204;
    let mut framing = match (codings.split_last(), length) {
        (None, None) => Framing::UntilClose,
        // A 304 (and the answer to a HEAD) may announce the length of the
        // body it does not carry; a 1xx or 204 may not.
        (None, Some(n)) => Framing::Length(n),
        (Some(_), Some(_)) => {
            return Err("both content-length and transfer-encoding in the response".into());
        }
        (Some((last, rest)), None) => {
            let chunked = |t: &&[u8]| t.eq_ignore_ascii_case(b"chunked");
            if !chunked(last) || rest.iter().any(chunked) {
                return Err("a transfer-encoding that does not end in chunked once".into());
            }
            Framing::Chunked
        }
    };
    let announced = match framing {
        Framing::Length(n) if !no_body => Some(n),
        _ => None,
    };
    if no_body || status == 304 {
        framing = Framing::Empty;
    }
    let out = match want {
        Want::Bytes => {
            let header = match framing_at {
                None => None,
                Some(_) if codings.is_empty() => announced.map(|n| n.to_string().into_bytes()),
                Some(_) => Some(codings.join(&b", "[..])),
            };
            if let (Some((at, name)), Some(value)) = (framing_at, header) {
                let mut line = Vec::with_capacity(name.len() + value.len() + 4);
                push_header(&mut line, name.as_bytes(), &value);
                head.splice(at..at, line);
            }
            head.extend_from_slice(b"\r\n");
            Out::Bytes(head)
        }
        Want::Fields => Out::Fields(fields),
    };
    Ok(Some(ResponseHead {
        out,
        length: announced,
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

    /// The fields of a head written by [`Upstream::head`], lowercased and
    /// sorted: the order of different fields carries no meaning.
    fn fields_of(head: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(head).unwrap();
        let mut lines = text.split("\r\n").skip(1).filter(|l| !l.is_empty());
        let mut out: Vec<_> = lines
            .by_ref()
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_byte_path_writes_what_the_header_map_path_sends() {
        // Every case the replica's head treats specially, as an HTTP/2 or
        // HTTP/1.1 client may send it: the byte path (buffered requests)
        // and the header map path (hyper's client: streamed bodies) must
        // give a replica the same fields.
        let cases: [&[(&str, &str)]; 7] = [
            &[("accept", "*/*")],
            &[
                ("cookie", "a=1"),
                ("x-forwarded-for", "10.0.0.1"),
                ("cookie", "b=2"),
                ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
                ("cookie", "c=3"),
            ],
            &[
                ("connection", "keep-alive, x-secret, content-length, host"),
                ("x-secret", "1"),
                ("te", "trailers"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic eA=="),
                ("content-length", "7"),
                ("host", "client.test"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "spoofed.test"),
                ("x-request-id", "given-by-the-client"),
                ("x-request-id", "another"),
            ],
            &[("connection", "x-request-id"), ("cookie", "only=1")],
            &[
                ("connection", "cookie, x-forwarded-for"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("x-forwarded-for", "10.0.0.1"),
                ("accept", "*/*"),
            ],
            &[("host", "client.test"), ("accept", "a"), ("accept", "b")],
        ];
        for fields in cases {
            for_every_host_and_length(fields, |fields, host, length| {
                let (bytes, expected) = both_paths(fields, host, length);
                assert_eq!(
                    fields_of(&bytes),
                    expected,
                    "{fields:?}, host {host:?}, length {length:?}:\n{}",
                    String::from_utf8_lossy(&bytes)
                );
                assert!(bytes.starts_with(b"POST /t HTTP/1.1\r\n"));
                assert!(bytes.ends_with(b"\r\n\r\n"));
            });
        }
    }

    /// Calls `check` with `fields` and each host a request with them may
    /// have (as `session::request_host` finds it: an authority, else its
    /// Host) and each body length.
    fn for_every_host_and_length(
        fields: &[(&str, &str)],
        mut check: impl FnMut(&[(&str, &str)], Option<&str>, Option<usize>),
    ) {
        let given = fields.iter().find(|(n, _)| *n == "host").map(|f| f.1);
        for host in [given, Some("authority.test")] {
            for length in [None, Some(0), Some(12)] {
                check(fields, host, length);
            }
        }
    }

    /// What a replica gets for a request with `fields`, `host` and a body
    /// of `length`: the head the byte path writes, and the fields (sorted,
    /// as [`fields_of`] gives them) of the header map path, the rewrite
    /// then what hyper's client adds (a Host of the replica when there is
    /// none, the framing from the body).
    fn both_paths(
        fields: &[(&str, &str)],
        host: Option<&str>,
        length: Option<usize>,
    ) -> (Vec<u8>, Vec<(String, String)>) {
        let client_ip = headers::client_ip("127.0.0.1".parse().unwrap());
        let mut map = http::HeaderMap::new();
        for (n, v) in fields {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let rewrite = headers::Rewrite {
            id: http::HeaderValue::from_static("the-id"),
            host: host.map(|h| http::HeaderValue::from_str(h).unwrap()),
            client_ip: &client_ip,
            proto: "https",
            upgrade: None,
        };
        let replica_addr = "127.0.0.1:9";
        let upstream = Upstream {
            method: "POST",
            target: "/t",
            host: host.unwrap_or(replica_addr).as_bytes(),
            forwarded_host: host.map(str::as_bytes),
            length,
            client_ip: client_ip.as_bytes(),
            proto: "https",
            request_id: &rewrite.id,
        };
        let copied = "POST /t".len()
            + map
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + ": \r\n".len())
                .sum::<usize>();
        let bytes = upstream.head(
            || map.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            copied,
        );
        assert!(
            bytes.len() <= copied + upstream.added(),
            "the head outgrew the room it took: {} > {copied} + {}",
            bytes.len(),
            upstream.added(),
        );
        let mut rewritten = map.clone();
        rewrite.apply(&mut rewritten);
        let mut expected: Vec<_> = rewritten
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        if !rewritten.contains_key(http::header::HOST) {
            expected.push(("host".into(), replica_addr.into()));
        }
        if let Some(n) = length {
            expected.push(("content-length".into(), n.to_string()));
        }
        expected.sort();
        (bytes, expected)
    }

    /// Names a request's fields are drawn from: those the replica's head
    /// treats specially, and two it passes on.
    const NAMES: [&str; 16] = [
        "accept",
        "x-a",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "connection",
        "te",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
        "proxy-authorization",
        "content-length",
        "host",
    ];

    proptest::proptest! {
        // Cheap cases, and the interesting ones (a field that `Connection`
        // names, present too) are a few in a hundred.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn any_fields_reach_a_replica_the_same_by_either_path(
            picks in proptest::collection::vec(
                (0..NAMES.len(), proptest::collection::vec(0..NAMES.len(), 1..4), 0..3usize),
                0..10,
            ),
        ) {
            // A field: a name, and a value (for `Connection`, the names it
            // lists; for the rest, one of three values).
            let mut fields: Vec<(String, String)> = picks
                .iter()
                .map(|(name, listed, value)| {
                    let name = NAMES[*name];
                    let value = if name == "connection" {
                        listed.iter().map(|i| NAMES[*i]).collect::<Vec<_>>().join(", ")
                    } else {
                        ["1", "a=1", "10.0.0.1"][*value].to_string()
                    };
                    (name.to_string(), value)
                })
                .collect();
            // Two Host fields are refused before any path is taken.
            let mut hosts = 0;
            fields.retain(|(n, _)| n != "host" || { hosts += 1; hosts == 1 });
            let fields: Vec<(&str, &str)> =
                fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            for_every_host_and_length(&fields, |fields, host, length| {
                let (bytes, expected) = both_paths(fields, host, length);
                assert_eq!(fields_of(&bytes), expected, "{}", String::from_utf8_lossy(&bytes));
            });
        }
    }

    #[test]
    fn response_heads_are_rewritten_and_framed() {
        let input = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-version: v2\r\n\r\nhello";
        let head = parse_response(input, Want::Bytes).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(bytes_of(head.out)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-version: v2\r\n\r\n"
        );
        assert_eq!(
            (head.framing, head.keep, head.len),
            (Framing::Length(5), true, input.len() - 5)
        );
        let chunked = parse_response(
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            Want::Bytes,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (chunked.framing, chunked.keep, chunked.status),
            (Framing::Chunked, false, 503)
        );
        let until_close = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", Want::Bytes)
            .unwrap()
            .unwrap();
        assert_eq!(until_close.framing, Framing::UntilClose);
        let empty = parse_response(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            Want::Bytes,
        )
        .unwrap()
        .unwrap();
        assert_eq!(empty.framing, Framing::Empty);
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", Want::Bytes)
                .unwrap()
                .is_none()
        );
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Want::Bytes
            )
            .is_err()
        );
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Want::Bytes
            )
            .is_err()
        );
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Want::Bytes,
            )
            .is_err()
        );
    }

    fn bytes_of(out: Out) -> Vec<u8> {
        match out {
            Out::Bytes(bytes) => bytes,
            Out::Fields(_) => panic!("fields, not bytes"),
        }
    }

    #[test]
    fn a_response_head_read_as_fields_says_what_its_rewrite_says() {
        // The fields hyper gets (HTTP/2, HTTPS) are those of the rewritten
        // head an HTTP/1.1 client gets, less the framing, which hyper
        // writes itself from the announced length.
        for input in [
            &b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-version: v2\r\n\r\n"[..],
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\nETag: \"x\"\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nUpgrade: h2c\r\nTE: trailers\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\n",
        ] {
            both_readings_agree(input);
        }
    }

    /// Parses `input` both ways and checks that they agree: the same
    /// verdict, and when it parses, the same fields but the framing, the
    /// announced length that of the rewritten head.
    fn both_readings_agree(input: &[u8]) {
        let (bytes, fields) = match (
            parse_response(input, Want::Bytes),
            parse_response(input, Want::Fields),
        ) {
            (Ok(Some(bytes)), Ok(Some(fields))) => (bytes, fields),
            (Err(a), Err(b)) => return assert_eq!(a, b),
            (a, b) => panic!(
                "{}: {:?} against {:?}",
                String::from_utf8_lossy(input),
                a.map(|h| h.map(|h| h.status)),
                b.map(|h| h.map(|h| h.status))
            ),
        };
        assert_eq!(
            (
                bytes.len,
                bytes.status,
                bytes.framing,
                bytes.keep,
                bytes.length
            ),
            (
                fields.len,
                fields.status,
                fields.framing,
                fields.keep,
                fields.length
            )
        );
        let written = bytes_of(bytes.out);
        let mut expected: Vec<_> = fields_of(&written)
            .into_iter()
            .filter(|(n, _)| n != "content-length" && n != "transfer-encoding")
            .collect();
        let announced = fields_of(&written)
            .into_iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<u64>().unwrap());
        assert_eq!(fields.length, announced);
        let Out::Fields(ranges) = fields.out else {
            panic!("bytes, not fields")
        };
        let text = |r: std::ops::Range<usize>| String::from_utf8(input[r].to_vec()).unwrap();
        let mut got: Vec<_> = ranges
            .into_iter()
            .map(|(n, v)| (text(n).to_ascii_lowercase(), text(v)))
            .collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(input));
    }

    /// A response's fields are drawn from these, each with one of its
    /// values (`Connection` lists names of the others).
    const RESPONSE_FIELDS: [(&str, &[&str]); 9] = [
        ("Content-Length", &["0", "5", "12", "x", ""]),
        (
            "Transfer-Encoding",
            &["chunked", "gzip, chunked", "gzip", "chunked, chunked"],
        ),
        ("Connection", &[]),
        ("Keep-Alive", &["timeout=5"]),
        ("Set-Cookie", &["a=1", "b=2"]),
        ("Upgrade", &["h2c"]),
        ("TE", &["trailers"]),
        ("Proxy-Authenticate", &["Basic"]),
        ("X-A", &["1", "2"]),
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn any_response_head_reads_the_same_as_bytes_and_as_fields(
            status in proptest::sample::select(vec![200u16, 204, 304, 404, 503]),
            version in proptest::sample::select(vec!["HTTP/1.0", "HTTP/1.1"]),
            picks in proptest::collection::vec(
                (0..RESPONSE_FIELDS.len(), 0..5usize, proptest::collection::vec(0..RESPONSE_FIELDS.len(), 1..3)),
                0..8,
            ),
        ) {
            let mut head = format!("{version} {status} Reason\r\n");
            for (field, value, listed) in &picks {
                let (name, values) = RESPONSE_FIELDS[*field];
                let value = if name == "Connection" {
                    let mut names: Vec<&str> = listed.iter().map(|i| RESPONSE_FIELDS[*i].0).collect();
                    names.push(["close", "keep-alive"][*value % 2]);
                    names.join(", ")
                } else {
                    values[*value % values.len()].to_string()
                };
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            both_readings_agree(head.as_bytes());
        }
    }
}
