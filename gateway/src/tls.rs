//! TLS towards clients (rustls server) and towards the upstream (rustls client with a CA).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("upstream.server_name: {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server configuration for client connections.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Server configuration for client connections, verifying client certificates against the
/// `tls.client_ca` bundles (and `tls.client_crl` lists) when they are configured.
pub fn client_facing_config(
    tls: &crate::config::TlsConfig,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Err(TlsError::File {
            path: "tls.cert".into(),
            message: "tls.cert and tls.key are required".into(),
        });
    };
    if tls.client_ca.is_empty() {
        return server_config(cert, key);
    }
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let verifier = client_verifier(tls)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The verifier of client certificates: chains to one of the CAs, not revoked by a CRL.
fn client_verifier(
    tls: &crate::config::TlsConfig,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in &tls.client_ca {
        for c in load_certs(ca)? {
            roots.add(c).map_err(|e| file_err(ca, e))?;
        }
    }
    let mut crls = Vec::new();
    for path in &tls.client_crl {
        crls.extend(load_crls(path)?);
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls);
    if tls.client_certificates == crate::config::ClientCertificates::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| TlsError::File {
        path: tls
            .client_ca
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        message: format!("client certificate verifier: {e}"),
    })
}

/// Reads a CRL file: PEM (`-----BEGIN X509 CRL-----`) or one DER list.
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let crls = if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(path, e))?
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if crls.is_empty() {
        return Err(file_err(path, "no certificate revocation list found"));
    }
    // Parse each now, so a broken list is reported here and not at the first handshake.
    for crl in &crls {
        <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<
            x509_parser::error::X509Error,
        >>::from_der(crl.as_ref())
            .map_err(|e| file_err(path, format!("invalid CRL: {e}")))?;
    }
    Ok(crls)
}

/// Client configuration for the upstream, trusting only the given CA bundle.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| file_err(ca, e))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}
