//! Per-method rewrite plans: for every message type a response can hold, what to do with each
//! field number.
//!
//! A plan is a graph of [`MessagePlan`]s in an arena (recursive message types make it a graph,
//! not a tree), keyed by (message type, class handed down, conditional rule). Every field the
//! descriptor set declares is in its message's plan: fields that can carry a class as
//! [`Node::Leaf`], sub-messages as [`Node::Message`], `google.protobuf.Any` as [`Node::Any`],
//! everything else as [`Node::Keep`]. A field number that is not in the plan is an unknown
//! field, which the rewriter drops for roles that do not reveal everything (unless the config
//! keeps unknown fields).
//!
//! Which class a field gets is the catalog's precedence (see [`crate::catalog`]):
//! conditional field entry, field entry, `phi.v1.sensitivity` annotation, conditional type
//! entry, type entry, the class handed down from the enclosing value. A class on a
//! message-typed field applies to every field inside it at every depth, except fields with a
//! class of their own (the nearest wins); on a map field it covers the values (keys stay
//! readable); on a repeated field every element.
//!
//! Non-textual leaves (numbers, bools, enums) that carry a class are kept under `reveal` and
//! dropped under every action that cannot express them (`age` keeps small integers): they have
//! no characters to redact, mask or tokenise, and dropping them is the only way not to leak
//! them (for example a `google.protobuf.Timestamp` date of birth under `remove`). Date
//! messages (FHIR `Date`/`DateTime`: `value_us` + `timezone` + `precision`, and
//! `google.protobuf.Timestamp`) are recognised by shape so the `year` action can rewrite them
//! whole.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::catalog::{Catalog, Condition};
use crate::descriptor::{DescriptorError, DescriptorSet, FieldKind};
use crate::wire;

/// A sensitivity class number (`phi.v1.Sensitivity` value, or a built-in or catalog class).
pub type Class = i32;

/// The message type `Any` values are resolved from.
pub const ANY_TYPE: &str = "google.protobuf.Any";
const TIMESTAMP_TYPE: &str = "google.protobuf.Timestamp";

/// How a scalar leaf's number reads, for the `age` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    /// int32, int64 (two's complement varint).
    Signed,
    /// uint32, uint64.
    Unsigned,
    /// sint32, sint64.
    ZigZag,
    /// float.
    F32,
    /// double.
    F64,
    /// bool, enum, fixed-width integers: not an age.
    NotANumber,
}

/// What the wire value of a planned leaf must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// `string`: a LEN value holding UTF-8 text.
    Text,
    /// `bytes`: a LEN value, any bytes.
    Bytes,
    /// A number with this wire type; packed repeated (LEN) values are accepted too.
    Scalar(u8, Num),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A declared field nothing can change: copied. A record with another wire type (LEN is
    /// also accepted when `packable`) is what a parser treats as an unknown field.
    Keep {
        wire: u8,
        packable: bool,
    },
    Leaf {
        class: Class,
        kind: LeafKind,
    },
    /// A LEN-encoded sub-message to descend into (plain, repeated element, or map entry).
    /// `class` is the class the value carries (for the date actions); `touch` whether the
    /// sub-plan can change anything apart from unknown fields.
    Message {
        plan: usize,
        class: Option<Class>,
        touch: bool,
    },
    /// A `google.protobuf.Any`, resolved by its type URL; `class` is handed to its content.
    Any {
        class: Option<Class>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPlan {
    pub number: u32,
    pub node: Node,
}

/// A message type the `year` action rewrites whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateShape {
    /// FHIR `Date` / `DateTime`: field numbers of `value_us` (int64 microseconds since the
    /// epoch), `timezone` (string) and `precision` (enum), and the number of its `YEAR` value.
    Fhir {
        value_us: u32,
        timezone: u32,
        precision: u32,
        year: u64,
    },
    /// `google.protobuf.Timestamp` (seconds = 1, nanos = 2).
    Timestamp,
}

/// Fields of one message type, sorted by number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagePlan {
    pub fields: Vec<FieldPlan>,
    /// `dense[n]` is 1 + the index in `fields` of field `n`, for small field numbers: the
    /// common case avoids a binary search per record.
    dense: Vec<u8>,
    /// More fields than the dense table can index.
    large: bool,
    /// Conditional catalog entries on this type: (index into [`Plans::conditions`], the plan
    /// to use when it holds), tried in order, the first that holds wins.
    pub rules: Vec<(usize, usize)>,
    pub date: Option<DateShape>,
    /// Whether rewriting can change anything here apart from unknown fields.
    pub touch: bool,
}

const DENSE_LIMIT: u32 = 128;

impl MessagePlan {
    #[inline]
    pub fn field(&self, number: u32) -> Option<&FieldPlan> {
        if number < DENSE_LIMIT && !self.large {
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
        self.dense.clear();
        // The dense table holds u8 indices: larger messages use the binary search only.
        self.large = self.fields.len() >= 255;
        if self.large {
            return;
        }
        let max = self
            .fields
            .iter()
            .filter(|f| f.number < DENSE_LIMIT)
            .map(|f| f.number as usize + 1)
            .max()
            .unwrap_or(0);
        self.dense = vec![0; max];
        for (i, f) in self.fields.iter().enumerate() {
            if f.number < DENSE_LIMIT {
                self.dense[f.number as usize] = i as u8 + 1;
            }
        }
    }
}

/// Every method's plan, over one arena.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    pub messages: Vec<MessagePlan>,
    /// `package.Service/Method` → root plan of its response type, for every method of the set.
    pub methods: HashMap<String, usize>,
    /// Message full name → its plan as a root (with its type entry's class, if any).
    pub types: HashMap<String, usize>,
    /// Class handed to an `Any` → content type → plan.
    any: HashMap<Option<Class>, HashMap<String, usize>>,
    /// The catalog's conditions, by rule index.
    pub conditions: Vec<Condition>,
}

type Key = (String, Option<Class>, Option<usize>);

impl Plans {
    /// Plans every method and message type of `set` under `catalog`.
    pub fn build(set: &DescriptorSet, catalog: &Catalog) -> Result<Self, DescriptorError> {
        let mut b = Builder {
            set,
            catalog,
            arena: Vec::new(),
            memo: HashMap::new(),
            queue: VecDeque::new(),
            any_classes: BTreeSet::new(),
            groups: Vec::new(),
        };
        let mut methods = HashMap::new();
        for m in &set.methods {
            if !set.messages.contains_key(&m.output_type) {
                return Err(DescriptorError(format!(
                    "method {}: response type {} is not in the descriptor set",
                    m.full_name, m.output_type
                )));
            }
            let class = catalog.type_class(&m.output_type);
            methods.insert(m.full_name.clone(), b.plan_for(&m.output_type, class, None));
        }
        let mut names: Vec<&String> = set.messages.keys().collect();
        names.sort();
        let mut types = HashMap::new();
        for name in &names {
            types.insert(
                (*name).clone(),
                b.plan_for(name, catalog.type_class(name), None),
            );
        }
        b.drain()?;
        // Any content, for every class an Any field hands down (new Anys may appear inside).
        let mut any: HashMap<Option<Class>, HashMap<String, usize>> = HashMap::new();
        any.insert(None, types.clone());
        loop {
            let pending: Vec<Option<Class>> = b
                .any_classes
                .iter()
                .copied()
                .filter(|c| !any.contains_key(c))
                .collect();
            if pending.is_empty() {
                break;
            }
            for class in pending {
                let mut by_type = HashMap::new();
                for name in &names {
                    let c = class.or(catalog.type_class(name));
                    by_type.insert((*name).clone(), b.plan_for(name, c, None));
                }
                b.drain()?;
                any.insert(class, by_type);
            }
        }
        let touch = b.touch();
        for (name, idx) in &b.groups {
            if touch[*idx] {
                return Err(DescriptorError(format!(
                    "field {name}: sensitive fields inside proto2 groups are not supported"
                )));
            }
        }
        let mut messages = b.arena;
        for (i, m) in messages.iter_mut().enumerate() {
            m.touch = touch[i];
            for f in &mut m.fields {
                if let Node::Message { plan, touch: t, .. } = &mut f.node {
                    *t = touch[*plan];
                }
            }
            m.index();
        }
        Ok(Plans {
            messages,
            methods,
            types,
            any,
            conditions: catalog.rules.iter().map(|r| r.condition.clone()).collect(),
        })
    }

    /// The root plan index of a method's response.
    pub fn method(&self, full_name: &str) -> Option<usize> {
        self.methods.get(full_name).copied()
    }

    /// The root plan index of a message type (for masking messages outside an RPC).
    pub fn message_type(&self, full_name: &str) -> Option<usize> {
        self.types.get(full_name).copied()
    }

    /// The plan for the content of an `Any` of type `type_name` carrying `class`.
    #[inline]
    pub fn any(&self, class: Option<Class>, type_name: &str) -> Option<usize> {
        self.any.get(&class)?.get(type_name).copied()
    }
}

struct Builder<'a> {
    set: &'a DescriptorSet,
    catalog: &'a Catalog,
    arena: Vec<MessagePlan>,
    memo: HashMap<Key, usize>,
    /// Plans allocated but not built yet (a worklist: FHIR's type graph is deeper than any
    /// sensible recursion).
    queue: VecDeque<(Key, usize)>,
    /// Classes handed to `Any` fields.
    any_classes: BTreeSet<Option<Class>>,
    /// Group fields (by display name) and their plans, checked after the touch analysis.
    groups: Vec<(String, usize)>,
}

impl Builder<'_> {
    fn plan_for(&mut self, type_name: &str, class: Option<Class>, rule: Option<usize>) -> usize {
        let key = (type_name.to_string(), class, rule);
        if let Some(&idx) = self.memo.get(&key) {
            return idx;
        }
        let idx = self.arena.len();
        self.arena.push(MessagePlan::default());
        self.memo.insert(key.clone(), idx);
        self.queue.push_back((key, idx));
        idx
    }

    fn drain(&mut self) -> Result<(), DescriptorError> {
        while let Some(((type_name, class, rule), idx)) = self.queue.pop_front() {
            self.build(&type_name, class, rule, idx)?;
        }
        Ok(())
    }

    fn build(
        &mut self,
        type_name: &str,
        entering: Option<Class>,
        rule: Option<usize>,
        idx: usize,
    ) -> Result<(), DescriptorError> {
        let set = self.set;
        let catalog = self.catalog;
        let desc = set.messages.get(type_name).ok_or_else(|| {
            DescriptorError(format!(
                "message type {type_name} is not in the descriptor set"
            ))
        })?;
        let rule_ref = rule.map(|r| &catalog.rules[r]);
        let mut fields = Vec::with_capacity(desc.fields.len());
        for f in &desc.fields {
            let map_key = desc.map_entry && f.number == 1;
            // The class handed down to this field: a type rule's class for the value's fields
            // (its discriminator keeps the class the value came with).
            let base = match rule_ref {
                Some(r) if r.field.is_none() && r.discriminator != f.name => Some(r.class),
                _ => entering,
            };
            let type_rule_applies =
                matches!(rule_ref, Some(r) if r.field.is_none() && r.discriminator != f.name);
            let own = match rule_ref {
                Some(r) if r.field.as_deref() == Some(f.name.as_str()) => Some(r.class),
                _ if type_rule_applies => None,
                _ => catalog.field_class(type_name, &f.name).or(f.sensitivity),
            };
            // Map keys stay readable: the class of a map field covers its values.
            let class = if map_key { None } else { own.or(base) };
            let node = match f.kind {
                FieldKind::String => leaf(class, LeafKind::Text, wire::LEN, false),
                FieldKind::Bytes => leaf(class, LeafKind::Bytes, wire::LEN, false),
                FieldKind::Varint => leaf(
                    class,
                    LeafKind::Scalar(wire::VARINT, num(f.ty)),
                    wire::VARINT,
                    f.repeated,
                ),
                FieldKind::Fixed64 => leaf(
                    class,
                    LeafKind::Scalar(wire::I64, num(f.ty)),
                    wire::I64,
                    f.repeated,
                ),
                FieldKind::Fixed32 => leaf(
                    class,
                    LeafKind::Scalar(wire::I32, num(f.ty)),
                    wire::I32,
                    f.repeated,
                ),
                FieldKind::Message => {
                    let child = f.type_name.as_deref().unwrap_or_default();
                    let c = if map_key {
                        None
                    } else {
                        own.or(catalog.type_class(child)).or(base)
                    };
                    if child == ANY_TYPE {
                        self.any_classes.insert(c);
                        Node::Any { class: c }
                    } else {
                        Node::Message {
                            plan: self.plan_for(child, c, None),
                            class: c,
                            touch: true,
                        }
                    }
                }
                FieldKind::Group => {
                    let display = format!("{type_name}.{}", f.name);
                    if class.is_some() {
                        return Err(DescriptorError(format!(
                            "field {display}: sensitive proto2 groups are not supported"
                        )));
                    }
                    let child = f.type_name.as_deref().unwrap_or_default();
                    let g = self.plan_for(child, None, None);
                    self.groups.push((display, g));
                    Node::Keep {
                        wire: wire::SGROUP,
                        packable: false,
                    }
                }
            };
            fields.push(FieldPlan {
                number: f.number,
                node,
            });
        }
        let mut rules = Vec::new();
        if rule.is_none() {
            for r in catalog.rules_on(type_name).collect::<Vec<_>>() {
                let variant = self.plan_for(type_name, entering, Some(r));
                rules.push((r, variant));
            }
        }
        let plan = &mut self.arena[idx];
        plan.fields = fields;
        plan.rules = rules;
        plan.date = date_shape(set, type_name);
        Ok(())
    }

    /// Which plans can change something apart from unknown fields (a fixpoint: recursive
    /// types make cycles).
    fn touch(&self) -> Vec<bool> {
        let mut touch = vec![false; self.arena.len()];
        loop {
            let mut changed = false;
            for (i, m) in self.arena.iter().enumerate() {
                if touch[i] {
                    continue;
                }
                let any = !m.rules.is_empty()
                    || m.fields.iter().any(|f| match f.node {
                        Node::Leaf { .. } | Node::Any { .. } => true,
                        Node::Message { plan, .. } => touch[plan],
                        Node::Keep { .. } => false,
                    });
                if any {
                    touch[i] = true;
                    changed = true;
                }
            }
            if !changed {
                return touch;
            }
        }
    }
}

fn leaf(class: Option<Class>, kind: LeafKind, wire: u8, packable: bool) -> Node {
    match class {
        Some(class) => Node::Leaf { class, kind },
        None => Node::Keep { wire, packable },
    }
}

fn num(ty: u8) -> Num {
    match ty {
        3 | 5 => Num::Signed,
        4 | 13 => Num::Unsigned,
        17 | 18 => Num::ZigZag,
        2 => Num::F32,
        1 => Num::F64,
        _ => Num::NotANumber,
    }
}

/// Recognises the date messages the `year` action rewrites whole.
fn date_shape(set: &DescriptorSet, type_name: &str) -> Option<DateShape> {
    if type_name == TIMESTAMP_TYPE {
        return Some(DateShape::Timestamp);
    }
    let desc = set.messages.get(type_name)?;
    let by_name = |n: &str| desc.fields.iter().find(|f| f.name == n && !f.repeated);
    let value_us = by_name("value_us").filter(|f| f.ty == 3)?;
    let timezone = by_name("timezone").filter(|f| f.kind == FieldKind::String)?;
    let precision = by_name("precision").filter(|f| f.ty == 14)?;
    let year = set
        .enums
        .get(precision.type_name.as_deref()?)?
        .iter()
        .find(|(n, _)| n == "YEAR")?
        .1;
    Some(DateShape::Fhir {
        value_us: value_us.number,
        timezone: timezone.number,
        precision: precision.number,
        year: i64::from(year) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Plans {
        let set = DescriptorSet::decode(crate::testdata::demo_descriptor_set()).unwrap();
        Plans::build(&set, &Catalog::default()).unwrap()
    }

    fn node(plans: &Plans, msg: usize, number: u32) -> Option<Node> {
        plans.messages[msg].field(number).map(|f| f.node)
    }

    fn leaf(plans: &Plans, msg: usize, number: u32) -> Option<(Class, LeafKind)> {
        match node(plans, msg, number)? {
            Node::Leaf { class, kind } => Some((class, kind)),
            _ => None,
        }
    }

    fn child(plans: &Plans, msg: usize, number: u32) -> usize {
        match node(plans, msg, number).unwrap() {
            Node::Message { plan, .. } => plan,
            other => panic!("field {number} is {other:?}"),
        }
    }

    #[test]
    fn plans_the_demo_patient() {
        let plans = demo();
        let p = plans.method("health.v1.PatientService/GetPatient").unwrap();
        assert_eq!(leaf(&plans, p, 4), Some((1, LeafKind::Text)), "ssn");
        assert!(
            matches!(node(&plans, p, 1), Some(Node::Keep { wire: 2, .. })),
            "patient_id kept"
        );
        assert!(
            matches!(
                node(&plans, p, 11),
                Some(Node::Keep {
                    wire: 0,
                    packable: true
                })
            ),
            "allergy codes kept"
        );
        assert!(node(&plans, p, 99).is_none(), "unknown");
        let name = child(&plans, p, 3);
        assert_eq!(leaf(&plans, name, 1), Some((3, LeafKind::Text)));
        assert!(matches!(node(&plans, name, 3), Some(Node::Keep { .. })));
        // map<string,string> identifiers [MRN]: values only.
        let entry = child(&plans, p, 8);
        assert!(matches!(node(&plans, entry, 1), Some(Node::Keep { .. })));
        assert_eq!(leaf(&plans, entry, 2), Some((2, LeafKind::Text)));
        // oneof members are plain fields.
        assert_eq!(leaf(&plans, p, 10), Some((6, LeafKind::Text)));
        child(&plans, p, 9);
        assert!(plans.messages[p].touch);
    }

    #[test]
    fn every_method_has_a_plan() {
        let plans = demo();
        let del = plans
            .method("health.v1.PatientService/DeletePatient")
            .unwrap();
        assert!(!plans.messages[del].touch, "nothing sensitive in it");
        assert!(plans
            .method("health.v1.PatientService/ListEncounters")
            .is_some());
        assert!(plans.method("nope.Svc/Get").is_none());
        assert!(plans.message_type("health.v1.Address").is_some());
    }
}
