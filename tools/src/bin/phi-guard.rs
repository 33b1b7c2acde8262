//! `phi-guard`: protect a gRPC service of your own with the phi-guard filters.
//!
//!   phi-guard protoset -I proto -I . labs/v1/labs.proto -o api.binpb
//!   phi-guard init --descriptor-set api.binpb --service labs --trust-domain labs.example
//!   phi-guard keys [--project phi-guard.toml]
//!   phi-guard render [phi-guard.toml] [--layout single|pipeline]
//!
//! docs/ADOPTING.md walks through them. Exit status: 0 done, 1 refused (a field named on
//! stderr), 2 usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phi_guard_tools::project::{self, Api};
use phi_guard_tools::render::{self, Inbound, KeyEnv};

#[derive(Parser)]
#[command(
    name = "phi-guard",
    version,
    about = "Protect a gRPC service with phi-guard: render the Envoy config, make keys, start a project"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render the Envoy bootstrap and SDS files from a project file, then run `envoy --mode
    /// validate` on them.
    Render {
        /// The project file.
        #[arg(default_value = "phi-guard.toml")]
        project: PathBuf,
        /// Skip `envoy --mode validate`.
        #[arg(long)]
        no_validate: bool,
        /// `single` (four modules) or `pipeline` (one module, phi_guard.wasm); overrides the
        /// project file's `layout`.
        #[arg(long)]
        layout: Option<String>,
    },
    /// Make the keys the stages need (random, right length, mode 0600) and print how to pass
    /// them to the VMs (Envoy and Istio).
    Keys {
        /// Take the directory and variable names from this project file.
        #[arg(long, default_value = "phi-guard.toml")]
        project: PathBuf,
        /// Write here instead of the project's `[keys] dir`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Write a starter project for the services of a descriptor set: project file, jwt config,
    /// rbac policy denying every method with its tests, mask config removing every class, and
    /// the list of fields without a sensitivity class.
    Init {
        /// Binary FileDescriptorSet of the API (`phi-guard protoset`, buf, protoc).
        #[arg(long)]
        descriptor_set: PathBuf,
        /// Name of the service (audit events, the jwt audience).
        #[arg(long)]
        service: String,
        /// SPIFFE trust domain of the callers.
        #[arg(long)]
        trust_domain: String,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Compile .proto files into a binary FileDescriptorSet with the options kept (protox; no
    /// protoc needed).
    Protoset {
        /// Include directories (the one holding phi/v1/annotations.proto among them).
        #[arg(short = 'I', long = "include", required = true)]
        include: Vec<PathBuf>,
        /// The .proto files, relative to an include directory.
        #[arg(required = true)]
        files: Vec<String>,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render {
            project,
            no_validate,
            layout,
        } => render_cmd(&project, !no_validate, layout.as_deref()),
        Command::Keys {
            project,
            dir,
            force,
        } => keys_cmd(&project, dir, force),
        Command::Init {
            descriptor_set,
            service,
            trust_domain,
            dir,
            force,
        } => init_cmd(&descriptor_set, &service, &trust_domain, &dir, force),
        Command::Protoset {
            include,
            files,
            output,
        } => protoset_cmd(&include, &files, &output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phi-guard: {e}");
            ExitCode::from(1)
        }
    }
}

fn render_cmd(project: &Path, validate: bool, layout: Option<&str>) -> Result<(), String> {
    let at = |e: render::FieldError| format!("{}: {e}", project.display());
    let mut inbound = Inbound::from_project(project).map_err(at)?;
    if let Some(layout) = layout {
        inbound.layout = layout
            .parse()
            .map_err(|e: render::FieldError| format!("--layout: {}", e.reason))?;
    }
    inbound.check_wasm().map_err(at)?;
    inbound.check_key_files().map_err(at)?;
    let rendered = inbound.render().map_err(|e| inbound.locate(project, &e))?;
    let config = rendered
        .write(&inbound.out_dir, &inbound.sds_dir)
        .map_err(|e| format!("cannot write: {e}"))?;
    std::fs::create_dir_all(&inbound.log_dir)
        .map_err(|e| format!("{}: {e}", inbound.log_dir.display()))?;
    println!("wrote {}", config.display());
    for (name, _) in &rendered.sds {
        println!("wrote {}", inbound.sds_dir.join(name).display());
    }
    if validate {
        render::validate_with_envoy(&config, &inbound.keys)
            .map_err(|e| format!("envoy --mode validate refused {}:\n{e}", config.display()))?;
        println!("envoy --mode validate: OK");
    }
    let specs = project::key_specs(&inbound.keys, &inbound.jwt);
    println!(
        "\nnext: install the server certificate and trust bundle into {}/server and {}/trust \
         (scripts/pki install, install-bundle), then start Envoy:\n",
        inbound.sds_dir.display(),
        inbound.sds_dir.display()
    );
    println!(
        "{}",
        project::key_instructions(&inbound.keys_dir, &specs, &config)
            .lines()
            .take_while(|l| !l.starts_with("Istio"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

fn keys_cmd(project: &Path, dir: Option<PathBuf>, force: bool) -> Result<(), String> {
    let (specs, keys_dir, config) = if project.exists() {
        let inbound =
            Inbound::from_project(project).map_err(|e| format!("{}: {e}", project.display()))?;
        let config = inbound.out_dir.join("envoy.yaml");
        let specs = project::key_specs(&inbound.keys, &inbound.jwt);
        (specs, inbound.keys_dir, config)
    } else {
        // No project file yet: the default variable names and directories.
        let keys = KeyEnv {
            audit: render::DEFAULT_AUDIT_KEY_ENV.into(),
            mask_token: render::DEFAULT_MASK_TOKEN_KEY_ENV.into(),
        };
        let specs = project::key_specs(&keys, &serde_json::json!({}));
        (
            specs,
            PathBuf::from("keys"),
            PathBuf::from("envoy/envoy.yaml"),
        )
    };
    let dir = dir.unwrap_or(keys_dir);
    for path in project::write_keys(&dir, &specs, force)? {
        println!("wrote {} (0600)", path.display());
    }
    for spec in &specs {
        println!(
            "  {}: {} random bytes, hex ({} characters), for {}",
            spec.file,
            spec.bytes,
            2 * spec.bytes,
            spec.purpose
        );
    }
    println!("\n{}", project::key_instructions(&dir, &specs, &config));
    Ok(())
}

fn init_cmd(
    descriptor_set: &Path,
    service: &str,
    trust_domain: &str,
    dir: &Path,
    force: bool,
) -> Result<(), String> {
    let bytes =
        std::fs::read(descriptor_set).map_err(|e| format!("{}: {e}", descriptor_set.display()))?;
    let api = Api::from_descriptor_set(&bytes)
        .map_err(|e| format!("{}: {e}", descriptor_set.display()))?;
    let files = project::starter(&api, service, trust_domain);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !force {
        if let Some(f) = files.iter().find(|f| dir.join(f.name).exists()) {
            return Err(format!(
                "{} exists: pass --force to replace the starter files",
                dir.join(f.name).display()
            ));
        }
    }
    // The project file names the descriptor set as api.binpb next to it.
    let target = dir.join("api.binpb");
    if std::path::absolute(descriptor_set).ok() != std::path::absolute(&target).ok() {
        std::fs::write(&target, &bytes).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    for f in &files {
        let path = dir.join(f.name);
        std::fs::write(&path, &f.text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!("\nmethods (each denied until policy.json allows it):");
    for m in &api.methods {
        println!("  {}", m.path());
    }
    let untagged = api.fields.iter().filter(|f| f.class.is_none()).count();
    println!(
        "\n{untagged} of {} fields carry no sensitivity class (listed in mask.fields.txt)",
        api.fields.len()
    );
    Ok(())
}

fn protoset_cmd(include: &[PathBuf], files: &[String], output: &Path) -> Result<(), String> {
    let mut compiler = protox::Compiler::new(include).map_err(|e| e.to_string())?;
    // Every import is included (the mask filter needs each message type a response can hold);
    // no source info: the set travels inline in Envoy's config.
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(files).map_err(|e| e.to_string())?;
    // protox's own encoder keeps the phi.v1.sensitivity options; a round trip through
    // prost-types would drop them.
    let encoded = compiler.encode_file_descriptor_set();
    std::fs::write(output, &encoded).map_err(|e| format!("{}: {e}", output.display()))?;
    println!("wrote {} ({} bytes)", output.display(), encoded.len());
    Ok(())
}
