//! Every subject alternative name of the peer certificate.
//!
//! Envoy's per-SAN attributes (`connection.uri_san_peer_certificate`,
//! `connection.dns_san_peer_certificate`) carry only the **first** URI SAN and the first DNS
//! SAN, and Envoy 1.40 has no list-valued attribute for them. It does expose the validated leaf
//! itself as `connection.peer_certificate` (PEM; Envoy documents it as URL-encoded PEM), so the
//! filter reads every SAN from there. Parsing is the RustCrypto `x509-cert` crate's (DER, RFC
//! 5280); this module only walks the subjectAltName extension(s). Pure and bounded: fuzzed by
//! `fuzz/fuzz_targets/peer_certificate.rs`.

use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// A leaf certificate is a few KiB at most; anything larger is refused before decoding.
pub const MAX_CERT_BYTES: usize = 64 * 1024;

/// The URI and DNS SANs of one certificate, in certificate order, as the CA wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sans {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

/// Why the certificate could not be read. Carries no certificate bytes (they are never
/// logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertError {
    TooLarge,
    NotPem,
    NotCertificate,
    BadSubjectAltName,
}

/// Reads every URI and DNS SAN from Envoy's `connection.peer_certificate` value: a PEM
/// `CERTIFICATE` block (RFC 7468), percent-decoded first (Envoy URL-encodes it; a plain PEM
/// has no `%`, so decoding leaves it as it is). The SANs of every subjectAltName extension are
/// collected, should a certificate carry the extension twice (RFC 5280 forbids it, and a
/// BoringSSL-validated leaf never does). Other SAN kinds (IP, e-mail, ...) are not returned.
pub fn subject_alt_names(attribute: &[u8]) -> Result<Sans, CertError> {
    if attribute.len() > MAX_CERT_BYTES {
        return Err(CertError::TooLarge);
    }
    let pem: Vec<u8> = percent_encoding::percent_decode(attribute).collect();
    let (label, der) = pem_rfc7468::decode_vec(&pem).map_err(|_| CertError::NotPem)?;
    if label != "CERTIFICATE" {
        return Err(CertError::NotPem);
    }
    let cert = Certificate::from_der(&der).map_err(|_| CertError::NotCertificate)?;
    let mut sans = Sans::default();
    let extensions = cert.tbs_certificate().extensions().into_iter().flatten();
    for ext in extensions.filter(|e| e.extn_id == SubjectAltName::OID) {
        let names = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|_| CertError::BadSubjectAltName)?;
        for name in names.0 {
            match name {
                GeneralName::UniformResourceIdentifier(uri) => sans.uris.push(uri.to_string()),
                GeneralName::DnsName(dns) => sans.dns.push(dns.to_string()),
                _ => {}
            }
        }
    }
    Ok(sans)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issued by `openssl` from a throwaway CA with URI SANs admin-tool, analytics and DNS
    /// SANs a.example, b.example (the two-SPIFFE-ID certificate).
    const TWO_URIS: &str = "-----BEGIN CERTIFICATE-----
MIIB+DCCAZ2gAwIBAgIUF5G2T8gdVfXzenjsI0hCjn2DqOEwCgYIKoZIzj0EAwIw
DTELMAkGA1UEAwwCY2EwHhcNMjYxMjAyMDQyNTM4WhcNMjYxMjAzMDQyNTM4WjAO
MQwwCgYDVQQDDAN0d28wWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASbm+jw+obf
oWwWtJexitZF2TDFsleZybIFageuvMKGpG6MB06jkWlJs2yoZ+Bjq/8WqV+x3ekH
qGlTaCGS0kR8o4HZMIHWMH8GA1UdEQR4MHaGLHNwaWZmZTovL3BoaS1ndWFyZC50
ZXN0L25zL29wcy9zYS9hZG1pbi10b29shjBzcGlmZmU6Ly9waGktZ3VhcmQudGVz
dC9ucy9yZXNlYXJjaC9zYS9hbmFseXRpY3OCCWEuZXhhbXBsZYIJYi5leGFtcGxl
MBMGA1UdJQQMMAoGCCsGAQUFBwMCMB0GA1UdDgQWBBSE4bhe5rKCZkT6jYtHHS9t
I7IJGDAfBgNVHSMEGDAWgBQQgiNDB2JWE/1eXNII/LfwLPAzCzAKBggqhkjOPQQD
AgNJADBGAiEAq50B6zDmGYmeZZ7SGFWxZ9rMVJqDTqv/TYXm8QCPcFYCIQDPXCS4
qn6u8j1MadYbJ+3pI0X+VUqQN60cjvfxLKlpaA==
-----END CERTIFICATE-----
";

    #[test]
    fn reads_every_uri_and_dns_san() {
        let sans = subject_alt_names(TWO_URIS.as_bytes()).unwrap();
        assert_eq!(
            sans.uris,
            [
                "spiffe://phi-guard.test/ns/ops/sa/admin-tool",
                "spiffe://phi-guard.test/ns/research/sa/analytics"
            ]
        );
        assert_eq!(sans.dns, ["a.example", "b.example"]);
    }

    #[test]
    fn url_encoded_pem_reads_the_same() {
        let encoded: String = TWO_URIS
            .bytes()
            .map(|b| match b {
                b'\n' => "%0A".to_string(),
                b' ' => "%20".to_string(),
                b'+' => "%2B".to_string(),
                b'/' => "%2F".to_string(),
                b'=' => "%3D".to_string(),
                b => (b as char).to_string(),
            })
            .collect();
        assert_eq!(
            subject_alt_names(encoded.as_bytes()),
            subject_alt_names(TWO_URIS.as_bytes())
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(subject_alt_names(b""), Err(CertError::NotPem));
        assert_eq!(subject_alt_names(b"%ZZ"), Err(CertError::NotPem));
        let not_a_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            subject_alt_names(not_a_cert.as_bytes()),
            Err(CertError::NotCertificate)
        );
        let key = TWO_URIS.replace("CERTIFICATE", "PRIVATE KEY");
        assert_eq!(subject_alt_names(key.as_bytes()), Err(CertError::NotPem));
        let huge = vec![b'A'; MAX_CERT_BYTES + 1];
        assert_eq!(subject_alt_names(&huge), Err(CertError::TooLarge));
        // Truncated anywhere: never a panic.
        for cut in 0..TWO_URIS.len() {
            let _ = subject_alt_names(&TWO_URIS.as_bytes()[..cut]);
        }
    }
}
