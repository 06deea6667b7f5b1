//! The access log: one JSON line per request, written by a thread of its
//! own. A request only hands its [`Entry`] to a bounded channel
//! ([`CAPACITY`] entries); serializing and writing happen on the writer
//! thread, through a buffer flushed whenever the channel is empty. When
//! the writer falls behind (a slow disk, a blocked stdout) and the channel
//! is full, the entry is dropped, counted
//! (`dropless_access_log_dropped_total`) and warned about once a second:
//! the log never slows the requests it describes. When `serve` stops, it
//! [flushes](AccessLog::flush) the log after its last request: the lines of
//! the requests it answered are on disk before it exits.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::throttle::warn_throttled;

/// Entries waiting for the writer before new ones are dropped.
pub const CAPACITY: usize = 16 * 1024;

/// The path that means standard output.
pub const STDOUT: &str = "-";

/// One request, as its access log line says it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// When the request's head was read (RFC 3339, UTC, milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The service it was routed to (none for an unknown host).
    pub service: Option<String>,
    /// The replica whose response it got (none when none answered).
    pub replica: Option<String>,
    /// Its method.
    pub method: String,
    /// Its path and query, as the client sent them.
    pub path: String,
    /// The status the client got.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// From its head read to its last byte sent, in milliseconds.
    pub duration_ms: f64,
    /// Sends to replicas (0 when none was tried).
    pub attempts: u32,
    /// What dropless failed with (`upstream`, `no_replica`, `timeout`,
    /// `client`, `paused`, `maintenance`), if it did.
    pub error: Option<&'static str>,
    /// Its `X-Request-Id`.
    pub request_id: String,
}

/// The access log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct OpenError {
    path: PathBuf,
    source: std::io::Error,
}

/// What the writer thread is given.
// An entry is sent by value: no allocation per request for the rare flush.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Message {
    /// A line to write.
    Entry(Entry),
    /// Write everything sent before, flush, then answer.
    Flush(mpsc::Sender<()>),
}

/// The sending side of the access log; cheap to share.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens `path` for appending (or standard output for `-`) and starts
    /// the writer thread.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let out: Box<dyn Write + Send> = if path == Path::new(STDOUT) {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| OpenError {
                    path: path.to_path_buf(),
                    source,
                })?;
            Box::new(file)
        };
        Ok(Self::to_writer(out, CAPACITY))
    }

    /// An access log written to `out`, `capacity` entries buffered.
    pub fn to_writer(out: Box<dyn Write + Send>, capacity: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel(capacity);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_entries(rx, out))
            .expect("spawning the access log thread");
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands `entry` to the writer, or drops it when the writer is behind.
    pub fn log(&self, entry: Entry) {
        match self.tx.try_send(Message::Entry(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                warn_throttled!("access log: the writer is behind, lines dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (blocking, at most `timeout`) until every entry logged before
    /// this call is written and flushed; returns whether that happened.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut message = Message::Flush(done);
        // The channel may be full: try until the deadline rather than block.
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        wait.recv_timeout(left).is_ok()
    }

    /// Entries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: serializes each entry, flushes once the channel is
/// empty, ends (flushed) when every sender is gone.
fn write_entries(rx: Receiver<Message>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::new(out);
    let mut failed = false;
    while let Ok(message) = rx.recv() {
        let mut next = Some(message);
        while let Some(message) = next {
            match message {
                Message::Entry(entry) => {
                    let written = serde_json::to_writer(&mut out, &entry)
                        .map_err(std::io::Error::from)
                        .and_then(|()| out.write_all(b"\n"));
                    report(&mut failed, written);
                }
                Message::Flush(done) => {
                    report(&mut failed, out.flush());
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        report(&mut failed, out.flush());
    }
}

/// Logs the first failure of a run of failed writes.
fn report(failed: &mut bool, result: std::io::Result<()>) {
    match result {
        Ok(()) => *failed = false,
        Err(e) if !*failed => {
            *failed = true;
            tracing::warn!("access log: writing failed: {e}");
        }
        Err(_) => {}
    }
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that stays blocked until told to go on.
    /// A writer whose writes say they began (`entered`), then wait for
    /// `go`.
    struct Gate {
        entered: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.go.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH,
            service: Some("web".into()),
            replica: None,
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            bytes: 2,
            duration_ms: 1.5,
            attempts: 1,
            error: None,
            request_id: "r1".into(),
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_blocking() {
        let (_go, go) = std::sync::mpsc::channel();
        let (entered, writing) = std::sync::mpsc::channel();
        let log = AccessLog::to_writer(Box::new(Gate { entered, go }), 4);
        // The writer takes the first entry and blocks writing it out (it
        // takes every entry already sent before it writes: only then is
        // the count of what it holds known).
        log.log(entry());
        writing.recv().unwrap();
        // The channel takes four more: the rest are dropped, none blocks.
        for _ in 0..19 {
            log.log(entry());
        }
        assert_eq!(log.dropped(), 15);
    }

    /// A writer into a buffer the test reads.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flush_returns_once_every_line_logged_before_it_is_written() {
        let out = Shared::default();
        let log = AccessLog::to_writer(Box::new(out.clone()), 1024);
        for _ in 0..500 {
            log.log(entry());
        }
        assert!(log.flush(Duration::from_secs(10)));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 500);
    }

    #[test]
    fn a_flush_behind_a_stuck_writer_gives_up_at_its_timeout() {
        let (_go, go) = std::sync::mpsc::channel();
        let (entered, _writing) = std::sync::mpsc::channel();
        let log = AccessLog::to_writer(Box::new(Gate { entered, go }), 4);
        log.log(entry());
        assert!(!log.flush(Duration::from_millis(100)));
    }

    #[test]
    fn an_entry_is_one_json_line() {
        let line = serde_json::to_string(&entry()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["request_id"], "r1");
        assert!(v["error"].is_null());
    }
}
