//! Shared fixtures: a scenario file on disk, a private InfluxDB fed with
//! points, a small fake load report.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use dropless_load::{Latency, Percentiles, Rate, Report, Requests, Second};

/// Writes `text` as `scenario.toml` in `dir`.
pub fn scenario_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A plain HTTP/1.1 request to `url` (`http://127.0.0.1:PORT`) with a
/// blocking socket; returns the status code and the body.
pub fn http(url: &str, method: &str, path_and_query: &str, body: &str) -> (u16, String) {
    let authority = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Creates `db` in the InfluxDB at `url` and writes `lines` (line
/// protocol) into it.
pub fn influx_write(url: &str, db: &str, lines: &str) {
    let (status, body) = http(
        url,
        "POST",
        &format!("/query?q=CREATE%20DATABASE%20{db}"),
        "",
    );
    assert_eq!(status, 200, "create database: {body}");
    let (status, body) = http(url, "POST", &format!("/write?db={db}&precision=ns"), lines);
    assert_eq!(status, 204, "write: {body}");
}

/// A load report of 10 s at 10 req/s: `failures` by class, the rest ok;
/// the failures all in second 3.
pub fn load_report(failures: &[(&str, u64)]) -> Report {
    let failed: u64 = failures.iter().map(|(_, n)| n).sum();
    let failures: BTreeMap<String, u64> = failures
        .iter()
        .map(|(class, n)| (class.to_string(), *n))
        .collect();
    let timeline = (0..10)
        .map(|t| {
            let failed_now = if t == 3 { failed } else { 0 };
            Second {
                t_s: t,
                sent: 10,
                ok: 10 - failed_now,
                failed: failed_now,
                dropped: 0,
                p99_ms: Some(4.0),
                max_ms: Some(4.0),
                failures: if t == 3 {
                    failures.clone()
                } else {
                    BTreeMap::new()
                },
                lag_ms: None,
            }
        })
        .collect();
    let latency = Percentiles {
        min: 1.0,
        p50: 2.0,
        p80: 3.0,
        p99: 4.0,
        max: 5.0,
        count: 100,
    };
    Report {
        schema_version: dropless_load::SCHEMA_VERSION,
        target: "http://127.0.0.1:1/sum?a=1&b=2".into(),
        model: "open".into(),
        vus: None,
        rate: Rate {
            target_per_s: Some(10.0),
            achieved_per_s: 10.0,
        },
        duration_s: 10.0,
        requests: Requests {
            total: 100,
            ok: 100 - failed,
            failed,
        },
        failures,
        other_samples: Vec::new(),
        dropped_iterations: 0,
        retries: 0,
        interrupted: false,
        latency_ms: Latency {
            ttfb: latency.clone(),
            ttlb: latency.clone(),
            ..Default::default()
        },
        service_time_ms: latency,
        generator_lag_ms: 0.0,
        timeline,
        sessions: None,
    }
}
