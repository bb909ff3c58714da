//! A serving certificate that follows its files: re-read when they change (a rotated Secret or a
//! cert-manager renewal is served without a restart), or a self-signed one made at start. Used by the
//! webhook and by client-side TLS. Keys in PKCS#1 (Helm's `genSignedCert`), SEC1 and PKCS#8 (cert-manager)
//! PEM all load.

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing::{info, warn};

type FileContents = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Serves the current certificate; [`ReloadingCert::refresh`] (or [`ReloadingCert::watch`]) swaps in a new
/// one when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    /// `None` for a self-signed certificate made at start (nothing to re-read).
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' contents last loaded.
    seen: Mutex<FileContents>,
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

fn read(files: &(PathBuf, PathBuf)) -> FileContents {
    (std::fs::read(&files.0).ok(), std::fs::read(&files.1).ok())
}

impl ReloadingCert {
    pub fn new(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ReloadingCert>> {
        let files = (cert_path.to_path_buf(), key_path.to_path_buf());
        let seen = read(&files);
        let current = RwLock::new(Arc::new(load(cert_path, key_path)?));
        Ok(Arc::new(ReloadingCert { files: Some(files), current, seen: Mutex::new(seen) }))
    }

    /// A self-signed certificate for `names` (host names or IP addresses), made now; returns it with the
    /// SHA-256 fingerprint of its DER, for the log.
    pub fn self_signed(names: &[&str]) -> anyhow::Result<(Arc<ReloadingCert>, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "pgwarden (self-signed)");
        let cert = params.self_signed(&key)?;
        let fingerprint = ring_sha256(cert.der());
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = ring::default_provider().key_provider.load_private_key(der)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing);
        let current = RwLock::new(Arc::new(certified));
        Ok((Arc::new(ReloadingCert { files: None, current, seen: Mutex::new((None, None)) }), fingerprint))
    }

    /// A TLS server config serving this certificate, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[u8]) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files once; a changed, valid pair replaces the served certificate.
    pub fn refresh(&self) {
        let Some(files) = &self.files else { return };
        let now = read(files);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if now == *seen || now.0.is_none() || now.1.is_none() {
            return;
        }
        match load(&files.0, &files.1) {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
                *seen = now;
                info!(cert = %files.0.display(), "serving certificate reloaded");
            }
            // Mid-rotation the key and certificate can disagree for a moment: try again next round.
            Err(e) => warn!(error = %format!("{e:#}"), "new serving certificate not loaded yet"),
        }
    }

    /// [`ReloadingCert::refresh`] every `every`, forever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.refresh();
        }
    }
}

fn ring_sha256(der: &[u8]) -> String {
    let digest = ::ring::digest::digest(&::ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}
