//! Integration tests of dropless-lifecycle: real sockets on 127.0.0.1:0,
//! each asserting what a client sees on the wire.

mod fixtures;
mod health;
mod http1;
mod http2;
mod listen;
mod stash;
mod tasks;
mod websocket;
