//! The forwarding core: the one place that decides where a request goes,
//! how long it may wait and whether a failed attempt may be made again.
//! The fast path and the hyper path each bring an *attempt* (move the
//! request's bytes to one replica and get a response head back) and follow
//! what this module decides; neither has a retry rule of its own.
//!
//! The rule (nginx's since 1.9.13): a request that was not written at all
//! (connect refused, the write failed before its first byte) may go to
//! another replica; a request that was written may have been executed, so it
//! is sent again only when doing it twice is harmless: its method is
//! idempotent (RFC 9110 §9.2.2) or it carries `Idempotency-Key` and
//! `proxy.retry_idempotency_key` is on. Once any byte of a response came
//! back, the request is never sent again. Every send counts as an attempt,
//! a re-send on a pooled connection the replica had closed included.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use super::ProxyError;
use crate::config::ProxyConfig;
use crate::ops::{HoldReason, Ops, RetryReason, Trace};
use crate::proxy::balance::{self, Pick};
use crate::supervisor::Supervisor;
use crate::supervisor::replica::Replica;

/// The header that makes a non-idempotent request safe to send twice, when
/// `proxy.retry_idempotency_key` is on.
pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How far a failed attempt got: what the replica may have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// No byte of the request reached the replica (the connect failed, or
    /// the first write did).
    Nothing,
    /// Some or all of the request was written; the replica may have
    /// executed it. No response byte came back.
    Request,
    /// Some bytes of a response came back, then it failed.
    Response,
}

/// One failed attempt.
#[derive(Debug)]
pub(super) struct AttemptError {
    /// How far it got.
    pub(super) sent: Sent,
    /// What failed, for the log and the client's error body.
    pub(super) message: String,
    /// It failed on a pooled connection that was reused: a stale socket,
    /// not a sign that the replica is down, so the replica stays eligible.
    pub(super) reused: bool,
    /// The request's body was streamed and is gone: it cannot be sent again.
    pub(super) body_gone: bool,
}

/// Whether a request that was written may be written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Its method is idempotent, or its idempotency key is honoured.
    Safe,
    /// It may have effects that must not happen twice.
    Unsafe,
}

impl Replay {
    /// The replay rule for a request with `method`, carrying an
    /// `Idempotency-Key` header or not.
    pub(super) fn of(method: &[u8], has_key: bool, config: &ProxyConfig) -> Self {
        let idempotent = matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        );
        if idempotent || (has_key && config.retry_idempotency_key) {
            Self::Safe
        } else {
            Self::Unsafe
        }
    }
}

impl AttemptError {
    /// Whether the request may be sent to a replica again after this.
    fn may_resend(&self, replay: Replay) -> bool {
        if self.body_gone {
            return false;
        }
        match self.sent {
            Sent::Nothing => true,
            Sent::Request => replay == Replay::Safe,
            Sent::Response => false,
        }
    }
}

/// One way of sending a request to a replica and getting its response
/// head: the only thing a protocol path brings to [`forward`].
pub(super) trait Attempt {
    /// What a successful attempt yields (a response head, a connection).
    type Output;

    /// Sends the request to `pick`'s replica once.
    fn send(
        &mut self,
        pick: &Pick,
    ) -> impl Future<Output = Result<Self::Output, AttemptError>> + Send;
}

/// Sends a request to a replica of `service` with `attempt`, and again on
/// another replica while a failure allows it; returns the successful
/// attempt's replica (still counting the request) and result, or the error
/// the client gets. `response_deadline` bounds each attempt by
/// `response_timeout` (a [`LazyDeadline`] a connection reuses). A request
/// with a session `key` (hashed, [`crate::proxy::affinity`]) goes to the
/// key's owner. `trace` gets the service, each attempt's replica and the
/// retries; `ops` holds the request first while traffic is paused.
// The settings, the service and the request's own parts, each used once.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<A: Attempt>(
    config: &ProxyConfig,
    service: &Supervisor,
    key: Option<u64>,
    replay: Replay,
    response_deadline: &mut LazyDeadline,
    attempt: &mut A,
    trace: &mut Trace,
    ops: &Ops,
) -> Result<(Pick, A::Output), ProxyError> {
    trace.routed(service);
    ops.admit(trace).await?;
    let deadline = Instant::now() + config.queue_timeout;
    let mut tried: Vec<Arc<Replica>> = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let pick = {
            // A pick not ready at its first poll waited for a replica.
            let picking = async {
                match (key, service.affinity()) {
                    (Some(key), Some(affinity)) => {
                        affinity.pick(service, key, &tried, deadline).await
                    }
                    _ => balance::pick(service, &tried, deadline).await,
                }
            };
            tokio::pin!(picking);
            let mut waiting_since = None;
            let picked = std::future::poll_fn(|cx| {
                let polled = picking.as_mut().poll(cx);
                if polled.is_pending() {
                    waiting_since.get_or_insert_with(Instant::now);
                }
                polled
            })
            .await;
            let picked = picked
                .map_err(|no| ProxyError::no_pick(no, service.name(), config.queue_timeout))?;
            // A hold for a handoff is its own reason; any other wait was for
            // a ready replica.
            if !picked.held.is_zero() {
                trace.held(HoldReason::Handoff, picked.held);
            } else if let Some(since) = waiting_since {
                trace.held(HoldReason::Queue, since.elapsed());
            }
            picked
        };
        trace.attempt(&pick.replica);
        let started = Instant::now();
        response_deadline.set(started + config.response_timeout);
        let result = {
            let run = attempt.send(&pick);
            tokio::pin!(run);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = run.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                response_deadline.poll_expired(cx).map(|()| None)
            })
            .await
        };
        let failure = match result {
            Some(Ok(value)) => {
                trace.upstream = Some(started.elapsed());
                return Ok((pick, value));
            }
            Some(Err(failure)) => failure,
            None => {
                return Err(ProxyError::Timeout {
                    replica: pick.replica.name().to_string(),
                    waited: config.response_timeout,
                });
            }
        };
        // A stale pooled connection says little of the replica, but its
        // other idle connections are likely stale too: the next attempt
        // there connects afresh (a dead replica then refuses it, and a
        // request not written goes to another replica).
        if failure.reused && failure.sent != Sent::Response {
            pick.pool.clear_idle();
        }
        let resend = failure.may_resend(replay);
        let err = ProxyError::Upstream {
            replica: pick.replica.name().to_string(),
            message: failure.message,
            sent: failure.sent,
        };
        if !resend || attempts >= config.max_attempts {
            return Err(err);
        }
        tracing::info!("{err}; sending it again (attempt {})", attempts + 1);
        trace.retry(if failure.reused {
            RetryReason::StaleConnection
        } else if failure.sent == Sent::Nothing {
            RetryReason::NotSent
        } else {
            RetryReason::Idempotent
        });
        if !failure.reused {
            tried.push(Arc::clone(&pick.replica));
        }
    }
}

/// A deadline that moves with every request and fires rarely: its timer is
/// re-armed only when it fires before the deadline, so a busy connection's
/// moving deadline costs no timer operation per request.
pub(super) struct LazyDeadline {
    at: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl LazyDeadline {
    /// A deadline at `at`.
    pub(super) fn new(at: Instant) -> Self {
        Self {
            at,
            sleep: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    /// Moves it to `at`.
    pub(super) fn set(&mut self, at: Instant) {
        self.at = at;
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
    }

    /// Ready once the deadline has passed.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.at {
                return Poll::Ready(());
            }
            let at = self.at;
            self.sleep.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(sent: Sent) -> AttemptError {
        AttemptError {
            sent,
            message: String::new(),
            reused: false,
            body_gone: false,
        }
    }

    #[test]
    fn only_idempotent_or_keyed_requests_are_replayed_once_written() {
        let mut config = ProxyConfig::default();
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert_eq!(
                Replay::of(m.as_bytes(), false, &config),
                Replay::Safe,
                "{m}"
            );
        }
        for m in ["POST", "PATCH", "CONNECT", "get", "FOO"] {
            assert_eq!(
                Replay::of(m.as_bytes(), false, &config),
                Replay::Unsafe,
                "{m}"
            );
        }
        assert_eq!(Replay::of(b"POST", true, &config), Replay::Unsafe);
        config.retry_idempotency_key = true;
        assert_eq!(Replay::of(b"POST", true, &config), Replay::Safe);
        assert_eq!(Replay::of(b"POST", false, &config), Replay::Unsafe);

        let unsafe_ = Replay::Unsafe;
        assert!(failure(Sent::Nothing).may_resend(unsafe_));
        assert!(!failure(Sent::Request).may_resend(unsafe_));
        assert!(failure(Sent::Request).may_resend(Replay::Safe));
        assert!(!failure(Sent::Response).may_resend(Replay::Safe));
        let gone = AttemptError {
            body_gone: true,
            ..failure(Sent::Nothing)
        };
        assert!(!gone.may_resend(Replay::Safe));
    }
}
