//! The stack harness: fresh PKI, the demo backend, Envoy with the envoy/ configs, on free
//! loopback ports. The e2e tests and `scripts/demo` both run it, so the demo is exactly what
//! is tested.
//!
//! A [`Stack`] tears everything down when dropped. When it is dropped during a panic (a failed
//! test) it keeps its directory, Envoy's logs included, and prints where they are.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{self, ClientCert, MtlsTarget};
use crate::issuer::{self, JwksServer, SigningKey, UserClaims};
use crate::pki::{self, Kind, Leaf, Pki};
pub use crate::render::Layout;
use crate::render::{self, HostPort, Inbound, Jwks};
use phi_guard_audit_cli::collector::{Collector, FailMode};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A client workload the harness issues a certificate for.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub spiffe_id: String,
    pub leaf: Leaf,
}

/// An auxiliary service of the stack (backend, IdP): in the test's process, or a process of
/// its own when the stack must outlive its handle (the demo's `up`).
enum Service {
    /// On the test's tokio runtime; stopped by sending on (or dropping) the sender.
    InProcess(Option<tokio::sync::oneshot::Sender<()>>),
    Process(Child),
}

/// The demo users and their roles (`billing_clerk` is mapped to `billing` by the demo policy).
pub const USERS: &[(&str, &[&str])] = &[
    ("nurse", &["nurse"]),
    ("billing", &["billing_clerk"]),
    ("research", &["research"]),
    ("admin", &["admin"]),
];

/// The demo identity provider as the stack runs it.
pub struct Idp {
    pub key: SigningKey,
    /// Where the JWKS is served (`http://ADDR/.well-known/jwks.json`).
    pub addr: SocketAddr,
    /// The in-process server, when the stack runs in-process.
    pub server: Option<JwksServer>,
    /// Demo user name → a valid token.
    pub tokens: BTreeMap<String, String>,
    pub jwks_file: PathBuf,
    pub signing_key_file: PathBuf,
}

/// How long a started Envoy may take to report ready (`/ready` on its admin port).
pub const ENVOY_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running Envoy.
pub struct Envoy {
    child: Option<Child>,
    pub admin: SocketAddr,
    pub listen: SocketAddr,
    pub log: PathBuf,
    pub config: PathBuf,
}

pub struct Stack {
    pub dir: PathBuf,
    pub pki: Pki,
    pub inbound: Envoy,
    /// The client-side sidecar, when asked for; it presents the `egress` workload's certificate.
    pub egress: Option<Envoy>,
    pub backend_addr: SocketAddr,
    pub workloads: BTreeMap<String, Workload>,
    pub idp: Idp,
    /// The audit collector, when it runs in-process (tests stop and restart it).
    pub collector: Option<Collector>,
    pub collector_addr: SocketAddr,
    /// The collector's output: one JSON line per audit event.
    pub audit_log: PathBuf,
    /// The audit chain's HMAC key (the bytes of PHI_GUARD_AUDIT_KEY).
    pub audit_key: PathBuf,
    /// The mask filter's keyed-token key (the bytes of PHI_GUARD_MASK_TOKEN_KEY).
    pub mask_key: PathBuf,
    /// The inbound layout this stack rendered (its variants render the same).
    pub layout: Layout,
    services: Vec<Service>,
    /// `false` leaves processes and files behind on drop (the demo's `up`).
    teardown: bool,
}

/// What to start.
pub struct StackBuilder {
    name: String,
    dir: Option<PathBuf>,
    workloads: Vec<(String, String, String)>,
    egress_workload: Option<String>,
    /// Directory of the tools' binaries, when services run as processes.
    bin_dir: Option<PathBuf>,
    jwks_failing: bool,
    malformed_backend: bool,
    drifted_backend: bool,
    rs256_idp: bool,
    inbound_patch: Option<ConfigPatch>,
    descriptor_set: Option<render::RemoteDescriptorSet>,
    layout: Layout,
}

/// A change to the rendered inbound config, for tests of what a bad config does.
pub type ConfigPatch = Box<dyn Fn(String) -> String + Send>;

impl StackBuilder {
    /// A client workload `name` with SPIFFE ID `spiffe://phi-guard.test/ns/<ns>/sa/<sa>`.
    pub fn workload(mut self, name: &str, namespace: &str, service_account: &str) -> Self {
        self.workloads
            .push((name.into(), namespace.into(), service_account.into()));
        self
    }

    /// Also start the egress sidecar, presenting the certificate of workload `name`.
    pub fn egress(mut self, name: &str) -> Self {
        self.egress_workload = Some(name.into());
        self
    }

    /// Start with the IdP's JWKS endpoint answering 503 (in-process stacks only).
    pub fn jwks_failing(mut self) -> Self {
        self.jwks_failing = true;
        self
    }

    /// Put [`crate::backend::spawn_malformed`] behind Envoy instead of the demo service.
    pub fn malformed_backend(mut self) -> Self {
        self.malformed_backend = true;
        self
    }

    /// Put [`crate::backend::spawn_drifted`] behind Envoy instead of the demo service.
    pub fn drifted_backend(mut self) -> Self {
        self.drifted_backend = true;
        self
    }

    /// The IdP signs with an RSA-2048 key (RS256) instead of the demo's ES256 key.
    pub fn rs256_idp(mut self) -> Self {
        self.rs256_idp = true;
        self
    }

    /// The mask filter fetches its descriptor set from `remote` (as `[mask]
    /// descriptor_set_url` renders it) instead of carrying the demo set inline.
    pub fn mask_descriptor_set_remote(mut self, remote: render::RemoteDescriptorSet) -> Self {
        self.descriptor_set = Some(remote);
        self
    }

    /// Which inbound layout to render: [`Layout::Pipeline`] (one module) or
    /// [`Layout::Single`] (four modules); the default is [`default_layout`].
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Edit the rendered inbound config before Envoy starts.
    pub fn patch_inbound(mut self, patch: impl Fn(String) -> String + Send + 'static) -> Self {
        self.inbound_patch = Some(Box::new(patch));
        self
    }

    /// Use this directory instead of a fresh one under target/e2e.
    pub fn dir(mut self, dir: PathBuf) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Run the backend and the IdP as processes (binaries from `bin_dir`) instead of
    /// in-process, so they can outlive this process.
    pub fn as_processes(mut self, bin_dir: PathBuf) -> Self {
        self.bin_dir = Some(bin_dir);
        self
    }

    pub async fn start(self) -> Result<Stack, Error> {
        let dir = match self.dir {
            Some(d) => d,
            None => fresh_dir(&self.name)?,
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("logs"))?;

        let mut services = Vec::new();
        let backend_addr = match &self.bin_dir {
            None => {
                let (addr, stop) = if self.malformed_backend {
                    crate::backend::spawn_malformed().await?
                } else if self.drifted_backend {
                    crate::backend::spawn_drifted().await?
                } else {
                    crate::backend::spawn().await?
                };
                services.push(Service::InProcess(Some(stop)));
                addr
            }
            Some(bin_dir) => {
                let (addr, child) = spawn_process(
                    &bin_dir.join("phi-demo-backend"),
                    &dir,
                    "backend",
                    None,
                    &[],
                )?;
                services.push(Service::Process(child));
                addr
            }
        };
        let idp = start_idp(&dir, self.bin_dir.as_deref(), self.rs256_idp, &mut services).await?;
        let keys = Keys::create(&dir)?;
        let audit_log = dir.join("audit/events.jsonl");
        std::fs::create_dir_all(dir.join("audit"))?;
        let (collector_addr, collector) = match &self.bin_dir {
            None => {
                let collector = Collector::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    &audit_log,
                    FailMode::default(),
                )
                .await?;
                (collector.addr, Some(collector))
            }
            Some(bin_dir) => {
                let (addr, child) = spawn_process(
                    &bin_dir.join("phi-guard-audit-collector"),
                    &dir,
                    "collector",
                    Some("--listen"),
                    &["--out", &audit_log.to_string_lossy()],
                )?;
                services.push(Service::Process(child));
                (addr, None)
            }
        };
        if let (true, Some(server)) = (self.jwks_failing, &idp.server) {
            server.set_mode(issuer::JwksMode::Failing);
        }

        let dir2 = dir.clone();
        let workloads = self.workloads.clone();
        let egress_workload = self.egress_workload.clone();
        let ports = UpstreamPorts {
            backend: backend_addr.port(),
            jwks: idp.addr.port(),
            collector: collector_addr.port(),
            descriptor_set: self.descriptor_set,
            layout: self.layout,
        };
        let env = keys.envoy_env()?;
        let patch = self.inbound_patch;
        let wait_for_keys = !self.jwks_failing;
        tokio::task::spawn_blocking(move || {
            start_blocking(
                dir2,
                workloads,
                egress_workload,
                ports,
                env,
                patch,
                wait_for_keys,
            )
        })
        .await?
        .map(|(pki, inbound, egress, workloads)| Stack {
            dir,
            pki,
            inbound,
            egress,
            backend_addr,
            workloads,
            idp,
            collector,
            collector_addr,
            audit_log,
            audit_key: keys.audit,
            mask_key: keys.mask,
            layout: self.layout,
            services,
            teardown: true,
        })
    }
}

type Started = (Pki, Envoy, Option<Envoy>, BTreeMap<String, Workload>);

/// Starts `binary [ADDR_FLAG] ADDR ARGS..` on a free loopback port and waits until it listens.
fn spawn_process(
    binary: &Path,
    dir: &Path,
    name: &str,
    addr_flag: Option<&str>,
    args: &[&str],
) -> Result<(SocketAddr, Child), Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // Output goes to a log file, not the caller's terminal or pipe: a process left running by
    // `demo up` must not hold the pipe of whoever started it.
    let log = std::fs::File::create(dir.join(format!("logs/{name}.log")))?;
    let mut child = Command::new(binary)
        .args(addr_flag)
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    if let Err(e) = wait_for_port(addr, Duration::from_secs(10)) {
        let _ = child.kill();
        return Err(e);
    }
    Ok((addr, child))
}

/// Lifetime of the demo users' tokens: long enough for a demo left up for a while, within
/// the jwt filter's configured maximum lifetime.
pub const TOKEN_TTL_MINUTES: u64 = 60;

async fn start_idp(
    dir: &Path,
    bin_dir: Option<&Path>,
    rs256: bool,
    services: &mut Vec<Service>,
) -> Result<Idp, Error> {
    let key = if rs256 {
        tokio::task::spawn_blocking(|| SigningKey::generate_rs256("demo-rsa-key-1")).await?
    } else {
        SigningKey::generate("demo-key-1")
    };
    let jwks = issuer::jwks(&[&key]);
    let idp_dir = dir.join("idp");
    std::fs::create_dir_all(&idp_dir)?;
    let jwks_file = idp_dir.join("jwks.json");
    let signing_key_file = idp_dir.join("signing_key.pem");
    std::fs::write(&jwks_file, serde_json::to_vec_pretty(&jwks)?)?;
    std::fs::write(&signing_key_file, key.private_pem())?;
    let (addr, server) = match bin_dir {
        None => {
            let server = JwksServer::start(&jwks).await?;
            (server.addr, Some(server))
        }
        Some(bin_dir) => {
            let (addr, child) = spawn_process(
                &bin_dir.join("phi-demo-idp"),
                dir,
                "idp",
                None,
                &[&jwks_file.to_string_lossy()],
            )?;
            services.push(Service::Process(child));
            (addr, None)
        }
    };
    let tokens = USERS
        .iter()
        .map(|(user, roles)| {
            let token = key.mint(
                &UserClaims::user(user, roles),
                issuer::AUDIENCE,
                jwt_simple::prelude::Duration::from_mins(TOKEN_TTL_MINUTES),
            );
            (user.to_string(), token)
        })
        .collect();
    Ok(Idp {
        key,
        addr,
        server,
        tokens,
        jwks_file,
        signing_key_file,
    })
}

/// The demo project file (`envoy/demo/phi-guard.toml`), what `phi-guard render` would make of
/// it, on the stack's loopback ports and directories and with the descriptor set of both demo
/// APIs ([`crate::demo_api::descriptor_set`]).
pub fn demo_inbound(
    dir: &Path,
    ports: &UpstreamPorts,
    listen: u16,
    admin: u16,
) -> Result<Inbound, Error> {
    let mut inbound = Inbound::from_project(&crate::repo_root().join("envoy/demo/phi-guard.toml"))?;
    let loopback = |port| HostPort {
        host: "127.0.0.1".into(),
        port,
    };
    inbound.listen = loopback(listen);
    inbound.admin_port = admin;
    inbound.upstream = loopback(ports.backend);
    inbound.collector.addr = loopback(ports.collector);
    match &mut inbound.jwks {
        Jwks::Remote(up) => up.addr = loopback(ports.jwks),
        _ => {
            return Err("envoy/demo/phi-guard.toml: the demo fetches its JWKS ([jwks] url)".into())
        }
    }
    inbound.layout = ports.layout;
    inbound.out_dir = dir.to_path_buf();
    inbound.sds_dir = dir.join("sds/inbound");
    inbound.log_dir = dir.join("logs");
    inbound.wasm_dir = wasm_dir()?;
    inbound.check_wasm()?;
    inbound.keys_dir = dir.join("keys");
    match &ports.descriptor_set {
        // Both demo APIs (PatientService and FhirService) in one set.
        None => inbound.descriptor_set = Some(crate::demo_api::descriptor_set()?),
        Some(remote) => {
            inbound.descriptor_set = None;
            inbound.descriptor_set_remote = Some(remote.clone());
        }
    }
    Ok(inbound)
}

/// Renders the demo project ([`demo_inbound`]) as `<dir>/<name>.yaml` on free loopback ports,
/// in front of `ports`, with the stack's inbound SDS directory and logs, and starts it.
fn start_inbound(
    name: &str,
    concurrency: u32,
    patch: Option<ConfigPatch>,
    env: &[(String, String)],
    dir: &Path,
    ports: &UpstreamPorts,
) -> Result<Envoy, Error> {
    let listen = free_port()?;
    let admin = free_port()?;
    let inbound = demo_inbound(dir, ports, listen, admin)?;
    let rendered = inbound.render()?;
    std::fs::create_dir_all(&inbound.sds_dir)?;
    for (file, text) in &rendered.sds {
        std::fs::write(inbound.sds_dir.join(file), text)?;
    }
    Envoy::start_rendered(
        name,
        concurrency,
        patch,
        env,
        dir,
        rendered.envoy,
        admin,
        listen,
    )
}

/// Loopback ports of what the inbound Envoy calls.
pub struct UpstreamPorts {
    pub backend: u16,
    pub jwks: u16,
    pub collector: u16,
    /// Where the mask filter fetches its descriptor set; `None`: the demo set inline.
    pub descriptor_set: Option<render::RemoteDescriptorSet>,
    /// The inbound layout to render.
    pub layout: Layout,
}

/// The layout stacks (the e2e tests, the demo) render unless told otherwise:
/// [`Layout::Pipeline`], the one-module chain, or what `PHI_GUARD_E2E_LAYOUT` names (`single`,
/// `pipeline`), so the whole e2e suite runs against either
/// (`PHI_GUARD_E2E_LAYOUT=single cargo test -p phi-guard-e2e`). `phi-guard render` keeps the
/// project file's layout (`single` unless it says otherwise).
pub fn default_layout() -> Layout {
    std::env::var("PHI_GUARD_E2E_LAYOUT")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(Layout::Pipeline)
}

/// The secrets Envoy gets through its environment, one file each (fresh random per stack).
struct Keys {
    audit: PathBuf,
    mask: PathBuf,
}

impl Keys {
    fn create(dir: &Path) -> std::io::Result<Keys> {
        let keys_dir = dir.join("keys");
        std::fs::create_dir_all(&keys_dir)?;
        let keys = Keys {
            audit: keys_dir.join("audit.key"),
            mask: keys_dir.join("mask.key"),
        };
        for path in [&keys.audit, &keys.mask] {
            std::fs::write(
                path,
                crate::project::random_hex(32).map_err(std::io::Error::other)?,
            )?;
        }
        Ok(keys)
    }

    fn envoy_env(&self) -> std::io::Result<Vec<(String, String)>> {
        Ok(vec![
            (
                "PHI_GUARD_AUDIT_KEY".into(),
                std::fs::read_to_string(&self.audit)?,
            ),
            (
                "PHI_GUARD_MASK_TOKEN_KEY".into(),
                std::fs::read_to_string(&self.mask)?,
            ),
        ])
    }
}

/// Where scripts/build-wasm leaves the filter modules.
pub fn wasm_dir() -> Result<PathBuf, Error> {
    let dir = crate::repo_root().join("target/wasm32-wasip1/release");
    for module in [
        "phi_guard_jwt",
        "phi_guard_rbac",
        "phi_guard_mask",
        "phi_guard_audit",
    ] {
        if !dir.join(format!("{module}.wasm")).exists() {
            return Err(format!(
                "{module}.wasm is not built: run scripts/build-wasm (looked in {})",
                dir.display()
            )
            .into());
        }
    }
    Ok(dir)
}

fn start_blocking(
    dir: PathBuf,
    workload_specs: Vec<(String, String, String)>,
    egress_workload: Option<String>,
    ports: UpstreamPorts,
    env: Vec<(String, String)>,
    inbound_patch: Option<ConfigPatch>,
    wait_for_keys: bool,
) -> Result<Started, Error> {
    let pki = Pki::init(&dir.join("pki"))?;
    pki.issue(
        "server",
        Kind::Server,
        pki::SERVER_SPIFFE,
        &[pki::SERVER_NAME],
        &[],
    )?;
    let mut workloads = BTreeMap::new();
    for (name, ns, sa) in workload_specs {
        let spiffe_id = pki::spiffe_id(&ns, &sa);
        let leaf = pki.issue(&name, Kind::Client, &spiffe_id, &[], &[])?;
        workloads.insert(
            name.clone(),
            Workload {
                name,
                spiffe_id,
                leaf,
            },
        );
    }

    let inbound_sds = dir.join("sds/inbound");
    std::fs::create_dir_all(&inbound_sds)?;
    pki.install("server", &inbound_sds.join("server"))?;
    pki.install_bundle(&inbound_sds.join("trust"))?;

    let logs = dir.join("logs");
    let inbound = start_inbound("inbound", 1, inbound_patch, &env, &dir, &ports)?;
    if wait_for_keys {
        // The main thread's VM and the one worker's.
        inbound.wait_for_key_sets(2, ENVOY_READY_TIMEOUT)?;
    }
    let inbound_listen = inbound.listen.port();

    let egress = match egress_workload {
        None => None,
        Some(name) => {
            let egress_sds = dir.join("sds/egress");
            render_sds(&egress_sds, &["client_cert.yaml", "trust_bundle.yaml"])?;
            pki.install(&name, &egress_sds.join("client"))?;
            pki.install_bundle(&egress_sds.join("trust"))?;
            let listen = free_port()?;
            Some(Envoy::start(
                "egress",
                "egress",
                1,
                None,
                &[],
                &dir,
                &[
                    ("ADMIN_PORT", free_port()?.to_string()),
                    ("LISTEN_PORT", listen.to_string()),
                    ("UPSTREAM_PORT", inbound_listen.to_string()),
                    ("SDS_DIR", egress_sds.display().to_string()),
                    ("LOG_DIR", logs.display().to_string()),
                ],
                listen,
            )?)
        }
    };
    Ok((pki, inbound, egress, workloads))
}

impl Stack {
    pub fn builder(name: &str) -> StackBuilder {
        StackBuilder {
            name: name.into(),
            dir: None,
            workloads: Vec::new(),
            egress_workload: None,
            bin_dir: None,
            jwks_failing: false,
            malformed_backend: false,
            drifted_backend: false,
            rs256_idp: false,
            inbound_patch: None,
            descriptor_set: None,
            layout: default_layout(),
        }
    }

    pub fn inbound_sds(&self) -> PathBuf {
        self.dir.join("sds/inbound")
    }

    pub fn egress_sds(&self) -> PathBuf {
        self.dir.join("sds/egress")
    }

    pub fn target(&self) -> MtlsTarget {
        MtlsTarget {
            endpoint: self.inbound.listen.to_string(),
            server_name: pki::SERVER_NAME.into(),
            ca_bundle: self.pki.bundle(),
        }
    }

    pub fn workload(&self, name: &str) -> &Workload {
        self.workloads
            .get(name)
            .unwrap_or_else(|| panic!("no workload {name} in this stack"))
    }

    /// A client over mTLS presenting workload `name`'s certificate, without a user token.
    pub async fn client(&self, name: &str) -> Result<client::Client, Error> {
        self.client_as(name, None).await
    }

    /// A client over mTLS presenting workload `workload`'s certificate and, when `user` is
    /// given, that demo user's token.
    pub async fn client_as(
        &self,
        workload: &str,
        user: Option<&str>,
    ) -> Result<client::Client, Error> {
        let leaf = &self.workload(workload).leaf;
        let token = user.map(|u| self.token(u));
        client::connect_mtls(
            &self.target(),
            Some(ClientCert {
                cert: &leaf.cert,
                key: &leaf.key,
            }),
            token,
        )
        .await
    }

    /// A valid token of demo user `user`.
    pub fn token(&self, user: &str) -> &str {
        self.idp
            .tokens
            .get(user)
            .unwrap_or_else(|| panic!("no demo user {user}"))
    }

    /// Another Envoy from `envoy/inbound.yaml`, edited by `patch`, in front of this stack's
    /// backend, IdP and collector with the same certificates: the benchmarks compare such
    /// variants side by side. Its config and log are named after `instance`.
    pub fn start_inbound_variant(
        &self,
        instance: &str,
        concurrency: u32,
        patch: impl Fn(String) -> String + Send + 'static,
    ) -> Result<Envoy, Error> {
        let keys = Keys {
            audit: self.audit_key.clone(),
            mask: self.mask_key.clone(),
        };
        let ports = UpstreamPorts {
            backend: self.backend_addr.port(),
            jwks: self.idp.addr.port(),
            collector: self.collector_addr.port(),
            // Variants carry the demo set inline.
            descriptor_set: None,
            layout: self.layout,
        };
        start_inbound(
            instance,
            concurrency,
            Some(Box::new(patch)),
            &keys.envoy_env()?,
            &self.dir,
            &ports,
        )
    }

    /// Leaves processes and files running after this handle is gone (the demo's `up`).
    pub fn detach(mut self) -> Vec<u32> {
        self.teardown = false;
        let mut pids = Vec::new();
        for envoy in std::iter::once(&mut self.inbound).chain(self.egress.as_mut()) {
            if let Some(child) = envoy.child.take() {
                pids.push(child.id());
            }
        }
        for service in std::mem::take(&mut self.services) {
            if let Service::Process(child) = &service {
                pids.push(child.id());
            }
            // Forget the handle so dropping it does not stop the process.
            std::mem::forget(service);
        }
        pids
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.teardown {
            return;
        }
        if let Some(e) = self.egress.as_mut() {
            e.stop();
        }
        self.inbound.stop();
        if std::thread::panicking() {
            eprintln!(
                "\n=== stack kept for inspection: {} ===",
                self.dir.display()
            );
            for envoy in std::iter::once(&self.inbound).chain(self.egress.as_ref()) {
                eprintln!("--- last lines of {} ---", envoy.log.display());
                eprintln!("{}", tail(&envoy.log, 40));
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Envoy {
    /// Renders `envoy/<template>.yaml` (edited by `patch`) to `<dir>/<name>.yaml`, starts Envoy
    /// with `concurrency` worker threads and waits for the admin `/ready`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        template: &str,
        name: &str,
        concurrency: u32,
        patch: Option<ConfigPatch>,
        env: &[(String, String)],
        dir: &Path,
        vars: &[(&str, String)],
        listen_port: u16,
    ) -> Result<Envoy, Error> {
        let template = crate::repo_root().join(format!("envoy/{template}.yaml"));
        let rendered = render::fill(&std::fs::read_to_string(&template)?, vars)?;
        let admin_port: u16 = vars
            .iter()
            .find(|(k, _)| *k == "ADMIN_PORT")
            .ok_or("ADMIN_PORT missing")?
            .1
            .parse()?;
        Envoy::start_rendered(
            name,
            concurrency,
            patch,
            env,
            dir,
            rendered,
            admin_port,
            listen_port,
        )
    }

    /// Writes `config` (edited by `patch`) to `<dir>/<name>.yaml`, starts Envoy with
    /// `concurrency` worker threads and waits for the admin `/ready`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_rendered(
        name: &str,
        concurrency: u32,
        patch: Option<ConfigPatch>,
        env: &[(String, String)],
        dir: &Path,
        mut rendered: String,
        admin_port: u16,
        listen_port: u16,
    ) -> Result<Envoy, Error> {
        let config = dir.join(format!("{name}.yaml"));
        if let Some(patch) = patch {
            rendered = patch(rendered);
        }
        std::fs::write(&config, rendered)?;
        let log = dir.join(format!("logs/{name}-envoy.log"));
        let child = Command::new(envoy_binary()?)
            .args(["-c", &config.to_string_lossy()])
            .args([
                "--concurrency",
                &concurrency.to_string(),
                "--disable-hot-restart",
            ])
            .args(["--log-path", &log.to_string_lossy()])
            .args(["--log-level", "info"])
            // Access logs reach disk within 200 ms (default 10 s), so tests and the demo can
            // read what was just decided.
            .args(["--file-flush-interval-msec", "200"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut envoy = Envoy {
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            listen: SocketAddr::from(([127, 0, 0, 1], listen_port)),
            log,
            config,
        };
        // V8 compiles every wasm module before the listener opens: seconds on an idle machine,
        // far longer on a loaded 2-core one with several tests starting Envoys at once.
        envoy.wait_ready(ENVOY_READY_TIMEOUT)?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(format!(
                        "envoy exited with {status} before it was ready:\n{}",
                        tail(&self.log, 30)
                    )
                    .into());
                }
            }
            if let Ok((200, _)) = admin_get(self.admin, "/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "envoy not ready within {within:?}:\n{}",
                    tail(&self.log, 30)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `vms` of the jwt stage's VMs (the main thread's and one per worker) have
    /// installed a key set. `/ready` says the listener is up, not that each VM's first JWKS
    /// fetch (dispatched at its on_configure) has been answered; a request in that window is
    /// refused (`jwks_unavailable`), as it must be, so callers that expect to be let in start
    /// after it. A config without the jwt stage has no such counter: nothing to wait for.
    pub fn wait_for_key_sets(&self, vms: u64, within: Duration) -> Result<(), Error> {
        const FETCH_OK: &str = "wasmcustom.phi_guard.jwt.jwks_fetch_ok";
        let deadline = Instant::now() + within;
        loop {
            match self.stat(FETCH_OK) {
                None => return Ok(()),
                Some(n) if n >= vms => return Ok(()),
                Some(_) if Instant::now() > deadline => {
                    return Err(format!(
                        "the jwt stage had no key set in {vms} VMs within {within:?}:\n{}",
                        tail(&self.log, 30)
                    )
                    .into())
                }
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// GET on the admin interface.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), Error> {
        admin_get(self.admin, path)
    }

    /// A counter or gauge by its full name, e.g. `listener.127.0.0.1_1234.ssl.handshake`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self
            .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The listener's stat prefix, e.g. `listener.127.0.0.1_40123.`.
    pub fn listener_stat_prefix(&self) -> String {
        format!("listener.127.0.0.1_{}.", self.listen.port())
    }

    /// The process id, while Envoy runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An Envoy that failed to become ready, or whose stack is gone, does not outlive its handle
/// (unless [`Stack::detach`] took the process out first).
impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        match self {
            Service::InProcess(stop) => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
            }
            Service::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The JSON configuration a phi-guard wasm filter (`phi_guard.<filter>`) carries in an Envoy
/// YAML file: the block scalar after its `value: |`. In the pipeline layout (one `phi_guard`
/// filter) it is the stage's configuration nested in the pipeline's (`stages[i].<filter>`).
pub fn embedded_filter_config(yaml: &str, filter: &str) -> Option<serde_json::Value> {
    if let Some(config) = embedded_config(yaml, &format!("phi_guard.{filter}")) {
        return Some(config);
    }
    embedded_config(yaml, "phi_guard")?
        .get("stages")?
        .as_array()?
        .iter()
        .find_map(|stage| stage.get(filter).cloned())
}

/// Where the configuration of `stage` (`jwt`, `rbac`, `mask`, `audit`) begins in a rendered
/// inbound config, in either layout: the `phi_guard.<stage>` filter, or the stage's member in
/// the `phi_guard` pipeline filter's `stages`. Tests patch a stage's JSON after this offset.
pub fn stage_config_at(yaml: &str, stage: &str) -> Option<usize> {
    if let Some(at) = yaml.find(&format!("name: phi_guard.{stage}\n")) {
        return Some(at);
    }
    let pipeline = yaml.find("name: phi_guard\n")?;
    let at = yaml[pipeline..].find(&format!("\"{stage}\": {{"))?;
    Some(pipeline + at)
}

/// `yaml` with the VM that runs `stage` given the environment variable `name` = `value`
/// (`vm_config.environment_variables.key_values`), in either layout.
pub fn with_stage_vm_env(yaml: &str, stage: &str, name: &str, value: &str) -> Option<String> {
    let block = yaml
        .find(&format!("name: phi_guard.{stage}\n"))
        .or_else(|| yaml.find("name: phi_guard\n"))?;
    // The `vm_id:` key's line (comments may mention vm_id too).
    let mut vm_id = None;
    let mut pos = block;
    for line in yaml[block..].split_inclusive('\n') {
        if line.trim_start().starts_with("vm_id: ") {
            vm_id = Some(pos + (line.len() - line.trim_start().len()));
            break;
        }
        pos += line.len();
    }
    let vm_id = vm_id?;
    let line_start = yaml[..vm_id].rfind('\n')? + 1;
    let indent = " ".repeat(vm_id - line_start);
    let next_filter = yaml[block..]
        .find("\n          - name: ")
        .map_or(yaml.len(), |n| block + n);
    let pair = format!("key_values: {{{name}: \"{value}\"}}");
    let mut out = yaml.to_string();
    match yaml[vm_id..next_filter].find("environment_variables:\n") {
        Some(env) => {
            let at = vm_id + env + "environment_variables:\n".len();
            out.insert_str(at, &format!("{indent}  {pair}\n"));
        }
        None => {
            let at = vm_id + yaml[vm_id..].find('\n')? + 1;
            out.insert_str(
                at,
                &format!("{indent}environment_variables:\n{indent}  {pair}\n"),
            );
        }
    }
    Some(out)
}

/// The block scalar after `value: |` of the filter named `name`.
fn embedded_config(yaml: &str, name: &str) -> Option<serde_json::Value> {
    let start = yaml.find(&format!("name: {name}\n"))?;
    let rest = &yaml[start..];
    let value_at = rest.find("value: |\n")? + "value: |\n".len();
    let mut lines = rest[value_at..].lines();
    let first = lines.next()?;
    let indent = first.len() - first.trim_start().len();
    let mut json = String::from(first);
    for line in lines {
        let this_indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && this_indent < indent {
            break;
        }
        json.push('\n');
        json.push_str(line);
    }
    serde_json::from_str(&json).ok()
}

fn render_sds(sds_dir: &Path, files: &[&str]) -> Result<(), Error> {
    std::fs::create_dir_all(sds_dir)?;
    for file in files {
        let template = std::fs::read_to_string(crate::repo_root().join("envoy/sds").join(file))?;
        let rendered = render::fill(&template, &[("SDS_DIR", sds_dir.display().to_string())])?;
        std::fs::write(sds_dir.join(file), rendered)?;
    }
    Ok(())
}

/// The Envoy binary `scripts/envoy` chooses ($ENVOY_BIN, func-e, or the pinned wheel).
pub fn envoy_binary() -> Result<PathBuf, Error> {
    static BINARY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let out = Command::new(crate::repo_root().join("scripts/envoy"))
                .arg("path")
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("scripts/envoy: {e}"))?;
            if !out.status.success() {
                return Err("scripts/envoy could not provide an Envoy binary".into());
            }
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
        .map_err(Into::into)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(addr: SocketAddr, within: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + within;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listening on {addr} within {within:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A minimal HTTP/1.1 GET, enough for Envoy's admin interface.
pub fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("malformed admin response")?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Undoes HTTP/1.1 chunked transfer encoding (Envoy's admin uses it for larger bodies).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn fresh_dir(name: &str) -> std::io::Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = crate::repo_root()
        .join("target/e2e")
        .join(format!("{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The last `lines` lines of a file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn stage_patch_helpers_work_in_both_layouts() {
        for layout in Layout::ALL {
            let mut inbound =
                Inbound::from_project(&crate::repo_root().join("envoy/demo/phi-guard.toml"))
                    .unwrap();
            inbound.descriptor_set = Some(crate::demo_api::descriptor_set().unwrap());
            inbound.layout = layout;
            let yaml = inbound.render().unwrap().envoy;
            let rbac = stage_config_at(&yaml, "rbac").unwrap();
            assert!(yaml[rbac..].contains("\"rules\": ["), "{layout:?}");
            let jwt = stage_config_at(&yaml, "jwt").unwrap();
            assert!(jwt < rbac, "{layout:?}");
            let patched = with_stage_vm_env(&yaml, "jwt", "SOME_KEY", "v").unwrap();
            let added: Vec<&str> = patched
                .lines()
                .filter(|l| l.contains("key_values: {SOME_KEY: \"v\"}"))
                .collect();
            assert_eq!(added.len(), 1, "{layout:?}");
            // Inside the VM that runs jwt, after `environment_variables:`.
            let at = patched.find("key_values: {SOME_KEY").unwrap();
            let module = if layout == Layout::Single {
                "phi_guard_jwt.wasm"
            } else {
                "phi_guard.wasm"
            };
            let code = patched[at..].find("code: {local").unwrap() + at;
            assert!(patched[code..].lines().next().unwrap().contains(module));
            let before = &patched[..at];
            let env = before.rfind("environment_variables:\n").unwrap();
            assert!(before[env..].lines().count() <= 2, "{layout:?}");
        }
    }
}
