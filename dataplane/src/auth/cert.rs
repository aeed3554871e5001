//! Client certificates as credentials (`identities[].client_cert`): what a
//! certificate the TLS layer verified against `tls.client_ca_file` says
//! about its holder, and whether it is an identity's. Workload identities
//! are SPIFFE IDs (a `spiffe://trust-domain/path` URI SAN, as SPIRE and
//! service meshes issue them); a subject common name is accepted too.

use serde::Deserialize;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// What a verified client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// Its URI subject alternative names (SPIFFE IDs among them).
    pub uris: Vec<String>,
    /// Its subject's common name, if it has one (the first).
    pub common_name: Option<String>,
    /// The last unix second it is valid (`notAfter`).
    pub not_after: u64,
    /// Its issuer's name (DER) and its serial number (the DER integer's
    /// contents): what a revocation list names it by.
    pub issuer: Vec<u8>,
    pub serial: Vec<u8>,
}

impl ClientCert {
    /// Read an end-entity certificate (DER). None if it does not parse
    /// (rustls has verified it, so that is not expected).
    pub fn from_der(der: &[u8]) -> Option<ClientCert> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push((*u).to_string());
                }
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        Some(ClientCert {
            uris,
            common_name,
            not_after,
            issuer: cert.issuer().as_raw().to_vec(),
            serial: cert.raw_serial().to_vec(),
        })
    }

    /// How the certificate is shown in logs and refusals.
    pub fn describe(&self) -> String {
        match (self.uris.first(), &self.common_name) {
            (Some(_), _) => self.uris.join(", "),
            (None, Some(cn)) => format!("CN={cn}"),
            (None, None) => "a certificate with no URI or common name".into(),
        }
    }
}

/// `identities[].client_cert`: the certificate that is this identity's.
/// Every field given must match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertMatch {
    /// The URI SAN the certificate must carry (`spiffe://corp.example/agent/7`),
    /// as its only one: an X.509-SVID has exactly one URI SAN, and a
    /// certificate with more is not one (SPIFFE X.509-SVID §2).
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// The certificate subject's common name.
    #[serde(default)]
    pub subject_cn: Option<String>,
}

impl CertMatch {
    /// The match of a `ClientCertificate` resource (empty fields unset).
    pub fn from_spec(c: &proto::ClientCertificateSpec) -> CertMatch {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        CertMatch {
            spiffe_id: some(&c.spiffe_id),
            subject_cn: some(&c.subject_cn),
        }
    }

    /// Whether `c` is this identity's certificate.
    pub fn matches(&self, c: &ClientCert) -> bool {
        (self.spiffe_id.is_some() || self.subject_cn.is_some())
            && self
                .spiffe_id
                .as_ref()
                .is_none_or(|id| matches!(c.uris.as_slice(), [u] if u == id))
            && self
                .subject_cn
                .as_ref()
                .is_none_or(|cn| c.common_name.as_ref() == Some(cn))
    }

    /// A config error, if the match is unusable (`field` names it).
    pub fn check(&self, field: &str) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        if self.spiffe_id.is_none() && self.subject_cn.is_none() {
            return Err(ConfigError::field(
                field,
                "give spiffe_id or subject_cn (or both)",
            ));
        }
        if let Some(id) = &self.spiffe_id {
            if !is_spiffe_id(id) {
                return Err(ConfigError::field(
                    format!("{field}.spiffe_id"),
                    format!(
                        "`{id}` is not a SPIFFE ID (spiffe://trust-domain/path: a lowercase trust domain; path segments of letters, digits, `.`, `-`, `_`; no trailing `/`, port, query or percent-encoding)"
                    ),
                ));
            }
        }
        if self.subject_cn.as_ref().is_some_and(String::is_empty) {
            return Err(ConfigError::field(
                format!("{field}.subject_cn"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// Whether `id` is a SPIFFE ID (SPIFFE-ID §2): `spiffe://`, a trust domain
/// of lowercase letters, digits, `.`, `-` and `_`, then optionally a path
/// of non-empty segments (letters, digits, `.`, `-`, `_`; not `.` or `..`)
/// with no trailing `/`. Nothing else (ports, user info, queries,
/// fragments, percent-encoding) is allowed, so an SVID carries it exactly
/// as written here.
fn is_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (domain, path) = rest
        .split_once('/')
        .map_or((rest, None), |(d, p)| (d, Some(p)));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'));
    domain_ok
        && path.is_none_or(|p| {
            p.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(uris: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI(rcgen::Ia5String::try_from(*u).unwrap()));
        }
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_names_its_uris_and_common_name() {
        let c = ClientCert::from_der(&cert(
            &["spiffe://corp.example/agent/7", "https://x.example/"],
            Some("agent-7"),
        ))
        .unwrap();
        assert_eq!(
            c.uris,
            ["spiffe://corp.example/agent/7", "https://x.example/"]
        );
        assert_eq!(c.common_name.as_deref(), Some("agent-7"));
        assert_eq!(
            c.describe(),
            "spiffe://corp.example/agent/7, https://x.example/"
        );
        let bare = ClientCert::from_der(&cert(&[], None)).unwrap();
        assert_eq!((bare.uris.len(), bare.common_name), (0, None));
        // rcgen's default validity ends in 4096.
        assert!(bare.not_after > 4_000_000_000, "{}", bare.not_after);
        assert!(ClientCert::from_der(b"not a certificate").is_none());
    }

    #[test]
    fn every_field_given_must_match() {
        let c = ClientCert {
            uris: vec!["spiffe://corp.example/agent/7".into()],
            common_name: Some("agent-7".into()),
            not_after: 0,
            ..Default::default()
        };
        let m = |id: Option<&str>, cn: Option<&str>| CertMatch {
            spiffe_id: id.map(str::to_string),
            subject_cn: cn.map(str::to_string),
        };
        assert!(m(Some("spiffe://corp.example/agent/7"), None).matches(&c));
        assert!(m(None, Some("agent-7")).matches(&c));
        assert!(m(Some("spiffe://corp.example/agent/7"), Some("agent-7")).matches(&c));
        assert!(!m(Some("spiffe://corp.example/agent/8"), Some("agent-7")).matches(&c));
        assert!(
            !m(Some("spiffe://corp.example/agent"), None).matches(&c),
            "no prefix match"
        );
        assert!(!m(None, Some("agent-8")).matches(&c));
        assert!(!m(None, None).matches(&c));
        // Not an X.509-SVID: a SPIFFE ID among several URI SANs.
        let two = ClientCert {
            uris: vec![
                "spiffe://corp.example/agent/8".into(),
                "spiffe://corp.example/agent/7".into(),
            ],
            common_name: Some("agent-7".into()),
            not_after: 0,
            ..Default::default()
        };
        assert!(!m(Some("spiffe://corp.example/agent/7"), None).matches(&two));
        assert!(m(None, Some("agent-7")).matches(&two));
        assert_eq!(
            two.describe(),
            "spiffe://corp.example/agent/8, spiffe://corp.example/agent/7"
        );
        assert!(m(None, None).check("f").is_err());
        for good in [
            "spiffe://corp.example/agent/7",
            "spiffe://corp.example",
            "spiffe://corp_1-x.example/Agent_7/v-1.2",
        ] {
            m(Some(good), None).check("f").unwrap();
        }
        // Not SPIFFE IDs (SPIFFE-ID §2): no certificate that an SVID issuer
        // makes would ever match them.
        for bad in [
            "spiffe://",
            "https://corp/agent",
            "spiffe:///x",
            "spiffe://a b/c",
            "SPIFFE://corp/a",
            "spiffe://Corp.example/a",
            "spiffe://corp/a/",
            "spiffe://corp//a",
            "spiffe://corp/./a",
            "spiffe://corp/a/..",
            "spiffe://corp/a%2Fb",
            "spiffe://corp/a?x=1",
            "spiffe://corp/a#f",
            "spiffe://corp:8443/a",
            "spiffe://u@corp/a",
        ] {
            let e = m(Some(bad), None)
                .check("identities[0].client_cert")
                .unwrap_err();
            assert!(
                e.to_string()
                    .contains("identities[0].client_cert.spiffe_id"),
                "{e}"
            );
        }
        assert!(m(None, Some("")).check("f").is_err());
    }
}
