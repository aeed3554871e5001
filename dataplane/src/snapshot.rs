//! The immutable policy snapshot every core reads.
//!
//! Built once from the static configuration (and, later, from each version
//! the control plane pushes), validated whole, then published with one atomic
//! pointer swap. A core loads the current `Arc<Snapshot>` when a session
//! starts; it never locks and never sees a half-applied change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

use crate::auth::jwt::JwtIssuer;
use crate::auth::scram::Verifier;
use crate::config::{Config, ConfigError, TargetAuth, TargetTlsMode};

/// A credential the gateway holds for a target. Never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A target connection, ready to dial.
#[derive(Debug)]
pub struct ConnectionEntry {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `host:port` resolved when the snapshot was built (no DNS on a data core).
    pub addrs: Arc<[std::net::SocketAddr]>,
    pub database: String,
    pub user: String,
    pub password: Option<Secret>,
    pub auth: TargetAuth,
    /// TLS towards the target, with the name to verify.
    pub tls: Option<TargetTlsEntry>,
}

pub struct TargetTlsEntry {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TargetTlsEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetTlsEntry")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct IdentityEntry {
    pub name: String,
    pub verifier: Option<Verifier>,
    pub jwt_issuer: Option<Arc<JwtIssuer>>,
    pub groups: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub identities: HashMap<String, IdentityEntry>,
    pub connections: HashMap<String, Arc<ConnectionEntry>>,
    /// (connection or "*") → identities and groups allowed.
    grants: Vec<GrantEntry>,
}

#[derive(Debug)]
struct GrantEntry {
    connections: HashSet<String>,
    identities: HashSet<String>,
    groups: HashSet<String>,
}

impl Snapshot {
    /// Compile a validated config. Reads the files it names (passwords,
    /// JWKS, CA bundles); their errors name the field.
    pub fn build(cfg: &Config, version: u64) -> Result<Snapshot, ConfigError> {
        let mut issuers = HashMap::new();
        for (i, j) in cfg.jwt_issuers.iter().enumerate() {
            let field = format!("jwt_issuers[{i}].jwks_file");
            let text = std::fs::read_to_string(&j.jwks_file).map_err(|e| {
                ConfigError::field(
                    &field,
                    format!("cannot read {}: {e}", j.jwks_file.display()),
                )
            })?;
            let iss = JwtIssuer::new(
                &j.name,
                &j.issuer,
                &j.audience,
                &j.identity_claim,
                j.leeway_seconds,
                &text,
            )
            .map_err(|e| ConfigError::field(&field, e))?;
            issuers.insert(j.name.clone(), Arc::new(iss));
        }

        let mut identities = HashMap::new();
        for (i, id) in cfg.identities.iter().enumerate() {
            let verifier = match &id.api_key {
                Some(v) => Some(Verifier::parse(v).map_err(|e| {
                    ConfigError::field(format!("identities[{i}].api_key"), e.to_string())
                })?),
                None => None,
            };
            let jwt_issuer = id.jwt_issuer.as_ref().and_then(|n| issuers.get(n).cloned());
            identities.insert(
                id.name.clone(),
                IdentityEntry {
                    name: id.name.clone(),
                    verifier,
                    jwt_issuer,
                    groups: id.groups.clone(),
                },
            );
        }

        let mut connections = HashMap::new();
        for (i, c) in cfg.connections.iter().enumerate() {
            let at = |f: &str| format!("connections[{i}].target.{f}");
            let t = &c.target;
            let password = match (&t.password, &t.password_file) {
                (Some(p), _) => Some(Secret(p.clone())),
                (None, Some(path)) => {
                    let s = std::fs::read_to_string(path).map_err(|e| {
                        ConfigError::field(
                            at("password_file"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    Some(Secret(s.trim_end_matches(['\n', '\r']).to_string()))
                }
                (None, None) => None,
            };
            let tls = match t.tls.mode {
                TargetTlsMode::Disable => None,
                mode => Some(
                    build_target_tls(
                        mode,
                        t.tls.ca_file.as_deref(),
                        t.tls.server_name.as_deref().unwrap_or(&t.host),
                    )
                    .map_err(|e| ConfigError::field(at("tls"), e))?,
                ),
            };
            let addrs: Vec<std::net::SocketAddr> =
                std::net::ToSocketAddrs::to_socket_addrs(&(t.host.as_str(), t.port))
                    .map_err(|e| {
                        ConfigError::field(at("host"), format!("cannot resolve `{}`: {e}", t.host))
                    })?
                    .collect();
            if addrs.is_empty() {
                return Err(ConfigError::field(
                    at("host"),
                    format!("`{}` resolves to no address", t.host),
                ));
            }
            connections.insert(
                c.name.clone(),
                Arc::new(ConnectionEntry {
                    name: c.name.clone(),
                    host: t.host.clone(),
                    port: t.port,
                    addrs: addrs.into(),
                    database: t.database.clone(),
                    user: t.user.clone(),
                    password,
                    auth: t.auth,
                    tls,
                }),
            );
        }

        let grants = cfg
            .grants
            .iter()
            .map(|g| GrantEntry {
                connections: g.connections.iter().cloned().collect(),
                identities: g.identities.iter().cloned().collect(),
                groups: g.groups.iter().cloned().collect(),
            })
            .collect();

        Ok(Snapshot {
            version,
            identities,
            connections,
            grants,
        })
    }

    /// Whether `identity` may use connection `conn`.
    pub fn is_granted(&self, identity: &IdentityEntry, conn: &str) -> bool {
        self.grants.iter().any(|g| {
            (g.connections.contains(conn) || g.connections.contains("*"))
                && (g.identities.contains(&identity.name)
                    || g.identities.contains("*")
                    || identity.groups.iter().any(|x| g.groups.contains(x)))
        })
    }
}

/// Accepts any server certificate: `tls.mode: require` encrypts without
/// verifying, as libpq's sslmode=require does. Signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies the chain but not the name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn build_target_tls(
    mode: TargetTlsMode,
    ca_file: Option<&std::path::Path>,
    server_name: &str,
) -> Result<TargetTlsEntry, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if mode == TargetTlsMode::Require {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                    roots.add(c).map_err(|e| e.to_string())?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        if roots.is_empty() {
            return Err("no CA certificates to verify the target with".to_string());
        }
        let roots = Arc::new(roots);
        if mode == TargetTlsMode::VerifyCa {
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                .with_no_client_auth()
        } else {
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("bad server name `{server_name}`: {e}"))?;
    Ok(TargetTlsEntry {
        config: Arc::new(config),
        server_name,
    })
}
