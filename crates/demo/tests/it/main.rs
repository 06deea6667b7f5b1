//! Integration tests of the demo service: the real binary, real sockets on
//! 127.0.0.1, a real `influxd` where the calculation log is checked.

mod fixtures;
mod game;
mod influx;
mod input;
mod profiles;
mod routes;
