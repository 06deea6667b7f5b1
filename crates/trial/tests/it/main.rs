//! Integration tests of dropless-trial: what the crate owns, through its
//! public API (the CLI's tests cover the whole trial).

mod audit;
mod fixtures;
mod report;
mod scenario;
