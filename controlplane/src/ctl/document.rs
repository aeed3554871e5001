//! Kinds as operators type them, and the inverse of
//! [`crate::resources::parse_documents`]: a [`Resource`] back to the YAML
//! document `apply` accepts, so `get -o yaml | apply -f -` round-trips.

use proto::{resource::Spec, Resource};
use serde_yaml::{Mapping, Value};

/// The canonical kind for what an operator typed (shared with the
/// server, which accepts the same aliases).
pub use crate::resources::canonical_kind as parse_kind;

/// The kinds and their aliases, for error messages and `--help`.
pub const KIND_HELP: &str = "connection (connections, conn), identityprovider \
     (identityproviders, idp), apikey (apikeys, key), group (groups), policy (policies), \
     maskingprofile (maskingprofiles, mask)";

/// `connection/orders`, as kubectl names objects.
pub fn object_name(kind: &str, name: &str) -> String {
    format!("{}/{name}", kind.to_ascii_lowercase())
}

/// The document for `r`, in the shape `apply` parses: `apiVersion`, `kind`,
/// `metadata.name`, `spec` with camelCase fields. Empty optional fields are
/// left out, so a blanked password does not appear at all. The read-only
/// `revision` is not part of a document.
pub fn to_document(r: &Resource) -> Value {
    let mut doc = Mapping::new();
    let api_version = if r.api_version.is_empty() {
        proto::API_VERSION
    } else {
        &r.api_version
    };
    doc.insert("apiVersion".into(), api_version.into());
    doc.insert("kind".into(), r.kind.as_str().into());
    let mut metadata = Mapping::new();
    metadata.insert("name".into(), r.name.as_str().into());
    doc.insert("metadata".into(), Value::Mapping(metadata));
    let spec = match &r.spec {
        Some(s) => spec_document(s),
        None => Mapping::new(),
    };
    doc.insert("spec".into(), Value::Mapping(spec));
    Value::Mapping(doc)
}

/// Documents as `apply -f` reads them: each one followed by `---`.
pub fn to_yaml_stream(resources: &[Resource]) -> String {
    let mut out = String::new();
    for r in resources {
        // Serialising a Value of strings, numbers, lists and maps cannot fail.
        out.push_str(&serde_yaml::to_string(&to_document(r)).unwrap_or_default());
        out.push_str("---\n");
    }
    out
}

/// The documents as one pretty-printed JSON array.
pub fn to_json_array(resources: &[Resource]) -> String {
    let docs: Vec<Value> = resources.iter().map(to_document).collect();
    serde_json::to_string_pretty(&docs).unwrap_or_default()
}

struct Fields(Mapping);

impl Fields {
    fn new() -> Self {
        Fields(Mapping::new())
    }
    fn put(&mut self, key: &str, v: impl Into<Value>) -> &mut Self {
        self.0.insert(key.into(), v.into());
        self
    }
    fn text(&mut self, key: &str, v: &str) -> &mut Self {
        if !v.is_empty() {
            self.put(key, v);
        }
        self
    }
    fn list(&mut self, key: &str, v: &[String]) -> &mut Self {
        self.put(
            key,
            Value::Sequence(v.iter().map(|s| s.as_str().into()).collect()),
        )
    }
    fn list_nonempty(&mut self, key: &str, v: &[String]) -> &mut Self {
        if !v.is_empty() {
            self.list(key, v);
        }
        self
    }
}

fn spec_document(spec: &Spec) -> Mapping {
    let mut f = Fields::new();
    match spec {
        Spec::Connection(c) => {
            f.put("host", c.host.as_str())
                .put("port", c.port)
                .put("database", c.database.as_str())
                .put("user", c.user.as_str())
                .text("password", &c.password)
                .text("auth", &c.auth)
                .text("maskingProfile", &c.masking_profile);
            if let Some(t) = &c.tls {
                let mut tls = Fields::new();
                tls.put("mode", t.mode.as_str())
                    .text("caPem", &t.ca_pem)
                    .text("serverName", &t.server_name);
                f.put("tls", Value::Mapping(tls.0));
            }
        }
        Spec::IdentityProvider(p) => {
            f.put("issuer", p.issuer.as_str())
                .list("audience", &p.audience);
            if !p.jwks_json.is_empty() {
                // Stored as JSON text; written back as the object it was given as.
                let jwks = serde_json::from_str::<Value>(&p.jwks_json)
                    .unwrap_or_else(|_| p.jwks_json.as_str().into());
                f.put("jwks", jwks);
            }
            f.text("jwksUrl", &p.jwks_url)
                .text("identityClaim", &p.identity_claim);
            if p.leeway_seconds != 0 {
                f.put("leewaySeconds", p.leeway_seconds);
            }
        }
        Spec::ApiKey(k) => {
            f.put("identity", k.identity.as_str())
                .text("verifier", &k.verifier)
                .list_nonempty("groups", &k.groups);
        }
        Spec::ClientCertificate(c) => {
            f.put("identity", c.identity.as_str())
                .text("spiffeId", &c.spiffe_id)
                .text("subjectCn", &c.subject_cn)
                .list_nonempty("groups", &c.groups);
        }
        Spec::Group(g) => {
            f.list("members", &g.members);
        }
        Spec::Policy(p) => {
            f.list("connections", &p.connections)
                .list_nonempty("identities", &p.identities)
                .list_nonempty("groups", &p.groups);
            if p.unmasked {
                f.put("unmasked", true);
            }
        }
        Spec::MaskingProfile(m) => {
            // The stored JSON is the document's spec.
            if let Ok(Value::Mapping(spec)) = serde_json::from_str::<Value>(&m.json) {
                return spec;
            }
        }
    }
    f.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;

    const ALL_KINDS: &str = r#"
apiVersion: sluice.dev/v1
kind: Connection
metadata: { name: orders }
spec:
  host: db.internal
  port: 6432
  database: "123"
  user: "yes"
  auth: scram-sha-256
  tls: { mode: verify-full, caPem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", serverName: db }
---
apiVersion: sluice.dev/v1
kind: Connection
metadata: { name: plain }
spec: { host: 10.0.0.1, database: app, user: gw, password: "s3cret: #1" }
---
apiVersion: sluice.dev/v1
kind: IdentityProvider
metadata: { name: corp }
spec:
  issuer: https://id.example.com
  audience: [sluice, "*"]
  jwksUrl: https://id.example.com/jwks
  identityClaim: email
  leewaySeconds: 30
---
apiVersion: sluice.dev/v1
kind: ApiKey
metadata: { name: agent-1 }
spec: { identity: agent-1, groups: [analysts, "on"] }
---
apiVersion: sluice.dev/v1
kind: ApiKey
metadata: { name: agent-2 }
spec: { identity: agent-2, verifier: "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$WFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFg=:WVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWVlZWVk=" }
---
apiVersion: sluice.dev/v1
kind: Group
metadata: { name: empty }
spec: { members: [] }
---
apiVersion: sluice.dev/v1
kind: Policy
metadata: { name: everyone }
spec: { connections: ["*"], identities: ["*"] }
"#;

    fn round_trip(rs: &[Resource]) -> Vec<Resource> {
        parse_documents(&to_yaml_stream(rs), "get").unwrap()
    }

    #[test]
    fn kinds_have_aliases_in_any_case() {
        for (typed, kind) in [
            ("connection", "Connection"),
            ("Connections", "Connection"),
            ("CONN", "Connection"),
            ("IdentityProvider", "IdentityProvider"),
            ("identityproviders", "IdentityProvider"),
            ("idp", "IdentityProvider"),
            ("ApiKey", "ApiKey"),
            ("apikeys", "ApiKey"),
            ("key", "ApiKey"),
            ("group", "Group"),
            ("Groups", "Group"),
            ("policy", "Policy"),
            ("POLICIES", "Policy"),
        ] {
            assert_eq!(parse_kind(typed), Some(kind), "{typed}");
        }
        assert_eq!(parse_kind("polcy"), None);
        assert_eq!(parse_kind(""), None);
        // Every canonical kind is reachable by its own name.
        for k in proto::KINDS {
            assert_eq!(parse_kind(k), Some(k));
        }
        assert_eq!(
            object_name("IdentityProvider", "corp"),
            "identityprovider/corp"
        );
    }

    #[test]
    fn yaml_round_trips_through_parse_documents() {
        let rs = parse_documents(ALL_KINDS, "all.yaml").unwrap();
        assert_eq!(rs.len(), 7);
        assert_eq!(round_trip(&rs), rs);
    }

    #[test]
    fn inline_jwks_round_trips_as_an_object() {
        let doc = r#"
apiVersion: sluice.dev/v1
kind: IdentityProvider
metadata: { name: local }
spec:
  issuer: https://issuer
  audience: [a]
  jwks:
    keys:
      - { kty: EC, crv: P-256, kid: k1, alg: ES256, use: sig,
          x: axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY, y: T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU }
"#;
        let rs = parse_documents(doc, "idp.yaml").unwrap();
        let yaml = to_yaml_stream(&rs);
        assert!(yaml.contains("jwks:\n    keys:"), "{yaml}");
        assert_eq!(round_trip(&rs), rs);
    }

    #[test]
    fn blanked_password_is_left_out() {
        let mut rs = parse_documents(ALL_KINDS, "all.yaml").unwrap();
        let with = to_yaml_stream(&rs[1..2]);
        assert!(with.contains("password: 's3cret: #1'"), "{with}");
        if let Some(Spec::Connection(c)) = &mut rs[1].spec {
            c.password.clear();
        }
        let without = to_yaml_stream(&rs[1..2]);
        assert!(!without.contains("password"), "{without}");
        assert_eq!(round_trip(&rs[1..2]), rs[1..2]);
    }

    #[test]
    fn documents_have_the_apply_shape() {
        let mut rs = parse_documents(ALL_KINDS, "all.yaml").unwrap();
        rs[0].revision = 42; // read-only, never written back
        let yaml = to_yaml_stream(&rs[..1]);
        assert!(
            yaml.starts_with("apiVersion: sluice.dev/v1\nkind: Connection\nmetadata:\n  name: orders\nspec:\n  host: db.internal\n  port: 6432\n"),
            "{yaml}"
        );
        assert!(yaml.ends_with("---\n"));
        assert!(!yaml.contains("42"));

        let json: serde_json::Value = serde_json::from_str(&to_json_array(&rs)).unwrap();
        let docs = json.as_array().unwrap();
        assert_eq!(docs.len(), 7);
        assert_eq!(docs[0]["metadata"]["name"], "orders");
        assert_eq!(docs[0]["spec"]["tls"]["serverName"], "db");
        assert_eq!(docs[2]["spec"]["leewaySeconds"], 30);
        assert_eq!(docs[5]["spec"]["members"], serde_json::json!([]));
        assert_eq!(to_json_array(&[]), "[]");
    }
}
