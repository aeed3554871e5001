//! Human output: aligned tables for `get` and `nodes`. Pure functions of
//! what the server returned (and, for ages, of the time passed in).

use proto::{resource::Spec, ListNodesResponse, Resource};

/// Longest ERROR cell in the `nodes` table; `-o json` has the whole text.
pub const MAX_ERROR_CELL: usize = 48;

/// Columns left-aligned, separated by three spaces, no trailing blanks.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// The table for resources of one kind.
pub fn resources(kind: &str, rs: &[Resource]) -> String {
    let header: &[&str] = match kind {
        "Connection" => &["NAME", "HOST", "PORT", "DATABASE", "USER", "AUTH", "TLS"],
        "IdentityProvider" => &["NAME", "ISSUER", "AUDIENCE", "JWKS"],
        "ApiKey" => &["NAME", "IDENTITY", "GROUPS"],
        "ClientCertificate" => &["NAME", "IDENTITY", "SPIFFE ID", "SUBJECT CN", "GROUPS"],
        "Group" => &["NAME", "MEMBERS"],
        "MaskingProfile" => &["NAME", "ENABLED", "COLUMN RULES"],
        _ => &["NAME", "CONNECTIONS", "IDENTITIES", "GROUPS"],
    };
    render(header, &rs.iter().map(row).collect::<Vec<_>>())
}

fn row(r: &Resource) -> Vec<String> {
    let mut cells = vec![r.name.clone()];
    match &r.spec {
        Some(Spec::Connection(c)) => cells.extend([
            c.host.clone(),
            c.port.to_string(),
            c.database.clone(),
            c.user.clone(),
            or_dash(&c.auth),
            c.tls.as_ref().map_or("-".into(), |t| t.mode.clone()),
        ]),
        Some(Spec::IdentityProvider(p)) => cells.extend([
            p.issuer.clone(),
            list(&p.audience),
            if p.jwks_url.is_empty() {
                "inline".into()
            } else {
                p.jwks_url.clone()
            },
        ]),
        Some(Spec::ApiKey(k)) => cells.extend([k.identity.clone(), list(&k.groups)]),
        Some(Spec::ClientCertificate(c)) => cells.extend([
            c.identity.clone(),
            or_dash(&c.spiffe_id),
            or_dash(&c.subject_cn),
            list(&c.groups),
        ]),
        Some(Spec::Group(g)) => cells.push(list(&g.members)),
        Some(Spec::Policy(p)) => {
            cells.extend([list(&p.connections), list(&p.identities), list(&p.groups)])
        }
        Some(Spec::MaskingProfile(m)) => {
            let v: serde_json::Value = serde_json::from_str(&m.json).unwrap_or_default();
            cells.extend([
                v["enabled"].as_bool().unwrap_or(true).to_string(),
                v["columns"].as_array().map_or(0, |a| a.len()).to_string(),
            ])
        }
        None => {}
    }
    cells
}

/// `850ms`, `1.2s`, `42s`, `3m04s`, `2h05m`, `3d04h`; `-` for never.
pub fn age(ms: i64) -> String {
    if ms < 0 {
        return "-".into();
    }
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..10 => format!("{}.{}s", s, (ms % 1000) / 100),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long until `unix_s` (a certificate's notAfter) from `now_ms`:
/// `89d03h`, `3y` past a thousand days, `expired`, or `-` for 0 (no TLS).
pub fn time_left(unix_s: i64, now_ms: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    match unix_s.saturating_mul(1000).saturating_sub(now_ms) {
        _ if unix_s == 0 => "-".into(),
        left if left <= 0 => "expired".into(),
        left if left >= 1000 * DAY_MS => format!("{}y", left / (365 * DAY_MS)),
        left => age(left),
    }
}

/// At most `max` characters, the last one `…` when cut; one line.
pub fn truncate(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The `nodes` table and a footer with the latest version. `now_ms` is the
/// Unix time in milliseconds the ages are counted to.
pub fn nodes(resp: &ListNodesResponse, now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = resp
        .nodes
        .iter()
        .map(|n| {
            let node = n.node.clone().unwrap_or_default();
            let latest = n.latest_version.max(resp.latest_version);
            vec![
                or_dash(&node.id),
                or_dash(&node.address),
                node.cores.to_string(),
                or_dash(&node.build),
                time_left(node.tls_cert_not_after, now_ms),
                n.applied_version.to_string(),
                (latest - n.applied_version).max(0).to_string(),
                if n.last_heartbeat_unix_ms > 0 {
                    age((now_ms - n.last_heartbeat_unix_ms).max(0))
                } else {
                    "-".into()
                },
                if n.last_error.is_empty() {
                    "-".into()
                } else {
                    truncate(&n.last_error, MAX_ERROR_CELL)
                },
            ]
        })
        .collect();
    let mut out = render(
        &[
            "ID", "ADDRESS", "CORES", "BUILD", "CERT", "VERSION", "LAG", "AGE", "ERROR",
        ],
        &rows,
    );
    out.push_str(&format!(
        "{} node{}, latest version {}\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        resp.latest_version
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Node, NodeStatus};

    #[test]
    fn columns_align_without_trailing_blanks() {
        let t = render(
            &["NAME", "HOST"],
            &[
                vec!["orders".into(), "db".into()],
                vec!["x".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME     HOST\norders   db\nx\n");
    }

    #[test]
    fn resource_tables_per_kind() {
        let rs = crate::resources::parse_documents(
            r#"
apiVersion: sluice.dev/v1
kind: Connection
metadata: { name: orders }
spec: { host: db, database: orders, user: gw, tls: { mode: require } }
---
apiVersion: sluice.dev/v1
kind: Connection
metadata: { name: billing-replica }
spec: { host: 10.1.2.3, port: 6432, database: billing, user: ro }
"#,
            "t",
        )
        .unwrap();
        assert_eq!(
            resources("Connection", &rs),
            "NAME              HOST       PORT   DATABASE   USER   AUTH   TLS\n\
             orders            db         5432   orders     gw     auto   require\n\
             billing-replica   10.1.2.3   6432   billing    ro     auto   -\n"
        );

        let rs = crate::resources::parse_documents(
            "apiVersion: sluice.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {connections: [orders, billing], groups: [analysts]}\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            resources("Policy", &rs),
            "NAME   CONNECTIONS      IDENTITIES   GROUPS\np      orders,billing   -            analysts\n"
        );

        let rs = crate::resources::parse_documents(
            "apiVersion: sluice.dev/v1\nkind: ApiKey\nmetadata: {name: agent-1}\nspec: {identity: agent-1}\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            resources("ApiKey", &rs),
            "NAME      IDENTITY   GROUPS\nagent-1   agent-1    -\n"
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(1_234), "1.2s");
        assert_eq!(age(42_000), "42s");
        assert_eq!(age(184_000), "3m04s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(age(-1), "-");
    }

    #[test]
    fn certificates_show_the_time_they_have_left() {
        assert_eq!(time_left(0, 5_000), "-");
        assert_eq!(time_left(5, 5_000), "expired");
        assert_eq!(time_left(4, 5_000), "expired");
        assert_eq!(time_left(7_205, 5_000), "2h00m");
        assert_eq!(time_left(5 + 2000 * 86_400, 5_000), "5y");
        assert_eq!(time_left(67_090_118_400, 1_795_000_000_000), "2070y");
        assert!(!time_left(i64::MAX, 5_000).is_empty());
    }

    #[test]
    fn errors_are_cut_to_one_short_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\nb", 10), "a b");
        let t = truncate(&"x".repeat(100), 10);
        assert_eq!(t.chars().count(), 10);
        assert!(t.ends_with('…'));
    }

    #[test]
    fn nodes_table_shows_lag_age_and_latest() {
        let resp = ListNodesResponse {
            latest_version: 12,
            nodes: vec![
                NodeStatus {
                    node: Some(Node {
                        id: "dp-1".into(),
                        address: "10.0.0.5:6432".into(),
                        cores: 8,
                        build: "0.1.0".into(),
                        tls_cert_not_after: (1_000_000 + 3 * 86_400_000) / 1000,
                        crl_next_update: 0,
                    }),
                    applied_version: 12,
                    latest_version: 12,
                    last_error: String::new(),
                    last_heartbeat_unix_ms: 1_000_000 - 1_200,
                },
                NodeStatus {
                    node: Some(Node {
                        id: "dp-2".into(),
                        address: "10.0.0.6:6432".into(),
                        cores: 4,
                        build: "0.1.0".into(),
                        ..Default::default()
                    }),
                    applied_version: 9,
                    latest_version: 12,
                    last_error: format!("doc 1 (Connection orders): {}", "y".repeat(80)),
                    last_heartbeat_unix_ms: 1_000_000 - 65_000,
                },
            ],
        };
        let t = nodes(&resp, 1_000_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].starts_with(
                "ID     ADDRESS         CORES   BUILD   CERT    VERSION   LAG   AGE     ERROR"
            ),
            "{t}"
        );
        assert!(
            lines[1].starts_with(
                "dp-1   10.0.0.5:6432   8       0.1.0   3d00h   12        0     1.2s    -"
            ),
            "{t}"
        );
        assert!(
            lines[2].contains(" -       9         3     1m05s   doc 1 (Connection orders): "),
            "{t}"
        );
        assert!(lines[2].ends_with('…'), "{t}");
        assert_eq!(lines[3], "2 nodes, latest version 12");
    }
}
