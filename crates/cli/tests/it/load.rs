//! `dropless load`: exit codes, one-line usage errors, the JSON report,
//! thresholds and Ctrl-C, against a server on 127.0.0.1 port 0.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A keep-alive HTTP/1.1 server answering every request with `status`.
struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
}

fn server(status: u16) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || serve(stream, status, &counter));
        }
    });
    Server { url, requests }
}

fn serve(mut stream: TcpStream, status: u16, requests: &AtomicUsize) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            requests.fetch_add(1, Ordering::SeqCst);
            let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

fn dropless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dropless"))
        .arg("load")
        .args(args)
        .output()
        .unwrap()
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_explains_every_flag_and_the_exit_codes() {
    let output = dropless(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--rate",
        "--vus",
        "--duration",
        "--requests",
        "--max-in-flight",
        "--batch",
        "--max-connecting",
        "--connections",
        "--no-keepalive",
        "--http2",
        "--insecure",
        "--method",
        "--header",
        "--body",
        "--body-file",
        "--expect-status",
        "--expect-body",
        "--timeout",
        "--grace",
        "--retry-reused",
        "--json",
        "--quiet",
        "--threads",
        "--max-failures",
        "--max-p99",
        "--sessions",
        "--websocket",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for code in [
        "0  the run completed",
        "1  runtime error",
        "2  usage error",
        "3  a threshold",
    ] {
        assert!(help.contains(code), "--help lacks exit code line {code:?}");
    }
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let cases: [(&[&str], &str); 11] = [
        (
            &["localhost:8080"],
            "error: invalid URL 'localhost:8080': expected http://host[:port]/path",
        ),
        (
            &["ftp://127.0.0.1/"],
            "error: invalid URL 'ftp://127.0.0.1/': the scheme must be http or https",
        ),
        (
            &["http://127.0.0.1:9/", "-d", "5x"],
            "error: invalid --duration '5x': expected a duration like 30s, 500ms or 2m",
        ),
        (
            &["http://127.0.0.1:9/", "--rate", "fast"],
            "error: invalid --rate 'fast': expected a number",
        ),
        (
            &["http://127.0.0.1:9/", "--rate", "0"],
            "error: rate must be a number of requests per second above 0, got 0",
        ),
        (
            &["http://127.0.0.1:9/", "-H", "nocolon"],
            "error: invalid header 'nocolon': expected 'Name: value'",
        ),
        (
            &["http://127.0.0.1:9/", "--expect-status", "2xx"],
            "error: invalid status set '2xx': expected codes from 100 to 599 and ranges, like 200-399 or 200,204",
        ),
        (
            &["http://127.0.0.1:9/", "--batch", "1s"],
            "error: batch must be at most 100ms (0 sends every request on its own instant), got 1s",
        ),
        (
            &["http://127.0.0.1:9/", "--max-connecting", "0"],
            "error: max-connecting must be at least 1, got 0",
        ),
        (
            &["http://127.0.0.1:9/", "--sessions", "0"],
            "error: sessions must be at least 1, got 0",
        ),
        (
            &["http://127.0.0.1:9/", "--sessions", "2", "--http2"],
            "error: sessions must be used over HTTP/1.1 (without --http2), got --http2",
        ),
    ];
    for (args, message) in cases {
        let output = dropless(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr_lines(&output), [message], "{args:?}");
    }
    let both = dropless(&["http://127.0.0.1:9/", "--rate", "10", "--vus", "2"]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "--rate and --vus exclude each other"
    );
    let websocket = dropless(&["http://127.0.0.1:9/", "--websocket"]);
    assert_eq!(
        websocket.status.code(),
        Some(2),
        "--websocket needs --sessions"
    );
}

#[test]
fn a_run_prints_the_summary_and_writes_the_json_report() {
    let server = server(200);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = dropless(&[
        &server.url,
        "--rate",
        "40",
        "-d",
        "500ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(summary.contains("20 total, 20 ok, 0 failed"), "{summary}");
    assert!(
        summary.contains("ttlb") && summary.contains("p(99)="),
        "{summary}"
    );
    let report = read_json(&json);
    assert_eq!(report["requests"]["total"], 20);
    assert_eq!(report["rate"]["target_per_s"], 40.0);
    assert_eq!(report["interrupted"], false);
    assert_eq!(server.requests.load(Ordering::SeqCst), 20);
}

#[test]
fn a_breached_threshold_exits_3() {
    let server = server(503);
    let output = dropless(&[
        &server.url,
        "--rate",
        "20",
        "-d",
        "500ms",
        "--max-failures",
        "3",
        "--json",
        "-",
    ]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        stderr_lines(&output).last().unwrap(),
        "threshold breached: 10 failed requests > max-failures 3"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["failures"]["http_503"], 10);
    let held = dropless(&[
        &server.url,
        "--rate",
        "20",
        "-d",
        "500ms",
        "--max-failures",
        "10",
        "-q",
    ]);
    assert_eq!(held.status.code(), Some(0));
}

#[test]
fn a_url_that_cannot_be_valid_or_a_json_path_that_cannot_be_written_exit_2_before_sending() {
    let server = server(200);
    let port = server.url.rsplit(':').next().unwrap().trim_end_matches('/');
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/report.json");
    let cases: [(Vec<String>, String); 4] = [
        (
            vec!["http://127.0.0.1:99999/".into()],
            "error: invalid URL 'http://127.0.0.1:99999/': the port must be a number from 1 to 65535".into(),
        ),
        (
            vec![format!("http://:{port}/")],
            format!("error: invalid URL 'http://:{port}/': no host"),
        ),
        (
            vec![
                server.url.clone(),
                "--json".into(),
                missing.display().to_string(),
            ],
            format!(
                "error: cannot write --json {}: the directory {} does not exist; create it or pick another path",
                missing.display(),
                missing.parent().unwrap().display()
            ),
        ),
        (
            vec![
                server.url.clone(),
                "--json".into(),
                dir.path().display().to_string(),
            ],
            format!(
                "error: cannot write --json {}: it is a directory; give a file name",
                dir.path().display()
            ),
        ),
    ];
    for (args, message) in cases {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--rate", "20", "-d", "500ms"]);
        let output = dropless(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr_lines(&output), [message], "{args:?}");
    }
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        0,
        "nothing was sent"
    );
}

#[test]
fn a_run_in_which_no_request_succeeded_exits_3_and_shows_no_latency() {
    let closed = crate::fixtures::closed_port();
    let url = format!("http://127.0.0.1:{closed}/");
    let output = dropless(&[&url, "--rate", "20", "-d", "500ms"]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        stderr_lines(&output),
        [
            "threshold breached: no request succeeded (10 of 10 failed); --max-failures 10 accepts that"
        ]
    );
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(summary.contains(": refused=10\n"), "{summary}");
    for row in ["ttfb", "ttlb", "service_time"] {
        assert!(
            summary
                .lines()
                .any(|l| l.trim_start().starts_with(row) && l.ends_with(": -")),
            "{row} should read '-': {summary}"
        );
    }
    let accepted = dropless(&[&url, "--rate", "20", "-d", "500ms", "--max-failures", "10"]);
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{:?}",
        stderr_lines(&accepted)
    );
}

#[test]
fn ctrl_c_and_sigterm_write_a_partial_report_and_exit_130() {
    for signal in ["-INT", "-TERM"] {
        interrupted_run_writes_a_partial_report(signal);
    }
}

fn interrupted_run_writes_a_partial_report(signal: &str) {
    let server = server(200);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dropless"))
        .args([
            "load",
            &server.url,
            "--rate",
            "50",
            "-d",
            "60s",
            "--json",
            json.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.requests.load(Ordering::SeqCst) < 25 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no load arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(child.wait().unwrap().code(), Some(130), "{signal}");
    let report = read_json(&json);
    assert_eq!(report["interrupted"], true);
    assert!(
        report["duration_s"].as_f64().unwrap() < 30.0,
        "{}",
        report["duration_s"]
    );
    let total = report["requests"]["total"].as_u64().unwrap();
    assert_eq!(total, server.requests.load(Ordering::SeqCst) as u64);
}

/// The JSON answer of InfluxDB 1.x to `q` on database `db` (asked over
/// HTTP/1.0, so the body comes without chunks).
fn influx_query(base: &str, db: &str, q: &str) -> serde_json::Value {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let q: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect();
    let request = format!("GET /query?db={db}&q={q} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{response}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn out_streams_points_to_influxdb_and_csv_that_sum_to_the_report() {
    if !dropless_trial::influxd::Influxd::installed() {
        eprintln!("skipped: influxd is not installed (apt-get install -y influxdb)");
        return;
    }
    let influxd = dropless_trial::influxd::Influxd::start().expect("influxd starts");
    let mut s = server(200);
    s.url.push_str("?x=1");
    let dir = tempfile::tempdir().unwrap();
    let (json, csv) = (
        dir.path().join("report.json"),
        dir.path().join("points.csv"),
    );
    let out = dropless(&[
        &s.url,
        "--rate",
        "100",
        "--duration",
        "3s",
        "--quiet",
        "--out",
        &format!("influxdb={}/loadtest", influxd.url()),
        "--out",
        &format!("csv={}", csv.display()),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = read_json(&json);
    assert_eq!(report["schema_version"], 1);
    let (sent, ok) = (&report["requests"]["total"], &report["requests"]["ok"]);
    assert!(sent.as_u64().unwrap() >= 250, "{report}");
    let answer = influx_query(
        influxd.url(),
        "loadtest",
        "SELECT count(sent), sum(sent), sum(ok), sum(failed) FROM dropless_load",
    );
    let row = &answer["results"][0]["series"][0]["values"][0];
    // One point per second of the run (and the last, partial one).
    assert!((3..=5).contains(&row[1].as_u64().unwrap()), "{answer}");
    assert_eq!(
        (&row[2], &row[3], &row[4]),
        (sent, ok, &serde_json::json!(0)),
        "{answer}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("time,sent,ok,failed,dropped,p99_ms,failures,lag_ms")
    );
    let csv_sent: u64 = lines
        .map(|l| l.split(',').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(csv_sent, sent.as_u64().unwrap(), "{text}");
}

#[test]
fn a_bad_out_is_a_one_line_usage_error() {
    let out = dropless(&["http://127.0.0.1:1/", "--out", "influxdb=https://db/x"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("influxdb=http://HOST:PORT[/DB]"),
        "{stderr}"
    );
}
