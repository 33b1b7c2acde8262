//! A minimal decoder of `google.protobuf.FileDescriptorSet`: just what the plan needs.
//!
//! Hand-written rather than prost-types because the sensitivity annotation is an extension
//! (`phi.v1.sensitivity`, field 51234 of `FieldOptions`) and prost-types drops unknown fields;
//! prost-reflect would keep them but pulls a full reflection runtime into the wasm module.
//! Only linked descriptor sets are accepted (type names fully qualified with a leading dot),
//! which is what `protoc --descriptor_set_out`, `buf build` and protox produce.

use std::collections::{BTreeMap, HashMap};

use crate::wire::{self, read_len_value, read_tag, read_varint, skip_value};

/// Field number of the `phi.v1.sensitivity` extension of `google.protobuf.FieldOptions`.
pub const SENSITIVITY_EXTENSION: u32 = 51234;
/// Field number of the `phi.v1.resource_id` extension of `google.protobuf.FieldOptions` (bool):
/// the field of a request message that holds the id of the resource asked for.
pub const RESOURCE_ID_EXTENSION: u32 = 51235;
/// The enum whose value names become class names, when the set carries it.
pub const SENSITIVITY_ENUM: &str = "phi.v1.Sensitivity";

/// `FieldDescriptorProto.Type`, reduced to what the rewriter distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Bytes,
    Message,
    Group,
    /// A varint scalar: int32/64, uint32/64, sint32/64, bool, enum.
    Varint,
    /// fixed64, sfixed64, double.
    Fixed64,
    /// fixed32, sfixed32, float.
    Fixed32,
}

impl FieldKind {
    fn from_type(t: u64) -> Option<Self> {
        Some(match t {
            9 => FieldKind::String,
            12 => FieldKind::Bytes,
            11 => FieldKind::Message,
            10 => FieldKind::Group,
            3 | 4 | 5 | 8 | 13 | 14 | 17 | 18 => FieldKind::Varint,
            1 | 6 | 16 => FieldKind::Fixed64,
            2 | 7 | 15 => FieldKind::Fixed32,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDesc {
    pub name: String,
    pub number: u32,
    pub repeated: bool,
    pub kind: FieldKind,
    /// `FieldDescriptorProto.Type` as declared (9 string, 11 message, 14 enum, 17 sint32, ...).
    pub ty: u8,
    /// Fully qualified message or enum type (no leading dot) for message, group and enum fields.
    pub type_name: Option<String>,
    /// The `phi.v1.sensitivity` value, when annotated with a non-zero class.
    pub sensitivity: Option<i32>,
    /// Annotated `(phi.v1.resource_id) = true`.
    pub resource_id: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageDesc {
    pub fields: Vec<FieldDesc>,
    /// True for the synthetic `XxxEntry` message of a map field.
    pub map_entry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodDesc {
    /// `package.Service/Method`, as [`phi_guard_common::GrpcMethod::full_name`] spells it.
    pub full_name: String,
    /// Fully qualified request message type, no leading dot.
    pub input_type: String,
    /// Fully qualified response message type, no leading dot.
    pub output_type: String,
}

/// Every message, enum and method of a descriptor set, plus the class names.
#[derive(Debug, Clone, Default)]
pub struct DescriptorSet {
    /// Fully qualified name (no leading dot) → message.
    pub messages: HashMap<String, MessageDesc>,
    /// Fully qualified name (no leading dot) → `(value name, number)` in declaration order.
    pub enums: HashMap<String, Vec<(String, i32)>>,
    pub methods: Vec<MethodDesc>,
    /// Class number → name, from `phi.v1.Sensitivity` in the set when present.
    pub class_names: BTreeMap<i32, String>,
}

/// Why a descriptor set was refused; the config layer puts it under `descriptor_set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorError(pub String);

type Result<T> = std::result::Result<T, DescriptorError>;

fn malformed(what: &str) -> DescriptorError {
    DescriptorError(format!("malformed descriptor set ({what})"))
}

/// One decoded record of a message: the value as a varint or a byte slice.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Calls `f` for each field of the encoded message `buf`.
fn each_field<'a>(
    buf: &'a [u8],
    what: &str,
    mut f: impl FnMut(u32, Value<'a>) -> Result<()>,
) -> Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let tag = read_tag(buf, &mut pos).ok_or_else(|| malformed(what))?;
        let value = match tag.wire_type {
            wire::VARINT => {
                Value::Varint(read_varint(buf, &mut pos).ok_or_else(|| malformed(what))?)
            }
            wire::LEN => {
                let (s, e) = read_len_value(buf, &mut pos).ok_or_else(|| malformed(what))?;
                Value::Bytes(&buf[s..e])
            }
            _ => {
                skip_value(buf, &mut pos, tag, 32).ok_or_else(|| malformed(what))?;
                Value::Other
            }
        };
        f(tag.number, value)?;
    }
    Ok(())
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(what))
}

impl DescriptorSet {
    /// Decodes an encoded `FileDescriptorSet`.
    pub fn decode(set: &[u8]) -> Result<Self> {
        let mut catalog = DescriptorSet::default();
        each_field(set, "FileDescriptorSet", |number, value| {
            match (number, value) {
                (1, Value::Bytes(file)) => catalog.add_file(file),
                _ => Ok(()),
            }
        })?;
        if catalog.messages.is_empty() && catalog.methods.is_empty() {
            return Err(DescriptorError(
                "descriptor set contains no messages or services".into(),
            ));
        }
        Ok(catalog)
    }

    fn add_file(&mut self, file: &[u8]) -> Result<()> {
        let mut package = String::new();
        let mut messages = Vec::new();
        let mut enums = Vec::new();
        let mut services = Vec::new();
        each_field(file, "FileDescriptorProto", |number, value| {
            match (number, value) {
                (2, Value::Bytes(b)) => package = utf8(b, "package")?,
                (4, Value::Bytes(b)) => messages.push(b),
                (5, Value::Bytes(b)) => enums.push(b),
                (6, Value::Bytes(b)) => services.push(b),
                _ => {}
            }
            Ok(())
        })?;
        for m in messages {
            self.add_message(&package, m, 0)?;
        }
        for e in enums {
            self.add_enum(&package, e)?;
        }
        for s in services {
            self.add_service(&package, s)?;
        }
        Ok(())
    }

    fn add_message(&mut self, scope: &str, msg: &[u8], depth: usize) -> Result<()> {
        if depth > 64 {
            return Err(malformed("message nesting too deep"));
        }
        let mut name = String::new();
        let mut fields = Vec::new();
        let mut nested = Vec::new();
        let mut enums = Vec::new();
        let mut map_entry = false;
        each_field(msg, "DescriptorProto", |number, value| {
            match (number, value) {
                (1, Value::Bytes(b)) => name = utf8(b, "message name")?,
                (2, Value::Bytes(b)) => fields.push(b),
                (3, Value::Bytes(b)) => nested.push(b),
                (4, Value::Bytes(b)) => enums.push(b),
                (7, Value::Bytes(opts)) => each_field(opts, "MessageOptions", |n, v| {
                    if let (7, Value::Varint(x)) = (n, v) {
                        map_entry = x != 0;
                    }
                    Ok(())
                })?,
                _ => {}
            }
            Ok(())
        })?;
        let full = qualify(scope, &name);
        let mut desc = MessageDesc {
            fields: Vec::with_capacity(fields.len()),
            map_entry,
        };
        for f in fields {
            desc.fields.push(decode_field(&full, f)?);
        }
        for n in nested {
            self.add_message(&full, n, depth + 1)?;
        }
        for e in enums {
            self.add_enum(&full, e)?;
        }
        self.messages.insert(full, desc);
        Ok(())
    }

    fn add_enum(&mut self, scope: &str, e: &[u8]) -> Result<()> {
        let mut name = String::new();
        let mut values = Vec::new();
        each_field(e, "EnumDescriptorProto", |number, value| {
            match (number, value) {
                (1, Value::Bytes(b)) => name = utf8(b, "enum name")?,
                (2, Value::Bytes(b)) => values.push(b),
                _ => {}
            }
            Ok(())
        })?;
        let full = qualify(scope, &name);
        let mut decoded = Vec::with_capacity(values.len());
        for v in values {
            let mut vname = String::new();
            let mut vnum = 0i32;
            each_field(v, "EnumValueDescriptorProto", |number, value| {
                match (number, value) {
                    (1, Value::Bytes(b)) => vname = utf8(b, "enum value name")?,
                    (2, Value::Varint(x)) => vnum = x as i32,
                    _ => {}
                }
                Ok(())
            })?;
            decoded.push((vname, vnum));
        }
        if full == SENSITIVITY_ENUM {
            for (vname, vnum) in &decoded {
                if *vnum != 0 {
                    self.class_names.insert(*vnum, vname.clone());
                }
            }
        }
        self.enums.insert(full, decoded);
        Ok(())
    }

    fn add_service(&mut self, package: &str, svc: &[u8]) -> Result<()> {
        let mut name = String::new();
        let mut methods = Vec::new();
        each_field(svc, "ServiceDescriptorProto", |number, value| {
            match (number, value) {
                (1, Value::Bytes(b)) => name = utf8(b, "service name")?,
                (2, Value::Bytes(b)) => methods.push(b),
                _ => {}
            }
            Ok(())
        })?;
        let service = qualify(package, &name);
        for m in methods {
            let mut mname = String::new();
            let mut input = String::new();
            let mut output = String::new();
            each_field(m, "MethodDescriptorProto", |number, value| {
                match (number, value) {
                    (1, Value::Bytes(b)) => mname = utf8(b, "method name")?,
                    (2, Value::Bytes(b)) => input = utf8(b, "method input_type")?,
                    (3, Value::Bytes(b)) => output = utf8(b, "method output_type")?,
                    _ => {}
                }
                Ok(())
            })?;
            let qualified = |t: &str, which: &str| {
                t.strip_prefix('.').map(str::to_string).ok_or_else(|| {
                    DescriptorError(format!(
                        "method {service}/{mname}: {which} type is not fully qualified (descriptor set not linked)"
                    ))
                })
            };
            let output_type = qualified(&output, "output")?;
            let input_type = qualified(&input, "input")?;
            self.methods.push(MethodDesc {
                full_name: format!("{service}/{mname}"),
                input_type,
                output_type,
            });
        }
        Ok(())
    }

    /// The display name of a class number: the enum value name, or `CLASS_<n>`.
    pub fn class_name(&self, class: i32) -> String {
        match self.class_names.get(&class) {
            Some(n) => n.clone(),
            None => crate::policy::builtin_class_name(class)
                .map(str::to_string)
                .unwrap_or_else(|| format!("CLASS_{class}")),
        }
    }
}

fn qualify(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

fn decode_field(message: &str, f: &[u8]) -> Result<FieldDesc> {
    let mut name = String::new();
    let mut number = 0u64;
    let mut label = 0u64;
    let mut ty = None;
    let mut type_name = None;
    let mut sensitivity = None;
    let mut resource_id = false;
    each_field(f, "FieldDescriptorProto", |n, value| {
        match (n, value) {
            (1, Value::Bytes(b)) => name = utf8(b, "field name")?,
            (3, Value::Varint(x)) => number = x,
            (4, Value::Varint(x)) => label = x,
            (5, Value::Varint(x)) => ty = Some(x),
            (6, Value::Bytes(b)) => type_name = Some(utf8(b, "field type_name")?),
            (8, Value::Bytes(opts)) => each_field(opts, "FieldOptions", |on, ov| {
                // An enum extension is a varint; int32 enums travel sign-extended to 64 bits.
                match (on, ov) {
                    (SENSITIVITY_EXTENSION, Value::Varint(x)) => {
                        sensitivity = Some(x as i64 as i32)
                    }
                    (RESOURCE_ID_EXTENSION, Value::Varint(x)) => resource_id = x != 0,
                    _ => {}
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    let here = || format!("{message}.{name}");
    if number == 0 || number > wire::MAX_FIELD_NUMBER {
        return Err(DescriptorError(format!("field {}: invalid number", here())));
    }
    let kind = ty.and_then(FieldKind::from_type).ok_or_else(|| {
        DescriptorError(format!(
            "field {}: missing or unknown type (descriptor set not linked)",
            here()
        ))
    })?;
    let is_enum = ty == Some(14);
    let type_name = match kind {
        _ if is_enum => type_name
            .as_deref()
            .and_then(|t| t.strip_prefix('.'))
            .map(str::to_string),
        FieldKind::Message | FieldKind::Group => Some(
            type_name
                .as_deref()
                .and_then(|t| t.strip_prefix('.'))
                .ok_or_else(|| {
                    DescriptorError(format!(
                        "field {}: type name is not fully qualified (descriptor set not linked)",
                        here()
                    ))
                })?
                .to_string(),
        ),
        _ => None,
    };
    Ok(FieldDesc {
        name,
        number: number as u32,
        repeated: label == 3,
        kind,
        ty: ty.unwrap_or_default() as u8,
        type_name,
        sensitivity: sensitivity.filter(|&s| s != 0),
        resource_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_demo_api() {
        let cat = DescriptorSet::decode(crate::testdata::demo_descriptor_set()).unwrap();
        let patient = &cat.messages["health.v1.Patient"];
        let ssn = patient.fields.iter().find(|f| f.name == "ssn").unwrap();
        assert_eq!(
            (ssn.number, ssn.kind, ssn.sensitivity),
            (4, FieldKind::String, Some(1))
        );
        let ids = patient
            .fields
            .iter()
            .find(|f| f.name == "identifiers")
            .unwrap();
        assert!(ids.repeated);
        assert_eq!(
            ids.type_name.as_deref(),
            Some("health.v1.Patient.IdentifiersEntry")
        );
        assert!(cat.messages["health.v1.Patient.IdentifiersEntry"].map_entry);
        let tenant = patient.fields.iter().find(|f| f.name == "tenant").unwrap();
        assert_eq!(tenant.sensitivity, None);
        assert!(cat
            .methods
            .iter()
            .any(|m| m.full_name == "health.v1.PatientService/ListEncounters"
                && m.input_type == "health.v1.ListEncountersRequest"
                && m.output_type == "health.v1.Encounter"));
        let request = &cat.messages["health.v1.GetPatientRequest"];
        assert!(request.fields[0].resource_id, "phi.v1.resource_id is read");
        assert!(!ssn.resource_id);
        assert_eq!(cat.class_name(8), "FREE_TEXT");
        assert_eq!(
            cat.class_names.get(&9).map(String::as_str),
            Some("INSURANCE_ID")
        );
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        assert!(DescriptorSet::decode(b"").is_err());
        assert!(DescriptorSet::decode(&[0x0a, 0x05, 0x01]).is_err());
        assert!(DescriptorSet::decode(&[0xff; 16]).is_err());
        let set = crate::testdata::demo_descriptor_set();
        for cut in (0..set.len()).step_by(97) {
            let _ = DescriptorSet::decode(&set[..cut]);
        }
    }
}
