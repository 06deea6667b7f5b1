//! The desired state of every service (current and previous release, replica
//! count), persisted so that a restarted `serve` resumes where it was. Writes
//! are atomic: temp file, fsync, rename, fsync of the directory.
//!
//! The state directory is private, as ssh treats its keys: created 0700, its
//! files 0600 (a deploy's `--env` values are secrets), and `serve` refuses a
//! directory or state file that another user owns or could write, since the
//! commands in the state file are what `serve` runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::Version;

/// A version with the generation number it was deployed as.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Release {
    /// Increases with every deploy or restart of the service.
    pub generation: u64,
    /// What runs.
    pub version: Version,
}

/// What one service should be running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Desired {
    /// The release serving now.
    pub current: Release,
    /// The release `rollback` returns to.
    pub previous: Option<Release>,
    /// Replica count.
    pub replicas: usize,
}

/// The persisted state of all services, by service name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Desired state by service name.
    pub services: BTreeMap<String, Desired>,
}

/// Mode of the state directory and of its `logs` directory: the owner only.
pub const DIR_MODE: u32 = 0o700;

/// Mode of the files in the state directory: the owner only.
pub const FILE_MODE: u32 = 0o600;

/// The state file of a running `serve`: the one writer of it, holding the
/// state last written.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    saved: Mutex<State>,
}

/// The state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or renaming failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid state JSON.
    #[error("state file {path} is corrupt ({source}): move it away to start from the config")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// Another user owns, or could write, the state directory or file.
    #[error("{path} {problem}: {fix}")]
    NotPrivate {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
}

/// Creates `dir` and its missing parents with mode 0700 when it does not
/// exist, then checks that it is private ([`check_private`]).
pub fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    check_private(dir)
}

/// Checks that `path` (a directory or file) is owned by the user running
/// this process and that neither its group nor others may write it; a
/// missing path is fine.
pub fn check_private(path: &Path) -> Result<(), StateError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let user = nix::unistd::geteuid().as_raw();
    let shown = path.display();
    if meta.uid() != user {
        return Err(StateError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!(
                "is owned by uid {}, not by uid {user} running serve",
                meta.uid()
            ),
            fix: format!("run `chown {user} {shown}` or use another --state-dir"),
        });
    }
    if meta.mode() & 0o022 != 0 {
        let mode = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
        return Err(StateError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!(
                "is writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ),
            fix: format!("run `chmod {mode:o} {shown}`"),
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600: a temp file next to
/// it, renamed over it. With `durable`, the file and the directory are
/// synced too, so that the write survives a power loss. On any failure the
/// temp file is removed and `path` is left as it was.
pub fn write_private(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl State {
    /// Loads the state at `path`; `None` when there is no file yet.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the state to `path` atomically, mode 0600: a reader sees the
    /// old file or the new one, never a part, and a failed write leaves the
    /// old file and no temp file.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        write_private(path, &json, true).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl StateFile {
    /// Writes `state` to `path` and keeps it as the state last saved.
    pub fn create(path: PathBuf, state: State) -> Result<Self, StateError> {
        state.save(&path)?;
        Ok(Self {
            path,
            saved: Mutex::new(state),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Saves the state with `service`'s desired state replaced by `desired`.
    /// On failure the file still holds the state last saved.
    pub fn commit(&self, service: &str, desired: Desired) -> Result<(), StateError> {
        let mut saved = self.saved.lock().expect("state file lock");
        let mut next = saved.clone();
        next.services.insert(service.to_string(), desired);
        next.save(&self.path)?;
        *saved = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).unwrap(), None);
        let mut state = State::default();
        state.services.insert(
            "web".into(),
            Desired {
                current: Release {
                    generation: 3,
                    version: Version::command(["app", "--v2"]),
                },
                previous: None,
                replicas: 4,
            },
        );
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(state));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, FILE_MODE);
    }

    #[test]
    fn a_failed_save_names_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // The rename over a directory fails after the temp file was written.
        std::fs::create_dir(&path).unwrap();
        let err = State::default().save(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }
}
