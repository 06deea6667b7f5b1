//! Where a trial's calculation log goes: InfluxDB (a private `influxd`, or
//! one given by URL) or a JSON-lines file, chosen from the scenario's
//! `[audit]` and what the demo's profile logs.

use std::path::Path;

use crate::{
    audit::AuditSource,
    influxd::Influxd,
    run::TrialError,
    scenario::{AuditSink, Scenario},
};

/// The calculation log of a trial: where the demo writes, where the audit
/// reads.
pub(crate) struct Sink {
    pub(crate) source: AuditSource,
    /// Flags for the demo service.
    pub(crate) demo_flags: Vec<String>,
    _influxd: Option<Influxd>,
}

impl Sink {
    /// The sink `scenario` asks for, or none when nothing is audited;
    /// the log file defaults to `out/calc-log.jsonl`.
    pub(crate) fn prepare(scenario: &Scenario, out: &Path) -> Result<Option<Sink>, TrialError> {
        let logs_calculations = scenario
            .service
            .profile()
            .is_some_and(|p| p.logs_calculations());
        let audit = &scenario.audit;
        let wanted = match audit.sink {
            AuditSink::None => return Ok(None),
            AuditSink::Auto if !logs_calculations => return Ok(None),
            AuditSink::Auto if audit.influx_url.is_some() => AuditSink::Influx,
            AuditSink::Auto if audit.log_file.is_some() => AuditSink::LogFile,
            AuditSink::Auto if Influxd::installed() => AuditSink::Influx,
            AuditSink::Auto => AuditSink::LogFile,
            other => other,
        };
        Ok(Some(match wanted {
            AuditSink::Influx => {
                let (url, influxd) = match &audit.influx_url {
                    Some(url) => (url.trim_end_matches('/').to_owned(), None),
                    None => {
                        let influxd = Influxd::start()?;
                        (influxd.url().to_owned(), Some(influxd))
                    }
                };
                // A database of its own, so earlier data is not counted.
                let db = audit
                    .influx_db
                    .clone()
                    .unwrap_or_else(|| format!("trial_{:08x}", rand::random::<u32>()));
                Sink {
                    demo_flags: vec![
                        "--influx-url".into(),
                        url.clone(),
                        "--influx-db".into(),
                        db.clone(),
                    ],
                    source: AuditSource::Influx { url, db },
                    _influxd: influxd,
                }
            }
            _ => {
                let path = audit
                    .log_file
                    .clone()
                    .unwrap_or_else(|| out.join("calc-log.jsonl"));
                if audit.log_file.is_none() {
                    let _ = std::fs::remove_file(&path);
                }
                Sink {
                    demo_flags: vec!["--log-file".into(), path.display().to_string()],
                    source: AuditSource::LogFile(path),
                    _influxd: None,
                }
            }
        }))
    }
}
