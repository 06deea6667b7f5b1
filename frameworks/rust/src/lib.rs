//! What the three apps share: the port and the delay.

use std::time::Duration;

/// `PORT`, 8080 without it.
pub fn port() -> u16 {
    std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080)
}

/// `HELLO_REST_REQUEST_DELAY` seconds, 1.0 without it.
pub fn delay() -> Duration {
    let seconds = std::env::var("HELLO_REST_REQUEST_DELAY")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(seconds)
}
