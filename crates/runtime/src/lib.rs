//! dropless-runtime: the reverse proxy and process supervisor behind
//! `dropless serve`.
//!
//! It will own the data plane, the supervisor of child processes, the rollout
//! strategies, the probes, the control API and the persisted desired state
//! (see `shared/DESIGN.md`, "Runtime model"). Filled by the `dropless serve`
//! issue.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
