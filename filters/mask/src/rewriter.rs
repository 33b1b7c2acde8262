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
use crate::plan::{Class, LeafKind, MessagePlan, Node, Plans};
use crate::policy::{Action, ActionKind, RolePolicy};
use crate::token::TokenKey;
use crate::wire::{self, read_len_value, read_tag, skip_value, varint_len, write_varint, Tag};

/// Deepest nesting followed, as in protobuf's own default recursion limit.
pub const MAX_DEPTH: usize = 100;

/// Fields touched, per class and action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    entries: Vec<(Class, ActionKind, u64)>,
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
        self.entries.is_empty()
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
        let plan = self.plans.messages.get(root).ok_or(MaskError::Malformed)?;
        self.message(plan, input, out, counts, 0)
    }

    fn message(
        &self,
        plan: &MessagePlan,
        buf: &[u8],
        out: &mut Vec<u8>,
        counts: &mut Counts,
        depth: usize,
    ) -> Result<(), MaskError> {
        let mut pos = 0;
        // Start of the run of untouched bytes not yet copied.
        let mut pending = 0;
        while pos < buf.len() {
            let record = pos;
            let tag = read_tag(buf, &mut pos).ok_or(MaskError::Malformed)?;
            match plan.field(tag.number) {
                None => {
                    skip_value(buf, &mut pos, tag, MAX_DEPTH.saturating_sub(depth)).ok_or(
                        if depth >= MAX_DEPTH {
                            MaskError::TooDeep
                        } else {
                            MaskError::Malformed
                        },
                    )?;
                }
                Some(field) => {
                    out.extend_from_slice(&buf[pending..record]);
                    let tag_bytes = &buf[record..pos];
                    self.field(
                        field.node, tag, tag_bytes, buf, &mut pos, out, counts, depth,
                    )?;
                    pending = pos;
                }
            }
        }
        out.extend_from_slice(&buf[pending..]);
        Ok(())
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
            Node::Message(child) => {
                if tag.wire_type != wire::LEN {
                    return Err(mismatch);
                }
                if depth + 1 >= MAX_DEPTH {
                    return Err(MaskError::TooDeep);
                }
                let len_start = *pos;
                let (s, e) = read_len_value(buf, pos).ok_or(MaskError::Malformed)?;
                let plan = self.plans.messages.get(child).ok_or(MaskError::Malformed)?;
                out.extend_from_slice(tag_bytes);
                let guess = s - len_start;
                let at = begin_len(out, guess);
                self.message(plan, &buf[s..e], out, counts, depth + 1)?;
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
                        counts.add(class, action.kind());
                        match action {
                            Action::Reveal if Some(class) == self.free_text => {
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
                                out.extend_from_slice(tag_bytes);
                                out.extend_from_slice(&buf[record_end_len..e]);
                            }
                            Action::Remove => {}
                            other => {
                                out.extend_from_slice(tag_bytes);
                                let guess = s - record_end_len;
                                let at = begin_len(out, guess);
                                other.transform(self.class_name(class), value, self.key, out);
                                end_len(out, at, guess);
                            }
                        }
                    }
                    LeafKind::Scalar(expected) => {
                        // Packed repeated scalars arrive as one LEN record.
                        if tag.wire_type != expected && tag.wire_type != wire::LEN {
                            return Err(mismatch);
                        }
                        let value_start = *pos;
                        skip_value(buf, pos, tag, 0).ok_or(MaskError::Malformed)?;
                        // Numbers have no characters to mask: anything but reveal drops them.
                        if *action == Action::Reveal {
                            counts.add(class, ActionKind::Reveal);
                            out.extend_from_slice(tag_bytes);
                            out.extend_from_slice(&buf[value_start..*pos]);
                        } else {
                            counts.add(class, ActionKind::Remove);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Free text the role may read: identifiers found in it are transformed in place by the
    /// role's action for their class (`remove` deletes them).
    fn scan(
        &self,
        detectors: &Detectors,
        text: &[u8],
        out: &mut Vec<u8>,
        counts: &mut Counts,
    ) -> Result<(), MaskError> {
        let mut last = 0;
        detectors
            .each(text, |found| {
                let action = self.role.action(found.class);
                counts.add(found.class, action.kind());
                out.extend_from_slice(&text[last..found.start]);
                action.transform(
                    self.class_name(found.class),
                    &text[found.start..found.end],
                    self.key,
                    out,
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
