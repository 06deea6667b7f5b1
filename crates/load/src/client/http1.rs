//! A lean HTTP/1.1 client connection, owned by the loop that uses it.
//!
//! No connection task and no channel: the request is written from a buffer
//! serialized once per run, the response read into a buffer reused for the
//! life of the connection and parsed with httparse. Every I/O error is seen
//! where it happens, so `reset`, `eof` and `timeout` are exact, and the
//! first response byte is timed as it arrives.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::outcome::{Failure, FailureClass};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers parsed.
const MAX_HEADERS: usize = 64;
/// Initial read buffer of a connection.
const BUFFER: usize = 8 * 1024;

/// One HTTP/1.1 connection over any byte stream.
pub(crate) struct Conn<S> {
    stream: S,
    buf: ReadBuf,
    /// Whether a request was already sent on it.
    pub(crate) used: bool,
    /// Whether it can carry another request.
    pub(crate) reusable: bool,
    /// Whether the last response said the server closes the connection
    /// after it (`Connection: close`, HTTP/1.0, or a body ended by the close).
    pub(crate) closing: bool,
}

/// How the body of a response ends.
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(crate) fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: ReadBuf::new(),
            used: false,
            reusable: true,
            closing: false,
        }
    }

    pub(crate) fn stream(&self) -> &S {
        &self.stream
    }

    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Send `request` (a serialized request) and read the whole response.
    /// `on_body` sees every body byte. Returns the status; `first_byte` is
    /// set when the response begins.
    pub(crate) async fn exchange(
        &mut self,
        request: &Bytes,
        head_request: bool,
        first_byte: &mut Option<Instant>,
        mut on_body: impl FnMut(&[u8]),
    ) -> Result<u16, Failure> {
        self.used = true;
        self.reusable = false;
        self.buf.clear();
        self.stream
            .write_all(request)
            .await
            .map_err(|e| Failure::classify(&e))?;
        let (status, framing, keep) = loop {
            let head = self.read_head(first_byte).await?;
            // 100 Continue and friends: the real response follows.
            if !(100..200).contains(&head.0) || head.0 == 101 {
                break head;
            }
        };
        let framing = match framing {
            _ if head_request || status == 204 || status == 304 => Framing::Empty,
            framing => framing,
        };
        if status == 101 {
            return Err(Failure::other("the server switched protocols (101)"));
        }
        // A body delimited by the close cannot be followed by another response.
        let keep = keep && !matches!(framing, Framing::UntilClose);
        self.closing = !keep;
        match framing {
            Framing::Empty => {}
            Framing::Length(n) => self.read_exact_body(n, &mut on_body).await?,
            Framing::Chunked => self.read_chunked(&mut on_body).await?,
            Framing::UntilClose => {
                loop {
                    on_body(self.buf.filled());
                    self.buf.clear();
                    if self.fill().await? == 0 {
                        break;
                    }
                }
                return Ok(status);
            }
        }
        // Bytes beyond the response: the connection is out of step.
        self.reusable = keep && self.buf.filled().is_empty();
        Ok(status)
    }

    /// Read and parse one response head: status, body framing, keep-alive.
    async fn read_head(
        &mut self,
        first_byte: &mut Option<Instant>,
    ) -> Result<(u16, Framing, bool), Failure> {
        loop {
            if !self.buf.filled().is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(self.buf.filled()) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = interpret(&response)?;
                        self.buf.consume(len);
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) if self.buf.filled().len() < MAX_HEAD => {}
                    Ok(httparse::Status::Partial) => {
                        return Err(Failure::other("response head too large"));
                    }
                    Err(e) => return Err(Failure::other(format!("invalid response: {e}"))),
                }
            }
            if self.fill().await? == 0 {
                return Err(Failure::new(FailureClass::Eof));
            }
            first_byte.get_or_insert_with(Instant::now);
        }
    }

    async fn read_exact_body(
        &mut self,
        mut remaining: u64,
        on_body: &mut impl FnMut(&[u8]),
    ) -> Result<(), Failure> {
        loop {
            let available = self.buf.filled();
            let take = available
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            on_body(&available[..take]);
            self.buf.consume(take);
            remaining -= take as u64;
            if remaining == 0 {
                return Ok(());
            }
            if self.fill().await? == 0 {
                return Err(Failure::new(FailureClass::Eof));
            }
        }
    }

    async fn read_chunked(&mut self, on_body: &mut impl FnMut(&[u8])) -> Result<(), Failure> {
        loop {
            let line = self.read_line().await?;
            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| Failure::other("invalid chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            self.read_exact_body(size, on_body).await?;
            if !self.read_line().await?.is_empty() {
                return Err(Failure::other("invalid chunk end"));
            }
        }
    }

    /// One CRLF-terminated line, without its CRLF (returned owned: chunk
    /// lines are short and rare next to the data).
    async fn read_line(&mut self) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = self.buf.filled().windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.filled()[..i].to_vec();
                self.buf.consume(i + 2);
                return Ok(line);
            }
            if self.buf.filled().len() > MAX_HEAD {
                return Err(Failure::other("chunk line too long"));
            }
            if self.fill().await? == 0 {
                return Err(Failure::new(FailureClass::Eof));
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, Failure> {
        let spare = self.buf.spare();
        self.stream
            .read(spare)
            .await
            .map(|n| self.buf.advance(n))
            .map_err(|e| Failure::classify(&e))
    }
}

/// Status, framing and keep-alive from a parsed head.
fn interpret(response: &httparse::Response<'_, '_>) -> Result<(u16, Framing, bool), Failure> {
    let status = response.code.unwrap_or_default();
    let mut keep = response.version == Some(1);
    let mut framing = Framing::UntilClose;
    for header in response.headers.iter() {
        let value = header.value;
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
            match (length, &framing) {
                (Some(n), Framing::UntilClose) => framing = Framing::Length(n),
                (Some(n), Framing::Length(m)) if n == *m => {}
                (_, Framing::Chunked) => {}
                _ => return Err(Failure::other("invalid content-length")),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if has_token(value, b"chunked") {
                framing = Framing::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            if has_token(value, b"close") {
                keep = false;
            } else if has_token(value, b"keep-alive") {
                keep = true;
            }
        }
    }
    Ok((status, framing, keep))
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A read buffer with a cursor, reused for the life of a connection.
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn new() -> Self {
        ReadBuf {
            data: vec![0; BUFFER],
            start: 0,
            end: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Room to read into: compacts, and grows when full.
    fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() {
            self.data.resize(self.data.len() * 2, 0);
        }
        &mut self.data[self.end..]
    }

    fn advance(&mut self, n: usize) -> usize {
        self.end += n;
        n
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Play `response` to one request; return the status, body and whether
    /// the connection is reusable.
    async fn exchange(response: &'static [u8]) -> (Result<u16, FailureClass>, Vec<u8>, bool) {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let mut request = [0u8; 64];
            let _ = server.read(&mut request).await;
            // Dribble the response to exercise partial reads.
            for chunk in response.chunks(7) {
                let _ = server.write_all(chunk).await;
            }
        });
        let mut conn = Conn::new(client);
        let mut body = Vec::new();
        let mut first = None;
        let request = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
        let status = conn
            .exchange(&request, false, &mut first, |b| body.extend_from_slice(b))
            .await;
        (status.map_err(|f| f.class), body, conn.reusable)
    }

    #[tokio::test]
    async fn framings_are_read_to_the_end() {
        let length = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        assert_eq!(length, (Ok(200), b"hello".to_vec(), true));
        let chunked = b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n";
        assert_eq!(exchange(chunked).await, (Ok(503), b"abcde".to_vec(), true));
        let close = exchange(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close").await;
        assert_eq!(close, (Ok(200), b"until close".to_vec(), false));
        let cont = exchange(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No\r\n\r\n").await;
        assert_eq!(cont, (Ok(204), vec![], true));
        let old = exchange(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(old, (Ok(200), vec![], false));
    }

    #[tokio::test]
    async fn truncated_and_invalid_responses_are_classified() {
        assert_eq!(exchange(b"").await.0, Err(FailureClass::Eof));
        assert_eq!(
            exchange(b"HTTP/1.1 200 OK\r\nContent-Le").await.0,
            Err(FailureClass::Eof)
        );
        let short = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello").await;
        assert_eq!(short.0, Err(FailureClass::Eof));
        assert_eq!(
            exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
                .await
                .0,
            Err(FailureClass::Eof)
        );
        assert_eq!(
            exchange(b"SSH-2.0-OpenSSH\r\n\r\n").await.0,
            Err(FailureClass::Other)
        );
        assert_eq!(
            exchange(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
                .await
                .0,
            Err(FailureClass::Other)
        );
    }
}
