//! `dropless serve` and its control commands, run as a user would: exit
//! codes and one-line errors.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fixtures::{Serve, dropless, is_gone, run, serve_until_exit_in, stderr};

/// Runs `dropless serve FLAGS -- COMMAND` in a fresh state directory until
/// it exits.
fn serve_until_exit(flags: &[&str], command: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    serve_until_exit_in(dir.path(), flags, command)
}

#[test]
fn serve_with_a_command_that_does_not_exist_exits_2_in_one_line() {
    let output = serve_until_exit(&[], &["/nonexistent/server"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    assert!(text.contains("/nonexistent/server"), "{text}");
}

#[test]
fn serve_whose_replica_never_becomes_ready_exits_2_naming_replica_and_probe() {
    let output = serve_until_exit(&["--ready-timeout", "1s"], &["sleep", "30"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    assert!(
        text.contains("web-1") && text.contains("GET /healthz"),
        "{text}"
    );
}

#[test]
fn serve_whose_replica_exits_at_once_exits_2_with_the_last_lines_of_its_log() {
    let output = serve_until_exit(
        &[],
        &[
            "sh",
            "-c",
            "echo starting; echo cannot read app.toml >&2; exit 1",
        ],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("web-1") && text.contains("exited"), "{text}");
    let (_, tail) = text.split_once("its log ").expect("the log's name");
    assert!(
        tail.contains("starting") && tail.contains("cannot read app.toml"),
        "{text}"
    );
}

#[test]
fn deploy_of_a_version_that_exits_at_once_is_aborted_and_nothing_drops() {
    let serve = Serve::start_with("v3", &["--ready-timeout", "3s"]);
    let url = format!("http://127.0.0.1:{}/sum?a=1&b=2", serve.port);
    // A load that fails (exit 3) if a single request fails.
    let load = dropless()
        .args([
            "load",
            &url,
            "--rate",
            "50",
            "--duration",
            "4s",
            "--max-failures",
            "0",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The demo with a profile it does not know exits 2 saying so: deploy
    // prints what the replica wrote in its log.
    let unknown_profile = format!(
        "{} demo-service --profile v99",
        env!("CARGO_BIN_EXE_dropless")
    );
    let cases: [(&str, &[&str]); 3] = [
        ("false", &["exited", "its log", "is empty"]),
        (
            &unknown_profile,
            &["exited (exit status: 2)", "its log", "invalid value 'v99'"],
        ),
        ("sleep 30", &["not ready after 3s"]),
    ];
    for (command, expected) in cases {
        let output = run(&["deploy", "--control", &serve.control, "--cmd", command]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{command}: {text}");
        for expected in expected {
            assert!(
                text.contains(expected),
                "{command}: expected {expected:?} in {text}"
            );
        }
        assert!(text.contains("GET /healthz"), "names the probe: {text}");
        assert!(text.contains("web-"), "names the replica: {text}");
    }
    let load = load.wait_with_output().unwrap();
    assert_eq!(
        load.status.code(),
        Some(0),
        "the old version kept serving: {}",
        String::from_utf8_lossy(&load.stdout)
    );
    let status = run(&["status", "--control", &serve.control, "--json"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("demo-service"));
    assert!(serve.stop().success(), "serve exits 0 on SIGTERM");
}

#[test]
fn control_commands_without_a_runtime_exit_2_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("none.sock");
    for args in [
        vec!["deploy", "--cmd", "true"],
        vec!["restart"],
        vec!["scale", "2"],
        vec!["status"],
    ] {
        let mut args = args.clone();
        args.extend(["--control", control.to_str().unwrap()]);
        let output = run(&args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(
            text.contains("none.sock") && text.contains("--control"),
            "{text}"
        );
    }
}

#[test]
fn replicas_are_terminated_when_serve_is_killed_with_sigkill() {
    let mut serve = Serve::start("v4");
    let pids = serve.replica_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    // Each replica gets SIGTERM from the kernel (its parent died) and, demo
    // v4, exits at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pids.iter().all(|&p| is_gone(p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "replicas {pids:?} outlived a killed serve"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_tcp_control_api_works_with_the_token_and_refuses_without_it() {
    const TOKEN: &str = "a-token-of-some-length";
    // serve refuses a TCP control address without a token, in one line.
    let refused = serve_until_exit(&["--control-tcp", "127.0.0.1:0"], &["/bin/true"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(message.contains("DROPLESS_CONTROL_TOKEN"), "{message}");

    // Port 0: serve prints the address it bound.
    let serve = Serve::start_with_env(
        "v4",
        &["--control-tcp", "127.0.0.1:0"],
        &[("DROPLESS_CONTROL_TOKEN", TOKEN)],
    );
    let url = serve.control_tcp.clone().expect("the TCP control address");
    assert!(!url.ends_with(":0"), "{url}");
    let with_token = dropless()
        .args(["status", "--control", &url, "--json"])
        .env("DROPLESS_CONTROL_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(with_token.status.success(), "{}", stderr(&with_token));
    let services: serde_json::Value = serde_json::from_slice(&with_token.stdout).unwrap();
    assert_eq!(services[0]["replicas"].as_array().unwrap().len(), 2);

    for (token, says) in [
        (None, "DROPLESS_CONTROL_TOKEN"),
        (Some("a-wrong-token-of-some-length"), "wrong token"),
    ] {
        let mut command = dropless();
        command
            .args(["scale", "1", "--control", &url])
            .env_remove("DROPLESS_CONTROL_TOKEN");
        if let Some(t) = token {
            command.env("DROPLESS_CONTROL_TOKEN", t);
        }
        let output = command.output().unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{message}");
        assert_eq!(message.trim().lines().count(), 1, "{message}");
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(serve.stop().code(), Some(0));
}

#[test]
fn scale_refuses_zero_unless_asked_and_counts_above_the_limit() {
    // A queue timeout far longer than the test: a 503 that waited for it
    // would not come in time.
    let serve = Serve::start_with("v4", &["--queue-timeout", "120s"]);
    let scale = |args: &[&str]| {
        let mut all = vec!["scale", "--control", &serve.control];
        all.extend_from_slice(args);
        run(&all)
    };
    // Zero first: the old runtime would start a million replicas below.
    let text = refused_in_one_line(&scale(&["0"]));
    assert!(text.contains("--allow-zero"), "{text}");

    let text = refused_in_one_line(&scale(&["1000000"]));
    assert!(
        text.contains("max_replicas is 64") && text.contains("raise max_replicas"),
        "{text}"
    );

    let zero = scale(&["0", "--allow-zero"]);
    assert!(zero.status.success(), "{}", stderr(&zero));
    let began = std::time::Instant::now();
    let answer = get(serve.port, "/sum?a=1&b=2");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("web is scaled to zero"), "{answer}");
    assert!(
        began.elapsed() < std::time::Duration::from_secs(5),
        "503 after {:?}",
        began.elapsed()
    );

    let up = scale(&["2"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let answer = get(serve.port, "/sum?a=1&b=2");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(serve.stop().code(), Some(0));
}

/// The one line of a run that exited 2.
/// Waits (up to 20 s) until the file `path` that the running `child` writes
/// says what `ready` looks for; returns its text. Fails if the child exits
/// first.
fn wait_for_file(
    child: &mut std::process::Child,
    path: &std::path::Path,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap();
        if ready(&text) {
            return text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serve exited {status}: {text}");
        }
        assert!(Instant::now() < deadline, "not there yet: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused_in_one_line(output: &std::process::Output) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    text
}

/// One GET of `path` on the proxy at `port` with `Connection: close`: the
/// raw answer.
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn serve_listens_on_a_host_name() {
    let serve = Serve::start_on("localhost", "v4", &[], &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(serve.stop().code(), Some(0));
}

#[test]
fn bad_flag_values_exit_2_naming_the_flag_and_an_example() {
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["serve", "--discover", "tasks.app:8080"],
            &["--discover", "write dns:NAME:PORT"],
        ),
        (
            &["serve", "--affinity", "query:sid", "--", "true"],
            &["--affinity", "cookie:NAME"],
        ),
        (
            &["serve", "--ready-timeout", "abc", "--", "true"],
            &[
                "--ready-timeout",
                "expected a duration like 30s, 500ms or 2m",
            ],
        ),
        (
            &["serve", "--listen", "nosuchhost.invalid:8080", "--", "true"],
            &["--listen", "localhost:8080"],
        ),
        (
            &["load", "http://127.0.0.1:9/", "--expect-status", "200-600"],
            &["200-600", "100 to 599"],
        ),
        (
            &["load", "http://127.0.0.1:9/", "--expect-status", "99"],
            &["'99'", "100 to 599"],
        ),
        (
            &["trial", "--matrix", "--jobs", "0"],
            &["--jobs", "at least 1"],
        ),
    ];
    for (args, says) in cases {
        let output = run(args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        let first = text.lines().next().unwrap_or_default();
        for word in says {
            assert!(first.contains(word), "{args:?}: {word:?} not in {first:?}");
        }
    }
}

#[test]
fn status_and_events_of_an_unknown_service_exit_2_listing_the_services() {
    let serve = Serve::start("v4");
    for command in ["status", "events"] {
        let mut child = dropless()
            .args([command, "--control", &serve.control, "--service", "nope"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `events` follows the stream: today it would never end.
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
        }
        let output = child.wait_with_output().unwrap();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{command}: {text}");
        assert_eq!(
            text.trim(),
            "dropless: no service \"nope\": the services are web; pass one of them to --service",
            "{command}"
        );
        assert!(output.stdout.is_empty(), "{command}");
    }
    let known = run(&["status", "--control", &serve.control, "--service", "web"]);
    assert!(known.status.success(), "{}", stderr(&known));
    assert!(String::from_utf8_lossy(&known.stdout).contains("service web"));
}

#[test]
fn logs_written_to_a_file_carry_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let control = dir.path().join("c.sock");
    let mut child = dropless()
        .args(["serve", "--listen", "127.0.0.1:0", "--control"])
        .arg(&control)
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--target", "127.0.0.1:9", "--health-path", ""])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The replica's start is logged (the addresses go to stdout).
    let text = wait_for_file(&mut child, &log, |t| {
        t.contains(" INFO ") && t.contains("web-1")
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
    assert!(text.contains(" INFO "), "{text}");
    assert!(!text.contains("\x1b["), "escape codes in {text:?}");
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    // `script` gives serve a terminal; serve logs, then exits 2 by itself
    // (its target never answers its probe).
    for (no_color, coloured) in [(None, true), (Some("1"), false)] {
        let dir = tempfile::tempdir().unwrap();
        let serve = format!(
            "{} serve --listen 127.0.0.1:0 --control {} --state-dir {} --target 127.0.0.1:9 --health-path '' --ready-timeout 1s",
            env!("CARGO_BIN_EXE_dropless"),
            dir.path().join("c.sock").display(),
            dir.path().display()
        );
        let mut command = std::process::Command::new("script");
        command
            .args(["-qec", &serve, "/dev/null"])
            .env("RUST_LOG", "info")
            .env_remove("DROPLESS_CONTROL")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let output = command.output().expect("script (util-linux) runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("proxy on"), "{no_color:?}: {text}");
        assert_eq!(
            text.contains("\x1b["),
            coloured,
            "NO_COLOR={no_color:?}: {text:?}"
        );
    }
}

#[test]
fn serve_says_when_the_saved_state_overrides_its_command_line_and_fresh_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_in(dir.path(), "v4", &[], &[]);
    let scaled = run(&["scale", "3", "--control", &serve.control]);
    assert!(scaled.status.success(), "{}", stderr(&scaled));
    assert_eq!(serve.stop().code(), Some(0));

    // Started again with `--replicas 2`: state.json's 3 run, in one line.
    let serve = Serve::start_in(dir.path(), "v4", &[], &[]);
    let text = serve.stderr();
    let said: Vec<_> = text.lines().filter(|l| l.contains("--fresh")).collect();
    assert_eq!(said.len(), 1, "{text}");
    assert!(
        said[0].contains("state.json says web runs `")
            && said[0].contains("×3 (deployed as generation 1)")
            && said[0].contains("×2 from the command line is ignored"),
        "{text}"
    );
    assert_eq!(serve.replica_pids().len(), 3);
    assert_eq!(serve.stop().code(), Some(0));

    // --fresh: the command line's 2, saved as a new generation.
    let serve = Serve::start_in(dir.path(), "v4", &["--fresh"], &[]);
    assert!(!serve.stderr().contains("--fresh"), "{}", serve.stderr());
    assert_eq!(serve.replica_pids().len(), 2);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    let web = &state["services"]["web"];
    assert_eq!(web["replicas"], 2, "{state}");
    assert_eq!(web["current"]["generation"], 2, "{state}");
    assert_eq!(serve.stop().code(), Some(0));
}

#[test]
fn events_prints_the_recent_history_before_following() {
    let serve = Serve::start("v4");
    for args in [["--last", "2"], ["--since", "5m"]] {
        let mut child = dropless()
            .args(["events", "--control", &serve.control])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                if lines.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        // Both replicas became ready before `events` ran: the history has
        // it. The last two events are the last two of the start, whose
        // order between the replicas varies; the last one is a `ready`.
        let next = |printed: &Vec<String>| {
            got.recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("{args:?}: no history after {printed:?}"))
        };
        let mut printed = Vec::new();
        if args[0] == "--last" {
            for _ in 0..2 {
                let line = next(&printed);
                printed.push(line);
            }
            assert!(
                printed.iter().all(|l| l.contains(" web: replica web-")),
                "{printed:?}"
            );
            // The last two of the four start events: not web-1's start,
            // the first, and ending with a `ready`.
            assert!(
                !(printed[0].contains("web-1") && printed[0].ends_with(" starting")),
                "{printed:?}"
            );
            assert!(printed[1].ends_with(" ready"), "{printed:?}");
        } else {
            while printed.iter().filter(|l| l.ends_with(" ready")).count() < 2 {
                let line = next(&printed);
                printed.push(line);
            }
            assert!(
                printed[0].contains("web-1") && printed[0].ends_with(" starting"),
                "{printed:?}"
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(serve.stop().code(), Some(0));
}

#[test]
fn a_discovered_service_refuses_rollouts_and_shows_its_source() {
    let serve = Serve::discovering("dns:localhost:1");
    let control = serve.control.clone();
    for args in [
        &["deploy", "--cmd", "./v2"][..],
        &["scale", "2"],
        &["restart"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--control", &control]);
        let text = refused_in_one_line(&run(&all));
        assert!(
            text.contains("takes its replicas from dns:localhost:1")
                && text.contains("with the orchestrator"),
            "{args:?}: {text}"
        );
    }
    let status = run(&["status", "--control", &control]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("service web: replicas from dns:localhost:1"),
        "{text}"
    );
    assert_eq!(serve.stop().code(), Some(0));
}

#[test]
fn a_config_file_without_a_service_takes_it_from_target_and_refuses_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, "[proxy]\nheader_read_timeout = \"5s\"\n").unwrap();
    let out = dir.path().join("serve.out");
    let serve = |extra: &[&str], stdout: Stdio| {
        dropless()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--control")
            .arg(dir.path().join("c.sock"))
            .arg("--state-dir")
            .arg(dir.path())
            .args(extra)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Without a service anywhere: one line saying how to give one.
    let refused = serve(&[], Stdio::null()).wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        refused_in_one_line(&refused).contains("--target"),
        "{refused:?}"
    );
    // `--target` gives it: serve starts its proxy.
    let mut child = serve(
        &["--target", "127.0.0.1:9", "--health-path", ""],
        std::fs::File::create(&out).unwrap().into(),
    );
    wait_for_file(&mut child, &out, |t| t.contains("proxy on http://"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
}
