//! The listening socket's accept queue: a burst of new connections larger
//! than the old 128 (std's and mio's backlog) completes its handshakes at
//! once instead of waiting for a SYN retransmission (1 s).

use std::time::Duration;

use dropless_lifecycle::listen;
use tokio::net::TcpStream;

/// More connections than a 128 backlog holds, fewer than `listen::BACKLOG`
/// and than Linux's default `net.core.somaxconn` (4096).
const BURST: usize = 400;

#[tokio::test]
async fn a_burst_of_connections_is_queued_while_the_service_is_not_accepting() {
    let listener = listen::bind_addr(([127, 0, 0, 1], 0).into()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Nothing accepts: every connection must wait in the accept queue.
    let connects = (0..BURST)
        .map(|_| tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)));
    let results = futures_util::future::join_all(connects).await;
    let waiting = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(
        waiting, 0,
        "{waiting} of {BURST} connects were not answered within 500 ms"
    );
    drop(listener);
}
