//! The clients that drive the program across its SIGTERM and write down
//! what each request and connection saw: new connections (one request
//! each), keep-alive connections from a pool, one HTTP/2 connection, idle
//! keep-alive connections that are only watched, and the readiness path.
//!
//! Every client runs at a fixed arrival rate (an open model: a slow server
//! does not slow the arrivals), bounded in requests in flight; nothing is
//! judged here ([`crate::checks`] does).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dropless_load::{Answer, Closed, FailureClass, Lost, LostH2, Probe, ProbeConn, ProbeH2};
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most requests in flight per client; beyond it a tick is skipped (and
/// counted), so a server that never answers cannot exhaust sockets.
const MAX_IN_FLIGHT: usize = 2000;
/// How often the readiness path is asked.
const HEALTH_EVERY: Duration = Duration::from_millis(50);
/// Longest wait for one readiness answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Which client sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Client {
    /// A new connection per request (`Connection: close`).
    Fresh,
    /// A pooled keep-alive connection.
    KeepAlive,
    /// A stream on the HTTP/2 connection.
    H2,
    /// The readiness path, a new connection each time.
    Health,
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A complete response.
    Answered(Answer),
    /// The connection was refused: nobody listens.
    Refused,
    /// Never reached the server (an HTTP/2 connection going away refused
    /// it; a client sends it elsewhere).
    Unsent,
    /// Sent (or connected) and then lost.
    Lost(Lost),
}

/// One request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exchange {
    pub(crate) client: Client,
    pub(crate) sent: Instant,
    pub(crate) done: Instant,
    /// Sent on a keep-alive connection that had carried a request before.
    pub(crate) reused: bool,
    pub(crate) outcome: Outcome,
}

/// How a pooled keep-alive connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Its last response said `Connection: close`.
    ConnectionClose,
    /// Found closed by the server while idle, before a request was sent on
    /// it (the request went on a new connection).
    ClosedWhileIdle,
    /// A request sent on it got no response byte: lost in the close race.
    LostInRace,
    /// A response on it was cut.
    Cut,
    /// Still open when the check ended.
    Open,
}

/// The end of one pooled keep-alive connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnEnd {
    pub(crate) end: End,
    /// When the end was seen.
    pub(crate) at: Instant,
    /// When its last response completed, and whether it said close.
    pub(crate) last: Option<(Instant, bool)>,
}

/// One idle keep-alive connection, watched.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Idle {
    /// Whether its one response said `Connection: close` (no keep-alive).
    pub(crate) no_keepalive: bool,
    /// When and how the server closed it.
    pub(crate) closed: Option<(Instant, Closed)>,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) exchanges: Vec<Exchange>,
    pub(crate) ends: Vec<ConnEnd>,
    pub(crate) idle: Vec<Idle>,
    /// Ticks skipped because too many requests were in flight.
    pub(crate) skipped: u64,
}

/// The running clients.
pub(crate) struct Traffic {
    shared: Arc<Shared>,
    /// Stops new requests.
    stop: CancellationToken,
    /// Ends requests still in flight.
    cut: CancellationToken,
    tracker: TaskTracker,
}

struct Shared {
    probe: Probe,
    health: Option<Probe>,
    h2: Option<ProbeH2>,
    seen: Mutex<Seen>,
    pool: Mutex<Vec<Pooled>>,
    permits: Arc<Semaphore>,
}

struct Pooled {
    conn: ProbeConn,
    last: Option<(Instant, bool)>,
}

impl Traffic {
    /// Starts the clients: `rate` requests per second shared by the fresh,
    /// keep-alive and (with `h2`) HTTP/2 clients; the readiness path every
    /// 50 ms when given.
    pub(crate) fn start(
        probe: Probe,
        health: Option<Probe>,
        h2: Option<ProbeH2>,
        rate: f64,
    ) -> Self {
        let clients: &[Client] = match h2 {
            Some(_) => &[Client::Fresh, Client::KeepAlive, Client::H2],
            None => &[Client::Fresh, Client::KeepAlive],
        };
        let each = rate / clients.len() as f64;
        let has_health = health.is_some();
        let shared = Arc::new(Shared {
            probe,
            health,
            h2,
            seen: Mutex::default(),
            pool: Mutex::default(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT * clients.len())),
        });
        let traffic = Traffic {
            shared,
            stop: CancellationToken::new(),
            cut: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        for &client in clients {
            traffic.tick(client, Duration::from_secs_f64(1.0 / each));
        }
        if has_health {
            traffic.health();
        }
        traffic
    }

    /// Opens `count` keep-alive connections, sends one request on each, and
    /// then only watches them; returns once their responses are in (or
    /// `timeout` passed).
    pub(crate) async fn hold_idle(&self, count: usize, timeout: Duration) {
        let mut ready = Vec::new();
        for _ in 0..count {
            let shared = self.shared.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            let cut = self.cut.clone();
            self.tracker.spawn(async move {
                let Ok(mut conn) = shared.probe.connect().await else {
                    return;
                };
                let answer = conn.send(&shared.probe).await;
                let _ = tx.send(());
                let Ok(answer) = answer else { return };
                let no_keepalive = answer.close || !conn.reusable();
                let closed = match no_keepalive {
                    true => None,
                    false => tokio::select! {
                        how = conn.closed() => Some((Instant::now(), how)),
                        () = cut.cancelled() => None,
                    },
                };
                shared.seen().idle.push(Idle {
                    no_keepalive,
                    closed,
                });
            });
        }
        let _ = tokio::time::timeout(timeout, futures_join(ready)).await;
    }

    /// Stops sending, gives requests in flight `drain` to finish, then ends
    /// them (as `timeout`) and returns what was seen.
    pub(crate) async fn finish(self, drain: Duration) -> Seen {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            self.cut.cancel();
            self.tracker.wait().await;
        }
        let shared = &self.shared;
        let now = Instant::now();
        let pooled: Vec<Pooled> = std::mem::take(&mut *shared.pool.lock().expect("pool lock"));
        let mut seen = std::mem::take(&mut *shared.seen());
        for p in pooled {
            let end = match p.conn.peer_closed() {
                true => End::ClosedWhileIdle,
                false => End::Open,
            };
            seen.ends.push(ConnEnd {
                end,
                at: now,
                last: p.last,
            });
        }
        seen
    }

    fn tick(&self, client: Client, every: Duration) {
        let shared = self.shared.clone();
        let (stop, cut, tracker) = (self.stop.clone(), self.cut.clone(), self.tracker.clone());
        self.tracker.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => return,
                }
                let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
                    shared.seen().skipped += 1;
                    continue;
                };
                let (shared, cut) = (shared.clone(), cut.clone());
                tracker.spawn(async move {
                    tokio::select! {
                        () = shared.send(client) => {}
                        () = cut.cancelled() => {}
                    }
                    drop(permit);
                });
            }
        });
    }

    fn health(&self) {
        let shared = self.shared.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let probe = shared.health.as_ref().expect("a health path");
            let mut ticks = tokio::time::interval(HEALTH_EVERY);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.cancelled() => return,
                }
                let sent = Instant::now();
                let outcome = match tokio::time::timeout(HEALTH_TIMEOUT, probe.once()).await {
                    Ok(result) => outcome(result),
                    Err(_) => timed_out(),
                };
                shared.record(Client::Health, sent, false, outcome);
            }
        });
    }
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("seen lock")
    }

    fn record(&self, client: Client, sent: Instant, reused: bool, outcome: Outcome) {
        self.seen().exchanges.push(Exchange {
            client,
            sent,
            done: Instant::now(),
            reused,
            outcome,
        });
    }

    fn end(&self, end: End, last: Option<(Instant, bool)>) {
        self.seen().ends.push(ConnEnd {
            end,
            at: Instant::now(),
            last,
        });
    }

    /// One request of `client`; a request cut by the end of the check is
    /// recorded as a timeout by the guard.
    async fn send(&self, client: Client) {
        let sent = Instant::now();
        let mut guard = Pending {
            shared: self,
            client,
            sent,
            reused: false,
            done: false,
        };
        match client {
            Client::Fresh | Client::Health => {
                let outcome = outcome(self.probe.once().await);
                guard.done = true;
                self.record(client, sent, false, outcome);
            }
            Client::KeepAlive => self.keepalive(&mut guard).await,
            Client::H2 => {
                let h2 = self.h2.as_ref().expect("an h2 connection");
                let outcome = match h2.send().await {
                    Ok(answer) => Outcome::Answered(answer),
                    Err(LostH2::Unsent(_)) => Outcome::Unsent,
                    Err(LostH2::Sent(class)) => Outcome::Lost(Lost {
                        class,
                        partial: false,
                    }),
                };
                guard.done = true;
                self.record(client, sent, false, outcome);
            }
        }
    }

    async fn keepalive(&self, guard: &mut Pending<'_>) {
        let mut pooled = loop {
            let next = self.pool.lock().expect("pool lock").pop();
            match next {
                // A pooling client replaces a connection the server closed
                // while it was idle, before sending anything on it.
                Some(p) if p.conn.peer_closed() => self.end(End::ClosedWhileIdle, p.last),
                Some(p) => break p,
                None => match self.probe.connect().await {
                    Ok(conn) => break Pooled { conn, last: None },
                    Err(class) => {
                        guard.done = true;
                        let outcome = match class {
                            FailureClass::Refused => Outcome::Refused,
                            class => Outcome::Lost(Lost {
                                class,
                                partial: false,
                            }),
                        };
                        self.record(Client::KeepAlive, guard.sent, false, outcome);
                        return;
                    }
                },
            }
        };
        let reused = pooled.last.is_some();
        guard.sent = Instant::now();
        guard.reused = reused;
        let result = pooled.conn.send(&self.probe).await;
        guard.done = true;
        match result {
            Ok(answer) => {
                self.record(
                    Client::KeepAlive,
                    guard.sent,
                    reused,
                    Outcome::Answered(answer),
                );
                pooled.last = Some((Instant::now(), answer.close));
                if pooled.conn.reusable() {
                    self.pool.lock().expect("pool lock").push(pooled);
                } else {
                    self.end(End::ConnectionClose, pooled.last);
                }
            }
            Err(lost) => {
                self.record(Client::KeepAlive, guard.sent, reused, Outcome::Lost(lost));
                let end = match reused && !lost.partial {
                    true => End::LostInRace,
                    false => End::Cut,
                };
                self.end(end, pooled.last);
            }
        }
    }
}

/// Records a request still unanswered when the check ends it.
struct Pending<'a> {
    shared: &'a Shared,
    client: Client,
    sent: Instant,
    reused: bool,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .record(self.client, self.sent, self.reused, timed_out());
        }
    }
}

fn outcome(result: Result<Answer, Lost>) -> Outcome {
    match result {
        Ok(answer) => Outcome::Answered(answer),
        Err(Lost {
            class: FailureClass::Refused,
            ..
        }) => Outcome::Refused,
        Err(lost) => Outcome::Lost(lost),
    }
}

fn timed_out() -> Outcome {
    Outcome::Lost(Lost {
        class: FailureClass::Timeout,
        partial: false,
    })
}

async fn futures_join(receivers: Vec<tokio::sync::oneshot::Receiver<()>>) {
    for rx in receivers {
        let _ = rx.await;
    }
}
