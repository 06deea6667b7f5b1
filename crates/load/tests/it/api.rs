//! The library API the trial drives: start, snapshots, stop, report.

use std::time::Duration;

use dropless_load::{Config, ConfigError, Error, Model, Thresholds};

use crate::support;
use crate::{assert_consistent, open};

#[tokio::test]
async fn snapshots_every_second_then_stop_gives_a_partial_report() {
    let server = support::fast().await;
    let run = dropless_load::start(&open(&server.url("http"), 100.0, Duration::from_secs(30)))
        .await
        .unwrap();
    let mut snapshots = run.subscribe();
    snapshots.changed().await.unwrap();
    let first = snapshots.borrow_and_update().clone();
    assert!(!first.done);
    assert!((1.0..3.0).contains(&first.elapsed_s), "{}", first.elapsed_s);
    assert!(first.requests.ok >= 50, "{:?}", first.requests);
    run.stop();
    let report = run.report().await.unwrap();
    assert!(report.interrupted);
    assert!(report.duration_s < 3.0, "{}", report.duration_s);
    assert_consistent(&report);
    let last = snapshots.borrow().clone();
    assert!(last.done);
    assert_eq!(last.requests, report.requests);
    assert_eq!(last.timeline, report.timeline);
}

#[tokio::test]
async fn a_request_count_ends_the_run() {
    let server = support::fast().await;
    let mut config = Config::new(server.url("http"));
    config.model = Model::Closed { vus: 4 };
    config.requests = Some(1000);
    let report = dropless_load::run(&config).await.unwrap();
    assert_consistent(&report);
    assert_eq!((report.requests.total, report.requests.ok), (1000, 1000));
    assert!(!report.interrupted);
    assert_eq!(
        (report.model.as_str(), report.vus, report.rate.target_per_s),
        ("closed", Some(4), None)
    );
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        4
    );
}

#[tokio::test]
async fn bad_configs_fail_before_any_socket() {
    let err = dropless_load::start(&Config::new("localhost:8080"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Config(ConfigError::Url { .. })),
        "{err}"
    );
    // A port that does not fit in 16 bits is not the default port.
    let err = dropless_load::start(&Config::new("http://127.0.0.1:99999/"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "invalid URL 'http://127.0.0.1:99999/': the port must be a number from 1 to 65535"
    );
    let mut config = Config::new("http://127.0.0.1:1/");
    config.expect_status = "2xx".into();
    let err = dropless_load::start(&config).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "invalid status set '2xx': expected codes from 100 to 599 and ranges, like 200-399 or 200,204"
    );
}

#[tokio::test]
async fn the_json_report_has_the_design_field_names() {
    let server = support::fast().await;
    let report = crate::run(&open(&server.url("http"), 20.0, Duration::from_millis(500))).await;
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for field in [
        "target",
        "rate",
        "duration_s",
        "requests",
        "failures",
        "dropped_iterations",
        "latency_ms",
        "timeline",
        "retries",
        "service_time_ms",
        "interrupted",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    assert_eq!(json["rate"]["target_per_s"], 20.0);
    assert_eq!(json["requests"]["total"], 10);
    for p in ["min", "p50", "p80", "p99", "max"] {
        assert!(
            json["latency_ms"]["ttfb"][p].is_number() && json["latency_ms"]["ttlb"][p].is_number()
        );
    }
    let second = &json["timeline"][0];
    for field in ["t_s", "sent", "ok", "failed", "p99_ms"] {
        assert!(second.get(field).is_some(), "timeline lacks {field}");
    }
    let back: dropless_load::Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

#[tokio::test]
async fn a_run_without_a_response_breaches_and_shows_no_latency() {
    let closed = support::closed_port().await;
    let url = format!("http://{closed}/");
    let report = crate::run(&open(&url, 20.0, Duration::from_millis(500))).await;
    assert_eq!((report.requests.total, report.requests.ok), (10, 0));
    let summary = report.summary();
    for row in ["ttfb", "ttlb", "service_time"] {
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row: {summary}"));
        assert!(line.ends_with(": -"), "{line}");
    }
    assert_eq!(
        Thresholds::default().breaches(&report),
        ["no request succeeded (10 of 10 failed); --max-failures 10 accepts that"]
    );
    let accepted = Thresholds {
        max_failures: Some(10),
        ..Thresholds::default()
    };
    assert!(accepted.breaches(&report).is_empty());
}
