//! rustls configuration for the client-facing listener (ring provider only).
//!
//! With `tls.client_ca_file`, clients may present a certificate signed by
//! that CA (optional at the TLS layer: identities that authenticate
//! otherwise present none). monoio-rustls gives no access to a
//! connection's peer certificates, so each such connection gets its own
//! rustls config whose certificate verifier, wrapping the shared one, keeps
//! the certificate it verified (or why it refused it) in a slot the
//! handshake reads ([`ServerTls::acceptor`]). Session resumption is off then: a resumed
//! session presents no certificate to keep.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::ConfigError;

/// Where a connection's client certificate lands during its TLS handshake:
/// the end-entity certificate (DER) the client CA verified, or why it was
/// refused (the handshake then fails): not vouched for by the CA, or not
/// proved by a signature with its key (CertificateVerify).
pub type PeerCert = Arc<Mutex<Option<Result<CertificateDer<'static>, rustls::Error>>>>;

/// The client-facing TLS settings, ready to accept connections.
pub struct ServerTls {
    /// Without client certificates: one config for every connection.
    shared: Arc<rustls::ServerConfig>,
    /// With `tls.client_ca_file`: what each connection's config is made of.
    client: Option<ClientAuth>,
}

struct ClientAuth {
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn ClientCertVerifier>,
    certs: Arc<dyn ResolvesServerCert>,
}

impl ServerTls {
    /// The acceptor for one connection, and with client certificates on,
    /// the slot its verified certificate will be in after the handshake.
    pub fn acceptor(&self) -> (monoio_rustls::TlsAcceptor, Option<PeerCert>) {
        let Some(c) = &self.client else {
            return (self.shared.clone().into(), None);
        };
        let slot = PeerCert::default();
        let verifier = Arc::new(Keeping {
            inner: c.verifier.clone(),
            slot: slot.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(c.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions (checked at start)")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(c.certs.clone());
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        (Arc::new(cfg).into(), Some(slot))
    }

    /// Whether clients may authenticate with certificates.
    pub fn client_certificates(&self) -> bool {
        self.client.is_some()
    }
}

/// A client certificate verifier that keeps what it verified, or why not.
#[derive(Debug)]
struct Keeping {
    inner: Arc<dyn ClientCertVerifier>,
    slot: PeerCert,
}

impl Keeping {
    /// Keep a refusal of the certificate (in place of the certificate).
    fn refused<T>(&self, r: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if let Err(e) = &r {
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(e.clone()));
        }
        r
    }
}

impl ClientCertVerifier for Keeping {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.refused(self.inner.verify_client_cert(
            end_entity,
            intermediates,
            now,
        ))?;
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Ok(end_entity.clone().into_owned()));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refused(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.refused(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Build the server-side TLS from PEM files (`client_ca`: the CA that signs
/// client certificates, if any). Errors name the field.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTls, ConfigError> {
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
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        ConfigError::field(
            "tls.key_file",
            format!("certificate and key do not match: {e}"),
        )
    })?;
    let resolver: Arc<dyn ResolvesServerCert> = Arc::new(SingleCertAndKey::from(certified));
    let shared = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::field("tls", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    let client = match client_ca {
        None => None,
        Some(ca) => {
            let field = |m: String| ConfigError::field("tls.client_ca_file", m);
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| field(format!("cannot read {}: {e}", ca.display())))?
            {
                let c = c.map_err(|e| field(format!("bad PEM in {}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| field(format!("bad CA certificate in {}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(field(format!("no certificate in {}", ca.display())));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| field(e.to_string()))?;
            Some(ClientAuth {
                provider,
                verifier,
                certs: resolver,
            })
        }
    };
    Ok(ServerTls {
        shared: Arc::new(shared),
        client,
    })
}
