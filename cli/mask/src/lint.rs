//! `lint`: untagged response fields that look like one of the 18 HIPAA Safe Harbor
//! identifiers (45 CFR 164.514(b)(2)), by name, and untagged string values of a sample message
//! in which the filter's own free-text detectors find an identifier. A CI pipeline fails on any
//! finding, so a new field or a policy change cannot ship an identifier in clear unnoticed.

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use phi_guard_mask::plan::Node;

use crate::coverage::MethodCoverage;
use crate::Session;

/// Words (lower case) that name an identifier, with the identifier kind reported and the class
/// `phi-guard init` suggests for such a field. A field name is split into words on `_`, `.`,
/// `-` and camelCase boundaries (`caregiverPhones`, `IPAddress`), and a word matches with a
/// plural ending (`s`, `es`, `ies`) taken off too: `caregiver_phones` is a phone.
pub const IDENTIFIER_WORDS: &[(&str, &str, &str)] = &[
    ("name", "name", "NAME"),
    ("given", "name", "NAME"),
    ("family", "name", "NAME"),
    ("surname", "name", "NAME"),
    ("firstname", "name", "NAME"),
    ("lastname", "name", "NAME"),
    ("address", "address", "ADDRESS"),
    ("street", "address", "ADDRESS"),
    ("city", "address", "ADDRESS"),
    ("county", "address", "ADDRESS"),
    ("district", "address", "ADDRESS"),
    ("zip", "address", "ZIP"),
    ("zipcode", "address", "ZIP"),
    ("postal", "address", "ZIP"),
    ("postcode", "address", "ZIP"),
    ("birth", "date", "DOB"),
    ("birthdate", "date", "DOB"),
    ("dob", "date", "DOB"),
    ("deceased", "date", "DATE"),
    ("death", "date", "DATE"),
    ("phone", "phone", "PHONE"),
    ("telephone", "phone", "PHONE"),
    ("mobile", "phone", "PHONE"),
    ("telecom", "phone", "PHONE"),
    ("fax", "fax", "FAX"),
    ("email", "email", "EMAIL"),
    ("ssn", "ssn", "SSN"),
    ("social", "ssn", "SSN"),
    ("mrn", "mrn", "MRN"),
    ("identifier", "identifier", "OTHER_ID"),
    ("beneficiary", "health plan number", "INSURANCE_ID"),
    ("member", "health plan number", "INSURANCE_ID"),
    ("insurance", "health plan number", "INSURANCE_ID"),
    ("account", "account number", "ACCOUNT"),
    ("license", "license number", "LICENSE"),
    ("licence", "license number", "LICENSE"),
    ("certificate", "certificate number", "LICENSE"),
    ("vin", "vehicle identifier", "VEHICLE_ID"),
    ("plate", "vehicle identifier", "VEHICLE_ID"),
    ("serial", "device identifier", "DEVICE_ID"),
    ("udi", "device identifier", "DEVICE_ID"),
    ("ip", "IP address", "IP_ADDRESS"),
    ("photo", "photo", "PHOTO"),
    ("fingerprint", "biometric", "BIOMETRIC"),
    ("biometric", "biometric", "BIOMETRIC"),
];

/// Runs of words that name an identifier only together (matched like [`IDENTIFIER_WORDS`],
/// the last word with a plural ending taken off as well), longest first.
pub const IDENTIFIER_PHRASES: &[(&[&str], &str, &str)] = &[
    (&["medical", "record", "number"], "mrn", "MRN"),
    (&["medical", "record", "no"], "mrn", "MRN"),
    (&["record", "number"], "mrn", "MRN"),
    (&["patient", "id"], "identifier", "OTHER_ID"),
    (&["patient", "identifier"], "identifier", "OTHER_ID"),
    (&["patient", "number"], "identifier", "OTHER_ID"),
];

/// One lint finding: where, and which identifier kind it looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub method: String,
    pub path: String,
    pub field: String,
    /// e.g. `ssn`, `phone`, or for a sample value the detector's class (`SSN`).
    pub kind: String,
    /// `name` (the field's name) or `sample` (a value of the sample message).
    pub source: &'static str,
}

/// The identifier kind a field name looks like, if any.
pub fn looks_like(field_name: &str) -> Option<&'static str> {
    word_entry(field_name).map(|(_, kind, _)| kind)
}

/// The class a field named `field_name` most likely needs (`SSN`, `NAME`, `DOB`, …), from the
/// same words as [`looks_like`]; a suggestion for a human to confirm, not a classification.
pub fn suggested_class(field_name: &str) -> Option<&'static str> {
    word_entry(field_name).map(|(_, _, class)| class)
}

fn word_entry(field_name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let words = words(field_name);
    // A phrase first: `patient_id` is an identifier although neither word is one.
    for start in 0..words.len() {
        for (phrase, kind, class) in IDENTIFIER_PHRASES {
            let Some(run) = words.get(start..start + phrase.len()) else {
                continue;
            };
            if run.iter().zip(phrase.iter()).all(|(w, p)| same_word(w, p)) {
                return Some((phrase[0], kind, class));
            }
        }
    }
    words.iter().find_map(|word| {
        IDENTIFIER_WORDS
            .iter()
            .find(|(w, _, _)| same_word(word, w))
            .copied()
    })
}

/// `word` is `entry`, or `entry` with a plural ending (`phones`, `addresses`, `cities`).
fn same_word(word: &str, entry: &str) -> bool {
    word == entry
        || word.strip_suffix('s') == Some(entry)
        || word.strip_suffix("es") == Some(entry)
        || (entry.ends_with('y') && word.strip_suffix("ies") == Some(&entry[..entry.len() - 1]))
}

/// The lower-case words of a field name: split on `_`, `.`, `-`, digits and camelCase
/// boundaries (`phoneNumber` → phone, number; `patientMRN` → patient, mrn; `IPAddress` → ip,
/// address).
pub fn words(field_name: &str) -> Vec<String> {
    let chars: Vec<char> = field_name.chars().collect();
    let mut out = Vec::new();
    let mut word = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphabetic() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            continue;
        }
        if c.is_ascii_uppercase() && !word.is_empty() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            // `phoneNumber`: a capital after a small letter; `IPAddress`: the last capital of
            // a run that a small letter follows.
            if prev.is_ascii_lowercase() || (prev.is_ascii_uppercase() && next_lower) {
                out.push(std::mem::take(&mut word));
            }
        }
        word.push(c.to_ascii_lowercase());
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Untagged leaves whose name, or the name of one of the two fields holding them (FHIR wraps
/// every primitive: `family.value`, `identifier[].value.value`), looks like an identifier. Fields whose full name (or a prefix
/// of it, ending in `.`) is in `allow` are not reported.
pub fn by_name(report: &[MethodCoverage], allow: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in report {
        for r in &m.rows {
            if r.class.is_some() || matches!(r.kind, "any" | "condition") {
                continue;
            }
            // A message listed elsewhere (`see`): its own name counts here too, when the
            // listing has an untagged leaf directly inside that `allow` does not cover.
            let untagged_inside = |target: &str| {
                m.rows.iter().any(|x| {
                    x.class.is_none()
                        && !matches!(x.kind, "message" | "group" | "any" | "condition")
                        && !allowed(&x.field, allow)
                        && x.path
                            .strip_prefix(target)
                            .is_some_and(|rest| rest.starts_with('.') && !rest[1..].contains('.'))
                })
            };
            match (&r.see, r.kind) {
                (Some(target), "message") if untagged_inside(target) => {}
                (_, "message" | "group") => continue,
                _ => {}
            }
            if allowed(&r.field, allow) {
                continue;
            }
            let segments: Vec<&str> = r.path.split('.').collect();
            // A leaf: its name and the two fields holding it; a message listed elsewhere: its
            // own name and its holder's (its leaves add the level below).
            let keep = if r.see.is_some() { 2 } else { 3 };
            let tail = &segments[segments.len().saturating_sub(keep)..];
            if let Some(kind) = tail.iter().rev().find_map(|s| looks_like(segment_name(s))) {
                if allowed_path(&r.path, allow) {
                    continue;
                }
                out.push(Finding {
                    method: m.method.clone(),
                    path: r.path.clone(),
                    field: r.field.clone(),
                    kind: kind.to_string(),
                    source: "name",
                });
            }
        }
    }
    out
}

/// The field name of a path segment: `identifier[]` and, for the listing under a conditional
/// catalog entry, `identifier[]<value if catalog[1]>` are `identifier`.
fn segment_name(segment: &str) -> &str {
    let name = segment.split('<').next().unwrap_or(segment);
    name.trim_end_matches("[]")
}

fn allowed(field: &str, allow: &[String]) -> bool {
    allow
        .iter()
        .any(|a| field == a || (a.ends_with('.') && field.starts_with(a.as_str())))
}

fn allowed_path(path: &str, allow: &[String]) -> bool {
    allow
        .iter()
        .any(|a| a.starts_with("path:") && path.starts_with(&a["path:".len()..]))
}

/// Untagged string values of `sample` (a message of the session's type) in which the filter's
/// free-text detectors find an identifier. The value itself is never reported.
pub fn by_sample(session: &Session, method: &str, sample: &DynamicMessage) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut walk = SampleWalk {
        session,
        method,
        out: &mut out,
    };
    walk.message(sample, session.root, "", 0);
    out
}

struct SampleWalk<'a> {
    session: &'a Session,
    method: &'a str,
    out: &'a mut Vec<Finding>,
}

impl SampleWalk<'_> {
    fn message(&mut self, msg: &DynamicMessage, plan: Option<usize>, prefix: &str, depth: usize) {
        if depth > phi_guard_mask::rewriter::MAX_DEPTH {
            return;
        }
        // The first conditional catalog entry that holds on this value picks its plan, as in
        // the rewriter.
        let plans = &self.session.config.plans;
        let plan = plan.map(|p| {
            plans.messages.get(p).map_or(p, |mp| {
                mp.rules
                    .iter()
                    .find(|(rule, _)| {
                        plans
                            .conditions
                            .get(*rule)
                            .is_some_and(|c| holds(msg, &c.path, &c.test))
                    })
                    .map_or(p, |(_, alt)| *alt)
            })
        });
        for (field, value) in msg.fields() {
            let path = if prefix.is_empty() {
                field.name().to_string()
            } else {
                format!("{prefix}.{}", field.name())
            };
            let node = plan
                .and_then(|i| self.session.config.plans.messages.get(i))
                .and_then(|p| p.field(field.number()))
                .map(|f| f.node);
            let child = match node {
                // Tagged, or an Any (its content is planned by type URL): the filter masks it.
                Some(Node::Leaf { .. } | Node::Any { .. }) => continue,
                Some(Node::Message { class: Some(_), .. }) => continue,
                Some(Node::Message { plan, .. }) => Some(plan),
                _ => None,
            };
            let full = field.full_name().to_string();
            self.value(value, child, &path, &full, depth);
        }
    }

    fn value(&mut self, value: &Value, plan: Option<usize>, path: &str, full: &str, depth: usize) {
        match value {
            Value::String(s) => self.scan(s.as_bytes(), path, full),
            Value::Bytes(b) => self.scan(b, path, full),
            Value::Message(m) => self.message(m, plan, path, depth + 1),
            Value::List(items) => {
                for item in items {
                    self.value(item, plan, &format!("{path}[]"), full, depth);
                }
            }
            Value::Map(entries) => {
                // A map field's plan node is its entry message; values are field 2.
                let value_plan = plan
                    .and_then(|i| self.session.config.plans.messages.get(i))
                    .and_then(|p| p.field(2))
                    .map(|f| f.node);
                let child = match value_plan {
                    Some(Node::Leaf { .. } | Node::Any { .. }) => return,
                    Some(Node::Message { class: Some(_), .. }) => return,
                    Some(Node::Message { plan, .. }) => Some(plan),
                    _ => None,
                };
                for v in entries.values() {
                    self.value(v, child, &format!("{path}{{}}"), full, depth);
                }
            }
            _ => {}
        }
    }

    fn scan(&mut self, text: &[u8], path: &str, full: &str) {
        let mut classes = Vec::new();
        let _ = self.session.config.detectors.each(text, |found| {
            if !classes.contains(&found.class) {
                classes.push(found.class);
            }
        });
        for class in classes {
            let name = self
                .session
                .config
                .class_names
                .get(&class)
                .cloned()
                .unwrap_or_else(|| format!("CLASS_{class}"));
            self.out.push(Finding {
                method: self.method.to_string(),
                path: path.to_string(),
                field: full.to_string(),
                kind: name,
                source: "sample",
            });
        }
    }
}

/// Whether the leaf at `path` (field numbers; a repeated field holds when any element does)
/// of `msg` passes `test`.
fn holds(msg: &DynamicMessage, path: &[u32], test: &phi_guard_mask::catalog::Test) -> bool {
    use phi_guard_mask::catalog::Test;
    let Some((&first, rest)) = path.split_first() else {
        return false;
    };
    let Some(field) = msg.descriptor().get_field(first) else {
        return false;
    };
    if !msg.has_field(&field) {
        return false;
    }
    let value = msg.get_field(&field);
    let check = |v: &Value| -> bool {
        match (v, test) {
            (Value::Message(m), _) => holds(m, rest, test),
            (_, _) if !rest.is_empty() => false,
            (Value::String(s), Test::Bytes(ok)) => ok.iter().any(|o| o == s.as_bytes()),
            (Value::Bytes(b), Test::Bytes(ok)) => ok.iter().any(|o| o == b.as_ref()),
            (Value::EnumNumber(n), Test::Varint(ok)) => ok.contains(&(*n as i64 as u64)),
            (Value::I32(n), Test::Varint(ok)) => ok.contains(&(*n as i64 as u64)),
            (Value::I64(n), Test::Varint(ok)) => ok.contains(&(*n as u64)),
            (Value::U32(n), Test::Varint(ok)) => ok.contains(&u64::from(*n)),
            (Value::U64(n), Test::Varint(ok)) => ok.contains(n),
            (Value::Bool(b), Test::Varint(ok)) => ok.contains(&u64::from(*b)),
            _ => false,
        }
    };
    match value.as_ref() {
        Value::List(items) => items.iter().any(check),
        v => check(v),
    }
}

/// The message descriptor's full name, for reports.
pub fn type_of(msg: &DynamicMessage) -> String {
    msg.descriptor().full_name().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_words_on_underscores_and_camel_case() {
        assert_eq!(words("caregiver_phones"), ["caregiver", "phones"]);
        assert_eq!(words("phoneNumber"), ["phone", "number"]);
        assert_eq!(words("patientMRN"), ["patient", "mrn"]);
        assert_eq!(words("IPAddress"), ["ip", "address"]);
        assert_eq!(words("address_line2"), ["address", "line"]);
        assert_eq!(words("family.value"), ["family", "value"]);
    }

    #[test]
    fn plural_and_camel_case_identifier_names_are_found() {
        for (name, kind, class) in [
            ("caregiver_phones", "phone", "PHONE"),
            ("phones", "phone", "PHONE"),
            ("emails", "email", "EMAIL"),
            ("addresses", "address", "ADDRESS"),
            ("phoneNumber", "phone", "PHONE"),
            ("PhoneNumbers", "phone", "PHONE"),
            ("medical_record_number", "mrn", "MRN"),
            ("medicalRecordNumber", "mrn", "MRN"),
            ("record_numbers", "mrn", "MRN"),
            ("patient_id", "identifier", "OTHER_ID"),
            ("patientId", "identifier", "OTHER_ID"),
            ("patient_ids", "identifier", "OTHER_ID"),
            ("cities", "address", "ADDRESS"),
            ("fax_numbers", "fax", "FAX"),
            ("emergencyContactNames", "name", "NAME"),
            ("ssn", "ssn", "SSN"),
        ] {
            assert_eq!(looks_like(name), Some(kind), "{name}");
            assert_eq!(suggested_class(name), Some(class), "{name}");
        }
    }

    #[test]
    fn innocent_names_are_not_identifiers() {
        // `addressed_at` is when something was dealt with, not an address; `status` only ends
        // in an `s`.
        for name in [
            "status",
            "statuses",
            "gender",
            "addressed_at",
            "result_id",
            "test_code",
            "unit",
            "patients",
            "record_count",
            "is_active",
            "ipsum",
            "created_at",
        ] {
            assert_eq!(looks_like(name), None, "{name}");
        }
    }
}
