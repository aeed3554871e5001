//! Reaching the control plane: one or more URLs tried in order, plaintext
//! or TLS (rustls, ring), optional client certificate, bounded waits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::admin_client::AdminClient;
use proto::audit_query_client::AuditQueryClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Response, Status};

use super::CtlError;

/// How long connecting (TCP and TLS) to one URL may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take once connected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an audit query (search, verify, replay, evidence) may take:
/// they read many records.
pub const AUDIT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer accepted from the control plane (bytes).
pub const MAX_ANSWER_BYTES: usize = 256 << 20;
/// Where the local quick start's control plane listens.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7600";

/// Files for TLS to the control plane.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// CA that signed the control plane's certificate; system roots if unset.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// The control plane's addresses, ready to dial.
#[derive(Debug)]
pub struct ControlPlane {
    endpoints: Vec<Endpoint>,
    has_ca: bool,
    has_identity: bool,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path).map_err(|e| CtlError::Input(format!("{what} {}: {e}", path.display())))
}

fn usage(m: String) -> CtlError {
    CtlError::Usage(m)
}

impl ControlPlane {
    /// `urls` is one URL or several separated by commas. Reads the TLS files
    /// now, so a missing file is a local error (exit 2) whether or not the
    /// control plane is up.
    pub fn new(urls: &str, tls: &TlsFiles) -> Result<Self, CtlError> {
        let urls: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(usage("--control-plane: no URL given".into()));
        }
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(usage("--cert and --key go together".into()));
        }
        let tls_config = if urls.iter().any(|u| u.starts_with("https://")) {
            let mut c = ClientTlsConfig::new().timeout(CONNECT_TIMEOUT);
            c = match &tls.ca {
                Some(ca) => c.ca_certificate(Certificate::from_pem(read(ca, "--ca")?)),
                None => c.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                c = c.identity(Identity::from_pem(
                    read(cert, "--cert")?,
                    read(key, "--key")?,
                ));
            }
            Some(c)
        } else {
            None
        };
        let mut endpoints = Vec::new();
        for url in urls {
            let ep = Endpoint::from_shared(url.to_string())
                .map_err(|e| usage(format!("--control-plane {url}: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .user_agent(concat!("sluicectl/", env!("CARGO_PKG_VERSION")))
                .map_err(|e| usage(format!("user agent: {e}")))?;
            let ep = if url.starts_with("https://") {
                let c = tls_config.clone().unwrap_or_default();
                ep.tls_config(c).map_err(|e| {
                    usage(format!(
                        "--control-plane {url}: TLS: {}{}",
                        chain(&e),
                        if tls.ca.is_none() {
                            " (give the CA with --ca)"
                        } else {
                            ""
                        }
                    ))
                })?
            } else if url.starts_with("http://") {
                if tls.any() {
                    return Err(usage(format!(
                        "--ca/--cert/--key given, but {url} is plaintext; use https://"
                    )));
                }
                ep
            } else {
                return Err(usage(format!(
                    "--control-plane {url}: must start with http:// or https://"
                )));
            };
            endpoints.push(ep);
        }
        Ok(ControlPlane {
            endpoints,
            has_ca: tls.ca.is_some(),
            has_identity: tls.cert.is_some(),
        })
    }

    /// Run one request against the first URL that answers. A URL that
    /// cannot be connected to, or answers `UNAVAILABLE` (by gRPC's contract
    /// the request was not processed), is skipped for the next; when all
    /// fail the error is [`CtlError::Unreachable`]. A connection that breaks
    /// during the request (a status tonic made from a transport error, not
    /// one the server sent) skips to the next URL for a
    /// [`Request::ReadOnly`], and ends a [`Request::Change`] with
    /// [`CtlError::Interrupted`], since it may have been carried out. A
    /// request that times out is not retried elsewhere either. Any other
    /// status is the control plane's answer: [`CtlError::Refused`].
    pub async fn call<T>(
        &self,
        kind: Request,
        rpc: impl AsyncFn(AdminClient<Channel>) -> Result<Response<T>, Status>,
    ) -> Result<T, CtlError> {
        self.call_with(
            kind,
            REQUEST_TIMEOUT,
            // `get all` answers with the whole configuration.
            |ch| AdminClient::new(ch).max_decoding_message_size(proto::MAX_MESSAGE_BYTES),
            rpc,
        )
        .await
    }

    /// [`ControlPlane::call`] for the `AuditQuery` service: read-only,
    /// [`AUDIT_REQUEST_TIMEOUT`], answers up to [`MAX_ANSWER_BYTES`].
    pub async fn call_audit<T>(
        &self,
        rpc: impl AsyncFn(AuditQueryClient<Channel>) -> Result<Response<T>, Status>,
    ) -> Result<T, CtlError> {
        self.call_with(
            Request::ReadOnly,
            AUDIT_REQUEST_TIMEOUT,
            |ch| AuditQueryClient::new(ch).max_decoding_message_size(MAX_ANSWER_BYTES),
            rpc,
        )
        .await
    }

    async fn call_with<C, T>(
        &self,
        kind: Request,
        timeout: Duration,
        client: impl Fn(Channel) -> C,
        rpc: impl AsyncFn(C) -> Result<Response<T>, Status>,
    ) -> Result<T, CtlError> {
        let mut failures = Vec::new();
        for ep in &self.endpoints {
            let url = ep.uri().to_string();
            let url = url.trim_end_matches('/');
            let channel = match tokio::time::timeout(CONNECT_TIMEOUT, ep.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    failures.push(self.explain(url, chain(&e)));
                    continue;
                }
                Err(_) => {
                    failures.push(format!(
                        "{url}: no connection within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    ));
                    continue;
                }
            };
            let s = match tokio::time::timeout(timeout, rpc(client(channel))).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(s)) => s,
                Err(_) => {
                    return Err(CtlError::TimedOut(format!(
                        "{url}: no answer within {}s",
                        timeout.as_secs()
                    )))
                }
            };
            let broken = is_transport_failure(&s);
            if broken && kind == Request::Change {
                return Err(CtlError::Interrupted(format!(
                    "{}; the change may or may not have been made",
                    self.explain(url, status_text(&s))
                )));
            }
            if broken || s.code() == Code::Unavailable {
                failures.push(self.explain(url, status_text(&s)));
                continue;
            }
            if s.code() == Code::DeadlineExceeded {
                return Err(CtlError::TimedOut(format!("{url}: {}", status_text(&s))));
            }
            return Err(CtlError::Refused(s));
        }
        Err(CtlError::Unreachable(failures.join("; ")))
    }
}

impl ControlPlane {
    /// `url: error`, with a hint for the TLS mistakes one makes most.
    fn explain(&self, url: &str, error: String) -> String {
        let https = url.starts_with("https://");
        let hint = if https && !self.has_ca && error.contains("UnknownIssuer") {
            " (give the CA that signed the control plane's certificate with --ca)"
        } else if https
            && !self.has_identity
            && (error.contains("CertificateRequired") || error.contains("connection closed"))
        {
            " (if the control plane requires client certificates, give --cert and --key)"
        } else {
            ""
        };
        format!("{url}: {error}{hint}")
    }
}

/// Whether a request may be sent again to the next URL after its
/// connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Get, ListNodes, Version, audit queries.
    ReadOnly,
    /// Apply, Delete.
    Change,
}

/// A status tonic made on this side from a broken connection carries the
/// transport error as its source; one decoded from the server's
/// `grpc-status` never does.
fn is_transport_failure(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// An error and its sources, `a: b: c` (tonic's transport error says only
/// "transport error" at the top).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn status_text(s: &Status) -> String {
    let mut out = if s.message().is_empty() {
        s.code().description().to_string()
    } else {
        s.message().to_string()
    };
    if let Some(src) = std::error::Error::source(s) {
        let text = chain(src);
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// What to print for a status the control plane answered with: its message
/// as is for the usual refusals (it names document and field), prefixed
/// with the code otherwise.
pub fn refusal_text(s: &Status) -> String {
    match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Aborted
            if !s.message().is_empty() =>
        {
            s.message().to_string()
        }
        code => format!("{}: {}", code_name(code), status_text(s)),
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "not implemented by this control plane",
        Code::Internal => "control plane internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_locally() {
        let none = TlsFiles::default();
        assert!(ControlPlane::new(DEFAULT_URL, &none).is_ok());
        let two = ControlPlane::new("http://a:7600, http://b:7600", &none).unwrap();
        assert_eq!(two.endpoints.len(), 2);
        for bad in ["", " , ", "127.0.0.1:7600", "ftp://x", "http://bad host"] {
            let e = ControlPlane::new(bad, &none).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
        let ca = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = ControlPlane::new("http://x:7600", &ca).unwrap_err();
        assert!(e.to_string().contains("plaintext"), "{e}");
        let e = ControlPlane::new("https://x:7600", &ca).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let half = TlsFiles {
            cert: Some("c.pem".into()),
            ..Default::default()
        };
        let e = ControlPlane::new("https://x:7600", &half).unwrap_err();
        assert!(e.to_string().contains("--key"), "{e}");
    }

    #[test]
    fn transport_failures_are_told_from_server_answers() {
        assert!(!is_transport_failure(&Status::unavailable("draining")));
        assert!(!is_transport_failure(&Status::invalid_argument(
            "spec.port"
        )));
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_transport_failure(&broken));
    }

    #[test]
    fn refusals_print_the_servers_message() {
        let s =
            Status::invalid_argument("doc 1 (Connection orders): spec.port: 0 is not a TCP port");
        assert_eq!(
            refusal_text(&s),
            "doc 1 (Connection orders): spec.port: 0 is not a TCP port"
        );
        assert_eq!(
            refusal_text(&Status::permission_denied("admin certificate required")),
            "permission denied: admin certificate required"
        );
        assert_eq!(
            refusal_text(&Status::not_found("")),
            "not found: Some requested entity was not found"
        );
    }
}
