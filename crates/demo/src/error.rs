//! Errors of the demo service.

/// Why the demo service could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or environment value is wrong: the message names it and the
    /// fix. Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// InfluxDB could not be reached or refused a request at start. Exit
    /// code 2: it is configuration the user must fix.
    #[error("influxdb at {url}: {reason}")]
    Influx {
        /// The `--influx-url` given.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The log file could not be opened.
    #[error("log file {path}: {source}")]
    LogFile {
        /// The `--log-file` given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Binding the port failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The graceful shutdown did not finish in time.
    #[error(transparent)]
    Shutdown(#[from] dropless_lifecycle::Error),
    /// v7/v9: calculations acknowledged to clients could not be written
    /// within the grace period. Exit code 1.
    #[error(
        "calculation log: {unwritten} of {acknowledged} acknowledged calculation(s) NOT written within the grace period (lost at exit)"
    )]
    NotWritten {
        /// Calculations not written.
        unwritten: u64,
        /// Calculations acknowledged.
        acknowledged: u64,
    },
    /// Another I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The process exit code for this error: 2 for what the user must fix
    /// in the command line or environment, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Influx { .. } | Error::LogFile { .. } | Error::Bind { .. } => {
                2
            }
            Error::Shutdown(_) | Error::NotWritten { .. } | Error::Io(_) => 1,
        }
    }
}
