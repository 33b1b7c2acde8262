//! Per-method rewrite plans: which field numbers to touch, with which class, at which depth.
//!
//! A plan is a graph of [`MessagePlan`]s in an arena (recursive message types make it a graph,
//! not a tree). It holds only fields that can carry a class: annotated fields, and message
//! fields whose type leads, at any depth, to one. Everything else is absent and therefore
//! passes through the rewriter byte for byte.
//!
//! How a class reaches a field:
//! - a string/bytes/scalar field gets its own annotation;
//! - a message-typed field annotated with class C hands C down to every field inside it, at
//!   every depth, except fields that carry their own annotation (the nearest annotation wins);
//! - on a map field the class applies to the values only (keys are left alone); a map value
//!   that is a message hands the class down as above;
//! - a repeated field's class applies to every element.
//!
//! Non-textual leaves (numbers, bools, enums) that carry a class, directly or handed down, are
//! kept under `reveal` and dropped under every other action: they have no characters to
//! redact, mask or tokenise, and dropping them is the only way not to leak them (for example a
//! `google.protobuf.Timestamp` date of birth annotated `DOB`).

use std::collections::HashMap;

use crate::descriptor::{Catalog, DescriptorError, FieldKind};

/// A sensitivity class number (`phi.v1.Sensitivity` value).
pub type Class = i32;

/// Deepest message nesting a plan is built for; the rewriter bounds input depth separately.
const MAX_PLAN_DEPTH: usize = 100;

/// What the wire value of a planned leaf must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// `string`: a LEN value holding UTF-8 text.
    Text,
    /// `bytes`: a LEN value, any bytes.
    Bytes,
    /// A number with this wire type; packed repeated (LEN) values are accepted too.
    Scalar(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Leaf {
        class: Class,
        kind: LeafKind,
    },
    /// A LEN-encoded sub-message to descend into (plain, repeated element, or map entry).
    Message(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPlan {
    pub number: u32,
    pub node: Node,
}

/// Planned fields of one message type, sorted by number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagePlan {
    pub fields: Vec<FieldPlan>,
    /// `dense[n]` is 1 + the index in `fields` of field `n`, for small field numbers: the
    /// common case avoids a binary search per record.
    dense: Vec<u8>,
}

const DENSE_LIMIT: u32 = 128;

impl MessagePlan {
    #[inline]
    pub fn field(&self, number: u32) -> Option<&FieldPlan> {
        if number < DENSE_LIMIT {
            return match self.dense.get(number as usize) {
                Some(&i) if i > 0 => self.fields.get(i as usize - 1),
                _ => None,
            };
        }
        self.fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()
            .map(|i| &self.fields[i])
    }

    fn index(&mut self) {
        self.fields.sort_by_key(|f| f.number);
        let small: Vec<_> = self
            .fields
            .iter()
            .enumerate()
            .filter(|(i, f)| f.number < DENSE_LIMIT && *i < 255)
            .map(|(i, f)| (f.number as usize, i as u8 + 1))
            .collect();
        // Fields past index 254 fall back to the binary search; the dense table would alias.
        self.dense = vec![0; small.iter().map(|(n, _)| n + 1).max().unwrap_or(0)];
        for (n, i) in small {
            self.dense[n] = i;
        }
        if self.fields.len() >= 255 {
            self.dense.clear();
        }
    }
}

/// Every method's plan, over one arena.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    pub messages: Vec<MessagePlan>,
    /// `package.Service/Method` → root message plan, only for methods with something to mask.
    pub methods: HashMap<String, usize>,
}

impl Plans {
    pub fn build(catalog: &Catalog) -> Result<Self, DescriptorError> {
        let mut b = Builder {
            catalog,
            arena: Vec::new(),
            memo: HashMap::new(),
            groups: Vec::new(),
        };
        let mut roots = Vec::new();
        for m in &catalog.methods {
            roots.push((m.full_name.clone(), b.message(&m.output_type, None, 0)?));
        }
        let nonempty = b.prune();
        for (name, idx) in &b.groups {
            if nonempty[*idx] {
                return Err(DescriptorError(format!(
                    "field {name}: sensitive fields inside proto2 groups are not supported"
                )));
            }
        }
        let mut plans = Plans {
            messages: b.arena,
            methods: HashMap::new(),
        };
        for m in &mut plans.messages {
            m.index();
        }
        for (name, idx) in roots {
            if nonempty[idx] {
                plans.methods.insert(name, idx);
            }
        }
        Ok(plans)
    }

    /// The root plan index of a method, if it has anything to mask.
    pub fn method(&self, full_name: &str) -> Option<usize> {
        self.methods.get(full_name).copied()
    }
}

struct Builder<'a> {
    catalog: &'a Catalog,
    arena: Vec<MessagePlan>,
    memo: HashMap<(String, Option<Class>), usize>,
    /// Group fields (by display name) and their plans, checked for emptiness after pruning.
    groups: Vec<(String, usize)>,
}

impl Builder<'_> {
    fn message(
        &mut self,
        type_name: &str,
        inherited: Option<Class>,
        depth: usize,
    ) -> Result<usize, DescriptorError> {
        let key = (type_name.to_string(), inherited);
        if let Some(&idx) = self.memo.get(&key) {
            return Ok(idx);
        }
        if depth > MAX_PLAN_DEPTH {
            return Err(DescriptorError(format!(
                "message {type_name}: nesting deeper than {MAX_PLAN_DEPTH}"
            )));
        }
        let desc = self.catalog.messages.get(type_name).ok_or_else(|| {
            DescriptorError(format!(
                "message type {type_name} is not in the descriptor set"
            ))
        })?;
        let idx = self.arena.len();
        self.arena.push(MessagePlan::default());
        self.memo.insert(key, idx);
        let mut fields = Vec::new();
        for f in &desc.fields {
            // Map keys stay readable: the class of a map field covers its values.
            let class = if desc.map_entry && f.number == 1 {
                None
            } else {
                f.sensitivity.or(inherited)
            };
            let leaf = |kind| class.map(|class| Node::Leaf { class, kind });
            let node = match f.kind {
                FieldKind::String => leaf(LeafKind::Text),
                FieldKind::Bytes => leaf(LeafKind::Bytes),
                FieldKind::Varint => leaf(LeafKind::Scalar(crate::wire::VARINT)),
                FieldKind::Fixed64 => leaf(LeafKind::Scalar(crate::wire::I64)),
                FieldKind::Fixed32 => leaf(LeafKind::Scalar(crate::wire::I32)),
                FieldKind::Message => {
                    let child = f.type_name.as_deref().unwrap_or_default();
                    Some(Node::Message(self.message(child, class, depth + 1)?))
                }
                FieldKind::Group => {
                    let display = format!("{type_name}.{}", f.name);
                    if class.is_some() {
                        return Err(DescriptorError(format!(
                            "field {display}: sensitive proto2 groups are not supported"
                        )));
                    }
                    let child = f.type_name.as_deref().unwrap_or_default();
                    let g = self.message(child, None, depth + 1)?;
                    self.groups.push((display, g));
                    None
                }
            };
            if let Some(node) = node {
                fields.push(FieldPlan {
                    number: f.number,
                    node,
                });
            }
        }
        self.arena[idx].fields = fields;
        Ok(idx)
    }

    /// Drops message fields whose plan has nothing to touch (a fixpoint, because recursive
    /// types make cycles) and returns which plans are non-empty.
    fn prune(&mut self) -> Vec<bool> {
        let mut nonempty = vec![false; self.arena.len()];
        loop {
            let mut changed = false;
            for (i, m) in self.arena.iter().enumerate() {
                if nonempty[i] {
                    continue;
                }
                let any = m.fields.iter().any(|f| match f.node {
                    Node::Leaf { .. } => true,
                    Node::Message(j) => nonempty[j],
                });
                if any {
                    nonempty[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for m in &mut self.arena {
            m.fields.retain(|f| match f.node {
                Node::Leaf { .. } => true,
                Node::Message(j) => nonempty[j],
            });
        }
        nonempty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Plans {
        Plans::build(&Catalog::decode(crate::testdata::demo_descriptor_set()).unwrap()).unwrap()
    }

    fn leaf(plans: &Plans, msg: usize, number: u32) -> Option<(Class, LeafKind)> {
        match plans.messages[msg].field(number)?.node {
            Node::Leaf { class, kind } => Some((class, kind)),
            Node::Message(_) => None,
        }
    }

    fn child(plans: &Plans, msg: usize, number: u32) -> usize {
        match plans.messages[msg].field(number).unwrap().node {
            Node::Message(i) => i,
            other => panic!("field {number} is {other:?}"),
        }
    }

    #[test]
    fn plans_the_demo_patient() {
        let plans = demo();
        let p = plans.method("health.v1.PatientService/GetPatient").unwrap();
        assert_eq!(leaf(&plans, p, 4), Some((1, LeafKind::Text)), "ssn");
        assert!(plans.messages[p].field(1).is_none(), "patient_id untouched");
        assert!(
            plans.messages[p].field(11).is_none(),
            "allergy codes untouched"
        );
        assert!(plans.messages[p].field(14).is_none(), "tenant untouched");
        let name = child(&plans, p, 3);
        assert_eq!(leaf(&plans, name, 1), Some((3, LeafKind::Text)));
        assert!(plans.messages[name].field(3).is_none(), "prefix untouched");
        // map<string,string> identifiers [MRN]: values only.
        let entry = child(&plans, p, 8);
        assert!(plans.messages[entry].field(1).is_none());
        assert_eq!(leaf(&plans, entry, 2), Some((2, LeafKind::Text)));
        // oneof members are plain fields.
        assert_eq!(leaf(&plans, p, 10), Some((6, LeafKind::Text)));
        child(&plans, p, 9);
    }

    #[test]
    fn methods_without_sensitive_output_have_no_plan() {
        let plans = demo();
        assert!(plans
            .method("health.v1.PatientService/DeletePatient")
            .is_none());
        assert!(plans
            .method("health.v1.PatientService/ListEncounters")
            .is_some());
        assert!(plans.method("nope.Svc/Get").is_none());
    }
}
