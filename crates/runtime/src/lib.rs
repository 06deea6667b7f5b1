//! dropless-runtime: the reverse proxy and process supervisor behind
//! `dropless serve`.
//!
//! - [`supervisor::Supervisor`] runs the replicas of one service (child
//!   processes in their own process group, or an unmanaged target address),
//!   probes them ([`probe`]) and replaces those that die on their own.
//!   Each [`replica::Replica`] moves through [`replica::ReplicaState`]; every
//!   change is an [`event::Event`].
//! - [`proxy::Proxy`] is the data plane: HTTP/1.1 and h2c on one port, least
//!   in-flight routing ([`balance`]), safe retries, queueing.
//! - [`retire`] stops a replica in the one safe order; [`rollout`] runs
//!   rolling, blue-green, scale, restart and rollback.
//! - [`control`] serves the HTTP+JSON control API on a Unix socket and has its
//!   client; [`state`] persists the desired state; [`leftovers`] records
//!   the replica processes and retires those a killed `serve` left;
//!   [`logs`] copies each
//!   replica's output to its rotated log file; [`config`] holds every
//!   default. [`serve::Runtime`] wires them together.
//! - [`fds`] keeps file descriptors for probes and replica starts under a
//!   flood of connections; [`throttle`] logs a repeating error once a second.
// Not `forbid`: `process` needs one unsafe block (a `pre_exec` hook).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod balance;
pub mod config;
pub mod control;
pub mod event;
pub mod fds;
pub mod leftovers;
pub mod logs;
pub mod pool;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod replica;
pub mod retire;
pub mod rollout;
pub mod route;
pub mod serve;
pub mod signal;
pub mod state;
pub mod supervisor;
pub mod throttle;
pub mod tls;
