//! `phi-guard-mask`: descriptor sets, coverage reports, lint and offline masking with the mask
//! filter's own core. See filters/mask/README.md ("The phi-guard-mask tool").

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use phi_guard_mask::rewriter::Counts;
use phi_guard_mask_cli::{self as tool, build, coverage, lint, Session};

#[derive(Parser)]
#[command(
    name = "phi-guard-mask",
    version,
    about = "Descriptor sets, coverage, lint and offline masking for the phi-guard mask filter"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a FileDescriptorSet (options kept) pruned to what the named services reach.
    Build {
        /// .proto files to compile (protox), as paths under an include directory.
        protos: Vec<PathBuf>,
        /// Include directory for imports (repeatable).
        #[arg(short = 'I', long = "include")]
        includes: Vec<PathBuf>,
        /// An existing binary FileDescriptorSet: imports are resolved from it, and without
        /// .proto files it is the input (repeatable).
        #[arg(long = "descriptor-set")]
        sets: Vec<PathBuf>,
        /// Keep this service (full name, repeatable); default: every service.
        #[arg(long = "service")]
        services: Vec<String>,
        /// Also keep this message and what it reaches (e.g. types a google.protobuf.Any holds).
        #[arg(long = "message")]
        messages: Vec<String>,
        /// Write the binary set here; without it, standard base64 goes to stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Every response field path of every method: its class and each role's action, or untagged.
    Coverage {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Only methods whose full name (`pkg.Service/Method`) starts with this (repeatable).
        #[arg(long = "method")]
        methods: Vec<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Exit 1 when an untagged response field looks like a HIPAA identifier.
    Lint {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long = "method")]
        methods: Vec<String>,
        /// Do not report this field (full name), or fields under a prefix ending in `.`, or
        /// `path:<path prefix>` (repeatable).
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// A sample response message whose untagged string values are scanned by the free-text
        /// detectors (binary, or proto3 JSON with --json); needs --type.
        #[arg(long)]
        sample: Option<PathBuf>,
        /// Message type of the sample (full name).
        #[arg(long = "type")]
        message_type: Option<String>,
        /// The sample is proto3 JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mask messages offline as a role sees them: the filter's core, outside Envoy.
    Apply {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Message type (full name).
        #[arg(long = "type")]
        message_type: String,
        /// Role name; one the policy does not name gets its `default` block.
        #[arg(long)]
        role: String,
        /// Input file (default stdin).
        #[arg(short, long)]
        input: Option<PathBuf>,
        /// Output file (default stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Input and output are length-delimited streams of messages (JSON Lines with --json).
        #[arg(long)]
        delimited: bool,
        /// Input and output are proto3 JSON.
        #[arg(long)]
        json: bool,
        /// The environment variable holding the token key (at least 32 bytes), instead of the
        /// one the policy's `token_key_env` names; needed when a role uses `token`.
        #[arg(long = "token-key-env")]
        token_key_env: Option<String>,
    },
}

#[derive(Args)]
struct PolicyArgs {
    /// The filter's JSON configuration (as in Envoy's `configuration`).
    #[arg(long)]
    policy: PathBuf,
    /// Binary FileDescriptorSet; replaces the policy's inline `descriptor_set`.
    #[arg(long = "descriptor-set")]
    descriptor_set: Option<PathBuf>,
}

impl PolicyArgs {
    /// For `apply`: the real token key, from the environment.
    fn session(
        &self,
        message_type: Option<&str>,
        token_key_env: Option<&str>,
    ) -> Result<Session, String> {
        let policy = read(&self.policy)?;
        let set = self.descriptor_set.as_ref().map(read).transpose()?;
        match token_key_env {
            Some(var) => Session::with_token_key_env(&policy, set.as_deref(), message_type, var),
            None => Session::new(&policy, set.as_deref(), message_type),
        }
    }

    /// For `coverage` and `lint`, which emit no masked value: no token key needed.
    fn inspect(&self, message_type: Option<&str>) -> Result<Session, String> {
        let policy = read(&self.policy)?;
        let set = self.descriptor_set.as_ref().map(read).transpose()?;
        Session::inspect(&policy, set.as_deref(), message_type)
    }
}

/// Writes `text` to stdout. A reader that went away (`… | head`) is not an error: the rest
/// of the output is dropped and the command exits as it would have.
fn emit(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("stdout: {e}")),
        _ => Ok(()),
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phi-guard-mask: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Build {
            protos,
            includes,
            sets,
            services,
            messages,
            output,
        } => {
            let sets: Vec<Vec<u8>> = sets.iter().map(read).collect::<Result<_, _>>()?;
            let full = if protos.is_empty() {
                if sets.is_empty() {
                    return Err("build needs .proto files or --descriptor-set".into());
                }
                build::merge(&sets)?
            } else {
                build::compile(&protos, &includes, &sets)?
            };
            let pruned = build::prune(&full, &services, &messages)?;
            eprintln!(
                "{} files, {} messages, {} enums, {} bytes",
                pruned.files,
                pruned.messages,
                pruned.enums,
                pruned.set.len()
            );
            match output {
                Some(path) => std::fs::write(&path, &pruned.set)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
                None => emit(&format!(
                    "{}\n",
                    base64::engine::general_purpose::STANDARD.encode(&pruned.set)
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Coverage {
            policy,
            methods,
            json,
        } => {
            let session = policy.inspect(None)?;
            let report = coverage::coverage(&session, &methods)?;
            if json {
                emit(
                    &(serde_json::to_string_pretty(&coverage::to_json(&report))
                        .map_err(|e| e.to_string())?
                        + "\n"),
                )?;
            } else {
                emit(&coverage::to_text(&report))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lint {
            policy,
            methods,
            allow,
            sample,
            message_type,
            json,
        } => {
            let session = policy.inspect(message_type.as_deref())?;
            let report = coverage::coverage(&session, &methods)?;
            let mut findings = lint::by_name(&report, &allow);
            if let Some(sample) = sample {
                let t = message_type.as_deref().ok_or("--sample needs --type")?;
                let bytes = read(&sample)?;
                let bytes = if json {
                    tool::from_json(&session.pool, t, &String::from_utf8_lossy(&bytes))?
                } else {
                    bytes
                };
                let desc = session.pool.get_message_by_name(t).ok_or("type vanished")?;
                let msg = prost_reflect::DynamicMessage::decode(desc, bytes.as_slice())
                    .map_err(|e| format!("sample is not a valid {t}: {e}"))?;
                findings.extend(lint::by_sample(&session, &format!("sample {t}"), &msg));
            }
            let mut text = String::new();
            for f in &findings {
                text.push_str(&format!(
                    "{}: {} ({}) looks like {} [{}] and is untagged\n",
                    f.method, f.path, f.field, f.kind, f.source
                ));
            }
            if findings.is_empty() {
                text.push_str("ok: no untagged field looks like an identifier\n");
            } else {
                text.push_str(&format!("{} finding(s)\n", findings.len()));
            }
            emit(&text)?;
            Ok(if findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Apply {
            policy,
            message_type,
            role,
            input,
            output,
            delimited,
            json,
            token_key_env,
        } => {
            let session = policy.session(Some(&message_type), token_key_env.as_deref())?;
            let mut data = Vec::new();
            match &input {
                Some(p) => data = read(p)?,
                None => {
                    std::io::stdin()
                        .read_to_end(&mut data)
                        .map_err(|e| format!("stdin: {e}"))?;
                }
            }
            let mut counts = Counts::default();
            let mut out = Vec::new();
            if json {
                let text = String::from_utf8(data).map_err(|_| "input is not UTF-8")?;
                let docs: Vec<&str> = if delimited {
                    text.lines().filter(|l| !l.trim().is_empty()).collect()
                } else {
                    vec![text.as_str()]
                };
                for doc in docs {
                    let bytes = tool::from_json(&session.pool, &message_type, doc)?;
                    let masked = session.mask(&role, &bytes, &mut counts)?;
                    out.extend_from_slice(
                        tool::to_json(&session.pool, &message_type, &masked)?.as_bytes(),
                    );
                    out.push(b'\n');
                }
            } else if delimited {
                for msg in tool::split_delimited(&data)? {
                    let masked = session.mask(&role, msg, &mut counts)?;
                    tool::put_delimited(&mut out, &masked);
                }
            } else {
                out = session.mask(&role, &data, &mut counts)?;
            }
            match &output {
                Some(p) => std::fs::write(p, &out).map_err(|e| format!("{}: {e}", p.display()))?,
                // A masked dump cut short is an error (exit 2), unlike a report read by `head`.
                None => std::io::stdout()
                    .write_all(&out)
                    .map_err(|e| format!("stdout: {e}"))?,
            }
            let summary: Vec<String> = counts
                .by_name(&session.config.class_names)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!(
                "masked as {}: {}",
                session.config.policy.for_role(Some(&role)).0,
                summary.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
