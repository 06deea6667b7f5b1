//! The desired state of every service (current and previous release, replica
//! count), persisted so that a restarted `serve` resumes where it was. Writes
//! are atomic: temp file, fsync, rename, fsync of the directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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

    /// Writes the state to `path` atomically: a reader sees the old file or
    /// the new one, never a part.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
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
    }
}
