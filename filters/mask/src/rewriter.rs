//! One pass over protobuf wire format, guided by a plan.
//!
//! Bytes of fields the plan does not name (unknown fields included) are copied unchanged, in
//! runs: the rewriter only stops at planned fields. Planned sub-messages are rewritten in
//! place in the output and their length prefix patched afterwards, so nothing is decoded into
//! structs or re-encoded. A planned field whose wire type cannot match its declared type is an
//! error (fail closed): a value hidden under a different wire type must not slip through as an
//! "unknown" field.

use std::collections::BTreeMap;

use crate::error::MaskError;
use crate::freetext::Detectors;
use crate::plan::{Class, DateShape, LeafKind, MessagePlan, Node, Num, Plans};
use crate::policy::{clamp_year, Action, ActionKind, Context, RolePolicy};
use crate::token::TokenKey;
use crate::wire::{self, read_len_value, read_tag, skip_value, varint_len, write_varint, Tag};

/// Deepest nesting followed, as in protobuf's own default recursion limit.
pub const MAX_DEPTH: usize = 100;

/// Fields touched, per class and action, and unknown content dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    entries: Vec<(Class, ActionKind, u64)>,
    /// Fields the descriptor set does not declare, dropped.
    pub unknown_fields: u64,
    /// `google.protobuf.Any` values whose type the descriptor set does not have, dropped.
    pub unknown_any: u64,
}

impl Counts {
    #[inline]
    pub fn add(&mut self, class: Class, kind: ActionKind) {
        // A handful of classes per plan: a linear scan beats a map here.
        match self
            .entries
            .iter_mut()
            .find(|(c, k, _)| *c == class && *k == kind)
        {
            Some(e) => e.2 += 1,
            None => self.entries.push((class, kind, 1)),
        }
    }

    pub fn merge(&mut self, other: &Counts) {
        for &(c, k, n) in &other.entries {
            match self
                .entries
                .iter_mut()
                .find(|(c2, k2, _)| *c2 == c && *k2 == k)
            {
                Some(e) => e.2 += n,
                None => self.entries.push((c, k, n)),
            }
        }
        self.unknown_fields += other.unknown_fields;
        self.unknown_any += other.unknown_any;
    }

    pub fn get(&self, class: Class, kind: ActionKind) -> u64 {
        self.entries
            .iter()
            .find(|(c, k, _)| *c == class && *k == kind)
            .map_or(0, |e| e.2)
    }

    /// Total per action, for the `fields_<action>` metrics.
    pub fn per_action(&self, kind: ActionKind) -> u64 {
        self.entries
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|e| e.2)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.unknown_fields == 0 && self.unknown_any == 0
    }

    /// `"CLASS/action"` → count, the shape of `MaskSummary.fields`.
    pub fn by_name(&self, names: &BTreeMap<Class, String>) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for &(c, k, n) in &self.entries {
            let class = names
                .get(&c)
                .map_or_else(|| format!("CLASS_{c}"), String::clone);
            *out.entry(format!("{class}/{}", k.name())).or_insert(0) += n;
        }
        out
    }
}

/// Everything one role's rewrite needs; cheap to build per stream.
#[derive(Debug, Clone, Copy)]
pub struct Rewriter<'a> {
    pub plans: &'a Plans,
    pub role: &'a RolePolicy,
    pub key: Option<&'a TokenKey>,
    /// The detectors, or `None` when this role reveals every class they find.
    pub detectors: Option<&'a Detectors>,
    /// The FREE_TEXT class, whose `reveal` means "scan for identifiers".
    pub free_text: Option<Class>,
    pub names: &'a BTreeMap<Class, String>,
    /// Drop fields the descriptor set does not declare (and count them).
    pub drop_unknown: bool,
    /// The role reveals every class: `Any` values of unknown types are kept.
    pub reveal_all: bool,
    /// The current year (proleptic Gregorian, UTC), for the `year` action's age bound.
    pub now_year: i64,
}

impl Rewriter<'_> {
    /// Rewrites the message `input` of plan `root` into `out`, counting touched fields.
    pub fn rewrite(
        &self,
        root: usize,
        input: &[u8],
        out: &mut Vec<u8>,
        counts: &mut Counts,
    ) -> Result<(), MaskError> {
        if root >= self.plans.messages.len() {
            return Err(MaskError::Malformed);
        }
        self.message(root, input, out, counts, 0)
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            key: self.key,
            now_year: self.now_year,
        }
    }

    fn message(
        &self,
        idx: usize,
        buf: &[u8],
        out: &mut Vec<u8>,
        counts: &mut Counts,
        depth: usize,
    ) -> Result<(), MaskError> {
        let mut plan: &MessagePlan = &self.plans.messages[idx];
        // Conditional catalog entries decide on the whole message before any of it is written,
        // so their field may sit anywhere on the wire.
        if !plan.rules.is_empty() {
            for &(cond, variant) in &plan.rules {
                if self.plans.conditions[cond].holds(buf)? {
                    plan = &self.plans.messages[variant];
                    break;
                }
            }
        }
        let too_deep = |depth: usize| {
            if depth >= MAX_DEPTH {
                MaskError::TooDeep
            } else {
                MaskError::Malformed
            }
        };
        let mut pos = 0;
        // Start of the run of untouched bytes not yet copied.
        let mut pending = 0;
        while pos < buf.len() {
            let record = pos;
            let tag = read_tag(buf, &mut pos).ok_or(MaskError::Malformed)?;
            let node = plan.field(tag.number).map(|f| f.node);
            match node {
                Some(Node::Keep { wire, packable })
                    if tag.wire_type == wire || (packable && tag.wire_type == wire::LEN) =>
                {
                    skip_value(buf, &mut pos, tag, MAX_DEPTH.saturating_sub(depth))
                        .ok_or_else(|| too_deep(depth))?;
                }
                Some(Node::Message {
                    plan: child,
                    touch: false,
                    ..
                }) if tag.wire_type == wire::LEN => {
                    let tag_end = pos;
                    let (s, e) = read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                    if !self.drop_unknown {
                        continue;
                    }
                    if depth + 1 >= MAX_DEPTH {
                        return Err(MaskError::TooDeep);
                    }
                    if self.clean(child, &buf[s..e], depth + 1)? {
                        continue;
                    }
                    out.extend_from_slice(&buf[pending..tag_end]);
                    let guess = s - tag_end;
                    let at = begin_len(out, guess);
                    self.message(child, &buf[s..e], out, counts, depth + 1)?;
                    end_len(out, at, guess);
                    pending = pos;
                }
                None | Some(Node::Keep { .. }) | Some(Node::Message { touch: false, .. }) => {
                    // Unknown to the descriptor set (or a wire type its declaration cannot
                    // have, which parsers treat as unknown).
                    skip_value(buf, &mut pos, tag, MAX_DEPTH.saturating_sub(depth))
                        .ok_or_else(|| too_deep(depth))?;
                    if self.drop_unknown {
                        out.extend_from_slice(&buf[pending..record]);
                        pending = pos;
                        counts.unknown_fields += 1;
                    }
                }
                Some(node) => {
                    out.extend_from_slice(&buf[pending..record]);
                    let tag_bytes = &buf[record..pos];
                    self.field(node, tag, tag_bytes, buf, &mut pos, out, counts, depth)?;
                    pending = pos;
                }
            }
        }
        out.extend_from_slice(&buf[pending..]);
        Ok(())
    }

    /// Whether a message of an untouched plan holds only declared fields, at every depth.
    fn clean(&self, idx: usize, buf: &[u8], depth: usize) -> Result<bool, MaskError> {
        let plan = &self.plans.messages[idx];
        let mut pos = 0;
        while pos < buf.len() {
            let tag = read_tag(buf, &mut pos).ok_or(MaskError::Malformed)?;
            match plan.field(tag.number).map(|f| f.node) {
                Some(Node::Keep { wire, packable })
                    if tag.wire_type == wire || (packable && tag.wire_type == wire::LEN) =>
                {
                    skip_value(buf, &mut pos, tag, MAX_DEPTH.saturating_sub(depth))
                        .ok_or(MaskError::Malformed)?;
                }
                Some(Node::Message { plan: child, .. }) if tag.wire_type == wire::LEN => {
                    if depth + 1 >= MAX_DEPTH {
                        return Err(MaskError::TooDeep);
                    }
                    let (s, e) = read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                    if !self.clean(child, &buf[s..e], depth + 1)? {
                        return Ok(false);
                    }
                }
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn field(
        &self,
        node: Node,
        tag: Tag,
        tag_bytes: &[u8],
        buf: &[u8],
        pos: &mut usize,
        out: &mut Vec<u8>,
        counts: &mut Counts,
        depth: usize,
    ) -> Result<(), MaskError> {
        let mismatch = MaskError::WireType { field: tag.number };
        match node {
            Node::Keep { .. } => unreachable!("kept fields are copied by the caller"),
            Node::Message {
                plan: child, class, ..
            } => {
                if tag.wire_type != wire::LEN {
                    return Err(mismatch);
                }
                if depth + 1 >= MAX_DEPTH {
                    return Err(MaskError::TooDeep);
                }
                let len_start = *pos;
                let (s, e) = read_len_value(buf, pos).ok_or(MaskError::Malformed)?;
                out.extend_from_slice(tag_bytes);
                let guess = s - len_start;
                let at = begin_len(out, guess);
                match (class, self.plans.messages[child].date) {
                    (Some(c), Some(shape))
                        if matches!(self.role.action(c), Action::Year { .. }) =>
                    {
                        let Action::Year { max_age } = self.role.action(c) else {
                            unreachable!()
                        };
                        counts.add(c, ActionKind::Year);
                        self.year_message(shape, &buf[s..e], *max_age, out)?;
                    }
                    _ => self.message(child, &buf[s..e], out, counts, depth + 1)?,
                }
                end_len(out, at, guess);
            }
            Node::Any { class } => {
                if tag.wire_type != wire::LEN {
                    return Err(mismatch);
                }
                if depth + 2 >= MAX_DEPTH {
                    return Err(MaskError::TooDeep);
                }
                let len_start = *pos;
                let (s, e) = read_len_value(buf, pos).ok_or(MaskError::Malformed)?;
                let any = &buf[s..e];
                let content = type_url(any)?
                    .map(|u| {
                        u.iter()
                            .rposition(|&b| b == b'/')
                            .map_or(u, |i| &u[i + 1..])
                    })
                    .and_then(|name| std::str::from_utf8(name).ok())
                    .and_then(|name| self.plans.any(class, name));
                let Some(content) = content else {
                    if self.reveal_all {
                        out.extend_from_slice(tag_bytes);
                        out.extend_from_slice(&buf[len_start..e]);
                    } else {
                        counts.unknown_any += 1;
                    }
                    return Ok(());
                };
                out.extend_from_slice(tag_bytes);
                let guess = s - len_start;
                let at = begin_len(out, guess);
                self.any(content, any, out, counts, depth + 1)?;
                end_len(out, at, guess);
            }
            Node::Leaf { class, kind } => {
                let action = self.role.action(class);
                match kind {
                    LeafKind::Text | LeafKind::Bytes => {
                        if tag.wire_type != wire::LEN {
                            return Err(mismatch);
                        }
                        let record_end_len = *pos;
                        let (s, e) = read_len_value(buf, pos).ok_or(MaskError::Malformed)?;
                        let value = &buf[s..e];
                        match action {
                            Action::Reveal if Some(class) == self.free_text => {
                                counts.add(class, ActionKind::Reveal);
                                out.extend_from_slice(tag_bytes);
                                match self.detectors {
                                    Some(d) => {
                                        let at = begin_len(out, s - record_end_len);
                                        self.scan(d, value, out, counts)?;
                                        end_len(out, at, s - record_end_len);
                                    }
                                    None => out.extend_from_slice(&buf[record_end_len..e]),
                                }
                            }
                            Action::Reveal => {
                                counts.add(class, ActionKind::Reveal);
                                out.extend_from_slice(tag_bytes);
                                out.extend_from_slice(&buf[record_end_len..e]);
                            }
                            Action::Remove => counts.add(class, ActionKind::Remove),
                            other => {
                                let start = out.len();
                                out.extend_from_slice(tag_bytes);
                                let guess = s - record_end_len;
                                let at = begin_len(out, guess);
                                if other.apply(self.class_name(class), value, &self.ctx(), out) {
                                    end_len(out, at, guess);
                                    counts.add(class, other.kind());
                                } else {
                                    // The action cannot express this value: the field goes.
                                    out.truncate(start);
                                    counts.add(class, ActionKind::Remove);
                                }
                            }
                        }
                    }
                    LeafKind::Scalar(expected, num) => {
                        // Packed repeated scalars arrive as one LEN record.
                        if tag.wire_type != expected && tag.wire_type != wire::LEN {
                            return Err(mismatch);
                        }
                        let value_start = *pos;
                        skip_value(buf, pos, tag, 0).ok_or(MaskError::Malformed)?;
                        let value = &buf[value_start..*pos];
                        match action {
                            Action::Reveal => {
                                counts.add(class, ActionKind::Reveal);
                                out.extend_from_slice(tag_bytes);
                                out.extend_from_slice(value);
                            }
                            Action::Age { max } if num != Num::NotANumber => {
                                counts.add(class, ActionKind::Age);
                                out.extend_from_slice(tag_bytes);
                                age_scalar(value, tag.wire_type, expected, num, *max, out)?;
                            }
                            // Numbers have no characters to mask: anything else drops them.
                            _ => counts.add(class, ActionKind::Remove),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The records of an `Any` whose content plan is `content`: the type URL is copied, the
    /// value rewritten as that type, anything else treated as unknown.
    fn any(
        &self,
        content: usize,
        buf: &[u8],
        out: &mut Vec<u8>,
        counts: &mut Counts,
        depth: usize,
    ) -> Result<(), MaskError> {
        let mut pos = 0;
        while pos < buf.len() {
            let record = pos;
            let tag = read_tag(buf, &mut pos).ok_or(MaskError::Malformed)?;
            match (tag.number, tag.wire_type) {
                (1, wire::LEN) => {
                    read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                    out.extend_from_slice(&buf[record..pos]);
                }
                (2, wire::LEN) => {
                    let len_start = pos;
                    let (s, e) = read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                    out.extend_from_slice(&buf[record..len_start]);
                    let guess = s - len_start;
                    let at = begin_len(out, guess);
                    self.message(content, &buf[s..e], out, counts, depth + 1)?;
                    end_len(out, at, guess);
                }
                (1 | 2, _) => return Err(MaskError::WireType { field: tag.number }),
                _ => {
                    skip_value(buf, &mut pos, tag, MAX_DEPTH.saturating_sub(depth))
                        .ok_or(MaskError::Malformed)?;
                    if self.drop_unknown {
                        counts.unknown_fields += 1;
                    } else {
                        out.extend_from_slice(&buf[record..pos]);
                    }
                }
            }
        }
        Ok(())
    }

    /// A date message under `year`: rebuilt from scratch with the instant at January 1 of its
    /// (local) year, UTC, and (FHIR) precision `YEAR`; every other field of it is dropped.
    fn year_message(
        &self,
        shape: DateShape,
        buf: &[u8],
        max_age: Option<u32>,
        out: &mut Vec<u8>,
    ) -> Result<(), MaskError> {
        let (value_field, tz_field) = match shape {
            DateShape::Fhir {
                value_us, timezone, ..
            } => (value_us, Some(timezone)),
            DateShape::Timestamp => (1, None),
        };
        let mut value: i64 = 0;
        let mut tz: &[u8] = b"";
        let mut pos = 0;
        while pos < buf.len() {
            let tag = read_tag(buf, &mut pos).ok_or(MaskError::Malformed)?;
            if tag.number == value_field && tag.wire_type == wire::VARINT {
                value = wire::read_varint(buf, &mut pos).ok_or(MaskError::Malformed)? as i64;
            } else if Some(tag.number) == tz_field && tag.wire_type == wire::LEN {
                let (s, e) = read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                tz = &buf[s..e];
            } else {
                skip_value(buf, &mut pos, tag, MAX_DEPTH).ok_or(MaskError::Malformed)?;
            }
        }
        let secs = match shape {
            DateShape::Fhir { .. } => value.div_euclid(1_000_000),
            DateShape::Timestamp => value,
        };
        let local = secs.saturating_add(utc_offset_seconds(tz));
        let year = clamp_year(year_of_unix(local), max_age, self.now_year);
        let jan1 = days_from_civil(year, 1, 1) * 86_400;
        match shape {
            DateShape::Fhir {
                value_us,
                timezone,
                precision,
                year: year_value,
            } => {
                write_varint(out, u64::from(value_us) << 3);
                write_varint(out, jan1.saturating_mul(1_000_000) as u64);
                write_varint(out, (u64::from(timezone) << 3) | u64::from(wire::LEN));
                write_varint(out, 1);
                out.push(b'Z');
                write_varint(out, u64::from(precision) << 3);
                write_varint(out, year_value);
            }
            DateShape::Timestamp => {
                write_varint(out, 1 << 3);
                write_varint(out, jan1 as u64);
            }
        }
        Ok(())
    }

    /// Free text the role may read: identifiers found in it are transformed in place by the
    /// role's action for their class (`remove`, or an action that cannot express the match,
    /// deletes them).
    fn scan(
        &self,
        detectors: &Detectors,
        text: &[u8],
        out: &mut Vec<u8>,
        counts: &mut Counts,
    ) -> Result<(), MaskError> {
        let mut last = 0;
        let ctx = self.ctx();
        detectors
            .each(text, |found| {
                let action = self.role.action(found.class);
                out.extend_from_slice(&text[last..found.start]);
                let kept = action.apply(
                    self.class_name(found.class),
                    &text[found.start..found.end],
                    &ctx,
                    out,
                );
                counts.add(
                    found.class,
                    if kept || *action == Action::Reveal {
                        action.kind()
                    } else {
                        ActionKind::Remove
                    },
                );
                last = found.end;
            })
            .map_err(|_| MaskError::Scan)?;
        out.extend_from_slice(&text[last..]);
        Ok(())
    }

    #[inline]
    fn class_name(&self, class: Class) -> &str {
        self.names.get(&class).map_or("", String::as_str)
    }
}

/// The last type URL of an encoded `Any` (a parser keeps the last), if any.
fn type_url(any: &[u8]) -> Result<Option<&[u8]>, MaskError> {
    let mut pos = 0;
    let mut url = None;
    while pos < any.len() {
        let tag = read_tag(any, &mut pos).ok_or(MaskError::Malformed)?;
        if tag.number == 1 && tag.wire_type == wire::LEN {
            let (s, e) = read_len_value(any, &mut pos).ok_or(MaskError::Malformed)?;
            url = Some(&any[s..e]);
        } else {
            skip_value(any, &mut pos, tag, MAX_DEPTH).ok_or(MaskError::Malformed)?;
        }
    }
    Ok(url.filter(|u| !u.is_empty()))
}

/// `age` on a number leaf (one value, or a packed list): values above `max` become `max + 1`.
fn age_scalar(
    value: &[u8],
    wire_type: u8,
    expected: u8,
    num: Num,
    max: u32,
    out: &mut Vec<u8>,
) -> Result<(), MaskError> {
    let cap = f64::from(max);
    let one = |v: &[u8], p: &mut usize, out: &mut Vec<u8>| -> Result<(), MaskError> {
        match expected {
            wire::VARINT => {
                let x = wire::read_varint(v, p).ok_or(MaskError::Malformed)?;
                let n = match num {
                    Num::Signed => x as i64 as f64,
                    Num::ZigZag => ((x >> 1) as i64 ^ -((x & 1) as i64)) as f64,
                    _ => x as f64,
                };
                let y = if n > cap {
                    let m = u64::from(max) + 1;
                    if num == Num::ZigZag {
                        m << 1
                    } else {
                        m
                    }
                } else {
                    x
                };
                write_varint(out, y);
            }
            wire::I32 => {
                let b: [u8; 4] = v
                    .get(*p..*p + 4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(MaskError::Malformed)?;
                *p += 4;
                let n = f32::from_le_bytes(b);
                if f64::from(n) > cap {
                    out.extend_from_slice(&((max + 1) as f32).to_le_bytes());
                } else {
                    out.extend_from_slice(&b);
                }
            }
            _ => {
                let b: [u8; 8] = v
                    .get(*p..*p + 8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(MaskError::Malformed)?;
                *p += 8;
                let n = f64::from_le_bytes(b);
                if n > cap {
                    out.extend_from_slice(&f64::from(max + 1).to_le_bytes());
                } else {
                    out.extend_from_slice(&b);
                }
            }
        }
        Ok(())
    };
    if wire_type == wire::LEN {
        let mut p = 0;
        let (s, e) = read_len_value(value, &mut p).ok_or(MaskError::Malformed)?;
        let guess = s;
        let at = begin_len(out, guess);
        let body = &value[..e];
        let mut q = s;
        while q < e {
            one(body, &mut q, out)?;
        }
        end_len(out, at, guess);
    } else {
        let mut p = 0;
        one(value, &mut p, out)?;
    }
    Ok(())
}

/// The offset east of UTC, in seconds, of a timezone written `Z`, `UTC`, `+hh:mm`, `-hh:mm`,
/// `+hhmm` or `+hh`; 0 for anything else (a named zone such as `America/New_York`: the year
/// is then computed in UTC, which can differ from the local year within hours of New Year).
pub fn utc_offset_seconds(tz: &[u8]) -> i64 {
    let (sign, rest) = match tz.first() {
        Some(b'+') => (1, &tz[1..]),
        Some(b'-') => (-1, &tz[1..]),
        _ => return 0,
    };
    let digits: Vec<u8> = rest.iter().copied().filter(|b| *b != b':').collect();
    if !(digits.len() == 2 || digits.len() == 4) || !digits.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    let n = |b: &[u8]| i64::from(b[0] - b'0') * 10 + i64::from(b[1] - b'0');
    let h = n(&digits[..2]);
    let m = if digits.len() == 4 {
        n(&digits[2..])
    } else {
        0
    };
    if h > 14 || m > 59 {
        return 0;
    }
    sign * (h * 3600 + m * 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian year of a Unix time in seconds (H. Hinnant's `civil_from_days`).
pub fn year_of_unix(secs: i64) -> i64 {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400;
    if m <= 2 {
        y + 1
    } else {
        y
    }
}

/// Reserves `guess` bytes for a length prefix and returns where it starts.
#[inline]
fn begin_len(out: &mut Vec<u8>, guess: usize) -> usize {
    let at = out.len();
    out.resize(at + guess, 0);
    at
}

/// Writes the minimal varint length of everything after the `guess`-byte placeholder at `at`,
/// shifting the body when the varint needs a different size than reserved (rare: the guess is
/// the original prefix's size).
#[inline]
fn end_len(out: &mut Vec<u8>, at: usize, guess: usize) {
    let len = out.len() - at - guess;
    let need = varint_len(len as u64);
    if need > guess {
        let body = at + guess;
        out.splice(body..body, std::iter::repeat_n(0, need - guess));
    } else if need < guess {
        out.drain(at + need..at + guess);
    }
    let mut tmp = Vec::with_capacity(10);
    write_varint(&mut tmp, len as u64);
    out[at..at + need].copy_from_slice(&tmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(year_of_unix(0), 1970);
        assert_eq!(year_of_unix(-1), 1969);
        for y in [1600i64, 1899, 1931, 2000, 2024, 2026, 2100] {
            let d = days_from_civil(y, 1, 1) * 86_400;
            assert_eq!(year_of_unix(d), y);
            assert_eq!(year_of_unix(d - 1), y - 1);
            assert_eq!(year_of_unix(days_from_civil(y, 12, 31) * 86_400), y);
        }
        assert_eq!(utc_offset_seconds(b"+05:30"), 19_800);
        assert_eq!(utc_offset_seconds(b"-0800"), -28_800);
        assert_eq!(utc_offset_seconds(b"Z"), 0);
        assert_eq!(utc_offset_seconds(b"America/New_York"), 0);
        assert_eq!(utc_offset_seconds(b"+99:00"), 0);
    }

    #[test]
    fn length_patch_grows_and_shrinks() {
        for (guess, body) in [(1usize, 300usize), (2, 5), (1, 5), (3, 200), (0, 0), (0, 1)] {
            let mut out = vec![0xaa];
            let at = begin_len(&mut out, guess);
            out.extend(std::iter::repeat_n(7u8, body));
            end_len(&mut out, at, guess);
            let mut pos = 1;
            assert_eq!(wire::read_varint(&out, &mut pos), Some(body as u64));
            assert_eq!(out.len() - pos, body);
            assert_eq!(out[0], 0xaa);
        }
    }
}
