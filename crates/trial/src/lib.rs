//! dropless-trial: load plus scripted deploy events, and the verdict.
//!
//! A [`Scenario`] names a service (the built-in demo with a profile, or a
//! command), how the runtime retires replicas ([`scenario::Strategy`]: dropless,
//! or the Kubernetes emulation), the load, the events (`restart`, `deploy`,
//! `scale` at offsets) and the audit of asynchronous work. The trial starts a
//! real `dropless serve`, drives it over its control socket, runs the load in
//! process, audits the calculation log, and writes the reports.
//!
//! [`manifest`] renders Kubernetes manifests with zero-downtime settings.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod demo;
pub mod during;
pub mod html;
pub mod influxd;
pub mod manifest;
pub mod matrix;
pub mod replicas;
pub mod report;
pub mod run;
mod runtime_config;
pub mod scenario;
mod script;
mod serve_child;
mod sink;
mod strategy;
pub mod summary;

pub use scenario::{Scenario, ScenarioError};
