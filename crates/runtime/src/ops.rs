//! Operating the proxy: what it tells about each request and what an
//! operator can do to its traffic. Every request gets a [`Trace`] when its
//! head is read; the forwarding core fills in the replica and the attempts,
//! the path that answers fills in the status and the bytes, and
//! [`Ops::finish`] hands it to the access log ([`access_log`]). The
//! request's `X-Request-Id` comes from [`request_id`].
//!
//! Each protocol path has one call site for each: [`Ops::begin`] where a
//! request's head is known, [`Ops::finish`] where its response ends.

pub mod access_log;
pub mod hold;
pub mod metrics;
pub mod request_id;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Buf;

use http::HeaderValue;
use tokio::time::Instant;

use crate::proxy::ProxyError;
use crate::supervisor::Supervisor;
use crate::supervisor::replica::Replica;
use access_log::{AccessLog, Entry};
use hold::{Hold, Refusal};
use metrics::{Finished, Metrics};

/// What the proxy does besides proxying: the access log (and, in the
/// modules that follow, metrics and holding traffic). Shared by every proxy
/// thread.
#[derive(Debug, Default)]
pub struct Ops {
    access_log: Option<AccessLog>,
    metrics: Metrics,
    hold: Hold,
}

/// What went wrong with a request, as the access log and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ErrorKind {
    /// The replica failed, or its response broke off.
    Upstream,
    /// No ready replica within the queue timeout (or none at all).
    NoReplica,
    /// The replica did not start its response in time.
    Timeout,
    /// The client sent something wrong, or its body failed.
    Client,
    /// Traffic was paused past the pause's timeout.
    Paused,
    /// Maintenance was on.
    Maintenance,
}

/// Why a request was sent to a replica again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum RetryReason {
    /// The attempt failed before any byte of the request was written.
    NotSent,
    /// It was written and failed, and sending it twice is harmless
    /// (idempotent method or honoured `Idempotency-Key`).
    Idempotent,
    /// A pooled connection the replica had closed.
    StaleConnection,
}

/// Why a request waited before going to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum HoldReason {
    /// No ready replica (queued up to `queue_timeout`).
    Queue,
    /// Traffic was paused (`dropless pause`).
    Pause,
    /// Its session's owner was handing its sessions off (affinity).
    Handoff,
}

/// One request as it goes: begun when its head is read, finished when its
/// response ends.
#[derive(Debug)]
pub struct Trace {
    start: Instant,
    /// Its `X-Request-Id`.
    pub id: HeaderValue,
    /// Its start on the wall clock, method and path, read only when an
    /// access log wants them.
    line: Option<Box<(SystemTime, String, String)>>,
    service: Option<Supervisor>,
    replica: Option<Arc<Replica>>,
    /// Sends to replicas.
    pub attempts: u32,
    /// The status the client got.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// What failed, if anything did.
    pub error: Option<ErrorKind>,
    /// From the last attempt's start to the response head.
    pub upstream: Option<Duration>,
    retries: [u16; RetryReason::ALL.len()],
    held: [Option<Duration>; HoldReason::ALL.len()],
}

impl Ops {
    /// Writes an access log line per request to `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Writes and flushes every access log line handed over so far (at
    /// most `timeout`): `serve` calls it after its last request.
    pub async fn flush_access_log(&self, timeout: std::time::Duration) {
        let Some(log) = self.access_log.clone() else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || log.flush(timeout)).await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!("access log: not every line could be written within {timeout:?}");
        }
    }

    /// Begins the trace of a request with this method, path and
    /// `X-Request-Id` ([`request_id::keep_or_generate`]).
    pub fn begin(&self, method: &str, path: &str, id: HeaderValue) -> Trace {
        Trace {
            start: Instant::now(),
            id,
            line: self
                .access_log
                .as_ref()
                .map(|_| Box::new((SystemTime::now(), method.to_string(), path.to_string()))),
            service: None,
            replica: None,
            attempts: 0,
            status: 0,
            bytes: 0,
            error: None,
            upstream: None,
            retries: [0; RetryReason::ALL.len()],
            held: [None; HoldReason::ALL.len()],
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The hold: pause and maintenance.
    pub fn hold(&self) -> &Hold {
        &self.hold
    }

    /// Lets `trace`'s request go on, or says the error it gets: waits while
    /// traffic is paused ([`hold`]).
    pub async fn admit(&self, trace: &mut Trace) -> Result<(), ProxyError> {
        match self.hold.admit().await {
            Ok(None) => Ok(()),
            Ok(Some(waited)) => {
                trace.held(HoldReason::Pause, waited);
                Ok(())
            }
            Err(Refusal::PauseTimeout(waited)) => {
                trace.held(HoldReason::Pause, waited);
                Err(ProxyError::Paused { waited })
            }
            Err(Refusal::Maintenance(page)) => Err(ProxyError::Maintenance(page)),
        }
    }

    /// Records the end of a request's response.
    pub fn finish(&self, trace: Trace) {
        let duration = trace.start.elapsed();
        let service = trace.service.as_ref().map_or("", |s| s.name());
        let finished = Finished {
            status: trace.status,
            error: trace.error,
            duration,
            upstream: trace.upstream,
            retries: trace.retries,
            held: trace.held,
        };
        self.metrics.finish_for(service, &finished);
        if let Some(log) = &self.access_log {
            log.log(trace.entry(duration));
        }
    }
}

impl Trace {
    /// The request goes to `service`.
    pub fn routed(&mut self, service: &Supervisor) {
        self.service = Some(service.clone());
    }

    /// An attempt is sent to `replica`.
    pub fn attempt(&mut self, replica: &Arc<Replica>) {
        self.attempts += 1;
        self.replica = Some(Arc::clone(replica));
    }

    /// The request is sent again for `reason`.
    pub fn retry(&mut self, reason: RetryReason) {
        self.retries[reason as usize] += 1;
    }

    /// The request waited `d` for `reason`.
    pub fn held(&mut self, reason: HoldReason, d: Duration) {
        let held = self.held[reason as usize].get_or_insert_default();
        *held += d;
    }

    /// The client gets `err`'s response.
    pub fn failed(&mut self, err: &ProxyError) {
        self.status = err.status().as_u16();
        self.error = Some(ErrorKind::of(err));
    }

    fn entry(self, duration: Duration) -> Entry {
        let (time, method, path) = self
            .line
            .map(|l| *l)
            .unwrap_or_else(|| (SystemTime::now(), String::new(), String::new()));
        Entry {
            time,
            service: self.service.map(|s| s.name().to_string()),
            replica: self.replica.map(|r| r.name().to_string()),
            method,
            path,
            status: self.status,
            bytes: self.bytes,
            duration_ms: duration.as_secs_f64() * 1000.0,
            attempts: self.attempts,
            error: self.error.map(ErrorKind::name),
            request_id: String::from_utf8_lossy(self.id.as_bytes()).into_owned(),
        }
    }
}

impl ErrorKind {
    /// Every kind, in the order of their values.
    pub const ALL: [Self; 6] = [
        Self::Upstream,
        Self::NoReplica,
        Self::Timeout,
        Self::Client,
        Self::Paused,
        Self::Maintenance,
    ];

    /// The kind of `err`.
    pub fn of(err: &ProxyError) -> Self {
        match err {
            ProxyError::Upstream { .. } => Self::Upstream,
            ProxyError::NoReplica { .. } | ProxyError::ScaledToZero { .. } => Self::NoReplica,
            ProxyError::Timeout { .. } => Self::Timeout,
            ProxyError::UnknownHost { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::BodyTimeout(_)
            | ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge(_) => Self::Client,
            ProxyError::Paused { .. } => Self::Paused,
            ProxyError::Maintenance(_) => Self::Maintenance,
        }
    }

    /// Its name in the access log and the metrics' `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::NoReplica => "no_replica",
            Self::Timeout => "timeout",
            Self::Client => "client",
            Self::Paused => "paused",
            Self::Maintenance => "maintenance",
        }
    }
}

impl RetryReason {
    /// Every reason, in the order of their values.
    pub const ALL: [Self; 3] = [Self::NotSent, Self::Idempotent, Self::StaleConnection];

    /// Its name in the metrics' `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotSent => "not_sent",
            Self::Idempotent => "idempotent",
            Self::StaleConnection => "stale_connection",
        }
    }
}

impl HoldReason {
    /// Every reason, in the order of their values.
    pub const ALL: [Self; 3] = [Self::Queue, Self::Pause, Self::Handoff];

    /// Its name in the metrics' `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Pause => "pause",
            Self::Handoff => "handoff",
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the bytes it yields into its request's
    /// trace and finishes the trace when it is dropped (its last byte sent,
    /// or the client gone).
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        finish: Finish,
    }
}

/// Finishes a trace when dropped.
struct Finish {
    trace: Option<Trace>,
    ops: Arc<Ops>,
}

impl<B> TracedBody<B> {
    /// `inner`, traced by `trace` until `ops` finishes it.
    pub fn new(inner: B, trace: Trace, ops: Arc<Ops>) -> Self {
        Self {
            inner,
            finish: Finish {
                trace: Some(trace),
                ops,
            },
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(trace) = self.trace.take() {
            self.ops.finish(trace);
        }
    }
}

impl<B: http_body::Body> http_body::Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(trace) = &mut this.finish.trace {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        trace.bytes += data.remaining() as u64;
                    }
                }
                Poll::Ready(Some(Err(_))) => trace.error = Some(ErrorKind::Upstream),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
