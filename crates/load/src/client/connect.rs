//! Opening connections: TCP (no Nagle), optional TLS, the hyper handshake,
//! and the connection task.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::outcome::{Failure, FailureClass};

/// A connection's byte stream: plain TCP, or TLS over TCP. The TLS state is
/// boxed: inline it would make every connection, and every request future
/// holding one, kilobytes larger (and copied as such: an idle connection
/// moves out of the pool and back for every request).
pub(crate) type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Opens connections to the resolved target.
pub(crate) struct Connector {
    addrs: Vec<SocketAddr>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A TLS name for a host that is neither a DNS name nor an IP address.
#[derive(Debug, thiserror::Error)]
#[error("invalid TLS server name '{0}'")]
pub(crate) struct BadServerName(String);

impl Connector {
    /// A connector for `addrs`; with TLS when `tls` is set, verifying
    /// `host` (or anything, with `insecure`).
    pub(crate) fn new(
        addrs: Vec<SocketAddr>,
        tls: bool,
        host: &str,
        insecure: bool,
        http2: bool,
    ) -> Result<Self, BadServerName> {
        let tls = match tls {
            false => None,
            true => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|_| BadServerName(host.to_owned()))?;
                let connector = TlsConnector::from(super::tls::client_config(insecure, http2));
                Some((connector, name))
            }
        };
        Ok(Connector { addrs, tls })
    }

    pub(crate) async fn http2(&self) -> Result<http2::SendRequest<Full<Bytes>>, Failure> {
        let stream = self.stream().await?;
        if let Either::Right(tls) = &stream
            && tls.get_ref().1.alpn_protocol() != Some(b"h2")
        {
            return Err(Failure {
                class: FailureClass::Tls,
                message: Some("the server did not agree to HTTP/2 (ALPN h2)".into()),
            });
        }
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| Failure::classify(&e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// A connected stream, TLS established when the target is https.
    pub(crate) async fn stream(&self) -> Result<Stream, Failure> {
        let tcp = self.tcp().await?;
        match &self.tls {
            None => Ok(Either::Left(tcp)),
            Some((tls, name)) => match tls.connect(name.clone(), tcp).await {
                Ok(stream) => Ok(Either::Right(Box::new(stream))),
                Err(e) => Err(tls_failure(&e)),
            },
        }
    }

    async fn tcp(&self) -> Result<TcpStream, Failure> {
        let stream = TcpStream::connect(&self.addrs[..])
            .await
            .map_err(|e| Failure::classify(&e))?;
        // Small requests go out at once; Nagle would add delayed-ACK stalls.
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::classify(&e))?;
        Ok(stream)
    }
}

/// A failed TLS handshake is `tls`, unless the peer reset or the clock ran
/// out: a server that closes or answers in plain text does not speak TLS.
fn tls_failure(err: &std::io::Error) -> Failure {
    let failure = Failure::classify(err);
    match failure.class {
        FailureClass::Reset | FailureClass::Refused | FailureClass::Timeout => failure,
        _ => Failure {
            class: FailureClass::Tls,
            message: None,
        },
    }
}

/// Whether the peer already closed an idle plain-TCP connection, checked
/// before reuse as a pooling client does. The reactor's readiness is asked
/// first, so a quiet connection costs no system call. TLS streams cannot be
/// peeked; a closed one shows as `eof` on use.
pub(crate) fn peer_closed(stream: &Stream) -> bool {
    let Either::Left(tcp) = stream else {
        return false;
    };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if tcp.poll_read_ready(&mut cx).is_pending() {
        return false;
    }
    match tcp.try_read(&mut [0u8; 1]) {
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        // EOF, or bytes nobody asked for: either way not reusable.
        Ok(_) => true,
    }
}
