//! The calculation log in a real InfluxDB: v6 and v8 lose calculations at
//! shutdown, v7 and v9 lose none; an outage is counted, not silent.

use std::{collections::BTreeSet, time::Duration};

use crate::fixtures::{Demo, Influxd, Load, Summary};

const SUM: &str = "/sum?a=2&b=3";

/// Runs `profile` against influxd under load, then SIGTERM; returns what
/// the clients acknowledged, what InfluxDB stored, and the demo's log.
async fn logged_calculations(influxd: &Influxd, args: &[&str]) -> (Summary, Vec<String>, String) {
    let mut all = vec![
        "--work-ms",
        "20",
        "--pre-stop",
        "200ms",
        "--influx-url",
        &influxd.url,
    ];
    all.extend_from_slice(args);
    let mut demo = Demo::start(&all).await;
    let load = Load::start(demo.addr, SUM, 4);
    load.until_ok(40).await;
    demo.sigterm();
    let status = demo.exited().await;
    let seen = load.stop().await;
    assert!(status.success(), "{status}: {}", demo.log());
    assert!(seen.cut.is_empty(), "{:?}", seen.cut);
    assert_eq!(seen.op_ids.len(), seen.ok, "every 200 has its own x-op-id");
    (seen, influxd.op_ids("calc").await, demo.log())
}

#[tokio::test]
async fn v6_loses_calculations_in_untracked_tasks() {
    let influxd = Influxd::start().await;
    let (seen, stored, log) =
        logged_calculations(&influxd, &["--profile", "v6", "--log-delay", "3s"]).await;
    assert!(
        stored.len() < seen.ok,
        "v6 should lose calculations: {} stored of {}",
        stored.len(),
        seen.ok
    );
    assert_eq!(influxd.count("calc").await as usize, stored.len());
    assert!(
        log.contains("NOT written"),
        "the loss must be logged: {log}"
    );
}

#[tokio::test]
async fn v7_awaits_its_tasks_and_loses_nothing() {
    let influxd = Influxd::start().await;
    let (seen, stored, log) =
        logged_calculations(&influxd, &["--profile", "v7", "--log-delay", "1s"]).await;
    assert_eq!(
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        seen.op_ids,
        "{log}"
    );
    assert_eq!(stored.len(), seen.ok, "each calculation stored once");
    assert_eq!(influxd.count("calc").await as usize, seen.ok);
}

#[tokio::test]
async fn v8_loses_the_unflushed_batch() {
    let influxd = Influxd::start().await;
    let (seen, stored, log) = logged_calculations(&influxd, &["--profile", "v8"]).await;
    assert!(seen.ok < 500, "the test must stay under one full batch");
    assert!(stored.is_empty(), "nothing reached a flush: {stored:?}");
    assert!(
        log.contains("NOT written"),
        "the loss must be logged: {log}"
    );
}

#[tokio::test]
async fn v9_flushes_the_last_batch_and_loses_nothing() {
    let influxd = Influxd::start().await;
    let (seen, stored, log) =
        logged_calculations(&influxd, &["--profile", "v9", "--batch-size", "7"]).await;
    assert_eq!(
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        seen.op_ids,
        "{log}"
    );
    assert_eq!(stored.len(), seen.ok);
    assert_eq!(influxd.count("calc").await as usize, seen.ok);
}

#[tokio::test]
async fn influx_outage_is_retried_and_counted_at_shutdown() {
    let mut influxd = Influxd::start().await;
    let mut demo = Demo::start(&[
        "--profile",
        "v9",
        "--work-ms",
        "10",
        "--pre-stop",
        "0s",
        "--batch-size",
        "3",
        "--influx-url",
        &influxd.url,
    ])
    .await;
    let load = Load::start(demo.addr, SUM, 2);
    load.until_ok(9).await;
    influxd.kill().await;
    let ok_at_outage = load.summary().ok;
    load.until_ok(ok_at_outage + 9).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    demo.sigterm();
    let status = demo.exited().await;
    load.stop().await;
    let log = demo.log();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("write failed, retrying"),
        "writes must be retried: {log}"
    );
    let not_written: u64 = log
        .lines()
        .find(|line| line.contains("NOT written"))
        .and_then(|line| line.split("not_written=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of what was not written: {log}"));
    assert!(
        not_written >= 9,
        "at least the calculations after the outage: {not_written}"
    );
}
