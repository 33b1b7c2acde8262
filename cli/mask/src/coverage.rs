//! `coverage`: every method's response field paths with the class the filter's plan gives
//! them and each role's action, or `untagged`.
//!
//! The walk follows the descriptor and the filter's own plan side by side, breadth first. A
//! message type reached again in the same planning context (same plan node) is not expanded
//! twice: its row says where it was first expanded (`see …`, its shortest path), which keeps
//! recursive types (FHIR's `Extension.extension`, `Identifier.assigner`) finite. A
//! conditional catalog entry on a type adds a `condition` row, `path<field if catalog[i]>`,
//! under which the type's fields are listed as they are when the condition holds.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{json, Value};

use phi_guard_mask::descriptor::{DescriptorSet, FieldKind};
use phi_guard_mask::plan::{Node, Plans};
use phi_guard_mask::policy::Action;

use crate::Session;

/// One field path of one method's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Dotted field names from the response type; `[]` marks a repeated field.
    pub path: String,
    /// Full name of the field (`package.Message.field`).
    pub field: String,
    /// `string`, `bytes`, `number` (varint, fixed), `message`, `group`.
    pub kind: &'static str,
    /// The class the plan gives this leaf; `None` = untagged.
    pub class: Option<String>,
    /// Role → action name (`reveal`, `redact`, `partial(4)`, `token`, `remove`), for tagged
    /// leaves.
    pub actions: BTreeMap<String, String>,
    /// For a message expanded elsewhere: the path where its fields are listed.
    pub see: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodCoverage {
    pub method: String,
    pub response_type: String,
    /// Whether the filter has a plan for the method (something to mask).
    pub planned: bool,
    pub rows: Vec<Row>,
}

/// The coverage of every method in the session's descriptor set (the synthetic apply
/// method excluded), or of those whose full name starts with one of `only`.
pub fn coverage(session: &Session, only: &[String]) -> Result<Vec<MethodCoverage>, String> {
    let catalog = &session.config.descriptor;
    let roles = session.roles();
    let mut out = Vec::new();
    for m in &catalog.methods {
        if m.full_name == crate::APPLY_METHOD {
            continue;
        }
        if !only.is_empty() && !only.iter().any(|o| m.full_name.starts_with(o.as_str())) {
            continue;
        }
        let root = session.config.plans.method(&m.full_name);
        let mut walk = Walk {
            catalog,
            plans: &session.config.plans,
            session,
            roles: &roles,
            seen: HashMap::new(),
            rows: Vec::new(),
            queue: VecDeque::new(),
        };
        // Breadth first: a type is listed at its shortest path, later ones refer to it.
        walk.queue
            .push_back((m.output_type.clone(), root, String::new(), 0));
        while let Some((t, plan, prefix, depth)) = walk.queue.pop_front() {
            walk.message(&t, plan, &prefix, depth)?;
        }
        out.push(MethodCoverage {
            method: m.full_name.clone(),
            response_type: m.output_type.clone(),
            planned: root
                .and_then(|r| session.config.plans.messages.get(r))
                .is_some_and(|p| p.touch),
            rows: walk.rows,
        });
    }
    Ok(out)
}

struct Walk<'a> {
    catalog: &'a DescriptorSet,
    plans: &'a Plans,
    session: &'a Session,
    roles: &'a [String],
    seen: HashMap<(String, Option<usize>), String>,
    rows: Vec<Row>,
    queue: VecDeque<(String, Option<usize>, String, usize)>,
}

impl Walk<'_> {
    fn message(
        &mut self,
        type_name: &str,
        plan: Option<usize>,
        prefix: &str,
        depth: usize,
    ) -> Result<(), String> {
        let desc = self
            .catalog
            .messages
            .get(type_name)
            .ok_or_else(|| format!("message type {type_name} is not in the descriptor set"))?;
        let mut fields: Vec<_> = desc.fields.iter().collect();
        fields.sort_by_key(|f| f.number);
        for f in fields {
            let path = format!(
                "{prefix}{}{}{}",
                if prefix.is_empty() { "" } else { "." },
                f.name,
                if f.repeated && !desc.map_entry {
                    "[]"
                } else {
                    ""
                }
            );
            let node = plan
                .and_then(|i| self.plans.messages.get(i))
                .and_then(|p| p.field(f.number))
                .map(|fp| fp.node);
            let full = format!("{type_name}.{}", f.name);
            match f.kind {
                FieldKind::Message | FieldKind::Group => {
                    let child_type = f.type_name.clone().unwrap_or_default();
                    let (child, class) = match node {
                        Some(Node::Message { plan, class, .. }) => (Some(plan), class),
                        Some(Node::Any { class }) => {
                            // Planned at run time by the type URL: every type's plan applies.
                            let (class, actions) = self.class_and_actions(class, true);
                            self.rows.push(Row {
                                path,
                                field: full,
                                kind: "any",
                                class,
                                actions,
                                see: None,
                            });
                            continue;
                        }
                        _ => (None, None),
                    };
                    let key = (child_type.clone(), child);
                    let see = self.seen.get(&key).cloned();
                    let (class, actions) = self.class_and_actions(class, true);
                    self.rows.push(Row {
                        path: path.clone(),
                        field: full,
                        kind: if f.kind == FieldKind::Group {
                            "group"
                        } else {
                            "message"
                        },
                        class,
                        actions,
                        see: see.clone(),
                    });
                    if see.is_none() {
                        if depth > phi_guard_mask::rewriter::MAX_DEPTH {
                            return Err(format!(
                                "{path}: nesting deeper than {}",
                                phi_guard_mask::rewriter::MAX_DEPTH
                            ));
                        }
                        self.seen.insert(key, path.clone());
                        self.queue.push_back((child_type, child, path, depth + 1));
                    }
                }
                kind => {
                    let textual = matches!(kind, FieldKind::String | FieldKind::Bytes);
                    let (class, actions) = match node {
                        Some(Node::Leaf { class, .. }) => {
                            self.class_and_actions(Some(class), textual)
                        }
                        _ => (None, BTreeMap::new()),
                    };
                    self.rows.push(Row {
                        path,
                        field: full,
                        kind: match kind {
                            FieldKind::String => "string",
                            FieldKind::Bytes => "bytes",
                            _ => "number",
                        },
                        class,
                        actions,
                        see: None,
                    });
                }
            }
        }
        // Conditional catalog entries on this type: each has its own plan, used when it holds.
        let rules = plan
            .and_then(|i| self.plans.messages.get(i))
            .map(|p| p.rules.clone())
            .unwrap_or_default();
        for (rule, alternative) in rules {
            let Some(r) = self.session.config.catalog.rules.get(rule) else {
                continue;
            };
            let what = match &r.field {
                Some(field) => format!("{field} if {}", r.origin),
                None => format!("if {}", r.origin),
            };
            let path = format!("{prefix}<{what}>");
            let key = (type_name.to_string(), Some(alternative));
            let see = self.seen.get(&key).cloned();
            let (class, actions) = self.class_and_actions(Some(r.class), true);
            self.rows.push(Row {
                path: path.clone(),
                field: type_name.to_string(),
                kind: "condition",
                class,
                actions,
                see: see.clone(),
            });
            if see.is_none() {
                self.seen.insert(key, path.clone());
                self.queue
                    .push_back((type_name.to_string(), Some(alternative), path, depth + 1));
            }
        }
        Ok(())
    }

    fn class_and_actions(
        &self,
        class: Option<phi_guard_mask::plan::Class>,
        textual: bool,
    ) -> (Option<String>, BTreeMap<String, String>) {
        let Some(class) = class else {
            return (None, BTreeMap::new());
        };
        let name = self
            .session
            .config
            .class_names
            .get(&class)
            .cloned()
            .unwrap_or_else(|| self.catalog.class_name(class));
        let actions = self
            .roles
            .iter()
            .map(|r| {
                let (_, block) = self.session.config.policy.for_role(Some(r));
                (r.clone(), action_name(block.action(class), textual))
            })
            .collect();
        (Some(name), actions)
    }
}

/// How an action reads in the report. A number, bool or enum leaf is kept only under
/// `reveal` and dropped under anything else, so that is what the report says.
pub fn action_name(action: &Action, textual: bool) -> String {
    match action {
        Action::Reveal => "reveal".into(),
        _ if !textual => "remove".into(),
        Action::Redact { replacement: None } => "redact".into(),
        Action::Redact {
            replacement: Some(r),
        } => format!("redact({r:?})"),
        Action::Partial { keep_last } => format!("partial({keep_last})"),
        Action::Token => "token".into(),
        Action::Remove => "remove".into(),
        Action::Year { max_age: None } => "year".into(),
        Action::Year { max_age: Some(n) } => format!("year(max_age {n})"),
        Action::Zip3 { .. } => "zip3".into(),
        Action::Age { max } => format!("age(max {max})"),
    }
}

/// The report as text: one line per field path, `class  role=action …` or `untagged`.
pub fn to_text(report: &[MethodCoverage]) -> String {
    let mut out = String::new();
    for m in report {
        out.push_str(&format!(
            "{} -> {}{}\n",
            m.method,
            m.response_type,
            if m.planned {
                ""
            } else {
                "  (nothing to mask: responses pass unchanged)"
            }
        ));
        for r in &m.rows {
            let what = match (&r.class, &r.see, r.kind) {
                (_, Some(see), _) => format!("see {see}"),
                (None, None, "message" | "group") => continue,
                (None, None, "any") => "by type URL".to_string(),
                (None, None, _) => "untagged".to_string(),
                (Some(c), None, _) => {
                    let acts: Vec<String> =
                        r.actions.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{c}  {}", acts.join(" "))
                }
            };
            out.push_str(&format!("  {}  ({})  {what}\n", r.path, r.kind));
        }
    }
    out
}

/// The report as JSON: `{"methods": [{"method", "response_type", "planned", "fields":
/// [{"path", "field", "kind", "class", "actions", "see"}]}]}` (`class` null = untagged).
pub fn to_json(report: &[MethodCoverage]) -> Value {
    let methods: Vec<Value> = report
        .iter()
        .map(|m| {
            let fields: Vec<Value> = m
                .rows
                .iter()
                .map(|r| {
                    json!({
                        "path": r.path, "field": r.field, "kind": r.kind, "class": r.class,
                        "actions": r.actions, "see": r.see,
                    })
                })
                .collect();
            json!({"method": m.method, "response_type": m.response_type, "planned": m.planned, "fields": fields})
        })
        .collect();
    json!({ "methods": methods })
}
