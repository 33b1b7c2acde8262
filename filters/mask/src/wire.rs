//! Protobuf wire-format primitives shared by the descriptor decoder and the rewriter.
//!
//! Everything here works on borrowed slices and reports malformed input as `None`/`Err`
//! instead of panicking: the bytes come from an upstream we do not trust to be well formed.

/// Wire types from the protobuf encoding spec.
pub const VARINT: u8 = 0;
pub const I64: u8 = 1;
pub const LEN: u8 = 2;
pub const SGROUP: u8 = 3;
pub const EGROUP: u8 = 4;
pub const I32: u8 = 5;

/// Largest valid field number (2^29 - 1).
pub const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// Reads a base-128 varint at `*pos`, advancing it. `None` on truncation or a varint longer
/// than ten bytes.
#[inline(always)]
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    // Fast path, inlined: single-byte varints are the common case for tags and short lengths.
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    read_varint_slow(buf, pos)
}

#[inline(never)]
fn read_varint_slow(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let byte = *buf.get(*pos + i)?;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && byte > 1 {
                return None;
            }
            *pos += i + 1;
            return Some(value);
        }
    }
    None
}

/// Appends `value` as a minimal varint.
#[inline]
pub fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes `value` as a varint filling `dst` exactly: `dst.len()` must be at least
/// [`varint_len`]`(value)` (longer gives a valid, non-minimal varint of that many bytes).
#[inline]
pub fn put_varint(dst: &mut [u8], mut value: u64) {
    let Some((last, init)) = dst.split_last_mut() else {
        return;
    };
    for b in init {
        *b = (value as u8) | 0x80;
        value >>= 7;
    }
    *last = (value as u8) & 0x7f;
}

/// Number of bytes `write_varint` emits for `value`.
#[inline]
pub fn varint_len(value: u64) -> usize {
    // 1 + floor(log128(value)), with 0 taking one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A field tag: field number and wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub number: u32,
    pub wire_type: u8,
}

/// Reads a tag, rejecting field number 0 and numbers above the protobuf maximum.
#[inline(always)]
pub fn read_tag(buf: &[u8], pos: &mut usize) -> Option<Tag> {
    let raw = read_varint(buf, pos)?;
    let number = raw >> 3;
    if number == 0 || number > MAX_FIELD_NUMBER {
        return None;
    }
    Some(Tag {
        number: number as u32,
        wire_type: (raw & 7) as u8,
    })
}

/// Reads the length prefix of a LEN record and returns the value's byte range.
#[inline(always)]
pub fn read_len_value(buf: &[u8], pos: &mut usize) -> Option<(usize, usize)> {
    let len = read_varint(buf, pos)?;
    let start = *pos;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    if end > buf.len() {
        return None;
    }
    *pos = end;
    Some((start, end))
}

/// Skips the value of a field with `tag` (whose tag bytes were already read), including
/// nested groups up to `depth_left` levels. Returns `None` on malformed input.
#[inline]
pub fn skip_value(buf: &[u8], pos: &mut usize, tag: Tag, depth_left: usize) -> Option<()> {
    match tag.wire_type {
        VARINT => read_varint(buf, pos).map(|_| ()),
        I64 => advance(buf, pos, 8),
        I32 => advance(buf, pos, 4),
        LEN => read_len_value(buf, pos).map(|_| ()),
        _ => skip_group(buf, pos, tag, depth_left),
    }
}

#[inline(never)]
fn skip_group(buf: &[u8], pos: &mut usize, tag: Tag, depth_left: usize) -> Option<()> {
    match tag.wire_type {
        SGROUP => {
            let depth_left = depth_left.checked_sub(1)?;
            loop {
                let inner = read_tag(buf, pos)?;
                if inner.wire_type == EGROUP {
                    return (inner.number == tag.number).then_some(());
                }
                skip_value(buf, pos, inner, depth_left)?;
            }
        }
        // A stray end-group or the reserved wire types 6 and 7.
        _ => None,
    }
}

#[inline]
fn advance(buf: &[u8], pos: &mut usize, n: usize) -> Option<()> {
    let end = pos.checked_add(n)?;
    if end > buf.len() {
        return None;
    }
    *pos = end;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
            let mut put = vec![0u8; varint_len(v)];
            put_varint(&mut put, v);
            assert_eq!(put, out, "{v}");
        }
    }

    #[test]
    fn malformed_varints_are_refused() {
        let mut pos = 0;
        assert_eq!(read_varint(&[0x80, 0x80], &mut pos), None);
        let mut pos = 0;
        assert_eq!(read_varint(&[0xff; 11], &mut pos), None);
        let mut pos = 0;
        let mut ten = [0xffu8; 10];
        ten[9] = 0x02;
        assert_eq!(read_varint(&ten, &mut pos), None);
    }

    #[test]
    fn tags_reject_field_zero() {
        let mut pos = 0;
        assert_eq!(read_tag(&[0x02], &mut pos), None);
        let mut pos = 0;
        assert_eq!(
            read_tag(&[0x0a], &mut pos),
            Some(Tag {
                number: 1,
                wire_type: LEN
            })
        );
    }

    #[test]
    fn skips_nested_groups_with_a_bound() {
        // field 1 start-group, field 2 varint 5, field 1 end-group
        let buf = [0x0b, 0x10, 0x05, 0x0c];
        let mut pos = 1;
        let tag = Tag {
            number: 1,
            wire_type: SGROUP,
        };
        assert_eq!(skip_value(&buf, &mut pos, tag, 4), Some(()));
        assert_eq!(pos, buf.len());
        let mut pos = 1;
        assert_eq!(skip_value(&buf, &mut pos, tag, 0), None);
        // Mismatched end-group number.
        let bad = [0x0b, 0x14];
        let mut pos = 1;
        assert_eq!(skip_value(&bad, &mut pos, tag, 4), None);
    }
}
