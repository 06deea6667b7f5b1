//! The header blocks of the responses the proxy sends (HPACK, RFC 7541),
//! encoded without a dynamic table: `:status` from the static table when
//! it is there, and every field a literal that is not indexed, its name and
//! value as they are (no Huffman coding). nginx encodes its HTTP/2
//! responses the same way, without a dynamic table.
//!
//! A block costs some bytes more on the wire than one that indexes what
//! repeats (`server`, `date`), and fewer instructions: a proxied head of
//! five fields, framed, took 1 700 where the `h2` crate's encoder took
//! 6 200 (table lookups, Huffman coding; docs/benchmarks.md, session 14). Since nothing is ever inserted, the
//! client's table stays empty: the first block sets its size to 0, which
//! also answers any smaller SETTINGS_HEADER_TABLE_SIZE the client asks for
//! (a decoder that was told a smaller size expects a size update first,
//! RFC 7541 §4.2), and no later setting can make it too large.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, StatusCode};

/// A dynamic table size update to 0 (RFC 7541 §6.3).
pub(super) const TABLE_SIZE_ZERO: u8 = 0x20;
/// A literal field with a new name, not indexed (§6.2.2).
const NOT_INDEXED: u8 = 0x00;
/// The same, never to be indexed by an intermediary (§6.2.3): for values
/// marked sensitive.
const NEVER_INDEXED: u8 = 0x10;
/// A literal with the static table's `:status` as its name (index 8).
const STATUS_NAME: u8 = 0x08;

/// The static table's index of `status`, when it has one (RFC 7541
/// appendix A).
fn status_index(status: StatusCode) -> Option<u8> {
    Some(match status.as_u16() {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => return None,
    })
}

/// Appends the header block of `status` (none for trailers) and `fields`
/// to `dst`, after a table size update to 0 when `set_table_size`.
pub(super) fn encode(
    status: Option<StatusCode>,
    fields: &HeaderMap,
    set_table_size: bool,
    dst: &mut BytesMut,
) {
    if set_table_size {
        dst.put_u8(TABLE_SIZE_ZERO);
    }
    if let Some(status) = status {
        match status_index(status) {
            Some(index) => dst.put_u8(0x80 | index),
            None => {
                dst.put_u8(STATUS_NAME);
                string(status.as_str().as_bytes(), dst);
            }
        }
    }
    for (name, value) in fields {
        let kind = if value.is_sensitive() {
            NEVER_INDEXED
        } else {
            NOT_INDEXED
        };
        dst.put_u8(kind);
        string(name.as_str().as_bytes(), dst);
        string(value.as_bytes(), dst);
    }
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
fn string(s: &[u8], dst: &mut BytesMut) {
    integer(s.len(), 7, dst);
    dst.put_slice(s);
}

/// An integer with a `prefix`-bit prefix (RFC 7541 §5.1), its first byte's
/// other bits 0.
fn integer(n: usize, prefix: u32, dst: &mut BytesMut) {
    let max = (1 << prefix) - 1;
    if n < max {
        dst.put_u8(n as u8);
        return;
    }
    dst.put_u8(max as u8);
    let mut rest = n - max;
    while rest >= 0x80 {
        dst.put_u8((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_the_prefix_then_seven_bits_a_byte() {
        // RFC 7541 C.1.1 and C.1.2, with a 5-bit prefix there; 7 here.
        for (n, bytes) in [
            (10, &[10][..]),
            (126, &[126]),
            (127, &[127, 0]),
            (128, &[127, 1]),
            (1337, &[127, 0xba, 0x09]),
        ] {
            let mut dst = BytesMut::new();
            integer(n, 7, &mut dst);
            assert_eq!(&dst[..], bytes, "{n}");
        }
    }

    #[test]
    fn a_head_is_the_status_index_then_literals() {
        let mut fields = HeaderMap::new();
        fields.insert("server", "x".parse().unwrap());
        let mut secret = http::HeaderValue::from_static("k");
        secret.set_sensitive(true);
        fields.insert("set-cookie", secret);
        let mut dst = BytesMut::new();
        encode(Some(StatusCode::OK), &fields, true, &mut dst);
        let mut want = vec![0x20, 0x88, 0x00, 6];
        want.extend_from_slice(b"server");
        want.extend_from_slice(&[1, b'x', 0x10, 10]);
        want.extend_from_slice(b"set-cookie");
        want.extend_from_slice(&[1, b'k']);
        assert_eq!(&dst[..], &want[..]);

        let mut dst = BytesMut::new();
        encode(
            Some(StatusCode::BAD_GATEWAY),
            &HeaderMap::new(),
            false,
            &mut dst,
        );
        assert_eq!(&dst[..], &[0x08, 3, b'5', b'0', b'2']);
    }
}
