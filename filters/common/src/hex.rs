//! Lower-case hex of SHA-256 digests and HMAC tags, and the 32-byte digests operators and
//! Envoy write in hex (a pinned `sha256`, `connection.sha256_peer_certificate_digest`, an audit
//! chain link), through the `hex` crate.

/// A SHA-256 digest or HMAC-SHA256 tag.
pub type Digest = [u8; 32];

/// Lower-case hex of `bytes` (two characters per byte). Through `hex::encode_to_slice`:
/// `hex::encode`'s character iterator measured several times slower (the audit service hexes
/// two chain links per record it ships).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    encode_into(bytes, &mut out);
    // Hex digits are ASCII: this never falls back.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the lower-case hex of `bytes` to `out`, without an intermediate `String`.
pub fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    // The slice is exactly twice as long as `bytes`, the only error `hex` reports.
    let _ = hex::encode_to_slice(bytes, &mut out[start..]);
}

/// Exactly 64 hex digits, either case, as 32 bytes; `None` for anything else.
pub fn digest(s: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_in_either_case() {
        let d: Digest = std::array::from_fn(|i| (i * 37) as u8);
        let text = encode(&d);
        assert_eq!(text.len(), 64);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(digest(&text), Some(d));
        assert_eq!(digest(&text.to_uppercase()), Some(d));
        let mut out = b"tok_".to_vec();
        encode_into(&d[..2], &mut out);
        assert_eq!(out, b"tok_0025");
    }

    #[test]
    fn anything_but_64_hex_digits_is_refused() {
        for bad in [
            "",
            "00",
            &"0".repeat(63),
            &"0".repeat(65),
            &"g".repeat(64),
            &"é".repeat(32),
        ] {
            assert_eq!(digest(bad), None, "{bad}");
        }
    }
}
