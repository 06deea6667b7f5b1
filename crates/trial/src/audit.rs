//! The audit of asynchronous work: every acknowledged operation must be
//! found, once, in the database (or the calculation log file).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::{Deserialize, Serialize};

/// Time limit of one audit query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the operations are looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSource {
    /// InfluxDB 1.x: measurement `operation`, tag `id`.
    Influx {
        /// Base URL.
        url: String,
        /// Database.
        db: String,
    },
    /// A JSON-lines file with an `id` per line.
    LogFile(PathBuf),
}

impl std::fmt::Display for AuditSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditSource::Influx { url, db } => write!(f, "influxdb {url} database {db}"),
            AuditSource::LogFile(path) => write!(f, "log file {}", path.display()),
        }
    }
}

/// What the audit found. When it could not run, `error` says why and the
/// counts are absent (`null`): nothing was counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Where it looked.
    pub source: String,
    /// Operations the clients were told succeeded.
    pub acknowledged: u64,
    /// Distinct operations found.
    pub stored: Option<u64>,
    /// Acknowledged operations not found (`acknowledged - stored`, at least 0).
    pub lost: Option<u64>,
    /// Operations found more than once (extra copies).
    pub duplicated: Option<u64>,
    /// Why the audit could not run (the database could not be reached, the
    /// log file could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AuditReport {
    /// The report of an audit that could not run.
    pub fn failed(source: &AuditSource, acknowledged: u64, error: &AuditError) -> Self {
        Self {
            source: source.to_string(),
            acknowledged,
            error: Some(error.reason.clone()),
            ..Self::default()
        }
    }
}

/// Why the audit could not be done.
#[derive(Debug, thiserror::Error)]
#[error("audit of {source_name}: {reason}")]
pub struct AuditError {
    source_name: String,
    reason: String,
}

impl AuditSource {
    /// Counts the operations stored, compared with `acknowledged`.
    pub async fn audit(&self, acknowledged: u64) -> Result<AuditReport, AuditError> {
        let fail = |reason: String| AuditError {
            source_name: self.to_string(),
            reason,
        };
        let copies = match self {
            AuditSource::Influx { url, db } => influx_copies(url, db).await.map_err(fail)?,
            AuditSource::LogFile(path) => file_copies(path).map_err(fail)?,
        };
        let stored = copies.len() as u64;
        let duplicated = copies.values().map(|n| n - 1).sum();
        Ok(AuditReport {
            source: self.to_string(),
            acknowledged,
            stored: Some(stored),
            lost: Some(acknowledged.saturating_sub(stored)),
            duplicated: Some(duplicated),
            error: None,
        })
    }
}

/// Copies per id in InfluxDB: one series per `id` tag, its point count.
async fn influx_copies(url: &str, db: &str) -> Result<BTreeMap<String, u64>, String> {
    #[derive(Deserialize)]
    struct Answer {
        results: Vec<Statement>,
    }
    #[derive(Deserialize)]
    struct Statement {
        #[serde(default)]
        series: Vec<Series>,
        #[serde(default)]
        error: Option<String>,
    }
    #[derive(Deserialize)]
    struct Series {
        #[serde(default)]
        tags: BTreeMap<String, String>,
        values: Vec<(serde_json::Value, u64)>,
    }
    let query = format!(
        "{url}/query?db={db}&q=SELECT%20count(result)%20FROM%20operation%20GROUP%20BY%20id"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = query.parse().map_err(|e| format!("bad URL {query}: {e}"))?;
    let response = tokio::time::timeout(QUERY_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot query: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))?;
    let mut copies = BTreeMap::new();
    for statement in answer.results {
        if let Some(error) = statement.error {
            // A database that was never written to has no measurement:
            // nothing stored, which the counts say.
            if !error.contains("database not found") {
                return Err(error);
            }
        }
        for series in statement.series {
            let id = series.tags.get("id").cloned().unwrap_or_default();
            let count: u64 = series.values.iter().map(|(_, n)| n).sum();
            *copies.entry(id).or_default() += count;
        }
    }
    Ok(copies)
}

/// Copies per id in a JSON-lines log; a missing file holds nothing.
fn file_copies(path: &std::path::Path) -> Result<BTreeMap<String, u64>, String> {
    #[derive(Deserialize)]
    struct Line {
        id: String,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.to_string()),
    };
    let mut copies = BTreeMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: Line = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        *copies.entry(line.id).or_default() += 1;
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_lost_and_duplicated_in_a_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calc.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"result\":3,\"ts_ns\":1}\n{\"id\":\"b\",\"result\":3,\"ts_ns\":2}\n{\"id\":\"b\",\"result\":3,\"ts_ns\":3}\n",
        )
        .unwrap();
        let report = AuditSource::LogFile(path).audit(4).await.unwrap();
        assert_eq!(
            (
                report.acknowledged,
                report.stored,
                report.lost,
                report.duplicated
            ),
            (4, Some(2), Some(2), Some(1))
        );
        let missing = AuditSource::LogFile(dir.path().join("none"))
            .audit(1)
            .await
            .unwrap();
        assert_eq!(missing.lost, Some(1));
    }

    #[tokio::test]
    async fn an_unreachable_database_is_an_error_naming_it() {
        let port = dropless_runtime::supervisor::process::free_port()
            .unwrap()
            .port();
        let source = AuditSource::Influx {
            url: format!("http://127.0.0.1:{port}"),
            db: "calc".into(),
        };
        let error = source.audit(5).await.unwrap_err();
        let report = AuditReport::failed(&source, 5, &error);
        assert_eq!((report.acknowledged, report.lost), (5, None));
        assert!(
            report
                .error
                .as_deref()
                .is_some_and(|e| e.contains("cannot query")),
            "{report:?}"
        );
        assert!(error.to_string().contains(&port.to_string()), "{error}");
    }
}
