//! The audit: acknowledged operations looked for in a real InfluxDB (the
//! crate's private influxd) and in a calculation log file.

use dropless_trial::{audit::AuditSource, influxd::Influxd};

use crate::fixtures::influx_write;

#[tokio::test]
async fn influx_counts_stored_lost_and_duplicated_operations() {
    let influxd = tokio::task::spawn_blocking(Influxd::start)
        .await
        .unwrap()
        .expect("influxd starts (Debian package influxdb)");
    let url = influxd.url().to_owned();
    // `a` once, `b` twice (two points, distinct timestamps).
    let lines =
        "operation,id=a result=3i 1\noperation,id=b result=3i 2\noperation,id=b result=3i 3\n";
    let write_url = url.clone();
    tokio::task::spawn_blocking(move || influx_write(&write_url, "calc", lines))
        .await
        .unwrap();
    let source = AuditSource::Influx {
        url: url.clone(),
        db: "calc".into(),
    };
    let report = source.audit(4).await.unwrap();
    assert_eq!(
        (
            report.acknowledged,
            report.stored,
            report.lost,
            report.duplicated,
            report.error
        ),
        (4, Some(2), Some(2), Some(1), None)
    );
    assert!(report.source.contains("calc"), "{}", report.source);

    // A database nothing was written to: everything acknowledged is lost.
    let empty = AuditSource::Influx {
        url,
        db: "never_written".into(),
    };
    let report = empty.audit(5).await.unwrap();
    assert_eq!((report.stored, report.lost), (Some(0), Some(5)));
}

#[tokio::test]
async fn a_stopped_influxd_is_an_error_naming_the_source() {
    let mut influxd = tokio::task::spawn_blocking(Influxd::start)
        .await
        .unwrap()
        .expect("influxd starts");
    let url = influxd.url().to_owned();
    influxd.kill();
    let source = AuditSource::Influx {
        url: url.clone(),
        db: "calc".into(),
    };
    let error = source.audit(1).await.unwrap_err().to_string();
    assert!(error.contains(&url), "{error}");
}

#[tokio::test]
async fn the_log_file_counts_each_id_and_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calc-log.jsonl");
    std::fs::write(
        &path,
        "{\"id\":\"a\",\"result\":3}\n\n{\"id\":\"b\",\"result\":3}\n{\"id\":\"b\",\"result\":3}\n{\"id\":\"c\",\"result\":3}\n",
    )
    .unwrap();
    let report = AuditSource::LogFile(path.clone()).audit(3).await.unwrap();
    assert_eq!(
        (report.stored, report.lost, report.duplicated),
        (Some(3), Some(0), Some(1))
    );

    std::fs::write(&path, "{\"id\":\"a\"}\nnot json\n").unwrap();
    let error = AuditSource::LogFile(path.clone())
        .audit(1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("line 2") && error.contains("calc-log.jsonl"),
        "{error}"
    );
}
