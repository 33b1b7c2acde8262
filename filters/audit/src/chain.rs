//! The tamper-evident chain.
//!
//! Link `n` is `HMAC-SHA256(key, prev_n || be64(seq_n) || event_n)` where `prev_0` is 32 zero
//! bytes (the genesis), `prev_n` is link `n-1`, `seq_n = n` and `event_n` is the event's
//! canonical JSON bytes exactly as shipped in the log record body. The sequence number is
//! inside the MAC so renumbering is as detectable as editing. Without the key nobody can
//! produce a valid link, so an edited, inserted, deleted or moved record breaks verification
//! at that record.

use hmac::{KeyInit, Mac};

pub type Link = [u8; 32];

/// `prev` of the first record of a chain.
pub const GENESIS: Link = [0u8; 32];

/// Keys shorter than this are refused: HMAC-SHA256 wants at least the hash size.
pub const MIN_KEY_LEN: usize = phi_guard_common::config::MIN_AUDIT_CHAIN_KEY_BYTES;

/// The HMAC key, kept as RustCrypto's MAC state after the key (its inner and outer pads
/// hashed once, not per link: two SHA-256 blocks fewer per event), and out of `Debug` so it
/// can never end up in a log line.
#[derive(Clone)]
pub struct ChainKey {
    mac: hmac::Hmac<sha2::Sha256>,
    len: usize,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKey({} bytes)", self.len)
    }
}

impl ChainKey {
    /// `None` when shorter than [`MIN_KEY_LEN`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < MIN_KEY_LEN {
            return None;
        }
        let mac = hmac::Hmac::new_from_slice(bytes).ok()?;
        Some(ChainKey {
            mac,
            len: bytes.len(),
        })
    }

    /// A key file's contents: one trailing newline (as `echo` and editors add) is not part
    /// of the key, so the file and the environment variable can hold the same text.
    pub fn from_file_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        Self::new(bytes)
    }

    /// Link `seq`: `HMAC-SHA256(key, prev || be64(seq) || event)` (RFC 2104).
    pub fn link(&self, prev: &Link, seq: u64, event: &[u8]) -> Link {
        self.mac_of(prev, seq, event).finalize().into_bytes().into()
    }

    /// Constant-time comparison of a claimed link.
    pub fn verify(&self, prev: &Link, seq: u64, event: &[u8], claimed: &Link) -> bool {
        self.mac_of(prev, seq, event).verify_slice(claimed).is_ok()
    }

    fn mac_of(&self, prev: &Link, seq: u64, event: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        let mut mac = self.mac.clone();
        mac.update(prev);
        mac.update(&seq.to_be_bytes());
        mac.update(event);
        mac
    }
}

/// One chained event, as it travels in a log record and lands in the collector's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedRecord {
    pub seq: u64,
    pub prev: Link,
    pub chain: Link,
    /// The event's canonical JSON, UTF-8.
    pub event: String,
    /// The event's time (ms since the epoch), for the log record's `timeUnixNano`.
    pub time_ms: u64,
}

/// Appends events to a chain. The state is just the next sequence number and the last link,
/// so it continues across batches and retries.
#[derive(Debug, Clone)]
pub struct Chainer {
    key: ChainKey,
    next_seq: u64,
    prev: Link,
}

impl Chainer {
    pub fn new(key: ChainKey) -> Self {
        Self {
            key,
            next_seq: 0,
            prev: GENESIS,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn append(&mut self, event: String, time_ms: u64) -> ChainedRecord {
        let seq = self.next_seq;
        let prev = self.prev;
        let chain = self.key.link(&prev, seq, event.as_bytes());
        self.prev = chain;
        self.next_seq += 1;
        ChainedRecord {
            seq,
            prev,
            chain,
            event,
            time_ms,
        }
    }
}

/// Lower-case hex of a link (or any bytes).
pub fn to_hex(bytes: &[u8]) -> String {
    phi_guard_common::hex::encode(bytes)
}

/// Lower- or upper-case hex of exactly 32 bytes.
pub fn link_from_hex(s: &str) -> Option<Link> {
    phi_guard_common::hex::digest(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ChainKey {
        ChainKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn refuses_short_keys() {
        assert!(ChainKey::new(b"short").is_none());
        assert!(ChainKey::from_file_bytes(b"0123456789abcdef0123456789abcde\n").is_none());
        assert!(ChainKey::from_file_bytes(b"0123456789abcdef0123456789abcdef\n").is_some());
        assert_eq!(format!("{:?}", key()), "ChainKey(32 bytes)");
    }

    #[test]
    fn matches_an_independent_hmac_vector() {
        // RFC 4231 test case 2 checks the HMAC itself: key "Jefe" is too short for a chain
        // key, so the MAC is driven directly.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The chain's own layout, pinned so a refactor cannot silently change it, against a
        // second implementation (hmac-sha256): HMAC(key, 32 zero bytes || be64(0) || "{}").
        let mut input = vec![0u8; 32];
        input.extend_from_slice(&0u64.to_be_bytes());
        input.extend_from_slice(b"{}");
        let expected = hmac_sha256::HMAC::mac(&input, b"0123456789abcdef0123456789abcdef");
        assert_eq!(key().link(&GENESIS, 0, b"{}"), expected);
    }

    #[test]
    fn chains_continue_and_verify() {
        let mut c = Chainer::new(key());
        let a = c.append("{\"a\":1}".into(), 1);
        let b = c.append("{\"b\":2}".into(), 2);
        assert_eq!((a.seq, b.seq), (0, 1));
        assert_eq!(a.prev, GENESIS);
        assert_eq!(b.prev, a.chain);
        assert!(key().verify(&b.prev, 1, b.event.as_bytes(), &b.chain));
        assert!(!key().verify(&b.prev, 2, b.event.as_bytes(), &b.chain));
        assert!(!key().verify(&b.prev, 1, b"{\"b\":3}", &b.chain));
    }

    #[test]
    fn hex_round_trips() {
        let l = key().link(&GENESIS, 7, b"x");
        assert_eq!(link_from_hex(&to_hex(&l)), Some(l));
        assert_eq!(link_from_hex(&to_hex(&l).to_uppercase()), Some(l));
        assert_eq!(link_from_hex("00"), None);
        assert_eq!(link_from_hex(&"g".repeat(64)), None);
        assert_eq!(link_from_hex(&"é".repeat(32)), None);
    }
}
