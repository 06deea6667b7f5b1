//! A keep-alive connection pool to one replica. Dropping the pool (when the
//! replica starts draining) closes its idle connections; requests in flight
//! keep theirs until they finish.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The body of a request sent upstream: buffered (retryable) or streamed.
pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;

/// Timeout of a TCP connect to a replica.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool of HTTP/1.1 keep-alive connections to one replica.
#[derive(Debug, Clone)]
pub struct Pool {
    addr: SocketAddr,
    authority: http::uri::Authority,
    client: Client<HttpConnector, UpstreamBody>,
}

impl Pool {
    /// A pool to `addr` whose idle connections close after `idle_timeout`.
    pub fn new(addr: SocketAddr, idle_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let authority = addr
            .to_string()
            .parse()
            .expect("an address is an authority");
        Self {
            addr,
            authority,
            client,
        }
    }

    /// The replica's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` (its URI is rewritten to this replica) and resolves with the
    /// response head. An error here means no response byte was received.
    pub async fn send(
        &self,
        mut req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        *req.uri_mut() = http::Uri::from_parts(uri).expect("scheme, authority and path form a URI");
        self.client.request(req).await
    }
}
