//! Declarative configuration documents.
//!
//! Operators write YAML documents (`apiVersion`, `kind`, `metadata.name`,
//! `spec`), several per file separated by `---`. [`parse_documents`] turns
//! them into [`proto::Resource`]s, refusing unknown fields and wrong types
//! with the document and field path (`doc 2 (Connection orders): spec.port:
//! …`); [`validate_resource`] checks values; [`validate_set`] checks
//! references across the whole configuration (a Policy naming a Connection
//! that does not exist).

use std::collections::HashSet;

use proto::{resource::Spec, Resource};
use serde::Deserialize;

/// A refused document, naming where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {field}: {message}")]
pub struct DocumentError {
    /// `<source> doc N (Kind name)`.
    pub location: String,
    /// Field path inside the document, e.g. `spec.tls.mode`.
    pub field: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: serde_yaml::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConnectionDoc {
    host: String,
    #[serde(default = "default_port")]
    port: u32,
    database: String,
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default = "default_auth")]
    auth: String,
    #[serde(default)]
    tls: Option<TlsDoc>,
    #[serde(default)]
    masking_profile: String,
}

fn default_port() -> u32 {
    5432
}
fn default_auth() -> String {
    "auto".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TlsDoc {
    mode: String,
    #[serde(default)]
    ca_pem: String,
    #[serde(default)]
    server_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IdentityProviderDoc {
    issuer: String,
    audience: Vec<String>,
    /// Inline JWKS, as a YAML/JSON object.
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default)]
    jwks_url: String,
    #[serde(default)]
    identity_claim: String,
    #[serde(default)]
    leeway_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiKeyDoc {
    identity: String,
    #[serde(default)]
    verifier: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClientCertificateDoc {
    identity: String,
    #[serde(default)]
    spiffe_id: String,
    #[serde(default)]
    subject_cn: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupDoc {
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDoc {
    connections: Vec<String>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    unmasked: bool,
}

fn typed<T: for<'de> Deserialize<'de>>(
    v: serde_yaml::Value,
    location: &str,
) -> Result<T, DocumentError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        DocumentError {
            location: location.to_string(),
            field: if path == "." {
                "spec".into()
            } else {
                format!("spec.{path}")
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// Parse every YAML document in `text` (from `source`, for messages).
/// Values are checked too ([`validate_resource`]).
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Resource>, DocumentError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = serde_yaml::Value::deserialize(de).map_err(|e| DocumentError {
            location: format!("{source} doc {n}"),
            field: "<document>".into(),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue; // empty document (a trailing `---`)
        }
        let doc: Document = serde_path_to_error::deserialize(value).map_err(|e| DocumentError {
            location: format!("{source} doc {n}"),
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
        let location = format!("{source} doc {n} ({} {})", doc.kind, doc.metadata.name);
        if doc.api_version != proto::API_VERSION {
            return Err(DocumentError {
                location,
                field: "apiVersion".into(),
                message: format!("must be {}", proto::API_VERSION),
            });
        }
        let spec = match doc.kind.as_str() {
            "Connection" => {
                let c: ConnectionDoc = typed(doc.spec, &location)?;
                Spec::Connection(proto::ConnectionSpec {
                    host: c.host,
                    port: c.port,
                    database: c.database,
                    user: c.user,
                    password: c.password,
                    auth: c.auth,
                    tls: c.tls.map(|t| proto::TargetTls {
                        mode: t.mode,
                        ca_pem: t.ca_pem,
                        server_name: t.server_name,
                    }),
                    masking_profile: c.masking_profile,
                })
            }
            "MaskingProfile" => {
                // The data plane's own type, so every field is checked here
                // with its path (`spec.columns[0].action`).
                let p: dataplane::mask::MaskingProfile = typed(doc.spec, &location)?;
                dataplane::mask::Engine::compile(&p).map_err(|e| DocumentError {
                    location: location.clone(),
                    field: format!("spec.{}", e.field),
                    message: e.message,
                })?;
                Spec::MaskingProfile(proto::MaskingProfileSpec {
                    json: serde_json::to_string(&p).map_err(|e| DocumentError {
                        location: location.clone(),
                        field: "spec".into(),
                        message: e.to_string(),
                    })?,
                })
            }
            "IdentityProvider" => {
                let p: IdentityProviderDoc = typed(doc.spec, &location)?;
                Spec::IdentityProvider(proto::IdentityProviderSpec {
                    issuer: p.issuer,
                    audience: p.audience,
                    jwks_json: p.jwks.map(|j| j.to_string()).unwrap_or_default(),
                    jwks_url: p.jwks_url,
                    identity_claim: p.identity_claim,
                    leeway_seconds: p.leeway_seconds,
                })
            }
            "ApiKey" => {
                let k: ApiKeyDoc = typed(doc.spec, &location)?;
                Spec::ApiKey(proto::ApiKeySpec {
                    identity: k.identity,
                    verifier: k.verifier,
                    groups: k.groups,
                })
            }
            "ClientCertificate" => {
                let c: ClientCertificateDoc = typed(doc.spec, &location)?;
                Spec::ClientCertificate(proto::ClientCertificateSpec {
                    identity: c.identity,
                    spiffe_id: c.spiffe_id,
                    subject_cn: c.subject_cn,
                    groups: c.groups,
                })
            }
            "Group" => {
                let g: GroupDoc = typed(doc.spec, &location)?;
                Spec::Group(proto::GroupSpec { members: g.members })
            }
            "Policy" => {
                let p: PolicyDoc = typed(doc.spec, &location)?;
                Spec::Policy(proto::PolicySpec {
                    connections: p.connections,
                    identities: p.identities,
                    groups: p.groups,
                    unmasked: p.unmasked,
                })
            }
            other => {
                return Err(DocumentError {
                    location,
                    field: "kind".into(),
                    message: format!(
                        "unknown kind `{other}` (one of {})",
                        proto::KINDS.join(", ")
                    ),
                })
            }
        };
        let r = Resource {
            api_version: doc.api_version,
            kind: doc.kind,
            name: doc.metadata.name,
            spec: Some(spec),
            revision: 0,
        };
        validate_resource(&r).map_err(|(field, message)| DocumentError {
            location: location.clone(),
            field,
            message,
        })?;
        out.push(r);
    }
    Ok(out)
}

/// The canonical kind for what an operator typed: case-insensitive,
/// singular, plural or short (`conn`, `idp`, `key`, `mask`). `sluicectl`
/// and the admin service accept the same names.
pub fn canonical_kind(typed: &str) -> Option<&'static str> {
    Some(match typed.to_ascii_lowercase().as_str() {
        "connection" | "connections" | "conn" | "conns" => "Connection",
        "identityprovider" | "identityproviders" | "idp" | "idps" => "IdentityProvider",
        "apikey" | "apikeys" | "key" | "keys" => "ApiKey",
        "clientcertificate" | "clientcertificates" | "cert" | "certs" => "ClientCertificate",
        "group" | "groups" => "Group",
        "policy" | "policies" => "Policy",
        "maskingprofile" | "maskingprofiles" | "mask" | "masks" => "MaskingProfile",
        _ => return None,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// The kind a spec belongs to.
pub fn spec_kind(spec: &Spec) -> &'static str {
    match spec {
        Spec::Connection(_) => "Connection",
        Spec::IdentityProvider(_) => "IdentityProvider",
        Spec::ApiKey(_) => "ApiKey",
        Spec::ClientCertificate(_) => "ClientCertificate",
        Spec::Group(_) => "Group",
        Spec::Policy(_) => "Policy",
        Spec::MaskingProfile(_) => "MaskingProfile",
    }
}

/// Check one resource's values; `Err((field, message))`.
pub fn validate_resource(r: &Resource) -> Result<(), (String, String)> {
    let err = |f: &str, m: String| Err((f.to_string(), m));
    if !valid_name(&r.name) {
        return err(
            "metadata.name",
            format!(
                "`{}` must be 1-63 characters of letters, digits, '-', '_', '.', '@'",
                r.name
            ),
        );
    }
    // The spec must be the kind's: the data plane goes by the spec, the
    // control plane's reference checks and `get` by the kind.
    if let Some(spec) = &r.spec {
        let spec_kind = spec_kind(spec);
        if r.kind != spec_kind {
            return err(
                "spec",
                format!("a {spec_kind} spec in a document of kind {}", r.kind),
            );
        }
    }
    match &r.spec {
        None => return err("spec", "missing".into()),
        Some(Spec::MaskingProfile(m)) => {
            // JSON is YAML: the same typed path as documents, for field paths.
            let v: serde_yaml::Value =
                serde_yaml::from_str(&m.json).map_err(|e| ("spec".to_string(), e.to_string()))?;
            let p: dataplane::mask::MaskingProfile =
                typed(v, "").map_err(|e| (e.field, e.message))?;
            dataplane::mask::Engine::compile(&p)
                .map_err(|e| (format!("spec.{}", e.field), e.message))?;
        }
        Some(Spec::Connection(c)) => {
            if c.host.is_empty() {
                return err("spec.host", "must not be empty".into());
            }
            if c.port == 0 || c.port > 65535 {
                return err("spec.port", format!("{} is not a TCP port", c.port));
            }
            if c.database.is_empty() {
                return err("spec.database", "must not be empty".into());
            }
            if c.user.is_empty() {
                return err("spec.user", "must not be empty".into());
            }
            if !["auto", "scram-sha-256", "md5", "password", "trust"].contains(&c.auth.as_str()) {
                return err(
                    "spec.auth",
                    format!(
                        "`{}`: one of auto, scram-sha-256, md5, password, trust",
                        c.auth
                    ),
                );
            }
            if let Some(t) = &c.tls {
                if !["disable", "require", "verify-ca", "verify-full"].contains(&t.mode.as_str()) {
                    return err(
                        "spec.tls.mode",
                        format!(
                            "`{}`: one of disable, require, verify-ca, verify-full",
                            t.mode
                        ),
                    );
                }
            }
        }
        Some(Spec::IdentityProvider(p)) => {
            if p.issuer.is_empty() {
                return err("spec.issuer", "must not be empty".into());
            }
            if p.audience.is_empty() || p.audience.iter().any(String::is_empty) {
                return err("spec.audience", "at least one non-empty audience".into());
            }
            match (p.jwks_json.is_empty(), p.jwks_url.is_empty()) {
                (true, true) => return err("spec.jwks", "give jwks (inline) or jwksUrl".into()),
                (false, false) => {
                    return err("spec.jwksUrl", "give jwks or jwksUrl, not both".into())
                }
                (false, true) => {
                    let claim = if p.identity_claim.is_empty() {
                        "sub"
                    } else {
                        &p.identity_claim
                    };
                    dataplane::auth::jwt::JwtIssuer::new(
                        &r.name,
                        &p.issuer,
                        &p.audience,
                        claim,
                        p.leeway_seconds,
                        &p.jwks_json,
                    )
                    .map_err(|e| ("spec.jwks".to_string(), e))?;
                }
                (true, false) => {
                    if !(p.jwks_url.starts_with("https://") || p.jwks_url.starts_with("http://")) {
                        return err("spec.jwksUrl", "must be an http(s) URL".into());
                    }
                }
            }
        }
        Some(Spec::ApiKey(k)) => {
            if !valid_name(&k.identity) {
                return err(
                    "spec.identity",
                    format!("`{}` is not a valid identity name", k.identity),
                );
            }
            if !k.verifier.is_empty() {
                dataplane::auth::scram::Verifier::parse(&k.verifier)
                    .map_err(|e| ("spec.verifier".to_string(), e.to_string()))?;
            }
            if let Some(g) = k.groups.iter().find(|g| !valid_name(g)) {
                return err("spec.groups", format!("`{g}` is not a valid group name"));
            }
        }
        Some(Spec::ClientCertificate(c)) => {
            if !valid_name(&c.identity) {
                return err(
                    "spec.identity",
                    format!("`{}` is not a valid identity name", c.identity),
                );
            }
            let m = dataplane::auth::cert::CertMatch::from_spec(c);
            if m.spiffe_id.is_none() && m.subject_cn.is_none() {
                return err(
                    "spec.spiffeId",
                    "give spiffeId or subjectCn (or both)".into(),
                );
            }
            m.check("spec").map_err(|e| match e {
                dataplane::config::ConfigError::Field { field, message } => (
                    field
                        .replace("spiffe_id", "spiffeId")
                        .replace("subject_cn", "subjectCn"),
                    message,
                ),
                other => ("spec".to_string(), other.to_string()),
            })?;
            if let Some(g) = c.groups.iter().find(|g| !valid_name(g)) {
                return err("spec.groups", format!("`{g}` is not a valid group name"));
            }
        }
        Some(Spec::Group(g)) => {
            if let Some(m) = g.members.iter().find(|m| !valid_name(m)) {
                return err(
                    "spec.members",
                    format!("`{m}` is not a valid identity name"),
                );
            }
        }
        Some(Spec::Policy(p)) => {
            if p.connections.is_empty() {
                return err(
                    "spec.connections",
                    "at least one connection (or \"*\")".into(),
                );
            }
            if p.identities.is_empty() && p.groups.is_empty() {
                return err("spec.identities", "name identities or groups".into());
            }
        }
    }
    Ok(())
}

/// Check references across a whole configuration.
pub fn validate_set(resources: &[Resource]) -> Result<(), DocumentError> {
    let names = |kind: &str| -> HashSet<&str> {
        resources
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.name.as_str())
            .collect()
    };
    let connections = names("Connection");
    let groups = names("Group");
    let profiles = names("MaskingProfile");
    for r in resources {
        if let Some(Spec::Connection(c)) = &r.spec {
            let p = c.masking_profile.as_str();
            if !(p.is_empty() || p == "default" || p == "none" || profiles.contains(p)) {
                return Err(DocumentError {
                    location: format!("Connection {}", r.name),
                    field: "spec.maskingProfile".into(),
                    message: format!("no MaskingProfile named `{p}` (or `default`, `none`)"),
                });
            }
        }
    }
    // One API key and one client certificate per identity.
    let mut credentials = HashSet::new();
    for r in resources {
        let (identity, what) = match &r.spec {
            Some(Spec::ApiKey(k)) => (k.identity.as_str(), "an API key"),
            Some(Spec::ClientCertificate(c)) => (c.identity.as_str(), "a client certificate"),
            _ => continue,
        };
        if !credentials.insert((r.kind.as_str(), identity)) {
            return Err(DocumentError {
                location: format!("{} {}", r.kind, r.name),
                field: "spec.identity".into(),
                message: format!("identity `{identity}` already has {what}"),
            });
        }
    }
    for r in resources {
        if let Some(Spec::Policy(p)) = &r.spec {
            for (i, c) in p.connections.iter().enumerate() {
                if c != "*" && !connections.contains(c.as_str()) {
                    return Err(DocumentError {
                        location: format!("Policy {}", r.name),
                        field: format!("spec.connections[{i}]"),
                        message: format!("no Connection named `{c}`"),
                    });
                }
            }
            for (i, g) in p.groups.iter().enumerate() {
                let from_keys = resources.iter().any(|r| match &r.spec {
                    Some(Spec::ApiKey(k)) => k.groups.contains(g),
                    Some(Spec::ClientCertificate(c)) => c.groups.contains(g),
                    _ => false,
                });
                if !groups.contains(g.as_str()) && !from_keys {
                    return Err(DocumentError {
                        location: format!("Policy {}", r.name),
                        field: format!("spec.groups[{i}]"),
                        message: format!("no Group named `{g}`"),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: sluice.dev/v1
kind: Connection
metadata: { name: orders }
spec: { host: db, port: 5432, database: orders, user: gw, password: pw, auth: scram-sha-256, tls: { mode: verify-full } }
---
apiVersion: sluice.dev/v1
kind: ApiKey
metadata: { name: agent-7 }
spec: { identity: agent-7, groups: [analysts] }
---
apiVersion: sluice.dev/v1
kind: Policy
metadata: { name: analysts-orders }
spec: { connections: [orders], groups: [analysts] }
---
"#;

    #[test]
    fn parses_multi_document_yaml() {
        let rs = parse_documents(GOOD, "good.yaml").unwrap();
        assert_eq!(rs.len(), 3);
        assert_eq!(rs[0].kind, "Connection");
        assert!(
            matches!(&rs[0].spec, Some(Spec::Connection(c)) if c.port == 5432 && c.tls.as_ref().unwrap().mode == "verify-full")
        );
        validate_set(&rs).unwrap();
    }

    #[test]
    fn errors_name_document_and_field() {
        let bad = GOOD.replace("port: 5432", "port: lots");
        let e = parse_documents(&bad, "f.yaml").unwrap_err();
        assert_eq!(e.field, "spec.port");
        assert!(e.location.contains("doc 1 (Connection orders)"), "{e}");

        let bad = GOOD.replace("mode: verify-full", "mode: sometimes");
        let e = parse_documents(&bad, "f.yaml").unwrap_err();
        assert_eq!(e.field, "spec.tls.mode");

        let bad = GOOD.replace("user: gw,", "user: gw, pasword: x,");
        let e = parse_documents(&bad, "f.yaml").unwrap_err();
        assert!(e.message.contains("pasword"), "{e}");

        let bad = GOOD.replace("kind: Policy", "kind: Polcy");
        let e = parse_documents(&bad, "f.yaml").unwrap_err();
        assert_eq!(e.field, "kind");
        assert!(e.location.contains("doc 3"), "{e}");

        let bad = GOOD.replace("name: agent-7 }", "name: \"agent 7\" }");
        let e = parse_documents(&bad, "f.yaml").unwrap_err();
        assert_eq!(e.field, "metadata.name");
    }

    #[test]
    fn dangling_reference_is_refused() {
        let rs = parse_documents(
            &GOOD.replace("connections: [orders]", "connections: [billing]"),
            "f",
        )
        .unwrap();
        let e = validate_set(&rs).unwrap_err();
        assert_eq!(e.field, "spec.connections[0]");
        assert!(e.message.contains("billing"));
    }

    #[test]
    fn a_spec_of_another_kind_is_refused() {
        let mut rs = parse_documents(GOOD, "f").unwrap();
        for r in &rs {
            validate_resource(r).unwrap();
        }
        // A Connection document carrying a Policy's spec (only a client
        // that builds resources itself can send one).
        rs[0].spec = rs[2].spec.clone();
        let (field, msg) = validate_resource(&rs[0]).unwrap_err();
        assert_eq!(field, "spec");
        assert!(
            msg.contains("Policy spec") && msg.contains("Connection"),
            "{msg}"
        );
    }

    #[test]
    fn client_certificates_name_a_spiffe_id_or_a_common_name() {
        let doc = |spec: &str| {
            format!("apiVersion: sluice.dev/v1\nkind: ClientCertificate\nmetadata: {{name: c}}\nspec: {spec}\n")
        };
        let ok = parse_documents(
            &doc("{identity: a7, spiffeId: \"spiffe://corp/agent/7\", groups: [bots]}"),
            "f",
        )
        .unwrap();
        let Some(Spec::ClientCertificate(c)) = &ok[0].spec else {
            panic!("{ok:?}")
        };
        assert_eq!(
            (c.identity.as_str(), c.spiffe_id.as_str()),
            ("a7", "spiffe://corp/agent/7")
        );
        assert_eq!(canonical_kind("certs"), Some("ClientCertificate"));
        for (spec, field) in [
            ("{identity: a7}", "spec.spiffeId"),
            (
                "{identity: a7, spiffeId: \"https://corp/a\"}",
                "spec.spiffeId",
            ),
            ("{identity: \"a b\", subjectCn: x}", "spec.identity"),
            ("{identity: a7, subjectCn: x, pem: y}", "spec"),
        ] {
            let e = parse_documents(&doc(spec), "f").unwrap_err();
            assert!(e.field.starts_with(field), "{spec}: {e:?}");
        }
        let two = [
            doc("{identity: a7, subjectCn: x}"),
            doc("{identity: a7, subjectCn: y}").replace("name: c", "name: d"),
        ]
        .join("---\n");
        let set = parse_documents(&two, "f").unwrap();
        assert_eq!(validate_set(&set).unwrap_err().field, "spec.identity");
    }

    #[test]
    fn bad_verifier_and_jwks_are_refused() {
        let doc = "apiVersion: sluice.dev/v1\nkind: ApiKey\nmetadata: {name: k}\nspec: {identity: a, verifier: nope}\n";
        assert_eq!(
            parse_documents(doc, "f").unwrap_err().field,
            "spec.verifier"
        );
        let doc = "apiVersion: sluice.dev/v1\nkind: IdentityProvider\nmetadata: {name: idp}\nspec: {issuer: i, audience: [a], jwks: {keys: []}}\n";
        assert_eq!(parse_documents(doc, "f").unwrap_err().field, "spec.jwks");
    }
}

#[cfg(test)]
mod masking_profile_tests {
    use super::*;

    #[test]
    fn json_profile_errors_name_the_field() {
        let r = Resource {
            api_version: proto::API_VERSION.into(),
            kind: "MaskingProfile".into(),
            name: "pii".into(),
            spec: Some(Spec::MaskingProfile(proto::MaskingProfileSpec {
                json: r#"{"columns":[{"column":"ssn","action":"squash"}]}"#.into(),
            })),
            revision: 0,
        };
        let (field, msg) = validate_resource(&r).unwrap_err();
        assert_eq!(field, "spec.columns[0].action", "{msg}");
        // An error the engine finds (not the parse) names its field too.
        let r = Resource {
            spec: Some(Spec::MaskingProfile(proto::MaskingProfileSpec {
                json: r#"{"custom_regexes":[{"name":"x","pattern":"(unclosed"}]}"#.into(),
            })),
            ..r
        };
        let (field, msg) = validate_resource(&r).unwrap_err();
        assert_eq!(field, "spec.custom_regexes[0].pattern", "{msg}");
    }
}
