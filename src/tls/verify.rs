//! Checking the upstream's certificate the way libpq does for `sslmode=verify-ca` and `verify-full`.
//!
//! libpq (OpenSSL) trusts a certificate that is itself in the root file: the recipe in PostgreSQL's own
//! documentation makes a self-signed server certificate (`openssl req -new -x509 …`, a CA certificate) that
//! doubles as `root.crt`. webpki refuses such a certificate as an end entity (`CaUsedAsEndEntity`), so this
//! verifier accepts it when it is byte for byte one of the configured roots and within its validity period;
//! every other certificate goes through webpki's chain check. `verify-full` then checks the host name,
//! `verify-ca` does not.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The certificate check of one `upstream_tls` mode: `trust: None` checks no certificate (libpq's `prefer`
/// and `require`) but still the handshake signatures.
#[derive(Debug)]
pub struct LibpqVerifier {
    pub trust: Option<Trust>,
    pub provider: Arc<CryptoProvider>,
}

/// What `verify-ca` and `verify-full` trust.
#[derive(Debug)]
pub struct Trust {
    pub roots: Arc<RootCertStore>,
    /// The root certificates as given (a self-signed server certificate is trusted when it is one of them).
    pub root_certs: Vec<CertificateDer<'static>>,
    /// `verify-full`: the certificate must name the host pgwarden dialled.
    pub check_host: bool,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(trust) = &self.trust else { return Ok(ServerCertVerified::assertion()) };
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        if let Err(e) = verify_server_cert_signed_by_trust_anchor(&cert, &trust.roots, intermediates, now, algs) {
            if !trust.root_certs.iter().any(|root| root.as_ref() == end_entity.as_ref()) {
                return Err(e);
            }
            // Trusted as it is: only its validity period is left to check.
            match validity(end_entity) {
                Some((not_before, _)) if now.as_secs() < not_before => {
                    return Err(Error::InvalidCertificate(CertificateError::NotValidYet))
                }
                Some((_, not_after)) if now.as_secs() > not_after => {
                    return Err(Error::InvalidCertificate(CertificateError::Expired))
                }
                Some(_) => {}
                None => return Err(Error::InvalidCertificate(CertificateError::BadEncoding)),
            }
        }
        if trust.check_host {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A DER element at the front of `der`: (tag, contents, rest).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's notBefore and notAfter as Unix seconds.
fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (_, certificate, _) = element(cert)?;
    let (_, mut tbs, _) = element(certificate)?;
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2; // version
    }
    let rest = element(tbs)?.2; // serialNumber
    let rest = element(rest)?.2; // signature
    let rest = element(rest)?.2; // issuer
    let (_, validity, _) = element(rest)?;
    let (t1, not_before, rest) = element(validity)?;
    let (t2, not_after, _) = element(rest)?;
    Some((time(t1, not_before)?, time(t2, not_after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(tag: u8, text: &[u8]) -> Option<u64> {
    let digits = |s: &[u8]| -> Option<u64> {
        s.iter().try_fold(0u64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u64))
    };
    let (year, rest) = match tag {
        0x17 if text.len() == 13 => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 15 => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970 on.
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_encodings() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"000301000000Z"), Some(951_868_800));
        assert_eq!(time(0x18, b"20261202071500Z"), Some(1_796_195_700));
        assert_eq!(time(0x17, b"491231235959Z"), Some(2_524_607_999));
        for bad in [&b"7001010000Z"[..], b"701301000000Z", b"70010100000aZ", b"700101000000X"] {
            assert_eq!(time(0x17, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        assert_eq!(validity(cert.der()), Some((1_577_923_200, 1_935_792_000)));
        assert_eq!(validity(&cert.der()[..40]), None);
    }
}
