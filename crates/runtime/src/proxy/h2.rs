//! HTTP/2 connections, h2c and over TLS: dropless's own stream layer over
//! the `h2` crate's frame codec. The codec parses the frames and header
//! blocks (HPACK) the client sends, with the checks a hostile client meets
//! at that level (frame sizes, padding, header list size, CONTINUATION
//! floods); this module keeps the streams: their states, flow control both
//! ways, the limits on streams a client opens, resets and provokes, and
//! each request's handler run in the connection's own task (see [`conn`]).
//! The frames it sends it writes itself ([`write`]), response heads
//! encoded without a dynamic table ([`hpack`]).
//!
//! The `h2` crate's own server does the same with a stream store, send
//! queues and a task-shared state per stream, which cost about 18 000
//! instructions per request; the codec alone, about 18 000 for the whole
//! exchange in front of the same forwarding (docs/benchmarks.md, session
//! 13).

mod body;
mod conn;
mod hpack;
mod sniff;
mod write;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub(super) use body::RecvBody;

use super::{ClientInfo, Proxy};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves an HTTP/2 connection on `io` until it ends, `stop` fires (then
/// GOAWAY, and its open streams finish), it is idle for the header read
/// timeout (no stream open, no frame read; then GOAWAY), or the client
/// takes nothing for the send timeout.
pub(super) async fn serve<T>(
    proxy: Arc<Proxy>,
    mut io: T,
    client: Arc<ClientInfo>,
    stop: &CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let config = proxy.config.load_full();
    let mut preface = [0; PREFACE.len()];
    let read = tokio::time::timeout(config.header_read_timeout, io.read_exact(&mut preface)).await;
    if !matches!(read, Ok(Ok(_))) || &preface != PREFACE {
        tracing::debug!(peer = %client.peer, "no HTTP/2 preface");
        return;
    }
    conn::Connection::new(io, proxy, client, config.max_header_bytes)
        .serve(stop, config.header_read_timeout, config.send_timeout)
        .await;
}
