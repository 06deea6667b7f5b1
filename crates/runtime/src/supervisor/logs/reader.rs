//! Reading the replicas' log files back (`dropless logs`): the lines of one
//! run of `serve` (by default the latest), from every replica it started,
//! those that already exited included, interleaved by their time stamps,
//! each with its replica's name. Rotated parts are read oldest first.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::split_stamp;

/// Which lines to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only the replicas of this service (`web` for `web-3`).
    pub service: Option<String>,
    /// Only this replica.
    pub replica: Option<String>,
    /// Only lines stamped at or after this time.
    pub since: Option<SystemTime>,
}

/// One line of a replica's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When the runtime read it from the replica (the previous line's time
    /// for a line without a stamp).
    pub at: SystemTime,
    /// The replica, e.g. `web-3`.
    pub replica: String,
    /// The line, without its stamp and line end.
    pub text: String,
}

/// The replicas' logs of one run in a log directory, read from where the
/// last read stopped (for `--follow`).
#[derive(Debug)]
pub struct Logs {
    dir: PathBuf,
    run: String,
    filter: Filter,
    /// How far each current file was read.
    read: HashMap<PathBuf, u64>,
}

/// A log file name: replica, run, rotated part (0 = current).
fn parse_name(name: &str) -> Option<(&str, &str, usize)> {
    let (rest, part) = match name.rsplit_once(".log") {
        Some((rest, "")) => (rest, 0),
        Some((rest, n)) => (rest, n.strip_prefix('.')?.parse().ok()?),
        None => return None,
    };
    let (replica, run) = rest.split_once('.')?;
    Some((replica, run, part))
}

impl Logs {
    /// The logs in `dir` of `run`, or of the latest run there; `None` when
    /// the directory holds no log.
    pub fn open(dir: &Path, run: Option<String>, filter: Filter) -> std::io::Result<Option<Self>> {
        let run = match run {
            Some(run) => run,
            None => {
                // Run ids start with the time: the greatest is the latest.
                let latest = names(dir)?
                    .iter()
                    .filter_map(|n| parse_name(n).map(|(_, run, _)| run.to_string()))
                    .max();
                match latest {
                    Some(run) => run,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            run,
            filter,
            read: HashMap::new(),
        }))
    }

    /// The run read.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The lines written since the last call (all of them at the first),
    /// ordered by time. A current file found shorter than already read was
    /// rotated: it is read again from its start.
    pub fn next_lines(&mut self) -> std::io::Result<Vec<Line>> {
        let mut files: Vec<(String, usize, PathBuf)> = names(&self.dir)?
            .iter()
            .filter_map(|n| {
                let (replica, run, part) = parse_name(n)?;
                (run == self.run && self.wanted(replica))
                    .then(|| (replica.to_string(), part, self.dir.join(n)))
            })
            .collect();
        // Per replica: the oldest part first, the current file last.
        files.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let first = self.read.is_empty();
        let mut lines = Vec::new();
        for (replica, part, path) in files {
            if part > 0 && !first {
                continue;
            }
            let from = self.read.get(&path).copied().unwrap_or(0);
            let (text, end) = read_from(&path, from)?;
            if part == 0 {
                self.read.insert(path, end);
            }
            let mut at = SystemTime::UNIX_EPOCH;
            for l in text.lines() {
                let (stamp, text) = split_stamp(l);
                at = stamp.unwrap_or(at);
                if self.filter.since.is_none_or(|since| at >= since) {
                    lines.push(Line {
                        at,
                        replica: replica.clone(),
                        text: text.to_string(),
                    });
                }
            }
        }
        lines.sort_by_key(|l| l.at);
        Ok(lines)
    }

    fn wanted(&self, replica: &str) -> bool {
        let service = replica.rsplit_once('-').map_or(replica, |(s, _)| s);
        self.filter.replica.as_deref().is_none_or(|r| r == replica)
            && self.filter.service.as_deref().is_none_or(|s| s == service)
    }
}

/// The file names in `dir` (none when it does not exist).
fn names(dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The whole lines of `path` from byte `from` (from 0 when the file is
/// shorter: it was rotated), and where they end.
fn read_from(path: &Path, from: u64) -> std::io::Result<(String, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), from)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let from = if len < from { 0 } else { from };
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    // A line still being written waits for its end.
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(whole);
    Ok((
        String::from_utf8_lossy(&bytes).into_owned(),
        from + whole as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[(u64, &str)]) {
        let text: String = lines
            .iter()
            .map(|(ms, t)| {
                let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(*ms);
                format!("{} {t}\n", humantime::format_rfc3339_millis(at))
            })
            .collect();
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| format!("{} {}", l.replica, l.text))
            .collect()
    }

    #[test]
    fn the_latest_run_is_read_interleaved_by_time_with_rotated_parts_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "web-1.20260101T000000Z-1.log", &[(1, "old run")]);
        write(d, "web-1.20260102T000000Z-2.log.1", &[(10, "a"), (30, "c")]);
        write(d, "web-1.20260102T000000Z-2.log", &[(50, "e")]);
        write(d, "web-2.20260102T000000Z-2.log", &[(20, "b"), (40, "d")]);
        write(d, "api-1.20260102T000000Z-2.log", &[(35, "api")]);
        let mut logs = Logs::open(d, None, Filter::default()).unwrap().unwrap();
        assert_eq!(logs.run(), "20260102T000000Z-2");
        assert_eq!(
            texts(&logs.next_lines().unwrap()),
            [
                "web-1 a",
                "web-2 b",
                "web-1 c",
                "api-1 api",
                "web-2 d",
                "web-1 e"
            ]
        );
        // Following: only what was appended since.
        assert!(logs.next_lines().unwrap().is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("web-2.20260102T000000Z-2.log"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"1970-01-01T00:00:00.060Z f\npartial").unwrap();
        assert_eq!(texts(&logs.next_lines().unwrap()), ["web-2 f"]);

        let filter = Filter {
            service: Some("web".into()),
            since: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(30)),
            ..Filter::default()
        };
        let mut logs = Logs::open(d, None, filter).unwrap().unwrap();
        assert_eq!(
            texts(&logs.next_lines().unwrap()),
            ["web-1 c", "web-2 d", "web-1 e", "web-2 f"]
        );
        let filter = Filter {
            replica: Some("web-2".into()),
            ..Filter::default()
        };
        let mut logs = Logs::open(d, None, filter).unwrap().unwrap();
        assert_eq!(
            texts(&logs.next_lines().unwrap()),
            ["web-2 b", "web-2 d", "web-2 f"]
        );
        assert!(
            Logs::open(&d.join("none"), None, Filter::default())
                .unwrap()
                .is_none()
        );
    }
}
