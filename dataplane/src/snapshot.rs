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
    /// Masking of this connection's results (None: masking off).
    pub masking: Option<Arc<crate::mask::Engine>>,
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
    /// Issuers whose tokens may authenticate this identity (tried in order).
    pub jwt_issuers: Vec<Arc<JwtIssuer>>,
    /// The client certificate that authenticates this identity
    /// (`identities[].client_cert`, or a `ClientCertificate` resource).
    pub client_cert: Option<crate::auth::cert::CertMatch>,
    pub groups: Vec<String>,
}

/// Why an open session may no longer run statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked(pub String);

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// The control plane's version (1 for a static configuration).
    pub version: u64,
    /// Unique per built snapshot in this process: open sessions re-check
    /// their grant when it changes.
    pub generation: u64,
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
    unmasked: bool,
}

/// Profile name → engine (None: masking off).
type Profiles = HashMap<String, Option<Arc<crate::mask::Engine>>>;

/// Compile named profiles; `default` is the built-in profile unless given.
fn compile_profiles(
    given: impl IntoIterator<Item = (String, crate::mask::MaskingProfile)>,
) -> Result<Profiles, (String, String)> {
    let mut out = HashMap::new();
    let mut default_given = false;
    for (name, p) in given {
        default_given |= name == "default";
        let engine = if p.enabled {
            Some(
                crate::mask::Engine::compile_shared(&p)
                    .map_err(|e| (name.clone(), e.to_string()))?,
            )
        } else {
            None
        };
        out.insert(name, engine);
    }
    if !default_given {
        let d = crate::mask::Engine::compile_shared(&crate::mask::MaskingProfile::default())
            .map_err(|e| ("default".to_string(), e.to_string()))?;
        out.insert("default".to_string(), Some(d));
    }
    out.insert("none".to_string(), None);
    Ok(out)
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
            let jwt_issuers = id
                .jwt_issuer
                .as_ref()
                .and_then(|n| issuers.get(n).cloned())
                .into_iter()
                .collect();
            identities.insert(
                id.name.clone(),
                IdentityEntry {
                    name: id.name.clone(),
                    verifier,
                    jwt_issuers,
                    client_cert: id.client_cert.clone(),
                    groups: id.groups.clone(),
                },
            );
        }

        let profiles = compile_profiles(cfg.masking_profiles.clone())
            .map_err(|(n, e)| ConfigError::field(format!("masking_profiles.{n}"), e))?;
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
                mode => {
                    let ca = match &t.tls.ca_file {
                        Some(path) => Some(std::fs::read(path).map_err(|e| {
                            ConfigError::field(
                                at("tls.ca_file"),
                                format!("cannot read {}: {e}", path.display()),
                            )
                        })?),
                        None => None,
                    };
                    Some(
                        build_target_tls(
                            mode,
                            ca.as_deref(),
                            t.tls.server_name.as_deref().unwrap_or(&t.host),
                        )
                        .map_err(|e| ConfigError::field(at("tls"), e))?,
                    )
                }
            };
            let addrs = resolve(&t.host, t.port).map_err(|e| ConfigError::field(at("host"), e))?;
            connections.insert(
                c.name.clone(),
                Arc::new(ConnectionEntry {
                    name: c.name.clone(),
                    host: t.host.clone(),
                    port: t.port,
                    addrs,
                    database: t.database.clone(),
                    user: t.user.clone(),
                    password,
                    auth: t.auth,
                    tls,
                    masking: profiles
                        .get(c.masking_profile.as_deref().unwrap_or("default"))
                        .cloned()
                        .ok_or_else(|| {
                            ConfigError::field(
                                format!("connections[{i}].masking_profile"),
                                "no such masking profile",
                            )
                        })?,
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
                unmasked: g.unmasked,
            })
            .collect();

        Ok(Snapshot {
            version,
            generation: next_generation(),
            identities,
            connections,
            grants,
        })
    }

    /// Compile a snapshot pushed by the control plane. Errors name the
    /// resource and field (`Connection orders: spec.host: …`); the caller
    /// NACKs with that text and keeps its current snapshot.
    ///
    /// Identities are every name an `ApiKey`, a `ClientCertificate`, a
    /// `Group` or a `Policy` mentions; each may log in with a JWT from any
    /// `IdentityProvider` (the token's identity claim must equal the name)
    /// and, if it has them, its API key and its client certificate. Groups
    /// come from `Group` members and the key's and certificate's groups.
    pub fn from_proto(snap: &proto::Snapshot) -> Result<Snapshot, String> {
        use proto::resource::Spec;
        let version = u64::try_from(snap.version)
            .map_err(|_| format!("snapshot version {} is negative", snap.version))?;
        let mut issuers = Vec::new();
        let mut identities: HashMap<String, IdentityEntry> = HashMap::new();
        let mut connections = HashMap::new();
        let mut grants = Vec::new();
        let mut given = Vec::new();
        for r in &snap.resources {
            if let Some(Spec::MaskingProfile(m)) = &r.spec {
                let p: crate::mask::MaskingProfile = serde_json::from_str(&m.json)
                    .map_err(|e| format!("MaskingProfile {}: spec: {e}", r.name))?;
                given.push((r.name.clone(), p));
            }
        }
        let profiles =
            compile_profiles(given).map_err(|(n, e)| format!("MaskingProfile {n}: spec: {e}"))?;
        fn ident<'a>(
            map: &'a mut HashMap<String, IdentityEntry>,
            name: &str,
        ) -> &'a mut IdentityEntry {
            map.entry(name.to_string())
                .or_insert_with(|| IdentityEntry {
                    name: name.to_string(),
                    verifier: None,
                    jwt_issuers: Vec::new(),
                    client_cert: None,
                    groups: Vec::new(),
                })
        }
        for r in &snap.resources {
            let at = |field: &str, e: String| format!("{} {}: {field}: {e}", r.kind, r.name);
            match &r.spec {
                None => return Err(at("spec", "missing".into())),
                Some(Spec::MaskingProfile(_)) => {}
                Some(Spec::Connection(c)) => {
                    let port = u16::try_from(c.port)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| at("spec.port", format!("{} is not a TCP port", c.port)))?;
                    let auth = match c.auth.as_str() {
                        "" | "auto" => TargetAuth::Auto,
                        "scram-sha-256" => TargetAuth::ScramSha256,
                        "md5" => TargetAuth::Md5,
                        "password" => TargetAuth::Password,
                        "trust" => TargetAuth::Trust,
                        other => return Err(at("spec.auth", format!("unknown method `{other}`"))),
                    };
                    let tls = match c.tls.as_ref().map(|t| t.mode.as_str()).unwrap_or("") {
                        "" | "disable" => None,
                        mode => {
                            let mode = match mode {
                                "require" => TargetTlsMode::Require,
                                "verify-ca" => TargetTlsMode::VerifyCa,
                                "verify-full" => TargetTlsMode::VerifyFull,
                                other => {
                                    return Err(at(
                                        "spec.tls.mode",
                                        format!("unknown mode `{other}`"),
                                    ))
                                }
                            };
                            let t = c.tls.as_ref().expect("mode set");
                            let ca = (!t.ca_pem.is_empty()).then_some(t.ca_pem.as_bytes());
                            let name = if t.server_name.is_empty() {
                                &c.host
                            } else {
                                &t.server_name
                            };
                            Some(build_target_tls(mode, ca, name).map_err(|e| at("spec.tls", e))?)
                        }
                    };
                    let addrs = resolve(&c.host, port).map_err(|e| at("spec.host", e))?;
                    connections.insert(
                        r.name.clone(),
                        Arc::new(ConnectionEntry {
                            name: r.name.clone(),
                            host: c.host.clone(),
                            port,
                            addrs,
                            database: c.database.clone(),
                            user: c.user.clone(),
                            password: (!c.password.is_empty()).then(|| Secret(c.password.clone())),
                            auth,
                            tls,
                            masking: {
                                let name = if c.masking_profile.is_empty() {
                                    "default"
                                } else {
                                    &c.masking_profile
                                };
                                profiles.get(name).cloned().ok_or_else(|| {
                                    at(
                                        "spec.maskingProfile",
                                        format!("no MaskingProfile named `{name}`"),
                                    )
                                })?
                            },
                        }),
                    );
                }
                Some(Spec::IdentityProvider(p)) => {
                    if p.jwks_json.is_empty() {
                        return Err(at(
                            "spec.jwks",
                            "no JWKS (the control plane has not fetched jwksUrl yet)".into(),
                        ));
                    }
                    let claim = if p.identity_claim.is_empty() {
                        "sub"
                    } else {
                        &p.identity_claim
                    };
                    let iss = JwtIssuer::new(
                        &r.name,
                        &p.issuer,
                        &p.audience,
                        claim,
                        p.leeway_seconds,
                        &p.jwks_json,
                    )
                    .map_err(|e| at("spec.jwks", e))?;
                    issuers.push(Arc::new(iss));
                }
                Some(Spec::ApiKey(k)) => {
                    let v = Verifier::parse(&k.verifier)
                        .map_err(|e| at("spec.verifier", e.to_string()))?;
                    let id = ident(&mut identities, &k.identity);
                    if id.verifier.is_some() {
                        return Err(at(
                            "spec.identity",
                            format!("identity `{}` already has an API key", k.identity),
                        ));
                    }
                    id.verifier = Some(v);
                    id.groups.extend(k.groups.iter().cloned());
                }
                Some(Spec::ClientCertificate(c)) => {
                    let m = crate::auth::cert::CertMatch::from_spec(c);
                    m.check("spec").map_err(|e| at("spec", e.to_string()))?;
                    let id = ident(&mut identities, &c.identity);
                    if id.client_cert.is_some() {
                        return Err(at(
                            "spec.identity",
                            format!("identity `{}` already has a client certificate", c.identity),
                        ));
                    }
                    id.client_cert = Some(m);
                    id.groups.extend(c.groups.iter().cloned());
                }
                Some(Spec::Group(g)) => {
                    for m in &g.members {
                        ident(&mut identities, m).groups.push(r.name.clone());
                    }
                }
                Some(Spec::Policy(p)) => {
                    for i in p.identities.iter().filter(|i| *i != "*") {
                        ident(&mut identities, i);
                    }
                    grants.push(GrantEntry {
                        connections: p.connections.iter().cloned().collect(),
                        identities: p.identities.iter().cloned().collect(),
                        groups: p.groups.iter().cloned().collect(),
                        unmasked: p.unmasked,
                    });
                }
            }
        }
        for id in identities.values_mut() {
            id.jwt_issuers.clone_from(&issuers);
            id.groups.sort();
            id.groups.dedup();
        }
        Ok(Snapshot {
            version,
            generation: next_generation(),
            identities,
            connections,
            grants,
        })
    }

    /// Whether a session that authenticated as `identity` (with `method`,
    /// for API keys with `verifier`, for JWTs with the token of `jwt`: the
    /// configured issuer's name and its `iss`) may still use `conn` under
    /// this snapshot. Called on the next statement after the snapshot
    /// changed. A JWT session ends when the issuer that vouched for it is
    /// no longer one the identity accepts (removed, renamed, or given
    /// another `iss`), even if others remain; a change of the issuer's
    /// keys alone does not end it.
    pub fn recheck(
        &self,
        identity: &str,
        conn: &str,
        method: &str,
        verifier: Option<&Verifier>,
        jwt: Option<(&str, &str)>,
        cert: Option<&crate::auth::cert::ClientCert>,
    ) -> Result<(), Revoked> {
        let Some(ident) = self.identities.get(identity) else {
            return Err(Revoked(format!(
                "identity \"{identity}\" was removed from the configuration"
            )));
        };
        match method {
            "api_key" if ident.verifier.as_ref() != verifier => {
                return Err(Revoked(format!(
                    "the API key of identity \"{identity}\" was deleted or replaced"
                )))
            }
            "client_cert"
                if !ident
                    .client_cert
                    .as_ref()
                    .is_some_and(|m| cert.is_some_and(|c| m.matches(c))) =>
            {
                return Err(Revoked(format!(
                    "identity \"{identity}\" no longer accepts the client certificate this session presented"
                )))
            }
            "jwt" if ident.jwt_issuers.is_empty() => {
                return Err(Revoked(format!(
                    "identity \"{identity}\" no longer accepts JWTs"
                )))
            }
            "jwt"
                if !ident
                    .jwt_issuers
                    .iter()
                    .any(|i| jwt == Some((i.name.as_str(), i.issuer()))) =>
            {
                return Err(Revoked(format!(
                    "identity \"{identity}\" no longer accepts JWTs of issuer `{}`",
                    jwt.map_or("", |(name, _)| name)
                )))
            }
            _ => {}
        }
        if !self.connections.contains_key(conn) {
            return Err(Revoked(format!("connection \"{conn}\" was removed")));
        }
        if !self.is_granted(ident, conn) {
            return Err(Revoked(format!(
                "identity \"{identity}\" is no longer granted connection \"{conn}\""
            )));
        }
        Ok(())
    }

    fn grants_for<'a>(
        &'a self,
        identity: &'a IdentityEntry,
        conn: &'a str,
    ) -> impl Iterator<Item = &'a GrantEntry> + 'a {
        self.grants.iter().filter(move |g| {
            (g.connections.contains(conn) || g.connections.contains("*"))
                && (g.identities.contains(&identity.name)
                    || g.identities.contains("*")
                    || identity.groups.iter().any(|x| g.groups.contains(x)))
        })
    }

    /// Whether `identity` may use connection `conn`.
    pub fn is_granted(&self, identity: &IdentityEntry, conn: &str) -> bool {
        self.grants_for(identity, conn).next().is_some()
    }

    /// The masking engine for `identity`'s results on `conn`: the
    /// connection's profile, unless a grant gives this identity (or one of
    /// its groups) unmasked access explicitly.
    pub fn masking_for(&self, identity: &str, conn: &str) -> Option<Arc<crate::mask::Engine>> {
        let c = self.connections.get(conn)?;
        let engine = c.masking.clone()?;
        match self.identities.get(identity) {
            Some(id) if self.grants_for(id, conn).any(|g| g.unmasked) => None,
            _ => Some(engine),
        }
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

/// Resolve `host:port` (on the control thread: never on a data core).
fn resolve(host: &str, port: u16) -> Result<Arc<[std::net::SocketAddr]>, String> {
    let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{host}` resolves to no address"));
    }
    Ok(addrs.into())
}

fn build_target_tls(
    mode: TargetTlsMode,
    ca_pem: Option<&[u8]>,
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
        match ca_pem {
            Some(pem) => {
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| format!("bad CA certificate: {e}"))?;
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
