//! dropless-orchestrator: the files an orchestrator reads, written and
//! checked for zero-downtime rollouts.
//!
//! - [`stack`] renders a Docker Swarm stack (compose v3.8) whose app service
//!   rolls start-first behind a health check and whose front is
//!   `dropless serve --discover dns:tasks.NAME:PORT`.
//! - [`lint`] reads a user's Kubernetes Deployments ([`lint::kubernetes`]) or
//!   Swarm stack ([`lint::swarm`]) and returns a [`lint::Finding`] for each
//!   setting that lets a rolling update drop requests, with the field path
//!   and the fix.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod lint;
pub mod stack;
