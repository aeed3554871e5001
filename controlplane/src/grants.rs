//! Who may use which connection under a configuration: the grant rules the
//! data plane enforces (`dataplane::snapshot`), evaluated here over
//! `proto::Resource`s so the control plane can answer "would this be
//! allowed today?" (`sluicectl session replay --evaluate`).
//!
//! * An identity exists when an `ApiKey` or a `ClientCertificate`
//!   (`spec.identity`), a `Group` (`spec.members`) or a `Policy`
//!   (`spec.identities`, other than `*`) names it. Only those can
//!   authenticate.
//! * Its groups are the `Group`s listing it as a member plus its
//!   `ApiKey`'s and `ClientCertificate`'s `groups`.
//! * A `Policy` grants its `connections` (or every connection with `*`) to
//!   its `identities` (or every identity with `*`) and to the members of
//!   its `groups`.
//! * The connection must exist.
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use proto::resource::Spec;
use proto::Resource;

/// A decision of [`Grants::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Granted; the reason names the Policy and what matched.
    Allow(String),
    /// Refused, and why.
    Deny(String),
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Allow(r) | Verdict::Deny(r) => r,
        }
    }
}

struct PolicyGrant {
    name: String,
    connections: BTreeSet<String>,
    identities: BTreeSet<String>,
    groups: BTreeSet<String>,
}

/// The grants of one configuration.
pub struct Grants {
    /// Identity → its groups.
    identities: BTreeMap<String, BTreeSet<String>>,
    connections: BTreeSet<String>,
    policies: Vec<PolicyGrant>,
}

impl Grants {
    /// Builds the grants of a configuration (resources of any kinds, in
    /// any order; other kinds are ignored).
    pub fn new(resources: &[Resource]) -> Grants {
        let mut identities: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut connections = BTreeSet::new();
        let mut policies = Vec::new();
        for r in resources {
            match &r.spec {
                Some(Spec::Connection(_)) => {
                    connections.insert(r.name.clone());
                }
                Some(Spec::ApiKey(k)) => {
                    identities
                        .entry(k.identity.clone())
                        .or_default()
                        .extend(k.groups.iter().cloned());
                }
                Some(Spec::ClientCertificate(c)) => {
                    identities
                        .entry(c.identity.clone())
                        .or_default()
                        .extend(c.groups.iter().cloned());
                }
                Some(Spec::Group(g)) => {
                    for m in &g.members {
                        identities
                            .entry(m.clone())
                            .or_default()
                            .insert(r.name.clone());
                    }
                }
                Some(Spec::Policy(p)) => {
                    for i in p.identities.iter().filter(|i| *i != "*") {
                        identities.entry(i.clone()).or_default();
                    }
                    policies.push(PolicyGrant {
                        name: r.name.clone(),
                        connections: p.connections.iter().cloned().collect(),
                        identities: p.identities.iter().cloned().collect(),
                        groups: p.groups.iter().cloned().collect(),
                    });
                }
                Some(Spec::IdentityProvider(_)) | Some(Spec::MaskingProfile(_)) | None => {}
            }
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Grants {
            identities,
            connections,
            policies,
        }
    }

    /// May `identity` use `connection`?
    pub fn evaluate(&self, identity: &str, connection: &str) -> Verdict {
        let Some(groups) = self.identities.get(identity) else {
            return Verdict::Deny(format!(
                "identity `{identity}` is not in the configuration: no ApiKey, ClientCertificate, Group or Policy names it"
            ));
        };
        if !self.connections.contains(connection) {
            return Verdict::Deny(format!("connection `{connection}` does not exist"));
        }
        for p in &self.policies {
            if !(p.connections.contains(connection) || p.connections.contains("*")) {
                continue;
            }
            let how = if p.identities.contains(identity) {
                format!("identity `{identity}`")
            } else if let Some(g) = groups.iter().find(|g| p.groups.contains(*g)) {
                format!("group `{g}`")
            } else if p.identities.contains("*") {
                "every identity (*)".to_string()
            } else {
                continue;
            };
            return Verdict::Allow(format!(
                "Policy `{}` grants connection `{connection}` to {how}",
                p.name
            ));
        }
        Verdict::Deny(format!(
            "no Policy grants connection `{connection}` to identity `{identity}`{}",
            if groups.is_empty() {
                String::new()
            } else {
                format!(
                    " (groups {})",
                    groups.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{ApiKeySpec, ConnectionSpec, GroupSpec, PolicySpec};

    fn res(kind: &str, name: &str, spec: Spec) -> Resource {
        Resource {
            api_version: proto::API_VERSION.into(),
            kind: kind.into(),
            name: name.into(),
            spec: Some(spec),
            revision: 0,
        }
    }

    fn conn(name: &str) -> Resource {
        res(
            "Connection",
            name,
            Spec::Connection(ConnectionSpec {
                host: "db".into(),
                port: 5432,
                database: "d".into(),
                user: "u".into(),
                ..Default::default()
            }),
        )
    }

    fn policy(name: &str, c: &[&str], i: &[&str], g: &[&str]) -> Resource {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        res(
            "Policy",
            name,
            Spec::Policy(PolicySpec {
                connections: v(c),
                identities: v(i),
                groups: v(g),
                unmasked: false,
            }),
        )
    }

    fn config() -> Vec<Resource> {
        vec![
            conn("orders"),
            conn("billing"),
            res(
                "ApiKey",
                "k",
                Spec::ApiKey(ApiKeySpec {
                    identity: "agent".into(),
                    verifier: String::new(),
                    groups: vec!["bots".into()],
                }),
            ),
            res(
                "Group",
                "humans",
                Spec::Group(GroupSpec {
                    members: vec!["alice".into()],
                }),
            ),
            policy("bots-orders", &["orders"], &[], &["bots"]),
            policy("alice-all", &["*"], &["alice"], &[]),
            policy("everyone-billing", &["billing"], &["*"], &[]),
        ]
    }

    #[test]
    fn grants_follow_the_data_plane_rules() {
        let g = Grants::new(&config());
        let allow = |i: &str, c: &str| g.evaluate(i, c);
        assert_eq!(
            allow("agent", "orders"),
            Verdict::Allow(
                "Policy `bots-orders` grants connection `orders` to group `bots`".into()
            )
        );
        assert_eq!(
            allow("alice", "orders"),
            Verdict::Allow(
                "Policy `alice-all` grants connection `orders` to identity `alice`".into()
            )
        );
        assert!(allow("agent", "billing")
            .reason()
            .contains("every identity (*)"));
        // Unknown identity: "*" does not make one up.
        let v = allow("mallory", "billing");
        assert!(!v.is_allow());
        assert!(v.reason().contains("not in the configuration"), "{v:?}");
        let v = allow("alice", "ghost");
        assert_eq!(v, Verdict::Deny("connection `ghost` does not exist".into()));
    }

    #[test]
    fn deleting_a_policy_revokes() {
        let mut cfg = config();
        cfg.retain(|r| r.name != "bots-orders");
        let v = Grants::new(&cfg).evaluate("agent", "orders");
        assert_eq!(
            v,
            Verdict::Deny(
                "no Policy grants connection `orders` to identity `agent` (groups bots)".into()
            )
        );
    }
}
