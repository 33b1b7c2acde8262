//! The `phi-guard-mask` command-line tool's logic: build a pruned descriptor
//! set, show what each role sees of every response field, lint for untagged identifiers, and
//! mask messages offline. Everything that decides or transforms a value goes through the
//! filter's own [`MaskConfig`], plans and rewriter: the tool never re-implements them.

pub mod build;
pub mod coverage;
pub mod lint;

use base64::Engine;
use serde_json::Value;

use phi_guard_mask::config::MaskConfig;
use phi_guard_mask::rewriter::Counts;

/// The synthetic method through which [`Session`] plans a message type given by name: the
/// filter plans per method, so the tool appends a one-method service returning that type.
pub const APPLY_METHOD: &str = "phi_guard_mask.tool.Apply/Mask";

/// A parsed filter configuration plus, optionally, a plan for one message type.
pub struct Session {
    pub config: MaskConfig,
    /// The encoded descriptor set the configuration was built from (without the synthetic
    /// service).
    pub set: Vec<u8>,
    /// The plan root of the message type asked for, when it has anything to mask.
    pub root: Option<usize>,
    pub pool: prost_reflect::DescriptorPool,
    /// Parsed for a static check ([`Session::inspect`]): a placeholder token key, so
    /// [`Session::mask`] refuses to run.
    inspection: bool,
}

/// What [`Session::inspect`] hands the policy as the token key: `coverage` and `lint` never
/// emit a masked value, so the production key stays out of CI.
const PLACEHOLDER_KEY: &str = "phi-guard-mask placeholder: static checks emit no token";
/// The variable name a placeholder key is filed under when the policy names none.
const PLACEHOLDER_KEY_ENV: &str = "PHI_GUARD_MASK_PLACEHOLDER_KEY";

impl Session {
    /// Parses `policy` (the filter's JSON configuration) for masking values (`apply`). `set`,
    /// when given, replaces its `descriptor_set`; `message_type` adds a plan for that type.
    /// The token key is read from the process environment variable the policy's
    /// `token_key_env` names, or `token_key_env` when given (it overrides the policy's).
    pub fn new(
        policy: &[u8],
        set: Option<&[u8]>,
        message_type: Option<&str>,
    ) -> Result<Self, String> {
        Self::open(policy, set, message_type, None, false)
    }

    /// As [`Session::new`], with the token key in the environment variable `token_key_env`
    /// instead of the one the policy names.
    pub fn with_token_key_env(
        policy: &[u8],
        set: Option<&[u8]>,
        message_type: Option<&str>,
        token_key_env: &str,
    ) -> Result<Self, String> {
        Self::open(policy, set, message_type, Some(token_key_env), false)
    }

    /// Parses `policy` for a static check that never emits a masked value (`coverage`,
    /// `lint`): the token key is a placeholder (whether or not `token_key_env` is given or
    /// set: a CI check needs no production key), `roles` may be left out (every role gets
    /// `default`), and an API with nothing tagged is accepted. [`Session::mask`] refuses to run
    /// on such a session.
    pub fn inspect(
        policy: &[u8],
        set: Option<&[u8]>,
        message_type: Option<&str>,
    ) -> Result<Self, String> {
        Self::open(policy, set, message_type, None, true)
    }

    fn open(
        policy: &[u8],
        set: Option<&[u8]>,
        message_type: Option<&str>,
        token_key_env: Option<&str>,
        inspection: bool,
    ) -> Result<Self, String> {
        // Strictly, as the filter reads it: a repeated member is refused, not resolved.
        let mut doc: Value = phi_guard_common::config::parse_document(policy, "mask")
            .map_err(|e| format!("policy: {e}"))?;
        let obj = doc.as_object_mut().ok_or("policy: must be a JSON object")?;
        if message_type.is_some() {
            // Masking messages offline never reads a request: a dump's set (a Bundle's
            // closure) need not hold the request messages the resource_id entries name.
            if let Some(Value::Array(entries)) = obj.get_mut("catalog") {
                entries.retain(|e| e.get("resource_id").is_none());
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let set = match set {
            Some(set) => set.to_vec(),
            None => {
                let inline = obj
                    .get("descriptor_set")
                    .and_then(Value::as_str)
                    .ok_or("policy has no descriptor_set: pass --descriptor-set")?;
                b64.decode(inline)
                    .map_err(|_| "policy: descriptor_set is not standard base64".to_string())?
            }
        };
        let pool = prost_reflect::DescriptorPool::decode(set.as_slice())
            .map_err(|e| format!("descriptor set does not link: {e}"))?;
        let mut with_method = set.clone();
        if let Some(t) = message_type {
            if pool.get_message_by_name(t).is_none() {
                return Err(format!("message type {t} is not in the descriptor set"));
            }
            with_method.extend_from_slice(&apply_service_file(t));
        }
        obj.insert("descriptor_set".into(), b64.encode(&with_method).into());
        if let Some(var) = token_key_env {
            obj.insert("token_key_env".into(), var.into());
        }
        let config = if inspection {
            obj.entry("roles")
                .or_insert_with(|| Value::Object(Default::default()));
            obj.entry("token_key_env")
                .or_insert_with(|| PLACEHOLDER_KEY_ENV.into());
            let json = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
            MaskConfig::parse_for_inspection(&json, &|_| Some(PLACEHOLDER_KEY.to_string()))
                .map_err(|e| format!("policy: {e}"))?
        } else {
            let var = obj
                .get("token_key_env")
                .and_then(Value::as_str)
                .map(str::to_string);
            let json = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
            MaskConfig::parse(&json, &|name| std::env::var(name).ok())
                .map_err(|e| token_key_error(e, var.as_deref()))?
        };
        let root = message_type.and_then(|_| config.plans.method(APPLY_METHOD));
        Ok(Session {
            config,
            set,
            root,
            pool,
            inspection,
        })
    }

    /// Role names in the policy, sorted, then `default`.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = self.config.policy.roles.keys().cloned().collect();
        roles.sort();
        roles.push(phi_guard_mask::policy::DEFAULT_ROLE.to_string());
        roles
    }

    /// Masks one encoded message of the session's type as `role` sees it (a role the policy
    /// does not name gets the default block, as in the filter).
    pub fn mask(&self, role: &str, message: &[u8], counts: &mut Counts) -> Result<Vec<u8>, String> {
        if self.inspection {
            return Err(
                "a session opened for a static check (placeholder token key) masks \
                        nothing: open it with Session::new"
                    .into(),
            );
        }
        let Some(root) = self.root else {
            // Nothing in this type can carry a class: the filter passes it through as well.
            return Ok(message.to_vec());
        };
        let (_, block) = self.config.policy.for_role(Some(role));
        let rewriter = self.config.rewriter(block);
        let mut out = Vec::with_capacity(message.len());
        rewriter
            .rewrite(root, message, &mut out, counts)
            .map_err(|e| format!("message cannot be masked ({})", e.code()))?;
        Ok(out)
    }
}

/// A policy error as the command line should say it: the filter's wording for `token_key_env`
/// talks about the VM's environment, the tool reads its own.
fn token_key_error(e: phi_guard_common::ConfigError, var: Option<&str>) -> String {
    if e.field != "token_key_env" || e.reason.starts_with("must be") {
        return format!("policy: {e}");
    }
    let min = phi_guard_mask::token::MIN_KEY_BYTES;
    match var {
        None => format!(
            "policy: a role uses the token action, which needs the HMAC key: pass \
             --token-key-env VAR (or set \"token_key_env\": \"VAR\" in the policy) with the \
             environment variable VAR holding the key (at least {min} bytes; the filter's own key \
             for tokens that match it)"
        ),
        Some(var) => match std::env::var_os(var) {
            None => format!(
                "policy: a role uses the token action: the environment variable {var} \
                 (token_key_env) is not set; set it to the HMAC key (at least {min} bytes), \
                 or name another with --token-key-env"
            ),
            Some(_) => format!(
                "policy: the environment variable {var} (token_key_env) holds fewer than \
                 {min} bytes: the token key must be at least {min}"
            ),
        },
    }
}

/// An encoded FileDescriptorSet entry (field 1) holding `service Apply { rpc Mask(T) returns (T); }`
/// in package `phi_guard_mask.tool`.
fn apply_service_file(message_type: &str) -> Vec<u8> {
    use prost::Message;
    use prost_types::{FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};
    let t = format!(".{message_type}");
    let file = FileDescriptorProto {
        name: Some("phi_guard_mask/tool/apply.proto".into()),
        package: Some("phi_guard_mask.tool".into()),
        service: vec![ServiceDescriptorProto {
            name: Some("Apply".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Mask".into()),
                input_type: Some(t.clone()),
                output_type: Some(t),
                ..Default::default()
            }],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    };
    let bytes = file.encode_to_vec();
    let mut out = Vec::with_capacity(bytes.len() + 6);
    phi_guard_mask::wire::write_varint(&mut out, 0x0a);
    phi_guard_mask::wire::write_varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(&bytes);
    out
}

/// Reads a length-delimited stream (varint length, message; the framing of protobuf's
/// `writeDelimitedTo` and `parseDelimitedFrom`).
pub fn split_delimited(mut buf: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let mut pos = 0;
        let len = phi_guard_mask::wire::read_varint(buf, &mut pos)
            .ok_or("delimited stream: bad length")?;
        let end = pos
            .checked_add(usize::try_from(len).map_err(|_| "delimited stream: length too large")?)
            .filter(|&e| e <= buf.len())
            .ok_or("delimited stream: a message runs past the end")?;
        out.push(&buf[pos..end]);
        buf = &buf[end..];
    }
    Ok(out)
}

/// Appends `message` with its varint length prefix.
pub fn put_delimited(out: &mut Vec<u8>, message: &[u8]) {
    phi_guard_mask::wire::write_varint(out, message.len() as u64);
    out.extend_from_slice(message);
}

/// Proto3 JSON of an encoded message of `message_type` (prost-reflect's serde mapping).
pub fn to_json(
    pool: &prost_reflect::DescriptorPool,
    message_type: &str,
    bytes: &[u8],
) -> Result<String, String> {
    let desc = pool
        .get_message_by_name(message_type)
        .ok_or_else(|| format!("message type {message_type} is not in the descriptor set"))?;
    let msg = prost_reflect::DynamicMessage::decode(desc, bytes)
        .map_err(|e| format!("not a valid {message_type}: {e}"))?;
    serde_json::to_string(&msg).map_err(|e| e.to_string())
}

/// The encoding of proto3 JSON `json` as `message_type`.
pub fn from_json(
    pool: &prost_reflect::DescriptorPool,
    message_type: &str,
    json: &str,
) -> Result<Vec<u8>, String> {
    use prost::Message;
    let desc = pool
        .get_message_by_name(message_type)
        .ok_or_else(|| format!("message type {message_type} is not in the descriptor set"))?;
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = prost_reflect::DynamicMessage::deserialize(desc, &mut de)
        .map_err(|e| format!("not a valid {message_type} in proto3 JSON: {e}"))?;
    de.end()
        .map_err(|e| format!("trailing data after the JSON message: {e}"))?;
    Ok(msg.encode_to_vec())
}
