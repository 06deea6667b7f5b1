//! Header rewriting: hop-by-hop headers removed in both directions,
//! `X-Forwarded-For`, `-Proto` and `-Host` set on requests.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Headers that describe one connection and never cross a proxy (RFC 9110
/// §7.6.1), as names (removing by a `&str` would parse and hash it on every
/// request). `Trailer` is not one: it announces the fields a chunked body's
/// trailer section carries, which the proxy passes on.
pub(super) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The request id's field, as a name.
pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static(crate::ops::request_id::HEADER);

/// Headers that `Connection` cannot make hop-by-hop: the message's framing
/// and its host are the proxy's to write, whatever a peer names.
const NEVER_NAMED: [HeaderName; 2] = [header::CONTENT_LENGTH, header::HOST];

/// Removes hop-by-hop headers and those named in `Connection` (but never
/// `Content-Length` or `Host`). When `upgrade` is given (a WebSocket
/// handshake), `Upgrade` and `Connection: upgrade` are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !NEVER_NAMED.contains(n))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// How a request's fields change on their way to a replica: what
/// [`Rewrite::apply`] does to a header map, and what the byte path
/// (`fast::head::Upstream`) writes from the client's fields as they came.
pub struct Rewrite<'a> {
    /// The request's id, as `X-Request-Id`.
    pub id: HeaderValue,
    /// The host the client named (HTTP/2's `:authority` or its `Host`).
    pub host: Option<HeaderValue>,
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: &'a HeaderValue,
    /// `http` or `https`, as `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The `Upgrade` of a request that asks for one (kept, with
    /// `Connection: upgrade`).
    pub upgrade: Option<HeaderValue>,
}

impl Rewrite<'_> {
    /// Rewrites a copy of the client's fields for a replica: hop-by-hop
    /// fields removed, cookies joined, `X-Forwarded-*` and `Host` set, the
    /// framing left to the connection that sends it, the id set last (a
    /// `Connection` that names it does not remove it).
    pub fn apply(&self, headers: &mut HeaderMap) {
        strip_hop_by_hop(headers, self.upgrade.as_ref());
        join_cookies(headers);
        set_forwarded(headers, self.client_ip, self.proto, self.host.as_ref());
        if let Some(host) = &self.host {
            headers.insert(header::HOST, host.clone());
        }
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(REQUEST_ID, self.id.clone());
    }
}

/// Joins a request's `Cookie` fields into one, as an HTTP/1.1 replica
/// expects: an HTTP/2 client may send each cookie as a field of its own,
/// which must be joined with `; ` before HTTP/1.1 (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// The `Upgrade` header of a request that asks for a protocol upgrade.
pub fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// A client address as the value `X-Forwarded-For` appends; computed once
/// per connection, so written without the formatting machinery for IPv4 (a
/// new connection per request spent ~8 % of its instructions in it).
pub fn client_ip(ip: IpAddr) -> HeaderValue {
    // The longest text of an address: an IPv6 one with an IPv4 tail.
    let mut text = [0u8; 45];
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    text[len] = b'0' + d;
                    len += 1;
                }
            }
            len
        }
        IpAddr::V6(v6) => {
            let mut w = &mut text[..];
            std::io::Write::write_fmt(&mut w, format_args!("{v6}")).expect("45 bytes hold it");
            45 - w.len()
        }
    };
    HeaderValue::from_bytes(&text[..len]).expect("an IP address is a header value")
}

/// Sets `X-Forwarded-For` (every value the client sent, in order, then the
/// client), `X-Forwarded-Proto` and `X-Forwarded-Host` (removed when the
/// request named no host).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut joined = Vec::new();
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        joined.extend_from_slice(prior.as_bytes());
        joined.extend_from_slice(b", ");
    }
    let xff = if joined.is_empty() {
        client.clone()
    } else {
        joined.extend_from_slice(client.as_bytes());
        // Made of header values and ", ": a header value too.
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone())
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    // A request that named no host gets none: never the client's own.
    match host {
        Some(v) => headers.insert(X_FORWARDED_HOST, v.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        #[test]
        fn a_client_address_is_written_as_its_display_says(v4: [u8; 4], v6: [u16; 8], mapped: bool) {
            let v4 = std::net::Ipv4Addr::from(v4);
            let v6 = if mapped { v4.to_ipv6_mapped() } else { std::net::Ipv6Addr::from(v6) };
            for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
                let written = client_ip(ip);
                proptest::prop_assert_eq!(written.to_str().unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn the_longest_addresses_fit() {
        for ip in [
            "255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "0.0.0.0",
            "::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(client_ip(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        // Framing and Host are never removed because Connection names them.
        h.insert(
            "connection",
            HeaderValue::from_static("content-length, host, accept"),
        );
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("host", HeaderValue::from_static("x"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("content-length") && h.contains_key("host"));
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let client = client_ip("127.0.0.1".parse().unwrap());
        let host = HeaderValue::from_static("example.test");
        set_forwarded(&mut h, &client, "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        set_forwarded(&mut h, &client, "http", Some(&host));
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["10.0.0.1, 127.0.0.1, 10.0.0.2, 127.0.0.1"]
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test");
    }
}
