//! Profiles v1..v9: which graceful parts are on (the v1..v9 versions of the Elixir graceful-shutdown talk).

use std::{fmt, str::FromStr};

/// A behaviour profile of the demo service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Profile {
    /// No health endpoints; SIGTERM ignored (lives until SIGKILL).
    V1,
    /// Health endpoints; SIGTERM ignored.
    V2,
    /// Graceful on SIGTERM: stop accepting, finish in-flight,
    /// `Connection: close`.
    V3,
    /// Exits at once on SIGTERM: in-flight requests are cut.
    V4,
    /// Readiness 503 and a pre-stop delay still serving, then graceful.
    V5,
    /// As v5, plus a calculation log in untracked tasks: lost at shutdown.
    V6,
    /// As v6, but the tasks are awaited: nothing lost.
    V7,
    /// As v5, plus a calculation log in batches, not flushed at shutdown.
    V8,
    /// As v8, but the last batch is flushed: nothing lost.
    V9,
}

/// What the service does on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSigterm {
    /// Nothing: it keeps serving until SIGKILL.
    Ignore,
    /// Exits at once, cutting in-flight requests.
    Exit,
    /// The lifecycle's graceful shutdown; with or without the pre-stop delay.
    Graceful {
        /// Whether the pre-stop delay applies.
        pre_stop: bool,
    },
}

/// How calculations are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalcLogMode {
    /// Not logged.
    Off,
    /// One task per calculation that waits, then writes. `tracked`: the
    /// tasks are awaited at shutdown.
    Tasks {
        /// Whether shutdown awaits the tasks.
        tracked: bool,
    },
    /// Batches (size or interval). `flush_on_shutdown`: the rest is flushed
    /// at shutdown.
    Batches {
        /// Whether the last partial batch is flushed at shutdown.
        flush_on_shutdown: bool,
    },
}

impl Profile {
    /// Every profile, in order.
    pub const ALL: [Profile; 9] = [
        Profile::V1,
        Profile::V2,
        Profile::V3,
        Profile::V4,
        Profile::V5,
        Profile::V6,
        Profile::V7,
        Profile::V8,
        Profile::V9,
    ];

    /// Whether `/healthz` and `/livez` are served (v1: 404).
    pub fn health_endpoints(self) -> bool {
        self != Profile::V1
    }

    /// What SIGTERM does.
    pub fn on_sigterm(self) -> OnSigterm {
        match self {
            Profile::V1 | Profile::V2 => OnSigterm::Ignore,
            Profile::V3 => OnSigterm::Graceful { pre_stop: false },
            Profile::V4 => OnSigterm::Exit,
            Profile::V5 | Profile::V6 | Profile::V7 | Profile::V8 | Profile::V9 => {
                OnSigterm::Graceful { pre_stop: true }
            }
        }
    }

    /// Whether the profile means to write every calculation before it
    /// exits (v7: its tasks are awaited, v9: its last batch is flushed).
    pub fn keeps_calculations(self) -> bool {
        matches!(
            self.calc_log(),
            CalcLogMode::Tasks { tracked: true }
                | CalcLogMode::Batches {
                    flush_on_shutdown: true
                }
        )
    }

    /// Whether calculations are logged at all (v6..v9), so that a trial
    /// has something to audit.
    pub fn logs_calculations(self) -> bool {
        self.calc_log() != CalcLogMode::Off
    }

    /// How calculations are logged.
    pub fn calc_log(self) -> CalcLogMode {
        match self {
            Profile::V6 => CalcLogMode::Tasks { tracked: false },
            Profile::V7 => CalcLogMode::Tasks { tracked: true },
            Profile::V8 => CalcLogMode::Batches {
                flush_on_shutdown: false,
            },
            Profile::V9 => CalcLogMode::Batches {
                flush_on_shutdown: true,
            },
            _ => CalcLogMode::Off,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", *self as u8 + 1)
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|profile| profile.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown profile {s:?}: expected one of v1..v9"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for profile in Profile::ALL {
            assert_eq!(profile.to_string().parse::<Profile>(), Ok(profile));
        }
        assert!("v10".parse::<Profile>().is_err());
    }

    #[test]
    fn only_v7_and_v9_keep_every_calculation() {
        let kept: Vec<Profile> = Profile::ALL
            .into_iter()
            .filter(|p| p.keeps_calculations())
            .collect();
        assert_eq!(kept, vec![Profile::V7, Profile::V9]);
    }
}
