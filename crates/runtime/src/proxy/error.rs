//! Proxy errors: each knows its source (client, upstream, internal) and
//! whether retrying on another replica is safe, so retries and the status
//! code follow from the type.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::ProxyBody;
use super::forward::Sent;
use crate::ops::hold::{MaintenancePage, RETRY_AFTER_SECS};
use crate::proxy::balance::NoPick;

/// The content type of the proxy's error responses.
const CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// The header naming the source of an error response.
const ERROR_HEADER: &str = "x-dropless-error";

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong or went away.
    Client,
    /// The replica (or the way to it) failed.
    Upstream,
    /// The proxy itself, or the service has no replica.
    Internal,
}

/// A request that could not be proxied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// No service routes this host.
    #[error("no service for host {host:?}")]
    UnknownHost {
        /// The Host header (or authority) of the request.
        host: String,
    },
    /// No replica became ready within the queue timeout.
    #[error("no ready replica of {service} within {waited:?}")]
    NoReplica {
        /// The service.
        service: String,
        /// The queue timeout.
        waited: Duration,
    },
    /// The service is scaled to zero on purpose: no replica will come.
    #[error(
        "service {service} is scaled to zero: no replica serves it until it is scaled up (dropless scale N)"
    )]
    ScaledToZero {
        /// The service.
        service: String,
    },
    /// The replica failed before a whole response head came.
    #[error("replica {replica} failed: {message}")]
    Upstream {
        /// The replica.
        replica: String,
        /// What failed.
        message: String,
        /// How far the request got before it failed.
        sent: Sent,
    },
    /// The replica did not start its response within the response timeout.
    #[error("replica {replica} sent no response within {waited:?}")]
    Timeout {
        /// The replica.
        replica: String,
        /// The response timeout.
        waited: Duration,
    },
    /// The client's request body could not be read: it broke off or its
    /// framing is invalid.
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    /// The client sent no byte of its request body for
    /// `proxy.body_read_timeout`.
    #[error("the request body stalled: no byte for {0:?}")]
    BodyTimeout(Duration),
    /// The request head is not one the proxy forwards (no `Host` on
    /// HTTP/1.1, two of them).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request head is larger than `proxy.max_header_bytes` (this).
    #[error("the request head is larger than {0} bytes (proxy.max_header_bytes)")]
    HeadTooLarge(usize),
    /// Traffic is paused (`dropless pause`) and the request waited the
    /// pause's whole timeout.
    #[error("traffic is paused: the request waited {waited:?}; retry later")]
    Paused {
        /// The pause's timeout.
        waited: Duration,
    },
    /// Maintenance is on (`dropless maintenance on`): the page is the body.
    #[error("the service is down for maintenance")]
    Maintenance(Arc<MaintenancePage>),
}

impl ProxyError {
    /// The error for a request of `service` that got no replica, having
    /// waited up to `waited`.
    pub fn no_pick(no: NoPick, service: &str, waited: Duration) -> Self {
        let service = service.to_string();
        match no {
            NoPick::Deadline => Self::NoReplica { service, waited },
            NoPick::ScaledToZero => Self::ScaledToZero { service },
        }
    }

    /// Who caused it.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::UnknownHost { .. }
            | Self::ClientBody(_)
            | Self::BodyTimeout(_)
            | Self::BadRequest(_)
            | Self::HeadTooLarge(_) => ErrorSource::Client,
            Self::Upstream { .. } | Self::Timeout { .. } => ErrorSource::Upstream,
            Self::NoReplica { .. }
            | Self::ScaledToZero { .. }
            | Self::Paused { .. }
            | Self::Maintenance(_) => ErrorSource::Internal,
        }
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::NoReplica { .. }
            | Self::ScaledToZero { .. }
            | Self::Paused { .. }
            | Self::Maintenance(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ClientBody(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The response the client gets.
    pub fn response(&self) -> Response<ProxyBody> {
        let body = Full::new(Bytes::from(self.body()))
            .map_err(|never| match never {})
            .boxed();
        let mut resp = Response::builder()
            .status(self.status())
            .header(http::header::CONTENT_TYPE, self.content_type())
            .header(ERROR_HEADER, self.source_name());
        if let Some(secs) = self.retry_after() {
            resp = resp.header(http::header::RETRY_AFTER, secs);
        }
        resp.body(body).expect("static parts form a response")
    }

    /// The same response, serialized for HTTP/1.1 (the fast path writes it
    /// itself); with `Connection: close` when `close`, and without the body
    /// (its length still announced) for a HEAD request.
    pub fn to_http1(&self, close: bool, head_request: bool) -> Vec<u8> {
        let body = self.body();
        let status = self.status();
        let close = if close { "connection: close\r\n" } else { "" };
        let retry = self
            .retry_after()
            .map(|s| format!("retry-after: {s}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\n{ERROR_HEADER}: {}\r\n{retry}\
             content-length: {}\r\n{close}\r\n{}",
            status.as_str(),
            status.canonical_reason().unwrap_or_default(),
            self.content_type(),
            self.source_name(),
            body.len(),
            if head_request { "" } else { &body },
        )
        .into_bytes()
    }

    /// The body of its response: the message, or the maintenance page.
    fn body(&self) -> String {
        match self {
            Self::Maintenance(page) => page.body.clone(),
            _ => format!("{self}\n"),
        }
    }

    fn content_type(&self) -> &str {
        match self {
            Self::Maintenance(page) => &page.content_type,
            _ => CONTENT_TYPE,
        }
    }

    /// The `Retry-After` of its response, in seconds, if it has one.
    fn retry_after(&self) -> Option<u64> {
        matches!(self, Self::Paused { .. } | Self::Maintenance(_)).then_some(RETRY_AFTER_SECS)
    }

    /// The source as the `x-dropless-error` header says it.
    fn source_name(&self) -> &'static str {
        match self.source_kind() {
            ErrorSource::Client => "client",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Internal => "internal",
        }
    }
}

/// An error and its sources on one line, `outer: inner: root`.
pub use dropless_lifecycle::error_chain;
