//! The catalog: classes for fields of protos you cannot edit, kept beside the descriptor set
//! instead of in `phi.v1.sensitivity` annotations.
//!
//! Three kinds of entry (config key `catalog`, a JSON array, validated against the set):
//! - **field**: `{"field": "google.fhir.r4.core.Patient.birth_date", "class": "DOB"}`, a field
//!   by its full name (message full name, a dot, the field name);
//! - **type**: `{"type": "google.fhir.r4.core.Address", "class": "ADDRESS"}`: every occurrence
//!   of that message type (as a field, a method's response, an `Any`'s content) carries the
//!   class, handed down to the fields inside it;
//! - either one with a **condition** on a value inside the message:
//!   `{"field": "google.fhir.r4.core.Identifier.value", "class": "SSN",
//!     "when": {"path": "system.value", "equals": "http://hl7.org/fhir/sid/us-ssn"}}`.
//!   The path is relative to the message the entry is about (a field entry: the message that
//!   declares the field; a type entry: the type itself); it runs through message fields
//!   (repeated ones hold when any element does) to a string, bytes, enum (by value name),
//!   integer or bool leaf. `equals` takes one value, `in` a list. The condition is evaluated
//!   on the whole message before any of it is rewritten, so it holds wherever its field sits on
//!   the wire, before or after the values it classifies. Conditional entries on one message
//!   type are tried in catalog order and the first that holds applies.
//!
//! Precedence, for a field `F` of message `M` with message type `T` (when it is one):
//! 1. a conditional field entry on `F` that holds;
//! 2. an unconditional field entry on `F`;
//! 3. the `phi.v1.sensitivity` annotation on `F`;
//! 4. (message fields) a conditional type entry on `T` that holds, which wins over 1–3 for the
//!    fields of that `T` value (data decides over names), except the fields its condition path
//!    starts with (the discriminator, such as `system` or `url`, keeps its own class);
//! 5. (message fields) an unconditional type entry on `T`;
//! 6. the class handed down from the nearest enclosing message value that has one.
//!
//! Inside a classified message value every field without a class of its own (1–3) takes the
//! value's class.
//!
//! A fourth kind names the field of a **request** message that holds the id of the resource
//! asked for, for the audit event (`phi.v1.resource_id` in protos you can edit):
//! `{"field": "phi.fhir.v1.GetPatientRequest.id", "resource_id": true}`. It takes no class and
//! no condition; see [`crate::resource`].

use std::collections::HashMap;

use phi_guard_common::ConfigError;
use serde_json::Value;

use crate::descriptor::{DescriptorSet, FieldKind};
use crate::plan::Class;

/// A condition, resolved against the descriptor set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Field numbers from the message down to the leaf.
    pub path: Vec<u32>,
    pub test: Test,
}

/// What the leaf must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// A LEN value (string or bytes) equal to one of these.
    Bytes(Vec<Vec<u8>>),
    /// A varint (enum number, integer, bool) equal to one of these (as encoded, two's
    /// complement for negative numbers).
    Varint(Vec<u64>),
}

/// A conditional entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The message type the condition is evaluated on.
    pub message: String,
    /// `Some(name)`: a field entry (the class goes to that field of `message`); `None`: a
    /// type entry (the class goes to the whole `message` value).
    pub field: Option<String>,
    pub class: Class,
    pub condition: Condition,
    /// The name of the first field of the condition's path (exempt from a type entry's class).
    pub discriminator: String,
    /// Where the entry is in the config, for error messages (`catalog[3]`).
    pub origin: String,
}

/// Every catalog entry, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Message full name → field name → class (unconditional field entries).
    pub fields: HashMap<String, HashMap<String, Class>>,
    /// Message full name → class (unconditional type entries).
    pub types: HashMap<String, Class>,
    /// Conditional entries, in catalog order.
    pub rules: Vec<Rule>,
    /// `resource_id` entries: request message full name → (field name, `catalog[i]`).
    pub resource_ids: HashMap<String, (String, String)>,
    /// Where each unconditional entry is (`catalog[i]`): `message.field` for a field entry,
    /// `message` for a type entry. For error messages.
    pub origins: HashMap<String, String>,
}

impl Catalog {
    /// The unconditional field entry on `message.field`.
    pub fn field_class(&self, message: &str, field: &str) -> Option<Class> {
        self.fields.get(message)?.get(field).copied()
    }

    /// The unconditional type entry on `message`.
    pub fn type_class(&self, message: &str) -> Option<Class> {
        self.types.get(message).copied()
    }

    /// Indices into [`Catalog::rules`] of the conditional entries evaluated on `message`.
    pub fn rules_on<'a>(&'a self, message: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.message == message)
            .map(|(i, _)| i)
    }

    /// Parses the `catalog` array against `set`; `class` resolves a class name.
    pub fn parse(
        v: &Value,
        set: &DescriptorSet,
        class: &dyn Fn(&str) -> Option<Class>,
    ) -> Result<Self, ConfigError> {
        let entries = v
            .as_array()
            .ok_or_else(|| ConfigError::new("catalog", "must be an array of entries"))?;
        let mut catalog = Catalog::default();
        for (i, entry) in entries.iter().enumerate() {
            let here = format!("catalog[{i}]");
            let obj = entry
                .as_object()
                .ok_or_else(|| ConfigError::new(&here, "must be an object"))?;
            if let Some(k) = obj
                .keys()
                .find(|k| !["field", "type", "class", "when", "resource_id"].contains(&k.as_str()))
            {
                return Err(ConfigError::new(
                    format!("{here}.{k}"),
                    "unknown field, expected one of: field, type, class, when, resource_id",
                ));
            }
            if let Some(flag) = obj.get("resource_id") {
                let (message, field) = resource_id_entry(obj, flag, &here, set)?;
                if let Some((other, origin)) = catalog.resource_ids.get(&message) {
                    return Err(ConfigError::new(
                        format!("{here}.field"),
                        format!("{origin} already names {message}.{other} as its resource id (one per message)"),
                    ));
                }
                catalog.resource_ids.insert(message, (field, here));
                continue;
            }
            let cls_name = obj.get("class").and_then(Value::as_str).ok_or_else(|| {
                ConfigError::new(format!("{here}.class"), "missing or not a string")
            })?;
            let cls = class(cls_name).ok_or_else(|| {
                ConfigError::new(format!("{here}.class"), "unknown sensitivity class")
            })?;
            let (message, field) =
                match (obj.get("field"), obj.get("type")) {
                    (Some(f), None) => {
                        let at = format!("{here}.field");
                        let full = f
                            .as_str()
                            .ok_or_else(|| ConfigError::new(&at, "must be a string"))?;
                        let (m, name) = full.rsplit_once('.').ok_or_else(|| {
                            ConfigError::new(&at, "must be <message full name>.<field name>")
                        })?;
                        let desc = set.messages.get(m).ok_or_else(|| {
                            ConfigError::new(&at, "message type is not in the descriptor set")
                        })?;
                        if !desc.fields.iter().any(|d| d.name == name) {
                            return Err(ConfigError::new(&at, "the message has no such field"));
                        }
                        (m.to_string(), Some(name.to_string()))
                    }
                    (None, Some(t)) => {
                        let at = format!("{here}.type");
                        let t = t
                            .as_str()
                            .ok_or_else(|| ConfigError::new(&at, "must be a string"))?;
                        if !set.messages.contains_key(t) {
                            return Err(ConfigError::new(
                                &at,
                                "message type is not in the descriptor set",
                            ));
                        }
                        (t.to_string(), None)
                    }
                    _ => return Err(ConfigError::new(
                        &here,
                        "needs exactly one of field (a field's full name) or type (a message type)",
                    )),
                };
            match obj.get("when") {
                None => match &field {
                    Some(f) => {
                        catalog.origins.insert(format!("{message}.{f}"), here);
                        catalog
                            .fields
                            .entry(message)
                            .or_default()
                            .insert(f.clone(), cls);
                    }
                    None => {
                        catalog.origins.insert(message.clone(), here);
                        catalog.types.insert(message, cls);
                    }
                },
                Some(when) => {
                    let (condition, discriminator) =
                        parse_when(when, &format!("{here}.when"), set, &message)?;
                    catalog.rules.push(Rule {
                        message,
                        field,
                        class: cls,
                        condition,
                        discriminator,
                        origin: here,
                    });
                }
            }
        }
        Ok(catalog)
    }
}

/// A `{"field": ..., "resource_id": true}` entry: the field must be a singular string or
/// integer field of a message some method of the set takes as its request.
fn resource_id_entry(
    obj: &serde_json::Map<String, Value>,
    flag: &Value,
    here: &str,
    set: &DescriptorSet,
) -> Result<(String, String), ConfigError> {
    let at = format!("{here}.resource_id");
    if flag != &Value::Bool(true) {
        return Err(ConfigError::new(
            &at,
            "must be true (leave it out for a class entry)",
        ));
    }
    if let Some(k) = ["class", "type", "when"]
        .iter()
        .find(|k| obj.contains_key(**k))
    {
        return Err(ConfigError::new(
            &at,
            format!("a resource_id entry names a field only, without {k}"),
        ));
    }
    let at = format!("{here}.field");
    let full = obj
        .get("field")
        .ok_or_else(|| ConfigError::new(&at, "missing: a resource_id entry names a field"))?
        .as_str()
        .ok_or_else(|| ConfigError::new(&at, "must be a string"))?;
    let (m, name) = full
        .rsplit_once('.')
        .ok_or_else(|| ConfigError::new(&at, "must be <message full name>.<field name>"))?;
    let desc = set
        .messages
        .get(m)
        .ok_or_else(|| ConfigError::new(&at, "message type is not in the descriptor set"))?;
    let f = desc
        .fields
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ConfigError::new(&at, "the message has no such field"))?;
    if !set.methods.iter().any(|x| x.input_type == m) {
        return Err(ConfigError::new(
            &at,
            "a resource_id field must belong to a request message: no method of the set takes this message",
        ));
    }
    if crate::resource::IdKind::of(f).is_none() {
        return Err(ConfigError::new(
            &at,
            "a resource_id field must be a singular string or integer field",
        ));
    }
    Ok((m.to_string(), name.to_string()))
}

fn parse_when(
    v: &Value,
    here: &str,
    set: &DescriptorSet,
    message: &str,
) -> Result<(Condition, String), ConfigError> {
    let obj = v.as_object().ok_or_else(|| {
        ConfigError::new(here, "must be an object {\"path\": ..., \"equals\": ...}")
    })?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["path", "equals", "in"].contains(&k.as_str()))
    {
        return Err(ConfigError::new(
            format!("{here}.{k}"),
            "unknown field, expected one of: path, equals, in",
        ));
    }
    let path_at = format!("{here}.path");
    let path = obj
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ConfigError::new(&path_at, "missing or not a dotted field path"))?;
    let values: Vec<String> = match (obj.get("equals"), obj.get("in")) {
        (Some(Value::String(s)), None) => vec![s.clone()],
        (None, Some(Value::Array(a))) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ConfigError::new(format!("{here}.in"), "must be a list of strings"))?,
        _ => {
            return Err(ConfigError::new(
                here,
                "needs exactly one of equals (a string) or in (a non-empty list of strings)",
            ))
        }
    };
    let mut numbers = Vec::new();
    let mut current = message.to_string();
    let names: Vec<&str> = path.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let desc = set
            .messages
            .get(&current)
            .ok_or_else(|| ConfigError::new(&path_at, "runs through a type not in the set"))?;
        let f = desc
            .fields
            .iter()
            .find(|f| f.name == *name)
            .ok_or_else(|| ConfigError::new(&path_at, format!("{current} has no field {name}")))?;
        numbers.push(f.number);
        let last = i + 1 == names.len();
        match (f.kind, last) {
            (FieldKind::Message, false) => current = f.type_name.clone().unwrap_or_default(),
            (FieldKind::String | FieldKind::Bytes, true) => {
                let test = Test::Bytes(values.into_iter().map(String::into_bytes).collect());
                return Ok((
                    Condition {
                        path: numbers,
                        test,
                    },
                    names[0].to_string(),
                ));
            }
            (FieldKind::Varint, true) => {
                let mut out = Vec::new();
                for v in &values {
                    out.push(
                        varint_value(set, f.ty, f.type_name.as_deref(), v).ok_or_else(|| {
                            ConfigError::new(
                                here,
                                format!("{v:?} is not a value of {current}.{name}"),
                            )
                        })?,
                    );
                }
                return Ok((
                    Condition {
                        path: numbers,
                        test: Test::Varint(out),
                    },
                    names[0].to_string(),
                ));
            }
            _ => return Err(ConfigError::new(
                &path_at,
                "must run through message fields to a string, bytes, enum, integer or bool field",
            )),
        }
    }
    unreachable!("the loop returns at the last path element")
}

/// The varint a condition value stands for: an enum value name (or number), an integer, or
/// `true`/`false`.
fn varint_value(set: &DescriptorSet, ty: u8, enum_type: Option<&str>, v: &str) -> Option<u64> {
    match ty {
        14 => {
            let values = set.enums.get(enum_type?)?;
            let n = values
                .iter()
                .find(|(name, _)| name == v)
                .map(|(_, n)| *n)
                .or_else(|| v.parse::<i32>().ok())?;
            Some(i64::from(n) as u64)
        }
        8 => match v {
            "true" => Some(1),
            "false" => Some(0),
            _ => None,
        },
        // sint32 / sint64: zigzag.
        17 | 18 => v.parse::<i64>().ok().map(|n| ((n << 1) ^ (n >> 63)) as u64),
        13 | 4 => v.parse::<u64>().ok(),
        _ => v.parse::<i64>().ok().map(|n| n as u64),
    }
}

impl Condition {
    /// Whether the condition holds for the encoded message `buf`: some occurrence of the path
    /// (any element of a repeated field, any record of a field repeated on the wire) ends in
    /// one of the values. `Err` on malformed input.
    pub fn holds(&self, buf: &[u8]) -> Result<bool, crate::MaskError> {
        holds(&self.path, &self.test, buf, 0)
    }
}

fn holds(path: &[u32], test: &Test, buf: &[u8], depth: usize) -> Result<bool, crate::MaskError> {
    use crate::wire::{read_len_value, read_tag, read_varint, skip_value, LEN, VARINT};
    use crate::MaskError;
    if depth > crate::rewriter::MAX_DEPTH {
        return Err(MaskError::TooDeep);
    }
    let Some((&first, rest)) = path.split_first() else {
        return Ok(false);
    };
    let mut pos = 0;
    let mut found = false;
    while pos < buf.len() {
        let tag = read_tag(buf, &mut pos).ok_or(MaskError::Malformed)?;
        if tag.number != first {
            skip_value(buf, &mut pos, tag, crate::rewriter::MAX_DEPTH)
                .ok_or(MaskError::Malformed)?;
            continue;
        }
        match (tag.wire_type, rest.is_empty(), test) {
            (LEN, false, _) => {
                let (s, e) = read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                found |= holds(rest, test, &buf[s..e], depth + 1)?;
            }
            (LEN, true, Test::Bytes(values)) => {
                let (s, e) = read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                found |= values.iter().any(|v| v[..] == buf[s..e]);
            }
            (VARINT, true, Test::Varint(values)) => {
                let x = read_varint(buf, &mut pos).ok_or(MaskError::Malformed)?;
                found |= values.contains(&x);
            }
            (LEN, true, Test::Varint(values)) => {
                // A packed repeated enum or integer.
                let (s, e) = read_len_value(buf, &mut pos).ok_or(MaskError::Malformed)?;
                let mut p = s;
                while p < e {
                    let x = read_varint(&buf[..e], &mut p).ok_or(MaskError::Malformed)?;
                    found |= values.contains(&x);
                }
            }
            _ => {
                skip_value(buf, &mut pos, tag, crate::rewriter::MAX_DEPTH)
                    .ok_or(MaskError::Malformed)?;
            }
        }
    }
    Ok(found)
}
