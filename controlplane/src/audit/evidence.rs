//! The facts `sluicectl evidence` reports per control, counted over the
//! records of a time range by [`Tally`] (pure; the server feeds it pages of
//! search results so nothing is shipped to the client but the counts and a
//! few sample record ids).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proto::{
    AuditKind, AuditRecord, AuthMethod, Decision, EvidenceResponse, EvidenceSamples, NamedCount,
};

/// Sample ids per category when the request asks for none.
pub const DEFAULT_SAMPLES: usize = 5;
/// Most sample ids per category.
pub const MAX_SAMPLES: usize = 50;

/// Sample categories, in report order.
pub const CATEGORIES: [&str; 12] = [
    "session_start",
    "tls_session",
    "plaintext_session",
    "statement",
    "denied",
    "review",
    "auth_failure",
    "masked",
    "snapshot_applied",
    "error",
    "records_lost",
    "tls_loaded",
];

/// A kind's short name: `query`, `session_start`, … (`AUDIT_KIND_` cut,
/// lower case); the number for a kind this build does not know.
pub fn kind_name(kind: i32) -> String {
    AuditKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("AUDIT_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| kind.to_string())
}

/// A decision's short name: `allow`, `deny`, `review_required`, …
pub fn decision_name(d: i32) -> String {
    Decision::try_from(d)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("DECISION_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| d.to_string())
}

/// An authentication method's short name: `scram_api_key`, `jwt`, …
pub fn auth_method_name(m: i32) -> String {
    AuthMethod::try_from(m)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("AUTH_METHOD_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| m.to_string())
}

/// A record's id: `metadata.id`, else `<node>-<sequence>`.
pub fn record_id(r: &AuditRecord) -> String {
    let md = r.metadata.clone().unwrap_or_default();
    if md.id.is_empty() {
        format!("{}-{}", md.node_id, md.sequence)
    } else {
        md.id
    }
}

/// Counts over records, fed one at a time.
#[derive(Debug, Default)]
pub struct Tally {
    samples_per_category: usize,
    resp: EvidenceResponse,
    kinds: BTreeMap<String, u64>,
    identities: BTreeMap<String, u64>,
    auth_methods: BTreeMap<String, u64>,
    connections: BTreeMap<String, u64>,
    nodes: BTreeMap<String, u64>,
    masked: BTreeMap<String, u64>,
    sessions: HashSet<String>,
    versions: BTreeSet<i64>,
    samples: BTreeMap<&'static str, Vec<String>>,
}

fn counts(m: BTreeMap<String, u64>) -> Vec<NamedCount> {
    m.into_iter()
        .map(|(name, count)| NamedCount { name, count })
        .collect()
}

impl Tally {
    /// `samples`: ids kept per category (0: [`DEFAULT_SAMPLES`]; capped at
    /// [`MAX_SAMPLES`]).
    pub fn new(from_unix_nanos: i64, to_unix_nanos: i64, samples: u32) -> Tally {
        let n = match samples as usize {
            0 => DEFAULT_SAMPLES,
            n => n.min(MAX_SAMPLES),
        };
        Tally {
            samples_per_category: n,
            resp: EvidenceResponse {
                from_unix_nanos,
                to_unix_nanos,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn sample(&mut self, category: &'static str, r: &AuditRecord) {
        let v = self.samples.entry(category).or_default();
        if v.len() < self.samples_per_category {
            v.push(record_id(r));
        }
    }

    pub fn add(&mut self, r: &AuditRecord) {
        let md = r.metadata.clone().unwrap_or_default();
        let kind = AuditKind::try_from(md.kind).unwrap_or(AuditKind::Unspecified);
        let out = r.outcome.clone().unwrap_or_default();
        let resp = &mut self.resp;
        resp.records += 1;
        *self.kinds.entry(kind_name(md.kind)).or_default() += 1;
        *self.nodes.entry(md.node_id.clone()).or_default() += 1;
        if let Some(i) = r.identity.as_ref().filter(|i| !i.name.is_empty()) {
            *self.identities.entry(i.name.clone()).or_default() += 1;
            if kind == AuditKind::SessionStart || kind == AuditKind::AuthFailure {
                *self
                    .auth_methods
                    .entry(auth_method_name(i.auth_method))
                    .or_default() += 1;
            }
        }
        if let Some(c) = r.connection.as_ref().filter(|c| !c.name.is_empty()) {
            *self.connections.entry(c.name.clone()).or_default() += 1;
        }
        if let Some(s) = r.session.as_ref().filter(|s| !s.id.is_empty()) {
            if !self.sessions.contains(&s.id) {
                self.sessions.insert(s.id.clone());
            }
        }
        match kind {
            AuditKind::SessionStart => {
                let tls = r.session.as_ref().is_some_and(|s| s.tls);
                if tls {
                    resp.sessions_tls += 1;
                } else {
                    resp.sessions_plaintext += 1;
                }
                self.sample("session_start", r);
                self.sample(
                    if tls {
                        "tls_session"
                    } else {
                        "plaintext_session"
                    },
                    r,
                );
            }
            AuditKind::Query | AuditKind::Execute => {
                resp.statements += 1;
                self.sample("statement", r);
            }
            AuditKind::AuthFailure => {
                resp.auth_failures += 1;
                self.sample("auth_failure", r);
            }
            AuditKind::SnapshotApplied => {
                resp.snapshot_changes += 1;
                self.versions.insert(md.snapshot_version);
                self.sample("snapshot_applied", r);
            }
            AuditKind::RecordsLost => {
                resp.loss_reports += 1;
                resp.records_lost += r.loss.as_ref().map_or(0, |l| l.records);
                self.sample("records_lost", r);
            }
            AuditKind::TlsLoaded => {
                resp.tls_loads += 1;
                self.sample("tls_loaded", r);
            }
            _ => {}
        }
        let resp = &mut self.resp;
        match Decision::try_from(out.decision).unwrap_or(Decision::Unspecified) {
            Decision::Allow => resp.allowed += 1,
            Decision::Deny => resp.denied += 1,
            Decision::ReviewRequired => resp.reviews_required += 1,
            Decision::ReviewApproved => {
                resp.reviews_approved += 1;
                resp.allowed += 1;
            }
            Decision::ReviewDenied => {
                resp.reviews_denied += 1;
                resp.denied += 1;
            }
            Decision::Unspecified => {}
        }
        match Decision::try_from(out.decision).unwrap_or(Decision::Unspecified) {
            Decision::Deny | Decision::ReviewDenied => self.sample("denied", r),
            Decision::ReviewRequired | Decision::ReviewApproved => self.sample("review", r),
            _ => {}
        }
        // (Statements: a Parse or Bind that failed, a statement refused; not
        // a failed login or a session refused before its relay, which carry
        // a SQLSTATE too and are counted as what they are.)
        if !out.sqlstate.is_empty()
            && !matches!(kind, AuditKind::AuthFailure | AuditKind::SessionEnd)
        {
            self.resp.errors += 1;
            self.sample("error", r);
        }
        let mut masked_any = false;
        for m in &out.masked {
            if m.count > 0 {
                *self.masked.entry(m.rule.clone()).or_default() += m.count;
                masked_any = true;
            }
        }
        if masked_any {
            self.sample("masked", r);
        }
    }

    /// The response, without `verification`, `generated_unix_nanos` and
    /// the configuration fields (the server fills those).
    pub fn finish(mut self) -> EvidenceResponse {
        let mut resp = std::mem::take(&mut self.resp);
        resp.kinds = counts(self.kinds);
        resp.identities = counts(self.identities);
        resp.auth_methods = counts(self.auth_methods);
        resp.connections = counts(self.connections);
        resp.nodes = counts(self.nodes);
        resp.masked = counts(self.masked);
        resp.sessions = self.sessions.len() as u64;
        resp.snapshot_versions = self.versions.into_iter().collect();
        resp.samples = CATEGORIES
            .iter()
            .filter_map(|c| {
                self.samples.remove(c).map(|ids| EvidenceSamples {
                    category: c.to_string(),
                    record_ids: ids,
                })
            })
            .collect();
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{AuditIdentity, AuditMetadata, AuditOutcome, AuditSession, MaskedCount};

    fn rec(seq: u64, kind: AuditKind, decision: Decision) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                node_id: "n1".into(),
                sequence: seq,
                kind: kind as i32,
                snapshot_version: 7,
                ..Default::default()
            }),
            identity: Some(AuditIdentity {
                name: if seq.is_multiple_of(2) {
                    "alice"
                } else {
                    "bob"
                }
                .into(),
                auth_method: AuthMethod::ScramApiKey as i32,
                ..Default::default()
            }),
            session: Some(AuditSession {
                id: format!("s{}", seq % 3),
                tls: seq == 1,
                ..Default::default()
            }),
            outcome: Some(AuditOutcome {
                decision: decision as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_and_samples() {
        let mut t = Tally::new(10, 20, 2);
        t.add(&rec(1, AuditKind::SessionStart, Decision::Allow));
        t.add(&rec(2, AuditKind::SessionStart, Decision::Allow));
        for s in 3..=6 {
            t.add(&rec(s, AuditKind::Query, Decision::Allow));
        }
        t.add(&rec(7, AuditKind::Query, Decision::Deny));
        t.add(&rec(8, AuditKind::Execute, Decision::ReviewDenied));
        let mut masked = rec(9, AuditKind::Query, Decision::Allow);
        masked.outcome.as_mut().unwrap().masked = vec![
            MaskedCount {
                rule: "email".into(),
                column: "users.email".into(),
                count: 3,
            },
            MaskedCount {
                rule: "email".into(),
                column: "users.alt".into(),
                count: 1,
            },
        ];
        masked.outcome.as_mut().unwrap().sqlstate = "42501".into();
        t.add(&masked);
        // (A failed login and a session refused before its relay carry a
        // SQLSTATE too: they are no statement that ended in an error.)
        let mut failed = rec(10, AuditKind::AuthFailure, Decision::Unspecified);
        failed.outcome.as_mut().unwrap().sqlstate = "28P01".into();
        t.add(&failed);
        t.add(&rec(11, AuditKind::SnapshotApplied, Decision::Unspecified));
        let mut end = rec(12, AuditKind::SessionEnd, Decision::Allow);
        end.outcome.as_mut().unwrap().sqlstate = "0A000".into();
        t.add(&end);
        // (A statement that failed at its Parse is one.)
        let mut parse = rec(13, AuditKind::Parse, Decision::Allow);
        parse.outcome.as_mut().unwrap().sqlstate = "42601".into();
        t.add(&parse);
        // Two reports of lost records, 7 and 0 (ring bytes) records.
        for (seq, records) in [(14, 7), (15, 0)] {
            let mut lost = rec(seq, AuditKind::RecordsLost, Decision::Unspecified);
            lost.loss = Some(proto::AuditLoss {
                reason: "fail_open".into(),
                records,
                ..Default::default()
            });
            t.add(&lost);
        }
        let mut tls = rec(16, AuditKind::TlsLoaded, Decision::Unspecified);
        tls.outcome = None;
        t.add(&tls);
        let r = t.finish();
        assert_eq!((r.from_unix_nanos, r.to_unix_nanos), (10, 20));
        assert_eq!(r.records, 16);
        assert_eq!(r.tls_loads, 1);
        assert_eq!((r.records_lost, r.loss_reports), (7, 2));
        assert_eq!(r.sessions, 3);
        assert_eq!((r.sessions_tls, r.sessions_plaintext), (1, 1));
        assert_eq!(r.statements, 7);
        assert_eq!((r.allowed, r.denied, r.reviews_denied), (9, 2, 1));
        assert_eq!((r.auth_failures, r.errors, r.snapshot_changes), (1, 2, 1));
        assert_eq!(r.snapshot_versions, [7]);
        assert_eq!(
            r.masked,
            [NamedCount {
                name: "email".into(),
                count: 4
            }]
        );
        let ids = |c: &str| {
            r.samples
                .iter()
                .find(|s| s.category == c)
                .map(|s| s.record_ids.clone())
                .unwrap_or_default()
        };
        assert_eq!(ids("statement"), ["n1-3", "n1-4"], "two samples at most");
        assert_eq!(ids("denied"), ["n1-7", "n1-8"]);
        assert_eq!(ids("masked"), ["n1-9"]);
        assert_eq!(ids("error"), ["n1-9", "n1-13"]);
        assert_eq!(ids("plaintext_session"), ["n1-2"]);
        assert_eq!(ids("records_lost"), ["n1-14", "n1-15"]);
        assert_eq!(ids("tls_loaded"), ["n1-16"]);
        assert_eq!(r.samples[0].category, "session_start", "report order");
        let kinds: Vec<&str> = r.kinds.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "auth_failure",
                "execute",
                "parse",
                "query",
                "records_lost",
                "session_end",
                "session_start",
                "snapshot_applied",
                "tls_loaded"
            ]
        );
        assert_eq!(r.auth_methods[0].name, "scram_api_key");
    }

    #[test]
    fn names() {
        assert_eq!(kind_name(AuditKind::SessionStart as i32), "session_start");
        assert_eq!(kind_name(99), "99");
        assert_eq!(
            decision_name(Decision::ReviewApproved as i32),
            "review_approved"
        );
        assert_eq!(auth_method_name(AuthMethod::Jwt as i32), "jwt");
    }
}
