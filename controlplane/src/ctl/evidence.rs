//! `sluicectl evidence`: the control plane's counts over a time range
//! (`AuditQuery.Evidence`) laid out per NIST SP 800-53 control, as
//! `evidence.md` (for a person) and `evidence.json` (for a tool). Pure
//! rendering; [`run`] fetches and writes.

use std::path::{Path, PathBuf};

use proto::{EvidenceResponse, NamedCount};
use serde_json::{json, Value};

use super::audit::format_time;
use super::client::ControlPlane;
use super::CtlError;

/// One control of the report.
#[derive(Debug, Clone)]
pub struct Control {
    pub id: &'static str,
    pub title: &'static str,
    /// What the control requires, in one line.
    pub requires: &'static str,
    /// What the audit trail shows for it: (fact, value).
    pub facts: Vec<(String, Value)>,
    /// Sample record ids, by category.
    pub samples: Vec<(String, Vec<String>)>,
}

/// The controls covered, in report order.
pub const CONTROL_IDS: [&str; 7] = ["AU-2", "AU-6", "AU-9", "AC-2", "AC-6", "SC-8", "IR-4"];

fn total(v: &[NamedCount]) -> u64 {
    v.iter().map(|c| c.count).sum()
}

fn named(v: &[NamedCount]) -> Value {
    Value::Object(
        v.iter()
            .map(|c| (c.name.clone(), Value::from(c.count)))
            .collect(),
    )
}

fn configured(e: &EvidenceResponse, kind: &str) -> u64 {
    e.configured
        .iter()
        .find(|c| c.name == kind)
        .map_or(0, |c| c.count)
}

/// "verified" or "N findings".
pub fn chain_status(e: &EvidenceResponse) -> String {
    match e.verification.as_ref() {
        None => "not verified".into(),
        Some(v) if v.findings.is_empty() => "verified, no findings".into(),
        Some(v) => format!(
            "{} finding{}",
            v.findings.len(),
            if v.findings.len() == 1 { "" } else { "s" }
        ),
    }
}

fn samples(e: &EvidenceResponse, cats: &[&str]) -> Vec<(String, Vec<String>)> {
    cats.iter()
        .filter_map(|c| {
            e.samples
                .iter()
                .find(|s| s.category == *c && !s.record_ids.is_empty())
                .map(|s| (s.category.clone(), s.record_ids.clone()))
        })
        .collect()
}

fn fact(name: &str, v: impl Into<Value>) -> (String, Value) {
    (name.to_string(), v.into())
}

/// The seven controls with their facts and samples.
pub fn controls(e: &EvidenceResponse) -> Vec<Control> {
    let v = e.verification.clone().unwrap_or_default();
    let findings: Vec<Value> = v
        .findings
        .iter()
        .map(|f| {
            json!({
                "node": f.node_id,
                "kind": proto::FindingKind::try_from(f.kind)
                    .map(|k| k.as_str_name().trim_start_matches("FINDING_KIND_").to_ascii_lowercase())
                    .unwrap_or_default(),
                "firstSequence": f.first_sequence,
                "lastSequence": f.last_sequence,
                "detail": f.detail,
            })
        })
        .collect();
    let sessions_started = e.sessions_tls + e.sessions_plaintext;
    let tls_share = if sessions_started == 0 {
        "-".to_string()
    } else {
        format!(
            "{:.1}%",
            e.sessions_tls as f64 * 100.0 / sessions_started as f64
        )
    };
    vec![
        Control {
            id: "AU-2",
            title: "Event Logging",
            requires: "Log the events that matter for security: sessions, statements, \
                       authentication failures, decisions and configuration changes.",
            facts: vec![
                fact("records", e.records),
                fact("records per kind", named(&e.kinds)),
                fact("sessions", e.sessions),
                fact("statements", e.statements),
                fact("authentication failures", e.auth_failures),
                fact("snapshot changes", e.snapshot_changes),
                fact("nodes reporting", named(&e.nodes)),
            ],
            samples: samples(
                e,
                &[
                    "session_start",
                    "statement",
                    "auth_failure",
                    "snapshot_applied",
                ],
            ),
        },
        Control {
            id: "AU-6",
            title: "Audit Record Review, Analysis, and Reporting",
            requires: "Review and analyse audit records for inappropriate or unusual activity \
                       and report what is found.",
            facts: vec![
                fact("statements", e.statements),
                fact("denied", e.denied),
                fact("held for review", e.reviews_required),
                fact("reviews approved", e.reviews_approved),
                fact("reviews denied", e.reviews_denied),
                fact("authentication failures", e.auth_failures),
                fact("statements that ended in an error", e.errors),
                fact("identities seen", e.identities.len()),
            ],
            samples: samples(e, &["denied", "review", "auth_failure", "error"]),
        },
        Control {
            id: "AU-9",
            title: "Protection of Audit Information",
            requires: "Protect audit records from unauthorised modification and deletion \
                       (each record is hash-chained to its predecessor per node, and each \
                       node's chain head is witnessed apart from the sink, in the control \
                       plane's configuration store).",
            facts: vec![
                fact("chain verification", chain_status(e)),
                fact("nodes checked", v.nodes_checked),
                fact(
                    "nodes witnessed in the configuration store",
                    v.nodes_witnessed,
                ),
                fact("records checked", v.records_checked),
                fact("findings", Value::Array(findings)),
                fact("records the nodes reported lost", e.records_lost),
                fact("reports of lost records", e.loss_reports),
            ],
            samples: samples(e, &["records_lost"]),
        },
        Control {
            id: "AC-2",
            title: "Account Management",
            requires: "Know which accounts exist and which were used, how they \
                       authenticated, and which attempts failed.",
            facts: vec![
                fact("identities seen", e.identities.len()),
                fact("records per identity", named(&e.identities)),
                fact(
                    "authentication methods (session starts and failures)",
                    named(&e.auth_methods),
                ),
                fact("authentication failures", e.auth_failures),
                fact("API keys configured", configured(e, "ApiKey")),
                fact(
                    "client certificates configured",
                    configured(e, "ClientCertificate"),
                ),
                fact("groups configured", configured(e, "Group")),
                fact(
                    "identity providers configured",
                    configured(e, "IdentityProvider"),
                ),
            ],
            samples: samples(e, &["session_start", "auth_failure"]),
        },
        Control {
            id: "AC-6",
            title: "Least Privilege",
            requires: "Allow each identity only the access it needs: grants per connection, \
                       refusals, and sensitive values masked in results.",
            facts: vec![
                fact("policies configured", configured(e, "Policy")),
                fact("connections configured", configured(e, "Connection")),
                fact("records per connection", named(&e.connections)),
                fact("allowed", e.allowed),
                fact("denied", e.denied),
                fact("masked values", total(&e.masked)),
                fact("masked values per rule", named(&e.masked)),
            ],
            samples: samples(e, &["denied", "masked"]),
        },
        Control {
            id: "SC-8",
            title: "Transmission Confidentiality and Integrity",
            requires: "Protect information in transit: client sessions should use TLS.",
            facts: vec![
                fact("sessions started", sessions_started),
                fact("sessions over TLS", e.sessions_tls),
                fact("sessions without TLS", e.sessions_plaintext),
                fact("share over TLS", tls_share),
                fact(
                    "TLS configuration loads (server certificate, client CAs, revocation lists)",
                    e.tls_loads,
                ),
            ],
            samples: samples(e, &["tls_session", "plaintext_session", "tls_loaded"]),
        },
        Control {
            id: "IR-4",
            title: "Incident Handling",
            requires: "Detect, analyse and respond to incidents: refusals, authentication \
                       failures, held statements and configuration changes are on record \
                       with who, when and what.",
            facts: vec![
                fact("denied", e.denied),
                fact("authentication failures", e.auth_failures),
                fact("reviews denied", e.reviews_denied),
                fact("statements that ended in an error", e.errors),
                fact("snapshot changes", e.snapshot_changes),
                fact("snapshot versions applied", e.snapshot_versions.clone()),
                fact("chain verification", chain_status(e)),
            ],
            samples: samples(e, &["denied", "auth_failure", "snapshot_applied"]),
        },
    ]
}

fn range(e: &EvidenceResponse) -> (String, String) {
    let t = |n: i64, open: &str| {
        if n == 0 {
            open.to_string()
        } else {
            format_time(n)
        }
    };
    (
        t(e.from_unix_nanos, "the first record"),
        t(e.to_unix_nanos, "now"),
    )
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.replace('|', "\\|"),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
            .replace('|', "\\|"),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::Object(o) => format!(
                    "{} {} {}-{}",
                    o.get("node").and_then(Value::as_str).unwrap_or(""),
                    o.get("kind").and_then(Value::as_str).unwrap_or(""),
                    o.get("firstSequence").unwrap_or(&Value::Null),
                    o.get("lastSequence").unwrap_or(&Value::Null)
                ),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
            .replace('|', "\\|"),
        other => other.to_string(),
    }
}

/// `evidence.md`.
pub fn markdown(e: &EvidenceResponse) -> String {
    let (from, to) = range(e);
    let mut md = String::new();
    md.push_str("# Sluice audit evidence\n\n");
    md.push_str(&format!("- Period: {from} to {to} (UTC, end excluded)\n"));
    md.push_str(&format!(
        "- Generated: {} by sluice-cp; configuration version {}\n",
        format_time(e.generated_unix_nanos),
        e.config_version
    ));
    md.push_str(&format!(
        "- Records in the period: {} from {} node{}\n",
        e.records,
        e.nodes.len(),
        if e.nodes.len() == 1 { "" } else { "s" }
    ));
    md.push_str(&format!(
        "- Audit chain (every record, every node): {}\n",
        chain_status(e)
    ));
    for c in controls(e) {
        md.push_str(&format!("\n## {} {}\n\n", c.id, c.title));
        md.push_str(&format!("Requires: {}\n\n", c.requires));
        md.push_str("| fact | value |\n|---|---|\n");
        for (k, v) in &c.facts {
            md.push_str(&format!("| {k} | {} |\n", cell(v)));
        }
        if let Some(v) = e.verification.as_ref().filter(|_| c.id == "AU-9") {
            if !v.findings.is_empty() {
                md.push_str("\nFindings:\n\n");
                for f in &v.findings {
                    md.push_str(&format!(
                        "- node `{}`, sequence {}{}: {}\n",
                        f.node_id,
                        f.first_sequence,
                        if f.last_sequence != f.first_sequence {
                            format!("-{}", f.last_sequence)
                        } else {
                            String::new()
                        },
                        f.detail
                    ));
                }
            }
        }
        if !c.samples.is_empty() {
            md.push_str("\nSample records:\n\n");
            for (cat, ids) in &c.samples {
                let ids: Vec<String> = ids.iter().map(|i| format!("`{i}`")).collect();
                md.push_str(&format!(
                    "- {}: {}\n",
                    cat.replace('_', " "),
                    ids.join(", ")
                ));
            }
        }
    }
    md.push_str(
        "\nRecords can be looked up with `sluicectl audit search`; \
         `sluicectl audit verify` re-checks the chain.\n",
    );
    md
}

/// `evidence.json`.
pub fn json_report(e: &EvidenceResponse) -> String {
    let (from, to) = range(e);
    let v = e.verification.clone().unwrap_or_default();
    let doc = json!({
        "period": {
            "from": from, "to": to,
            "fromUnixNanos": e.from_unix_nanos, "toUnixNanos": e.to_unix_nanos,
        },
        "generated": format_time(e.generated_unix_nanos),
        "configVersion": e.config_version,
        "records": e.records,
        "chain": {
            "status": chain_status(e),
            "clean": v.findings.is_empty() && e.verification.is_some(),
            "nodesChecked": v.nodes_checked,
            "recordsChecked": v.records_checked,
        },
        "controls": controls(e).into_iter().map(|c| json!({
            "id": c.id,
            "title": c.title,
            "requires": c.requires,
            "facts": Value::Object(c.facts.into_iter().collect()),
            "samples": Value::Object(c.samples.into_iter().map(|(k, v)| (k, v.into())).collect()),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Fetches the counts and writes `evidence.md` and `evidence.json` in
/// `out_dir`; returns their paths and the counts.
pub async fn run(
    cp: &ControlPlane,
    req: proto::EvidenceRequest,
    out_dir: &Path,
) -> Result<(PathBuf, PathBuf, EvidenceResponse), CtlError> {
    let resp = cp.call_audit(async |mut c| c.evidence(req).await).await?;
    write(&resp, out_dir).map(|(a, b)| (a, b, resp))
}

/// Writes both files.
pub fn write(e: &EvidenceResponse, out_dir: &Path) -> Result<(PathBuf, PathBuf), CtlError> {
    let io = |p: &Path, err: std::io::Error| CtlError::Input(format!("{}: {err}", p.display()));
    std::fs::create_dir_all(out_dir).map_err(|err| io(out_dir, err))?;
    let md = out_dir.join("evidence.md");
    let js = out_dir.join("evidence.json");
    std::fs::write(&md, markdown(e)).map_err(|err| io(&md, err))?;
    std::fs::write(&js, json_report(e) + "\n").map_err(|err| io(&js, err))?;
    Ok((md, js))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{EvidenceSamples, FindingKind, VerifyFinding, VerifyResponse};

    fn sample() -> EvidenceResponse {
        EvidenceResponse {
            from_unix_nanos: 1_714_521_600_000_000_000,
            to_unix_nanos: 1_714_608_000_000_000_000,
            generated_unix_nanos: 1_714_608_001_000_000_000,
            records: 12,
            kinds: vec![NamedCount {
                name: "query".into(),
                count: 8,
            }],
            sessions: 2,
            sessions_tls: 1,
            sessions_plaintext: 1,
            statements: 8,
            allowed: 7,
            denied: 1,
            auth_failures: 1,
            identities: vec![NamedCount {
                name: "alice".into(),
                count: 10,
            }],
            masked: vec![NamedCount {
                name: "email".into(),
                count: 4,
            }],
            nodes: vec![NamedCount {
                name: "n1".into(),
                count: 12,
            }],
            verification: Some(VerifyResponse {
                nodes_checked: 1,
                nodes_witnessed: 1,
                records_checked: 12,
                findings: vec![VerifyFinding {
                    node_id: "n1".into(),
                    kind: FindingKind::Gap as i32,
                    first_sequence: 3,
                    last_sequence: 4,
                    detail: "records 3 to 4 are missing".into(),
                }],
            }),
            samples: vec![EvidenceSamples {
                category: "denied".into(),
                record_ids: vec!["n1-7".into()],
            }],
            config_version: 42,
            configured: vec![NamedCount {
                name: "Policy".into(),
                count: 3,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn seven_controls_in_both_files() {
        let e = sample();
        let md = markdown(&e);
        for id in CONTROL_IDS {
            assert!(md.contains(&format!("\n## {id} ")), "{id}\n{md}");
        }
        assert!(md.contains("- Period: 2024-05-01T00:00:00.000Z to 2024-05-02T00:00:00.000Z"));
        assert!(md.contains("| chain verification | 1 finding |"), "{md}");
        assert!(
            md.contains("- node `n1`, sequence 3-4: records 3 to 4 are missing"),
            "{md}"
        );
        assert!(md.contains("| masked values per rule | email: 4 |"), "{md}");
        assert!(md.contains("- denied: `n1-7`"), "{md}");
        assert!(md.contains("| share over TLS | 50.0% |"), "{md}");

        let v: Value = serde_json::from_str(&json_report(&e)).unwrap();
        let ids: Vec<&str> = v["controls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, CONTROL_IDS);
        assert_eq!(v["chain"]["clean"], false);
        assert_eq!(v["controls"][2]["facts"]["findings"][0]["kind"], "gap");
        assert_eq!(v["controls"][4]["facts"]["policies configured"], 3);
        assert_eq!(v["controls"][4]["samples"]["denied"][0], "n1-7");
        for c in v["controls"].as_array().unwrap() {
            assert!(!c["requires"].as_str().unwrap().is_empty());
        }

        let d = tempfile::tempdir().unwrap();
        let (a, b) = write(&e, &d.path().join("out")).unwrap();
        assert!(a.ends_with("evidence.md") && b.ends_with("evidence.json"));
        assert!(std::fs::read_to_string(b).unwrap().ends_with("}\n"));
    }
}
