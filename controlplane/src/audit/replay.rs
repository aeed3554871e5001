//! Replaying a session against today's configuration: for each recorded
//! statement, would its identity still be granted its connection, and
//! does that differ from what was decided then? Pure over the records and
//! a [`Grants`].
//!
//! Only grants are re-evaluated (the configuration has no statement rules
//! yet), so a statement refused then by a named rule is never reported as
//! "allowed now".

use proto::{AuditKind, AuditRecord, Decision, ReplayEvaluation};

use crate::grants::{Grants, Verdict};

/// Record kinds that carry a decision worth re-evaluating.
fn evaluated_kind(kind: i32) -> bool {
    matches!(
        AuditKind::try_from(kind),
        Ok(AuditKind::SessionStart
            | AuditKind::Query
            | AuditKind::Parse
            | AuditKind::Bind
            | AuditKind::Execute
            | AuditKind::PolicyDecision)
    )
}

/// Today's decision for one record.
pub fn evaluate(grants: &Grants, rec: &AuditRecord) -> ReplayEvaluation {
    let kind = rec.metadata.as_ref().map_or(0, |m| m.kind);
    let identity = rec.identity.as_ref().map_or("", |i| i.name.as_str());
    let connection = rec.connection.as_ref().map_or("", |c| c.name.as_str());
    if !evaluated_kind(kind) || identity.is_empty() || connection.is_empty() {
        return ReplayEvaluation::default();
    }
    let verdict = grants.evaluate(identity, connection);
    let outcome = rec.outcome.clone().unwrap_or_default();
    let then = Decision::try_from(outcome.decision).unwrap_or(Decision::Unspecified);
    let allowed_then = matches!(then, Decision::Allow | Decision::ReviewApproved);
    // Refused for lack of a grant: a denial no rule claims, with the
    // SQLSTATE of one (42501; none in older records). Not a session ended
    // because its token expired (28000) or a statement refused while
    // audit records could not be kept (53100): no grant decided those.
    let ungranted_then = then == Decision::Deny
        && outcome.rule.is_empty()
        && matches!(outcome.sqlstate.as_str(), "" | "42501");
    let differs = match &verdict {
        Verdict::Allow(_) => ungranted_then,
        Verdict::Deny(_) => allowed_then,
    };
    ReplayEvaluation {
        decision: if verdict.is_allow() {
            Decision::Allow
        } else {
            Decision::Deny
        } as i32,
        reason: verdict.reason().to_string(),
        differs,
    }
}

/// Today's decision for each record, in order.
pub fn evaluate_all(grants: &Grants, records: &[AuditRecord]) -> Vec<ReplayEvaluation> {
    records.iter().map(|r| evaluate(grants, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::resource::Spec;
    use proto::{AuditConnection, AuditIdentity, AuditMetadata, AuditOutcome, Resource};

    fn grants(with_policy: bool) -> Grants {
        let mut rs = vec![Resource {
            kind: "Connection".into(),
            name: "app".into(),
            spec: Some(Spec::Connection(Default::default())),
            ..Default::default()
        }];
        rs.push(Resource {
            kind: "ApiKey".into(),
            name: "k".into(),
            spec: Some(Spec::ApiKey(proto::ApiKeySpec {
                identity: "alice".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        if with_policy {
            rs.push(Resource {
                kind: "Policy".into(),
                name: "p".into(),
                spec: Some(Spec::Policy(proto::PolicySpec {
                    connections: vec!["app".into()],
                    identities: vec!["alice".into()],
                    groups: vec![],
                    unmasked: false,
                })),
                ..Default::default()
            });
        }
        Grants::new(&rs)
    }

    fn rec(kind: AuditKind, decision: Decision, rule: &str) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                kind: kind as i32,
                ..Default::default()
            }),
            identity: Some(AuditIdentity {
                name: "alice".into(),
                ..Default::default()
            }),
            connection: Some(AuditConnection {
                name: "app".into(),
                ..Default::default()
            }),
            outcome: Some(AuditOutcome {
                decision: decision as i32,
                rule: rule.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn allowed_then_refused_now_differs() {
        let r = rec(AuditKind::Query, Decision::Allow, "");
        let same = evaluate(&grants(true), &r);
        assert_eq!(same.decision(), Decision::Allow);
        assert!(!same.differs);
        let now = evaluate(&grants(false), &r);
        assert_eq!(now.decision(), Decision::Deny);
        assert!(now.differs);
        assert!(now.reason.contains("no Policy grants"), "{}", now.reason);
    }

    #[test]
    fn refusals_by_a_rule_are_not_reversed() {
        let g = grants(true);
        assert!(!evaluate(&g, &rec(AuditKind::Query, Decision::Deny, "no-drop")).differs);
        assert!(evaluate(&g, &rec(AuditKind::Query, Decision::Deny, "")).differs);
        // Refused then and now: the same.
        assert!(!evaluate(&grants(false), &rec(AuditKind::Query, Decision::Deny, "")).differs);
        // Refused for something no grant decides (a JWT session whose
        // token expired, audit unavailable): granted now is no difference;
        // a revocation's 42501 is one.
        for (code, differs) in [("28000", false), ("53100", false), ("42501", true)] {
            let mut r = rec(AuditKind::PolicyDecision, Decision::Deny, "");
            r.outcome.as_mut().unwrap().sqlstate = code.into();
            assert_eq!(evaluate(&g, &r).differs, differs, "{code}");
        }
    }

    #[test]
    fn records_without_a_decision_are_not_evaluated() {
        let g = grants(false);
        let end = evaluate(&g, &rec(AuditKind::SessionEnd, Decision::Allow, ""));
        assert_eq!(end, ReplayEvaluation::default());
        let mut anon = rec(AuditKind::Query, Decision::Allow, "");
        anon.identity = None;
        assert_eq!(evaluate(&g, &anon), ReplayEvaluation::default());
        let start = evaluate(&g, &rec(AuditKind::SessionStart, Decision::Allow, ""));
        assert!(start.differs);
    }
}
