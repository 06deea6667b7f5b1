//! A private InfluxDB 1.x (`influxd` from the Debian package `influxdb`) on
//! a free loopback port with its data in a temporary directory, for the
//! trial's audit and for tests.

use std::{
    collections::BTreeSet,
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
    http_port: u16,
    rpc_port: u16,
    child: Child,
    dir: tempfile::TempDir,
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
        let child = spawn(dir.path(), http_port, rpc_port)?;
        let mut influxd = Influxd {
            url: format!("http://127.0.0.1:{http_port}"),
            http_port,
            rpc_port,
            child,
            dir,
        };
        let answered = influxd.answers()?;
        Ok(answered.map(|()| influxd))
    }

    /// Waits until it answers `/ping`; kills it and says why if it does
    /// not within [`START_TIMEOUT`].
    fn answers(&mut self) -> Result<Result<(), String>, InfluxdError> {
        let log = self.dir.path().join("influxd.log");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Err(format!("influxd exited with {status}: {}", tail(&log))));
            }
            if ping(self.http_port) {
                return Ok(Ok(()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Ok(Err(tail(&log)))
    }

    /// Starts it again after [`Influxd::kill`], on the same port with the
    /// same data (as a database back from an outage), and waits until it
    /// answers `/ping`.
    pub fn restart(&mut self) -> Result<(), InfluxdError> {
        self.kill();
        self.child = spawn(self.dir.path(), self.http_port, self.rpc_port)?;
        self.answers()?
            .map_err(|why| InfluxdError::NoAnswer(START_TIMEOUT, why))
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

/// `influxd run` on loopback with its data and log in `dir`.
fn spawn(dir: &Path, http_port: u16, rpc_port: u16) -> std::io::Result<Child> {
    let sub = |name: &str| dir.join(name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sub("influxd.log"))?;
    Command::new("influxd")
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
        .spawn()
}

/// A free loopback port, never the same one twice in this process: two
/// influxd started at once must not both be handed one port, or one would
/// answer the other's `/ping`.
fn unique_free_port() -> std::io::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = dropless_runtime::supervisor::process::free_port()?.port();
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
