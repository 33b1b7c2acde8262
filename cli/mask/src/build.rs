//! `build`: a FileDescriptorSet from `.proto` files (protox) or from binary sets, pruned to
//! what the named services' methods reach.
//!
//! Pruning works on the wire format of each `FileDescriptorProto`: a kept message, enum,
//! extension or service is copied byte for byte, so field options (the `phi.v1.sensitivity`
//! annotation, FHIR's own annotations) survive, which a round trip through prost-types would
//! drop. prost-reflect decides what is reached and checks that the result still links.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, EnumDescriptor, Kind, MessageDescriptor};

use phi_guard_mask::wire::{self, read_len_value, read_tag, skip_value, write_varint};

/// Compiles `protos` (paths relative to an include directory, or files under one) with protox,
/// resolving imports from `includes`, then from the files of `sets` (encoded
/// FileDescriptorSets), then from protox's copies of the well-known types. Returns the encoded
/// set of the given files and everything they import, options kept.
pub fn compile(
    protos: &[PathBuf],
    includes: &[PathBuf],
    sets: &[Vec<u8>],
) -> Result<Vec<u8>, String> {
    use protox::file::{
        ChainFileResolver, DescriptorSetFileResolver, GoogleFileResolver, IncludeFileResolver,
    };
    let mut chain = ChainFileResolver::new();
    for dir in includes {
        chain.add(IncludeFileResolver::new(dir.clone()));
    }
    for set in sets {
        let resolver = DescriptorSetFileResolver::decode(set.as_slice())
            .map_err(|e| format!("descriptor set: {e}"))?;
        chain.add(resolver);
    }
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler.include_imports(true).include_source_info(false);
    for proto in protos {
        let name = relative_name(proto, includes);
        compiler
            .open_file(&name)
            .map_err(|e| format!("{}: {e}", proto.display()))?;
    }
    // protox re-encodes the files it resolved from `sets` (adding `json_name`s): keep the
    // originals byte for byte, then add the sets' other files, which `--message` may name.
    let compiled = compiler.encode_file_descriptor_set();
    let mut originals = std::collections::HashMap::new();
    for set in sets {
        for file in files(set)? {
            originals.entry(file_name(file)?).or_insert(file);
        }
    }
    let mut out = Vec::with_capacity(compiled.len());
    for file in files(&compiled)? {
        put_len(
            &mut out,
            1,
            originals.get(&file_name(file)?).copied().unwrap_or(file),
        );
    }
    let mut all = vec![out];
    all.extend(sets.iter().cloned());
    merge(&all)
}

/// The import name of `proto`: its path under the first include directory that holds it.
fn relative_name(proto: &Path, includes: &[PathBuf]) -> PathBuf {
    includes
        .iter()
        .find_map(|dir| proto.strip_prefix(dir).ok())
        .unwrap_or(proto)
        .to_path_buf()
}

/// Concatenates encoded sets, keeping the first file of each name.
pub fn merge(sets: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for set in sets {
        for file in files(set)? {
            if seen.insert(file_name(file)?) {
                put_len(&mut out, 1, file);
            }
        }
    }
    Ok(out)
}

/// What [`prune`] kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub set: Vec<u8>,
    pub files: usize,
    pub messages: usize,
    pub enums: usize,
}

/// Prunes the encoded `set` to the services named in `services` (full names; empty means
/// every service in the set) and what their methods' request and response types reach, plus
/// the messages named in `messages` (e.g. the types a `google.protobuf.Any` may hold).
///
/// Kept: every message and enum reached through fields (a nested type keeps its enclosing
/// message, and with it every type nested there), the files defining them, and in those files'
/// imports the extensions that define options, with what those reach. Dropped: everything else
/// and `source_code_info`. The result is checked to link.
pub fn prune(set: &[u8], services: &[String], messages: &[String]) -> Result<Pruned, String> {
    let pool =
        DescriptorPool::decode(set).map_err(|e| format!("descriptor set does not link: {e}"))?;
    let mut reach = Reach::default();
    let wanted: Vec<_> = if services.is_empty() {
        pool.services().collect()
    } else {
        services
            .iter()
            .map(|s| {
                pool.get_service_by_name(s)
                    .ok_or_else(|| format!("service {s} is not in the descriptor set"))
            })
            .collect::<Result<_, _>>()?
    };
    if wanted.is_empty() && messages.is_empty() {
        return Err("the descriptor set has no service: name the messages to keep".into());
    }
    let mut kept_services = HashSet::new();
    for svc in &wanted {
        kept_services.insert(svc.full_name().to_string());
        for m in svc.methods() {
            reach.message(&m.input());
            reach.message(&m.output());
        }
    }
    for name in messages {
        let m = pool
            .get_message_by_name(name)
            .ok_or_else(|| format!("message {name} is not in the descriptor set"))?;
        reach.message(&m);
    }
    // Files with reached types, then the option-defining extensions of their imports, to a
    // fixpoint (an extension's types can live in yet another file).
    let mut kept_ext_files: HashSet<String> = HashSet::new();
    loop {
        let kept: BTreeSet<String> = reach.files.clone();
        let mut changed = false;
        for f in pool.files().filter(|f| kept.contains(f.name())) {
            for dep in f.dependencies().chain(std::iter::once(f.clone())) {
                if dep.extensions().len() == 0 || !kept_ext_files.insert(dep.name().to_string()) {
                    continue;
                }
                changed = true;
                reach.files.insert(dep.name().to_string());
                for ext in dep.extensions() {
                    reach.message(&ext.containing_message());
                    reach.kind(&ext.kind());
                }
            }
        }
        if !changed && kept == reach.files {
            break;
        }
    }
    let mut out = Vec::new();
    let mut pruned = Pruned::default();
    for file in files(set)? {
        let name = file_name(file)?;
        if !reach.files.contains(&name) {
            continue;
        }
        let fd = pool.get_file_by_name(&name).ok_or("file vanished")?;
        let package = fd.package_name().to_string();
        let encoded = prune_file(
            file,
            &package,
            &reach,
            &kept_services,
            kept_ext_files.contains(&name),
        )?;
        pruned.files += 1;
        put_len(&mut out, 1, &encoded);
    }
    pruned.messages = reach.messages.len();
    pruned.enums = reach.enums.len();
    DescriptorPool::decode(out.as_slice())
        .map_err(|e| format!("internal error: the pruned set does not link: {e}"))?;
    pruned.set = out;
    Ok(pruned)
}

/// Full names of reached types (messages include every nested one of a kept top-level
/// message) and the files defining them.
#[derive(Default)]
struct Reach {
    messages: HashSet<String>,
    enums: HashSet<String>,
    files: BTreeSet<String>,
}

impl Reach {
    fn message(&mut self, m: &MessageDescriptor) {
        // Nested types live inside their top-level message: keep it whole.
        let mut top = m.clone();
        while let Some(parent) = top.parent_message() {
            top = parent;
        }
        if self.messages.contains(top.full_name()) {
            return;
        }
        self.files.insert(top.parent_file().name().to_string());
        let mut stack = vec![top];
        let mut fields = Vec::new();
        while let Some(msg) = stack.pop() {
            if !self.messages.insert(msg.full_name().to_string()) {
                continue;
            }
            for e in msg.child_enums() {
                self.enums.insert(e.full_name().to_string());
            }
            stack.extend(msg.child_messages());
            fields.extend(msg.fields().map(|f| f.kind()));
            fields.extend(msg.child_extensions().map(|e| e.kind()));
        }
        for kind in fields {
            self.kind(&kind);
        }
    }

    fn kind(&mut self, kind: &Kind) {
        match kind {
            Kind::Message(m) => self.message(m),
            Kind::Enum(e) => self.enum_(e),
            _ => {}
        }
    }

    fn enum_(&mut self, e: &EnumDescriptor) {
        match e.parent_message() {
            Some(parent) => self.message(&parent),
            None => {
                if self.enums.insert(e.full_name().to_string()) {
                    self.files.insert(e.parent_file().name().to_string());
                }
            }
        }
    }
}

/// The file's bytes with unreached top-level types, unnamed services, unkept imports and
/// source info left out; everything else copied as it was.
fn prune_file(
    file: &[u8],
    package: &str,
    reach: &Reach,
    services: &HashSet<String>,
    keep_extensions: bool,
) -> Result<Vec<u8>, String> {
    let qualify = |name: String| {
        if package.is_empty() {
            name
        } else {
            format!("{package}.{name}")
        }
    };
    let mut out = Vec::with_capacity(file.len());
    let mut deps: Vec<(String, bool)> = Vec::new();
    let mut public = Vec::new();
    let mut weak = Vec::new();
    let mut pos = 0;
    while pos < file.len() {
        let start = pos;
        let tag = read_tag(file, &mut pos).ok_or("malformed FileDescriptorProto")?;
        let value_start = pos;
        skip_value(file, &mut pos, tag, 64).ok_or("malformed FileDescriptorProto")?;
        let record = &file[start..pos];
        let len_value = || -> Result<&[u8], String> {
            let mut p = value_start;
            let (s, e) = read_len_value(file, &mut p).ok_or("malformed FileDescriptorProto")?;
            Ok(&file[s..e])
        };
        let keep = match (tag.number, tag.wire_type) {
            (3, wire::LEN) => {
                let dep = String::from_utf8_lossy(len_value()?).into_owned();
                let kept = reach.files.contains(&dep);
                deps.push((dep, kept));
                false // re-emitted below, with the indices they now have
            }
            (10, _) | (11, _) => {
                let target = if tag.number == 10 {
                    &mut public
                } else {
                    &mut weak
                };
                let mut p = value_start;
                collect_indices(file, &mut p, pos, tag.wire_type, target)?;
                false
            }
            (4, wire::LEN) => reach.messages.contains(&qualify(type_name(len_value()?)?)),
            (5, wire::LEN) => reach.enums.contains(&qualify(type_name(len_value()?)?)),
            (6, wire::LEN) => services.contains(&qualify(type_name(len_value()?)?)),
            (7, wire::LEN) => keep_extensions,
            (9, _) => false,
            _ => true,
        };
        if keep {
            out.extend_from_slice(record);
        }
    }
    // dependency (3), public_dependency (10), weak_dependency (11), renumbered.
    let mut index = Vec::new();
    let mut n = 0;
    for (dep, kept) in &deps {
        if *kept {
            put_len(&mut out, 3, dep.as_bytes());
            index.push(Some(n));
            n += 1;
        } else {
            index.push(None);
        }
    }
    for (field, list) in [(10u32, &public), (11u32, &weak)] {
        for &i in list.iter() {
            if let Some(Some(new)) = index.get(i as usize) {
                write_varint(&mut out, u64::from(field << 3));
                write_varint(&mut out, *new as u64);
            }
        }
    }
    Ok(out)
}

fn collect_indices(
    buf: &[u8],
    pos: &mut usize,
    end: usize,
    wire_type: u8,
    out: &mut Vec<u64>,
) -> Result<(), String> {
    let bad = || "malformed dependency index".to_string();
    if wire_type == wire::LEN {
        let (s, e) = read_len_value(buf, pos).ok_or_else(bad)?;
        let mut p = s;
        while p < e {
            out.push(wire::read_varint(buf, &mut p).ok_or_else(bad)?);
        }
    } else {
        out.push(wire::read_varint(buf, pos).ok_or_else(bad)?);
    }
    debug_assert!(*pos <= end);
    Ok(())
}

/// Field 1 (`name`) of an encoded DescriptorProto, EnumDescriptorProto or
/// ServiceDescriptorProto.
fn type_name(msg: &[u8]) -> Result<String, String> {
    let mut pos = 0;
    while pos < msg.len() {
        let tag = read_tag(msg, &mut pos).ok_or("malformed descriptor")?;
        if tag.number == 1 && tag.wire_type == wire::LEN {
            let (s, e) = read_len_value(msg, &mut pos).ok_or("malformed descriptor")?;
            return Ok(String::from_utf8_lossy(&msg[s..e]).into_owned());
        }
        skip_value(msg, &mut pos, tag, 64).ok_or("malformed descriptor")?;
    }
    Err("a descriptor has no name".into())
}

/// The encoded `FileDescriptorProto`s of an encoded set.
pub fn files(set: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < set.len() {
        let tag = read_tag(set, &mut pos).ok_or("malformed FileDescriptorSet")?;
        if tag.number == 1 && tag.wire_type == wire::LEN {
            let (s, e) = read_len_value(set, &mut pos).ok_or("malformed FileDescriptorSet")?;
            out.push(&set[s..e]);
        } else {
            skip_value(set, &mut pos, tag, 64).ok_or("malformed FileDescriptorSet")?;
        }
    }
    Ok(out)
}

fn file_name(file: &[u8]) -> Result<String, String> {
    type_name(file)
}

fn put_len(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    write_varint(out, u64::from(field << 3 | 2));
    write_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}
