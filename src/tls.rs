//! TLS configurations built from the config (rustls with the ring provider), once per settings change.
//!
//! Towards the upstream: `prefer` and `require` encrypt without checking the certificate, as libpq's modes
//! of the same names do; `verify-ca` checks the chain against `upstream_ca_file` (or the system roots),
//! `verify-full` the chain and the host name, both as libpq does (see `tls::verify`). Towards clients:
//! the certificate pgwarden serves (`tls::reloading`) and the acceptor for `client_tls`.

use crate::config::{ClientTls, Config, ConfigError, TlsMode};
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

pub mod reloading;
mod verify;
use std::sync::Arc;

/// Builds the client TLS config the settings ask for (`None` for `disable`).
pub fn client_config(config: &Config) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("upstream_tls", e.to_string()))?;
    let tls = match config.upstream_tls {
        TlsMode::Disable => return Ok(None),
        TlsMode::Prefer | TlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::LibpqVerifier { trust: None, provider }))
            .with_no_client_auth(),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let root_certs = root_certs(config)?;
            let mut roots = RootCertStore::empty();
            for cert in &root_certs {
                // A certificate webpki cannot use as a trust anchor may still be trusted as itself (verify).
                let _ = roots.add(cert.clone());
            }
            let trust = verify::Trust {
                roots: Arc::new(roots),
                root_certs,
                check_host: config.upstream_tls == TlsMode::VerifyFull,
            };
            let verifier = verify::LibpqVerifier { trust: Some(trust), provider };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(tls)))
}

/// The trusted certificates: `upstream_ca_file`, else the system's.
fn root_certs(config: &Config) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    match &config.upstream_ca_file {
        Some(path) => {
            let origin = || format!("config key `upstream_ca_file` ({})", path.display());
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ConfigError::invalid(origin(), e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::invalid(origin(), e.to_string()))?;
            if certs.is_empty() {
                return Err(ConfigError::invalid(origin(), "holds no PEM certificate"));
            }
            Ok(certs)
        }
        None => {
            let certs = rustls_native_certs::load_native_certs().certs;
            if certs.is_empty() {
                return Err(ConfigError::invalid(
                    "config key `upstream_tls`",
                    "verify-ca and verify-full need upstream_ca_file: no system root certificates were found",
                ));
            }
            Ok(certs)
        }
    }
}

/// TLS towards the budget coordinator: its CA from `budget.ca_pem` or `budget.ca_file`, else the system's
/// roots; the coordinator's name is checked as for any HTTPS server.
pub fn budget_client_config(budget: &crate::config::BudgetClient) -> Result<Arc<ClientConfig>, ConfigError> {
    coordinator_client_config("budget", &budget.ca_pem, &budget.ca_file)
}

/// TLS to the injector's control plane (`control.*`).
pub fn control_client_config(
    control: &crate::config::control::ControlClient,
) -> Result<Arc<ClientConfig>, ConfigError> {
    coordinator_client_config("control", &control.ca_pem, &control.ca_file)
}

/// TLS to the injector, trusting `ca_pem` or `ca_file` (else the system roots); errors name `section.*`.
fn coordinator_client_config(
    section: &str,
    ca_pem: &Option<String>,
    ca_file: &Option<std::path::PathBuf>,
) -> Result<Arc<ClientConfig>, ConfigError> {
    let origin = |key: &str| format!("config key `{section}.{key}`");
    let certs: Vec<CertificateDer<'static>> = match (ca_pem, ca_file) {
        (Some(pem), _) => CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::invalid(origin("ca_pem"), e.to_string()))?,
        (None, Some(path)) => CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ConfigError::invalid(format!("{} ({})", origin("ca_file"), path.display()), e.to_string()))?,
        (None, None) => rustls_native_certs::load_native_certs().certs,
    };
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(ConfigError::invalid(origin("ca_pem"), "no CA certificate to trust the injector with"));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(origin("ca_pem"), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("invalid TLS server name {host:?}: {e}"))
}

/// Client-side TLS: the certificate pgwarden serves and the acceptor built on it.
pub struct ClientTlsSetup {
    pub cert: Arc<reloading::ReloadingCert>,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// The ALPN protocol PostgreSQL 17 defines (required for direct TLS, `sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Builds client-side TLS for `client_tls: allow | require` (`None` for `disable`): the certificate files, or
/// a self-signed certificate for localhost, 127.0.0.1 and ::1 made now (its fingerprint is logged), so
/// `sslmode=require` works with no setup in a sidecar.
pub fn server_setup(config: &Config) -> Result<Option<Arc<ClientTlsSetup>>, ConfigError> {
    if config.client_tls == ClientTls::Disable {
        return Ok(None);
    }
    let cert = match (&config.client_tls_cert_file, &config.client_tls_key_file) {
        (Some(cert), Some(key)) => reloading::ReloadingCert::new(cert, key)
            .map_err(|e| ConfigError::invalid("config key `client_tls_cert_file`", format!("{e:#}")))?,
        _ => {
            let (cert, fingerprint) = reloading::ReloadingCert::self_signed(&["localhost", "127.0.0.1", "::1"])
                .map_err(|e| ConfigError::invalid("config key `client_tls`", format!("{e:#}")))?;
            tracing::info!(sha256 = %fingerprint, "client TLS: serving a self-signed certificate for localhost");
            cert
        }
    };
    let server = cert
        .server_config(ALPN_POSTGRESQL)
        .map_err(|e| ConfigError::invalid("config key `client_tls`", format!("{e:#}")))?;
    Ok(Some(Arc::new(ClientTlsSetup { cert, acceptor: tokio_rustls::TlsAcceptor::from(server) })))
}
