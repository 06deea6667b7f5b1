//! WebSocket tunnels that end cleanly at a replica's drain deadline: the
//! proxy follows the frames in both directions (their headers parsed by
//! tungstenite, the payloads passed through untouched) and, at the
//! deadline, lets the frame in progress finish, then sends the client a
//! close frame with code 1012 (service restart) and the replica a close
//! frame too, instead of cutting the connection under a half-sent frame. A
//! client that reconnects lands on a ready replica.

use std::io::Cursor;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// How long, after the drain deadline, a frame in progress may take to
/// finish (and the client to answer the close) before the tunnel is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The reason sent with the 1012 close.
const REASON: &str = "service restart";

/// Relays a WebSocket tunnel between `client` and `upstream` until either
/// ends it or `deadline` is cancelled; then closes both at a frame boundary
/// with 1012.
pub(super) async fn tunnel<C, U>(client: C, upstream: U, deadline: CancellationToken)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let (mut to_client, mut to_upstream) = (Frames::default(), Frames::default());
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    let (mut client_eof, mut upstream_eof) = (false, false);
    let (mut client_closed, mut upstream_closed) = (false, false);
    let mut closing: Option<Instant> = None;
    loop {
        if closing.is_some() {
            if to_client.lost || to_upstream.lost {
                tracing::info!("WebSocket tunnel cut at the drain deadline (frames not followed)");
                return;
            }
            if !client_closed && to_client.at_boundary() {
                client_closed = true;
                if client_write.write_all(&close_frame(false)).await.is_err() {
                    return;
                }
            }
            if !upstream_closed && to_upstream.at_boundary() {
                upstream_closed = true;
                let _ = upstream_write.write_all(&close_frame(true)).await;
                let _ = upstream_write.shutdown().await;
            }
            if client_closed && upstream_closed {
                break;
            }
        }
        if client_eof && upstream_eof {
            return;
        }
        let grace = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = client_read.read(&mut from_client), if !client_eof => {
                let n = read.unwrap_or(0);
                if n == 0 {
                    client_eof = true;
                    let _ = upstream_write.shutdown().await;
                    continue;
                }
                let n = to_upstream.feed(&from_client[..n], closing.is_some());
                if !upstream_closed && upstream_write.write_all(&from_client[..n]).await.is_err() {
                    return;
                }
            }
            read = upstream_read.read(&mut from_upstream), if !upstream_eof => {
                let n = read.unwrap_or(0);
                if n == 0 {
                    upstream_eof = true;
                    let _ = client_write.shutdown().await;
                    continue;
                }
                let n = to_client.feed(&from_upstream[..n], closing.is_some());
                if !client_closed && client_write.write_all(&from_upstream[..n]).await.is_err() {
                    return;
                }
            }
            () = deadline.cancelled(), if closing.is_none() => {
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            () = grace => {
                tracing::info!("WebSocket tunnel cut: a frame was still in progress {CLOSE_GRACE:?} after the drain deadline");
                return;
            }
        }
    }
    tracing::info!("WebSocket tunnel closed with 1012 at the drain deadline");
    // The server closes the TCP connection first (RFC 6455 §7.1.1); reading
    // the client's answer until its end (within the grace) keeps the close
    // frame from being lost to a reset.
    let _ = client_write.shutdown().await;
    let at = closing.unwrap_or_else(Instant::now);
    let _ = tokio::time::timeout_at(at, async {
        while !client_eof {
            client_eof = !matches!(client_read.read(&mut from_client).await, Ok(n) if n > 0);
        }
    })
    .await;
}

/// A close frame with 1012, masked when it goes to the replica (frames from
/// a client are masked, RFC 6455 §5.3).
fn close_frame(masked: bool) -> Vec<u8> {
    let mut frame = Frame::close(Some(CloseFrame {
        code: CloseCode::Restart,
        reason: REASON.into(),
    }));
    if masked {
        frame.header_mut().mask = Some(rand::random());
    }
    let mut out = Vec::with_capacity(2 + 4 + 2 + REASON.len());
    frame
        .format(&mut out)
        .expect("writing to a Vec does not fail");
    out
}

/// Where one direction of a tunnel stands in its stream of frames.
#[derive(Debug, Default)]
struct Frames {
    /// The bytes of a frame header read so far.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The stream is not frames as expected: no boundary can be told.
    lost: bool,
}

impl Frames {
    /// Follows `data`; returns how many of its bytes to pass on: all, or
    /// with `to_boundary` only those up to the next frame boundary.
    fn feed(&mut self, data: &[u8], to_boundary: bool) -> usize {
        let mut used = 0;
        while used < data.len() && !self.lost {
            if self.remaining > 0 {
                let n = self.remaining.min((data.len() - used) as u64);
                used += n as usize;
                self.remaining -= n;
                continue;
            }
            if to_boundary && self.header.is_empty() {
                break;
            }
            let before = self.header.len();
            let take = (14 - before).min(data.len() - used);
            self.header.extend_from_slice(&data[used..used + take]);
            let mut cursor = Cursor::new(&self.header);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((_, payload))) => {
                    used += cursor.position() as usize - before;
                    self.header.clear();
                    self.remaining = payload;
                }
                Ok(None) => used += take,
                Err(_) => self.lost = true,
            }
        }
        if self.lost { data.len() } else { used }
    }

    /// Whether the bytes passed on so far end with a whole frame.
    fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = Frame::message(
            payload.to_vec(),
            tungstenite::protocol::frame::coding::OpCode::Data(
                tungstenite::protocol::frame::coding::Data::Binary,
            ),
            true,
        );
        if masked {
            f.header_mut().mask = Some([1, 2, 3, 4]);
        }
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[test]
    fn boundaries_are_found_across_reads() {
        let mut stream = frame(&[7; 300], true);
        stream.extend(frame(b"", false));
        stream.extend(frame(b"abc", false));
        let mut frames = Frames::default();
        // One byte at a time: a boundary after each whole frame only.
        let mut boundaries = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            assert_eq!(frames.feed(std::slice::from_ref(b), false), 1);
            if frames.at_boundary() {
                boundaries.push(i + 1);
            }
        }
        assert_eq!(boundaries, [308, 310, 315]);
        // Stopping at the boundary: the bytes of the next frame are held back.
        let mut frames = Frames::default();
        assert_eq!(frames.feed(&stream[..100], false), 100);
        assert_eq!(frames.feed(&stream[100..], true), 208);
        assert!(frames.at_boundary());
    }

    #[test]
    fn the_close_frame_says_1012() {
        let bytes = close_frame(false);
        assert_eq!(&bytes[..4], &[0x88, 2 + REASON.len() as u8, 0x03, 0xf4]);
        let masked = close_frame(true);
        assert_eq!(masked[1] & 0x80, 0x80);
        assert_eq!(masked.len(), bytes.len() + 4);
    }
}
