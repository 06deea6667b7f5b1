//! dropless-load: the open-model load generator behind `dropless load`.
//!
//! It will own the arrival scheduler, the HTTP clients, the outcome classes,
//! the latency histograms, the per-second timeline and the load report type
//! (see `shared/DESIGN.md`, "Load report"). Filled by the `dropless load` issue.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
