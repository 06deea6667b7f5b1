//! The calculation log in a real InfluxDB: v6 and v8 lose calculations at
//! shutdown, v7 and v9 lose none; an outage is counted, not silent.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crate::fixtures::{Demo, Influxd, Load, PATIENCE, Summary};

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

/// Demo v9 writing to `influxd`, `/sum` working 10 ms, no pre-stop delay,
/// and `args`.
async fn v9_without_pre_stop(influxd: &Influxd, args: &[&str]) -> Demo {
    let mut all = vec![
        "--profile",
        "v9",
        "--work-ms",
        "10",
        "--pre-stop",
        "0s",
        "--influx-url",
        &influxd.url,
    ];
    all.extend_from_slice(args);
    Demo::start(&all).await
}

/// The `not_written=N` of the demo's shutdown summary.
fn not_written(log: &str) -> u64 {
    log.lines()
        .find(|line| line.contains("NOT written"))
        .and_then(|line| line.split("not_written=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of what was not written: {log}"))
}

#[tokio::test]
async fn influx_outage_is_retried_until_the_grace_ends_then_counted_and_the_exit_fails() {
    let mut influxd = Influxd::start().await;
    let mut demo = v9_without_pre_stop(&influxd, &["--batch-size", "3", "--grace", "3s"]).await;
    let load = Load::start(demo.addr, SUM, 2);
    load.until_ok(9).await;
    influxd.kill().await;
    let ok_at_outage = load.summary().ok;
    load.until_ok(ok_at_outage + 9).await;
    demo.logged("write failed, retrying").await;
    let sigterm = Instant::now();
    demo.sigterm();
    let status = demo.exited().await;
    let shutdown = sigterm.elapsed();
    load.stop().await;
    let log = demo.log();
    assert_eq!(status.code(), Some(1), "calculations were lost: {log}");
    // Retried within the grace period (3 s less a 0.5 s margin), not given
    // up on after 0.3 s.
    assert!(
        shutdown >= Duration::from_millis(2400) && shutdown < Duration::from_secs(3),
        "{shutdown:?}: {log}"
    );
    assert!(
        log.contains("retrying until the grace period ends"),
        "{log}"
    );
    let not_written = not_written(&log);
    assert!(
        not_written >= 9,
        "at least the calculations after the outage: {not_written}"
    );
    assert!(
        log.contains(&format!("{not_written} of "))
            && log.contains("acknowledged calculation(s) NOT written within the grace period"),
        "the exit says how many: {log}"
    );
}

#[tokio::test]
async fn v9_final_flush_waits_for_a_database_back_within_the_grace() {
    let mut influxd = Influxd::start().await;
    let mut demo = v9_without_pre_stop(&influxd, &["--grace", "15s"]).await;
    let load = Load::start(demo.addr, SUM, 2);
    load.until_ok(20).await;
    let seen = load.stop().await;
    // The whole batch waits for the final flush (500 records or 30 s).
    influxd.kill().await;
    demo.sigterm();
    // An outage longer than a few retries (0.7 s): restart influxd once
    // the final flush has failed four times, or the demo gave up and exited.
    tokio::time::timeout(PATIENCE, async {
        while demo.log().matches("write failed").count() < 4 && demo.alive() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the final flush never failed: {}", demo.log()));
    influxd.restart().await;
    let status = demo.exited().await;
    let log = demo.log();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("every calculation written"), "{log}");
    let stored = influxd.op_ids("calc").await;
    assert_eq!(
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        seen.op_ids,
        "{log}"
    );
    assert_eq!(stored.len(), seen.ok);
}
