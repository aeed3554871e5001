//! Who is calling, from the client certificate (mutual TLS).
//!
//! Every client certificate is issued by the CA given with `--client-ca`;
//! its subject's common name says what the holder may do:
//!
//! | common name | may call |
//! |---|---|
//! | `sluice-admin` | `Admin`, `AuditQuery` (sluicectl) |
//! | `sluice-node` | `SnapshotService`, `AuditIngest`, under any node id |
//! | `sluice-node:<id>` | the same, only as node `<id>` |
//!
//! So a node's certificate cannot change configuration or read the audit
//! trail, an operator's certificate cannot ship audit records, and a node
//! with its own certificate cannot subscribe or ship records as another
//! node. Without TLS (`--plaintext`, loopback only) there is no
//! certificate and nothing is checked here.

use tonic::{Request, Status};

use crate::ctl::certs::{ADMIN_CN, NODE_CN};

/// What the client certificate allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// A node; `Some(id)` when the certificate names the node.
    Node(Option<String>),
}

/// The role of the caller of `req`; `Ok(None)` without TLS.
pub fn role<T>(req: &Request<T>) -> Result<Option<Role>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(None);
    };
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let cn = common_name(leaf.as_ref())
        .ok_or_else(|| Status::permission_denied("the client certificate has no common name"))?;
    role_of_cn(&cn).map(Some)
}

fn role_of_cn(cn: &str) -> Result<Role, Status> {
    match cn {
        ADMIN_CN => Ok(Role::Admin),
        NODE_CN => Ok(Role::Node(None)),
        _ => match cn.strip_prefix(NODE_CN).and_then(|r| r.strip_prefix(':')) {
            Some(id) if !id.is_empty() => Ok(Role::Node(Some(id.to_string()))),
            _ => Err(Status::permission_denied(format!(
                "client certificate CN {cn:?} is none of {ADMIN_CN}, {NODE_CN}, {NODE_CN}:<node id>"
            ))),
        },
    }
}

/// The subject's common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Interceptor for the operator services: admin certificates only.
#[allow(clippy::result_large_err)]
pub fn admin_only(req: Request<()>) -> Result<Request<()>, Status> {
    match role(&req)? {
        None | Some(Role::Admin) => Ok(req),
        Some(Role::Node(_)) => Err(Status::permission_denied(
            "a node certificate cannot call the operator services (Admin, AuditQuery); use an admin certificate",
        )),
    }
}

/// Interceptor for the node services: node certificates only.
#[allow(clippy::result_large_err)]
pub fn node_only(req: Request<()>) -> Result<Request<()>, Status> {
    match role(&req)? {
        None | Some(Role::Node(_)) => Ok(req),
        Some(Role::Admin) => Err(Status::permission_denied(
            "an admin certificate cannot call the node services (SnapshotService, AuditIngest); use a node certificate",
        )),
    }
}

/// A node stream naming itself `id`: allowed when the certificate does
/// not name a node, or names this one.
#[allow(clippy::result_large_err)]
pub fn check_node_id(role: &Option<Role>, id: &str) -> Result<(), Status> {
    match role {
        Some(Role::Node(Some(named))) if named != id => Err(Status::permission_denied(format!(
            "the client certificate is for node {named:?}, not {id:?}"
        ))),
        Some(Role::Admin) => Err(Status::permission_denied(
            "an admin certificate cannot act as a node",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_map_to_roles() {
        assert_eq!(role_of_cn("sluice-admin").unwrap(), Role::Admin);
        assert_eq!(role_of_cn("sluice-node").unwrap(), Role::Node(None));
        assert_eq!(
            role_of_cn("sluice-node:dp-1").unwrap(),
            Role::Node(Some("dp-1".into()))
        );
        for bad in [
            "sluice-node:",
            "sluice-nodes",
            "admin",
            "",
            "sluice-control-plane",
        ] {
            let e = role_of_cn(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{bad}");
        }
    }

    #[test]
    fn node_ids_are_bound_only_by_named_certificates() {
        assert!(check_node_id(&None, "a").is_ok());
        assert!(check_node_id(&Some(Role::Node(None)), "a").is_ok());
        assert!(check_node_id(&Some(Role::Node(Some("a".into()))), "a").is_ok());
        assert!(check_node_id(&Some(Role::Node(Some("a".into()))), "b").is_err());
        assert!(check_node_id(&Some(Role::Admin), "a").is_err());
    }

    #[test]
    fn common_name_is_read_from_der() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "sluice-node:dp-7");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("sluice-node:dp-7"));
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
