//! Keyed pseudonyms: the same value under the same key and class always gives the same
//! token, so researchers can join records without seeing the identifier; without the key a
//! token cannot be reversed or recomputed from a guessed value.

/// Prefix of every token, so a reader can tell a pseudonym from a real identifier.
pub const TOKEN_PREFIX: &str = "tok_";
/// Length of a token: the prefix plus 32 lower-case hex digits (the first 16 bytes of the MAC).
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 32;
/// Shortest key accepted: a short key would make tokens guessable by brute force.
pub const MIN_KEY_BYTES: usize = phi_guard_common::config::MIN_MASK_TOKEN_KEY_BYTES;

use hmac::{KeyInit, Mac};

/// The HMAC-SHA256 key, read once from the VM environment at configure time, kept as the MAC
/// state after the key (its inner and outer pads hashed once, not per token).
#[derive(Clone)]
pub struct TokenKey(hmac::Hmac<sha2::Sha256>);

impl std::fmt::Debug for TokenKey {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// `None` when the key is shorter than [`MIN_KEY_BYTES`].
    pub fn new(key: &[u8]) -> Option<Self> {
        if key.len() < MIN_KEY_BYTES {
            return None;
        }
        hmac::Hmac::new_from_slice(key).ok().map(TokenKey)
    }

    /// Appends `tok_` + hex(HMAC-SHA256(key, class || 0x00 || value)[..16]) to `out`. The class
    /// name separates domains: the same digits as an MRN and as an insurance id do not link.
    pub fn write_token(&self, class: &str, value: &[u8], out: &mut Vec<u8>) {
        let mut mac = self.0.clone();
        mac.update(class.as_bytes());
        mac.update(&[0u8]);
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        out.extend_from_slice(TOKEN_PREFIX.as_bytes());
        phi_guard_common::hex::encode_into(&digest[..16], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &TokenKey, class: &str, value: &str) -> String {
        let mut out = Vec::new();
        key.write_token(class, value.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tokens_are_stable_keyed_and_class_separated() {
        let k1 = TokenKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let k2 = TokenKey::new(b"another-key-of-enough-length-0123").unwrap();
        let t = token(&k1, "MRN", "MRN-1");
        assert_eq!(t, token(&k1, "MRN", "MRN-1"));
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(t.starts_with("tok_"));
        assert_ne!(t, token(&k2, "MRN", "MRN-1"));
        assert_ne!(t, token(&k1, "INSURANCE_ID", "MRN-1"));
        assert_ne!(t, token(&k1, "MRN", "MRN-2"));
        assert!(!format!("{k1:?}").contains("0123"));
    }

    #[test]
    fn tokens_are_hmac_sha256_of_class_nul_value() {
        let key = b"0123456789abcdef0123456789abcdef";
        let mac = hmac_sha256::HMAC::mac(b"MRN\0MRN-1", key);
        let hex: String = mac[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            token(&TokenKey::new(key).unwrap(), "MRN", "MRN-1"),
            format!("tok_{hex}")
        );
    }

    #[test]
    fn short_keys_are_refused() {
        // The README promises at least 32 bytes; 16 used to pass.
        assert_eq!(MIN_KEY_BYTES, 32);
        assert!(TokenKey::new(b"short").is_none());
        assert!(TokenKey::new(b"0123456789abcdef").is_none());
        assert!(TokenKey::new(&[7u8; 31]).is_none());
        assert!(TokenKey::new(&[7u8; 32]).is_some());
    }
}
