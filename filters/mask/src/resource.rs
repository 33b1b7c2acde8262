//! The resource an RPC asks for, read from its request message for the audit event.
//!
//! A field of a method's request message holds the resource id: annotated
//! `[(phi.v1.resource_id) = true]` in the proto, or named by a catalog entry
//! `{"field": "phi.fhir.v1.GetPatientRequest.id", "resource_id": true}` (which wins over an
//! annotation on another field of the same message). It must be a singular string or integer
//! field directly in the request message; at most one per message. It must not itself be
//! classed (a `phi.v1.sensitivity` annotation, or a catalog field entry, conditional entry or
//! type entry on the request message with any class but none): the audit event is PHI-free,
//! so the resource id has to be an opaque id, never a patient identifier such as an MRN.
//! Such a configuration is refused, naming the field and the annotation or catalog entry.
//!
//! The shell copies the request body chunks through a [`RequestReader`] (the request itself
//! is never held or changed), which cuts out the first gRPC message, reads the field and
//! sanitizes the value with [`phi_guard_common::sanitize::client_id`] (it is chosen by the
//! client: an SSN-shaped id is masked, anything outside the identifier alphabet refused). The
//! result goes to filter state `phi_guard.resource`, where the audit filter reads it. A first
//! message that is malformed, compressed in an encoding other than gzip or larger than
//! `max_message_bytes` yields no id; the call goes on (this records, it does not enforce).

use std::collections::HashMap;

use phi_guard_common::sanitize::client_id;
use phi_guard_common::ConfigError;

use crate::catalog::Catalog;
use crate::descriptor::{DescriptorSet, FieldDesc};
use crate::error::MaskError;
use crate::framing::{gunzip, Encoding, Framer};
use crate::plan::Class;
use crate::wire::{self, read_len_value, read_tag, read_varint, skip_value};

/// How the id field's value is encoded and printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// `string`: UTF-8 text (LEN).
    String,
    /// `int32` (printed as a 32-bit number), `int64`: two's complement varint.
    Int32,
    Int64,
    /// `uint32`, `uint64`: varint.
    UInt32,
    UInt64,
    /// `sint32`, `sint64`: zigzag varint.
    SInt32,
    SInt64,
    /// `fixed32`, `sfixed32`: 4 little-endian bytes.
    Fixed32,
    SFixed32,
    /// `fixed64`, `sfixed64`: 8 little-endian bytes.
    Fixed64,
    SFixed64,
}

impl IdKind {
    /// The kind of a field that can hold a resource id: singular string or integer. `None`
    /// for anything else (bytes, bool, enum, float, message, repeated fields).
    pub fn of(field: &FieldDesc) -> Option<Self> {
        if field.repeated {
            return None;
        }
        Some(match field.ty {
            9 => IdKind::String,
            5 => IdKind::Int32,
            3 => IdKind::Int64,
            13 => IdKind::UInt32,
            4 => IdKind::UInt64,
            17 => IdKind::SInt32,
            18 => IdKind::SInt64,
            7 => IdKind::Fixed32,
            15 => IdKind::SFixed32,
            6 => IdKind::Fixed64,
            16 => IdKind::SFixed64,
            _ => return None,
        })
    }

    fn wire_type(self) -> u8 {
        match self {
            IdKind::String => wire::LEN,
            IdKind::Fixed32 | IdKind::SFixed32 => wire::I32,
            IdKind::Fixed64 | IdKind::SFixed64 => wire::I64,
            _ => wire::VARINT,
        }
    }
}

/// The resource id field of one request message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdField {
    pub number: u32,
    pub kind: IdKind,
    /// `message.field`, for tools and logs.
    pub full_name: String,
}

/// Method (`package.Service/Method`) → the resource id field of its request message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceIds {
    pub methods: HashMap<String, IdField>,
}

impl ResourceIds {
    /// Collects the `phi.v1.resource_id` annotations and the catalog's `resource_id` entries
    /// (already checked by [`Catalog::parse`]) for every method's request message. An
    /// annotation on a field that cannot hold an id, or two annotated fields in one message,
    /// is an error under `descriptor_set`; annotations on messages no method takes are
    /// ignored.
    /// `class_name` prints a class for error messages.
    pub fn build(
        set: &DescriptorSet,
        catalog: &Catalog,
        class_name: &dyn Fn(Class) -> String,
    ) -> Result<Self, ConfigError> {
        let mut by_message: HashMap<&str, IdField> = HashMap::new();
        for m in &set.methods {
            let request = m.input_type.as_str();
            if by_message.contains_key(request) {
                continue;
            }
            let Some(desc) = set.messages.get(request) else {
                continue;
            };
            let field = match catalog.resource_ids.get(request) {
                Some((name, _)) => desc.fields.iter().find(|f| &f.name == name),
                None => {
                    let mut annotated = desc.fields.iter().filter(|f| f.resource_id);
                    let first = annotated.next();
                    if let (Some(a), Some(b)) = (first, annotated.next()) {
                        return Err(ConfigError::new(
                            "descriptor_set",
                            format!(
                                "{request}: fields {} and {} are both annotated phi.v1.resource_id (one per message)",
                                a.name, b.name
                            ),
                        ));
                    }
                    first
                }
            };
            let Some(field) = field else { continue };
            let entry = catalog.resource_ids.get(request).map(|(_, origin)| origin);
            if let Some((class, by)) = classed(request, field, catalog) {
                let full = format!("{request}.{}", field.name);
                let (at, named) = match entry {
                    Some(origin) => (
                        format!("{origin}.field"),
                        format!("{origin} names {full} as the resource id"),
                    ),
                    None => (
                        "descriptor_set".to_string(),
                        format!("{full} is annotated phi.v1.resource_id"),
                    ),
                };
                return Err(ConfigError::new(
                    at,
                    format!(
                        "{named} but it is classed {} by {by}: the resource id goes into the PHI-free audit event, so it must be an opaque resource id, not a patient identifier",
                        class_name(class)
                    ),
                ));
            }
            let kind = IdKind::of(field).ok_or_else(|| {
                ConfigError::new(
                    "descriptor_set",
                    format!(
                        "{request}.{}: phi.v1.resource_id needs a singular string or integer field",
                        field.name
                    ),
                )
            })?;
            by_message.insert(
                request,
                IdField {
                    number: field.number,
                    kind,
                    full_name: format!("{request}.{}", field.name),
                },
            );
        }
        let methods = set
            .methods
            .iter()
            .filter_map(|m| {
                let f = by_message.get(m.input_type.as_str())?;
                Some((m.full_name.clone(), f.clone()))
            })
            .collect();
        Ok(ResourceIds { methods })
    }

    pub fn for_method(&self, method: &str) -> Option<&IdField> {
        self.methods.get(method)
    }
}

/// The sensitivity class `field` of request message `request` carries, and what gives it
/// (the annotation or a catalog entry), if any class but none (0) can apply to it: an
/// unconditional field entry (which overrides the annotation, so an entry with class none
/// declassifies it), the annotation, a conditional field entry, or a type entry on the
/// request message itself (a conditional one spares its discriminator field).
fn classed(request: &str, field: &FieldDesc, catalog: &Catalog) -> Option<(Class, String)> {
    let full = format!("{request}.{}", field.name);
    let origin = |key: &str| {
        catalog
            .origins
            .get(key)
            .cloned()
            .unwrap_or_else(|| "the catalog".to_string())
    };
    match catalog.field_class(request, &field.name) {
        Some(c) if c != 0 => return Some((c, origin(&full))),
        Some(_) => {}
        None => {
            if let Some(c) = field.sensitivity.filter(|&c| c != 0) {
                return Some((c, "its phi.v1.sensitivity annotation".to_string()));
            }
        }
    }
    for i in catalog.rules_on(request) {
        let rule = &catalog.rules[i];
        let applies = match &rule.field {
            Some(f) => f == &field.name,
            None => rule.discriminator != field.name,
        };
        if applies && rule.class != 0 {
            return Some((rule.class, rule.origin.clone()));
        }
    }
    match catalog.type_class(request) {
        Some(c) if c != 0 => Some((c, origin(request))),
        _ => None,
    }
}

/// The raw value of `field` in the encoded request message `message`, as text: the string, or
/// the integer in decimal. The last record of the field wins (protobuf's rule for singular
/// fields); a record with another wire type is an unknown field to parsers and is skipped.
/// `Ok(None)` when the field is absent; `Err` when the message is malformed (or the string is
/// not UTF-8).
pub fn extract(field: &IdField, message: &[u8]) -> Result<Option<String>, MaskError> {
    let want = field.kind.wire_type();
    let mut pos = 0;
    let mut found = None;
    while pos < message.len() {
        let tag = read_tag(message, &mut pos).ok_or(MaskError::Malformed)?;
        if tag.number != field.number || tag.wire_type != want {
            skip_value(message, &mut pos, tag, crate::rewriter::MAX_DEPTH)
                .ok_or(MaskError::Malformed)?;
            continue;
        }
        found = Some(match field.kind {
            IdKind::String => {
                let (s, e) = read_len_value(message, &mut pos).ok_or(MaskError::Malformed)?;
                std::str::from_utf8(&message[s..e])
                    .map_err(|_| MaskError::Malformed)?
                    .to_string()
            }
            IdKind::Fixed32 | IdKind::SFixed32 => {
                let b = fixed::<4>(message, &mut pos)?;
                let v = u32::from_le_bytes(b);
                if field.kind == IdKind::Fixed32 {
                    v.to_string()
                } else {
                    (v as i32).to_string()
                }
            }
            IdKind::Fixed64 | IdKind::SFixed64 => {
                let b = fixed::<8>(message, &mut pos)?;
                let v = u64::from_le_bytes(b);
                if field.kind == IdKind::Fixed64 {
                    v.to_string()
                } else {
                    (v as i64).to_string()
                }
            }
            kind => {
                let v = read_varint(message, &mut pos).ok_or(MaskError::Malformed)?;
                let zigzag = (v >> 1) as i64 ^ -((v & 1) as i64);
                match kind {
                    IdKind::Int32 => (v as i32).to_string(),
                    IdKind::Int64 => (v as i64).to_string(),
                    IdKind::UInt32 => (v as u32).to_string(),
                    IdKind::SInt32 => (zigzag as i32).to_string(),
                    IdKind::SInt64 => zigzag.to_string(),
                    _ => v.to_string(),
                }
            }
        });
    }
    Ok(found)
}

fn fixed<const N: usize>(buf: &[u8], pos: &mut usize) -> Result<[u8; N], MaskError> {
    let end = pos.checked_add(N).ok_or(MaskError::Malformed)?;
    let bytes = buf.get(*pos..end).ok_or(MaskError::Malformed)?;
    *pos = end;
    bytes.try_into().map_err(|_| MaskError::Malformed)
}

/// [`extract`], then sanitized as a client-chosen identifier: what may go into filter state
/// and the audit event. `None` when the field is absent, the message malformed, or the value
/// refused by the sanitizer (empty, too long, not an identifier, e-mail shaped).
pub fn resource_id(field: &IdField, message: &[u8]) -> Option<String> {
    extract(field, message)
        .ok()
        .flatten()
        .and_then(|v| client_id(&v).value())
}

/// What [`RequestReader::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The first message is not complete yet.
    Pending,
    /// The first message was read (or could not be): the sanitized id, if any. Reported once.
    Done(Option<String>),
    /// Reported already: the reader ignores the rest of the stream.
    Finished,
}

/// Cuts the first gRPC message out of the request body chunks and reads the resource id in it.
/// Holds at most one incomplete frame (`max_message_bytes` + 5 bytes), a copy: the chunks
/// themselves go on unchanged.
#[derive(Debug)]
pub struct RequestReader {
    framer: Option<Framer>,
    field: IdField,
    encoding: Encoding,
    max_message_bytes: usize,
}

impl RequestReader {
    /// `encoding` is the request's `grpc-encoding`.
    pub fn new(field: IdField, encoding: Encoding, max_message_bytes: usize) -> Self {
        RequestReader {
            framer: Some(Framer::new(max_message_bytes)),
            field,
            encoding,
            max_message_bytes,
        }
    }

    /// Feeds one request body chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Read {
        let Some(framer) = &mut self.framer else {
            return Read::Finished;
        };
        let mut first: Option<Option<String>> = None;
        let (field, encoding, max) = (&self.field, self.encoding, self.max_message_bytes);
        let framed = framer.feed(chunk, |flag, payload| {
            if first.is_some() {
                return Ok(());
            }
            first = Some(match (flag, encoding) {
                (0, _) => resource_id(field, payload),
                (_, Encoding::Gzip) => gunzip(payload, max)
                    .ok()
                    .and_then(|plain| resource_id(field, &plain)),
                // A compressed message in an encoding we cannot read: no id.
                _ => None,
            });
            Ok(())
        });
        match (first, framed) {
            (Some(id), _) => {
                self.framer = None;
                Read::Done(id)
            }
            // Bad flag, or a frame over the bound: nothing is recorded.
            (None, Err(_)) => {
                self.framer = None;
                Read::Done(None)
            }
            (None, Ok(())) => Read::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::write_varint;

    fn field(kind: IdKind) -> IdField {
        IdField {
            number: 2,
            kind,
            full_name: "t.Req.id".into(),
        }
    }

    fn len_record(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, (u64::from(number) << 3) | 2);
        write_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
        out
    }

    fn varint_record(number: u32, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, u64::from(number) << 3);
        write_varint(&mut out, value);
        out
    }

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_field_is_found_with_fields_before_and_after_it() {
        let f = field(IdKind::String);
        let before = len_record(1, b"other");
        let id = len_record(2, b"p-0001");
        let after = [varint_record(3, 7), len_record(4, b"p-0002")].concat();
        for msg in [
            id.clone(),
            [before.clone(), id.clone()].concat(),
            [id.clone(), after.clone()].concat(),
            [before.clone(), id.clone(), after.clone()].concat(),
        ] {
            assert_eq!(extract(&f, &msg), Ok(Some("p-0001".into())));
        }
        // Absent: other fields only, or an empty message.
        assert_eq!(extract(&f, &[before, after].concat()), Ok(None));
        assert_eq!(extract(&f, b""), Ok(None));
    }

    #[test]
    fn the_last_record_wins_and_other_wire_types_are_skipped() {
        let f = field(IdKind::String);
        let msg = [len_record(2, b"p-0001"), len_record(2, b"p-0003")].concat();
        assert_eq!(extract(&f, &msg), Ok(Some("p-0003".into())));
        // Field 2 as a varint is an unknown field to a string-typed parser.
        let msg = [len_record(2, b"p-0001"), varint_record(2, 5)].concat();
        assert_eq!(extract(&f, &msg), Ok(Some("p-0001".into())));
        assert_eq!(extract(&f, &varint_record(2, 5)), Ok(None));
    }

    #[test]
    fn malformed_messages_and_invalid_text_give_no_id() {
        let f = field(IdKind::String);
        let good = len_record(2, b"p-0001");
        for cut in 1..good.len() {
            assert_eq!(
                extract(&f, &good[..cut]),
                Err(MaskError::Malformed),
                "{cut}"
            );
            assert_eq!(resource_id(&f, &good[..cut]), None);
        }
        assert_eq!(
            extract(&f, &len_record(2, &[0xff, 0xfe])),
            Err(MaskError::Malformed)
        );
        // A malformed record after the id: the message as a whole is refused.
        let msg = [good, vec![0x0a, 0x05]].concat();
        assert_eq!(resource_id(&f, &msg), None);
    }

    #[test]
    fn integers_print_in_decimal() {
        let negative = (-42i64) as u64;
        for (kind, record, want) in [
            (IdKind::Int64, varint_record(2, 1234), "1234"),
            (IdKind::Int64, varint_record(2, negative), "-42"),
            (IdKind::Int32, varint_record(2, negative), "-42"),
            (
                IdKind::UInt32,
                varint_record(2, u64::from(u32::MAX)),
                "4294967295",
            ),
            (
                IdKind::UInt64,
                varint_record(2, u64::MAX),
                "18446744073709551615",
            ),
            (IdKind::SInt32, varint_record(2, 83), "-42"),
            (IdKind::SInt64, varint_record(2, 84), "42"),
        ] {
            assert_eq!(
                extract(&field(kind), &record),
                Ok(Some(want.into())),
                "{kind:?}"
            );
        }
        let mut fixed32 = vec![(2 << 3) | 5];
        fixed32.extend_from_slice(&(-7i32).to_le_bytes());
        assert_eq!(
            extract(&field(IdKind::SFixed32), &fixed32),
            Ok(Some("-7".into()))
        );
        assert_eq!(
            extract(&field(IdKind::Fixed32), &fixed32),
            Ok(Some(u32::MAX.wrapping_sub(6).to_string()))
        );
        let mut fixed64 = vec![(2 << 3) | 1];
        fixed64.extend_from_slice(&99u64.to_le_bytes());
        assert_eq!(
            extract(&field(IdKind::Fixed64), &fixed64),
            Ok(Some("99".into()))
        );
        assert_eq!(
            extract(&field(IdKind::SFixed64), &fixed64[..5]),
            Err(MaskError::Malformed)
        );
    }

    #[test]
    fn values_are_sanitized_like_any_client_id() {
        let f = field(IdKind::String);
        assert_eq!(
            resource_id(&f, &len_record(2, b"078-05-1120")),
            Some("***-**-****".into())
        );
        for refused in [&b"jane@example.org"[..], b"has space", b""] {
            assert_eq!(resource_id(&f, &len_record(2, refused)), None);
        }
        // A long integer id is digits only: masked like a phone number would be.
        assert_eq!(
            resource_id(&field(IdKind::UInt64), &varint_record(2, 5_558_675_309)),
            Some("**********".into())
        );
    }

    #[test]
    fn the_reader_takes_the_first_message_across_chunks() {
        let f = field(IdKind::String);
        let mut body = frame(0, &[len_record(1, b"x"), len_record(2, b"p-0001")].concat());
        body.extend(frame(0, &len_record(2, b"p-0002")));
        for split in 0..body.len() {
            let mut r = RequestReader::new(f.clone(), Encoding::Identity, 1024);
            let mut results = vec![r.feed(&body[..split]), r.feed(&body[split..])];
            results.retain(|x| *x != Read::Pending);
            assert_eq!(
                results[0],
                Read::Done(Some("p-0001".into())),
                "split {split}"
            );
            assert!(
                results[1..].iter().all(|x| *x == Read::Finished),
                "split {split}"
            );
            assert_eq!(r.feed(b"more"), Read::Finished);
        }
    }

    #[test]
    fn the_reader_records_nothing_for_oversized_malformed_or_unreadable_messages() {
        let f = field(IdKind::String);
        let id = len_record(2, b"p-0001");
        let mut r = RequestReader::new(f.clone(), Encoding::Identity, id.len() - 1);
        assert_eq!(
            r.feed(&frame(0, &id)[..5]),
            Read::Done(None),
            "over the bound"
        );
        let mut r = RequestReader::new(f.clone(), Encoding::Identity, 1024);
        assert_eq!(r.feed(&frame(2, &id)), Read::Done(None), "bad flag");
        let mut r = RequestReader::new(f.clone(), Encoding::Identity, 1024);
        assert_eq!(r.feed(&frame(0, &id[..3])), Read::Done(None), "malformed");
        let mut r = RequestReader::new(f.clone(), Encoding::Identity, 1024);
        assert_eq!(
            r.feed(&frame(1, &id)),
            Read::Done(None),
            "compressed, no encoding"
        );
    }

    #[test]
    fn the_reader_inflates_gzip_requests() {
        use std::io::Write;
        let f = field(IdKind::String);
        let gzip = |msg: &[u8]| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(msg).unwrap();
            enc.finish().unwrap()
        };
        let gz = gzip(&len_record(2, b"p-0001"));
        let mut r = RequestReader::new(f.clone(), Encoding::Gzip, 1024);
        assert_eq!(r.feed(&frame(1, &gz)), Read::Done(Some("p-0001".into())));
        let mut r = RequestReader::new(f.clone(), Encoding::Unsupported, 1024);
        assert_eq!(r.feed(&frame(1, &gz)), Read::Done(None), "unsupported");
        let big = [len_record(2, b"p-0001"), len_record(3, &[b'a'; 500])].concat();
        let gz = gzip(&big);
        assert!(gz.len() < 100);
        let mut r = RequestReader::new(f, Encoding::Gzip, 100);
        assert_eq!(
            r.feed(&frame(1, &gz)),
            Read::Done(None),
            "inflates past the bound"
        );
    }
}
