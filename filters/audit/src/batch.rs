//! The hand-off between the HTTP filter and the service: events leave a worker in batches, one
//! shared-queue item per batch instead of one per RPC.
//!
//! One queue item is either
//!
//! - a **batch** (versions 1 and 2): `"PGAB"` (4 bytes), the version byte, the event count
//!   (u16 big-endian, 1..=[`MAX_BATCH_EVENTS`]), then per event
//!   - version 1: its length (u32 big-endian, at least 1) and its canonical bytes;
//!   - version 2: its length (u32 big-endian, at least 1), the event's time (u64 big-endian,
//!     Unix milliseconds, the `time` the event carries), one flags byte (bit 0: the RPC ended
//!     OK, so the record's severity is INFO; the other bits 0) and its canonical bytes. The
//!     service chains and ships a version-2 event without parsing its JSON for those two
//!     values;
//!
//!   nothing may follow the last event, and the whole item is at most [`MAX_BATCH_BYTES`]; or
//! - a **bare event** (version 0, what filters queued before batching): one event's canonical
//!   JSON, which starts with `{`. The service still takes it, so a filter of the previous
//!   release keeps working against a new service.
//!
//! [`decode`] is strict: a wrong magic or version, a count of 0 or above the bound, a length
//! that runs past the end, an empty event, unknown flags, trailing bytes or an oversized item
//! refuse the whole item, and nothing of it is applied.
//!
//! The service publishes the newest version it reads in shared data ([`format_key`], value
//! `"2"`) before it publishes the admission flag; a filter writes the older of that and its
//! own [`VERSION`] (a service of the release before writes `"1"`), and one that finds no
//! such key (a service of the release before batching) queues bare events, one per RPC.

use crate::time::UnixMillis;

/// First bytes of a batch.
pub const MAGIC: &[u8; 4] = b"PGAB";
/// The newest batch format this crate writes and reads (it reads 1 too).
pub const VERSION: u8 = 2;
/// Most events in one batch (the filter's `batch_max_events` cannot exceed it).
pub const MAX_BATCH_EVENTS: usize = 1024;
/// Largest queue item the service takes, header included (the filter's `batch_max_bytes`
/// cannot exceed it).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Bytes before the first event.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + 2;
/// Bytes in front of each event, by version (1: the length; 2: length, time, flags).
pub const fn event_overhead(version: u8) -> usize {
    if version >= 2 {
        4 + 8 + 1
    } else {
        4
    }
}

/// Flags bit 0 (version 2): the RPC ended OK.
const FLAG_OK: u8 = 1;

/// What the worker already knows of an event, carried beside it from version 2 on so the
/// service need not parse the JSON for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta {
    /// The event's `time`, Unix milliseconds.
    pub time_ms: UnixMillis,
    /// The RPC ended with gRPC OK (the record's severity is INFO, else WARN).
    pub ok: bool,
}

/// One event of a queue item: its canonical bytes and, from a version-2 batch, its
/// [`EventMeta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    pub event: &'a [u8],
    pub meta: Option<EventMeta>,
}

/// Shared-data key where the service says which batch version it reads (`"1"`).
pub fn format_key(queue: &str) -> String {
    format!("phi_guard.audit.{queue}.format")
}

/// Why a queue item was refused as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Neither a batch nor a bare event (first bytes are not the magic nor `{`).
    Unknown,
    /// A batch of another version.
    Version(u8),
    /// Count of 0 or above [`MAX_BATCH_EVENTS`].
    Count,
    /// The header or an event length runs past the end, or an event is empty.
    Truncated,
    /// A version-2 event's flags byte has bits this version does not define.
    Flags,
    /// Bytes after the last event.
    Trailing,
    /// More than [`MAX_BATCH_BYTES`].
    TooLarge,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Unknown => f.write_str("not an audit batch"),
            Malformed::Version(v) => write!(f, "batch version {v} is not read by this service"),
            Malformed::Count => f.write_str("event count out of bounds"),
            Malformed::Truncated => f.write_str("truncated or empty event"),
            Malformed::Flags => f.write_str("unknown event flags"),
            Malformed::Trailing => f.write_str("bytes after the last event"),
            Malformed::TooLarge => f.write_str("larger than the batch limit"),
        }
    }
}

/// The events of one queue item, in order, or why the item is refused.
pub fn decode(item: &[u8]) -> Result<Vec<Item<'_>>, Malformed> {
    if item.len() > MAX_BATCH_BYTES {
        return Err(Malformed::TooLarge);
    }
    if item.first() == Some(&b'{') {
        return Ok(vec![Item {
            event: item,
            meta: None,
        }]);
    }
    let Some(rest) = item.strip_prefix(MAGIC.as_slice()) else {
        return Err(Malformed::Unknown);
    };
    let (&version, rest) = rest.split_first().ok_or(Malformed::Truncated)?;
    if !(1..=VERSION).contains(&version) {
        return Err(Malformed::Version(version));
    }
    let (count, mut rest) = take_be::<2>(rest).ok_or(Malformed::Truncated)?;
    let count = u16::from_be_bytes(count) as usize;
    if count == 0 || count > MAX_BATCH_EVENTS {
        return Err(Malformed::Count);
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, mut after) = take_be::<4>(rest).ok_or(Malformed::Truncated)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut meta = None;
        if version >= 2 {
            let (time, tail) = take_be::<8>(after).ok_or(Malformed::Truncated)?;
            let (&flags, tail) = tail.split_first().ok_or(Malformed::Truncated)?;
            if flags & !FLAG_OK != 0 {
                return Err(Malformed::Flags);
            }
            meta = Some(EventMeta {
                time_ms: u64::from_be_bytes(time),
                ok: flags & FLAG_OK != 0,
            });
            after = tail;
        }
        if len == 0 || len > after.len() {
            return Err(Malformed::Truncated);
        }
        let (event, after) = after.split_at(len);
        events.push(Item { event, meta });
        rest = after;
    }
    if !rest.is_empty() {
        return Err(Malformed::Trailing);
    }
    Ok(events)
}

fn take_be<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    if bytes.len() < N {
        return None;
    }
    let (head, rest) = bytes.split_at(N);
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Some((out, rest))
}

/// A batch being filled by one filter VM.
#[derive(Debug)]
pub struct BatchWriter {
    bytes: Vec<u8>,
    count: usize,
    max_events: usize,
    max_bytes: usize,
    /// The version of the batch being filled (of the next one when empty).
    version: u8,
}

impl BatchWriter {
    /// `max_events` is clamped to 1..=[`MAX_BATCH_EVENTS`], `max_bytes` to at most
    /// [`MAX_BATCH_BYTES`] (the config parser refuses values outside them).
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            bytes: Vec::new(),
            count: 0,
            max_events: max_events.clamp(1, MAX_BATCH_EVENTS),
            max_bytes: max_bytes.min(MAX_BATCH_BYTES),
            version: VERSION,
        }
    }

    /// The version the batch is written in (1..=[`VERSION`]; others are clamped). Takes
    /// effect with the next batch: call it when the writer [`is_empty`](Self::is_empty).
    pub fn set_version(&mut self, version: u8) {
        if self.count == 0 {
            self.version = version.clamp(1, VERSION);
        }
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the batch holds `max_events` events.
    pub fn is_full(&self) -> bool {
        self.count >= self.max_events
    }

    /// Whether `event_len` more bytes keep the batch within `max_bytes`. An empty batch takes
    /// any event that fits a batch of one within [`MAX_BATCH_BYTES`].
    pub fn fits(&self, event_len: usize) -> bool {
        let used = if self.count == 0 {
            HEADER_LEN
        } else {
            self.bytes.len()
        };
        let after = used + event_overhead(self.version) + event_len;
        if self.count == 0 {
            after <= MAX_BATCH_BYTES
        } else {
            after <= self.max_bytes && self.count < self.max_events
        }
    }

    /// Appends one event (with its `meta` from version 2 on); `false` (and nothing
    /// appended) when it does not [`fit`](Self::fits) or is empty.
    pub fn push(&mut self, event: &[u8], meta: EventMeta) -> bool {
        if event.is_empty() || !self.fits(event.len()) {
            return false;
        }
        let Ok(len) = u32::try_from(event.len()) else {
            return false;
        };
        if self.count == 0 {
            self.bytes.clear();
            self.bytes.extend_from_slice(MAGIC);
            self.bytes.push(self.version);
            self.bytes.extend_from_slice(&[0, 0]);
        }
        self.bytes.extend_from_slice(&len.to_be_bytes());
        if self.version >= 2 {
            self.bytes.extend_from_slice(&meta.time_ms.to_be_bytes());
            self.bytes.push(if meta.ok { FLAG_OK } else { 0 });
        }
        self.bytes.extend_from_slice(event);
        self.count += 1;
        true
    }

    /// The encoded batch and its event count, leaving the writer empty; `None` when empty.
    pub fn take(&mut self) -> Option<(Vec<u8>, usize)> {
        if self.count == 0 {
            return None;
        }
        let count = u16::try_from(self.count).unwrap_or(u16::MAX);
        // The next batch starts at this one's size instead of growing to it again.
        let capacity = self.bytes.len();
        let mut bytes = std::mem::replace(&mut self.bytes, Vec::with_capacity(capacity));
        if let Some(slot) = bytes.get_mut(MAGIC.len() + 1..HEADER_LEN) {
            slot.copy_from_slice(&count.to_be_bytes());
        }
        let n = self.count;
        self.count = 0;
        Some((bytes, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: EventMeta = EventMeta {
        time_ms: 0x0102_0304_0506_0708,
        ok: true,
    };

    fn batch(version: u8, events: &[&[u8]]) -> Vec<u8> {
        let mut w = BatchWriter::new(MAX_BATCH_EVENTS, MAX_BATCH_BYTES);
        w.set_version(version);
        for e in events {
            assert!(w.push(e, META));
        }
        w.take().unwrap().0
    }

    fn events(item: &[u8]) -> Vec<&[u8]> {
        decode(item).unwrap().into_iter().map(|i| i.event).collect()
    }

    #[test]
    fn round_trip_and_pinned_bytes() {
        let v1 = batch(1, &[b"{\"a\":1}", b"{}"]);
        assert_eq!(
            v1,
            b"PGAB\x01\x00\x02\x00\x00\x00\x07{\"a\":1}\x00\x00\x00\x02{}".to_vec()
        );
        assert_eq!(events(&v1), vec![&b"{\"a\":1}"[..], b"{}"]);
        assert!(decode(&v1).unwrap().iter().all(|i| i.meta.is_none()));
        let mut w = BatchWriter::new(MAX_BATCH_EVENTS, MAX_BATCH_BYTES);
        assert_eq!(w.version(), VERSION, "the newest by default");
        assert!(w.push(b"{\"a\":1}", META));
        let warn = EventMeta {
            time_ms: 5,
            ok: false,
        };
        assert!(w.push(b"{}", warn));
        let v2 = w.take().unwrap().0;
        assert_eq!(
            v2,
            [
                &b"PGAB\x02\x00\x02"[..],
                b"\x00\x00\x00\x07\x01\x02\x03\x04\x05\x06\x07\x08\x01{\"a\":1}",
                b"\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x05\x00{}",
            ]
            .concat()
        );
        assert_eq!(
            decode(&v2).unwrap(),
            vec![
                Item {
                    event: b"{\"a\":1}",
                    meta: Some(META)
                },
                Item {
                    event: b"{}",
                    meta: Some(warn)
                }
            ]
        );
        // A bare event (version 0) is one event.
        assert_eq!(events(b"{\"x\":2}"), vec![&b"{\"x\":2}"[..]]);
    }

    #[test]
    fn malformed_items_are_refused_whole() {
        assert_eq!(decode(b""), Err(Malformed::Unknown));
        assert_eq!(decode(b"PGAX\x01"), Err(Malformed::Unknown));
        assert_eq!(decode(b"PGAB"), Err(Malformed::Truncated));
        assert_eq!(decode(b"PGAB\x03\x00\x01"), Err(Malformed::Version(3)));
        assert_eq!(decode(b"PGAB\x00\x00\x01"), Err(Malformed::Version(0)));
        assert_eq!(decode(b"PGAB\x01\x00"), Err(Malformed::Truncated));
        assert_eq!(decode(b"PGAB\x01\x00\x00"), Err(Malformed::Count));
        assert_eq!(decode(b"PGAB\x01\xff\xff"), Err(Malformed::Count));
        for version in [1, 2] {
            let good = batch(version, &[b"{}", b"{}"]);
            // Every truncation of a good batch is refused, none yields fewer events.
            for cut in 0..good.len() {
                assert!(decode(&good[..cut]).is_err(), "v{version} cut at {cut}");
            }
            let mut trailing = good.clone();
            trailing.push(b' ');
            assert_eq!(decode(&trailing), Err(Malformed::Trailing));
            // A count that claims fewer events than follow leaves trailing bytes.
            let mut fewer = good.clone();
            fewer[6] = 1;
            assert_eq!(decode(&fewer), Err(Malformed::Trailing));
        }
        assert_eq!(
            decode(b"PGAB\x01\x00\x01\x00\x00\x00\x00"),
            Err(Malformed::Truncated)
        );
        // Version 2: an unknown flag bit, and an empty event after its time and flags.
        let mut flags = batch(2, &[b"{}"]);
        flags[HEADER_LEN + 4 + 8] = 0x02;
        assert_eq!(decode(&flags), Err(Malformed::Flags));
        assert_eq!(
            decode(b"PGAB\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"),
            Err(Malformed::Truncated)
        );
        let big = vec![b'{'; MAX_BATCH_BYTES + 1];
        assert_eq!(decode(&big), Err(Malformed::TooLarge));
    }

    #[test]
    fn the_writer_keeps_its_bounds() {
        for version in [1, 2] {
            let overhead = event_overhead(version);
            let mut w = BatchWriter::new(2, 40 + overhead);
            w.set_version(version);
            assert!(w.is_empty());
            assert!(w.push(b"{\"n\":1}", META));
            w.set_version(3 - version);
            assert_eq!(w.version(), version, "not within a batch");
            assert!(w.push(b"{\"n\":2}", META));
            assert!(w.is_full());
            assert!(!w.push(b"{\"n\":3}", META), "count bound");
            let (bytes, n) = w.take().unwrap();
            assert_eq!(n, 2);
            assert_eq!(decode(&bytes).unwrap().len(), 2);
            assert!(w.take().is_none());
            // The byte bound: 7 + overhead + 20 fits 40 + overhead, a second one would not.
            let twenty = [b'x'; 20];
            assert!(w.push(&twenty, META));
            assert!(!w.fits(20));
            assert!(!w.push(&twenty, META));
            w.take();
            // An event larger than max_bytes still goes alone, within MAX_BATCH_BYTES.
            let large = vec![b'y'; 100];
            assert!(w.push(&large, META));
            assert!(!w.push(b"{}", META));
            let (bytes, n) = w.take().unwrap();
            assert_eq!((n, bytes.len()), (1, HEADER_LEN + overhead + 100));
            let huge = vec![b'z'; MAX_BATCH_BYTES];
            assert!(!w.push(&huge, META), "never above MAX_BATCH_BYTES");
            assert!(!w.push(b"", META), "no empty events");
            assert!(w.is_empty());
        }
    }
}
