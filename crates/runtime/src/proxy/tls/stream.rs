//! A client's TLS connection over rustls's *unbuffered* API, whose buffers
//! are ours: a connection waiting for its next request holds none.
//! tokio-rustls's connection (rustls's buffered one) keeps a 4 KiB read
//! buffer for its whole life, about half of what an idle TLS client costs
//! (8.6 KB against 4.4 KB of rustls state, counted by allocation).
//!
//! The TLS bytes read are processed at once: application data is
//! decrypted straight into the reader's buffer (into `plain` past its
//! room), and what the connection must send (its handshake, tickets, a key
//! update, alerts) is encoded into `outgoing`, which is sent before the
//! next wait for the client.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
    WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::buffer;
use crate::proxy::front::ClientIo;

/// Room for the largest handshake message rustls takes (64 KiB, joined
/// across records in this buffer) and a record after it; a client sending
/// more without completing a message is cut off.
const MAX_INCOMING: usize = 64 * 1024 + 2 * RECORD;

/// The largest TLS record on the wire: 16 KiB of plaintext, its padding,
/// tag and header.
const RECORD: usize = 16 * 1024 + 256 + 5;

/// Least room a read of the socket is given.
const MIN_READ: usize = 4096;

/// Unsent TLS bytes at which a write first waits for the socket; a write
/// adds at most this many more.
const MAX_OUTGOING: usize = 4 * RECORD;

/// How far [`TlsStream::process`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The handshake is done; what was read is processed.
    Traffic,
    /// The handshake waits for the client.
    Handshaking,
    /// Both sides said close_notify.
    Closed,
}

/// A TLS connection to a client, after its handshake (see
/// [`TlsAcceptor::accept`](super::TlsAcceptor::accept)).
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes read, not yet processed (a record's start); given back
    /// (see [`buffer`]) whenever everything read is processed.
    incoming: BytesMut,
    /// Plaintext decrypted, not yet read.
    plain: BytesMut,
    /// TLS bytes to send: `outgoing[sent..filled]`. Its bytes past
    /// `filled` are initialized too (rustls encrypts into a `&mut [u8]`):
    /// it grows, and is zeroed, only when a write needs more room.
    outgoing: Vec<u8>,
    sent: usize,
    filled: usize,
    /// The client said close_notify: reads end once `plain` is read.
    peer_closed: bool,
    /// The client's socket ended (with or without close_notify).
    eof: bool,
    /// close_notify is queued.
    closing: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("incoming", &self.incoming.len())
            .field("plain", &self.plain.len())
            .field("unsent", &(self.filled - self.sent))
            .finish_non_exhaustive()
    }
}

/// Runs the server's side of a handshake on `tcp`.
pub(super) async fn accept(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: BytesMut::new(),
        plain: BytesMut::new(),
        outgoing: Vec::new(),
        sent: 0,
        filled: 0,
        peer_closed: false,
        eof: false,
        closing: false,
    };
    loop {
        let step = match stream.process(None, |_, _| Ok(())) {
            Ok(step) => step,
            Err(e) => {
                // The alert that says why goes out if the socket takes it.
                stream.encode_alerts();
                let _ = std::future::poll_fn(|cx| stream.poll_send(cx)).await;
                return Err(e);
            }
        };
        std::future::poll_fn(|cx| stream.poll_send(cx)).await?;
        match step {
            Step::Traffic => {
                // The handshake's flight (the certificate chain) is sent.
                stream.outgoing = Vec::new();
                return Ok(stream);
            }
            Step::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
            Step::Handshaking if stream.eof || stream.peer_closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed its connection during the handshake",
                ));
            }
            Step::Handshaking => {
                std::future::poll_fn(|cx| stream.poll_receive(cx)).await?;
            }
        }
    }
}

impl TlsStream {
    /// The client's socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    /// The protocol the client and the proxy agreed on by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Whether a read would return at once: plaintext is waiting, or the
    /// connection has ended.
    fn has_read_ready(&self) -> bool {
        !self.plain.is_empty() || self.peer_closed || self.eof
    }

    /// Drops the buffers an idle connection does not need (everything
    /// read is processed, everything written sent).
    pub fn release_buffers(&mut self) {
        if self.incoming.is_empty() {
            buffer::give_back(std::mem::take(&mut self.incoming));
        }
        if self.plain.is_empty() {
            self.plain = BytesMut::new();
        }
        if self.sent == self.filled {
            self.outgoing = Vec::new();
            self.sent = 0;
            self.filled = 0;
        }
    }

    /// Processes the TLS bytes read, until the connection waits for the
    /// client; `write` runs when the handshake is done, with the
    /// connection's write side and this stream's outgoing bytes.
    fn process(
        &mut self,
        mut into: Option<&mut ReadBuf<'_>>,
        mut write: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut Outgoing<'_>,
        ) -> io::Result<()>,
    ) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let mut out = Outgoing {
                buf: &mut self.outgoing,
                filled: &mut self.filled,
            };
            let step = match state.map_err(invalid)? {
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(record) = read.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        // To the reader at once; what it has no room for
                        // waits in `plain`.
                        let mut payload = record.payload;
                        if let Some(into) = into.as_deref_mut() {
                            let n = payload.len().min(into.remaining());
                            into.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        self.plain.extend_from_slice(payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    out.put(|buf| encode.encode(buf).map_err(Short::from))?;
                    None
                }
                // Sent before the connection next waits for the client.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Step::Closed),
                ConnectionState::WriteTraffic(mut traffic) => {
                    write(&mut traffic, &mut out)?;
                    Some(Step::Traffic)
                }
                ConnectionState::BlockedHandshake => Some(Step::Handshaking),
                // Early data is not enabled (`max_early_data_size` is 0).
                state => return Err(invalid(format!("unexpected TLS state {state:?}"))),
            };
            self.incoming.advance(discard);
            if let Some(step) = step {
                if self.incoming.is_empty() && self.incoming.capacity() > 0 {
                    buffer::give_back(std::mem::take(&mut self.incoming));
                }
                return Ok(step);
            }
        }
    }

    /// After an error: encodes the alerts rustls queued (the client learns
    /// why), as far as it lets.
    fn encode_alerts(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            let mut out = Outgoing {
                buf: &mut self.outgoing,
                filled: &mut self.filled,
            };
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let put = out.put(|buf| encode.encode(buf).map_err(Short::from));
                    if put.is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// Sends the outgoing TLS bytes; ready once all are sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.filled {
            let n = std::task::ready!(
                Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..self.filled])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        self.filled = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads TLS bytes from the socket into `incoming`; ready once some
    /// came (or the socket ended: `eof`). Waiting, it holds no buffer it
    /// did not hold before.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(invalid("a TLS message larger than 64 KiB")));
        }
        if self.incoming.capacity() == 0 {
            self.incoming = buffer::take();
        }
        // More room when little is left: rustls processes only whole
        // records (up to 16 KiB), a record that does not fit yet is read
        // in parts.
        if self.incoming.capacity() - self.incoming.len() < MIN_READ {
            let more = buffer::BUFFER.min(MAX_INCOMING - self.incoming.len());
            self.incoming.reserve(more);
        }
        // tokio's read: a short read clears the socket's readiness, so the
        // next wait does not try a read that would block first.
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.incoming) {
            Poll::Ready(Ok(0)) => {
                self.eof = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.incoming.is_empty() {
                    buffer::give_back(std::mem::take(&mut self.incoming));
                }
                Poll::Pending
            }
        }
    }

    /// Reads and processes more of what the client sends (its plaintext
    /// into `into`, and `plain` past its room), once what the connection
    /// must answer is on its way.
    fn poll_more(&mut self, cx: &mut Context<'_>, into: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.send_what_fits(cx)?;
        std::task::ready!(self.poll_receive(cx))?;
        if self.process(Some(into), |_, _| Ok(()))? == Step::Closed {
            self.peer_closed = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what is unsent without waiting; an error of the socket is
    /// returned, a full socket is not.
    fn send_what_fits(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_send(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }
}

/// The outgoing bytes of a [`TlsStream`], as rustls writes into them.
struct Outgoing<'a> {
    buf: &'a mut Vec<u8>,
    filled: &'a mut usize,
}

impl Outgoing<'_> {
    /// Lets `put` write at the end of the outgoing bytes (it returns how
    /// many it wrote, or the room it needs: the buffer grows and it runs
    /// again, or an error).
    fn put(&mut self, mut put: impl FnMut(&mut [u8]) -> Result<usize, Short>) -> io::Result<()> {
        loop {
            match put(&mut self.buf[*self.filled..]) {
                Ok(n) => {
                    *self.filled += n;
                    return Ok(());
                }
                Err(Short::Room(InsufficientSizeError { required_size })) => {
                    let len = (*self.filled + required_size).max(2 * self.buf.len());
                    self.buf.resize(len, 0);
                }
                Err(Short::Failed(e)) => return Err(e),
            }
        }
    }

    fn encrypt(
        &mut self,
        traffic: &mut WriteTraffic<'_, ServerConnectionData>,
        data: &[u8],
    ) -> io::Result<()> {
        self.put(|buf| traffic.encrypt(data, buf).map_err(Short::from))
    }
}

/// Why rustls wrote nothing into the outgoing bytes.
enum Short {
    /// They need this much room.
    Room(InsufficientSizeError),
    /// It cannot write at all.
    Failed(io::Error),
}

impl From<EncodeError> for Short {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(size) => Self::Room(size),
            e => Self::Failed(invalid(e)),
        }
    }
}

impl From<EncryptError> for Short {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(size) => Self::Room(size),
            e => Self::Failed(invalid(e)),
        }
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                if this.plain.is_empty() {
                    // Rarely needed: not kept for the connection's life.
                    this.plain = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A truncation attack looks like this; the reader decides.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed its connection without a TLS close_notify",
                )));
            }
            // Bytes read but not processed yet (see `poll_readable`).
            if !this.incoming.is_empty() {
                let before = buf.filled().len();
                if this.process(Some(buf), |_, _| Ok(()))? == Step::Closed {
                    this.peer_closed = true;
                }
                if buf.filled().len() > before || !this.plain.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if this.peer_closed || this.eof {
                    continue;
                }
            }
            let before = buf.filled().len();
            std::task::ready!(this.poll_more(cx, buf))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.filled - this.sent >= MAX_OUTGOING {
            std::task::ready!(this.poll_send(cx))?;
        }
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Bounded, so the outgoing bytes are too.
        let data = &data[..data.len().min(MAX_OUTGOING)];
        let step = this.process(None, |traffic, out| out.encrypt(traffic, data))?;
        if step != Step::Traffic {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send_what_fits(cx)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send(cx))?;
        // A response sent whole: its buffer is not kept for the
        // connection's life (an HTTP/2 connection is never parked).
        this.outgoing = Vec::new();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            let step = this.process(None, |traffic, out| {
                out.put(|buf| traffic.queue_close_notify(buf).map_err(Short::from))
            })?;
            if step != Step::Traffic {
                // Both sides said it already: nothing to add.
                return Pin::new(&mut this.tcp).poll_shutdown(cx);
            }
        }
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

impl ClientIo for TlsStream {
    // Its serving task is several KB more than the session (see `park`).
    const PARKS: bool = true;
    const CLOSE_NOTIFY: bool = true;

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Plaintext already decrypted (a pipelined request), TLS bytes not
        // yet processed (part of a record is a request under way), or the
        // end: a read does not wait. The socket's readiness alone can be
        // stale: its bytes are read (and processed by the read that
        // follows, into the reader's buffer).
        loop {
            if self.has_read_ready() || !self.incoming.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.send_what_fits(cx)?;
            std::task::ready!(self.poll_receive(cx))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS client (tokio-rustls) connected to a [`TlsStream`] over
    /// loopback, its certificate generated for `localhost`.
    async fn pair() -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, Arc::new(server)).await.unwrap()
        };
        let (client, server) = tokio::join!(connect, accept);
        (server, client)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_reader_with_a_one_byte_buffer_gets_every_byte_in_order() {
        let (mut server, mut client) = pair().await;
        // Records of every size up to a full one, in one go.
        let sent = data(40_000);
        let writer = async {
            for chunk in sent.chunks(7_000) {
                client.write_all(chunk).await.unwrap();
            }
            client.flush().await.unwrap();
            client
        };
        let reader = async {
            let mut got = Vec::new();
            let mut one = [0u8; 1];
            while got.len() < sent.len() {
                let n = server.read(&mut one).await.unwrap();
                assert_eq!(n, 1, "no end before all was read");
                got.push(one[0]);
            }
            got
        };
        let (_client, got) = tokio::join!(writer, reader);
        assert!(got == sent, "the bytes differ");
        // Nothing is held once everything is read.
        assert!(server.plain.is_empty() && server.incoming.is_empty());
    }

    #[tokio::test]
    async fn a_large_write_to_a_full_socket_arrives_whole_with_bounded_buffers() {
        let (mut server, mut client) = pair().await;
        // Small socket buffers: the socket is full long before the writer
        // is done, as with a client on a slow network.
        socket2::SockRef::from(&server.tcp)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        socket2::SockRef::from(client.get_ref().0)
            .set_recv_buffer_size(16 * 1024)
            .unwrap();
        let sent = data(512 * 1024);
        let writer = async {
            let mut most = 0;
            let mut rest = &sent[..];
            while !rest.is_empty() {
                let n = server.write(rest).await.unwrap();
                rest = &rest[n..];
                most = most.max(server.filled - server.sent);
            }
            server.flush().await.unwrap();
            server.shutdown().await.unwrap();
            most
        };
        let reader = async {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = client.read(&mut buf).await.unwrap();
                if n == 0 {
                    break got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        };
        let (most, got) = tokio::join!(writer, reader);
        assert!(
            got == sent,
            "{} of {} bytes, or different",
            got.len(),
            sent.len()
        );
        assert!(most <= 2 * MAX_OUTGOING, "{most} bytes left unsent at once");
        // The client read to a close_notify (`Ok(0)`, not an error).
    }
}
