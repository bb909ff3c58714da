//! `control:` of the sidecar's config: where it asks the control plane (the injector) for its live policy.
//! The injector sets it on every sidecar it injects (`control.enabled` in the chart, on by default).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlClient {
    /// `https://HOST[:PORT]` of the injector's Service; `None`: the policy is the config's alone.
    pub url: Option<String>,
    /// PEM CA certificates that sign the injector's certificate (inline, or a file); neither: the system roots.
    pub ca_pem: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The projected ServiceAccount token (audience-bound), read again before every request.
    pub token_file: PathBuf,
}

impl Default for ControlClient {
    fn default() -> Self {
        ControlClient {
            url: None,
            ca_pem: None,
            ca_file: None,
            token_file: PathBuf::from("/var/run/secrets/pgwarden.io/budget/token"),
        }
    }
}

/// Checks an https URL and a CA given at most once (for `section.url`/`section.ca_pem`); `Err` is (key, problem).
pub fn validate_endpoint(
    section: &str,
    url_key: &str,
    url: Option<&str>,
    ca_pem: Option<&str>,
    ca_file: Option<&PathBuf>,
) -> Result<(), (String, String)> {
    let Some(url) = url else { return Ok(()) };
    let fail = |key: &str, msg: &str| Err((format!("{section}.{key}"), msg.to_string()));
    if !url.starts_with("https://") || url.len() <= "https://".len() {
        return fail(url_key, "must be an https:// URL (the token it carries is a credential)");
    }
    if ca_pem.is_some() && ca_file.is_some() {
        return fail("ca_pem", "set ca_pem or ca_file, not both");
    }
    if let Some(pem) = ca_pem {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
        if !certs.is_ok_and(|c| !c.is_empty()) {
            return fail("ca_pem", "holds no PEM certificate");
        }
    }
    Ok(())
}
