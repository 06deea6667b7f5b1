//! A small InfluxDB 1.x client: create the database, write points over the
//! HTTP line protocol.

use std::{fmt::Write as _, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{Error, Record};

/// Time limit of one request to InfluxDB.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one InfluxDB database.
#[derive(Debug, Clone)]
pub(crate) struct Influx {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    db: String,
}

impl Influx {
    /// Checks the URL and the database name, and creates the database if it
    /// is missing. An unreachable server is an error: the user must fix the
    /// URL or start InfluxDB.
    pub(crate) async fn connect(url: &str, db: &str) -> Result<Self, Error> {
        let base = base_url(url)?;
        if db.is_empty()
            || !db
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::Usage(format!(
                "--influx-db {db:?}: use letters, digits, '_' or '-'"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        let influx = Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base,
            db: db.to_owned(),
        };
        let create = format!("/query?q=CREATE%20DATABASE%20%22{db}%22");
        influx
            .send(Method::POST, &create, Bytes::new())
            .await
            .map_err(|reason| Error::Influx {
                url: url.to_owned(),
                reason,
            })?;
        Ok(influx)
    }

    /// Writes the records as points of measurement `operation`, tag `id`,
    /// field `result`, at their nanosecond timestamps.
    pub(crate) async fn write(&self, records: &[Record]) -> Result<(), String> {
        let mut lines = String::with_capacity(records.len() * 64);
        for record in records {
            let _ = writeln!(
                lines,
                "operation,id={} result={}i {}",
                record.id, record.result, record.ts_ns
            );
        }
        let path = format!("/write?db={}&precision=ns", self.db);
        self.send(Method::POST, &path, Bytes::from(lines)).await
    }

    async fn send(&self, method: Method, path: &str, body: Bytes) -> Result<(), String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| dropless_lifecycle::error_chain(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() && status != StatusCode::MULTI_STATUS {
            Ok(())
        } else {
            Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
        }
    }
}

/// `http://host:port[/prefix]` without a trailing slash, or a usage error.
fn base_url(url: &str) -> Result<String, Error> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "--influx-url {url:?}: {why}; expected http://HOST:PORT, e.g. http://127.0.0.1:8086"
        ))
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported")),
        None => return Err(bad("missing http://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
    if authority.host().is_empty() {
        return Err(bad("missing host"));
    }
    if uri.query().is_some() {
        return Err(bad("no query string allowed"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{prefix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("http://127.0.0.1:8086").unwrap(),
            "http://127.0.0.1:8086"
        );
        assert_eq!(
            base_url("http://127.0.0.1:8086/").unwrap(),
            "http://127.0.0.1:8086"
        );
        assert_eq!(base_url("http://h:1/influx/").unwrap(), "http://h:1/influx");
        for bad in [
            "127.0.0.1:8086",
            "https://h:1",
            "http//h",
            "not a url",
            "http://h:1/?x=1",
        ] {
            let error = base_url(bad).unwrap_err().to_string();
            assert!(error.contains("--influx-url"), "{bad}: {error}");
        }
    }
}
