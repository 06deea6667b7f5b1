//! `X-Request-Id`: the client's when it sends a usable one, generated
//! otherwise; the replica gets it with the request and the client with the
//! response, and the access log names the request by it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

/// The header's name, lowercase as both paths write it.
pub const HEADER: &str = "x-request-id";

/// Longest client-sent id kept; a longer one (or one with bytes outside
/// visible ASCII) is replaced by a generated id.
pub const MAX_LEN: usize = 128;

/// The id of a request: `given` when it is usable, a new one otherwise.
pub fn keep_or_generate(given: Option<&[u8]>) -> HeaderValue {
    given
        .filter(|v| usable(v))
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .unwrap_or_else(generate)
}

/// Whether a client-sent id is kept: 1 to [`MAX_LEN`] visible ASCII bytes.
pub fn usable(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(|b| b.is_ascii_graphic())
}

/// A new id: 32 hex digits, a random prefix drawn once per process and a
/// counter, so ids are unique within a run and across runs without a
/// random draw per request.
pub fn generate() -> HeaderValue {
    // The prefix's digits, written once.
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut digits = [0u8; 16];
        hex(rand::random(), &mut digits);
        digits
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(prefix);
    hex(n, &mut id[16..]);
    HeaderValue::from_bytes(&id).expect("hex digits are a header value")
}

/// `n` as 16 lowercase hex digits into `out`.
fn hex(n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[(n >> (60 - 4 * i) & 0xf) as usize];
    }
}

/// Inserts `name: value` into a serialized HTTP/1.1 message right after its
/// start line (the message is left as it is when it has none).
pub fn insert_after_start_line(message: &mut Vec<u8>, name: &str, value: &[u8]) {
    let Some(at) = message.windows(2).position(|w| w == b"\r\n") else {
        return;
    };
    let at = at + 2;
    let line = [name.as_bytes(), b": ", value, b"\r\n"].concat();
    message.splice(at..at, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_id_is_kept_and_others_are_replaced() {
        assert_eq!(keep_or_generate(Some(b"abc-123")), "abc-123");
        let generated = keep_or_generate(None);
        assert_eq!(generated.len(), 32);
        let mut digits = [0u8; 16];
        hex(0x0123_4567_89ab_cdef, &mut digits);
        assert_eq!(&digits, b"0123456789abcdef");
        assert_ne!(generated, keep_or_generate(None));
        for bad in [&b""[..], b"has space", b"\x01", &[b'a'; MAX_LEN + 1]] {
            let id = keep_or_generate(Some(bad));
            assert_eq!(id.len(), 32, "{bad:?} kept");
        }
    }

    #[test]
    fn the_header_goes_after_the_status_line() {
        let mut m = b"HTTP/1.1 503 Service Unavailable\r\na: b\r\n\r\nbody".to_vec();
        insert_after_start_line(&mut m, HEADER, b"id1");
        assert_eq!(
            m,
            b"HTTP/1.1 503 Service Unavailable\r\nx-request-id: id1\r\na: b\r\n\r\nbody"
        );
    }
}
