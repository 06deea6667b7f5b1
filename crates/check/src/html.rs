//! The `--html` page: self-contained like the trial's report (inline CSS,
//! no script, nothing fetched), with the trial's style and escaping.

use std::fmt::Write as _;

use dropless_trial::html::{STYLE, escape};

use crate::checks::Verdict;
use crate::report::{Report, word};

/// Extra rules for the verdict cells.
const CHECK_STYLE: &str = ".na{color:#777}.unexpected{background:#ef6c00;color:#fff}\
td.pass,td.fail{color:#fff;font-weight:700}td{text-align:left}";

/// Renders the page.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let title = format!("dropless check: {}", report.command.join(" "));
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}{CHECK_STYLE}</style></head><body>\n",
        escape(&title)
    );
    let (class, verdict) = match report.passed {
        true => ("pass", "PASS"),
        false => ("fail", "FAIL"),
    };
    let _ = write!(
        page,
        "<h1>{}</h1>\n<p class=\"verdict {class}\">{verdict}</p>\n",
        escape(&title)
    );
    let _ = writeln!(
        page,
        "<p class=\"meta\">GET {} at {} req/s · health {} · grace {} ms · {} requests</p>",
        escape(&report.path),
        report.rate,
        escape(report.health_path.as_deref().unwrap_or("none")),
        report.grace_ms,
        report.requests
    );
    page.push_str("<h2>Checks (times in ms from SIGTERM)</h2>\n<table><tr><th>#</th><th>check</th><th>result</th><th>evidence</th></tr>\n");
    for c in &report.checks {
        let class = match c.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::NotApplicable => "na",
            Verdict::Unexpected => "unexpected",
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            c.number,
            escape(c.name),
            word(c.verdict),
            escape(&c.evidence)
        );
    }
    page.push_str("</table>\n<h2>What it means</h2>\n<ul>");
    let fix = match report.meaning.fixes.is_empty() {
        true => "none needed".to_owned(),
        false => report.meaning.fixes.join("; then "),
    };
    for (label, text) in [
        ("behind dropless", report.meaning.dropless.as_str()),
        (
            "behind Kubernetes without a preStop hook",
            report.meaning.kubernetes.as_str(),
        ),
        ("smallest fix", fix.as_str()),
    ] {
        let _ = write!(page, "<li><b>{}</b>: {}</li>", escape(label), escape(text));
    }
    page.push_str("</ul>\n");
    if !report.program_log_tail.is_empty() {
        page.push_str("<h2>The program's last output</h2>\n<pre>");
        for line in &report.program_log_tail {
            let _ = writeln!(page, "{}", escape(line));
        }
        page.push_str("</pre>\n");
    }
    page.push_str("</body></html>\n");
    page
}
