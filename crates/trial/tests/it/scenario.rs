//! Scenario files: every mistake is one error that names the field (or the
//! file) and says what to write instead.

use dropless_trial::{Scenario, ScenarioError};

use crate::fixtures::scenario_file;

const GOOD: &str = r#"
name = "rolling restart"
[service]
demo = "v9"
replicas = 3
grace = "5s"
[load]
rate = 50
duration = "10s"
[[event]]
at = "2s"
action = "restart"
[[event]]
at = "4s"
action = "deploy"
version = "v2"
profile = "v7"
"#;

fn load(text: &str) -> Result<Scenario, ScenarioError> {
    let dir = tempfile::tempdir().unwrap();
    Scenario::load(&scenario_file(&dir, text))
}

#[test]
fn a_good_file_loads_with_its_durations_and_profile() {
    let scenario = load(GOOD).unwrap();
    assert_eq!(scenario.name, "rolling restart");
    assert_eq!(
        scenario.service.grace,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(scenario.load.duration, std::time::Duration::from_secs(10));
    assert_eq!(scenario.service.profile(), Some(dropless_demo::Profile::V9));
    assert!(!scenario.service.without_readiness());
    let v1 = load(&GOOD.replace("demo = \"v9\"", "demo = \"V1\"")).unwrap();
    assert!(
        v1.service.without_readiness(),
        "the demo's v1 has no health endpoint"
    );
}

#[test]
fn each_bad_field_is_named_with_the_fix() {
    for (from, to, expected) in [
        ("demo = \"v9\"", "demo = \"v10\"", "`service.demo`"),
        ("demo = \"v9\"", "demo = \"v10\"", "expected one of v1..v9"),
        ("replicas = 3", "replicas = 0", "`service.replicas`"),
        ("rate = 50", "rate = -1", "`load.rate`"),
        ("duration = \"10s\"", "duration = \"0s\"", "`load.duration`"),
        ("at = \"4s\"", "at = \"12s\"", "`event[1].at`"),
        ("profile = \"v7\"", "profile = \"v0\"", "`event[1].profile`"),
        (
            "action = \"restart\"",
            "action = \"reboot\"",
            "unknown action \"reboot\"",
        ),
        // Durations are the runtime's: one parser, one message.
        (
            "grace = \"5s\"",
            "grace = \"soon\"",
            "bad duration \"soon\"",
        ),
        ("grace = \"5s\"", "grace = \"soon\"", "\"10s\""),
        ("replicas = 3", "replica = 3", "unknown field `replica`"),
        ("rate = 50", "rate = 50\nsessions = 0", "`load.sessions`"),
        (
            "replicas = 3",
            "replicas = 3\naffinity = \"query:sid\"",
            "`service.affinity`",
        ),
        (
            "rate = 50",
            "rate = 50\nwebsocket = true",
            "`load.websocket`",
        ),
        (
            "rate = 50",
            "rate = 50\nsessions = 2\nclient = \"h2\"",
            "sessions speak HTTP/1.1",
        ),
    ] {
        assert!(GOOD.contains(from), "{from}");
        let error = load(&GOOD.replacen(from, to, 1)).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{to}: expected {expected:?} in {error}"
        );
        assert_eq!(error.lines().count(), 1, "one line: {error}");
    }
}

#[test]
fn a_parse_error_names_the_file_and_a_missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario_file(&dir, "[service\n");
    let error = Scenario::load(&path).unwrap_err();
    assert!(matches!(error, ScenarioError::Parse { .. }), "{error}");
    assert!(error.to_string().contains("scenario.toml"), "{error}");
    let missing = dir.path().join("missing.toml");
    let error = Scenario::load(&missing).unwrap_err();
    assert!(matches!(error, ScenarioError::Read { .. }), "{error}");
    assert!(error.to_string().contains("missing.toml"), "{error}");
}

#[test]
fn a_load_of_sessions_with_affinity_loads_and_requests_the_game_under_root() {
    let scenario = load(
        &GOOD
            .replace("rate = 50", "rate = 50\nsessions = 200\nwebsocket = true")
            .replace(
                "replicas = 3",
                "replicas = 3\naffinity = \"path:/game/{id}\"",
            ),
    )
    .unwrap();
    assert_eq!(
        scenario.service.affinity.as_deref(),
        Some("path:/game/{id}")
    );
    assert_eq!(scenario.load.sessions, Some(200));
    assert!(scenario.load.websocket);
    assert_eq!(
        scenario.load.url_path(),
        "/",
        "the default path is a prefix"
    );
    let plain = load(GOOD).unwrap();
    assert_eq!(plain.load.url_path(), "/sum?a=1&b=2");
}
