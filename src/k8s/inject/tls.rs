//! The webhook's serving certificate, re-read when its files change (a rotated Secret is served without a
//! restart). Keys in PKCS#1 (Helm's `genSignedCert`), SEC1 and PKCS#8 (cert-manager) PEM all load.

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tracing::{info, warn};

/// Serves the current certificate; [`ReloadingCert::watch`] swaps in a new one when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    use anyhow::Context;
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert_path.display());
    let key =
        PrivateKeyDer::from_pem_file(key_path).with_context(|| format!("reading the key {}", key_path.display()))?;
    let key = ring::default_provider().key_provider.load_private_key(key).context("loading the private key")?;
    let certified = CertifiedKey::new(certs, key);
    certified.keys_match().context("the certificate does not match the key")?;
    Ok(certified)
}

impl ReloadingCert {
    pub fn new(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ReloadingCert>> {
        let current = RwLock::new(Arc::new(load(cert_path, key_path)?));
        Ok(Arc::new(ReloadingCert { cert_path: cert_path.into(), key_path: key_path.into(), current }))
    }

    /// A TLS server config serving this certificate (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files every `every`; a changed, valid pair replaces the served certificate.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let read = |s: &Self| (std::fs::read(&s.cert_path).ok(), std::fs::read(&s.key_path).ok());
        let mut seen = read(&self);
        loop {
            tokio::time::sleep(every).await;
            let now = read(&self);
            if now == seen || now.0.is_none() || now.1.is_none() {
                continue;
            }
            match load(&self.cert_path, &self.key_path) {
                Ok(certified) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
                    seen = now;
                    info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                // Mid-rotation the key and certificate can disagree for a moment: try again next round.
                Err(e) => warn!(error = %format!("{e:#}"), "new serving certificate not loaded yet"),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}
