//! `sluicectl audit search`, `audit verify`, `session replay`: flags to
//! requests, answers to tables and JSON. Pure functions except [`run_*`],
//! which call the control plane's `AuditQuery` service.
//!
//! Times on the command line: RFC 3339 (`2024-05-01T12:00:00Z`,
//! `2024-05-01T14:00:00.5+02:00`), a date (`2024-05-01`, midnight UTC),
//! `now`, or a duration ago (`90s`, `15m`, `1h`, `1h30m`, `7d`, `2w`).
//! Times printed: RFC 3339 in UTC with milliseconds.

use proto::{
    AuditKind, AuditRecord, Decision, FindingKind, ReplayEvaluation, ReplayResponse, SearchRequest,
    SearchResponse, VerifyResponse,
};
use serde_json::{json, Value};

use super::client::ControlPlane;
use super::{table, CtlError, Output};
use crate::audit::chain::hex;
use crate::audit::evidence::{auth_method_name, decision_name, kind_name, record_id};

/// Longest SQL cell in tables; `-o json` has the whole text.
pub const MAX_SQL_CELL: usize = 60;
/// Longest reason cell in the replay table.
pub const MAX_REASON_CELL: usize = 90;

/// Output format of the audit commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

// ---------------------------------------------------------------- time

/// Unix nanoseconds now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `2024-05-01T23:59:59.123Z`.
pub fn format_time(nanos: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)) {
        Ok(t) => format!("{}.{:03}Z", seconds(t), t.millisecond()),
        Err(_) => nanos.to_string(),
    }
}

/// A time in Unix seconds as `2026-11-28T15:41:48Z` (certificates'
/// dates, which may lie past what nanoseconds in an i64 reach); `-` for 0.
fn format_secs(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        _ if secs == 0 => "-".into(),
        Ok(t) => format!("{}Z", seconds(t)),
        Err(_) => secs.to_string(),
    }
}

/// `2024-05-01T23:59:59`.
fn seconds(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A duration such as `90s`, `15m`, `1h30m`, `7d`, `2w`, in nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut num = String::new();
    let mut any = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            1_000_000
        } else {
            match c {
                's' => 1_000_000_000,
                'm' => 60 * 1_000_000_000,
                'h' => 3_600 * 1_000_000_000,
                'd' => 86_400 * 1_000_000_000,
                'w' => 7 * 86_400 * 1_000_000_000,
                _ => return None,
            }
        };
        let n: i64 = num.parse().ok()?;
        num.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// RFC 3339 (or a bare date, UTC midnight) to Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let date_part = s.get(..10)?;
    let (y, rest) = date_part.split_once('-')?;
    let (mo, d) = rest.split_once('-')?;
    if y.len() != 4 || mo.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(digits(mo)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(digits(y)?).ok()?,
        month,
        u8::try_from(digits(d)?).ok()?,
    )
    .ok()?;
    let rest = &s[10..];
    if rest.is_empty() {
        return i64::try_from(date.midnight().assume_utc().unix_timestamp_nanos()).ok();
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let hms = rest.get(..8)?;
    let mut parts = hms.split(':');
    let (h, mi, se) = (parts.next()?, parts.next()?, parts.next()?);
    if h.len() != 2 || mi.len() != 2 || se.len() != 2 {
        return None;
    }
    let tod = time::Time::from_hms(
        u8::try_from(digits(h)?).ok()?,
        u8::try_from(digits(mi)?).ok()?,
        u8::try_from(digits(se)?).ok()?,
    )
    .ok()?;
    let mut rest = &rest[8..];
    let mut frac_nanos: i64 = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let mut ds = f[..n].to_string();
        ds.truncate(9);
        while ds.len() < 9 {
            ds.push('0');
        }
        frac_nanos = ds.parse().ok()?;
        rest = &f[n..];
    }
    let offset = match rest {
        "Z" | "z" => time::UtcOffset::UTC,
        _ => {
            let sign: i8 = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            let oh = i8::try_from(digits(oh)?).ok()?;
            let om = i8::try_from(digits(om)?).ok()?;
            time::UtcOffset::from_hms(sign * oh, sign * om, 0).ok()?
        }
    };
    let t = time::PrimitiveDateTime::new(date, tod).assume_offset(offset);
    i64::try_from(t.unix_timestamp_nanos())
        .ok()?
        .checked_add(frac_nanos)
}

/// A time flag: RFC 3339, a date, `now`, or a duration ago.
pub fn parse_time(flag: &str, s: &str, now: i64) -> Result<i64, CtlError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(d) = parse_duration(s) {
        return Ok(now.saturating_sub(d));
    }
    parse_rfc3339(s).ok_or_else(|| {
        CtlError::Usage(format!(
            "{flag} {s:?}: give RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01), `now`, \
             or a duration ago (90s, 15m, 1h, 7d)"
        ))
    })
}

// ---------------------------------------------------------------- names

fn normalise(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace(['-', ' '], "_")
}

/// `--kind`: `query`, `session-start`, `auth_failure`, …
pub fn parse_kind(s: &str) -> Result<AuditKind, String> {
    let want = normalise(s);
    let kinds = || (1..).map_while(|k| AuditKind::try_from(k).ok());
    kinds()
        .find(|k| kind_name(*k as i32) == want)
        .ok_or_else(|| {
            format!(
                "unknown kind; one of {}",
                kinds()
                    .map(|k| kind_name(k as i32))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// `--decision`: `allow`, `deny`, `review-required`, …
pub fn parse_decision(s: &str) -> Result<Decision, String> {
    let want = normalise(s);
    (1..=5)
        .filter_map(|d| Decision::try_from(d).ok())
        .find(|d| decision_name(*d as i32) == want)
        .ok_or_else(|| {
            format!(
                "unknown decision; one of {}",
                (1..=5).map(decision_name).collect::<Vec<_>>().join(", ")
            )
        })
}

fn finding_name(k: i32) -> String {
    FindingKind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("FINDING_KIND_")
                .to_ascii_lowercase()
                .replace('_', " ")
        })
        .unwrap_or_else(|_| k.to_string())
}

// ---------------------------------------------------------------- JSON

/// A record as JSON: camelCase fields, enums by short name, hashes in hex,
/// the time in RFC 3339 and in Unix nanoseconds.
pub fn record_json(r: &AuditRecord) -> Value {
    let md = r.metadata.clone().unwrap_or_default();
    let mut v = json!({
        "id": record_id(r),
        "kind": kind_name(md.kind),
        "time": format_time(md.time_unix_nanos),
        "timeUnixNanos": md.time_unix_nanos,
        "node": md.node_id,
        "core": md.core,
        "sequence": md.sequence,
        "snapshotVersion": md.snapshot_version,
    });
    if let Some(i) = &r.identity {
        v["identity"] = json!({
            "name": i.name, "groups": i.groups,
            "authMethod": auth_method_name(i.auth_method), "issuer": i.issuer,
        });
    }
    if let Some(s) = &r.session {
        v["session"] = json!({
            "id": s.id, "clientAddress": s.client_address,
            "applicationName": s.application_name, "tls": s.tls,
        });
    }
    if let Some(c) = &r.connection {
        v["connection"] = json!({
            "name": c.name, "target": c.target, "database": c.database, "role": c.role,
        });
    }
    if let Some(s) = &r.statement {
        v["statement"] = json!({
            "sql": s.sql, "sqlTruncated": s.sql_truncated, "sqlBytes": s.sql_bytes,
            "kind": s.statement_kind, "parameters": s.parameters,
            "parameterNulls": s.parameter_nulls, "statementName": s.statement_name,
            "portalName": s.portal_name,
        });
    }
    if let Some(o) = &r.outcome {
        v["outcome"] = json!({
            "decision": decision_name(o.decision), "rule": o.rule, "reviewId": o.review_id,
            "rows": o.rows, "bytes": o.bytes, "durationNanos": o.duration_nanos,
            "masked": o.masked.iter().map(|m| json!({
                "rule": m.rule, "column": m.column, "count": m.count,
            })).collect::<Vec<_>>(),
            "sqlstate": o.sqlstate, "errorMessage": o.error_message,
        });
    }
    if let Some(l) = &r.loss {
        v["loss"] = json!({
            "reason": l.reason, "records": l.records, "bytes": l.bytes,
            "since": format_time(l.since_unix_nanos), "until": format_time(l.until_unix_nanos),
        });
    }
    if let Some(t) = &r.tls {
        v["tls"] = json!({
            "trigger": t.trigger,
            "serverCertSubject": t.server_cert_subject,
            "serverCertSha256": hex(&t.server_cert_sha256),
            "serverCertNotAfter": format_secs(t.server_cert_not_after),
            "clientCas": t.client_cas.iter().map(|c| json!({
                "subject": c.subject, "sha256": hex(&c.sha256),
            })).collect::<Vec<_>>(),
            "crls": t.crls.iter().map(|c| json!({
                "issuer": c.issuer, "number": c.number,
                "thisUpdate": format_secs(c.this_update),
                "nextUpdate": format_secs(c.next_update),
                "revoked": c.revoked,
                "onlyCaCertificates": c.only_ca_certificates,
            })).collect::<Vec<_>>(),
            "allowUnknownRevocationStatus": t.allow_unknown_revocation_status,
        });
    }
    v["prevHash"] = hex(&r.prev_hash).into();
    v["hash"] = hex(&r.hash).into();
    v
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

// ---------------------------------------------------------------- cells

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// `850ns`, `12µs`, `3.4ms`, `1.25s`.
pub fn duration(nanos: u64) -> String {
    match nanos {
        0 => "-".into(),
        1..1_000 => format!("{nanos}ns"),
        1_000..1_000_000 => format!("{}µs", nanos / 1_000),
        1_000_000..1_000_000_000 => format!("{:.1}ms", nanos as f64 / 1e6),
        _ => format!("{:.2}s", nanos as f64 / 1e9),
    }
}

fn masked_cell(r: &AuditRecord) -> String {
    let Some(o) = &r.outcome else {
        return "-".into();
    };
    let mut per_rule: std::collections::BTreeMap<&str, u64> = Default::default();
    for m in &o.masked {
        *per_rule.entry(m.rule.as_str()).or_default() += m.count;
    }
    let cells: Vec<String> = per_rule
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(",")
    }
}

fn sql_cell(r: &AuditRecord) -> String {
    if let Some(l) = &r.loss {
        // (A RECORDS_LOST record has no statement: what was lost, here.)
        return match l.records {
            0 => format!("{} ({} bytes of ring)", l.reason, l.bytes),
            n => format!("{} ({n} record{})", l.reason, if n == 1 { "" } else { "s" }),
        };
    }
    if let Some(t) = &r.tls {
        // (Nor has a TLS_LOADED record: what was loaded, here.)
        let revoked: u64 = t.crls.iter().map(|c| c.revoked).sum();
        return table::truncate(
            &format!(
                "{}: {} CA {} CRL {revoked} revoked, {}",
                t.trigger,
                t.client_cas.len(),
                t.crls.len(),
                t.server_cert_subject
            ),
            MAX_SQL_CELL,
        );
    }
    let sql = r.statement.as_ref().map_or("", |s| s.sql.as_str());
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.is_empty() {
        "-".into()
    } else {
        table::truncate(&one, MAX_SQL_CELL)
    }
}

fn decision_cell(r: &AuditRecord) -> String {
    match r.outcome.as_ref().map_or(0, |o| o.decision) {
        0 => "-".into(),
        d => decision_name(d),
    }
}

fn rows_cell(r: &AuditRecord) -> String {
    match r.outcome.as_ref() {
        Some(o) if o.rows > 0 => o.rows.to_string(),
        _ => "-".into(),
    }
}

// ---------------------------------------------------------------- search

/// The `audit search` table.
pub fn search_table(resp: &SearchResponse) -> String {
    let rows: Vec<Vec<String>> = resp
        .records
        .iter()
        .map(|r| {
            let md = r.metadata.clone().unwrap_or_default();
            vec![
                format_time(md.time_unix_nanos),
                record_id(r),
                kind_name(md.kind),
                dash(r.identity.as_ref().map_or("", |i| i.name.as_str())),
                dash(r.connection.as_ref().map_or("", |c| c.name.as_str())),
                dash(r.session.as_ref().map_or("", |s| s.id.as_str())),
                decision_cell(r),
                rows_cell(r),
                sql_cell(r),
            ]
        })
        .collect();
    table::render(
        &[
            "TIME",
            "ID",
            "KIND",
            "IDENTITY",
            "CONNECTION",
            "SESSION",
            "DECISION",
            "ROWS",
            "SQL",
        ],
        &rows,
    )
}

/// The `audit search -o json` document.
pub fn search_json(resp: &SearchResponse) -> String {
    pretty(&json!({
        "records": resp.records.iter().map(record_json).collect::<Vec<_>>(),
        "truncated": resp.truncated,
    }))
}

/// Prints a search answer.
pub fn render_search(resp: &SearchResponse, format: Format, out: &mut Output) {
    match format {
        Format::Json => out.line(search_json(resp)),
        Format::Table if resp.records.is_empty() => {
            out.stderr.push_str("no audit records match\n");
        }
        Format::Table => out.stdout.push_str(&search_table(resp)),
    }
    if resp.truncated {
        out.stderr.push_str(&format!(
            "more records match than the {} shown: raise --limit or narrow the filters\n",
            resp.records.len()
        ));
    }
}

// ---------------------------------------------------------------- verify

/// The `audit verify` table (findings) and summary line.
pub fn verify_text(resp: &VerifyResponse) -> String {
    let summary = format!(
        "{} node{} ({} witnessed in the store), {} record{} checked",
        resp.nodes_checked,
        if resp.nodes_checked == 1 { "" } else { "s" },
        resp.nodes_witnessed,
        resp.records_checked,
        if resp.records_checked == 1 { "" } else { "s" },
    );
    if resp.findings.is_empty() {
        return format!("audit chain verified: {summary}, no findings\n");
    }
    let rows: Vec<Vec<String>> = resp
        .findings
        .iter()
        .map(|f| {
            vec![
                f.node_id.clone(),
                finding_name(f.kind),
                if f.first_sequence == f.last_sequence {
                    f.first_sequence.to_string()
                } else {
                    format!("{}-{}", f.first_sequence, f.last_sequence)
                },
                f.detail.replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    let mut t = table::render(&["NODE", "FINDING", "SEQUENCE", "DETAIL"], &rows);
    t.push_str(&format!(
        "{} finding{}: {summary}\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    t
}

/// The `audit verify -o json` document.
pub fn verify_json(resp: &VerifyResponse) -> String {
    pretty(&json!({
        "clean": resp.findings.is_empty(),
        "nodesChecked": resp.nodes_checked,
        "nodesWitnessed": resp.nodes_witnessed,
        "recordsChecked": resp.records_checked,
        "findings": resp.findings.iter().map(|f| json!({
            "node": f.node_id,
            "kind": finding_name(f.kind).replace(' ', "_"),
            "firstSequence": f.first_sequence,
            "lastSequence": f.last_sequence,
            "detail": f.detail,
        })).collect::<Vec<_>>(),
    }))
}

/// Prints a verify answer; findings are an error (exit 1).
pub fn render_verify(
    resp: &VerifyResponse,
    format: Format,
    out: &mut Output,
) -> Result<(), CtlError> {
    match format {
        Format::Table => out.stdout.push_str(&verify_text(resp)),
        Format::Json => out.line(verify_json(resp)),
    }
    if resp.findings.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Findings(format!(
            "the audit chain has {} finding{} (records edited, deleted or out of place)",
            resp.findings.len(),
            if resp.findings.len() == 1 { "" } else { "s" }
        )))
    }
}

// ---------------------------------------------------------------- replay

fn now_cell(e: &ReplayEvaluation) -> String {
    if !e.differs {
        return "-".into();
    }
    format!(
        "now: {} ({})",
        decision_name(e.decision),
        table::truncate(&e.reason, MAX_REASON_CELL)
    )
}

/// The `session replay` text: a header, the table, and with evaluations a
/// footer.
pub fn replay_text(session: &str, resp: &ReplayResponse) -> String {
    let first = resp.records.first().cloned().unwrap_or_default();
    let identity = first.identity.as_ref().map_or("", |i| i.name.as_str());
    let connection = first.connection.as_ref().map_or("", |c| c.name.as_str());
    let client = resp
        .records
        .iter()
        .filter_map(|r| r.session.as_ref())
        .map(|s| s.client_address.as_str())
        .find(|a| !a.is_empty())
        .unwrap_or("");
    let node = first.metadata.as_ref().map_or("", |m| m.node_id.as_str());
    let evaluated = !resp.evaluations.is_empty();
    let mut out = format!(
        "session {session}: identity {}, connection {}, node {}, client {}, {} record{}\n",
        dash(identity),
        dash(connection),
        dash(node),
        dash(client),
        resp.records.len(),
        if resp.records.len() == 1 { "" } else { "s" }
    );
    let rows: Vec<Vec<String>> = resp
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let md = r.metadata.clone().unwrap_or_default();
            let mut row = vec![
                (i + 1).to_string(),
                format_time(md.time_unix_nanos),
                kind_name(md.kind),
                decision_cell(r),
                rows_cell(r),
                duration(r.outcome.as_ref().map_or(0, |o| o.duration_nanos)),
                masked_cell(r),
                sql_cell(r),
            ];
            if evaluated {
                row.push(resp.evaluations.get(i).map_or("-".into(), now_cell));
            }
            row
        })
        .collect();
    let mut header = vec![
        "#", "TIME", "KIND", "DECISION", "ROWS", "DURATION", "MASKED", "SQL",
    ];
    if evaluated {
        header.push("NOW");
    }
    out.push_str(&table::render(&header, &rows));
    if evaluated {
        let differ = resp.evaluations.iter().filter(|e| e.differs).count();
        out.push_str(&format!(
            "evaluated against configuration version {}: {}\n",
            resp.evaluated_version,
            match differ {
                0 => "every decision is the same today".to_string(),
                1 => "1 record would be decided differently today".to_string(),
                n => format!("{n} records would be decided differently today"),
            }
        ));
    }
    out
}

/// The `session replay -o json` document.
pub fn replay_json(session: &str, resp: &ReplayResponse) -> String {
    let evaluated = !resp.evaluations.is_empty();
    let records: Vec<Value> = resp
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = record_json(r);
            if let Some(e) = resp.evaluations.get(i) {
                v["now"] = if e.decision == 0 {
                    Value::Null
                } else {
                    json!({
                        "decision": decision_name(e.decision),
                        "reason": e.reason,
                        "differs": e.differs,
                    })
                };
            }
            v
        })
        .collect();
    let mut doc = json!({ "sessionId": session, "records": records });
    if evaluated {
        doc["evaluatedVersion"] = resp.evaluated_version.into();
        doc["differences"] = resp.evaluations.iter().filter(|e| e.differs).count().into();
    }
    pretty(&doc)
}

// ---------------------------------------------------------------- commands

/// Flags of `audit search`, as parsed.
#[derive(Debug, Clone, Default)]
pub struct SearchFlags {
    pub identity: Option<String>,
    pub connection: Option<String>,
    pub session: Option<String>,
    pub kind: Option<AuditKind>,
    pub decision: Option<Decision>,
    pub node: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: u32,
}

/// The request for `audit search` flags, times counted back from `now`.
pub fn search_request(f: &SearchFlags, now: i64) -> Result<SearchRequest, CtlError> {
    let from = f
        .since
        .as_deref()
        .map(|s| parse_time("--since", s, now))
        .transpose()?
        .unwrap_or(0);
    let to = f
        .until
        .as_deref()
        .map(|s| parse_time("--until", s, now))
        .transpose()?
        .unwrap_or(0);
    if to != 0 && to <= from {
        return Err(CtlError::Usage(format!(
            "--until ({}) must be after --since ({})",
            format_time(to),
            format_time(from)
        )));
    }
    if f.limit == 0 {
        return Err(CtlError::Usage("--limit must be at least 1".into()));
    }
    Ok(SearchRequest {
        identity: f.identity.clone().unwrap_or_default(),
        connection: f.connection.clone().unwrap_or_default(),
        session_id: f.session.clone().unwrap_or_default(),
        kind: f.kind.map_or(0, |k| k as i32),
        decision: f.decision.map_or(0, |d| d as i32),
        node_id: f.node.clone().unwrap_or_default(),
        from_unix_nanos: from,
        to_unix_nanos: to,
        limit: f.limit,
    })
}

pub async fn run_search(cp: &ControlPlane, req: SearchRequest) -> Result<SearchResponse, CtlError> {
    cp.call_audit(async |mut c| c.search(req.clone()).await)
        .await
}

pub async fn run_verify(
    cp: &ControlPlane,
    node: Option<String>,
) -> Result<VerifyResponse, CtlError> {
    let req = proto::VerifyRequest {
        node_id: node.unwrap_or_default(),
    };
    cp.call_audit(async |mut c| c.verify(req.clone()).await)
        .await
}

pub async fn run_replay(
    cp: &ControlPlane,
    session: &str,
    evaluate: bool,
) -> Result<ReplayResponse, CtlError> {
    let req = proto::ReplayRequest {
        session_id: session.to_string(),
        evaluate,
    };
    cp.call_audit(async |mut c| c.replay(req.clone()).await)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{
        AuditConnection, AuditIdentity, AuditMetadata, AuditOutcome, AuditSession, AuditStatement,
        MaskedCount, VerifyFinding,
    };

    const T: i64 = 1_714_607_999_123_000_000; // 2024-05-01T23:59:59.123Z

    #[test]
    fn times_print_and_parse() {
        assert_eq!(format_time(T), "2024-05-01T23:59:59.123Z");
        assert_eq!(parse_rfc3339("2024-05-01T23:59:59.123Z"), Some(T));
        assert_eq!(parse_rfc3339("2024-05-02T01:59:59.123+02:00"), Some(T));
        assert_eq!(parse_rfc3339("2024-05-01 21:59:59.123-02:00"), Some(T));
        assert_eq!(
            parse_rfc3339("2024-05-01T23:59:59.123456789Z"),
            Some(T + 456_789)
        );
        assert_eq!(
            parse_rfc3339("2024-05-02"),
            Some(1_714_608_000 * 1_000_000_000)
        );
        for bad in [
            "2024-13-01",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00Z",
            "yesterday",
            "2024-05-01T12:00:00.Z",
            "2024-5-1",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("90s"), Some(90_000_000_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("2w"), Some(14 * 86_400_000_000_000));
        for bad in ["", "h", "10", "1x", "1h5"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let now = T;
        assert_eq!(parse_time("--since", "now", now).unwrap(), now);
        assert_eq!(
            parse_time("--since", "1h", now).unwrap(),
            now - 3_600_000_000_000
        );
        let e = parse_time("--since", "last tuesday", now).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("--since"), "{e}");
    }

    #[test]
    fn kinds_and_decisions_by_name() {
        assert_eq!(parse_kind("session-start"), Ok(AuditKind::SessionStart));
        assert_eq!(parse_kind("QUERY"), Ok(AuditKind::Query));
        assert!(parse_kind("select").unwrap_err().contains("auth_failure"));
        assert_eq!(parse_decision("deny"), Ok(Decision::Deny));
        assert_eq!(
            parse_decision("review-approved"),
            Ok(Decision::ReviewApproved)
        );
        assert!(parse_decision("maybe").is_err());
    }

    #[test]
    fn search_flags_become_a_request() {
        let f = SearchFlags {
            identity: Some("alice".into()),
            kind: Some(AuditKind::Query),
            decision: Some(Decision::Deny),
            since: Some("1h".into()),
            until: Some("now".into()),
            limit: 10,
            ..Default::default()
        };
        let r = search_request(&f, T).unwrap();
        assert_eq!(r.identity, "alice");
        assert_eq!(r.kind, AuditKind::Query as i32);
        assert_eq!(r.decision, Decision::Deny as i32);
        assert_eq!(
            (r.from_unix_nanos, r.to_unix_nanos),
            (T - 3_600_000_000_000, T)
        );
        assert_eq!(r.limit, 10);
        let bad = SearchFlags {
            since: Some("now".into()),
            until: Some("1h".into()),
            limit: 1,
            ..Default::default()
        };
        assert_eq!(search_request(&bad, T).unwrap_err().exit_code(), 2);
    }

    fn rec(seq: u64, sql: &str, decision: Decision) -> AuditRecord {
        AuditRecord {
            metadata: Some(AuditMetadata {
                id: format!("n1-{seq}"),
                node_id: "n1".into(),
                sequence: seq,
                kind: AuditKind::Query as i32,
                time_unix_nanos: T,
                ..Default::default()
            }),
            identity: Some(AuditIdentity {
                name: "alice".into(),
                ..Default::default()
            }),
            session: Some(AuditSession {
                id: "s1".into(),
                client_address: "10.0.0.9:5000".into(),
                ..Default::default()
            }),
            connection: Some(AuditConnection {
                name: "app".into(),
                ..Default::default()
            }),
            statement: Some(AuditStatement {
                sql: sql.into(),
                ..Default::default()
            }),
            outcome: Some(AuditOutcome {
                decision: decision as i32,
                rows: 3,
                duration_nanos: 1_500_000,
                masked: vec![MaskedCount {
                    rule: "email".into(),
                    column: "users.email".into(),
                    count: 2,
                }],
                ..Default::default()
            }),
            loss: None,
            tls: None,
            prev_hash: vec![0; 32],
            hash: vec![0xab; 32],
        }
    }

    /// A TLS_LOADED record shows what was loaded where a statement shows
    /// its SQL, and its `tls` in JSON (certificate dates past 2262 too).
    #[test]
    fn tls_loads_render() {
        let mut r = rec(5, "", Decision::Allow);
        r.metadata.as_mut().unwrap().kind = AuditKind::TlsLoaded as i32;
        (r.statement, r.outcome) = (None, None);
        r.tls = Some(proto::AuditTls {
            trigger: "sighup".into(),
            server_cert_subject: "CN=sluice dev server".into(),
            server_cert_sha256: vec![0x01; 32],
            server_cert_not_after: 67_090_118_400,
            client_cas: vec![proto::AuditTlsCa {
                subject: "CN=agents CA".into(),
                sha256: vec![0x02; 32],
            }],
            crls: vec![proto::AuditTlsCrl {
                issuer: "CN=agents CA".into(),
                number: "2".into(),
                this_update: 1_795_000_000,
                next_update: 0,
                revoked: 3,
                only_ca_certificates: false,
            }],
            allow_unknown_revocation_status: false,
        });
        assert_eq!(
            sql_cell(&r),
            "sighup: 1 CA 1 CRL 3 revoked, CN=sluice dev server"
        );
        let v = record_json(&r);
        assert_eq!(
            v["tls"]["serverCertNotAfter"], "4096-01-01T00:00:00Z",
            "{v:#}"
        );
        assert_eq!(v["tls"]["crls"][0]["nextUpdate"], "-");
        assert_eq!(v["tls"]["crls"][0]["revoked"], 3);
        assert_eq!(v["tls"]["crls"][0]["onlyCaCertificates"], false);
        assert_eq!(v["tls"]["clientCas"][0]["sha256"], "02".repeat(32));
        assert_eq!(parse_kind("tls-loaded").unwrap(), AuditKind::TlsLoaded);
    }

    /// A RECORDS_LOST record shows what was lost where a statement shows
    /// its SQL, and its `loss` in JSON.
    #[test]
    fn lost_records_render() {
        let mut r = rec(4, "", Decision::Unspecified);
        r.metadata.as_mut().unwrap().kind = AuditKind::RecordsLost as i32;
        r.statement = None;
        r.outcome = None;
        r.loss = Some(proto::AuditLoss {
            reason: "fail_open".into(),
            records: 7,
            bytes: 0,
            since_unix_nanos: T - 1_000_000_000,
            until_unix_nanos: T,
        });
        let resp = SearchResponse {
            records: vec![r.clone()],
            truncated: false,
        };
        let t = search_table(&resp);
        assert!(
            t.contains("records_lost") && t.contains("fail_open (7 records)"),
            "{t}"
        );
        let v = record_json(&r);
        assert_eq!(v["loss"]["records"], 7, "{v:#}");
        assert_eq!(v["loss"]["reason"], "fail_open");
        r.loss.as_mut().unwrap().records = 0;
        r.loss.as_mut().unwrap().bytes = 512;
        r.loss.as_mut().unwrap().reason = "ring_damaged".into();
        assert_eq!(sql_cell(&r), "ring_damaged (512 bytes of ring)");
        assert_eq!(parse_kind("records-lost").unwrap(), AuditKind::RecordsLost);
    }

    #[test]
    fn search_renders() {
        let resp = SearchResponse {
            records: vec![rec(1, "select *\n  from users", Decision::Allow)],
            truncated: true,
        };
        let t = search_table(&resp);
        assert!(t.starts_with("TIME   "), "{t}");
        assert!(
            t.contains("2024-05-01T23:59:59.123Z   n1-1   query   alice      app          s1        allow      3      select * from users"),
            "{t}"
        );
        let v: Value = serde_json::from_str(&search_json(&resp)).unwrap();
        assert_eq!(v["truncated"], true);
        assert_eq!(v["records"][0]["outcome"]["masked"][0]["count"], 2);
        assert_eq!(v["records"][0]["hash"], "ab".repeat(32));
        assert_eq!(v["records"][0]["kind"], "query");
        let mut out = Output::default();
        render_search(&resp, Format::Table, &mut out);
        assert!(out.stderr.contains("raise --limit"), "{}", out.stderr);
    }

    #[test]
    fn verify_renders_positions_and_fails_with_findings() {
        let clean = VerifyResponse {
            nodes_checked: 2,
            nodes_witnessed: 2,
            records_checked: 11,
            findings: vec![],
        };
        let mut out = Output::default();
        render_verify(&clean, Format::Table, &mut out).unwrap();
        assert_eq!(
            out.stdout,
            "audit chain verified: 2 nodes (2 witnessed in the store), 11 records checked, \
             no findings\n"
        );
        let dirty = VerifyResponse {
            nodes_checked: 1,
            nodes_witnessed: 0,
            records_checked: 4,
            findings: vec![
                VerifyFinding {
                    node_id: "n1".into(),
                    kind: FindingKind::Edited as i32,
                    first_sequence: 2,
                    last_sequence: 2,
                    detail: "record 2: checksum mismatch".into(),
                },
                VerifyFinding {
                    node_id: "n1".into(),
                    kind: FindingKind::Deleted as i32,
                    first_sequence: 5,
                    last_sequence: 6,
                    detail: "tail".into(),
                },
            ],
        };
        let mut out = Output::default();
        let e = render_verify(&dirty, Format::Table, &mut out).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            out.stdout.contains("n1     edited    2          record 2"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("n1     deleted   5-6        tail"),
            "{}",
            out.stdout
        );
        let v: Value = serde_json::from_str(&verify_json(&dirty)).unwrap();
        assert_eq!(v["clean"], false);
        assert_eq!(v["findings"][1]["kind"], "deleted");
        assert_eq!(v["findings"][1]["lastSequence"], 6);
    }

    #[test]
    fn replay_marks_what_differs_today() {
        let resp = ReplayResponse {
            records: vec![
                rec(1, "select 1", Decision::Allow),
                rec(2, "select 2", Decision::Allow),
            ],
            evaluations: vec![
                ReplayEvaluation {
                    decision: Decision::Allow as i32,
                    reason: "Policy `p` grants".into(),
                    differs: false,
                },
                ReplayEvaluation {
                    decision: Decision::Deny as i32,
                    reason: "no Policy grants connection `app` to identity `alice`".into(),
                    differs: true,
                },
            ],
            evaluated_version: 9,
        };
        let t = replay_text("s1", &resp);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "session s1: identity alice, connection app, node n1, client 10.0.0.9:5000, 2 records"
        );
        assert!(lines[1].ends_with("NOW"), "{t}");
        assert!(lines[2].ends_with("select 1   -"), "{t}");
        assert!(
            lines[3].ends_with("now: deny (no Policy grants connection `app` to identity `alice`)"),
            "{t}"
        );
        assert!(
            lines[3].contains("allow      3      1.5ms      email=2"),
            "{t}"
        );
        assert_eq!(
            lines[4],
            "evaluated against configuration version 9: 1 record would be decided differently today"
        );
        let v: Value = serde_json::from_str(&replay_json("s1", &resp)).unwrap();
        assert_eq!(v["differences"], 1);
        assert_eq!(v["records"][1]["now"]["decision"], "deny");
        assert_eq!(v["records"][1]["now"]["differs"], true);
        assert_eq!(v["records"][1]["outcome"]["decision"], "allow");

        // Without --evaluate: no NOW column.
        let plain = ReplayResponse {
            records: resp.records.clone(),
            ..Default::default()
        };
        let t = replay_text("s1", &plain);
        assert!(!t.contains("NOW"), "{t}");
        let v: Value = serde_json::from_str(&replay_json("s1", &plain)).unwrap();
        assert!(v.get("evaluatedVersion").is_none());
    }
}
