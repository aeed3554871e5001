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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{
    pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    NoServerSessionStorage, ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use x509_parser::prelude::{CertificateRevocationList, FromDer, ParsedExtension, X509Certificate};

use crate::config::{self, ConfigError};

/// Where a connection's client certificate lands during its TLS handshake:
/// the end-entity certificate (DER) the client CA verified, or why it was
/// refused (the handshake then fails): not vouched for by the CA, or not
/// proved by a signature with its key (CertificateVerify).
pub type PeerCert = Arc<Mutex<Option<Result<CertificateDer<'static>, rustls::Error>>>>;

/// The client-facing TLS settings, ready to accept connections.
pub struct ServerTls {
    /// Without client certificates: one config for every connection.
    shared: Arc<rustls::ServerConfig>,
    /// The `tls-server-end-point` channel binding data of the certificate
    /// (see [`end_point`]).
    end_point: Option<Arc<[u8]>>,
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

/// RFC 5929's `tls-server-end-point` channel binding data of a certificate
/// (DER): its hash by the hash function of its signature algorithm, SHA-256
/// for MD5 and SHA-1, as PostgreSQL and libpq compute it (OpenSSL's
/// `X509_get_signature_info`: for RSASSA-PSS, the hash its parameters
/// name, SHA-1 when they name none). None for signature algorithms without
/// a hash to take (Ed25519): those servers do not offer channel binding.
pub fn end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::oid_registry as o;
    use x509_parser::signature_algorithm::SignatureAlgorithm;
    let (_, c) = X509Certificate::from_der(cert).ok()?;
    let oid = &c.signature_algorithm.algorithm;
    if *oid == o::OID_PKCS1_RSASSAPSS {
        let SignatureAlgorithm::RSASSA_PSS(p) =
            SignatureAlgorithm::try_from(&c.signature_algorithm).ok()?
        else {
            return None;
        };
        let alg = match p.hash_algorithm_oid() {
            h if *h == o::OID_HASH_SHA1 || *h == o::OID_NIST_HASH_SHA256 => &ring::digest::SHA256,
            h if *h == o::OID_NIST_HASH_SHA384 => &ring::digest::SHA384,
            h if *h == o::OID_NIST_HASH_SHA512 => &ring::digest::SHA512,
            _ => return None,
        };
        return Some(ring::digest::digest(alg, cert).as_ref().to_vec());
    }
    let alg = if [
        o::OID_PKCS1_MD5WITHRSAENC,
        o::OID_PKCS1_SHA1WITHRSA,
        o::OID_PKCS1_SHA256WITHRSA,
        o::OID_SIG_ECDSA_WITH_SHA256,
    ]
    .contains(oid)
    {
        &ring::digest::SHA256
    } else if [o::OID_PKCS1_SHA384WITHRSA, o::OID_SIG_ECDSA_WITH_SHA384].contains(oid) {
        &ring::digest::SHA384
    } else if [o::OID_PKCS1_SHA512WITHRSA, o::OID_SIG_ECDSA_WITH_SHA512].contains(oid) {
        &ring::digest::SHA512
    } else {
        return None;
    };
    Some(ring::digest::digest(alg, cert).as_ref().to_vec())
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

/// The files of `tls` as read at one moment, and a digest of them all
/// (the reloader compares digests to tell whether anything changed).
pub struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    crls: Vec<Vec<u8>>,
    pub digest: [u8; 32],
}

impl TlsFiles {
    /// Read every file `tls` names. Errors name the field.
    pub fn read(tls: &config::ServerTls) -> Result<TlsFiles, ConfigError> {
        let read = |field: &str, p: &Path| {
            std::fs::read(p)
                .map_err(|e| ConfigError::field(field, format!("cannot read {}: {e}", p.display())))
        };
        let cert = read("tls.cert_file", &tls.cert_file)?;
        let key = read("tls.key_file", &tls.key_file)?;
        let client_ca = match &tls.client_ca_file {
            Some(p) => Some(read("tls.client_ca_file", p)?),
            None => None,
        };
        let crls = tls
            .client_crl_files
            .iter()
            .map(|p| read("tls.client_crl_files", p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        for f in [Some(&cert), Some(&key), client_ca.as_ref()]
            .into_iter()
            .chain(crls.iter().map(Some))
        {
            // (Length-prefixed, absent files as `u64::MAX`: no two sets of
            // contents hash the same bytes.)
            let len = f.map_or(u64::MAX, |f| f.len() as u64);
            d.update(&len.to_le_bytes());
            d.update(f.map_or(&[][..], |f| &f[..]));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.finish().as_ref());
        Ok(TlsFiles {
            cert,
            key,
            client_ca,
            crls,
            digest,
        })
    }
}

/// What a loaded set of TLS files says, for logs, metrics and the
/// TLS_LOADED audit record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFacts {
    /// What a TLS_LOADED audit record says of them (`trigger` unset).
    pub described: proto::AuditTls,
}

impl TlsFacts {
    /// `notAfter` of the server certificate (unix seconds).
    pub fn cert_not_after(&self) -> u64 {
        u64::try_from(self.described.server_cert_not_after).unwrap_or(0)
    }

    /// The revocation lists loaded.
    pub fn crls(&self) -> usize {
        self.described.crls.len()
    }

    /// The client certificates they revoke (lists of CA certificates only,
    /// which no client certificate is checked against, left out).
    pub fn revoked(&self) -> u64 {
        self.client_lists().map(|c| c.revoked).sum()
    }

    /// The earliest `nextUpdate` of those lists (unix seconds), if any
    /// has one.
    pub fn crl_next_update(&self) -> Option<u64> {
        self.client_lists()
            .filter(|c| c.next_update != 0)
            .map(|c| u64::try_from(c.next_update).unwrap_or(0))
            .min()
    }

    fn client_lists(&self) -> impl Iterator<Item = &proto::AuditTlsCrl> {
        self.described
            .crls
            .iter()
            .filter(|c| !c.only_ca_certificates)
    }
}

/// The TLS settings built from one [`TlsFiles`].
pub struct Loaded {
    pub tls: ServerTls,
    pub revocations: Revocations,
    pub facts: TlsFacts,
}

/// The client certificates the revocation lists revoke, by issuer, as the
/// TLS handshake checks them (the end-entity certificate only, a list
/// applying to the certificates whose issuer is its issuer, a list of CA
/// certificates only, an ARL, to none of them): what sessions
/// opened earlier are checked against when the lists change.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Issuer name (DER) → serial numbers (DER contents) revoked.
    by_issuer: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// Whether any list was given (the handshake checks then).
    checking: bool,
    allow_unknown: bool,
    /// Which load of the files these are from (1 for the first).
    pub generation: u64,
}

impl Revocations {
    /// Why a certificate of `issuer` with serial `serial` is no longer
    /// accepted, if it is not. Never, without lists.
    pub fn refuses(&self, issuer: &[u8], serial: &[u8]) -> Option<Refusal> {
        if !self.checking {
            return None;
        }
        match self.by_issuer.get(issuer) {
            Some(serials) if serials.contains(serial) => Some(Refusal::Revoked),
            Some(_) => None,
            None if self.allow_unknown => None,
            None => Some(Refusal::Unknown),
        }
    }
}

/// Why [`Revocations`] refuse a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A list of its issuer revokes it.
    Revoked,
    /// No list is its issuer's (and `client_crl_allow_unknown` is off).
    Unknown,
}

impl Refusal {
    /// What a session it opened is told when it ends (with 28000).
    pub fn session_message(self) -> &'static str {
        match self {
            Refusal::Revoked => "session client certificate revoked",
            Refusal::Unknown => {
                "session client certificate's revocation status unknown (no revocation list of its issuer)"
            }
        }
    }
}

/// Build the server-side TLS from the contents of the files `tls` names.
/// Errors name the field.
pub fn load(tls: &config::ServerTls, files: &TlsFiles) -> Result<Loaded, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ConfigError::field(
                "tls.cert_file",
                format!("bad PEM in {}: {e}", tls.cert_file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::field(
            "tls.cert_file",
            format!("no certificate in {}", tls.cert_file.display()),
        ));
    }
    let end_point = end_point(&certs[0]).map(Arc::from);
    let (server_cert_not_after, server_cert_subject) = X509Certificate::from_der(&certs[0])
        .ok()
        .map(|(_, c)| (c.validity().not_after.timestamp(), c.subject().to_string()))
        .unwrap_or_default();
    let mut described = proto::AuditTls {
        server_cert_subject,
        server_cert_sha256: sha256(&certs[0]),
        server_cert_not_after,
        allow_unknown_revocation_status: tls.client_crl_allow_unknown,
        ..Default::default()
    };
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        ConfigError::field(
            "tls.key_file",
            format!(
                "cannot read a private key from {}: {e}",
                tls.key_file.display()
            ),
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
    let mut revocations = Revocations {
        allow_unknown: tls.client_crl_allow_unknown,
        ..Revocations::default()
    };
    let client = match (&tls.client_ca_file, &files.client_ca) {
        (Some(ca), Some(pem)) => {
            let field = |m: String| ConfigError::field("tls.client_ca_file", m);
            let mut roots = rustls::RootCertStore::empty();
            let mut cas = Vec::new();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| field(format!("bad PEM in {}: {e}", ca.display())))?;
                described.client_cas.push(proto::AuditTlsCa {
                    subject: X509Certificate::from_der(&c)
                        .map(|(_, x)| x.subject().to_string())
                        .unwrap_or_default(),
                    sha256: sha256(&c),
                });
                cas.push(c.clone());
                roots
                    .add(c)
                    .map_err(|e| field(format!("bad CA certificate in {}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(field(format!("no certificate in {}", ca.display())));
            }
            let mut crls = Vec::new();
            // The file of each issuer's list: rustls-webpki consults the
            // first list of a certificate's issuer only, so a second one
            // (a newer list appended, another CA of the same name) would
            // revoke nothing at the handshake while `Revocations` counted
            // it. One list per issuer, then.
            let mut issuers: HashMap<Vec<u8>, &Path> = HashMap::new();
            for (path, pem) in tls.client_crl_files.iter().zip(&files.crls) {
                let field = |m: String| {
                    ConfigError::field("tls.client_crl_files", format!("{}: {m}", path.display()))
                };
                let mut n = 0;
                for crl in CertificateRevocationListDer::pem_slice_iter(pem) {
                    let crl = crl.map_err(|e| field(format!("bad PEM: {e}")))?;
                    let (_, parsed) = CertificateRevocationList::from_der(&crl)
                        .map_err(|e| field(format!("not a revocation list: {e}")))?;
                    if !signed_by_its_ca(&parsed, &cas) {
                        return Err(field(format!(
                            "its signature is not that of {}, the client CA of that name in {}",
                            parsed.issuer(),
                            ca.display()
                        )));
                    }
                    // A list of CA certificates only (an ARL): never
                    // consulted for the client's own certificate (the
                    // handshake checks no other), so not its issuer's list.
                    let cas_only = parsed.extensions().iter().any(|e| {
                        matches!(
                            e.parsed_extension(),
                            ParsedExtension::IssuingDistributionPoint(p) if p.only_contains_ca_certs
                        )
                    });
                    // (On record all the same: TLS_LOADED lists every list
                    // loaded.)
                    let describe = |revoked: u64| proto::AuditTlsCrl {
                        issuer: parsed.issuer().to_string(),
                        number: parsed
                            .crl_number()
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                        this_update: parsed.last_update().timestamp(),
                        next_update: parsed.next_update().map_or(0, |t| t.timestamp()),
                        revoked,
                        only_ca_certificates: cas_only,
                    };
                    if cas_only {
                        described
                            .crls
                            .push(describe(parsed.iter_revoked_certificates().count() as u64));
                        crls.push(crl);
                        n += 1;
                        continue;
                    }
                    let issuer = parsed.issuer().as_raw().to_vec();
                    if let Some(first) = issuers.insert(issuer.clone(), path) {
                        return Err(field(format!(
                            "a second revocation list of {} (the first is in {}): give one list per issuer, its latest (the TLS handshake would consult the first only)",
                            parsed.issuer(),
                            first.display()
                        )));
                    }
                    let serials = revocations.by_issuer.entry(issuer).or_default();
                    let mut revoked = 0;
                    for r in parsed.iter_revoked_certificates() {
                        serials.insert(r.raw_serial().to_vec());
                        revoked += 1;
                    }
                    described.crls.push(describe(revoked));
                    crls.push(crl);
                    n += 1;
                }
                if n == 0 {
                    return Err(field("no X509 CRL block".into()));
                }
            }
            revocations.checking = !crls.is_empty();
            let mut b =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated();
            if !crls.is_empty() {
                // (As `Revocations::refuses`: the client's own certificate,
                // whose issuer must have a list unless allowed otherwise.)
                b = b.with_crls(crls).only_check_end_entity_revocation();
                if tls.client_crl_allow_unknown {
                    b = b.allow_unknown_revocation_status();
                }
            }
            let verifier = b.build().map_err(|e| match e {
                VerifierBuilderError::InvalidCrl(e) => {
                    ConfigError::field("tls.client_crl_files", format!("{e:?}"))
                }
                e => field(e.to_string()),
            })?;
            Some(ClientAuth {
                provider,
                verifier,
                certs: resolver,
            })
        }
        _ => None,
    };
    Ok(Loaded {
        tls: ServerTls {
            shared: Arc::new(shared),
            end_point,
            client,
        },
        revocations,
        facts: TlsFacts { described },
    })
}

/// Whether a revocation list issued by one of the client CAs `cas` bears
/// its signature. The handshake checks it (rustls-webpki), and refuses
/// every certificate of that CA when it does not hold: better found out
/// when the list loads. (A list of a CA not among `cas`, an intermediate,
/// can only be checked at the handshake; a signature algorithm
/// x509-parser does not know is left to the handshake too.)
fn signed_by_its_ca(crl: &CertificateRevocationList<'_>, cas: &[CertificateDer<'_>]) -> bool {
    let mut named = false;
    for c in cas {
        let Ok((_, c)) = X509Certificate::from_der(c) else {
            continue;
        };
        if c.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        named = true;
        match crl.verify_signature(c.public_key()) {
            Err(x509_parser::error::X509Error::SignatureVerificationError) => {}
            _ => return true,
        }
    }
    !named
}

/// The node's client-facing TLS: what its files held when they last
/// loaded, reloaded when they change ([`LiveTls::reload`]: on SIGHUP and
/// every `tls.reload_interval_s`). New connections take the current
/// settings; sessions already open keep their TLS, and those of a client
/// certificate a new revocation list refuses end at their next statement
/// ([`Revocations`]).
pub struct LiveTls {
    cfg: config::ServerTls,
    current: ArcSwap<ServerTls>,
    pub revocations: ArcSwap<Revocations>,
    pub stats: TlsStats,
    /// The digest of the files last loaded, and the last failure logged
    /// (a set of files that does not load is logged once, not at every
    /// check).
    last: Mutex<([u8; 32], Option<String>)>,
}

/// Counters and facts of the loads, for `/metrics`.
#[derive(Debug, Default)]
pub struct TlsStats {
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Unix second of the last load that succeeded.
    pub loaded_at: AtomicU64,
    pub facts: Mutex<TlsFacts>,
}

impl TlsStats {
    /// What the files in use hold.
    pub fn facts(&self) -> TlsFacts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What [`LiveTls::reload`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what was loaded last.
    Unchanged,
    /// New contents, now in use.
    Loaded(TlsFacts),
    /// New contents that do not load (or files that cannot be read); the
    /// last good settings stay in use. `logged`: whether this is news
    /// (a failure other than the last one logged).
    Failed { error: ConfigError, news: bool },
}

impl LiveTls {
    /// Load the files of `cfg` (a start-up error names the field).
    pub fn start(cfg: &config::ServerTls) -> Result<LiveTls, ConfigError> {
        let files = TlsFiles::read(cfg)?;
        let mut loaded = load(cfg, &files)?;
        loaded.revocations.generation = 1;
        warn_stale(&loaded.facts);
        let stats = TlsStats::default();
        stats.loaded_at.store(unix_now(), Relaxed);
        *stats.facts.lock().unwrap_or_else(|p| p.into_inner()) = loaded.facts;
        Ok(LiveTls {
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(loaded.tls),
            revocations: ArcSwap::from_pointee(loaded.revocations),
            stats,
            last: Mutex::new((files.digest, None)),
        })
    }

    /// See [`ServerTls::acceptor`] (of the settings loaded last), and the
    /// channel binding data of the certificate they present.
    pub fn acceptor(
        &self,
    ) -> (
        monoio_rustls::TlsAcceptor,
        Option<PeerCert>,
        Option<Arc<[u8]>>,
    ) {
        let current = self.current.load();
        let (a, slot) = current.acceptor();
        (a, slot, current.end_point.clone())
    }

    /// Whether clients may authenticate with certificates.
    pub fn client_certificates(&self) -> bool {
        self.cfg.client_ca_file.is_some()
    }

    /// Read the files again; if they changed, load them, and use them for
    /// new connections if they load.
    pub fn reload(&self) -> Reload {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = TlsFiles::read(&self.cfg).and_then(|files| {
            if files.digest == last.0 {
                return Ok(None);
            }
            load(&self.cfg, &files).map(|l| Some((files.digest, l)))
        });
        match loaded {
            Ok(None) => {
                last.1 = None;
                Reload::Unchanged
            }
            Ok(Some((digest, mut l))) => {
                l.revocations.generation = self.revocations.load().generation + 1;
                self.current.store(Arc::new(l.tls));
                self.revocations.store(Arc::new(l.revocations));
                self.stats.reloads.fetch_add(1, Relaxed);
                self.stats.loaded_at.store(unix_now(), Relaxed);
                *self.stats.facts.lock().unwrap_or_else(|p| p.into_inner()) = l.facts.clone();
                *last = (digest, None);
                warn_stale(&l.facts);
                Reload::Loaded(l.facts)
            }
            Err(error) => {
                self.stats.reload_failures.fetch_add(1, Relaxed);
                let text = error.to_string();
                let news = last.1.as_deref() != Some(text.as_str());
                last.1 = Some(text);
                Reload::Failed { error, news }
            }
        }
    }
}

/// A revocation list past its `nextUpdate` still applies (the handshake
/// does not enforce it), but its CA has revoked more since, maybe.
fn warn_stale(f: &TlsFacts) {
    if let Some(t) = f.crl_next_update().filter(|&t| t < unix_now()) {
        tracing::warn!(
            next_update = t,
            "a client certificate revocation list is past its nextUpdate: certificates revoked since are still accepted until a newer list is loaded"
        );
    }
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cert::ClientCert;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    impl Ca {
        /// What the handshake keeps of a client certificate with `serial`.
        fn client(&self, serial: u64) -> ClientCert {
            ClientCert::from_der(&self.client_der(serial)).unwrap()
        }

        /// A client certificate with `serial` (DER).
        fn client_der(&self, serial: u64) -> CertificateDer<'static> {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.serial_number = Some(serial.into());
            p.signed_by(&key, &self.cert, &self.key)
                .unwrap()
                .der()
                .clone()
        }

        fn crl(&self, serials: &[u64]) -> String {
            self.crl_scoped(serials, None)
        }

        /// A list of CA certificates only (an ARL: `onlyContainsCACerts`).
        fn arl(&self, serials: &[u64]) -> String {
            self.crl_scoped(
                serials,
                Some(rcgen::CrlIssuingDistributionPoint {
                    distribution_point: rcgen::CrlDistributionPoint {
                        uris: vec!["http://ca.example/arl".into()],
                    },
                    scope: Some(rcgen::CrlScope::CaCertsOnly),
                }),
            )
        }

        fn crl_scoped(
            &self,
            serials: &[u64],
            idp: Option<rcgen::CrlIssuingDistributionPoint>,
        ) -> String {
            let now = time::OffsetDateTime::now_utc();
            rcgen::CertificateRevocationListParams {
                this_update: now,
                next_update: now + time::Duration::days(7),
                crl_number: 1u64.into(),
                issuing_distribution_point: idp,
                revoked_certs: serials
                    .iter()
                    .map(|&n| rcgen::RevokedCertParams {
                        serial_number: n.into(),
                        revocation_time: now,
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
        }
    }

    /// TLS files in `dir`: a server certificate, the client CA `cas`, and
    /// one revocation list per entry of `crls`.
    fn files(dir: &Path, cas: &[&Ca], crls: &[String]) -> config::ServerTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("s.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("s.key"), key.serialize_pem()).unwrap();
        let bundle: String = cas.iter().map(|c| c.cert.pem()).collect();
        std::fs::write(dir.join("ca.pem"), bundle).unwrap();
        let mut crl_files = Vec::new();
        for (i, c) in crls.iter().enumerate() {
            let p = dir.join(format!("{i}.crl"));
            std::fs::write(&p, c).unwrap();
            crl_files.push(p);
        }
        config::ServerTls {
            cert_file: dir.join("s.pem"),
            key_file: dir.join("s.key"),
            required: false,
            client_ca_file: Some(dir.join("ca.pem")),
            client_crl_files: crl_files,
            client_crl_allow_unknown: false,
            reload_interval_s: 0,
        }
    }

    /// Open sessions are judged as the handshake judges new ones: revoked
    /// by their issuer's list, unknown without one (unless allowed), and
    /// never without lists.
    #[test]
    fn revocations_answer_as_the_handshake_does() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ca("agents"), ca("partners"));
        let cfg = files(dir.path(), &[&a, &b], &[a.crl(&[5, 300])]);
        let live = LiveTls::start(&cfg).unwrap();
        let r = live.revocations.load();
        let refuses = |c: ClientCert| r.refuses(&c.issuer, &c.serial);
        assert_eq!(refuses(a.client(5)), Some(Refusal::Revoked));
        assert_eq!(refuses(a.client(300)), Some(Refusal::Revoked));
        assert_eq!(refuses(a.client(6)), None);
        assert_eq!(refuses(b.client(5)), Some(Refusal::Unknown));
        assert_eq!(r.generation, 1);
        let f = live.stats.facts.lock().unwrap().clone();
        assert_eq!((f.crls(), f.revoked()), (1, 2));
        assert!(f.crl_next_update().is_some() && f.cert_not_after() > 0);

        let allowing = config::ServerTls {
            client_crl_allow_unknown: true,
            ..cfg.clone()
        };
        let live = LiveTls::start(&allowing).unwrap();
        let r = live.revocations.load();
        let c = b.client(5);
        assert_eq!(r.refuses(&c.issuer, &c.serial), None);

        let none = config::ServerTls {
            client_crl_files: Vec::new(),
            ..cfg
        };
        let live = LiveTls::start(&none).unwrap();
        let c = a.client(5);
        assert_eq!(live.revocations.load().refuses(&c.issuer, &c.serial), None);
    }

    /// What the handshake's verifier (of the settings loaded last) says
    /// of a client certificate, as a [`Refusal`].
    fn handshake(live: &LiveTls, der: &CertificateDer<'_>) -> Option<Refusal> {
        let tls = live.current.load();
        let c = tls.client.as_ref().unwrap();
        match c.verifier.verify_client_cert(der, &[], UnixTime::now()) {
            Ok(_) => None,
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                Some(Refusal::Revoked)
            }
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownRevocationStatus,
            )) => Some(Refusal::Unknown),
            Err(e) => panic!("{e:?}"),
        }
    }

    /// The handshake consults the first list of a certificate's issuer
    /// only (rustls-webpki), open sessions every list: two lists of one
    /// issuer do not load, or a certificate a later one revokes would pass
    /// the handshake.
    #[test]
    fn one_list_per_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let a = ca("agents");
        let cfg = files(dir.path(), &[&a], &[a.crl(&[5]), a.crl(&[5, 6])]);
        let e = LiveTls::start(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("tls.client_crl_files") && e.contains("0.crl") && e.contains("1.crl"),
            "{e}"
        );
        // In one file too.
        let cfg = files(dir.path(), &[&a], &[a.crl(&[5]) + &a.crl(&[6])]);
        let e = LiveTls::start(&cfg).err().unwrap().to_string();
        assert!(e.contains("tls.client_crl_files"), "{e}");
        // One list per issuer: the handshake and open sessions agree.
        let b = ca("partners");
        let cfg = files(dir.path(), &[&a, &b], &[a.crl(&[5]), b.crl(&[6])]);
        let live = LiveTls::start(&cfg).unwrap();
        for (ca, serial) in [(&a, 5), (&a, 6), (&b, 5), (&b, 6)] {
            let der = ca.client_der(serial);
            let c = ClientCert::from_der(&der).unwrap();
            assert_eq!(
                handshake(&live, &der),
                live.revocations.load().refuses(&c.issuer, &c.serial)
            );
        }
    }

    /// A list of CA certificates only (an ARL) is never consulted for a
    /// client's own certificate at the handshake: open sessions do not
    /// count it either (neither its serials nor as its issuer's list), and
    /// it is no second list of its issuer.
    #[test]
    fn lists_of_ca_certificates_only_are_not_a_clients_list() {
        let dir = tempfile::tempdir().unwrap();
        let a = ca("agents");
        for lists in [
            vec![a.arl(&[6])],
            vec![a.arl(&[6]), a.crl(&[5])],
            vec![a.crl(&[5]), a.arl(&[6])],
        ] {
            let cfg = files(dir.path(), &[&a], &lists);
            let live = LiveTls::start(&cfg).unwrap();
            // Every list loaded is on record (TLS_LOADED), an ARL as one.
            let f = live.stats.facts();
            let described: Vec<bool> = f
                .described
                .crls
                .iter()
                .map(|c| c.only_ca_certificates)
                .collect();
            assert_eq!(described.len(), f.crls(), "{:?}", f.described);
            assert_eq!(
                described.iter().filter(|&&cas| cas).count(),
                1,
                "{:?}",
                f.described
            );
            for serial in [5, 6, 7] {
                let der = a.client_der(serial);
                let c = ClientCert::from_der(&der).unwrap();
                assert_eq!(
                    live.revocations.load().refuses(&c.issuer, &c.serial),
                    handshake(&live, &der),
                    "serial {serial} of {} lists",
                    lists.len()
                );
            }
        }
    }

    /// A reload loads changed files only; a set that does not load keeps
    /// the last good one and is news once per distinct error.
    #[test]
    fn reloads_keep_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let a = ca("agents");
        let cfg = files(dir.path(), &[&a], &[a.crl(&[5])]);
        let live = LiveTls::start(&cfg).unwrap();
        assert!(matches!(live.reload(), Reload::Unchanged));
        let crl = &cfg.client_crl_files[0];
        std::fs::write(crl, "no list here\n").unwrap();
        for news in [true, false] {
            match live.reload() {
                Reload::Failed { error, news: n } => {
                    assert_eq!(n, news);
                    assert!(
                        error.to_string().contains("tls.client_crl_files"),
                        "{error}"
                    );
                }
                r => panic!("{r:?}"),
            }
        }
        std::fs::remove_file(crl).unwrap();
        match live.reload() {
            Reload::Failed { error, news } => {
                assert!(news);
                assert!(error.to_string().contains("cannot read"), "{error}");
            }
            r => panic!("{r:?}"),
        }
        // Still the lists of the last load.
        let c = a.client(6);
        let r = live.revocations.load();
        assert_eq!((r.generation, r.refuses(&c.issuer, &c.serial)), (1, None));
        std::fs::write(crl, a.crl(&[5, 6])).unwrap();
        assert!(matches!(live.reload(), Reload::Loaded(f) if f.revoked() == 2));
        let r = live.revocations.load();
        assert_eq!(
            (r.generation, r.refuses(&c.issuer, &c.serial)),
            (2, Some(Refusal::Revoked))
        );
        assert_eq!(live.stats.reloads.load(Relaxed), 1);
        assert_eq!(live.stats.reload_failures.load(Relaxed), 3);
        // A key that is not the certificate's.
        std::fs::write(
            &cfg.key_file,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        match live.reload() {
            Reload::Failed { error, .. } => {
                assert!(error.to_string().contains("tls.key_file"), "{error}")
            }
            r => panic!("{r:?}"),
        }
    }

    /// The channel binding hash follows the certificate's signature
    /// algorithm, and there is none for Ed25519.
    #[test]
    fn end_point_hashes_as_the_signature_does() {
        let cert = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .der()
                .to_vec()
        };
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            end_point(&p256).unwrap(),
            ring::digest::digest(&ring::digest::SHA256, &p256).as_ref()
        );
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            end_point(&p384).unwrap(),
            ring::digest::digest(&ring::digest::SHA384, &p384).as_ref()
        );
        assert_eq!(end_point(&cert(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point(b"not a certificate"), None);
    }

    /// A certificate signed with RSASSA-PSS is hashed with the hash its
    /// PSS parameters name, as OpenSSL's `X509_get_signature_info` tells
    /// libpq and PostgreSQL (both bind such a server since OpenSSL 1.1.1):
    /// with none, a `channel_binding=require` client could not log in.
    #[test]
    fn end_point_of_an_rsa_pss_certificate_takes_its_pss_hash() {
        let der = |pem: &[u8]| {
            CertificateDer::pem_slice_iter(pem)
                .next()
                .unwrap()
                .unwrap()
                .to_vec()
        };
        // (What `openssl x509 -outform der | sha256sum` / `sha384sum` give.)
        let c256 = der(include_bytes!("../../tests/fixtures/tls_pss_sha256.pem"));
        assert_eq!(
            end_point(&c256).as_deref(),
            Some(ring::digest::digest(&ring::digest::SHA256, &c256).as_ref())
        );
        let c384 = der(include_bytes!("../../tests/fixtures/tls_pss_sha384.pem"));
        assert_eq!(
            end_point(&c384).as_deref(),
            Some(ring::digest::digest(&ring::digest::SHA384, &c384).as_ref())
        );
    }

    /// Start-up errors name the field.
    #[test]
    fn bad_files_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let a = ca("agents");
        let cfg = files(
            dir.path(),
            &[&a],
            &["-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".into()],
        );
        let e = LiveTls::start(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("tls.client_crl_files") && e.contains("0.crl"),
            "{e}"
        );
        let cfg = files(dir.path(), &[&a], &["".into()]);
        let e = LiveTls::start(&cfg).err().unwrap().to_string();
        assert!(e.contains("no X509 CRL block"), "{e}");
        let mut cfg = files(dir.path(), &[&a], &[]);
        cfg.client_crl_files.push(dir.path().join("missing.crl"));
        let e = LiveTls::start(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("tls.client_crl_files") && e.contains("missing.crl"),
            "{e}"
        );
    }

    /// A list that names a client CA as its issuer but that CA did not sign
    /// (another CA of the same name, the CA's key rotated) does not load:
    /// loaded, it would fail the handshake of every certificate of that
    /// CA (rustls-webpki checks the list's signature there) while the
    /// sessions those certificates opened went on.
    #[test]
    fn lists_a_client_ca_did_not_sign_do_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = ca("agents");
        let other = ca("agents");
        let cfg = files(dir.path(), &[&a], &[other.crl(&[1])]);
        let e = LiveTls::start(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("tls.client_crl_files") && e.contains("0.crl") && e.contains("signature"),
            "{e}"
        );
        // On a reload too: the last good list stays.
        let cfg = files(dir.path(), &[&a], &[a.crl(&[1])]);
        let live = LiveTls::start(&cfg).unwrap();
        std::fs::write(&cfg.client_crl_files[0], other.crl(&[1])).unwrap();
        assert!(matches!(live.reload(), Reload::Failed { .. }));
        assert_eq!(handshake(&live, &a.client_der(2)), None);
        // Two client CAs of one name: the list of either loads.
        let cfg = files(dir.path(), &[&other, &a], &[a.crl(&[1])]);
        let live = LiveTls::start(&cfg).unwrap();
        assert_eq!(handshake(&live, &a.client_der(1)), Some(Refusal::Revoked));
    }
}
