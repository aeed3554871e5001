//! Metrics, kept per core and merged at scrape time.
//!
//! Each worker owns one [`CoreMetrics`]. Counters are atomics written only by
//! their core (relaxed, on a cache line no other core writes), so the data
//! path never contends; the admin thread reads them all when Prometheus
//! scrapes. The gateway-added-latency HDR histogram sits behind a mutex that
//! only its core and the scraper ever take.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

/// How a client connection ended its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Established,
    AuthFailed,
    Rejected,
    TargetUnavailable,
    ProtocolError,
    CancelRequest,
    TlsError,
    Timeout,
    ClientClosed,
    Shutdown,
    NotReady,
    /// Refused: audit records cannot be stored (fail closed).
    AuditUnavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Established,
        Outcome::AuthFailed,
        Outcome::Rejected,
        Outcome::TargetUnavailable,
        Outcome::ProtocolError,
        Outcome::CancelRequest,
        Outcome::TlsError,
        Outcome::Timeout,
        Outcome::ClientClosed,
        Outcome::Shutdown,
        Outcome::NotReady,
        Outcome::AuditUnavailable,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Established => "established",
            Outcome::AuthFailed => "auth_failed",
            Outcome::Rejected => "rejected",
            Outcome::TargetUnavailable => "target_unavailable",
            Outcome::ProtocolError => "protocol_error",
            Outcome::CancelRequest => "cancel_request",
            Outcome::TlsError => "tls_error",
            Outcome::Timeout => "timeout",
            Outcome::ClientClosed => "client_closed",
            Outcome::Shutdown => "shutdown",
            Outcome::NotReady => "not_ready",
            Outcome::AuditUnavailable => "audit_unavailable",
        }
    }
}

/// Why authentication or authorization failed.
pub const AUTH_REASONS: [&str; 19] = [
    "bad_password",
    "unknown_identity",
    "unknown_connection",
    "not_granted",
    "jwt_expired",
    "jwt_audience",
    "jwt_issuer",
    "jwt_signature",
    "jwt_subject",
    "jwt_invalid",
    "tls_required",
    "bad_method",
    // An identity that authenticates with a client certificate: none was
    // presented, or one of someone else.
    "no_certificate",
    "bad_certificate",
    // A client certificate the TLS handshake refused (not signed by the
    // client CA, expired, not for client authentication…), before any
    // identity was named.
    "invalid_certificate",
    // A client certificate a revocation list (`tls.client_crl_files`)
    // revokes, or whose issuer has no list.
    "revoked_certificate",
    "unknown_revocation_status",
    // SCRAM channel binding that does not match the connection, or a
    // client that says it could bind but was not offered it (a downgrade).
    "channel_binding",
    // A malformed or unexpected message inside the authentication
    // exchange (08P01), once the startup named an identity.
    "protocol_violation",
];

/// Results of cancel requests received.
pub const CANCEL_RESULTS: [&str; 4] = ["forwarded", "unknown_key", "rate_limited", "target_error"];

/// What became of a connection's PROXY protocol header (see `net::proxy`):
/// a client address taken from it, a header without one (v2 `LOCAL`, v1
/// `UNKNOWN`: the peer's address is kept), or the connection refused.
pub const PROXY_RESULTS: [&str; 5] = [
    "accepted",
    "no_address",
    "untrusted",
    "missing",
    "malformed",
];

/// One core's counters.
pub struct CoreMetrics {
    pub worker: usize,
    pub driver: &'static str,
    pub connections_open: AtomicI64,
    pub sessions_open: AtomicI64,
    outcomes: [AtomicU64; Outcome::ALL.len()],
    auth_failures: [AtomicU64; AUTH_REASONS.len()],
    cancels: [AtomicU64; CANCEL_RESULTS.len()],
    proxy_headers: [AtomicU64; PROXY_RESULTS.len()],
    pub statements: AtomicU64,
    pub bytes_client_to_target: AtomicU64,
    pub bytes_target_to_client: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Sessions ended because a new snapshot revoked their grant.
    pub sessions_revoked: AtomicU64,
    /// JWT sessions ended because their token expired.
    pub sessions_expired: AtomicU64,
    /// Reads of a target's column catalog (column origins): whole, continued
    /// with the relations created since, and failed.
    pub origin_reads: AtomicU64,
    pub origin_reads_continued: AtomicU64,
    pub origin_reads_failed: AtomicU64,
    /// Values masked, by rule and by column name (locked by this core only
    /// when a read had hits, and by the scrape).
    masked_rules: Mutex<std::collections::HashMap<String, u64>>,
    masked_columns: Mutex<std::collections::HashMap<String, u64>>,
    added: Mutex<Histogram<u64>>,
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Add on a counter only its own core writes: a plain load and store, no
/// locked read-modify-write.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Add `n` to `key`'s count. A key is allocated only the first time a rule
/// or column is seen on this core; later counts find it by reference.
fn add(map: &mut std::collections::HashMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.to_owned(), n);
        }
    }
}

impl CoreMetrics {
    /// Move a session's masking hit counts into this core's totals.
    pub fn count_masked(&self, m: &mut crate::session::masker::TargetMasker) {
        if let Ok(mut rules) = self.masked_rules.lock() {
            m.take_hits(|rule, n| add(&mut rules, rule, n));
        }
        if let Ok(mut cols) = self.masked_columns.lock() {
            m.take_column_hits(|col, n| add(&mut cols, &String::from_utf8_lossy(col), n));
        }
    }

    /// Add hits counted outside a session's masker (the login messages).
    pub fn count_hits(&self, engine: &crate::mask::Engine, hits: &mut crate::mask::Hits) {
        if let Ok(mut rules) = self.masked_rules.lock() {
            for (rule, n) in hits.iter() {
                if n > 0 {
                    add(&mut rules, engine.rule_name(rule), n);
                }
            }
        }
        hits.clear();
    }

    pub fn new(worker: usize, driver: &'static str) -> Self {
        CoreMetrics {
            worker,
            driver,
            connections_open: AtomicI64::new(0),
            sessions_open: AtomicI64::new(0),
            outcomes: Default::default(),
            auth_failures: Default::default(),
            cancels: Default::default(),
            proxy_headers: Default::default(),
            statements: AtomicU64::new(0),
            bytes_client_to_target: AtomicU64::new(0),
            bytes_target_to_client: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            sessions_revoked: AtomicU64::new(0),
            sessions_expired: AtomicU64::new(0),
            origin_reads: AtomicU64::new(0),
            origin_reads_continued: AtomicU64::new(0),
            origin_reads_failed: AtomicU64::new(0),
            masked_rules: Mutex::new(Default::default()),
            masked_columns: Mutex::new(Default::default()),
            // 1 ns .. 60 s, 3 significant digits.
            added: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }

    pub fn outcome(&self, o: Outcome) {
        let i = Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0);
        bump(&self.outcomes[i], 1);
    }

    pub fn auth_failure(&self, reason: &str) {
        if let Some(i) = AUTH_REASONS.iter().position(|r| *r == reason) {
            bump(&self.auth_failures[i], 1);
        }
    }

    pub fn cancel(&self, result: &str) {
        if let Some(i) = CANCEL_RESULTS.iter().position(|r| *r == result) {
            bump(&self.cancels[i], 1);
        }
    }

    /// Count a PROXY protocol outcome (one of [`PROXY_RESULTS`]).
    pub fn proxy_header(&self, result: &str) {
        if let Some(i) = PROXY_RESULTS.iter().position(|r| *r == result) {
            bump(&self.proxy_headers[i], 1);
        }
    }

    /// Record the time the gateway added to one statement, in nanoseconds.
    #[inline]
    pub fn record_added(&self, nanos: u64) {
        if let Ok(mut h) = self.added.lock() {
            h.saturating_record(nanos.max(1));
        }
    }
}

/// All cores' metrics plus process-wide state, rendered on scrape.
pub struct Registry {
    pub cores: Vec<Arc<CoreMetrics>>,
}

fn sum<F: Fn(&CoreMetrics) -> u64>(cores: &[Arc<CoreMetrics>], f: F) -> u64 {
    cores.iter().map(|c| f(c)).sum()
}

impl Registry {
    /// Prometheus text exposition format (0.0.4).
    pub fn render(&self, ready: bool, snapshot_version: u64) -> String {
        let c = &self.cores;
        let mut s = String::with_capacity(4096);
        let _ = writeln!(
            s,
            "# HELP sluice_up 1 while the process runs.\n# TYPE sluice_up gauge\nsluice_up 1"
        );
        let _ = writeln!(
            s,
            "# HELP sluice_ready 1 when the node accepts sessions.\n# TYPE sluice_ready gauge\nsluice_ready {}",
            ready as u8
        );
        let _ = writeln!(
            s,
            "# HELP sluice_snapshot_version Version of the policy snapshot applied.\n# TYPE sluice_snapshot_version gauge\nsluice_snapshot_version {snapshot_version}"
        );
        let _ = writeln!(
            s,
            "# HELP sluice_mask_kernel_info The masking engine's classification kernel (SLUICE_MASK_KERNEL, else the fastest the CPU runs).\n# TYPE sluice_mask_kernel_info gauge\nsluice_mask_kernel_info{{kernel=\"{}\"}} 1",
            crate::mask::Kernel::best().name()
        );
        let _ = writeln!(s, "# HELP sluice_worker_info Data-plane workers and their I/O driver.\n# TYPE sluice_worker_info gauge");
        for m in c {
            let _ = writeln!(
                s,
                "sluice_worker_info{{worker=\"{}\",driver=\"{}\"}} 1",
                m.worker, m.driver
            );
        }
        // Per worker: the kernel spreads connections over the workers'
        // SO_REUSEPORT listeners by a hash, so an SRE can see one hot core.
        let per_worker = |s: &mut String,
                          name: &str,
                          help: &str,
                          kind: &str,
                          v: &dyn Fn(&CoreMetrics) -> i64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for m in c {
                let _ = writeln!(s, "{name}{{worker=\"{}\"}} {}", m.worker, v(m));
            }
        };
        per_worker(
            &mut s,
            "sluice_worker_connections_open",
            "Client connections open now, by worker.",
            "gauge",
            &|m| m.connections_open.load(Relaxed),
        );
        per_worker(
            &mut s,
            "sluice_worker_statements_total",
            "Statements relayed, by worker.",
            "counter",
            &|m| m.statements.load(Relaxed) as i64,
        );
        let _ = writeln!(s, "# HELP sluice_connections_open Client connections open now.\n# TYPE sluice_connections_open gauge");
        let open: i64 = c.iter().map(|m| m.connections_open.load(Relaxed)).sum();
        let _ = writeln!(s, "sluice_connections_open {open}");
        let _ = writeln!(s, "# HELP sluice_sessions_open Sessions relaying to a target now.\n# TYPE sluice_sessions_open gauge");
        let sess: i64 = c.iter().map(|m| m.sessions_open.load(Relaxed)).sum();
        let _ = writeln!(s, "sluice_sessions_open {sess}");
        let _ = writeln!(s, "# HELP sluice_connections_total Client connections by handshake outcome.\n# TYPE sluice_connections_total counter");
        for (i, o) in Outcome::ALL.iter().enumerate() {
            let v = sum(c, |m| m.outcomes[i].load(Relaxed));
            let _ = writeln!(
                s,
                "sluice_connections_total{{outcome=\"{}\"}} {v}",
                o.label()
            );
        }
        let _ = writeln!(s, "# HELP sluice_auth_failures_total Refused authentications and authorizations by reason.\n# TYPE sluice_auth_failures_total counter");
        for (i, r) in AUTH_REASONS.iter().enumerate() {
            let v = sum(c, |m| m.auth_failures[i].load(Relaxed));
            let _ = writeln!(s, "sluice_auth_failures_total{{reason=\"{r}\"}} {v}");
        }
        let _ = writeln!(s, "# HELP sluice_cancel_requests_total Cancel requests received, by result.\n# TYPE sluice_cancel_requests_total counter");
        for (i, r) in CANCEL_RESULTS.iter().enumerate() {
            let v = sum(c, |m| m.cancels[i].load(Relaxed));
            let _ = writeln!(s, "sluice_cancel_requests_total{{result=\"{r}\"}} {v}");
        }
        let _ = writeln!(s, "# HELP sluice_proxy_protocol_headers_total Connections by what their PROXY protocol header gave (proxy_protocol configured): a client address (accepted), none (no_address: v2 LOCAL, v1 UNKNOWN; the peer's address is kept), or a refusal (a header from an untrusted peer, none where required, a malformed one).\n# TYPE sluice_proxy_protocol_headers_total counter");
        for (i, r) in PROXY_RESULTS.iter().enumerate() {
            let v = sum(c, |m| m.proxy_headers[i].load(Relaxed));
            let _ = writeln!(
                s,
                "sluice_proxy_protocol_headers_total{{result=\"{r}\"}} {v}"
            );
        }
        let _ = writeln!(s, "# HELP sluice_statements_total Statements relayed (Query and Execute messages).\n# TYPE sluice_statements_total counter");
        let _ = writeln!(
            s,
            "sluice_statements_total {}",
            sum(c, |m| m.statements.load(Relaxed))
        );
        let _ = writeln!(s, "# HELP sluice_protocol_errors_total Sessions ended by a malformed or oversize frame.\n# TYPE sluice_protocol_errors_total counter");
        let _ = writeln!(
            s,
            "sluice_protocol_errors_total {}",
            sum(c, |m| m.protocol_errors.load(Relaxed))
        );
        let _ = writeln!(s, "# HELP sluice_column_catalog_reads_total Reads of a target's column catalog (column origins for column rules), by outcome and by read (whole, or continued with the relations created since).\n# TYPE sluice_column_catalog_reads_total counter");
        let reads = [
            (
                r#"outcome="ok",read="whole""#,
                sum(c, |m| m.origin_reads.load(Relaxed)),
            ),
            (
                r#"outcome="ok",read="continued""#,
                sum(c, |m| m.origin_reads_continued.load(Relaxed)),
            ),
            (
                r#"outcome="failed""#,
                sum(c, |m| m.origin_reads_failed.load(Relaxed)),
            ),
        ];
        for (labels, n) in reads {
            let _ = writeln!(s, "sluice_column_catalog_reads_total{{{labels}}} {n}");
        }
        let _ = writeln!(s, "# HELP sluice_sessions_revoked_total Open sessions ended at their next statement because a new snapshot revoked their grant or key.\n# TYPE sluice_sessions_revoked_total counter");
        let _ = writeln!(
            s,
            "sluice_sessions_revoked_total {}",
            sum(c, |m| m.sessions_revoked.load(Relaxed))
        );
        let _ = writeln!(s, "# HELP sluice_sessions_expired_total JWT sessions ended at their first statement after their token expired (exp plus the issuer's leeway).\n# TYPE sluice_sessions_expired_total counter");
        let _ = writeln!(
            s,
            "sluice_sessions_expired_total {}",
            sum(c, |m| m.sessions_expired.load(Relaxed))
        );
        let mut rules: std::collections::BTreeMap<String, u64> = Default::default();
        let mut cols: std::collections::BTreeMap<String, u64> = Default::default();
        for m in c {
            if let Ok(r) = m.masked_rules.lock() {
                for (k, v) in r.iter() {
                    *rules.entry(k.clone()).or_default() += v;
                }
            }
            if let Ok(r) = m.masked_columns.lock() {
                for (k, v) in r.iter() {
                    *cols.entry(k.clone()).or_default() += v;
                }
            }
        }
        let _ = writeln!(s, "# HELP sluice_masked_values_total Values masked in results, by rule.\n# TYPE sluice_masked_values_total counter");
        for (k, v) in &rules {
            let _ = writeln!(s, "sluice_masked_values_total{{rule=\"{}\"}} {v}", label(k));
        }
        let _ = writeln!(s, "# HELP sluice_masked_column_values_total Values masked in results, by column name.\n# TYPE sluice_masked_column_values_total counter");
        for (k, v) in &cols {
            let _ = writeln!(
                s,
                "sluice_masked_column_values_total{{column=\"{}\"}} {v}",
                label(k)
            );
        }
        let _ = writeln!(s, "# HELP sluice_bytes_total Bytes relayed, by direction.\n# TYPE sluice_bytes_total counter");
        let _ = writeln!(
            s,
            "sluice_bytes_total{{direction=\"client_to_target\"}} {}",
            sum(c, |m| m.bytes_client_to_target.load(Relaxed))
        );
        let _ = writeln!(
            s,
            "sluice_bytes_total{{direction=\"target_to_client\"}} {}",
            sum(c, |m| m.bytes_target_to_client.load(Relaxed))
        );

        // Merge the per-core histograms; each lock is held only for the copy.
        let mut merged =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
        for m in c {
            if let Ok(h) = m.added.lock() {
                let _ = merged.add(&*h);
            }
        }
        let _ = writeln!(s, "# HELP sluice_gateway_added_seconds The gateway's own time per statement: from each read's completion to its forward being issued, request plus response, merged across cores (socket send time and wake-ups are not in it).\n# TYPE sluice_gateway_added_seconds summary");
        for q in [0.5, 0.9, 0.99, 0.999] {
            let v = if merged.is_empty() {
                0
            } else {
                merged.value_at_quantile(q)
            };
            let _ = writeln!(
                s,
                "sluice_gateway_added_seconds{{quantile=\"{q}\"}} {:.9}",
                v as f64 / 1e9
            );
        }
        let total_ns: f64 = merged
            .iter_recorded()
            .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
            .sum();
        let _ = writeln!(s, "sluice_gateway_added_seconds_sum {:.9}", total_ns / 1e9);
        let _ = writeln!(s, "sluice_gateway_added_seconds_count {}", merged.len());
        s
    }
}
