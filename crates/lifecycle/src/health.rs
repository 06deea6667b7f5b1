//! The readiness and liveness probe responses.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

use crate::Phase;

/// Which probe a request path names, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Readiness,
    Liveness,
}

/// The readiness probe's answer in `phase`.
pub(crate) fn respond(probe: Probe, phase: Phase) -> Response<Full<Bytes>> {
    let (status, body) = match probe {
        Probe::Liveness => (StatusCode::OK, "alive\n"),
        Probe::Readiness if phase.is_ready() => (StatusCode::OK, "ready\n"),
        Probe::Readiness if phase.is_shutting_down() => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        }
        Probe::Readiness => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
