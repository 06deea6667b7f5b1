//! Sessions mode: N clients, each with its own key, playing moves
//! (`POST {prefix}/game/{id}/move`) and checking that every move number is
//! the previous one plus one; with WebSockets, each client also follows its
//! session's stream (`GET {prefix}/game/{id}/ws?after=N`), reconnects when
//! it is closed, and checks the stream for gaps.
//!
//! The scheduler sees one more [`Transport`]: each request is the next
//! session's move, round robin, one move in flight per session.

mod check;
mod stream;

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Answer, Connector, Marks, Transport};
use crate::outcome::Failure;
use crate::report::{SessionSecond, Sessions};

pub(crate) use check::{Check, check};

/// The header the runtime adds to a response whose request was held for a
/// handoff: how long, in milliseconds.
const HELD_HEADER: &str = "x-dropless-held-ms";
/// How long the end of a run waits for the streams to show the last moves.
const STREAM_CATCH_UP: Duration = Duration::from_secs(2);

/// Per-session outcome flags.
const RESET: u8 = 1;
const LOST_UPDATE: u8 = 2;
const DUPLICATE: u8 = 4;
const GAP: u8 = 8;

/// The sessions transport of a run.
pub(crate) struct SessionsTransport {
    connector: Arc<Connector>,
    authority: String,
    prefix: String,
    players: Vec<tokio::sync::Mutex<Player>>,
    next: AtomicUsize,
    tally: Arc<Tally>,
    websocket: bool,
    streams: TaskTracker,
    stop_streams: CancellationToken,
}

/// One session's client: its key, its connection, what it confirmed.
struct Player {
    index: usize,
    id: String,
    conn: Option<http1::SendRequest<Empty<Bytes>>>,
    /// The last move number the server confirmed.
    last: u64,
    /// Moves sent since `last` whose outcome is unknown (a timeout, a cut
    /// connection): each may or may not have been applied.
    unconfirmed: u64,
    /// Whether the stream follower was started.
    streaming: bool,
}

/// What the sessions saw, shared by the players and the stream followers.
pub(crate) struct Tally {
    start: Instant,
    /// Per session: outcome flags.
    flags: Vec<AtomicU8>,
    /// Per session: the last move confirmed to the player.
    confirmed: Vec<AtomicU64>,
    /// Per session: the last move seen on the stream.
    seen: Vec<AtomicU64>,
    max_hold_ms: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    restart_closes: AtomicU64,
    timeline: Mutex<Vec<SessionSecond>>,
}

/// An event counted per second.
#[derive(Clone, Copy, Debug)]
enum Event {
    Move,
    Reset,
    LostUpdate,
    Duplicate,
    Gap,
    Disconnect,
    Reconnect,
}

impl SessionsTransport {
    /// `count` sessions against the origin of `authority` (the Host header),
    /// paths under `prefix`.
    pub(crate) fn new(
        connector: Connector,
        authority: String,
        prefix: &str,
        count: usize,
        websocket: bool,
        start: Instant,
    ) -> Self {
        // Keys unique to this run, so that a second run against the same
        // server starts fresh sessions.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() & 0xff_ffff);
        let players = (0..count)
            .map(|index| {
                tokio::sync::Mutex::new(Player {
                    index,
                    id: format!("s{run:06x}-{index}"),
                    conn: None,
                    last: 0,
                    unconfirmed: 0,
                    streaming: false,
                })
            })
            .collect();
        let atomics = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        SessionsTransport {
            connector: Arc::new(connector),
            authority,
            prefix: prefix.trim_end_matches('/').to_owned(),
            players,
            next: AtomicUsize::new(0),
            tally: Arc::new(Tally {
                start,
                flags: (0..count).map(|_| AtomicU8::new(0)).collect(),
                confirmed: atomics(count),
                seen: atomics(count),
                max_hold_ms: AtomicU64::new(0),
                disconnects: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                restart_closes: AtomicU64::new(0),
                timeline: Mutex::new(Vec::new()),
            }),
            websocket,
            streams: TaskTracker::new(),
            stop_streams: CancellationToken::new(),
        }
    }

    /// One move of `player`: the answer, after checking the move number.
    async fn play(&self, player: &mut Player, marks: &mut Marks) -> Result<Answer, Failure> {
        if self.websocket && !player.streaming {
            player.streaming = true;
            self.streams.spawn(stream::follow(
                Arc::clone(&self.connector),
                self.authority.clone(),
                format!("{}/game/{}/ws", self.prefix, player.id),
                player.index,
                Arc::clone(&self.tally),
                self.stop_streams.clone(),
            ));
        }
        // Until its number comes back, this move may or may not have been
        // applied: counted before sending, so that a move cut by the
        // timeout (this future dropped) is counted too.
        let pending = player.unconfirmed;
        player.unconfirmed += 1;
        let (status, held_ms, body) = self.send(player, marks).await?;
        if let Some(held) = held_ms {
            self.tally.max_hold_ms.fetch_max(held, Ordering::Relaxed);
        }
        if !(200..300).contains(&status) {
            return Ok(Answer {
                status,
                body_ok: true,
            });
        }
        let Some(n) = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        else {
            return Err(Failure::other(format!(
                "the body is not a move number: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            )));
        };
        let outcome = check(player.last, pending, n);
        self.tally.record(
            player.index,
            match outcome {
                Check::Ok => Event::Move,
                Check::Reset => Event::Reset,
                Check::LostUpdate => Event::LostUpdate,
                Check::Duplicate => Event::Duplicate,
            },
        );
        (player.last, player.unconfirmed) = (n, 0);
        self.tally.confirmed[player.index].store(n, Ordering::Relaxed);
        Ok(Answer {
            status,
            body_ok: true,
        })
    }

    /// Sends the move on the player's connection (a new one if it has
    /// none or it closed): status, held time, body.
    async fn send(
        &self,
        player: &mut Player,
        marks: &mut Marks,
    ) -> Result<(u16, Option<u64>, Bytes), Failure> {
        let mut sender = match player.conn.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = self.connector.stream().await?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| Failure::classify(&e))?;
                tokio::spawn(connection);
                sender
            }
        };
        sender.ready().await.map_err(|e| Failure::classify(&e))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/game/{}/move", self.prefix, player.id))
            .header(HOST, &self.authority)
            .header(
                USER_AGENT,
                concat!("dropless-load/", env!("CARGO_PKG_VERSION")),
            )
            .header(CONTENT_LENGTH, 0)
            .body(Empty::new())
            .expect("a valid request");
        marks.sent = Some(Instant::now());
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::classify(&e))?;
        marks.head = Some(Instant::now());
        let status = response.status().as_u16();
        let held = response
            .headers()
            .get(HELD_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::classify(&e))?
            .to_bytes();
        player.conn = Some(sender);
        Ok((status, held, body))
    }
}

impl Transport for SessionsTransport {
    type Session = ();

    async fn exchange(&self, _: &mut (), marks: &mut Marks) -> Result<Answer, Failure> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.players.len();
        // One move in flight per session: a session's moves are ordered.
        let mut player = self.players[index].lock().await;
        self.play(&mut player, marks).await
    }

    async fn finish(&self) {
        if !self.websocket {
            return;
        }
        // The streams get a moment to show the last moves; one that has not
        // by then has a gap.
        let deadline = Instant::now() + STREAM_CATCH_UP;
        while !self.tally.caught_up() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_streams.cancel();
        self.streams.close();
        let _ = tokio::time::timeout(STREAM_CATCH_UP, self.streams.wait()).await;
        for index in 0..self.players.len() {
            let confirmed = self.tally.confirmed[index].load(Ordering::Relaxed);
            if self.tally.seen[index].load(Ordering::Relaxed) < confirmed {
                self.tally.record(index, Event::Gap);
            }
        }
    }

    fn sessions(&self) -> Option<Sessions> {
        Some(self.tally.sessions())
    }
}

impl Tally {
    /// Counts `event` of session `index` in its second and in its flags.
    fn record(&self, index: usize, event: Event) {
        let flag = match event {
            Event::Reset => RESET,
            Event::LostUpdate => LOST_UPDATE,
            Event::Duplicate => DUPLICATE,
            Event::Gap => GAP,
            Event::Move | Event::Disconnect | Event::Reconnect => 0,
        };
        if flag != 0 {
            self.flags[index].fetch_or(flag, Ordering::Relaxed);
        }
        match event {
            Event::Disconnect => {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            Event::Reconnect => {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let second = self.start.elapsed().as_secs() as usize;
        let mut timeline = self.timeline.lock().expect("timeline lock");
        if timeline.len() <= second {
            let len = timeline.len();
            timeline.extend((len..=second).map(|t| SessionSecond {
                t_s: t as u64,
                ..SessionSecond::default()
            }));
        }
        let row = &mut timeline[second];
        match event {
            Event::Move => row.moves += 1,
            Event::Reset => row.resets += 1,
            Event::LostUpdate => row.lost_updates += 1,
            Event::Duplicate => row.duplicates += 1,
            Event::Gap => row.gaps += 1,
            Event::Disconnect => row.disconnects += 1,
            Event::Reconnect => row.reconnects += 1,
        }
    }

    /// Whether every stream has shown its session's last confirmed move.
    fn caught_up(&self) -> bool {
        self.confirmed
            .iter()
            .zip(&self.seen)
            .all(|(confirmed, seen)| {
                seen.load(Ordering::Relaxed) >= confirmed.load(Ordering::Relaxed)
            })
    }

    fn sessions(&self) -> Sessions {
        let with = |flag: u8| {
            self.flags
                .iter()
                .filter(|f| f.load(Ordering::Relaxed) & flag != 0)
                .count() as u64
        };
        Sessions {
            total: self.flags.len() as u64,
            ok: self
                .flags
                .iter()
                .filter(|f| f.load(Ordering::Relaxed) == 0)
                .count() as u64,
            resets: with(RESET),
            lost_updates: with(LOST_UPDATE),
            duplicates: with(DUPLICATE),
            gaps: with(GAP),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            restart_closes: self.restart_closes.load(Ordering::Relaxed),
            max_hold_ms: self.max_hold_ms.load(Ordering::Relaxed),
            timeline: self.timeline.lock().expect("timeline lock").clone(),
        }
    }
}
