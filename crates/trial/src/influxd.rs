//! A private InfluxDB 1.x (`influxd` from the Debian package `influxdb`) on
//! a free loopback port with its data in a temporary directory, for the
//! trial's audit and for tests.

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Time `influxd` has to answer `/ping` after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running private `influxd`; killed when dropped.
#[derive(Debug)]
pub struct Influxd {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Why `influxd` could not be started.
#[derive(Debug, thiserror::Error)]
pub enum InfluxdError {
    /// Not installed.
    #[error("influxd is not installed: `apt-get install -y influxdb`, or use the log-file audit")]
    NotInstalled,
    /// Started but never answered.
    #[error("influxd did not answer /ping within {0:?}: {1}")]
    NoAnswer(Duration, String),
    /// Another I/O problem.
    #[error("influxd: {0}")]
    Io(#[from] std::io::Error),
}

impl Influxd {
    /// Whether `influxd` is on the PATH.
    pub fn installed() -> bool {
        Command::new("influxd")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts `influxd` and waits until it answers `/ping` with 204.
    pub fn start() -> Result<Influxd, InfluxdError> {
        if !Self::installed() {
            return Err(InfluxdError::NotInstalled);
        }
        // A free port can be taken between the probe and influxd's bind;
        // then influxd exits and another pair of ports is tried.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start()? {
                Ok(influxd) => return Ok(influxd),
                Err(why) => last = why,
            }
        }
        Err(InfluxdError::NoAnswer(START_TIMEOUT, last))
    }

    fn try_start() -> Result<Result<Influxd, String>, InfluxdError> {
        let dir = tempfile::Builder::new()
            .prefix("dropless-influxd-")
            .tempdir()?;
        let http_port = unique_free_port()?;
        let rpc_port = unique_free_port()?;
        let sub = |name: &str| dir.path().join(name);
        let log = std::fs::File::create(dir.path().join("influxd.log"))?;
        let mut child = Command::new("influxd")
            .args(["run", "-config", "/dev/null"])
            .env(
                "INFLUXDB_HTTP_BIND_ADDRESS",
                format!("127.0.0.1:{http_port}"),
            )
            .env("INFLUXDB_BIND_ADDRESS", format!("127.0.0.1:{rpc_port}"))
            .env("INFLUXDB_META_DIR", sub("meta"))
            .env("INFLUXDB_DATA_DIR", sub("data"))
            .env("INFLUXDB_DATA_WAL_DIR", sub("wal"))
            .env("INFLUXDB_REPORTING_DISABLED", "true")
            .env("INFLUXDB_HTTP_LOG_ENABLED", "false")
            .env("INFLUXDB_DATA_QUERY_LOG_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let url = format!("http://127.0.0.1:{http_port}");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Err(format!(
                    "influxd exited with {status}: {}",
                    tail(&dir.path().join("influxd.log"))
                )));
            }
            if ping(http_port) {
                return Ok(Ok(Influxd {
                    url,
                    child,
                    _dir: dir,
                }));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(Err(tail(&dir.path().join("influxd.log"))))
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops it now (as an outage would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port, never the same one twice in this process: two
/// influxd started at once must not both be handed one port, or one would
/// answer the other's `/ping`.
fn unique_free_port() -> std::io::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port)
        {
            return Ok(port);
        }
    }
}

/// `GET /ping` → 204, with a plain blocking socket (no runtime needed).
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: influxd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head[9..12] == b"204"
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
