//! Parsers of flag values shared by the subcommands. Each error says what
//! was expected with an example; clap (or the caller) names the flag.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// What a duration looks like, for error messages.
pub const DURATION_EXAMPLE: &str = "expected a duration like 30s, 500ms or 2m";

/// A duration such as `30s`, `500ms` or `2m`.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|_| DURATION_EXAMPLE.to_owned())
}

/// `IP:PORT` or `NAME:PORT`; a name is resolved once, here, and its first
/// IPv4 address is used (else its first address).
pub fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    const EXPECTED: &str = "expected HOST:PORT like 127.0.0.1:8080 or localhost:8080";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(EXPECTED.to_owned());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("the port must be a number from 0 to 65535; {EXPECTED}"))?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{host}' ({e}); {EXPECTED}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("'{host}' resolves to no address; {EXPECTED}"))
}

/// A count of at least 1, such as `4`.
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1, e.g. 4".to_owned()),
    }
}
