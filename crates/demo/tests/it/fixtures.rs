//! Shared fixtures: the demo process, a real influxd, a small load driver.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use nix::{sys::signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    task::JoinHandle,
};

/// Upper bound for anything a test waits on.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running `dropless-demo`.
pub struct Demo {
    pub addr: SocketAddr,
    child: Child,
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts the demo with `--port 0` and `args`, and waits until it says
    /// where it listens.
    pub async fn start(args: &[&str]) -> Demo {
        Demo::start_with_env(args, &[]).await
    }

    /// As [`Demo::start`], with environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_dropless-demo"))
            .args(["--port", "0"])
            .args(args)
            .env_remove("PORT")
            .env_remove("VERSION")
            .env_remove("HELLO_REST_REQUEST_DELAY")
            .env_remove("DROPLESS_STASH")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("demo did not start in time")
            .unwrap()
            .unwrap_or_else(|| {
                panic!("demo exited: {}", std::fs::read_to_string(&stderr).unwrap())
            });
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Demo {
            addr,
            child,
            stderr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("already reaped") as i32)
    }

    pub fn sigterm(&self) {
        signal::kill(self.pid(), signal::Signal::SIGTERM).unwrap();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit.
    pub async fn exited(&mut self) -> ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("demo did not exit in time")
            .unwrap()
    }

    /// What the process logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the process has logged `text`.
    pub async fn logged(&self, text: &str) {
        tokio::time::timeout(PATIENCE, async {
            while !self.log().contains(text) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never logged {text:?}: {}", self.log()));
    }
}

/// The outcome of one request, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response: status, and `x-op-id` when present.
    Response { status: u16, op_id: Option<String> },
    /// The connection was refused (or reset before it was established):
    /// nothing was sent.
    Refused,
    /// Connected and sent, but the connection ended without a response
    /// (EOF or reset): a cut request.
    Cut(String),
}

/// GET `path` on a new connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> Outcome {
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        // Reset while connecting: the kernel had completed the handshake
        // and queued the connection when the listener closed. Nothing was
        // sent either, as with a refusal.
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return Outcome::Refused;
        }
        Err(error) => return Outcome::Cut(format!("connect: {error}")),
    };
    let attempt = async {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header("host", addr.to_string())
            .header("connection", "close")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(request).await?;
        let status = response.status().as_u16();
        let op_id = response
            .headers()
            .get("x-op-id")
            .map(|v| v.to_str().unwrap().to_owned());
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(Outcome::Response { status, op_id })
    };
    match tokio::time::timeout(PATIENCE, attempt).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => Outcome::Cut(error.to_string()),
        Err(_) => Outcome::Cut("timed out".into()),
    }
}

/// `loops` clients sending `path` back to back, each request on a new
/// connection, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    /// Requests started (connect and send), ended or not.
    started: Arc<std::sync::atomic::AtomicUsize>,
    loops: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &'static str, loops: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let loops = (0..loops)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let outcomes = Arc::clone(&outcomes);
                let started = Arc::clone(&started);
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        started.fetch_add(1, Ordering::SeqCst);
                        let outcome = get_once(addr, path).await;
                        let refused = outcome == Outcome::Refused;
                        outcomes.lock().unwrap().push(outcome);
                        if refused {
                            // The listener is closed; don't spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            started,
            loops,
        }
    }

    /// Waits until `n` requests are under way (started, not yet ended).
    pub async fn until_in_flight(&self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let ended = self.outcomes.lock().unwrap().len();
                if self.started.load(Ordering::SeqCst) - ended >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("requests under way in time");
    }

    /// Waits until at least `n` requests got a 200.
    pub async fn until_ok(&self, n: usize) {
        self.until(|summary| summary.ok >= n).await;
    }

    /// Waits until what was seen so far satisfies `condition`.
    pub async fn until(&self, condition: impl Fn(&Summary) -> bool) {
        tokio::time::timeout(PATIENCE, async {
            while !condition(&self.summary()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("load never reached the condition: {:?}", self.summary()));
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.outcomes.lock().unwrap())
    }

    /// Stops every loop after its current request; returns what was seen.
    pub async fn stop(mut self) -> Summary {
        self.stop.store(true, Ordering::SeqCst);
        for handle in std::mem::take(&mut self.loops) {
            tokio::time::timeout(PATIENCE, handle)
                .await
                .unwrap()
                .unwrap();
        }
        self.summary()
    }
}

/// Outcomes counted by kind.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub ok: usize,
    pub other_status: Vec<u16>,
    pub refused: usize,
    pub cut: Vec<String>,
    /// `x-op-id` of every 200 response: the acknowledged calculations.
    pub op_ids: BTreeSet<String>,
}

impl Summary {
    fn of(outcomes: &[Outcome]) -> Summary {
        let mut summary = Summary::default();
        for outcome in outcomes {
            match outcome {
                Outcome::Response { status: 200, op_id } => {
                    summary.ok += 1;
                    summary.op_ids.extend(op_id.clone());
                }
                Outcome::Response { status, .. } => summary.other_status.push(*status),
                Outcome::Refused => summary.refused += 1,
                Outcome::Cut(error) => summary.cut.push(error.clone()),
            }
        }
        summary
    }
}

/// A port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    dropless_runtime::supervisor::process::free_port()
        .expect("a free loopback port")
        .port()
}

/// A real InfluxDB 1.x on loopback (the trial's private influxd), with the
/// queries the tests need.
pub struct Influxd {
    pub url: String,
    server: dropless_trial::influxd::Influxd,
}

impl Influxd {
    pub async fn start() -> Influxd {
        let server = tokio::task::spawn_blocking(dropless_trial::influxd::Influxd::start)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e} (scripts/test installs the influxdb package)"));
        Influxd {
            url: server.url().to_owned(),
            server,
        }
    }

    /// Stops influxd, as an outage would.
    pub async fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port with the same data, and waits until
    /// it answers. (Blocks the test's thread for that time: the demo under
    /// test is another process.)
    pub async fn restart(&mut self) {
        self.server.restart().expect("influxd restarts");
    }

    /// The `id` tags of every point of measurement `operation` in `db`.
    pub async fn op_ids(&self, db: &str) -> Vec<String> {
        let query = format!("/query?db={db}&q=SELECT%20id%2C%20result%20FROM%20operation");
        let (status, body) = http(&self.url, "GET", &query, "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let series = &json["results"][0]["series"];
        let Some(values) = series[0]["values"].as_array() else {
            return Vec::new();
        };
        values
            .iter()
            .map(|row| row[1].as_str().unwrap().to_owned())
            .collect()
    }

    /// `SELECT count(result) FROM operation`.
    pub async fn count(&self, db: &str) -> u64 {
        let query = format!("/query?db={db}&q=SELECT%20count(result)%20FROM%20operation");
        let (status, body) = http(&self.url, "GET", &query, "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0)
    }
}

/// One plain HTTP/1.1 request; returns status and body.
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let authority = base.strip_prefix("http://").unwrap();
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = send
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}
