//! dropless-runtime: the reverse proxy and process supervisor behind
//! `dropless serve`. Its folders are its two planes and what drives them:
//!
//! - [`proxy`], the data plane: [`proxy::Proxy`] serves HTTP/1.1 and h2c
//!   (or HTTPS, [`proxy::tls`]) on one port; each request is routed by host
//!   ([`proxy::route`]) to a ready replica ([`proxy::balance`], least
//!   in-flight of two), sent through the forwarding core's one retry rule,
//!   over the replica's connection pools ([`proxy::pool`]), queued while no
//!   replica is ready.
//! - [`supervisor`], the supervision of processes: a
//!   [`supervisor::Supervisor`] runs the replicas of one service (child
//!   processes, [`supervisor::process`], or an unmanaged target address),
//!   probes them ([`supervisor::probe`]), replaces those that die on their
//!   own and stops them in the one safe order ([`supervisor::retire`]); each
//!   [`supervisor::replica::Replica`] moves through
//!   [`event::ReplicaState`]. Their output goes to rotated log files
//!   ([`supervisor::logs`]); [`supervisor::leftovers`] records the replica
//!   processes and retires those a killed `serve` left;
//!   [`supervisor::discover`] takes a service's replicas from DNS instead.
//! - [`rollout`] runs rolling, blue-green, scale, restart and rollback,
//!   through [`event::RolloutPhase`]; [`control`] serves the HTTP+JSON
//!   control API on a Unix socket (or TCP with a token) and has its client.
//! - [`event`] is the shared vocabulary (events and both state machines),
//!   [`desired`] the persisted desired state, [`config`] every default;
//!   [`serve::Runtime`] wires them together, and [`reload`] applies a
//!   config file read again while it runs. [`fds`] keeps file descriptors
//!   for probes and replica starts under a flood of connections;
//!   [`throttle`] logs a repeating error once a second.
//!
//! Dependencies go one way: event ← replica ← probe/retire ← supervisor ←
//! rollout ← control ← serve; the proxy reads supervisors and replicas.
// Not `forbid`: `supervisor::process` needs unsafe blocks (a `pre_exec`
// hook), and `proxy::threads` one (registering its listener with tokio's
// `AsyncFd`, whose safety rests on the fd staying open).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod control;
pub mod desired;
pub mod event;
pub mod fds;
pub mod ops;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod serve;
pub mod signal;
pub mod stash;
pub mod supervisor;
pub mod throttle;
pub mod upgrade;
