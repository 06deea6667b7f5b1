//! What a run does: the target, the arrival model, the connections and the
//! request, validated completely before the first socket is opened.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};

/// Default arrival rate of the open model, in requests per second.
pub const DEFAULT_RATE: f64 = 100.0;
/// Default length of a run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default cap on requests in flight; due requests beyond it are dropped
/// iterations.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Default batch window of the open model: the arrivals due within one
/// window leave together, when the last of them is due (so up to this
/// late), for one wake-up of a sending thread per window.
pub const DEFAULT_BATCH: Duration = Duration::from_millis(1);
/// The longest batch window: beyond it, the lateness it allows would
/// dominate the latencies it measures.
pub const MAX_BATCH: Duration = Duration::from_millis(100);
/// Default cap on connections being opened at once (TCP and TLS
/// handshakes): a burst of new connections stays within what a server's
/// accept queue holds (511 for nginx, Node and many others).
pub const DEFAULT_MAX_CONNECTING: usize = 256;
/// Default per-request timeout, connect included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time the end of a run waits for requests still in flight.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Default set of statuses that count as ok (as k6: 200-399).
pub const DEFAULT_EXPECT_STATUS: &str = "200-399";

/// How requests arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Model {
    /// Constant arrival rate: a request is due every `1/rate` seconds whether
    /// or not earlier ones have finished (k6's constant-arrival-rate).
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// `vus` loops that each send a request as soon as their previous one
    /// ended: the maximum-throughput mode.
    Closed {
        /// Number of concurrent loops (virtual users).
        vus: usize,
    },
}

/// A load run. Build it with [`Config::new`] and adjust the public fields;
/// [`crate::start`] validates it before opening any socket.
#[derive(Clone, Debug)]
pub struct Config {
    /// Target URL, `http://` or `https://`.
    pub url: String,
    /// Arrival model; default open at [`DEFAULT_RATE`].
    pub model: Model,
    /// How long requests are started; default [`DEFAULT_DURATION`].
    pub duration: Duration,
    /// Stop after this many requests (sent or dropped), if set; default none.
    pub requests: Option<u64>,
    /// Cap on requests in flight (open model); default [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Open model: the arrivals due within one window are sent together,
    /// when the last of them is due (up to this late, which shows in their
    /// latency from the schedule); zero sends each on its own instant.
    /// Default [`DEFAULT_BATCH`], at most [`MAX_BATCH`].
    pub batch: Duration,
    /// Cap on connections being opened at once (TCP and TLS handshakes);
    /// a request that needs a new connection beyond it waits for a free
    /// slot or an idle connection, whichever comes first. Default
    /// [`DEFAULT_MAX_CONNECTING`].
    pub max_connecting: usize,
    /// Cap on open connections; default none (one per concurrent request, or
    /// one HTTP/2 connection).
    pub connections: Option<usize>,
    /// Reuse connections; default true. False opens a new connection for
    /// every request and asks the server to close it.
    pub keepalive: bool,
    /// Speak HTTP/2 (h2c with prior knowledge, or ALPN `h2` over TLS); default false.
    pub http2: bool,
    /// Accept any TLS certificate (self-signed); default false.
    pub insecure: bool,
    /// Request method; default GET.
    pub method: String,
    /// Extra request headers as `(name, value)`; default none.
    pub headers: Vec<(String, String)>,
    /// Request body; default empty.
    pub body: Bytes,
    /// Statuses that count as ok, e.g. `200-399` or `200,204`; default
    /// [`DEFAULT_EXPECT_STATUS`].
    pub expect_status: String,
    /// A substring the response body must contain to count as ok; default none.
    pub expect_body: Option<String>,
    /// Per-request timeout, connect included; default [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// How long the end of a run waits for requests in flight before counting
    /// them as timeouts; default [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// Retry once a request whose reused keep-alive connection was closed
    /// before any response byte, as browsers do; default false.
    pub retry_reused: bool,
    /// Sessions mode: this many clients, each with its own key, play moves
    /// (`POST {url path}/game/{id}/move`, round robin at the model's rate)
    /// and check every move number; default none.
    pub sessions: Option<usize>,
    /// Sessions mode: each client also follows its session's WebSocket
    /// stream (`GET {url path}/game/{id}/ws`); default false.
    pub websocket: bool,
}

/// A configuration that cannot run, with the input at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The target URL does not parse or is not http(s) with a host.
    #[error("invalid URL '{url}': {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The method is not a valid HTTP token.
    #[error("invalid method '{0}'")]
    Method(String),
    /// A header name or value is not valid.
    #[error("invalid header '{0}': expected 'Name: value'")]
    Header(String),
    /// The status set does not parse.
    #[error(
        "invalid status set '{0}': expected codes from 100 to 599 and ranges, like 200-399 or 200,204"
    )]
    StatusSet(String),
    /// A numeric setting is out of range.
    #[error("{name} must be {expected}, got {got}")]
    Range {
        /// The setting.
        name: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        got: String,
    },
}

/// A set of HTTP status codes, parsed from `200-399` or `200,204,300-302`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
}

/// A validated configuration: everything parsed once, ready for the hot path.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) url: String,
    pub(crate) uri: Uri,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) model: Model,
    pub(crate) duration: Duration,
    pub(crate) requests: Option<u64>,
    pub(crate) max_in_flight: usize,
    pub(crate) batch: Duration,
    pub(crate) max_connecting: usize,
    pub(crate) connections: Option<usize>,
    pub(crate) keepalive: bool,
    pub(crate) http2: bool,
    pub(crate) insecure: bool,
    pub(crate) method: Method,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) expect_status: StatusSet,
    pub(crate) expect_body: Option<Bytes>,
    pub(crate) timeout: Duration,
    pub(crate) grace: Duration,
    pub(crate) retry_reused: bool,
    pub(crate) sessions: Option<usize>,
    pub(crate) websocket: bool,
}

impl Config {
    /// A run against `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            model: Model::Open { rate: DEFAULT_RATE },
            duration: DEFAULT_DURATION,
            requests: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            batch: DEFAULT_BATCH,
            max_connecting: DEFAULT_MAX_CONNECTING,
            connections: None,
            keepalive: true,
            http2: false,
            insecure: false,
            method: "GET".to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
            expect_status: DEFAULT_EXPECT_STATUS.to_owned(),
            expect_body: None,
            timeout: DEFAULT_TIMEOUT,
            grace: DEFAULT_GRACE,
            retry_reused: false,
            sessions: None,
            websocket: false,
        }
    }

    /// Check every setting and parse it for the run.
    pub(crate) fn plan(&self) -> Result<Plan, ConfigError> {
        let (uri, host, port, tls) = parse_url(&self.url)?;
        match self.model {
            Model::Open { rate } if !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0) => {
                return Err(range(
                    "rate",
                    "a number of requests per second above 0",
                    rate,
                ));
            }
            Model::Closed { vus: 0 } => return Err(range("vus", "at least 1", 0)),
            _ => {}
        }
        if self.duration.is_zero() {
            return Err(range("duration", "longer than 0", "0s"));
        }
        if self.requests == Some(0) {
            return Err(range("requests", "at least 1", 0));
        }
        if self.max_in_flight == 0 {
            return Err(range("max-in-flight", "at least 1", 0));
        }
        if self.batch > MAX_BATCH {
            return Err(range(
                "batch",
                "at most 100ms (0 sends every request on its own instant)",
                format!("{:?}", self.batch),
            ));
        }
        if self.max_connecting == 0 {
            return Err(range("max-connecting", "at least 1", 0));
        }
        if self.connections == Some(0) {
            return Err(range("connections", "at least 1", 0));
        }
        if self.timeout.is_zero() {
            return Err(range("timeout", "longer than 0", "0s"));
        }
        if self.sessions == Some(0) {
            return Err(range("sessions", "at least 1", 0));
        }
        if self.websocket && self.sessions.is_none() {
            return Err(range(
                "websocket",
                "used with sessions (--sessions N)",
                "no sessions",
            ));
        }
        if self.sessions.is_some() && self.http2 {
            return Err(range(
                "sessions",
                "used over HTTP/1.1 (without --http2)",
                "--http2",
            ));
        }
        let method = Method::from_bytes(self.method.as_bytes())
            .map_err(|_| ConfigError::Method(self.method.clone()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let bad = || ConfigError::Header(format!("{name}: {value}"));
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
            headers.append(name, value);
        }
        Ok(Plan {
            url: self.url.clone(),
            uri,
            host,
            port,
            tls,
            model: self.model,
            duration: self.duration,
            requests: self.requests,
            max_in_flight: self.max_in_flight,
            batch: self.batch,
            max_connecting: self.max_connecting,
            connections: self.connections,
            keepalive: self.keepalive,
            http2: self.http2,
            insecure: self.insecure,
            method,
            headers,
            body: self.body.clone(),
            expect_status: self.expect_status.parse()?,
            expect_body: self
                .expect_body
                .clone()
                .filter(|s| !s.is_empty())
                .map(Bytes::from),
            timeout: self.timeout,
            grace: self.grace,
            retry_reused: self.retry_reused,
            sessions: self.sessions,
            websocket: self.websocket,
        })
    }
}

impl StatusSet {
    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl FromStr for StatusSet {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::StatusSet(s.to_owned());
        let code = |c: &str| match c.trim().parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(bad()),
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => (code(part)?, code(part)?),
            };
            if range.0 > range.1 {
                return Err(bad());
            }
            ranges.push(range);
        }
        Ok(StatusSet { ranges })
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            match lo == hi {
                true => write!(f, "{sep}{lo}")?,
                false => write!(f, "{sep}{lo}-{hi}")?,
            }
        }
        Ok(())
    }
}

fn range(name: &'static str, expected: &'static str, got: impl fmt::Display) -> ConfigError {
    ConfigError::Range {
        name,
        expected,
        got: got.to_string(),
    }
}

/// Split a target URL into the request URI, host, port and whether it is TLS.
fn parse_url(url: &str) -> Result<(Uri, String, u16, bool), ConfigError> {
    let bad = |reason| ConfigError::Url {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("expected http://host[:port]/path"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(_) => return Err(bad("the scheme must be http or https")),
        None => return Err(bad("expected http://host[:port]/path")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL are not supported; send a header instead",
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    // `Uri` accepts any digits as a port and `port()` is `None` for one that
    // does not fit in 16 bits: read it from the text, so that 99999 is an
    // error rather than the default port.
    let text = authority.as_str();
    let port = match text.rfind(':').filter(|&i| !text[i..].contains(']')) {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(i) => match text[i + 1..].parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        },
    };
    Ok((uri.clone(), host.to_owned(), port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets_parse_and_match() {
        let set: StatusSet = "200-299,304".parse().unwrap();
        assert!(set.contains(200) && set.contains(299) && set.contains(304));
        assert!(!set.contains(300) && !set.contains(503));
        assert_eq!(set.to_string(), "200-299,304");
        for bad in ["", "2xx", "399-200", "99", "200-", "1000", "600", "200-600"] {
            assert!(
                bad.parse::<StatusSet>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn urls_are_checked() {
        let plan = Config::new("https://[::1]:8443/a?b=1").plan().unwrap();
        assert_eq!(
            (plan.host.as_str(), plan.port, plan.tls),
            ("::1", 8443, true)
        );
        assert_eq!(Config::new("http://example.com").plan().unwrap().port, 80);
        for bad in [
            "example.com",
            "ftp://x/",
            "http://",
            "http://a b/",
            "http://u:p@h/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:0/",
            "http://:8080/",
            "http:///path",
        ] {
            let err = Config::new(bad).plan().unwrap_err();
            assert!(matches!(err, ConfigError::Url { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn ranges_and_headers_are_checked() {
        let mut config = Config::new("http://127.0.0.1:1/");
        config.model = Model::Open { rate: 0.0 };
        assert_eq!(
            config.plan().unwrap_err().to_string(),
            "rate must be a number of requests per second above 0, got 0"
        );
        config.model = Model::Closed { vus: 2 };
        config.headers = vec![("bad name".into(), "v".into())];
        assert!(matches!(config.plan().unwrap_err(), ConfigError::Header(_)));
    }
}
