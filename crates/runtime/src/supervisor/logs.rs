//! A replica's output: its stdout and stderr share one pipe, and a copier
//! thread writes what comes out of it to the replica's log file
//! (`STATE_DIR/logs/<replica>.<run>.log`, mode 0600), rotated at
//! `logs.max_bytes` (`FILE` → `FILE.1` → … → `FILE.<keep>`, the oldest
//! dropped). The run in the name (start time and pid of `serve`) means two
//! runs never write to the same file.
//!
//! The copier only reads and writes: a replica writing fast never waits
//! long on a full pipe, and one the disk cannot take (full) is read and
//! dropped rather than left to block the replica. It ends when every write
//! end of the pipe is closed (the replica and its children are gone).

use std::fs::File;
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::LogsConfig;
use crate::desired::{DIR_MODE, FILE_MODE};

/// Bytes read from a replica's pipe at a time.
const CHUNK: usize = 64 * 1024;

/// Lines of a replica's log quoted when it failed to start ([`tail`]).
pub const TAIL_LINES: usize = 10;

/// Bytes read from the end of a replica's log for [`tail`], so that a log
/// of long lines cannot make an error message huge.
pub const TAIL_BYTES: u64 = 4096;

/// The copier thread of one log, and whether it has copied everything
/// (every write end of the pipe closed).
#[derive(Debug)]
pub struct Copier {
    thread: std::thread::JoinHandle<()>,
    done: tokio::sync::watch::Receiver<bool>,
    /// Another handle on the pipe's read end, for a new `serve` that takes
    /// the copying over (an upgrade).
    pipe: Option<std::os::fd::OwnedFd>,
}

impl Copier {
    /// Waits for the thread to end.
    pub fn join(self) -> std::thread::Result<()> {
        self.thread.join()
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Becomes `true` once the copier has written all the output there is.
    pub fn done(&self) -> tokio::sync::watch::Receiver<bool> {
        self.done.clone()
    }

    /// Another handle on the pipe's read end (see [`LogFile::copy`]).
    pub fn take_pipe(&mut self) -> Option<std::os::fd::OwnedFd> {
        self.pipe.take()
    }
}

/// The log file of one replica, with its rotation limits.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
}

impl LogFile {
    /// The log of `replica` in `dir` for the run `run` (see [`run_id`]).
    pub fn new(dir: &Path, replica: &str, run: &str, config: &LogsConfig) -> Self {
        Self {
            path: dir.join(format!("{replica}.{run}.log")),
            max_bytes: config.max_bytes.max(1),
            keep: config.keep,
        }
    }

    /// The file written now (older parts are `FILE.1`, `FILE.2`, …).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file (and its directory, 0700), which must not exist
    /// yet, and starts the thread that copies the pipe into it; returns the
    /// pipe's write end, for the replica's stdout and stderr, and the
    /// copier thread, which ends once every write end is closed.
    pub fn start(&self) -> std::io::Result<(PipeWriter, Copier)> {
        let (reader, writer) = std::io::pipe()?;
        Ok((writer, self.copy(reader)?))
    }

    /// Creates the file (which must not exist yet) and starts the thread
    /// that copies `reader` into it: [`LogFile::start`] with a pipe that
    /// exists already (one a replica adopted in an upgrade writes to).
    pub fn copy(&self, reader: PipeReader) -> std::io::Result<Copier> {
        if let Some(dir) = self.path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)?;
        }
        let file = open(&self.path, true)?;
        let pipe = Some(reader.try_clone()?.into());
        let mut out = Rotating {
            log: self.clone(),
            file: Some(file),
            size: 0,
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (copied, done) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("log {name}"))
            .spawn(move || {
                out.copy_from(reader);
                copied.send_replace(true);
            })?;
        Ok(Copier { thread, done, pipe })
    }
}

/// The run part of log file names: when this `serve` started (UTC) and its
/// pid, with a count when one process starts several runtimes (tests).
pub fn run_id() -> String {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let time: String = time.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    let pid = std::process::id();
    match n {
        0 => format!("{time}-{pid}"),
        n => format!("{time}-{pid}-{}", n + 1),
    }
}

/// The last `lines` lines of the log at `path`, read from at most its last
/// `max_bytes` bytes (a line cut by that bound is left out), without their
/// line ends; empty when the file is.
pub fn tail(path: &Path, lines: usize, max_bytes: u64) -> std::io::Result<Vec<String>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let from = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if from > 0 && !all.is_empty() {
        all.remove(0);
    }
    let start = all.len().saturating_sub(lines);
    Ok(all[start..]
        .iter()
        .map(|l| l.trim_end().to_string())
        .collect())
}

/// The file being written and its size.
struct Rotating {
    log: LogFile,
    file: Option<File>,
    size: u64,
}

impl Rotating {
    /// Copies `reader` to the log until every write end is closed.
    fn copy_from(&mut self, mut reader: PipeReader) {
        let mut buf = vec![0; CHUNK];
        // A read ends where the pipe had data, often mid-line: the partial
        // last line waits for its end (up to a chunk), so that a rotation
        // never cuts a line in two.
        let mut pending: Vec<u8> = Vec::new();
        let mut failing = false;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => {
                    let _ = self.write(&pending);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(log = %self.log.path.display(), "replica output: {e}");
                    let _ = self.write(&pending);
                    return;
                }
            };
            pending.extend_from_slice(&buf[..n]);
            let whole = match pending.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if pending.len() >= CHUNK => pending.len(),
                None => continue,
            };
            let written = self.write(&pending[..whole]);
            pending.drain(..whole);
            // Output the disk does not take is dropped, said once per failure.
            match written {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        log = %self.log.path.display(),
                        "cannot write the replica's log ({e}); its output is dropped until it can"
                    );
                }
                Err(_) => {}
            }
        }
    }

    /// Appends `data`, rotating first when it does not fit; cut at the
    /// last line end that fits when there is one.
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.file.is_none() {
                // After a rotation, or a failure: the file as it is now.
                let file = open(&self.log.path, false)?;
                self.size = file.metadata()?.len();
                self.file = Some(file);
            }
            let room =
                usize::try_from(self.log.max_bytes.saturating_sub(self.size)).unwrap_or(usize::MAX);
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let len = if data.len() <= room {
                data.len()
            } else {
                match data[..room].iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    // A line that does not fit here starts the next file.
                    None if self.size > 0 => {
                        self.rotate()?;
                        continue;
                    }
                    None => room,
                }
            };
            let file = self.file.as_mut().expect("opened above");
            if let Err(e) = file.write_all(&data[..len]) {
                self.file = None;
                return Err(e);
            }
            self.size += len as u64;
            data = &data[len..];
            if !data.is_empty() {
                self.rotate()?;
            }
        }
        Ok(())
    }

    /// `FILE.<keep-1>` → `FILE.<keep>`, …, `FILE` → `FILE.1` (with `keep`
    /// 0, `FILE` is removed); the next write creates a new `FILE`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let path = &self.log.path;
        let numbered = |i: usize| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        // A file missing (a rotation that failed half-way) is no error.
        let missing_is_fine = |result: std::io::Result<()>| match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        for i in (1..self.log.keep).rev() {
            missing_is_fine(std::fs::rename(numbered(i), numbered(i + 1)))?;
        }
        if self.log.keep > 0 {
            missing_is_fine(std::fs::rename(path, numbered(1)))?;
        } else {
            missing_is_fine(std::fs::remove_file(path))?;
        }
        self.size = 0;
        Ok(())
    }
}

/// Opens `path` for writing, mode 0600: a new file with `new`, else
/// appended to (created if missing).
fn open(path: &Path, new: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(FILE_MODE);
    if new {
        options.create_new(true);
    } else {
        options.create(true).append(true);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_bytes: u64, keep: usize) -> LogsConfig {
        LogsConfig { max_bytes, keep }
    }

    #[test]
    fn output_rotates_at_max_bytes_on_line_ends_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::new(dir.path(), "web-1", "run", &config(100, 2));
        let (mut writer, copier) = log.start().unwrap();
        let text: String = (0..200).map(|i| format!("line {i:03}\n")).collect();
        writer.write_all(text.as_bytes()).unwrap();
        drop(writer);
        copier.join().unwrap();
        let read = |suffix: &str| {
            let mut p = log.path().as_os_str().to_owned();
            p.push(suffix);
            std::fs::read_to_string(PathBuf::from(p))
        };
        let (current, one, two) = (read("").unwrap(), read(".1").unwrap(), read(".2").unwrap());
        assert!(read(".3").is_err(), "only 2 rotated files are kept");
        for part in [&current, &one, &two] {
            assert!(part.len() <= 100, "{}", part.len());
            assert!(part.ends_with('\n'), "cut at a line end: {part:?}");
        }
        // The three files are the end of the output, in order.
        assert!(text.ends_with(&format!("{two}{one}{current}")));
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["web-1.run.log", "web-1.run.log.1", "web-1.run.log.2"]
        );
    }

    #[test]
    fn the_tail_is_the_last_lines_within_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let lines = tail(&path, 3, 4096).unwrap();
        assert_eq!(lines, ["line 097", "line 098", "line 099"]);
        // 20 bytes: "097\nline 098\nline 099\n" minus the cut line.
        assert_eq!(tail(&path, 10, 20).unwrap(), ["line 098", "line 099"]);
        std::fs::write(&path, "").unwrap();
        assert!(tail(&path, 10, 4096).unwrap().is_empty());
    }

    #[test]
    fn with_keep_0_the_full_file_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::new(dir.path(), "web-1", "run", &config(10, 0));
        let (mut writer, copier) = log.start().unwrap();
        writer.write_all(b"aaaa\nbbbb\ncccc\n").unwrap();
        drop(writer);
        copier.join().unwrap();
        assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "cccc\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_existing_file_is_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::new(dir.path(), "web-1", "run", &config(100, 2));
        std::fs::write(log.path(), "an earlier run\n").unwrap();
        let err = log.start().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_ne!(run_id(), run_id(), "each runtime has its own run");
    }

    #[test]
    fn a_fast_writer_is_never_blocked_and_the_copier_ends_with_the_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::new(dir.path(), "web-1", "run", &config(64 * 1024, 1));
        let (writer, copier) = log.start().unwrap();
        // 4 MiB, far more than a pipe holds, as fast as `head` writes.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "yes 0123456789abcdef | head -c 4194304"])
            .stdout(writer)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "the writer blocked");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(status.success());
        // The parent's write end went with the Command: the pipe is closed.
        while !copier.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the copier outlived the pipe"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        copier.join().unwrap();
        let size = |s: &str| {
            let mut p = log.path().as_os_str().to_owned();
            p.push(s);
            std::fs::metadata(PathBuf::from(p)).map(|m| m.len())
        };
        assert!(size("").unwrap() <= 64 * 1024);
        // Full: cut at the last line end that fitted (lines of 17 bytes).
        let rotated = size(".1").unwrap();
        assert!((64 * 1024 - 17..=64 * 1024).contains(&rotated), "{rotated}");
        assert!(size(".2").is_err(), "keep = 1");
    }
}
