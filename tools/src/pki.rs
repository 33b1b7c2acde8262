//! The harness's handle on `scripts/pki`: the tests and the demo issue and rotate certificates
//! with the same script an operator runs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Trust domain of every workload the harness issues for.
pub const TRUST_DOMAIN: &str = "phi-guard.test";
/// DNS SAN on the server certificate; clients verify it.
pub const SERVER_NAME: &str = "patient-service.phi-guard.test";
pub const SERVER_SPIFFE: &str = "spiffe://phi-guard.test/ns/clinic/sa/patient-service";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Client => "client",
        }
    }
}

/// A PKI directory managed by `scripts/pki`.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

/// A leaf's files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// Creates the offline root and the intermediate (generation 1).
    pub fn init(dir: &Path) -> std::io::Result<Self> {
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.run(&["init"], &[])?;
        Ok(pki)
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    pub fn leaf(&self, name: &str) -> Leaf {
        let dir = self.dir.join("leaves").join(name);
        Leaf {
            name: name.to_string(),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Issues a leaf with one SPIFFE URI SAN (and DNS SANs) under the current generation.
    pub fn issue(
        &self,
        name: &str,
        kind: Kind,
        spiffe: &str,
        dns: &[&str],
        extra: &[&str],
    ) -> std::io::Result<Leaf> {
        let mut args = vec![name, "--kind", kind.arg(), "--spiffe", spiffe];
        for d in dns {
            args.extend(["--dns", d]);
        }
        args.extend(extra);
        self.run(&["issue"], &args)?;
        Ok(self.leaf(name))
    }

    /// Issues a leaf with DNS SANs only, no SPIFFE ID (negative tests: not an X.509-SVID).
    pub fn issue_dns_only(&self, name: &str, kind: Kind, dns: &[&str]) -> std::io::Result<Leaf> {
        let mut args = vec![name, "--kind", kind.arg(), "--no-spiffe"];
        for d in dns {
            args.extend(["--dns", d]);
        }
        self.run(&["issue"], &args)?;
        Ok(self.leaf(name))
    }

    /// Issues a leaf from a throwaway CA that is never trusted.
    pub fn issue_untrusted(&self, name: &str, kind: Kind, spiffe: &str) -> std::io::Result<Leaf> {
        let args = [name, "--kind", kind.arg(), "--spiffe", spiffe];
        self.run(&["issue-untrusted"], &args)?;
        let dir = self.dir.join("untrusted").join("leaves").join(name);
        let leaf = if dir.exists() {
            Leaf {
                name: name.to_string(),
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
            }
        } else {
            self.leaf(name)
        };
        Ok(leaf)
    }

    /// Publishes a leaf into an SDS watched directory (atomic symlink swap).
    pub fn install(&self, name: &str, sds_subdir: &Path) -> std::io::Result<()> {
        self.run(&["install"], &[name, &sds_subdir.to_string_lossy()])
    }

    pub fn install_bundle(&self, sds_subdir: &Path) -> std::io::Result<()> {
        self.run(&["install-bundle"], &[&sds_subdir.to_string_lossy()])
    }

    /// Reissues a leaf with its saved parameters and installs it; returns the new serial.
    pub fn rotate(&self, name: &str, sds_subdir: &Path) -> std::io::Result<String> {
        self.run(&["rotate"], &[name, &sds_subdir.to_string_lossy()])?;
        self.serial(&self.leaf(name).cert)
    }

    /// Reissues a leaf with its saved parameters without publishing it anywhere (a client
    /// that reads its files directly picks it up on its next connection).
    pub fn reissue(&self, name: &str) -> std::io::Result<String> {
        self.run(&["rotate"], &[name])?;
        self.serial(&self.leaf(name).cert)
    }

    pub fn rollover_begin(&self) -> std::io::Result<()> {
        self.run(&["rollover-begin"], &[])
    }

    pub fn rollover_finish(&self) -> std::io::Result<()> {
        self.run(&["rollover-finish"], &[])
    }

    /// Serial of the first certificate in a PEM file, lower-case hex without colons.
    pub fn serial(&self, cert: &Path) -> std::io::Result<String> {
        let out = Command::new(script())
            .args(["serial", &cert.to_string_lossy()])
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "scripts/pki serial failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(normalise_serial(&String::from_utf8_lossy(&out.stdout)))
    }

    fn run(&self, sub: &[&str], args: &[&str]) -> std::io::Result<()> {
        let out = Command::new(script())
            .args(sub)
            .arg(&self.dir)
            .args(args)
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "scripts/pki {} failed: {}{}",
                sub.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

fn script() -> PathBuf {
    crate::repo_root().join("scripts/pki")
}

/// Serials compare as lower-case hex without leading zeros or colons, whatever printed them.
pub fn normalise_serial(raw: &str) -> String {
    let hex: String = raw
        .trim()
        .trim_start_matches("serial=")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// The SPIFFE ID of a workload in the harness's trust domain.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalise() {
        assert_eq!(normalise_serial("serial=00AB:CD\n"), "abcd");
        assert_eq!(normalise_serial("0a1b"), "a1b");
        assert_eq!(normalise_serial("0"), "0");
    }

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            spiffe_id("clinic", "ehr-frontend"),
            "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend"
        );
    }
}
