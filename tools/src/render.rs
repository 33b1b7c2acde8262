//! The one renderer of phi-guard's Envoy configs: from a project file (TOML, see
//! [`ProjectFile`] and docs/ADOPTING.md) to the Envoy bootstrap and its SDS resources, by
//! filling the `${…}` placeholders of the shipped templates (`envoy/inbound.yaml`,
//! `envoy/sds/*.yaml`, `envoy/fragments/*.yaml`). `phi-guard render`, the e2e harness
//! (tools/src/stack.rs) and `scripts/demo` all go through [`Inbound::render`], so what users get
//! is what the tests run.
//!
//! A [`Layout`] names the template and the stages it wires; every layout gets the same
//! variables ([`Inbound::vars`]), so another layout is another template file and one entry in
//! [`Layout`], not another renderer.
//!
//! Errors name the field at fault (`listener.port`, `jwks.url`, `mask.config: roles.nurse.SSN`)
//! and never quote a value: a secret pasted into the wrong field must not reach a terminal log.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use phi_guard_common::state::Published;
use serde::Deserialize;
use serde_json::{json, Value};

/// The cluster a remote JWKS is fetched through (`envoy/fragments/idp_jwks_cluster.yaml`).
pub const JWKS_CLUSTER: &str = "idp_jwks";
/// The cluster the mask filter fetches a remote descriptor set through
/// (`envoy/fragments/mask_descriptor_set_cluster.yaml`).
pub const MASK_DESCRIPTOR_SET_CLUSTER: &str = "mask_descriptor_set";
/// The cluster the audit service ships OTLP/HTTP logs to (`envoy/inbound.yaml`).
pub const COLLECTOR_CLUSTER: &str = "audit_collector";
/// Default names of the secrets' environment variables (Envoy's process environment, passed to
/// the VMs through `vm_config.environment_variables.host_env_keys`).
pub const DEFAULT_AUDIT_KEY_ENV: &str = "PHI_GUARD_AUDIT_KEY";
pub const DEFAULT_MASK_TOKEN_KEY_ENV: &str = "PHI_GUARD_MASK_TOKEN_KEY";
/// The CA bundle https upstreams (IdP, collector) are verified with unless the project names one.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A render error: the project-file field (or `<stage>: <filter field>`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Which Envoy config shape is rendered (`layout = "single"` or `"pipeline"` in the project
/// file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `envoy/inbound.yaml`: four wasm filters (jwt, rbac, mask, audit), one module and one
    /// config each (`stages` is its former name).
    #[default]
    #[serde(alias = "stages")]
    Single,
    /// `envoy/inbound.pipeline.yaml`: one wasm filter, `phi_guard.wasm` (filters/pipeline),
    /// running the four stages with one set of callbacks; its config nests each stage's JSON.
    Pipeline,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::Single, Layout::Pipeline];

    /// The name a project file and `phi-guard render --layout` use.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Single => "single",
            Layout::Pipeline => "pipeline",
        }
    }

    /// The template, relative to the repository's `envoy/` directory.
    pub fn template(self) -> &'static str {
        match self {
            Layout::Single => "inbound.yaml",
            Layout::Pipeline => "inbound.pipeline.yaml",
        }
    }

    /// The wasm modules the layout loads (file stems in the wasm directory).
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            Layout::Single => &[
                "phi_guard_jwt",
                "phi_guard_rbac",
                "phi_guard_mask",
                "phi_guard_audit",
            ],
            // The audit service stays its own module (bootstrap_extensions).
            Layout::Pipeline => &["phi_guard", "phi_guard_audit"],
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single" | "stages" => Ok(Layout::Single),
            "pipeline" => Ok(Layout::Pipeline),
            _ => Err(FieldError::new(
                "layout",
                "must be \"single\" or \"pipeline\"",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The project file

/// `phi-guard.toml`. Paths in it are relative to the file. docs/ADOPTING.md describes each field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    #[serde(default)]
    pub layout: Layout,
    /// Filter-state keys the pipeline writes besides those its template reads (for a filter
    /// placed after it, outside the template): `["phi_guard.identity"]`.
    #[serde(default)]
    pub filter_state: Vec<String>,
    pub service: ServiceSection,
    pub listener: ListenerSection,
    pub trust: TrustSection,
    #[serde(default)]
    pub paths: PathsSection,
    pub jwt: JwtSection,
    #[serde(default)]
    pub jwks: Option<JwksSection>,
    pub rbac: RbacSection,
    pub mask: MaskSection,
    pub audit: AuditSection,
    #[serde(default)]
    pub keys: KeysSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Names the service in audit events (OTLP `service.name`).
    pub name: String,
    /// `host:port` of the plaintext h2 gRPC service behind Envoy (usually loopback).
    pub upstream: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Address of the mTLS listener (default `0.0.0.0`).
    #[serde(default = "default_listen_address")]
    pub address: String,
    pub port: u16,
    /// Envoy's admin interface, always bound to 127.0.0.1.
    pub admin_port: u16,
}

fn default_listen_address() -> String {
    "0.0.0.0".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    /// The SPIFFE trust domain of the callers, e.g. `labs.example`.
    pub domain: String,
    /// When set, only these SPIFFE IDs may connect (all within `domain`); otherwise any ID of
    /// the trust domain passes the handshake and rbac decides. An empty list is refused: it
    /// reads as "no caller" but the absent key means "every caller of the domain".
    #[serde(default)]
    pub allowed_spiffe_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    /// Where `render` writes `envoy.yaml` (default `envoy`).
    #[serde(default = "default_out")]
    pub out: String,
    /// Envoy's SDS directory: `render` writes the SDS resources there, `scripts/pki install`
    /// the server certificate (`server/`) and trust bundle (`trust/`) (default `sds`).
    #[serde(default = "default_sds")]
    pub sds: String,
    /// Access logs (default `logs`).
    #[serde(default = "default_logs")]
    pub logs: String,
    /// The phi-guard wasm modules (default: `$PHI_GUARD_WASM_DIR`, else this checkout's
    /// `target/wasm32-wasip1/release`, where scripts/build-wasm leaves them).
    #[serde(default)]
    pub wasm: Option<String>,
}

impl Default for PathsSection {
    fn default() -> Self {
        PathsSection {
            out: default_out(),
            sds: default_sds(),
            logs: default_logs(),
            wasm: None,
        }
    }
}

fn default_out() -> String {
    "envoy".into()
}
fn default_sds() -> String {
    "sds".into()
}
fn default_logs() -> String {
    "logs".into()
}

/// A stage's JSON configuration: a path to a JSON file, or an inline TOML table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Source {
    Path(String),
    Inline(toml::Table),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// The jwt filter's config (filters/jwt/README.md); providers without `jwks` get the
    /// project's `[jwks]`.
    pub config: Source,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksSection {
    /// A JWKS document, put inline into the jwt config (no cluster, no fetch).
    #[serde(default)]
    pub file: Option<String>,
    /// Where the IdP serves its JWKS (`https://`, or `http://` to a loopback host); fetched
    /// through `idp_jwks`.
    #[serde(default)]
    pub url: Option<String>,
    /// CA bundle for an https `url` (default: the system bundle).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Accept an `http://` `url` to a host that is not loopback (anyone on the path can
    /// swap the keys): off by default.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacSection {
    /// The rbac policy (filters/rbac/README.md).
    pub policy: Source,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSection {
    /// The mask filter's config (filters/mask/README.md), without `descriptor_set` when the
    /// project names one.
    pub config: Source,
    /// A binary FileDescriptorSet of the API (`phi-guard protoset`, `buf build`, `protoc
    /// --descriptor_set_out`), with the `phi.v1.sensitivity` options kept.
    #[serde(default)]
    pub descriptor_set: Option<String>,
    /// Where the mask filter fetches the binary FileDescriptorSet instead (`http://` or
    /// `https://`), through the `mask_descriptor_set` cluster; refreshed, last good kept.
    #[serde(default)]
    pub descriptor_set_url: Option<String>,
    /// SHA-256 (hex) of the set at `descriptor_set_url`, or a list of accepted digests.
    #[serde(default)]
    pub descriptor_set_sha256: Option<OneOrMany>,
    /// CA bundle for an https `descriptor_set_url` (default: the system bundle).
    #[serde(default)]
    pub descriptor_set_ca_file: Option<String>,
    /// Accept an `http://` `descriptor_set_url` to a host that is not loopback: off by default.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Seconds between fetches of a good set (the filter's `refresh_interval_s`, default 300).
    #[serde(default)]
    pub descriptor_set_refresh_interval_s: Option<u64>,
    /// Seconds before fetching again after a failed fetch (`retry_interval_s`, default 10).
    #[serde(default)]
    pub descriptor_set_retry_interval_s: Option<u64>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The audit filter's config (filters/audit/README.md); default `{}`.
    #[serde(default)]
    pub config: Option<Source>,
    /// The audit service's config (batching, backlog, backoff); `key_env`, `cluster`, `path`
    /// and `service_name` are filled in from the project.
    #[serde(default)]
    pub service: Option<Source>,
    /// OTLP/HTTP logs endpoint of the collector, e.g. `http://127.0.0.1:4318/v1/logs`.
    pub collector: String,
    /// CA bundle for an https collector (default: the system bundle).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Accept an `http://` collector that is not loopback (anyone on the path can read or
    /// drop the audit events): off by default.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Environment variable holding the audit chain's HMAC key.
    #[serde(default = "default_audit_env")]
    pub audit_env: String,
    /// Environment variable holding the mask filter's token key.
    #[serde(default = "default_mask_env")]
    pub mask_token_env: String,
    /// Where `phi-guard keys` writes the key files (default `keys`).
    #[serde(default = "default_keys_dir")]
    pub dir: String,
}

impl Default for KeysSection {
    fn default() -> Self {
        KeysSection {
            audit_env: default_audit_env(),
            mask_token_env: default_mask_env(),
            dir: default_keys_dir(),
        }
    }
}

fn default_audit_env() -> String {
    DEFAULT_AUDIT_KEY_ENV.into()
}
fn default_mask_env() -> String {
    DEFAULT_MASK_TOKEN_KEY_ENV.into()
}
fn default_keys_dir() -> String {
    "keys".into()
}

// ---------------------------------------------------------------------------------------------
// The resolved inputs

/// `host:port` of something Envoy listens on or connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` (`[v6]:port` too).
    pub fn parse(text: &str, field: &str) -> Result<HostPort, FieldError> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| FieldError::new(field, "expected host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .map_err(|_| FieldError::new(field, "the port is not a number in 1..=65535"))?;
        if host.is_empty() || port == 0 {
            return Err(FieldError::new(field, "expected host:port"));
        }
        check_host(host, field)?;
        Ok(HostPort {
            host: host.into(),
            port,
        })
    }

    /// `STATIC` for an IP address, `STRICT_DNS` for a name.
    fn cluster_type(&self) -> &'static str {
        if self.host.parse::<std::net::IpAddr>().is_ok() {
            "STATIC"
        } else {
            "STRICT_DNS"
        }
    }
}

/// Hosts go into YAML flow scalars unquoted: only name and address characters.
fn check_host(host: &str, field: &str) -> Result<(), FieldError> {
    if host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
    {
        Ok(())
    } else {
        Err(FieldError::new(field, "not a host name or IP address"))
    }
}

/// An http(s) endpoint Envoy calls (IdP JWKS, audit collector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub addr: HostPort,
    pub path: String,
    /// `Some(CA bundle)` for https.
    pub tls_ca: Option<PathBuf>,
}

impl Upstream {
    /// Parses an `http://` or `https://` URL; `default_path` when it has none.
    pub fn parse(
        url: &str,
        field: &str,
        default_path: &str,
        ca_file: Option<PathBuf>,
    ) -> Result<Upstream, FieldError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| FieldError::new(field, "not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(FieldError::new(field, "must be an http:// or https:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| FieldError::new(field, "the URL has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        check_host(host, field)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => default_path.to_string(),
            Some(p) => p.to_string(),
        };
        if path.contains(['"', '\\']) {
            return Err(FieldError::new(field, "the path has a quote or backslash"));
        }
        Ok(Upstream {
            addr: HostPort {
                host: host.into(),
                port,
            },
            path,
            tls_ca: tls.then(|| ca_file.unwrap_or_else(|| SYSTEM_CA_FILE.into())),
        })
    }
}

impl Upstream {
    /// True when the host is this machine: `localhost`, 127.0.0.0/8 or `::1`.
    pub fn is_loopback(&self) -> bool {
        let host = self.addr.host.as_str();
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Refuses plaintext `http://` to a host that is not loopback unless `allow` (the
    /// section's `allow_plaintext`): anyone on the path could read or replace what goes over
    /// it (JWKS keys, a descriptor set, audit events).
    pub fn check_plaintext(
        &self,
        field: &str,
        section: &str,
        allow: bool,
    ) -> Result<(), FieldError> {
        if self.tls_ca.is_some() || allow || self.is_loopback() {
            return Ok(());
        }
        Err(FieldError::new(
            field,
            format!(
                "plaintext http:// to a host that is not loopback: anyone on the path could read \
                 or replace what goes over it; use https:// (with the CA bundle to verify it), or \
                 set allow_plaintext = true in [{section}] to accept that"
            ),
        ))
    }
}

/// Where the jwt providers' keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Jwks {
    /// Each provider's config says (`jwks` in the jwt config).
    FromConfig,
    /// A JWKS document inline in the config: no cluster.
    Inline(Value),
    /// Fetched from the IdP through the `idp_jwks` cluster.
    Remote(Upstream),
}

/// A descriptor set the mask filter fetches (`[mask] descriptor_set_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDescriptorSet {
    pub upstream: Upstream,
    /// Accepted SHA-256 digests (hex); empty: no pin.
    pub sha256: Vec<String>,
    /// `refresh_interval_s` and `retry_interval_s` of the filter's block (`None`: its default).
    pub refresh_interval_s: Option<u64>,
    pub retry_interval_s: Option<u64>,
}

/// Names of the environment variables holding the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEnv {
    pub audit: String,
    pub mask_token: String,
}

/// Everything the inbound template needs, resolved: what a project file says, with paths made
/// absolute and the stage configs loaded. The harness builds one from the demo project and
/// replaces ports and directories with its own.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub layout: Layout,
    pub service_name: String,
    pub upstream: HostPort,
    pub listen: HostPort,
    pub admin_port: u16,
    pub trust_domain: String,
    pub allowed_spiffe_ids: Vec<String>,
    /// Where `envoy.yaml` is written.
    pub out_dir: PathBuf,
    pub sds_dir: PathBuf,
    pub log_dir: PathBuf,
    pub wasm_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub jwt: Value,
    pub rbac: Value,
    pub mask: Value,
    pub audit: Value,
    pub audit_service: Value,
    /// The file each stage config came from (`jwt.config` → `…/jwt.json`), when it is a file,
    /// so an error inside it can name the file at fault ([`Inbound::locate`]).
    pub stage_files: BTreeMap<&'static str, PathBuf>,
    pub jwks: Jwks,
    /// The API's FileDescriptorSet, put into the mask config as `descriptor_set` (base64).
    pub descriptor_set: Option<Vec<u8>>,
    /// Or where the mask filter fetches it (`descriptor_set.remote`, and its cluster).
    pub descriptor_set_remote: Option<RemoteDescriptorSet>,
    pub collector: Upstream,
    pub keys: KeyEnv,
    /// The project file's `filter_state`: keys the pipeline writes besides those its template
    /// reads ([`logged_filter_state`]).
    pub filter_state: Published,
}

/// What [`Inbound::render`] produces.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The Envoy bootstrap.
    pub envoy: String,
    /// SDS resource files (file name, contents) for the SDS directory.
    pub sds: Vec<(String, String)>,
}

/// The SDS resources the inbound listener reads (envoy/sds/).
pub const INBOUND_SDS: &[&str] = &["server_cert.yaml", "trust_bundle.yaml"];

impl Inbound {
    /// Reads and resolves a project file. Errors name the project-file field.
    pub fn from_project(path: &Path) -> Result<Inbound, FieldError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            FieldError::new("", format!("cannot read {}: {}", path.display(), e.kind()))
        })?;
        let file: ProjectFile = toml::from_str(&text).map_err(|e| toml_error(&e, &text))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Inbound::from_file(file, &base)
    }

    /// Resolves a parsed project file; relative paths are taken from `base`.
    pub fn from_file(file: ProjectFile, base: &Path) -> Result<Inbound, FieldError> {
        let at = |p: &str| absolute(base, p);
        if file.service.name.trim().is_empty() {
            return Err(FieldError::new("service.name", "must not be empty"));
        }
        let upstream = HostPort::parse(&file.service.upstream, "service.upstream")?;
        check_host(&file.listener.address, "listener.address")?;
        if file.listener.address.is_empty() {
            return Err(FieldError::new("listener.address", "must not be empty"));
        }
        if file.listener.port == 0 {
            return Err(FieldError::new("listener.port", "must be 1..=65535"));
        }
        if file.listener.admin_port == 0 || file.listener.admin_port == file.listener.port {
            return Err(FieldError::new(
                "listener.admin_port",
                "must be 1..=65535 and differ from listener.port",
            ));
        }
        let jwks = match &file.jwks {
            None => Jwks::FromConfig,
            Some(j) => match (&j.file, &j.url) {
                (Some(f), None) => Jwks::Inline(load_json(&at(f), "jwks.file")?),
                (None, Some(url)) => {
                    let up = Upstream::parse(
                        url,
                        "jwks.url",
                        "/.well-known/jwks.json",
                        j.ca_file.as_deref().map(at),
                    )?;
                    up.check_plaintext("jwks.url", "jwks", j.allow_plaintext)?;
                    Jwks::Remote(up)
                }
                (None, None) => Jwks::FromConfig,
                (Some(_), Some(_)) => {
                    return Err(FieldError::new("jwks", "set `file` or `url`, not both"))
                }
            },
        };
        let descriptor_set = match &file.mask.descriptor_set {
            None => None,
            Some(p) => Some(std::fs::read(at(p)).map_err(|e| {
                FieldError::new(
                    "mask.descriptor_set",
                    format!("cannot read {p}: {}", e.kind()),
                )
            })?),
        };
        let descriptor_set_remote = match &file.mask.descriptor_set_url {
            None => {
                let m = &file.mask;
                for (field, set) in [
                    (
                        "mask.descriptor_set_sha256",
                        m.descriptor_set_sha256.is_some(),
                    ),
                    (
                        "mask.descriptor_set_ca_file",
                        m.descriptor_set_ca_file.is_some(),
                    ),
                    (
                        "mask.descriptor_set_refresh_interval_s",
                        m.descriptor_set_refresh_interval_s.is_some(),
                    ),
                    (
                        "mask.descriptor_set_retry_interval_s",
                        m.descriptor_set_retry_interval_s.is_some(),
                    ),
                    ("mask.allow_plaintext", m.allow_plaintext),
                ] {
                    if set {
                        return Err(FieldError::new(field, "set only with descriptor_set_url"));
                    }
                }
                None
            }
            Some(_) if descriptor_set.is_some() => {
                return Err(FieldError::new(
                    "mask.descriptor_set_url",
                    "set `descriptor_set` (inline) or `descriptor_set_url` (fetched), not both",
                ))
            }
            Some(url) => Some(RemoteDescriptorSet {
                upstream: {
                    let up = Upstream::parse(
                        url,
                        "mask.descriptor_set_url",
                        "/",
                        file.mask.descriptor_set_ca_file.as_deref().map(at),
                    )?;
                    up.check_plaintext(
                        "mask.descriptor_set_url",
                        "mask",
                        file.mask.allow_plaintext,
                    )?;
                    up
                },
                sha256: file
                    .mask
                    .descriptor_set_sha256
                    .clone()
                    .map(OneOrMany::into_vec)
                    .unwrap_or_default(),
                refresh_interval_s: file.mask.descriptor_set_refresh_interval_s,
                retry_interval_s: file.mask.descriptor_set_retry_interval_s,
            }),
        };
        let wasm_dir = match &file.paths.wasm {
            Some(p) => at(p),
            None => default_wasm_dir(),
        };
        let mut stage_files = BTreeMap::new();
        for (field, source) in [
            ("jwt.config", Some(&file.jwt.config)),
            ("rbac.policy", Some(&file.rbac.policy)),
            ("mask.config", Some(&file.mask.config)),
            ("audit.config", file.audit.config.as_ref()),
            ("audit.service", file.audit.service.as_ref()),
        ] {
            if let Some(Source::Path(p)) = source {
                stage_files.insert(field, at(p));
            }
        }
        let filter_state = Published::from_list(file.filter_state.iter().map(|k| Some(k.as_str())))
            .map_err(|e| FieldError::new(format!("filter_state[{}]", e.index), e.reason()))?;
        let inbound = Inbound {
            filter_state,
            stage_files,
            layout: file.layout,
            service_name: file.service.name.clone(),
            upstream,
            listen: HostPort {
                host: file.listener.address.clone(),
                port: file.listener.port,
            },
            admin_port: file.listener.admin_port,
            trust_domain: file.trust.domain.clone(),
            allowed_spiffe_ids: match &file.trust.allowed_spiffe_ids {
                Some(ids) if ids.is_empty() => {
                    return Err(FieldError::new(
                        "trust.allowed_spiffe_ids",
                        "is empty: list the SPIFFE IDs that may connect, or leave the key out to let every ID of trust.domain through the handshake (rbac then decides)",
                    ))
                }
                ids => ids.clone().unwrap_or_default(),
            },
            out_dir: at(&file.paths.out),
            sds_dir: at(&file.paths.sds),
            log_dir: at(&file.paths.logs),
            wasm_dir,
            keys_dir: at(&file.keys.dir),
            jwt: load_source(&file.jwt.config, base, "jwt.config")?,
            rbac: load_source(&file.rbac.policy, base, "rbac.policy")?,
            mask: load_source(&file.mask.config, base, "mask.config")?,
            audit: match &file.audit.config {
                Some(s) => load_source(s, base, "audit.config")?,
                None => json!({}),
            },
            audit_service: match &file.audit.service {
                Some(s) => load_source(s, base, "audit.service")?,
                None => json!({}),
            },
            jwks,
            descriptor_set,
            descriptor_set_remote,
            collector: {
                let up = Upstream::parse(
                    &file.audit.collector,
                    "audit.collector",
                    "/v1/logs",
                    file.audit.ca_file.as_deref().map(at),
                )?;
                up.check_plaintext("audit.collector", "audit", file.audit.allow_plaintext)?;
                up
            },
            keys: KeyEnv {
                audit: file.keys.audit_env.clone(),
                mask_token: file.keys.mask_token_env.clone(),
            },
        };
        inbound.check_trust()?;
        inbound.check_keys()?;
        Ok(inbound)
    }

    fn check_trust(&self) -> Result<(), FieldError> {
        let domain = &self.trust_domain;
        let valid = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !valid {
            return Err(FieldError::new(
                "trust.domain",
                "a SPIFFE trust domain: lower-case letters, digits, '-', '.', '_'",
            ));
        }
        let prefix = format!("spiffe://{domain}/");
        for (i, id) in self.allowed_spiffe_ids.iter().enumerate() {
            let ok = id.starts_with(&prefix)
                && id.len() > prefix.len()
                && !id.contains(['"', '\\', '*', ' ']);
            if !ok {
                return Err(FieldError::new(
                    format!("trust.allowed_spiffe_ids[{i}]"),
                    format!("must be a SPIFFE ID in {prefix}"),
                ));
            }
        }
        Ok(())
    }

    fn check_keys(&self) -> Result<(), FieldError> {
        for (field, name) in [
            ("keys.audit_env", &self.keys.audit),
            ("keys.mask_token_env", &self.keys.mask_token),
        ] {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(FieldError::new(
                    field,
                    "an environment variable name (A-Z, 0-9, _)",
                ));
            }
        }
        Ok(())
    }

    /// The jwt config with the project's JWKS given to every provider that has none.
    pub fn jwt_config(&self) -> Result<Value, FieldError> {
        let mut jwt = self.jwt.clone();
        let providers = jwt
            .get_mut("providers")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| FieldError::new("jwt.config: providers", "must be an array"))?;
        for (i, provider) in providers.iter_mut().enumerate() {
            let Some(provider) = provider.as_object_mut() else {
                continue;
            };
            let uses_cluster = provider
                .get("jwks")
                .and_then(|j| j.get("remote"))
                .and_then(|r| r.get("cluster"))
                .and_then(Value::as_str)
                == Some(JWKS_CLUSTER);
            if uses_cluster && !matches!(self.jwks, Jwks::Remote(_)) {
                return Err(FieldError::new(
                    "jwks.url",
                    format!(
                        "jwt.config providers[{i}] fetches its JWKS through `{JWKS_CLUSTER}`: \
                         set [jwks] url"
                    ),
                ));
            }
            if provider.contains_key("jwks") {
                continue;
            }
            match &self.jwks {
                Jwks::FromConfig => {}
                Jwks::Inline(doc) => {
                    provider.insert("jwks".into(), json!({ "inline": doc }));
                }
                Jwks::Remote(up) => {
                    provider.insert(
                        "jwks".into(),
                        json!({"remote": {
                            "cluster": JWKS_CLUSTER,
                            "path": up.path,
                            "authority": up.addr.host,
                        }}),
                    );
                }
            }
        }
        Ok(jwt)
    }

    /// The environment variables the jwt config reads secrets from (`hs256_secret_env` of a
    /// provider, `replay.key_env`), in order, without repeats.
    pub fn jwt_secret_envs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let providers = self.jwt.get("providers").and_then(Value::as_array);
        let names = providers
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hs256_secret_env"))
            .chain(self.jwt.get("replay").and_then(|r| r.get("key_env")))
            .filter_map(Value::as_str);
        for name in names {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
        out
    }

    /// The mask config with the descriptor set (inline, or where to fetch it) and the token
    /// key's variable filled in.
    pub fn mask_config(&self) -> Result<Value, FieldError> {
        let mut mask = self.mask.clone();
        let top = mask
            .as_object_mut()
            .ok_or_else(|| FieldError::new("mask.config", "must be a JSON object"))?;
        let uses_cluster = top
            .get("descriptor_set")
            .and_then(|d| d.get("remote"))
            .and_then(|r| r.get("cluster"))
            .and_then(Value::as_str)
            == Some(MASK_DESCRIPTOR_SET_CLUSTER);
        if uses_cluster && self.descriptor_set_remote.is_none() {
            return Err(FieldError::new(
                "mask.descriptor_set_url",
                format!(
                    "mask.config fetches its descriptor set through `{MASK_DESCRIPTOR_SET_CLUSTER}`: \
                     set [mask] descriptor_set_url"
                ),
            ));
        }
        match (&self.descriptor_set, &self.descriptor_set_remote) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "mask.descriptor_set_url",
                    "set `descriptor_set` (inline) or `descriptor_set_url` (fetched), not both",
                ))
            }
            (Some(set), None) => {
                top.insert(
                    "descriptor_set".into(),
                    base64::engine::general_purpose::STANDARD.encode(set).into(),
                );
            }
            (None, Some(remote)) => {
                let mut block = json!({
                    "cluster": MASK_DESCRIPTOR_SET_CLUSTER,
                    "path": remote.upstream.path,
                    "authority": remote.upstream.addr.host,
                });
                if !remote.sha256.is_empty() {
                    block["sha256"] = json!(remote.sha256);
                }
                if let Some(s) = remote.refresh_interval_s {
                    block["refresh_interval_s"] = s.into();
                }
                if let Some(s) = remote.retry_interval_s {
                    block["retry_interval_s"] = s.into();
                }
                top.insert("descriptor_set".into(), json!({ "remote": block }));
            }
            (None, None) => {}
        }
        top.insert("token_key_env".into(), self.keys.mask_token.clone().into());
        Ok(mask)
    }

    /// The audit service config: the project's settings plus the key, cluster, path and name.
    pub fn audit_service_config(&self) -> Result<Value, FieldError> {
        let mut service = self.audit_service.clone();
        let top = service
            .as_object_mut()
            .ok_or_else(|| FieldError::new("audit.service", "must be a JSON object"))?;
        top.insert("key_env".into(), self.keys.audit.clone().into());
        top.insert("cluster".into(), COLLECTOR_CLUSTER.into());
        top.insert("path".into(), self.collector.path.clone().into());
        top.insert("service_name".into(), self.service_name.clone().into());
        Ok(service)
    }

    /// Each stage's final JSON, checked by the filter's own parser, by template variable.
    fn stage_configs(&self) -> Result<Vec<(&'static str, Value)>, FieldError> {
        let jwt = self.jwt_config()?;
        let mask = self.mask_config()?;
        let service = self.audit_service_config()?;
        let bytes = |v: &Value| serde_json::to_vec(v).expect("a JSON value serialises");
        // Secrets are not needed to check a config's shape: the check sees a stand-in of the
        // right length for the key variables, the real environment for anything else (HS256).
        let mut secrets = vec![self.keys.mask_token.clone(), self.keys.audit.clone()];
        secrets.extend(self.jwt_secret_envs());
        let env = move |name: &str| {
            if secrets.iter().any(|s| s == name) {
                Some("k".repeat(64))
            } else {
                std::env::var(name).ok()
            }
        };
        let stage = |name: &str, e: phi_guard_common::ConfigError| {
            FieldError::new(format!("{name}: {}", e.field), e.reason)
        };
        phi_guard_jwt::config::Config::parse(&bytes(&jwt), &env)
            .map_err(|e| stage("jwt.config", e))?;
        phi_guard_rbac::policy::Policy::parse(&bytes(&self.rbac))
            .map_err(|e| stage("rbac.policy", e))?;
        // A fetched set's config is checked as far as it can be without the set (the remote
        // block, the top-level keys); the filter checks the rest against each set.
        phi_guard_mask::remote::MaskSource::parse(&bytes(&mask), &env)
            .map_err(|e| stage("mask.config", e))?;
        phi_guard_audit::config::FilterConfig::parse(&bytes(&self.audit))
            .map_err(|e| stage("audit.config", e))?;
        phi_guard_audit::config::ServiceConfig::parse(&bytes(&service))
            .map_err(|e| stage("audit.service", e))?;
        // The pipeline layout's one config: each stage's JSON nested unchanged, in stage order,
        // and the filter state its template reads plus the project's own (the rest stays in
        // memory). Read from the template being rendered: a single-layout render needs no
        // pipeline template.
        let name = self.layout.template();
        let path = envoy_dir().join(name).display().to_string();
        let filter_state: Vec<&str> = logged_filter_state(&template(name)?, &path)?
            .union(self.filter_state)
            .keys()
            .collect();
        let pipeline = json!({
            "stages": [{"jwt": jwt}, {"rbac": self.rbac}, {"mask": mask}, {"audit": self.audit}],
            "filter_state": filter_state,
        });
        phi_guard::PipelineConfig::parse(&bytes(&pipeline)).map_err(|e| stage("pipeline", e))?;
        Ok(vec![
            ("JWT_CONFIG", jwt),
            ("RBAC_CONFIG", self.rbac.clone()),
            ("MASK_CONFIG", mask),
            ("AUDIT_CONFIG", self.audit.clone()),
            ("AUDIT_SERVICE_CONFIG", service),
            ("PIPELINE_CONFIG", pipeline),
        ])
    }

    /// The jwt VM's `environment_variables`, when its config names secrets.
    fn jwt_vm_env(&self) -> Result<String, FieldError> {
        let names = self.jwt_secret_envs();
        if names.is_empty() {
            return Ok(String::new());
        }
        for name in &names {
            let ok =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(FieldError::new(
                    "jwt.config",
                    "a secret's environment variable name (A-Z, a-z, 0-9, _)",
                ));
            }
        }
        Ok(format!(
            "environment_variables:\n  host_env_keys: [{}]",
            names.join(", ")
        ))
    }

    /// The pipeline VM's `host_env_keys`: the mask token key and whatever secrets the jwt
    /// stage's config names (the audit chain key stays with the audit service).
    fn pipeline_env_keys(&self) -> Result<String, FieldError> {
        // Checks the jwt names as the single layout does.
        self.jwt_vm_env()?;
        let mut names = vec![self.keys.mask_token.clone()];
        for name in self.jwt_secret_envs() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(names.join(", "))
    }

    /// The client-certificate SAN matchers: exactly the allowed IDs, or the trust domain.
    fn san_matchers(&self) -> String {
        let matchers: Vec<String> = if self.allowed_spiffe_ids.is_empty() {
            vec![format!(
                "- san_type: URI\n  matcher: {{prefix: \"spiffe://{}/\"}}",
                self.trust_domain
            )]
        } else {
            self.allowed_spiffe_ids
                .iter()
                .map(|id| format!("- san_type: URI\n  matcher: {{exact: \"{id}\"}}"))
                .collect()
        };
        matchers.join("\n")
    }

    /// Every variable a layout's template may use.
    pub fn vars(&self) -> Result<Vec<(&'static str, String)>, FieldError> {
        let path = |p: &Path| p.display().to_string();
        let mut vars = vec![
            ("ADMIN_PORT", self.admin_port.to_string()),
            ("LISTEN_ADDRESS", self.listen.host.clone()),
            ("LISTEN_PORT", self.listen.port.to_string()),
            ("BACKEND_ADDRESS", self.upstream.host.clone()),
            ("BACKEND_PORT", self.upstream.port.to_string()),
            ("BACKEND_CLUSTER_TYPE", self.upstream.cluster_type().into()),
            ("COLLECTOR_ADDRESS", self.collector.addr.host.clone()),
            ("COLLECTOR_PORT", self.collector.addr.port.to_string()),
            (
                "COLLECTOR_CLUSTER_TYPE",
                self.collector.addr.cluster_type().into(),
            ),
            (
                "COLLECTOR_TRANSPORT_SOCKET",
                upstream_tls(&self.collector).map_err(|e| FieldError::new("audit.collector", e))?,
            ),
            ("SDS_DIR", path(&self.sds_dir)),
            ("LOG_DIR", path(&self.log_dir)),
            ("WASM_DIR", path(&self.wasm_dir)),
            ("SAN_MATCHERS", self.san_matchers()),
            ("AUDIT_KEY_ENV", self.keys.audit.clone()),
            ("MASK_TOKEN_KEY_ENV", self.keys.mask_token.clone()),
            ("JWT_VM_ENV", self.jwt_vm_env()?),
            ("PIPELINE_ENV_KEYS", self.pipeline_env_keys()?),
        ];
        for (name, p) in [
            ("paths.sds", &self.sds_dir),
            ("paths.logs", &self.log_dir),
            ("paths.wasm", &self.wasm_dir),
        ] {
            if p.to_string_lossy().contains(['"', '\\', '\n']) {
                return Err(FieldError::new(name, "the path has a quote or backslash"));
            }
        }
        let cluster = match &self.jwks {
            Jwks::Remote(up) => {
                let tls = upstream_tls(up).map_err(|e| FieldError::new("jwks.url", e))?;
                fill(
                    &template("fragments/idp_jwks_cluster.yaml")?,
                    &[
                        ("JWKS_CLUSTER_TYPE", up.addr.cluster_type().into()),
                        ("JWKS_TRANSPORT_SOCKET", tls),
                        ("JWKS_ADDRESS", up.addr.host.clone()),
                        ("JWKS_PORT", up.addr.port.to_string()),
                    ],
                )
                .map_err(|e| FieldError::new("jwks.url", e))?
            }
            _ => String::new(),
        };
        vars.push(("JWKS_CLUSTER", cluster));
        let cluster = match &self.descriptor_set_remote {
            Some(remote) => {
                let up = &remote.upstream;
                let field = "mask.descriptor_set_url";
                let tls = upstream_tls(up).map_err(|e| FieldError::new(field, e))?;
                fill(
                    &template("fragments/mask_descriptor_set_cluster.yaml")?,
                    &[
                        ("DESCRIPTOR_SET_CLUSTER_TYPE", up.addr.cluster_type().into()),
                        ("DESCRIPTOR_SET_TRANSPORT_SOCKET", tls),
                        ("DESCRIPTOR_SET_ADDRESS", up.addr.host.clone()),
                        ("DESCRIPTOR_SET_PORT", up.addr.port.to_string()),
                    ],
                )
                .map_err(|e| FieldError::new(field, e))?
            }
            None => String::new(),
        };
        vars.push(("MASK_DESCRIPTOR_SET_CLUSTER", cluster));
        for (name, config) in self.stage_configs()? {
            let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
            vars.push((name, text));
        }
        Ok(vars)
    }

    /// An error as the `phi-guard` command prints it: a field of a stage config that came
    /// from a file names that file (`…/jwt.json: field `providers[0].audiences`: …`), anything
    /// else the project file. The keys render fills in itself (the descriptor set, key
    /// variables, the audit service's cluster) stay the project's.
    pub fn locate(&self, project: &Path, e: &FieldError) -> String {
        const FILLED_IN: &[(&str, &[&str])] = &[
            ("mask.config", &["descriptor_set", "token_key_env"]),
            (
                "audit.service",
                &["key_env", "cluster", "path", "service_name"],
            ),
        ];
        if let Some((stage, inner)) = e.field.split_once(": ") {
            let filled = FILLED_IN.iter().any(|(s, keys)| {
                *s == stage
                    && keys
                        .iter()
                        .any(|k| inner == *k || inner.starts_with(&format!("{k}.")))
            });
            if let Some(file) = self.stage_files.get(stage).filter(|_| !filled) {
                return format!(
                    "{}: field `{inner}`: {} ({} `{stage}`)",
                    file.display(),
                    e.reason,
                    project.display()
                );
            }
        }
        format!("{}: {e}", project.display())
    }

    /// Whether the key files `phi-guard keys` writes for this project are in
    /// [`Inbound::keys_dir`], each at least as long as the filter requires (the minimums of
    /// `phi_guard_common::config`): without them Envoy refuses to start. Contents are never
    /// echoed.
    pub fn check_key_files(&self) -> Result<(), FieldError> {
        for spec in crate::project::key_specs(&self.keys, &self.jwt) {
            let path = self.keys_dir.join(spec.file);
            let text = std::fs::read(&path).map_err(|e| {
                FieldError::new(
                    "keys.dir",
                    format!(
                        "{} ({}): cannot read it: {} (phi-guard keys writes it)",
                        path.display(),
                        spec.purpose,
                        e.kind()
                    ),
                )
            })?;
            // The shell's `$(cat file)` drops trailing newlines.
            let len = text
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |i| i + 1);
            if len < spec.bytes {
                return Err(FieldError::new(
                    "keys.dir",
                    format!(
                        "{} ({}) is {len} bytes long, at least {} are required (phi-guard keys \
                         --force writes a new one)",
                        path.display(),
                        spec.purpose,
                        spec.bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the layout's wasm modules are in [`Inbound::wasm_dir`].
    pub fn check_wasm(&self) -> Result<(), FieldError> {
        for module in self.layout.modules() {
            let file = self.wasm_dir.join(format!("{module}.wasm"));
            if !file.exists() {
                return Err(FieldError::new(
                    "paths.wasm",
                    format!(
                        "{} is missing (scripts/build-wasm builds the modules)",
                        file.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Renders the layout's template and the SDS resources.
    pub fn render(&self) -> Result<Rendered, FieldError> {
        let vars = self.vars()?;
        let envoy = fill(&template(self.layout.template())?, &vars)
            .map_err(|e| FieldError::new("layout", e))?;
        let sds_dir = self.sds_dir.display().to_string();
        let mut sds = Vec::new();
        for file in INBOUND_SDS {
            let text = fill(
                &template(&format!("sds/{file}"))?,
                &[("SDS_DIR", sds_dir.clone())],
            )
            .map_err(|e| FieldError::new("paths.sds", e))?;
            sds.push((file.to_string(), text));
        }
        Ok(Rendered { envoy, sds })
    }
}

impl Rendered {
    /// Writes `envoy.yaml` into `out_dir` and the SDS resources into `sds_dir`; returns the
    /// bootstrap's path.
    pub fn write(&self, out_dir: &Path, sds_dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(out_dir)?;
        std::fs::create_dir_all(sds_dir)?;
        let config = out_dir.join("envoy.yaml");
        std::fs::write(&config, &self.envoy)?;
        for (name, text) in &self.sds {
            std::fs::write(sds_dir.join(name), text)?;
        }
        Ok(config)
    }
}

/// `transport_socket` for an https upstream, or nothing.
fn upstream_tls(up: &Upstream) -> Result<String, String> {
    match &up.tls_ca {
        None => Ok(String::new()),
        Some(ca) => fill(
            &template("fragments/upstream_tls.yaml").map_err(|e| e.reason)?,
            &[
                ("TLS_SNI", up.addr.host.clone()),
                ("TLS_CA_FILE", ca.display().to_string()),
            ],
        ),
    }
}

/// The phi-guard filter-state keys a template reads: every `wasm.phi_guard.<key>` it names,
/// whatever reads it (`%FILTER_STATE(wasm.phi_guard.authn:PLAIN)%` in an access log, a
/// `%CEL(filter_state[...])%`, a filter's matcher): the pipeline's `filter_state`, so it
/// writes to Envoy what the config reads. A key
/// no stage writes is refused, naming it and the template (`template`, for the message): the
/// config would read nothing there forever.
pub fn logged_filter_state(text: &str, template: &str) -> Result<Published, FieldError> {
    const PREFIX: &str = "wasm.phi_guard.";
    let mut logged = Published::NONE;
    for (at, _) in text.match_indices(PREFIX) {
        let rest = &text[at + PREFIX.len()..];
        // A filter-state key may hold dots and dashes (`wasm.phi_guard.authn.x` is not authn),
        // though not end with one (a comment's full stop).
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .unwrap_or(rest.len());
        let key = format!("phi_guard.{}", rest[..len].trim_end_matches(['.', '-']));
        let Some(with_key) = logged.with(&key) else {
            // Only the letters, digits, `_`, `.` and `-` read above: nothing else is echoed.
            return Err(FieldError::new(
                templates_field(),
                format!(
                    "template {template} reads filter state wasm.{key}, which no phi-guard stage writes (the keys are {})",
                    phi_guard_common::state::KEYS.join(", ")
                ),
            ));
        };
        logged = with_key;
    }
    Ok(logged)
}

/// A template of the repository's `envoy/` directory.
fn template(name: &str) -> Result<String, FieldError> {
    let path = envoy_dir().join(name);
    std::fs::read_to_string(&path).map_err(|e| {
        FieldError::new(
            templates_field(),
            format!("template {} unreadable: {}", path.display(), e.kind()),
        )
    })
}

/// What an error in a template blames: `$PHI_GUARD_ENVOY_DIR` when it chose the templates,
/// else the layout (the checkout's own templates, one per layout).
fn templates_field() -> &'static str {
    if std::env::var_os("PHI_GUARD_ENVOY_DIR").is_some() {
        "PHI_GUARD_ENVOY_DIR"
    } else {
        "layout"
    }
}

/// The templates: `$PHI_GUARD_ENVOY_DIR`, else this checkout's `envoy/`.
pub fn envoy_dir() -> PathBuf {
    std::env::var_os("PHI_GUARD_ENVOY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("envoy"))
}

/// `$PHI_GUARD_WASM_DIR`, else where scripts/build-wasm leaves the modules in this checkout.
pub fn default_wasm_dir() -> PathBuf {
    std::env::var_os("PHI_GUARD_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/wasm32-wasip1/release"))
}

fn absolute(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

fn load_json(path: &Path, field: &str) -> Result<Value, FieldError> {
    let bytes = std::fs::read(path).map_err(|e| {
        FieldError::new(
            field,
            format!("cannot read {}: {}", path.display(), e.kind()),
        )
    })?;
    // Strictly, as the filter will: serde_json alone keeps the last of a repeated member, and
    // the rendered config would no longer show the repetition the filter refuses.
    phi_guard_common::config::parse_document(&bytes, field).map_err(|e| {
        let at = if e.field.is_empty() {
            String::new()
        } else {
            format!(" (at `{}`)", e.field)
        };
        FieldError::new(field, format!("{}: {}{at}", path.display(), e.reason))
    })
}

fn load_source(source: &Source, base: &Path, field: &str) -> Result<Value, FieldError> {
    match source {
        Source::Path(p) => load_json(&absolute(base, p), field),
        Source::Inline(table) => serde_json::to_value(table)
            .map_err(|_| FieldError::new(field, "not representable as JSON")),
    }
}

/// A TOML error as a field error naming the dotted key: from the message when toml quotes
/// it (``missing field `port` ``), else from the line the error points at, within the last
/// table header before it.
fn toml_error(e: &toml::de::Error, text: &str) -> FieldError {
    let mut message = e.message().to_string();
    // "unknown variant `<value>`, expected ...": the quoted word is the value, not a field.
    let unknown_value = message.starts_with("unknown variant");
    if unknown_value {
        let expected = message
            .split_once(", ")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default();
        message = format!("unknown value, {expected}");
    }
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default().trim();
    let section = text[..line_start]
        .lines()
        .chain(std::iter::once(line))
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .map(|s| s.trim_matches('[').trim().to_string())
        });
    // Only these messages quote a key; others (`invalid type: integer `5``) quote the value,
    // which is never echoed.
    let quotes_key = [
        "missing field",
        "unknown field",
        "duplicate key",
        "duplicate field",
    ]
    .iter()
    .any(|p| message.starts_with(p));
    if !quotes_key {
        message = phi_guard_common::config::sanitize_serde_message(&message);
    }
    // An error on a table header (`[jwk]`, a typo of `[jwks]`) is about the table itself.
    if let (true, Some(rest), Some(s)) = (
        line.starts_with('['),
        message.strip_prefix("unknown field"),
        &section,
    ) {
        return FieldError::new(s.clone(), format!("unknown section{rest}"));
    }
    let key = match message.split('`').nth(1).filter(|_| quotes_key) {
        Some(quoted) => quoted.to_string(),
        None => line
            .split_once('=')
            .map(|(k, _)| k.trim().to_string())
            .unwrap_or_default(),
    };
    let field = match (section, key.is_empty()) {
        (Some(s), false) => format!("{s}.{key}"),
        (Some(s), true) => s,
        (None, _) => key,
    };
    FieldError::new(field, message)
}

/// Fills `${NAME}` placeholders. A placeholder alone on its line takes a multi-line value,
/// each line indented to the placeholder's column, and the line goes away when the value is
/// empty; elsewhere a value must be one line. A placeholder left unfilled is an error, so a
/// template and its caller cannot drift apart silently. Variables a template does not use are
/// fine: every layout gets the same set.
pub fn fill(template: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let lookup: BTreeMap<&str, &str> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = String::with_capacity(template.len() * 2);
    for line in template.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let trimmed = body.trim_start();
        let indent = &body[..body.len() - trimmed.len()];
        if let Some(name) = trimmed
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .filter(|n| !n.contains(['$', '{', '}']))
        {
            let value = lookup
                .get(name)
                .ok_or_else(|| format!("unresolved placeholder ${{{name}}}"))?;
            for value_line in value.lines() {
                if !value_line.is_empty() {
                    out.push_str(indent);
                }
                out.push_str(value_line);
                out.push('\n');
            }
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated placeholder".to_string())?;
            let name = &after[..end];
            let value = lookup
                .get(name)
                .ok_or_else(|| format!("unresolved placeholder ${{{name}}}"))?;
            if value.contains('\n') {
                return Err(format!(
                    "placeholder ${{{name}}} takes a multi-line value: it must stand alone on its line"
                ));
            }
            out.push_str(value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Runs `envoy --mode validate` on a rendered bootstrap (Envoy from `$ENVOY_BIN` or
/// `scripts/envoy`); `Err` carries Envoy's own explanation.
pub fn validate_with_envoy(config: &Path, keys: &KeyEnv) -> Result<String, String> {
    let envoy = crate::stack::envoy_binary().map_err(|e| e.to_string())?;
    // Validation starts no VM, but the environment it names should look like the real one.
    let out = std::process::Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .args(["--log-level", "warn"])
        .env(&keys.audit, "k".repeat(64))
        .env(&keys.mask_token, "k".repeat(64))
        .output()
        .map_err(|e| format!("cannot run envoy: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set's keys, in `phi_guard_common::state::KEYS` order.
    fn keys(set: Published) -> Vec<&'static str> {
        set.keys().collect()
    }

    #[test]
    fn fill_indents_blocks_and_drops_empty_ones() {
        let t = "a:\n  ${B}\n  ${E}\nc: ${C}\n";
        let out = fill(
            t,
            &[
                ("B", "x: 1\ny:\n  z: 2".into()),
                ("E", String::new()),
                ("C", "3".into()),
            ],
        )
        .unwrap();
        assert_eq!(out, "a:\n  x: 1\n  y:\n    z: 2\nc: 3\n");
    }

    #[test]
    fn the_pipeline_publishes_the_filter_state_its_access_log_prints() {
        use phi_guard_common::state;
        let name = Layout::Pipeline.template();
        let shipped = template(name).unwrap();
        let logged = [state::AUTHN, state::AUTHZ, state::METHOD, state::REQUEST_ID];
        assert_eq!(keys(logged_filter_state(&shipped, name).unwrap()), logged);
        // The single-stage template's access log reads the same keys.
        let single = template(Layout::Single.template()).unwrap();
        assert_eq!(keys(logged_filter_state(&single, "t").unwrap()), logged);
        // Any reader counts, in key order, once; other filters' keys are theirs.
        let t = "a: \"%FILTER_STATE(wasm.phi_guard.resource)%\"\nb: \"%FILTER_STATE(envoy.x:PLAIN)%\"\n\
                 c: \"%CEL(filter_state['wasm.phi_guard.identity'])%\"\n\
                 d: \"%FILTER_STATE(wasm.phi_guard.identity:PLAIN)%\"";
        assert_eq!(
            keys(logged_filter_state(t, "t").unwrap()),
            [state::IDENTITY, state::RESOURCE]
        );
        assert_eq!(
            keys(logged_filter_state("no access log", "t").unwrap()),
            Vec::<&str>::new()
        );
        let err = logged_filter_state("%FILTER_STATE(wasm.phi_guard.roles:PLAIN)%", "mine.yaml")
            .unwrap_err();
        assert_eq!(err.field, templates_field());
        assert!(
            err.reason.contains("mine.yaml") && err.reason.contains("wasm.phi_guard.roles"),
            "{err}"
        );
        // A comment's full stop is not part of the key.
        assert_eq!(
            keys(logged_filter_state("# the log prints wasm.phi_guard.authz.\n", "t").unwrap()),
            [state::AUTHZ]
        );
        // A longer key that starts like a contract's is another key.
        let err =
            logged_filter_state("%FILTER_STATE(wasm.phi_guard.authn.x:PLAIN)%", "t").unwrap_err();
        assert!(err.reason.contains("wasm.phi_guard.authn.x"), "{err}");
    }

    #[test]
    fn the_project_adds_filter_state_for_filters_after_the_pipeline() {
        use phi_guard_common::state;
        let config = |inbound: &Inbound| -> Vec<String> {
            let (_, pipeline) = inbound
                .stage_configs()
                .unwrap()
                .into_iter()
                .find(|(var, _)| *var == "PIPELINE_CONFIG")
                .unwrap();
            serde_json::from_value(pipeline["filter_state"].clone()).unwrap()
        };
        let mut inbound = demo();
        inbound.layout = Layout::Pipeline;
        assert_eq!(
            config(&inbound),
            [state::AUTHN, state::AUTHZ, state::METHOD, state::REQUEST_ID]
        );
        inbound.filter_state =
            Published::from_list([Some(state::IDENTITY), Some(state::AUTHZ)]).unwrap();
        assert_eq!(
            config(&inbound),
            [
                state::IDENTITY,
                state::AUTHN,
                state::AUTHZ,
                state::METHOD,
                state::REQUEST_ID
            ]
        );
    }

    #[test]
    fn fill_refuses_leftovers_and_inline_multiline() {
        let err = fill("port ${PORT}", &[]).unwrap_err();
        assert!(err.contains("${PORT}"), "{err}");
        let err = fill("a: ${B} x\n", &[("B", "1\n2".into())]).unwrap_err();
        assert!(err.contains("alone on its line"), "{err}");
    }

    #[test]
    fn urls_and_addresses() {
        let up = Upstream::parse("https://idp.example:8443/keys", "f", "/d", None).unwrap();
        assert_eq!(up.addr.host, "idp.example");
        assert_eq!(up.addr.port, 8443);
        assert_eq!(up.path, "/keys");
        assert_eq!(up.tls_ca.as_deref(), Some(Path::new(SYSTEM_CA_FILE)));
        let up = Upstream::parse("http://127.0.0.1:4318", "f", "/v1/logs", None).unwrap();
        assert_eq!((up.path.as_str(), up.tls_ca), ("/v1/logs", None));
        assert_eq!(up.addr.cluster_type(), "STATIC");
        assert_eq!(
            Upstream::parse("ftp://x/", "audit.collector", "/", None)
                .unwrap_err()
                .field,
            "audit.collector"
        );
        assert_eq!(
            HostPort::parse("labs:x", "service.upstream")
                .unwrap_err()
                .field,
            "service.upstream"
        );
        assert_eq!(
            HostPort::parse("labs.svc:50051", "f")
                .unwrap()
                .cluster_type(),
            "STRICT_DNS"
        );
    }

    fn demo() -> Inbound {
        let mut inbound =
            Inbound::from_project(&crate::repo_root().join("envoy/demo/phi-guard.toml")).unwrap();
        inbound.descriptor_set = Some(crate::demo_api::descriptor_set().unwrap());
        inbound
    }

    fn embedded(yaml: &str, filter: &str) -> Value {
        crate::stack::embedded_filter_config(yaml, filter)
            .unwrap_or_else(|| panic!("no {filter} config in the rendered yaml"))
    }

    #[test]
    fn the_demo_project_fills_every_placeholder_with_the_demo_configs() {
        let rendered = demo().render().unwrap();
        let yaml = &rendered.envoy;
        assert!(!yaml.contains("${"), "a placeholder left");
        let file = |p: &str| -> Value {
            serde_json::from_slice(&std::fs::read(crate::repo_root().join(p)).unwrap()).unwrap()
        };
        assert_eq!(
            embedded(yaml, "rbac"),
            file("filters/rbac/policy.demo.json")
        );
        let mask = embedded(yaml, "mask");
        assert_eq!(mask["roles"], file("envoy/demo/mask.json")["roles"]);
        assert_eq!(mask["catalog"], file("envoy/demo/mask.json")["catalog"]);
        assert!(mask["descriptor_set"].as_str().unwrap().len() > 100);
        assert_eq!(
            embedded(yaml, "jwt")["rules"],
            file("envoy/demo/jwt.json")["rules"]
        );
        assert!(yaml.contains(r#"matcher: {prefix: "spiffe://phi-guard.test/"}"#));
        assert!(
            yaml.contains("- name: idp_jwks"),
            "remote JWKS needs its cluster"
        );
        assert!(yaml.contains("host_env_keys: [PHI_GUARD_MASK_TOKEN_KEY]"));
        let sds: Vec<&str> = rendered.sds.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(sds, INBOUND_SDS);
        assert!(rendered.sds.iter().all(|(_, t)| !t.contains("${")));
    }

    #[test]
    fn trust_domain_and_allowed_ids_come_from_the_project() {
        let mut inbound = demo();
        inbound.trust_domain = "labs.example".into();
        let yaml = inbound.render().unwrap().envoy;
        assert!(yaml.contains(r#"matcher: {prefix: "spiffe://labs.example/"}"#));
        assert!(!yaml.contains("spiffe://phi-guard.test/\""));
        inbound.allowed_spiffe_ids = vec![
            "spiffe://labs.example/ns/a/sa/x".into(),
            "spiffe://labs.example/ns/b/sa/y".into(),
        ];
        let yaml = inbound.render().unwrap().envoy;
        assert!(yaml.contains(r#"matcher: {exact: "spiffe://labs.example/ns/a/sa/x"}"#));
        assert!(yaml.contains(r#"matcher: {exact: "spiffe://labs.example/ns/b/sa/y"}"#));
        assert!(!yaml.contains("prefix: \"spiffe://"));
        inbound.allowed_spiffe_ids = vec!["spiffe://other.example/ns/a/sa/x".into()];
        assert_eq!(
            inbound.check_trust().unwrap_err().field,
            "trust.allowed_spiffe_ids[0]"
        );
    }

    #[test]
    fn an_empty_allowed_ids_list_is_refused_not_read_as_the_whole_domain() {
        // Trial finding: `allowed_spiffe_ids = []` rendered the trust domain's prefix matcher.
        let dir =
            std::env::temp_dir().join(format!("phi-guard-render-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let demo = demo_project_text();
        let project = dir.join("phi-guard.toml");
        let text = demo.replace("[trust]\n", "[trust]\nallowed_spiffe_ids = []\n");
        assert_ne!(text, demo, "the demo project has a [trust] table");
        std::fs::write(&project, text).unwrap();
        let err = Inbound::from_project(&project).unwrap_err();
        assert_eq!(err.field, "trust.allowed_spiffe_ids", "{err}");
        assert!(err.reason.contains("is empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_inline_jwks_needs_no_cluster() {
        let mut inbound = demo();
        inbound.jwt["providers"][0]
            .as_object_mut()
            .unwrap()
            .remove("jwks");
        inbound.jwks = Jwks::Inline(json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}));
        let yaml = inbound.render().unwrap().envoy;
        assert!(!yaml.contains("- name: idp_jwks"), "no cluster");
        assert!(
            !yaml.contains(r#""cluster": "idp_jwks""#),
            "no reference to it"
        );
        assert_eq!(
            embedded(&yaml, "jwt")["providers"][0]["jwks"]["inline"]["keys"][0]["kid"],
            "k1"
        );
        // A provider still pointing at the cluster is an error naming the project field.
        let mut pointing = demo();
        pointing.jwks = Jwks::FromConfig;
        assert_eq!(pointing.render().unwrap_err().field, "jwks.url");
    }

    #[test]
    fn a_remote_https_jwks_gets_a_verified_tls_cluster() {
        let mut inbound = demo();
        inbound.jwt["providers"][0]
            .as_object_mut()
            .unwrap()
            .remove("jwks");
        inbound.jwks = Jwks::Remote(
            Upstream::parse("https://idp.labs.example/jwks", "jwks.url", "/", None).unwrap(),
        );
        let yaml = inbound.render().unwrap().envoy;
        assert!(yaml.contains("type: STRICT_DNS"));
        assert!(yaml.contains(r#"sni: "idp.labs.example""#));
        assert!(yaml.contains(r#"matcher: {exact: "idp.labs.example"}"#));
        let jwks = &embedded(&yaml, "jwt")["providers"][0]["jwks"]["remote"];
        assert_eq!(jwks["path"], "/jwks");
        assert_eq!(jwks["authority"], "idp.labs.example");
    }

    #[test]
    fn a_fetched_descriptor_set_gets_its_cluster_and_remote_block() {
        let inline = demo().render().unwrap().envoy;
        assert!(
            !inline.contains("- name: mask_descriptor_set"),
            "inline: no cluster"
        );
        let mut inbound = demo();
        inbound.descriptor_set = None;
        inbound.descriptor_set_remote = Some(RemoteDescriptorSet {
            upstream: Upstream::parse(
                "https://schemas.labs.example/v1/api.binpb",
                "mask.descriptor_set_url",
                "/",
                None,
            )
            .unwrap(),
            sha256: vec!["ab".repeat(32)],
            refresh_interval_s: Some(2),
            retry_interval_s: None,
        });
        let yaml = inbound.render().unwrap().envoy;
        assert!(yaml.contains("- name: mask_descriptor_set"));
        assert!(yaml.contains(r#"sni: "schemas.labs.example""#));
        let mask = embedded(&yaml, "mask");
        let remote = &mask["descriptor_set"]["remote"];
        assert_eq!(remote["cluster"], MASK_DESCRIPTOR_SET_CLUSTER);
        assert_eq!(remote["path"], "/v1/api.binpb");
        assert_eq!(remote["authority"], "schemas.labs.example");
        assert_eq!(remote["sha256"], json!(["ab".repeat(32)]));
        assert_eq!(remote["refresh_interval_s"], 2);
        assert!(
            remote.get("retry_interval_s").is_none(),
            "the filter's default"
        );
        assert_eq!(mask["roles"], demo().mask["roles"]);

        // Both sources, a pin that is not a digest, a config pointing at a missing cluster.
        let mut both = inbound.clone();
        both.descriptor_set = Some(crate::demo_api::descriptor_set().unwrap());
        assert_eq!(both.render().unwrap_err().field, "mask.descriptor_set_url");
        let mut bad = inbound.clone();
        bad.descriptor_set_remote.as_mut().unwrap().sha256 = vec!["xyz".into()];
        assert_eq!(
            bad.render().unwrap_err().field,
            "mask.config: descriptor_set.remote.sha256[0]"
        );
        let mut pointing = demo();
        pointing.descriptor_set = None;
        pointing.mask["descriptor_set"] = json!({"remote": {
            "cluster": MASK_DESCRIPTOR_SET_CLUSTER, "path": "/x", "authority": "x"}});
        assert_eq!(
            pointing.render().unwrap_err().field,
            "mask.descriptor_set_url"
        );
    }

    #[test]
    fn the_project_file_names_the_descriptor_set_url() {
        let dir = std::env::temp_dir().join(format!("phi-guard-render-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let demo = std::fs::read_to_string(crate::repo_root().join("envoy/demo/phi-guard.toml"))
            .unwrap()
            .replace("../../", &format!("{}/", crate::repo_root().display()))
            .replace("= \"jwt.json\"", "= \"ENVOY_DEMO/jwt.json\"")
            .replace("= \"mask.json\"", "= \"ENVOY_DEMO/mask.json\"")
            .replace("= \"audit.json\"", "= \"ENVOY_DEMO/audit.json\"")
            .replace(
                "= \"audit_service.json\"",
                "= \"ENVOY_DEMO/audit_service.json\"",
            )
            .replace(
                "ENVOY_DEMO",
                &crate::repo_root().join("envoy/demo").display().to_string(),
            );
        let project = dir.join("phi-guard.toml");
        let load = |extra: &str| {
            std::fs::write(
                &project,
                demo.replace("[mask]\n", &format!("[mask]\n{extra}\n")),
            )
            .unwrap();
            Inbound::from_project(&project)
        };
        let pin = "cd".repeat(32);
        let inbound = load(&format!(
            "descriptor_set_url = \"http://127.0.0.1:8082/api.binpb\"\ndescriptor_set_sha256 = \"{pin}\""
        ))
        .unwrap();
        let remote = inbound.descriptor_set_remote.clone().unwrap();
        assert_eq!(remote.upstream.addr.port, 8082);
        assert_eq!(remote.upstream.path, "/api.binpb");
        assert_eq!(remote.sha256, vec![pin.clone()]);
        let yaml = inbound.render().unwrap().envoy;
        assert!(yaml.contains("socket_address: {address: 127.0.0.1, port_value: 8082}"));
        let list = load(&format!(
            "descriptor_set_url = \"http://127.0.0.1:8082/api.binpb\"\ndescriptor_set_sha256 = [\"{pin}\", \"{}\"]",
            "ef".repeat(32)
        ))
        .unwrap();
        assert_eq!(list.descriptor_set_remote.unwrap().sha256.len(), 2);
        let mut timed = load(
            "descriptor_set_url = \"http://h/x\"\nallow_plaintext = true\ndescriptor_set_refresh_interval_s = 0",
        )
        .unwrap();
        assert_eq!(
            timed.render().unwrap_err().field,
            "mask.config: descriptor_set.remote.refresh_interval_s"
        );
        timed
            .descriptor_set_remote
            .as_mut()
            .unwrap()
            .refresh_interval_s = Some(60);
        timed.render().unwrap();
        assert_eq!(
            load("descriptor_set_retry_interval_s = 5")
                .unwrap_err()
                .field,
            "mask.descriptor_set_retry_interval_s"
        );
        assert_eq!(
            load(&format!("descriptor_set_sha256 = \"{pin}\""))
                .unwrap_err()
                .field,
            "mask.descriptor_set_sha256"
        );
        assert_eq!(
            load("descriptor_set_url = \"ftp://x/\"").unwrap_err().field,
            "mask.descriptor_set_url"
        );
        // Plaintext to a remote host: anyone on the path could swap the set. Refused unless
        // the section opts in; loopback stays allowed.
        let err = load("descriptor_set_url = \"http://schemas.rx.hospital.example/api.binpb\"")
            .unwrap_err();
        assert_eq!(err.field, "mask.descriptor_set_url", "{err}");
        assert!(
            err.reason.contains("allow_plaintext = true in [mask]"),
            "{err}"
        );
        load("descriptor_set_url = \"http://schemas.rx.hospital.example/api.binpb\"\nallow_plaintext = true")
            .unwrap();
        load("descriptor_set_url = \"https://schemas.rx.hospital.example/api.binpb\"").unwrap();
        assert_eq!(
            load("allow_plaintext = true").unwrap_err().field,
            "mask.allow_plaintext"
        );
        std::fs::write(dir.join("api.binpb"), phi_guard_proto::DESCRIPTOR_SET).unwrap();
        assert_eq!(
            load("descriptor_set = \"api.binpb\"\ndescriptor_set_url = \"http://h/x\"")
                .unwrap_err()
                .field,
            "mask.descriptor_set_url"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jwt_secrets_reach_the_jwt_vm_only_when_named() {
        let yaml = demo().render().unwrap().envoy;
        let jwt_vm = &yaml[yaml.find("vm_id: phi_guard_jwt").unwrap()..];
        let jwt_vm = &jwt_vm[..jwt_vm.find("code:").unwrap()];
        assert!(!jwt_vm.contains("environment_variables"), "{jwt_vm}");
        let mut inbound = demo();
        inbound.jwt["replay"] = json!({"key_env": "PHI_GUARD_JWT_REPLAY_KEY"});
        inbound.jwt["rules"][1]["replay_protection"] = true.into();
        let yaml = inbound.render().unwrap().envoy;
        let jwt_vm = &yaml[yaml.find("vm_id: phi_guard_jwt").unwrap()..];
        let jwt_vm = &jwt_vm[..jwt_vm.find("code:").unwrap()];
        assert!(
            jwt_vm.contains("host_env_keys: [PHI_GUARD_JWT_REPLAY_KEY]"),
            "{jwt_vm}"
        );
    }

    /// The demo project file with its stage-config paths made absolute, to be written
    /// anywhere (a temporary directory) and still load.
    fn demo_project_text() -> String {
        std::fs::read_to_string(crate::repo_root().join("envoy/demo/phi-guard.toml"))
            .unwrap()
            .replace("= \"jwt.json\"", "= \"../../envoy/demo/jwt.json\"")
            .replace("= \"mask.json\"", "= \"../../envoy/demo/mask.json\"")
            .replace("= \"audit.json\"", "= \"../../envoy/demo/audit.json\"")
            .replace(
                "= \"audit_service.json\"",
                "= \"../../envoy/demo/audit_service.json\"",
            )
            .replace("../../", &format!("{}/", crate::repo_root().display()))
    }

    #[test]
    fn errors_name_the_project_field() {
        let dir = std::env::temp_dir().join(format!("phi-guard-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let demo = demo_project_text();
        let project = dir.join("phi-guard.toml");
        let field_of = |text: String| {
            std::fs::write(&project, text).unwrap();
            Inbound::from_project(&project)
                .and_then(|i| i.render().map(|_| ()))
                .unwrap_err()
                .field
        };
        assert_eq!(field_of(demo.replace("port = 8443\n", "")), "listener.port");
        assert_eq!(
            field_of(demo.replace("port = 8443", "prot = 8443")),
            "listener.prot"
        );
        assert_eq!(
            field_of(demo.replace("port = 8443", "port = \"eighty\"")),
            "listener.port"
        );
        assert_eq!(
            field_of(demo.replace("127.0.0.1:50051", "127.0.0.1")),
            "service.upstream"
        );
        assert_eq!(
            field_of(demo.replace("domain = \"phi-guard.test\"", "domain = \"Bad Domain\"")),
            "trust.domain"
        );
        assert_eq!(
            field_of(demo.replace("http://127.0.0.1:4318/v1/logs", "udp://x")),
            "audit.collector"
        );
        // A stage config is checked by the filter's own parser, and the error says which.
        let inline_rbac = demo.replace(
            "[rbac]\npolicy = ",
            "[rbac.policy]\nversion = \"v\"\nmode = \"sometimes\"\nrules = []\n#",
        );
        assert_eq!(field_of(inline_rbac), "rbac.policy: mode");
        // A section typo is an unknown section, not `jwk.jwk`.
        let typo = demo.replace("[jwks]", "[jwk]");
        std::fs::write(&project, &typo).unwrap();
        let err = Inbound::from_project(&project).unwrap_err();
        assert_eq!(err.field, "jwk", "{err}");
        assert!(err.reason.starts_with("unknown section `jwk`"), "{err}");
        // An invalid layout names `layout` and never echoes the value.
        let long = "x".repeat(300);
        for bad in [
            format!("\"{long}\""),
            "5".to_string(),
            "[\"single\"]".to_string(),
        ] {
            std::fs::write(&project, format!("layout = {bad}\n{demo}")).unwrap();
            let err = Inbound::from_project(&project).unwrap_err();
            assert_eq!(err.field, "layout", "{bad}: {err}");
            assert!(!err.to_string().contains("xxxx"), "{err}");
        }
        // `filter_state` takes phi-guard's keys, each once, and never echoes a bad one.
        for (bad, field) in [
            (
                "[\"phi_guard.identity\", \"SECRET-VALUE-123\"]",
                "filter_state[1]",
            ),
            (
                "[\"phi_guard.identity\", \"phi_guard.identity\"]",
                "filter_state[1]",
            ),
        ] {
            std::fs::write(&project, format!("filter_state = {bad}\n{demo}")).unwrap();
            let err = Inbound::from_project(&project).unwrap_err();
            assert_eq!(err.field, field, "{bad}: {err}");
            assert!(!err.to_string().contains("SECRET"), "{err}");
        }
        std::fs::write(
            &project,
            format!("filter_state = [\"phi_guard.mask\"]\n{demo}"),
        )
        .unwrap();
        let added = Inbound::from_project(&project).unwrap();
        assert_eq!(keys(added.filter_state), [phi_guard_common::state::MASK]);
        // An error inside a stage config file names that file.
        let jwt = dir.join("jwt.json");
        let mut doc: Value = serde_json::from_slice(
            &std::fs::read(crate::repo_root().join("envoy/demo/jwt.json")).unwrap(),
        )
        .unwrap();
        doc["providers"][0]["audiences"] = json!([]);
        std::fs::write(&jwt, doc.to_string()).unwrap();
        let text = demo.replace(
            &format!("= \"{}/envoy/demo/jwt.json\"", crate::repo_root().display()),
            "= \"jwt.json\"",
        );
        std::fs::write(&project, text).unwrap();
        let inbound = Inbound::from_project(&project).unwrap();
        let err = inbound.render().unwrap_err();
        assert_eq!(err.field, "jwt.config: providers[0].audiences");
        let shown = inbound.locate(&project, &err);
        assert!(
            shown.starts_with(&format!(
                "{}: field `providers[0].audiences`: ",
                jwt.display()
            )),
            "{shown}"
        );
        // A member repeated in a stage file is refused, not resolved to the last copy: the
        // rendered config would have handed the filter only `"SSN": "reveal"` (trial finding:
        // a physician then saw the whole SSN the file's first entry masked).
        let mask = dir.join("mask.json");
        std::fs::write(
            &mask,
            r#"{"roles": {"physician": {"SSN": {"action": "partial", "keep_last": 4}, "SSN": "reveal"}}}"#,
        )
        .unwrap();
        let text = demo.replace(
            &format!(
                "= \"{}/envoy/demo/mask.json\"",
                crate::repo_root().display()
            ),
            "= \"mask.json\"",
        );
        assert_ne!(text, demo, "the demo project names envoy/demo/mask.json");
        std::fs::write(&project, text).unwrap();
        let err = Inbound::from_project(&project)
            .and_then(|inbound| inbound.render().map(drop))
            .unwrap_err();
        assert!(err.field.starts_with("mask"), "{err}");
        assert!(err.reason.contains("appears twice"), "{err}");
        assert!(err.reason.contains("`SSN`"), "{err}");
        // What render fills in itself stays the project file's.
        let filled = FieldError::new("mask.config: descriptor_set", "x");
        assert!(inbound.locate(&project, &filled).starts_with(&format!(
            "{}: field `mask.config: descriptor_set`",
            project.display()
        )));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plaintext_http_is_refused_unless_loopback_or_opted_in() {
        let dir =
            std::env::temp_dir().join(format!("phi-guard-render-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let demo = demo_project_text();
        let project = dir.join("phi-guard.toml");
        let load = |text: String| {
            std::fs::write(&project, text).unwrap();
            Inbound::from_project(&project)
        };
        let jwks = |url: &str, extra: &str| {
            demo.replace(
                "url = \"http://127.0.0.1:8081/.well-known/jwks.json\"",
                &format!("url = \"{url}\"\n{extra}"),
            )
        };
        // The trial's input: the IdP's keys over plaintext to a remote host.
        let err = load(jwks("http://idp.rx.hospital.example/jwks.json", "")).unwrap_err();
        assert_eq!(err.field, "jwks.url", "{err}");
        assert!(
            err.reason.contains("allow_plaintext = true in [jwks]"),
            "{err}"
        );
        for url in [
            "http://10.0.0.7:8081/jwks.json",
            "http://[fe80::1]:8081/jwks.json",
            "http://localhost.rx.example/jwks.json",
        ] {
            assert_eq!(load(jwks(url, "")).unwrap_err().field, "jwks.url", "{url}");
        }
        // Loopback (127.0.0.0/8, ::1, localhost) stays allowed, as does https and the opt-in.
        for url in [
            "http://127.0.0.1:8081/jwks.json",
            "http://127.8.9.10:8081/jwks.json",
            "http://[::1]:8081/jwks.json",
            "http://localhost:8081/jwks.json",
            "https://idp.rx.hospital.example/jwks.json",
        ] {
            load(jwks(url, "")).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let opted = load(jwks(
            "http://idp.rx.hospital.example/jwks.json",
            "allow_plaintext = true",
        ))
        .unwrap();
        assert!(matches!(&opted.jwks, Jwks::Remote(up) if up.tls_ca.is_none()));
        // The collector: the same rule, its own opt-in.
        let collector = |url: &str, extra: &str| {
            demo.replace(
                "collector = \"http://127.0.0.1:4318/v1/logs\"",
                &format!("collector = \"{url}\"\n{extra}"),
            )
        };
        let err = load(collector(
            "http://otel.rx.hospital.example:4318/v1/logs",
            "",
        ))
        .unwrap_err();
        assert_eq!(err.field, "audit.collector", "{err}");
        assert!(err.reason.contains("[audit]"), "{err}");
        load(collector(
            "http://otel.rx.hospital.example:4318/v1/logs",
            "allow_plaintext = true",
        ))
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_files_must_exist_and_be_long_enough() {
        let dir =
            std::env::temp_dir().join(format!("phi-guard-render-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut inbound = demo();
        // The trial's input: `[keys] dir = "nokeys"`, which does not exist.
        inbound.keys_dir = dir.join("nokeys");
        let err = inbound.check_key_files().unwrap_err();
        assert_eq!(err.field, "keys.dir", "{err}");
        assert!(
            err.reason.contains("audit.key") && err.reason.contains("phi-guard keys"),
            "{err}"
        );
        let specs = crate::project::key_specs(&inbound.keys, &inbound.jwt);
        crate::project::write_keys(&inbound.keys_dir, &specs, false).unwrap();
        inbound.check_key_files().unwrap();
        // A key shorter than the filter's minimum; its contents are never echoed.
        std::fs::write(
            inbound.keys_dir.join("mask-token.key"),
            "0123456789abcdef\n",
        )
        .unwrap();
        let err = inbound.check_key_files().unwrap_err();
        assert_eq!(err.field, "keys.dir", "{err}");
        assert!(
            err.reason.contains("mask-token.key") && err.reason.contains("16 bytes"),
            "{err}"
        );
        assert!(!err.reason.contains("0123456789abcdef"), "{err}");
        // A key that a stage's config adds (jwt replay) is checked too.
        crate::project::write_keys(&inbound.keys_dir, &specs, true).unwrap();
        inbound.jwt["replay"] = json!({"key_env": "PHI_GUARD_JWT_REPLAY_KEY"});
        let err = inbound.check_key_files().unwrap_err();
        assert!(err.reason.contains("jwt-replay.key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
