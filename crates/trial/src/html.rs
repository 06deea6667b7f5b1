//! `report.html`: one self-contained page (inline SVG and CSS, no script,
//! nothing fetched) with the charts and the summary tables.

use std::fmt::Write as _;

use crate::report::{EventRecord, TrialReport, Verdict};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 36.0;
const OK_COLOUR: &str = "#2e7d32";
/// Colours of failure classes, in the order the classes are first seen.
const FAILURE_COLOURS: [&str; 8] = [
    "#c62828", "#ef6c00", "#6a1b9a", "#ad1457", "#f9a825", "#4e342e", "#1565c0", "#00838f",
];

/// Renders one trial's page.
pub fn render(report: &TrialReport) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let title = format!("dropless trial: {}", report.name);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    let (class, word) = match report.verdict {
        Verdict::Pass => ("pass", "PASS"),
        Verdict::Fail => ("fail", "FAIL"),
    };
    let _ = write!(
        page,
        "<h1>{}</h1>\n<p class=\"verdict {class}\">{word}</p>\n",
        escape(&title)
    );
    if !report.reasons.is_empty() {
        page.push_str("<ul class=\"reasons\">");
        for reason in &report.reasons {
            let _ = write!(page, "<li>{}</li>", escape(reason));
        }
        page.push_str("</ul>\n");
    }
    let _ = writeln!(
        page,
        "<p class=\"meta\">{} · strategy <b>{}</b> · {} · {:.0} s</p>",
        escape(&report.service),
        escape(&report.strategy),
        escape(&report.load.target),
        report.load.duration_s
    );
    page.push_str("<h2>Requests per second</h2>\n");
    page.push_str(&requests_chart(report));
    if !report.replicas.is_empty() {
        page.push_str("<h2>Ready replicas and their version</h2>\n");
        page.push_str(&replicas_chart(report));
    }
    page.push_str("<h2>p99 latency per second (ms, from the scheduled send time)</h2>\n");
    page.push_str(&latency_chart(report));
    page.push_str(&tables(report));
    page.push_str("</body></html>\n");
    page
}

/// The page style, shared with the other self-contained reports (`dropless check`).
pub const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222}\
h1{font-size:22px;margin:0 0 8px}h2{font-size:16px;margin:24px 0 6px}\
.verdict{display:inline-block;padding:4px 14px;border-radius:4px;font-weight:700;color:#fff;margin:0}\
.pass{background:#2e7d32}.fail{background:#c62828}.meta{color:#555}.reasons{color:#c62828}\
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #ccc;padding:3px 9px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
svg{background:#fafafa;border:1px solid #ddd}.legend span{display:inline-block;margin-right:14px}\
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}";

/// Failure classes that occur, in a stable order.
fn failure_classes(report: &TrialReport) -> Vec<String> {
    let mut classes: Vec<String> = dropless_load::nonzero_failures(&report.load.failures)
        .map(|(class, _)| class.to_owned())
        .collect();
    for second in &report.load.timeline {
        for (class, _) in dropless_load::nonzero_failures(&second.failures) {
            if !classes.iter().any(|c| c == class) {
                classes.push(class.to_owned());
            }
        }
    }
    classes
}

/// The x axis shared by both charts: seconds from the start of the load.
struct Axis {
    seconds: f64,
}

impl Axis {
    fn of(report: &TrialReport) -> Axis {
        let last = report
            .load
            .timeline
            .iter()
            .map(|s| s.t_s + 1)
            .max()
            .unwrap_or(1) as f64;
        let events = report
            .events
            .iter()
            .map(|e| e.ended_s.ceil())
            .fold(0.0, f64::max);
        Axis {
            seconds: last.max(report.load.duration_s.ceil()).max(events).max(1.0),
        }
    }

    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t / self.seconds)
    }

    fn bar_width(&self) -> f64 {
        ((WIDTH - LEFT - RIGHT) / self.seconds - 1.0).max(1.0)
    }

    /// Tick marks and labels along the bottom.
    fn draw(&self, svg: &mut String) {
        let step = nice_step(self.seconds, 10.0);
        let mut t = 0.0;
        while t <= self.seconds + 1e-9 {
            let x = self.x(t);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{y1:.1}\" stroke=\"#999\"/>\
                 <text x=\"{x:.1}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"middle\">{t}s</text>",
                y0 = HEIGHT - BOTTOM,
                y1 = HEIGHT - BOTTOM + 4.0,
                ty = HEIGHT - BOTTOM + 16.0,
            );
            t += step;
        }
    }
}

/// Value axis from 0 to `max` with grid lines.
fn y_axis(svg: &mut String, max: f64, unit: &str) -> f64 {
    let step = nice_step(max, 5.0);
    let top = (max / step).ceil().max(1.0) * step;
    let mut v = 0.0;
    while v <= top + 1e-9 {
        let y = y_of(v, top);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{x2}\" y2=\"{y:.1}\" stroke=\"#e2e2e2\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\">{}{unit}</text>",
            trim_number(v),
            x2 = WIDTH - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
        );
        v += step;
    }
    top
}

fn y_of(value: f64, top: f64) -> f64 {
    HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value / top)
}

/// A step of 1, 2 or 5 × 10^k that cuts `range` into about `parts`.
fn nice_step(range: f64, parts: f64) -> f64 {
    let raw = (range / parts).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(1e-9)
}

fn trim_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

/// Event markers: a shaded span from start to end, a line at the start,
/// the label on top.
fn events(svg: &mut String, axis: &Axis, events: &[EventRecord]) {
    for (i, event) in events.iter().enumerate() {
        let x0 = axis.x(event.started_s);
        let x1 = axis.x(event.ended_s).max(x0 + 1.0);
        let colour = if event.as_expected() {
            "#1565c0"
        } else {
            "#c62828"
        };
        let label_y = TOP - 20.0 + (i % 2) as f64 * 11.0;
        let _ = write!(
            svg,
            "<g class=\"event\"><rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{colour}\" fill-opacity=\"0.08\"/>\
             <line x1=\"{x0:.1}\" y1=\"{TOP}\" x2=\"{x0:.1}\" y2=\"{yb:.1}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{tx:.1}\" y=\"{label_y:.1}\" font-size=\"11\" fill=\"{colour}\">{label}</text>\
             <title>{label}: {start:.1}s → {end:.1}s ({outcome})</title></g>",
            w = x1 - x0,
            h = HEIGHT - TOP - BOTTOM,
            yb = HEIGHT - BOTTOM,
            tx = x0 + 3.0,
            label = escape(&event.action),
            start = event.started_s,
            end = event.ended_s,
            outcome = event.outcome_text(),
        );
    }
}

fn open_svg(svg: &mut String, label: &str) {
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
        escape(label)
    );
}

/// Stacked bars per second: ok at the bottom, then each failure class.
fn requests_chart(report: &TrialReport) -> String {
    let classes = failure_classes(report);
    let axis = Axis::of(report);
    let mut svg = String::new();
    open_svg(&mut svg, "ok and failed requests per second");
    let max = report
        .load
        .timeline
        .iter()
        .map(|s| (s.ok + s.failed) as f64)
        .fold(1.0, f64::max);
    let top = y_axis(&mut svg, max, "");
    axis.draw(&mut svg);
    let width = axis.bar_width();
    for second in &report.load.timeline {
        let x = axis.x(second.t_s as f64);
        let mut base = 0.0;
        let mut layer = |svg: &mut String, count: u64, colour: &str, name: &str| {
            if count == 0 {
                return;
            }
            let y0 = y_of(base, top);
            base += count as f64;
            let y1 = y_of(base, top);
            let _ = write!(
                svg,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y1:.1}\" width=\"{width:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{t}s: {count} {name}</title></rect>",
                h = (y0 - y1).max(0.5),
                t = second.t_s,
            );
        };
        layer(&mut svg, second.ok, OK_COLOUR, "ok");
        for (i, class) in classes.iter().enumerate() {
            let count = second.failures.get(class).copied().unwrap_or(0);
            layer(
                &mut svg,
                count,
                FAILURE_COLOURS[i % FAILURE_COLOURS.len()],
                class,
            );
        }
    }
    events(&mut svg, &axis, &report.events);
    svg.push_str("</svg>\n<p class=\"legend\">");
    let _ = write!(
        svg,
        "<span><i class=\"swatch\" style=\"background:{OK_COLOUR}\"></i>ok</span>"
    );
    for (i, class) in classes.iter().enumerate() {
        let _ = write!(
            svg,
            "<span><i class=\"swatch\" style=\"background:{}\"></i>{}</span>",
            FAILURE_COLOURS[i % FAILURE_COLOURS.len()],
            escape(class)
        );
    }
    svg.push_str("<span>dashed: events</span></p>\n");
    svg
}

/// The ready replicas over time as a step line, their version written at
/// each change of version.
fn replicas_chart(report: &TrialReport) -> String {
    let axis = Axis::of(report);
    let mut svg = String::new();
    open_svg(&mut svg, "ready replicas and their version over time");
    let max = report
        .replicas
        .iter()
        .map(|p| p.ready as f64)
        .fold(1.0, f64::max);
    let top = y_axis(&mut svg, max, "");
    axis.draw(&mut svg);
    let mut points = Vec::new();
    let mut version: Option<&str> = None;
    for (i, point) in report.replicas.iter().enumerate() {
        let (x, y) = (axis.x(point.t_s), y_of(point.ready as f64, top));
        if let Some(previous) = i.checked_sub(1).map(|i| &report.replicas[i]) {
            points.push(format!("{x:.1},{:.1}", y_of(previous.ready as f64, top)));
        }
        points.push(format!("{x:.1},{y:.1}"));
        if version != Some(point.version.as_str()) {
            version = Some(&point.version);
            let _ = write!(
                svg,
                "<text class=\"version\" x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"11\" fill=\"#37474f\">{}</text>",
                escape(&point.version),
                tx = x + 3.0,
                ty = (y - 5.0).max(TOP - 4.0),
            );
        }
    }
    if let Some(last) = report.replicas.last() {
        let end = axis.x(axis.seconds.max(last.t_s));
        points.push(format!("{end:.1},{:.1}", y_of(last.ready as f64, top)));
    }
    let _ = write!(
        svg,
        "<polyline class=\"replicas\" fill=\"none\" stroke=\"#37474f\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    events(&mut svg, &axis, &report.events);
    svg.push_str("</svg>\n");
    svg
}

/// The p99 of each second, as a line.
fn latency_chart(report: &TrialReport) -> String {
    let axis = Axis::of(report);
    let mut svg = String::new();
    open_svg(&mut svg, "p99 latency per second");
    let max = report
        .load
        .timeline
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(1.0, f64::max);
    let top = y_axis(&mut svg, max, "");
    axis.draw(&mut svg);
    let half = axis.bar_width() / 2.0;
    let points: Vec<String> = report
        .load
        .timeline
        .iter()
        .filter_map(|s| {
            s.p99_ms
                .map(|p99| format!("{:.1},{:.1}", axis.x(s.t_s as f64) + half, y_of(p99, top)))
        })
        .collect();
    if !points.is_empty() {
        let _ = write!(
            svg,
            "<polyline class=\"p99\" fill=\"none\" stroke=\"#6a1b9a\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    events(&mut svg, &axis, &report.events);
    svg.push_str("</svg>\n");
    svg
}

fn tables(report: &TrialReport) -> String {
    let load = &report.load;
    let mut t = String::new();
    t.push_str("<h2>Summary</h2><table>");
    let row = |t: &mut String, name: &str, value: String| {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&value)
        );
    };
    row(&mut t, "target", load.target.clone());
    row(
        &mut t,
        "rate (target → achieved)",
        format!(
            "{} → {:.1} req/s",
            load.rate
                .target_per_s
                .map(|r| format!("{r:.1}"))
                .unwrap_or_else(|| "-".into()),
            load.rate.achieved_per_s
        ),
    );
    row(&mut t, "duration", format!("{:.1} s", load.duration_s));
    row(&mut t, "requests", load.requests.total.to_string());
    row(&mut t, "ok", load.requests.ok.to_string());
    row(&mut t, "failed", load.requests.failed.to_string());
    row(
        &mut t,
        "dropped iterations",
        load.dropped_iterations.to_string(),
    );
    row(&mut t, "retries (client)", load.retries.to_string());
    t.push_str("</table>");
    if let Some(sessions) = &load.sessions {
        sessions_section(&mut t, sessions);
    }

    t.push_str("<h2>Failures by class</h2>");
    let failures: Vec<_> = dropless_load::nonzero_failures(&load.failures).collect();
    if failures.is_empty() {
        t.push_str("<p>none</p>");
    } else {
        t.push_str("<table><tr><th>class</th><th>count</th></tr>");
        for (class, n) in failures {
            let _ = write!(t, "<tr><td>{}</td><td>{n}</td></tr>", escape(class));
        }
        t.push_str("</table>");
    }

    t.push_str("<h2>Latency (ms)</h2><table><tr><th></th><th>min</th><th>med</th><th>p80</th><th>p99</th><th>max</th><th>count</th></tr>");
    for (name, p) in [
        ("time to first byte", &load.latency_ms.ttfb),
        ("time to last byte", &load.latency_ms.ttlb),
        ("service time", &load.service_time_ms),
    ] {
        let _ = write!(
            t,
            "<tr><td>{name}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
            p.min, p.p50, p.p80, p.p99, p.max, p.count
        );
    }
    t.push_str("</table>");
    if load.generator_lag_ms >= dropless_load::LAG_NOTE_MS {
        let _ = write!(
            t,
            "<p>The load generator fell {:.1} ms behind its schedule at worst (the machine paused it): the latency from the schedule of the requests it sent late includes that, their service time does not.</p>",
            load.generator_lag_ms
        );
    }

    t.push_str("<h2>Events</h2>");
    if report.events.is_empty() {
        t.push_str("<p>none</p>");
    } else {
        t.push_str("<table class=\"events\"><tr><th>event</th><th>asked at</th><th>started</th><th>ended</th><th>outcome</th><th>detail</th></tr>");
        for e in &report.events {
            let _ = write!(
                t,
                "<tr><td>{}</td><td>{:.1} s</td><td>{:.1} s</td><td>{:.1} s</td><td>{}</td><td>{}</td></tr>",
                escape(&e.name()),
                e.at_s,
                e.started_s,
                e.ended_s,
                e.outcome_text(),
                escape(e.detail.as_deref().unwrap_or(""))
            );
        }
        t.push_str("</table>");
    }

    t.push_str("<h2>Audit of asynchronous work</h2>");
    match &report.audit {
        None => t.push_str("<p>no audit</p>"),
        Some(a) if a.error.is_some() => {
            let _ = write!(
                t,
                "<p class=\"reasons\">The audit of {} could not run: {}. {} operation(s) were acknowledged; none could be counted.</p>",
                escape(&a.source),
                escape(a.error.as_deref().unwrap_or("")),
                a.acknowledged
            );
        }
        Some(a) => {
            let count = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            let _ = write!(
                t,
                "<table><tr><th>source</th><th>acknowledged</th><th>stored</th><th>lost</th><th>duplicated</th></tr>\
                 <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
                escape(&a.source),
                a.acknowledged,
                count(a.stored),
                count(a.lost),
                count(a.duplicated)
            );
        }
    }
    t
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The sessions' outcomes, then their events per second beside the
/// requests of that second.
fn sessions_section(t: &mut String, s: &dropless_load::Sessions) {
    t.push_str("<h2>Sessions</h2><table>");
    for (name, value) in [
        ("sessions", s.total),
        ("ok", s.ok),
        ("reset", s.resets),
        ("lost update", s.lost_updates),
        ("duplicate", s.duplicates),
        ("gap (stream)", s.gaps),
        ("disconnects", s.disconnects),
        ("of which 1012 (service restart)", s.restart_closes),
        ("reconnects", s.reconnects),
        ("longest hold (ms)", s.max_hold_ms),
    ] {
        let _ = write!(t, "<tr><td>{}</td><td>{value}</td></tr>", escape(name));
    }
    t.push_str("</table>");
    let busy: Vec<_> = s
        .timeline
        .iter()
        .filter(|r| {
            r.resets + r.lost_updates + r.duplicates + r.gaps + r.disconnects + r.reconnects > 0
        })
        .collect();
    if busy.is_empty() {
        return;
    }
    t.push_str("<h3>Session events per second</h3><table><tr><th>s</th><th>moves</th><th>reset</th><th>lost update</th><th>duplicate</th><th>gap</th><th>disconnects</th><th>reconnects</th></tr>");
    for r in busy {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.t_s,
            r.moves,
            r.resets,
            r.lost_updates,
            r.duplicates,
            r.gaps,
            r.disconnects,
            r.reconnects
        );
    }
    t.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(30.0, 10.0), 5.0);
        assert_eq!(nice_step(300.0, 5.0), 100.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
