//! tokio-postgres helpers: connecting with a deadline, TLS client configs,
//! reading SQLSTATEs out of errors.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::mpsc;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::STEP_TIMEOUT;

/// Connect without TLS. The connection task is spawned on the current tokio
/// runtime. Panics if connecting takes longer than [`STEP_TIMEOUT`] (a hang).
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    connect_tls(config, NoTls).await
}

/// Connect with the given TLS connector (see [`ClientOptions`]).
pub async fn connect_tls<T>(config: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, conn) = tokio::time::timeout(STEP_TIMEOUT, config.connect(tls))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "connect to {:?} hung for {STEP_TIMEOUT:?}",
                config.get_ports()
            )
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connect without TLS and deliver the connection's asynchronous messages
/// (notifications, notices) on a channel.
pub async fn connect_with_messages(
    config: &Config,
) -> Result<(Client, mpsc::UnboundedReceiver<AsyncMessage>), tokio_postgres::Error> {
    let (client, mut conn) = tokio::time::timeout(STEP_TIMEOUT, config.connect(NoTls))
        .await
        .expect("connect hung")?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(m) => {
                    let _ = tx.send(m);
                }
                Err(_) => break,
            }
        }
    });
    Ok((client, rx))
}

/// The SQLSTATE of a server error, if the error carries one.
pub fn db_code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// The server error message, or the error's display text.
pub fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}: {}", d.severity(), d.code().code(), d.message()),
        None => format!("{e} ({e:?})"),
    }
}

/// Build rustls client configs for tests.
pub struct ClientOptions;

impl ClientOptions {
    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// TLS that encrypts but does not verify the server (libpq's
    /// `sslmode=require`).
    pub fn tls_no_verify() -> MakeRustlsConnect {
        let provider = Self::provider();
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        MakeRustlsConnect::new(cfg)
    }

    /// TLS without verifying the server (as [`Self::tls_no_verify`]) that
    /// presents a client certificate: `cert_der` (the end-entity first) with
    /// its PKCS#8 key `key_der` (libpq's `sslcert`/`sslkey`).
    pub fn tls_client_cert(cert_der: Vec<Vec<u8>>, key_der: Vec<u8>) -> MakeRustlsConnect {
        let provider = Self::provider();
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_client_auth_cert(
                cert_der.into_iter().map(CertificateDer::from).collect(),
                rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
            )
            .expect("client certificate and key");
        MakeRustlsConnect::new(cfg)
    }

    /// As [`Self::tls_client_cert`], but `key_der` need not be the
    /// certificate's key: a client that has someone's certificate (public)
    /// but not their key, and signs the handshake with its own.
    pub fn tls_client_cert_any_key(cert_der: Vec<Vec<u8>>, key_der: Vec<u8>) -> MakeRustlsConnect {
        let provider = Self::provider();
        let key = provider
            .key_provider
            .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()))
            .expect("private key");
        let certified = rustls::sign::CertifiedKey::new(
            cert_der.into_iter().map(CertificateDer::from).collect(),
            key,
        );
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_client_cert_resolver(Arc::new(Presents(Arc::new(certified))));
        MakeRustlsConnect::new(cfg)
    }

    /// TLS that verifies the chain against `ca_pem` and the host name
    /// (libpq's `sslmode=verify-full`).
    pub fn tls_verify_full(ca_pem: &[u8]) -> MakeRustlsConnect {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_blocks(ca_pem, "CERTIFICATE") {
            roots
                .add(CertificateDer::from(cert))
                .expect("add CA certificate to root store");
        }
        assert!(!roots.is_empty(), "no CERTIFICATE block in CA PEM");
        let cfg = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        MakeRustlsConnect::new(cfg)
    }
}

/// Decode every PEM block with the given label.
pub fn pem_blocks(pem: &[u8], label: &str) -> Vec<Vec<u8>> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(b) = rest.find(&begin) {
        let after = &rest[b + begin.len()..];
        let Some(e) = after.find(&end) else { break };
        let body: String = after[..e].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .expect("PEM body is base64"),
        );
        rest = &after[e + end.len()..];
    }
    out
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

/// Presents one certificate (and signs with its key), whatever is asked.
#[derive(Debug)]
struct Presents(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Run `fut` with [`STEP_TIMEOUT`]; panic naming `what` if it hangs.
pub async fn step<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    within(STEP_TIMEOUT, what, fut).await
}

/// Run `fut` with `limit`; panic naming `what` if it hangs.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?} (hang)"),
    }
}

/// A row rendered as text per column, by type (for comparing results through
/// the gateway with results from PostgreSQL directly).
pub fn render_row(row: &tokio_postgres::Row) -> Vec<String> {
    use tokio_postgres::types::Type;
    fn show<T: std::fmt::Debug>(v: Option<T>) -> String {
        match v {
            Some(v) => format!("{v:?}"),
            None => "NULL".to_string(),
        }
    }
    (0..row.len())
        .map(|i| {
            let t = row.columns()[i].type_().clone();
            let name = row.columns()[i].name().to_string();
            let v = match t {
                Type::BOOL => show(row.get::<_, Option<bool>>(i)),
                Type::INT2 => show(row.get::<_, Option<i16>>(i)),
                Type::INT4 => show(row.get::<_, Option<i32>>(i)),
                Type::INT8 => show(row.get::<_, Option<i64>>(i)),
                Type::OID => show(row.get::<_, Option<u32>>(i)),
                Type::FLOAT4 => show(row.get::<_, Option<f32>>(i)),
                Type::FLOAT8 => show(row.get::<_, Option<f64>>(i)),
                Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                    show(row.get::<_, Option<String>>(i))
                }
                Type::BYTEA => show(row.get::<_, Option<Vec<u8>>>(i).map(|b| crate::hex(&b))),
                Type::INT4_ARRAY => show(row.get::<_, Option<Vec<Option<i32>>>>(i)),
                Type::TEXT_ARRAY => show(row.get::<_, Option<Vec<Option<String>>>>(i)),
                other => panic!("render_row: add a case for type {other}"),
            };
            format!("{name}:{t}={v}")
        })
        .collect()
}

/// The messages of a simple query rendered as text (rows and command
/// completions), for comparison.
pub fn render_simple(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    use tokio_postgres::SimpleQueryMessage as M;
    msgs.iter()
        .filter_map(|m| match m {
            M::Row(r) => {
                let cols: Vec<String> = (0..r.len())
                    .map(|i| {
                        format!(
                            "{}={}",
                            r.columns()[i].name(),
                            r.get(i).map(|s| format!("{s:?}")).unwrap_or("NULL".into())
                        )
                    })
                    .collect();
                Some(format!("row {}", cols.join(" ")))
            }
            M::CommandComplete(n) => Some(format!("complete {n}")),
            _ => None,
        })
        .collect()
}

/// A certificate authority for client certificates, made with rcgen (a
/// test's own, as a workload identity issuer would be).
pub struct ClientCa {
    /// The CA certificate (`pem()` for `tls.client_ca_file`).
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// For an intermediate: its certificate and those of the CAs between it
    /// and the root, sent after each client certificate it issues.
    chain: Vec<Vec<u8>>,
}

impl ClientCa {
    pub fn new(name: &str) -> ClientCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = Self::ca_params(name, true).self_signed(&key).unwrap();
        ClientCa {
            cert,
            key,
            chain: Vec::new(),
        }
    }

    fn ca_params(name: &str, is_ca: bool) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = if is_ca {
            rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        } else {
            rcgen::IsCa::ExplicitNoCa
        };
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p
    }

    /// A revocation list of this CA (PEM) that revokes the certificates
    /// with serial numbers `serials` (see [`ClientCa::params`]'s
    /// `serial_number`), numbered `number`, next update in a week.
    pub fn crl(&self, number: u64, serials: &[u64]) -> String {
        let now = std::time::SystemTime::now();
        let params = rcgen::CertificateRevocationListParams {
            this_update: (now - std::time::Duration::from_secs(60)).into(),
            next_update: (now + std::time::Duration::from_secs(7 * 86400)).into(),
            crl_number: number.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&n| rcgen::RevokedCertParams {
                    serial_number: n.into(),
                    revocation_time: (now - std::time::Duration::from_secs(60)).into(),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }

    /// A client certificate with serial number `serial`, URI SAN `uri`
    /// (as [`ClientCa::client`]).
    pub fn client_serial(&self, serial: u64, uri: &str, cn: &str) -> MakeRustlsConnect {
        let mut p = Self::params(&[uri], cn);
        p.serial_number = Some(serial.into());
        self.issue(p)
    }

    /// An intermediate this CA signs (`is_ca` false: a certificate that is
    /// not a CA's, signing anyway); its client certificates carry the chain.
    pub fn intermediate(&self, name: &str, is_ca: bool) -> ClientCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = Self::ca_params(name, is_ca)
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        let mut chain = vec![cert.der().to_vec()];
        chain.extend(self.chain.iter().cloned());
        ClientCa { cert, key, chain }
    }

    /// What [`Self::client`] issues: URI SANs `uris`, common name `cn`,
    /// extended key usage clientAuth.
    pub fn params(uris: &[&str], cn: &str) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p
    }

    /// A client certificate with URI SAN `uri` and common name `cn`, and
    /// TLS client options that present it.
    pub fn client(&self, uri: Option<&str>, cn: &str) -> MakeRustlsConnect {
        self.issue(Self::params(uri.as_slice(), cn))
    }

    /// As [`ClientCa::client`], valid until `not_after` (else rcgen's
    /// default, far off).
    pub fn client_until(
        &self,
        uri: Option<&str>,
        cn: &str,
        not_after: Option<std::time::SystemTime>,
    ) -> MakeRustlsConnect {
        let mut p = Self::params(uri.as_slice(), cn);
        if let Some(t) = not_after {
            p.not_after = t.into();
        }
        self.issue(p)
    }

    /// A client certificate made of `p` (with a new key) that this CA
    /// signs, and TLS client options that present it (and the chain).
    pub fn issue(&self, p: rcgen::CertificateParams) -> MakeRustlsConnect {
        let (certs, key) = self.issue_der(p);
        ClientOptions::tls_client_cert(certs, key)
    }

    /// As [`Self::issue`]: the certificate and its chain (DER, the
    /// end-entity first), and its PKCS#8 key.
    pub fn issue_der(&self, p: rcgen::CertificateParams) -> (Vec<Vec<u8>>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let mut certs = vec![cert.der().to_vec()];
        certs.extend(self.chain.iter().cloned());
        (certs, key.serialize_der())
    }
}
