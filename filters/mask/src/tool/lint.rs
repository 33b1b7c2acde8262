//! `lint`: untagged response fields that look like one of the 18 HIPAA Safe Harbor
//! identifiers (45 CFR 164.514(b)(2)), by name, and untagged string values of a sample message
//! in which the filter's own free-text detectors find an identifier. A CI pipeline fails on any
//! finding, so a new field or a policy change cannot ship an identifier in clear unnoticed.

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use crate::plan::Node;

use super::coverage::MethodCoverage;
use super::Session;

/// Words (lower case, whole `_`-separated parts of a field name) that name an identifier, with
/// the identifier kind reported.
pub const IDENTIFIER_WORDS: &[(&str, &str)] = &[
    ("name", "name"),
    ("names", "name"),
    ("given", "name"),
    ("family", "name"),
    ("surname", "name"),
    ("firstname", "name"),
    ("lastname", "name"),
    ("address", "address"),
    ("street", "address"),
    ("city", "address"),
    ("county", "address"),
    ("district", "address"),
    ("zip", "address"),
    ("zipcode", "address"),
    ("postal", "address"),
    ("postcode", "address"),
    ("birth", "date"),
    ("birthdate", "date"),
    ("dob", "date"),
    ("deceased", "date"),
    ("death", "date"),
    ("phone", "phone"),
    ("telephone", "phone"),
    ("mobile", "phone"),
    ("telecom", "phone"),
    ("fax", "fax"),
    ("email", "email"),
    ("ssn", "ssn"),
    ("social", "ssn"),
    ("mrn", "mrn"),
    ("identifier", "identifier"),
    ("beneficiary", "health plan number"),
    ("member", "health plan number"),
    ("insurance", "health plan number"),
    ("account", "account number"),
    ("license", "license number"),
    ("licence", "license number"),
    ("certificate", "certificate number"),
    ("vin", "vehicle identifier"),
    ("plate", "vehicle identifier"),
    ("serial", "device identifier"),
    ("udi", "device identifier"),
    ("ip", "IP address"),
    ("photo", "photo"),
    ("fingerprint", "biometric"),
    ("biometric", "biometric"),
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
    let lower = field_name.to_ascii_lowercase();
    lower.split(['_', '.', '-']).find_map(|word| {
        IDENTIFIER_WORDS
            .iter()
            .find(|(w, _)| *w == word)
            .map(|(_, k)| *k)
    })
}

/// Untagged leaves whose name, or the name of the field holding them (FHIR wraps every
/// primitive: `family.value`), looks like an identifier. Fields whose full name (or a prefix
/// of it, ending in `.`) is in `allow` are not reported.
pub fn by_name(report: &[MethodCoverage], allow: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in report {
        for r in &m.rows {
            if r.class.is_some() || r.see.is_some() || matches!(r.kind, "message" | "group") {
                continue;
            }
            if allowed(&r.field, allow) {
                continue;
            }
            let segments: Vec<&str> = r.path.split('.').collect();
            let tail = &segments[segments.len().saturating_sub(2)..];
            if let Some(kind) = tail
                .iter()
                .rev()
                .find_map(|s| looks_like(s.trim_end_matches("[]")))
            {
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
        if depth > crate::rewriter::MAX_DEPTH {
            return;
        }
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
            if matches!(node, Some(Node::Leaf { .. })) {
                continue;
            }
            let child = match node {
                Some(Node::Message { plan: j, .. }) => Some(j),
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
                if matches!(value_plan, Some(Node::Leaf { .. })) {
                    return;
                }
                let child = match value_plan {
                    Some(Node::Message { plan: j, .. }) => Some(j),
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

/// The message descriptor's full name, for reports.
pub fn type_of(msg: &DynamicMessage) -> String {
    msg.descriptor().full_name().to_string()
}
