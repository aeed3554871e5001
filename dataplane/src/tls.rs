//! rustls configuration for the client-facing listener (ring provider only).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// Build the server-side TLS config from PEM files. Errors name the field.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| {
            ConfigError::field(
                "tls.cert_file",
                format!("cannot read {}: {e}", cert_file.display()),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::field(
                "tls.cert_file",
                format!("bad PEM in {}: {e}", cert_file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::field(
            "tls.cert_file",
            format!("no certificate in {}", cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        ConfigError::field(
            "tls.key_file",
            format!("cannot read a private key from {}: {e}", key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::field("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ConfigError::field(
                "tls.key_file",
                format!("certificate and key do not match: {e}"),
            )
        })?;
    Ok(Arc::new(cfg))
}
