//! Integration tests of dropless-runtime: real processes, real sockets,
//! 127.0.0.1 port 0 only, every load bounded in rate and time.

mod affinity;
mod control;
mod discover;
mod disk;
mod fast;
mod fixtures;
mod h2_desync;
mod h2_floods;
mod h2_wire;
mod hyper_path;
mod limits;
mod once;
mod ops;
mod proxy;
mod reload;
mod rollout;
mod smuggling;
mod supervisor;
mod tls;
