//! The calculation log as a JSON-lines file, for machines without InfluxDB.

use std::{io::Write, path::Path, sync::Arc};

use tokio::sync::Mutex;

use crate::{Error, Record};

/// An append-only JSON-lines file, synced to disk at each write.
#[derive(Debug, Clone)]
pub(crate) struct LogFile {
    file: Arc<Mutex<std::fs::File>>,
}

impl LogFile {
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::LogFile {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends the records and syncs the file.
    pub(crate) async fn write(&self, records: &[Record]) -> Result<(), String> {
        let mut text = Vec::with_capacity(records.len() * 64);
        for record in records {
            serde_json::to_writer(&mut text, record).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let file = Arc::clone(&self.file);
        let guard = file.lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let mut file = guard;
            file.write_all(&text)?;
            file.sync_data()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}
