//! Results streamed while a run goes on (`dropless load --out`): one point
//! per second to InfluxDB 1.x over its line protocol
//! (`influxdb=http://HOST:PORT[/DB]`) or to a CSV file (`csv=FILE`). Each
//! point holds what happened since the previous one (requests sent, ok,
//! failed by class, dropped), the p99 latency of the last settled second
//! and how far the generator fell behind its schedule since the previous
//! point, so the points of a run sum to its report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;

use crate::report::Snapshot;

/// The database written to when the URL names none.
pub const DEFAULT_DB: &str = "dropless";
/// The measurement of the points.
pub const MEASUREMENT: &str = "dropless_load";
/// Longest wait for one write to InfluxDB.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the points go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// InfluxDB 1.x: its base URL (`http://HOST:PORT`) and database.
    Influx {
        /// Base URL.
        url: String,
        /// Database (created if missing).
        db: String,
    },
    /// A CSV file (created or truncated).
    Csv(PathBuf),
}

/// An `--out` that cannot be used, or a write that failed.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    /// The value is not `influxdb=URL[/DB]` or `csv=FILE`.
    #[error("--out {0:?}: use influxdb=http://HOST:PORT[/DB] or csv=FILE")]
    Invalid(String),
    /// The CSV file could not be written.
    #[error("--out csv={path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Some points did not reach InfluxDB.
    #[error("--out influxdb: {failed} of {points} points not written (last: {last})")]
    Influx {
        /// Points not written.
        failed: u64,
        /// Points in all.
        points: u64,
        /// The last failure.
        last: String,
    },
}

impl std::str::FromStr for Output {
    type Err = OutError;

    fn from_str(value: &str) -> Result<Self, OutError> {
        let invalid = || OutError::Invalid(value.to_string());
        match value.split_once('=') {
            Some(("csv", path)) if !path.is_empty() => Ok(Self::Csv(path.into())),
            Some(("influxdb", url)) => {
                let uri: http::Uri = url.parse().map_err(|_| invalid())?;
                let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
                    return Err(invalid());
                };
                let db = uri.path().trim_matches('/');
                Ok(Self::Influx {
                    url: format!("http://{authority}"),
                    db: if db.is_empty() { DEFAULT_DB } else { db }.to_string(),
                })
            }
            _ => Err(invalid()),
        }
    }
}

/// What one point holds.
#[derive(Debug, Clone, Default, PartialEq)]
struct Point {
    at: Option<SystemTime>,
    sent: u64,
    ok: u64,
    failed: u64,
    dropped: u64,
    failures: BTreeMap<String, u64>,
    p99_ms: Option<f64>,
    /// The most the generator fell behind in the seconds this point covers
    /// (from [`crate::LAG_MS`]).
    lag_ms: Option<f64>,
}

/// Writes a point to every output at each snapshot of the run, until its
/// last; `target` tags the InfluxDB points.
pub async fn stream(
    outputs: Vec<Output>,
    target: String,
    mut snapshots: watch::Receiver<Snapshot>,
) -> Result<(), OutError> {
    let mut csv = Vec::new();
    let mut influx = Vec::new();
    for o in outputs {
        match o {
            Output::Csv(path) => {
                let mut file = std::fs::File::create(&path)
                    .map(std::io::BufWriter::new)
                    .map_err(|source| OutError::Csv {
                        path: path.clone(),
                        source,
                    })?;
                writeln!(file, "time,sent,ok,failed,dropped,p99_ms,failures,lag_ms").map_err(
                    |source| OutError::Csv {
                        path: path.clone(),
                        source,
                    },
                )?;
                csv.push((path, file));
            }
            Output::Influx { url, db } => influx.push(Influx::new(url, db).await),
        }
    }
    let mut before = Snapshot::default();
    loop {
        if snapshots.changed().await.is_err() {
            break;
        }
        let now = snapshots.borrow_and_update().clone();
        let point = delta(&before, &now);
        for (path, file) in &mut csv {
            write_csv(file, &point).map_err(|source| OutError::Csv {
                path: path.clone(),
                source,
            })?;
        }
        for i in &mut influx {
            i.write(&target, &point).await;
        }
        before = now;
        if before.done {
            break;
        }
    }
    for i in influx {
        i.result()?;
    }
    Ok(())
}

/// What happened between two snapshots.
fn delta(before: &Snapshot, now: &Snapshot) -> Point {
    let failures = now
        .failures
        .iter()
        .map(|(class, n)| {
            (
                class.clone(),
                n - before.failures.get(class).copied().unwrap_or(0),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    Point {
        at: Some(SystemTime::now()),
        sent: now.requests.total - before.requests.total,
        ok: now.requests.ok - before.requests.ok,
        failed: now.requests.failed - before.requests.failed,
        dropped: now.dropped_iterations - before.dropped_iterations,
        failures,
        p99_ms: now.timeline.iter().rev().find_map(|s| s.p99_ms),
        // The seconds since the previous point: its last (still filling
        // then) and the ones after it.
        lag_ms: now
            .timeline
            .iter()
            .skip(before.timeline.len().saturating_sub(1))
            .filter_map(|s| s.lag_ms)
            .max_by(f64::total_cmp),
    }
}

fn millis(at: Option<SystemTime>) -> u128 {
    at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis())
}

fn write_csv(out: &mut impl Write, p: &Point) -> std::io::Result<()> {
    let failures: Vec<String> = p.failures.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    writeln!(
        out,
        "{},{},{},{},{},{},{},{}",
        millis(p.at),
        p.sent,
        p.ok,
        p.failed,
        p.dropped,
        ms(p.p99_ms),
        failures.join(";"),
        ms(p.lag_ms)
    )?;
    out.flush()
}

/// The line-protocol line of a point.
fn line(target: &str, p: &Point) -> String {
    let tag: String = target
        .chars()
        .flat_map(|c| match c {
            ',' | ' ' | '=' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let mut fields = format!(
        "sent={}i,ok={}i,failed={}i,dropped={}i",
        p.sent, p.ok, p.failed, p.dropped
    );
    if let Some(v) = p.p99_ms {
        fields.push_str(&format!(",p99_ms={v}"));
    }
    if let Some(v) = p.lag_ms {
        fields.push_str(&format!(",lag_ms={v}"));
    }
    for (class, n) in &p.failures {
        fields.push_str(&format!(",failed_{class}={n}i"));
    }
    format!("{MEASUREMENT},target={tag} {fields} {}\n", millis(p.at))
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// An InfluxDB output and how its writes went.
struct Influx {
    client: Client,
    write_url: String,
    points: u64,
    failed: u64,
    last: String,
}

impl Influx {
    /// Creates the database (a no-op when it exists).
    async fn new(url: String, db: String) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let mut this = Self {
            client,
            write_url: format!("{url}/write?db={db}&precision=ms"),
            points: 0,
            failed: 0,
            last: String::new(),
        };
        let create = format!("{url}/query?q=CREATE+DATABASE+%22{db}%22");
        if let Err(e) = this.post(&create, Bytes::new()).await {
            this.last = e;
        }
        this
    }

    async fn write(&mut self, target: &str, p: &Point) {
        self.points += 1;
        let url = self.write_url.clone();
        if let Err(e) = self.post(&url, Bytes::from(line(target, p))).await {
            self.failed += 1;
            self.last = e;
        }
    }

    async fn post(&self, url: &str, body: Bytes) -> Result<(), String> {
        let req = http::Request::post(url)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let sent = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body.to_bytes())
                ))
            }
        };
        tokio::time::timeout(WRITE_TIMEOUT, sent)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {WRITE_TIMEOUT:?}")))
    }

    fn result(self) -> Result<(), OutError> {
        if self.failed == 0 {
            return Ok(());
        }
        Err(OutError::Influx {
            failed: self.failed,
            points: self.points,
            last: self.last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            "influxdb=http://127.0.0.1:8086/k6"
                .parse::<Output>()
                .unwrap(),
            Output::Influx {
                url: "http://127.0.0.1:8086".into(),
                db: "k6".into()
            }
        );
        assert_eq!(
            "influxdb=http://db:8086".parse::<Output>().unwrap(),
            Output::Influx {
                url: "http://db:8086".into(),
                db: DEFAULT_DB.into()
            }
        );
        assert_eq!(
            "csv=out.csv".parse::<Output>().unwrap(),
            Output::Csv("out.csv".into())
        );
        for bad in ["influxdb=https://x/db", "csv=", "json=x", "influxdb=nope"] {
            assert!(bad.parse::<Output>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_point_is_one_line_with_integer_fields() {
        let p = Point {
            at: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)),
            sent: 10,
            ok: 8,
            failed: 2,
            failures: [("http_503".to_string(), 2)].into(),
            p99_ms: Some(1.5),
            ..Point::default()
        };
        assert_eq!(
            line("http://a b/,x", &p),
            "dropless_load,target=http://a\\ b/\\,x sent=10i,ok=8i,failed=2i,dropped=0i,p99_ms=1.5,failed_http_503=2i 1500\n"
        );
        let mut csv = Vec::new();
        write_csv(&mut csv, &p).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "1500,10,8,2,0,1.500,http_503:2,\n"
        );
        let lagged = Point {
            lag_ms: Some(201.5),
            ..p
        };
        assert!(line("t", &lagged).contains(",p99_ms=1.5,lag_ms=201.5,failed_http_503=2i "));
        let mut csv = Vec::new();
        write_csv(&mut csv, &lagged).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "1500,10,8,2,0,1.500,http_503:2,201.500\n"
        );
    }

    /// A point's lag is the most of the seconds since the previous point:
    /// the one that was still filling then and those after it.
    #[test]
    fn a_point_carries_the_lag_of_the_seconds_it_covers() {
        let second = |t_s, lag_ms| crate::report::Second {
            t_s,
            lag_ms,
            ..Default::default()
        };
        let before = Snapshot {
            timeline: vec![second(0, Some(300.0)), second(1, None)],
            ..Snapshot::default()
        };
        let now = Snapshot {
            timeline: vec![
                second(0, Some(300.0)),
                second(1, Some(2.0)),
                second(2, Some(5.0)),
            ],
            ..Snapshot::default()
        };
        assert_eq!(delta(&before, &now).lag_ms, Some(5.0));
        let calm = Snapshot {
            timeline: vec![second(0, Some(300.0)), second(1, None), second(2, None)],
            ..Snapshot::default()
        };
        assert_eq!(delta(&before, &calm).lag_ms, None);
    }
}
