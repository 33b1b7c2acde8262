//! Annotation shapes beyond the demo API, checked with dynamic messages: a class on a message
//! field, on numbers, on a map of messages, on bytes; a recursive type.

use base64::Engine;
use phi_guard_mask::rewriter::Counts;
use phi_guard_mask::MaskConfig;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage, Value};

fn set() -> Vec<u8> {
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    protox::Compiler::new([here, root])
        .unwrap()
        .include_imports(true)
        .open_files(["test/v1/extra.proto"])
        .unwrap()
        .encode_file_descriptor_set()
}

fn config(roles: serde_json::Value) -> MaskConfig {
    let doc = serde_json::json!({
        "descriptor_set": base64::engine::general_purpose::STANDARD.encode(set()),
        "roles": roles,
        "token_key_env": "K",
    });
    MaskConfig::parse(doc.to_string().as_bytes(), &|_| {
        Some("0123456789abcdef0123".into())
    })
    .unwrap()
}

fn record(pool: &DescriptorPool) -> DynamicMessage {
    let desc = pool.get_message_by_name("test.v1.Record").unwrap();
    DynamicMessage::parse_text_format(
        desc,
        r#"
        person { a: "Alice" b: "Bob" n: 42 own: "MRN-1" }
        born { seconds: -1225756800 }
        ssn_number: 900551234
        codes: [1, 2, 3]
        tree { label: "root" free: "f" children { label: "kid" children { label: "grandkid" } } }
        people { key: "home" value { a: "Street 1" n: 7 own: "MRN-2" } }
        blob: "\x00\x01\x02"
        plain: "keep me"
        "#,
    )
    .unwrap()
}

fn mask(cfg: &MaskConfig, role: &str, msg: &DynamicMessage) -> DynamicMessage {
    let root = cfg.plans.method("test.v1.Extra/Get").unwrap();
    let (_, block) = cfg.policy.for_role(Some(role));
    let mut out = Vec::new();
    cfg.rewriter(block)
        .rewrite(root, &msg.encode_to_vec(), &mut out, &mut Counts::default())
        .unwrap();
    DynamicMessage::decode(msg.descriptor(), &out[..]).unwrap()
}

fn get(msg: &DynamicMessage, path: &[&str]) -> Value {
    let mut v = Value::Message(msg.clone());
    for p in path {
        v = v
            .as_message()
            .unwrap()
            .get_field_by_name(p)
            .unwrap()
            .into_owned();
    }
    v
}

#[test]
fn classes_reach_the_fields_the_plan_module_documents() {
    let pool = DescriptorPool::decode(&set()[..]).unwrap();
    let cfg = config(serde_json::json!({
        "r": {
            "NAME": {"action": "partial", "keep_last": 1},
            "MRN": "reveal",
            "DOB": "redact",
            "SSN": {"action": "redact", "replacement": "x"},
            "CLINICAL": "remove",
            "ADDRESS": "token",
            "*": "remove"
        },
        "all": {"*": "reveal"}
    }));
    let plain = cfg.plans.method("test.v1.Extra/Plain").unwrap();
    assert!(
        !cfg.plans.messages[plain].touch,
        "a response without classes: only unknown fields can change"
    );
    let original = record(&pool);
    assert_eq!(mask(&cfg, "all", &original), original);

    let m = mask(&cfg, "r", &original);
    // NAME handed down to the strings and bytes inside `person`; numbers inside dropped; the
    // field's own MRN annotation wins.
    assert_eq!(get(&m, &["person", "a"]), Value::String("****e".into()));
    assert_eq!(
        get(&m, &["person", "b"]).as_bytes().unwrap().as_ref(),
        b"**b"
    );
    assert_eq!(get(&m, &["person", "n"]), Value::I64(0));
    assert_eq!(get(&m, &["person", "own"]), Value::String("MRN-1".into()));
    // A Timestamp annotated DOB has only numbers: removed.
    assert_eq!(get(&m, &["born", "seconds"]), Value::I64(0));
    // Annotated scalar and packed repeated numbers: removed.
    assert_eq!(get(&m, &["ssn_number"]), Value::I64(0));
    assert_eq!(get(&m, &["codes"]), Value::List(vec![]));
    // Recursive type: every level.
    assert_eq!(get(&m, &["tree", "label"]), Value::String("***t".into()));
    let kid = get(&m, &["tree", "children"]).as_list().unwrap()[0].clone();
    let kid = kid.as_message().unwrap();
    assert_eq!(
        kid.get_field_by_name("label").unwrap().as_str(),
        Some("**d")
    );
    let grandkid = kid
        .get_field_by_name("children")
        .unwrap()
        .as_list()
        .unwrap()[0]
        .clone();
    assert_eq!(
        grandkid
            .as_message()
            .unwrap()
            .get_field_by_name("label")
            .unwrap()
            .as_str(),
        Some("*******d")
    );
    assert_eq!(get(&m, &["tree", "free"]), Value::String("f".into()));
    // Map of messages: key kept, strings of the value tokenised, own annotation wins.
    let people = get(&m, &["people"]);
    let home = people.as_map().unwrap()[&MapKey::String("home".into())].clone();
    let home = home.as_message().unwrap();
    assert!(home
        .get_field_by_name("a")
        .unwrap()
        .as_str()
        .unwrap()
        .starts_with("tok_"));
    assert_eq!(home.get_field_by_name("n").unwrap().as_i64(), Some(0));
    assert_eq!(
        home.get_field_by_name("own").unwrap().as_str(),
        Some("MRN-2")
    );
    // bytes with a replacement; unannotated untouched.
    assert_eq!(get(&m, &["blob"]).as_bytes().unwrap().as_ref(), b"x");
    assert_eq!(get(&m, &["plain"]), Value::String("keep me".into()));
}
