//! Static configuration (`sluice-dp --config FILE.yaml`).
//!
//! The file is parsed into typed structs (unknown fields are refused), then
//! [`Config::validate`] checks cross-references and values. Every error names
//! the field that is wrong, as a path such as `connections[0].target.port`.
//! Relative file paths are resolved against the directory of the config file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration error, always naming the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
}

impl ConfigError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing PostgreSQL listeners (`host:port`).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Admin HTTP listener serving /metrics, /healthz, /readyz.
    #[serde(default = "default_admin")]
    pub admin_listen: String,
    /// Number of data-plane worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// io_uring (default when the kernel allows it), or epoll.
    #[serde(default)]
    pub driver: DriverChoice,
    /// 0–255; embedded in minted cancel keys so a cancel can be routed.
    #[serde(default)]
    pub node_id: u8,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub connections: Vec<Connection>,
    #[serde(default)]
    pub identities: Vec<Identity>,
    #[serde(default)]
    pub jwt_issuers: Vec<JwtIssuer>,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Named masking profiles (see `mask::MaskingProfile`); `default`
    /// overrides the built-in one.
    #[serde(default)]
    pub masking_profiles: std::collections::BTreeMap<String, crate::mask::MaskingProfile>,
    /// Take connections, identities and grants from a control plane instead
    /// of this file.
    #[serde(default)]
    pub control_plane: Option<ControlPlane>,
    /// The audit trail: per-core rings, the local spool, shipping.
    #[serde(default)]
    pub audit: Audit,
    /// Client addresses from the load balancers in front of the node
    /// (PROXY protocol); off when absent.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// The file this was read from, as parsed (set by [`Config::load`]):
    /// what a reload compares with.
    #[serde(skip)]
    pub source: Option<ConfigSource>,
}

/// 16 random bytes: what a file that cannot be hashed contributes to a
/// digest (so it never equals another).
fn rand_bytes() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

/// A configuration file as read (see [`Config::source`]).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub raw: serde_yaml::Value,
}

/// The sections of the file a reload (SIGHUP, static mode) applies: what
/// the policy snapshot is built of. The others take a restart.
pub const RELOADABLE: [&str; 5] = [
    "connections",
    "identities",
    "jwt_issuers",
    "grants",
    "masking_profiles",
];

impl ConfigSource {
    /// The top-level sections other than [`RELOADABLE`] that differ
    /// between `self` and `new` (as written: a section left out and one
    /// written with its defaults differ).
    pub fn restart_only_changes(&self, new: &ConfigSource) -> Vec<String> {
        let keys = |v: &serde_yaml::Value| -> Vec<String> {
            v.as_mapping()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut all = keys(&self.raw);
        all.extend(keys(&new.raw));
        all.sort();
        all.dedup();
        all.into_iter()
            .filter(|k| !RELOADABLE.contains(&k.as_str()))
            .filter(|k| self.raw.get(k.as_str()) != new.raw.get(k.as_str()))
            .collect()
    }
}

/// `proxy_protocol:`: the load balancers in front of the node, which start
/// each connection with a PROXY protocol header (v1 or v2, as HAProxy, AWS
/// NLB, Envoy and others send) saying where their client connected from.
/// That address is the session's client address in audit records and logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// The peers whose headers are believed: addresses or CIDRs
    /// (`10.0.4.0/28`, `127.0.0.1`). A header from any other peer is
    /// refused, so that a client cannot choose the address it is audited
    /// under; a client inside these networks can, so they hold the load
    /// balancers' own addresses, not clients'.
    pub trusted: Vec<String>,
    /// Refuse a connection that does not start with a header (a client
    /// that bypasses the load balancer). Default: it is served under its
    /// peer's address.
    #[serde(default)]
    pub required: bool,
}

impl ProxyProtocol {
    /// The trusted networks; an error names the entry.
    pub fn trusted_nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        if self.trusted.is_empty() {
            return Err(ConfigError::field(
                "proxy_protocol.trusted",
                "at least one address or CIDR is required",
            ));
        }
        self.trusted
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ConfigError::field(
                            format!("proxy_protocol.trusted[{i}]"),
                            format!("`{t}` is not an IP address or a CIDR such as 10.0.0.0/8"),
                        )
                    })
            })
            .collect()
    }
}

/// `audit:`: where and how the node keeps audit records until the control
/// plane has them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// Default: on with a control plane (records are shipped to it), off
    /// without one. On without a control plane, records are only spooled
    /// locally: nothing deletes them, so the spool fills up to its quota.
    pub enabled: Option<bool>,
    /// Spool and ring files; relative paths are resolved against the
    /// config file's directory (or the working directory without a file).
    /// `--audit-dir` overrides it.
    pub spool_dir: PathBuf,
    /// Where the per-core ring files live. Default: a directory of their
    /// own under `/dev/shm` (tmpfs, named after `spool_dir`), or `spool_dir`
    /// without a writable `/dev/shm`. Relative paths resolve like
    /// `spool_dir`.
    pub ring_dir: Option<PathBuf>,
    /// Most bytes the spool's segment files may take.
    pub quota_bytes: u64,
    /// What happens to statements when records cannot be kept.
    pub when_full: WhenFullChoice,
    /// When the spool syncs appended records to disk.
    pub fsync: FsyncChoice,
    /// Size of each core's ring file (bytes of records in flight between a
    /// core and the spool).
    pub ring_bytes: u64,
    /// SQL text kept per record; longer text is cut (and marked truncated).
    pub max_sql_bytes: usize,
    /// How often records move from the core rings to the spool: one
    /// append (and, with `fsync: batch`, one fdatasync) per interval at
    /// most (default 50 ms). Records wait in the rings meanwhile, where
    /// they survive the process but not a power loss: this is the window
    /// a power loss can take. Each fdatasync costs the same whatever the
    /// batch holds, so shorter intervals cost throughput (measured in
    /// bench/RESULTS.md).
    pub flush_interval_ms: u64,
    /// Authentication-failure records each core writes per second at most,
    /// in bursts of up to ten seconds' worth (0: every one). Anyone who can
    /// reach the port can fail a login, and each failure is a record: a
    /// flood of them would otherwise fill the spool while the control
    /// plane is away (then statements are refused, `fail_closed`) or take
    /// the room of other records. Failures past the rate are counted
    /// (`sluice_auth_failures_total`) and reported in the trail by number
    /// (RECORDS_LOST, reason `auth_failures_rate_limited`).
    pub auth_failures_per_second: u32,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: None,
            spool_dir: PathBuf::from("sluice-audit"),
            ring_dir: None,
            quota_bytes: 1 << 30,
            when_full: WhenFullChoice::FailClosed,
            fsync: FsyncChoice::Batch,
            ring_bytes: 16 << 20,
            max_sql_bytes: 4096,
            flush_interval_ms: 50,
            auth_failures_per_second: 100,
        }
    }
}

impl Audit {
    /// Whether audit runs, given whether there is a control plane.
    pub fn is_enabled(&self, control_plane: bool) -> bool {
        self.enabled.unwrap_or(control_plane)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.spool_dir.as_os_str().is_empty() {
            return Err(ConfigError::field("audit.spool_dir", "must not be empty"));
        }
        if self.quota_bytes < 4096 {
            return Err(ConfigError::field(
                "audit.quota_bytes",
                "must be at least 4096",
            ));
        }
        let (lo, hi) = (
            crate::audit::ring::MIN_RING_BYTES,
            crate::audit::ring::MAX_RING_BYTES,
        );
        if !(lo..=hi).contains(&self.ring_bytes) {
            return Err(ConfigError::field(
                "audit.ring_bytes",
                format!("must be between {lo} and {hi}"),
            ));
        }
        if !(16..=256 * 1024).contains(&self.max_sql_bytes) {
            return Err(ConfigError::field(
                "audit.max_sql_bytes",
                "must be between 16 and 262144",
            ));
        }
        if !(1..=1000).contains(&self.flush_interval_ms) {
            return Err(ConfigError::field(
                "audit.flush_interval_ms",
                "must be between 1 and 1000",
            ));
        }
        if (self.max_sql_bytes as u64) * 16 > self.ring_bytes {
            return Err(ConfigError::field(
                "audit.max_sql_bytes",
                "at most 1/16 of audit.ring_bytes",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFullChoice {
    /// Refuse new statements with SQLSTATE 53100 (the default).
    #[default]
    FailClosed,
    /// Run them unaudited, counted in `sluice_audit_unaudited_total` and
    /// logged.
    FailOpen,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncChoice {
    /// fdatasync after every batch appended (the default).
    #[default]
    Batch,
    /// Leave write-back to the kernel.
    Never,
}

/// Where the node subscribes for snapshots, and how it proves who it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// `https://host:port` (mTLS), or `http://` on a loopback address only.
    /// Tried in order; the node moves to the next when one fails.
    pub urls: Vec<String>,
    /// CA that signed the control plane's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This node's client certificate and key (mTLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Node id in membership and in the audit trail (default:
    /// `<hostname>-<first listen port>`): 1 to 128 of `A-Z a-z 0-9 . _ -`,
    /// as the control plane's audit store names nodes.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Address clients reach this node at (default: the first listener).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Seconds between heartbeats to the control plane.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
}

fn default_heartbeat() -> u64 {
    5
}

/// Whether `n` is a node name the control plane's audit store takes
/// (`controlplane::audit::sink::validate_node_id`).
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n != "."
        && n != ".."
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ControlPlane {
    /// Check the URLs, TLS files and node name; errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = &self.node_name {
            if !valid_node_name(n) {
                return Err(ConfigError::field(
                    "control_plane.node_name",
                    format!(
                        "`{n}`: 1 to 128 characters of A-Z a-z 0-9 . _ - \
                         (the control plane's audit store refuses others)"
                    ),
                ));
            }
        }
        if self.urls.is_empty() {
            return Err(ConfigError::field(
                "control_plane.urls",
                "at least one control-plane URL",
            ));
        }
        for (i, u) in self.urls.iter().enumerate() {
            let field = format!("control_plane.urls[{i}]");
            let (scheme, rest) = u
                .split_once("://")
                .ok_or_else(|| ConfigError::field(&field, format!("`{u}` is not a URL")))?;
            let host = host_of(rest);
            match scheme {
                "https" => {
                    for (f, v) in [
                        ("ca_file", &self.ca_file),
                        ("cert_file", &self.cert_file),
                        ("key_file", &self.key_file),
                    ] {
                        if v.is_none() {
                            return Err(ConfigError::field(
                                format!("control_plane.{f}"),
                                "required for an https:// control plane (mutual TLS)",
                            ));
                        }
                    }
                }
                "http" if is_loopback(host) => {}
                "http" => {
                    return Err(ConfigError::field(
                        &field,
                        format!("plaintext http:// is allowed only on loopback, not `{host}`: use https:// with ca_file, cert_file and key_file"),
                    ))
                }
                other => {
                    return Err(ConfigError::field(
                        &field,
                        format!("scheme `{other}`: use https:// (or http:// on loopback)"),
                    ))
                }
            }
        }
        if self.heartbeat_seconds == 0 {
            return Err(ConfigError::field(
                "control_plane.heartbeat_seconds",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Host part of `host:port/path` (brackets of IPv6 removed).
fn host_of(rest: &str) -> &str {
    let authority = rest.split('/').next().unwrap_or("");
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Whether `host` names the loopback interface.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:6432".to_string()]
}
fn default_admin() -> String {
    "127.0.0.1:9187".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain presented to clients.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Refuse clients that do not negotiate TLS.
    #[serde(default)]
    pub required: bool,
    /// PEM CA certificate(s) that sign client certificates: clients may
    /// present one (identities with `client_cert` authenticate with it).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// PEM certificate revocation lists (`X509 CRL`) of the client CAs: a
    /// client certificate one of them revokes is refused in the TLS
    /// handshake, and the sessions it opened end at their next statement
    /// once a reloaded list revokes it. With any list given, a client
    /// certificate whose issuer has none is refused too (its status is
    /// unknown), unless `client_crl_allow_unknown`. One list per issuer
    /// (the handshake consults an issuer's first only: a second does not
    /// load). Needs `client_ca_file`.
    #[serde(default)]
    pub client_crl_files: Vec<PathBuf>,
    /// Accept client certificates whose issuer has no list among
    /// `client_crl_files` (default: refuse them).
    #[serde(default)]
    pub client_crl_allow_unknown: bool,
    /// Seconds between checks of these files for new contents (certificate
    /// rotation, a new revocation list); 0: only on SIGHUP. New contents
    /// apply to new connections; a set that does not load is logged and
    /// counted, and the last good one stays in use.
    #[serde(default = "default_tls_reload_interval_s")]
    pub reload_interval_s: u64,
}

fn default_tls_reload_interval_s() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest startup packet accepted (PostgreSQL's own limit is 10000).
    pub max_startup_packet_bytes: u32,
    /// Largest protocol message accepted in either direction.
    pub max_frame_bytes: u32,
    /// Time allowed from accept to a ready session (authentication included).
    pub handshake_timeout_ms: u64,
    /// Time allowed to connect and authenticate to a target.
    pub connect_timeout_ms: u64,
    /// Initial per-direction relay buffer; grows up to `max_buffer_bytes`
    /// while reads keep filling it.
    pub buffer_bytes: usize,
    pub max_buffer_bytes: usize,
    /// How long a SIGTERM drain waits for sessions before exiting.
    pub drain_timeout_ms: u64,
    /// Failed cancel attempts allowed per second per worker; more are dropped.
    pub bad_cancels_per_second: u32,
    /// Resolve result columns to the stored columns they come from (the
    /// target's `pg_attribute`, read after login), so a column rule also
    /// applies under an alias. See `mask::origins`.
    pub column_origins: bool,
    /// How long a worker reuses a catalog read for new sessions of the same
    /// target database (0: read at every login).
    pub column_origins_max_age_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_startup_packet_bytes: 10_000,
            max_frame_bytes: 1 << 30,
            handshake_timeout_ms: 15_000,
            connect_timeout_ms: 5_000,
            buffer_bytes: 8 * 1024,
            max_buffer_bytes: 128 * 1024,
            drain_timeout_ms: 30_000,
            bad_cancels_per_second: 20,
            column_origins: true,
            column_origins_max_age_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The name clients put in the `database` field of their startup.
    pub name: String,
    pub target: Target,
    /// Masking profile for results of this connection: a name from
    /// `masking_profiles`, `default` (the built-in profile, also when
    /// omitted), or `none` (no masking).
    #[serde(default)]
    pub masking_profile: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    /// The gateway-held password (never sent to clients, never logged).
    #[serde(default)]
    pub password: Option<String>,
    /// Read the password from this file instead (trailing newline trimmed).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Which authentication the gateway accepts to give the target.
    #[serde(default)]
    pub auth: TargetAuth,
    #[serde(default)]
    pub tls: TargetTls,
}

fn default_pg_port() -> u16 {
    5432
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetAuth {
    /// Whatever the server asks for among the methods below.
    #[default]
    Auto,
    /// `scram-sha-256`, as PostgreSQL (`pg_hba.conf`) and the control
    /// plane's `Connection` spell it (also read: `scram-sha256`).
    #[serde(rename = "scram-sha-256", alias = "scram-sha256")]
    ScramSha256,
    Md5,
    Password,
    Trust,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetTls {
    #[serde(default)]
    pub mode: TargetTlsMode,
    /// PEM CA bundle for verify-ca / verify-full; system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name checked against the certificate; defaults to `host`.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetTlsMode {
    #[default]
    Disable,
    /// Encrypt, do not verify the certificate.
    Require,
    /// Encrypt and verify the chain, not the name.
    VerifyCa,
    /// Encrypt and verify chain and name.
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The name clients put in the `user` field of their startup.
    pub name: String,
    /// SCRAM-SHA-256 verifier of the identity's API key
    /// (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`, as made by
    /// `sluice-dp apikey`). The key itself is never stored.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Name of a `jwt_issuers` entry whose tokens may authenticate this identity.
    #[serde(default)]
    pub jwt_issuer: Option<String>,
    /// The client certificate (signed by `tls.client_ca_file`) that
    /// authenticates this identity: its SPIFFE ID and/or subject CN.
    #[serde(default)]
    pub client_cert: Option<crate::auth::cert::CertMatch>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    pub name: String,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values (at least one).
    pub audience: Vec<String>,
    /// JWKS document (RFC 7517) with the issuer's RS256/ES256 public keys.
    pub jwks_file: PathBuf,
    /// Claim that must equal the identity name (default `sub`).
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

fn default_identity_claim() -> String {
    "sub".to_string()
}
fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Connection names, or `"*"` for all.
    pub connections: Vec<String>,
    /// Identity names, or `"*"` for every authenticated identity.
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// These identities and groups see results unmasked (explicitly
    /// granted; masking is on otherwise).
    #[serde(default)]
    pub unmasked: bool,
}

impl Config {
    /// Read, parse and validate a YAML config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = Config::read(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// As [`Config::load`], not validated (a reload validates the file's
    /// policy sections over the running configuration, command-line
    /// overrides included: [`Config::with_reloadable`]).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::from_yaml(&text)?;
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        cfg.source = Some(ConfigSource {
            path: path.to_path_buf(),
            // (`from_yaml` parsed it: it is YAML.)
            raw: serde_yaml::from_str(&text).unwrap_or_default(),
        });
        Ok(cfg)
    }

    /// This configuration with the [`RELOADABLE`] sections of `new`,
    /// checked as a whole: what a reload applies.
    pub fn with_reloadable(&self, new: Config) -> Result<Config, ConfigError> {
        let mut c = self.clone();
        c.connections = new.connections;
        c.identities = new.identities;
        c.jwt_issuers = new.jwt_issuers;
        c.grants = new.grants;
        c.masking_profiles = new.masking_profiles;
        // (As read now: what `policy_digest` hashes.)
        c.source = new.source;
        c.validate()?;
        Ok(c)
    }

    /// A digest of what a reload builds the policy snapshot from: the
    /// [`RELOADABLE`] sections as written, and the contents of the files
    /// they name (JWKS, target passwords and CAs; a file that cannot be
    /// read counts as its error). Equal digests, equal snapshots.
    pub fn policy_digest(&self) -> [u8; 32] {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        let mut put = |b: &[u8]| {
            d.update(&(b.len() as u64).to_le_bytes());
            d.update(b);
        };
        let raw = self.source.as_ref().map(|s| &s.raw);
        for k in RELOADABLE {
            let v = raw.and_then(|r| r.get(k));
            put(serde_yaml::to_string(&v).unwrap_or_default().as_bytes());
        }
        let mut files: Vec<&Path> = Vec::new();
        for c in &self.connections {
            files.extend(c.target.password_file.as_deref());
            files.extend(c.target.tls.ca_file.as_deref());
        }
        files.extend(self.jwt_issuers.iter().map(|j| j.jwks_file.as_path()));
        for f in files {
            put(f.as_os_str().as_encoded_bytes());
            // (Regular files only: a FIFO's reader would wait for a writer.
            // Anything else counts as changed.)
            match std::fs::metadata(f) {
                Ok(m) if m.is_file() => match std::fs::read(f) {
                    Ok(b) => put(&b),
                    Err(e) => put(e.to_string().as_bytes()),
                },
                Ok(_) => put(&rand_bytes()),
                Err(e) => put(e.to_string().as_bytes()),
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(d.finish().as_ref());
        out
    }

    /// Parse YAML without validating; errors carry the field path.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() {
                "<root>".to_string()
            } else {
                path
            };
            // (serde_yaml's message may start with the path again.)
            let msg = e.into_inner().to_string();
            let msg = msg
                .strip_prefix(field.as_str())
                .and_then(|m| m.strip_prefix(": "))
                .map_or(msg.clone(), str::to_string);
            ConfigError::field(field, msg)
        })
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert_file);
            fix(&mut tls.key_file);
            if let Some(p) = &mut tls.client_ca_file {
                fix(p);
            }
            for p in &mut tls.client_crl_files {
                fix(p);
            }
        }
        for c in &mut self.connections {
            if let Some(p) = &mut c.target.password_file {
                fix(p);
            }
            if let Some(p) = &mut c.target.tls.ca_file {
                fix(p);
            }
        }
        for j in &mut self.jwt_issuers {
            fix(&mut j.jwks_file);
        }
        fix(&mut self.audit.spool_dir);
        if let Some(p) = &mut self.audit.ring_dir {
            fix(p);
        }
        if let Some(cp) = &mut self.control_plane {
            for p in [&mut cp.ca_file, &mut cp.cert_file, &mut cp.key_file]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
    }

    /// Check values and cross-references. Files are read later, when the
    /// snapshot is built, and their errors name the field too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(cp) = &self.control_plane {
            cp.validate()?;
            for (field, n) in [
                ("connections", self.connections.len()),
                ("identities", self.identities.len()),
                ("jwt_issuers", self.jwt_issuers.len()),
                ("grants", self.grants.len()),
                ("masking_profiles", self.masking_profiles.len()),
            ] {
                if n > 0 {
                    return Err(ConfigError::field(
                        field,
                        "not allowed with control_plane: the control plane provides it",
                    ));
                }
            }
        }
        self.audit.validate()?;
        if let Some(t) = &self.tls {
            if !t.client_crl_files.is_empty() && t.client_ca_file.is_none() {
                return Err(ConfigError::field(
                    "tls.client_crl_files",
                    "needs tls.client_ca_file (the lists revoke client certificates)",
                ));
            }
        }
        if let Some(p) = &self.proxy_protocol {
            p.trusted_nets()?;
        }
        if self.listen.is_empty() {
            return Err(ConfigError::field(
                "listen",
                "at least one address is required",
            ));
        }
        for (i, l) in self.listen.iter().enumerate() {
            l.parse::<SocketAddr>().map_err(|e| {
                ConfigError::field(
                    format!("listen[{i}]"),
                    format!("`{l}` is not host:port ({e})"),
                )
            })?;
        }
        self.admin_listen.parse::<SocketAddr>().map_err(|e| {
            ConfigError::field(
                "admin_listen",
                format!("`{}` is not host:port ({e})", self.admin_listen),
            )
        })?;
        if self.workers > 1024 {
            return Err(ConfigError::field("workers", "at most 1024"));
        }
        let l = &self.limits;
        if !(64..=1 << 20).contains(&l.max_startup_packet_bytes) {
            return Err(ConfigError::field(
                "limits.max_startup_packet_bytes",
                "must be between 64 and 1048576",
            ));
        }
        if l.max_frame_bytes < 1024 || l.max_frame_bytes > (1 << 30) + 1024 {
            return Err(ConfigError::field(
                "limits.max_frame_bytes",
                "must be between 1024 and 1073742848",
            ));
        }
        if l.buffer_bytes < 1024 || l.buffer_bytes > l.max_buffer_bytes {
            return Err(ConfigError::field(
                "limits.buffer_bytes",
                "must be at least 1024 and at most limits.max_buffer_bytes",
            ));
        }
        if l.max_buffer_bytes > 16 << 20 {
            return Err(ConfigError::field(
                "limits.max_buffer_bytes",
                "at most 16 MiB",
            ));
        }
        if l.handshake_timeout_ms == 0 {
            return Err(ConfigError::field(
                "limits.handshake_timeout_ms",
                "must be > 0",
            ));
        }
        if l.connect_timeout_ms == 0 {
            return Err(ConfigError::field(
                "limits.connect_timeout_ms",
                "must be > 0",
            ));
        }

        let mut conn_names = HashSet::new();
        for (i, c) in self.connections.iter().enumerate() {
            let at = |f: &str| format!("connections[{i}].{f}");
            check_name(&c.name, &at("name"))?;
            if !conn_names.insert(c.name.as_str()) {
                return Err(ConfigError::field(
                    at("name"),
                    format!("duplicate connection `{}`", c.name),
                ));
            }
            let t = &c.target;
            if t.host.is_empty() {
                return Err(ConfigError::field(at("target.host"), "must not be empty"));
            }
            if t.port == 0 {
                return Err(ConfigError::field(at("target.port"), "must not be 0"));
            }
            if t.database.is_empty() {
                return Err(ConfigError::field(
                    at("target.database"),
                    "must not be empty",
                ));
            }
            if t.user.is_empty() {
                return Err(ConfigError::field(at("target.user"), "must not be empty"));
            }
            if t.password.is_some() && t.password_file.is_some() {
                return Err(ConfigError::field(
                    at("target.password_file"),
                    "give either password or password_file, not both",
                ));
            }
            let needs_password = !matches!(t.auth, TargetAuth::Trust);
            if needs_password
                && t.auth != TargetAuth::Auto
                && t.password.is_none()
                && t.password_file.is_none()
            {
                return Err(ConfigError::field(
                    at("target.password"),
                    format!("auth {:?} needs a password or password_file", t.auth),
                ));
            }
        }

        let mut issuer_names = HashSet::new();
        for (i, j) in self.jwt_issuers.iter().enumerate() {
            let at = |f: &str| format!("jwt_issuers[{i}].{f}");
            check_name(&j.name, &at("name"))?;
            if !issuer_names.insert(j.name.as_str()) {
                return Err(ConfigError::field(
                    at("name"),
                    format!("duplicate issuer `{}`", j.name),
                ));
            }
            if j.issuer.is_empty() {
                return Err(ConfigError::field(at("issuer"), "must not be empty"));
            }
            if j.audience.is_empty() || j.audience.iter().any(|a| a.is_empty()) {
                return Err(ConfigError::field(
                    at("audience"),
                    "at least one non-empty audience",
                ));
            }
            if j.identity_claim.is_empty() {
                return Err(ConfigError::field(
                    at("identity_claim"),
                    "must not be empty",
                ));
            }
        }

        let mut ident_names = HashSet::new();
        let mut groups = HashSet::new();
        for (i, id) in self.identities.iter().enumerate() {
            let at = |f: &str| format!("identities[{i}].{f}");
            check_name(&id.name, &at("name"))?;
            if !ident_names.insert(id.name.as_str()) {
                return Err(ConfigError::field(
                    at("name"),
                    format!("duplicate identity `{}`", id.name),
                ));
            }
            if id.api_key.is_none() && id.jwt_issuer.is_none() && id.client_cert.is_none() {
                return Err(ConfigError::field(
                    at("api_key"),
                    "an identity needs an api_key verifier, a jwt_issuer or a client_cert",
                ));
            }
            if let Some(m) = &id.client_cert {
                m.check(&at("client_cert"))?;
                if self.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) {
                    return Err(ConfigError::field(
                        at("client_cert"),
                        "needs tls.client_ca_file (the CA that signs client certificates)",
                    ));
                }
            }
            if let Some(v) = &id.api_key {
                crate::auth::scram::Verifier::parse(v)
                    .map_err(|e| ConfigError::field(at("api_key"), e.to_string()))?;
            }
            if let Some(iss) = &id.jwt_issuer {
                if !issuer_names.contains(iss.as_str()) {
                    return Err(ConfigError::field(
                        at("jwt_issuer"),
                        format!("no jwt_issuers entry named `{iss}`"),
                    ));
                }
            }
            for (g, name) in id.groups.iter().enumerate() {
                check_name(name, &at(&format!("groups[{g}]")))?;
                groups.insert(name.as_str());
            }
        }

        for (i, c) in self.connections.iter().enumerate() {
            if let Some(p) = &c.masking_profile {
                if p != "none" && p != "default" && !self.masking_profiles.contains_key(p) {
                    return Err(ConfigError::field(
                        format!("connections[{i}].masking_profile"),
                        format!("no masking_profiles entry named `{p}` (or use `default`, `none`)"),
                    ));
                }
            }
        }
        for (name, p) in &self.masking_profiles {
            crate::mask::Engine::compile(p).map_err(|e| {
                ConfigError::field(format!("masking_profiles.{name}"), e.to_string())
            })?;
        }
        for (i, g) in self.grants.iter().enumerate() {
            let at = |f: &str| format!("grants[{i}].{f}");
            if g.connections.is_empty() {
                return Err(ConfigError::field(
                    at("connections"),
                    "at least one connection",
                ));
            }
            for (k, c) in g.connections.iter().enumerate() {
                if c != "*" && !conn_names.contains(c.as_str()) {
                    return Err(ConfigError::field(
                        at(&format!("connections[{k}]")),
                        format!("no connection named `{c}`"),
                    ));
                }
            }
            if g.identities.is_empty() && g.groups.is_empty() {
                return Err(ConfigError::field(
                    at("identities"),
                    "name identities or groups",
                ));
            }
            for (k, n) in g.identities.iter().enumerate() {
                if n != "*" && !ident_names.contains(n.as_str()) {
                    return Err(ConfigError::field(
                        at(&format!("identities[{k}]")),
                        format!("no identity named `{n}`"),
                    ));
                }
            }
            for (k, n) in g.groups.iter().enumerate() {
                if !groups.contains(n.as_str()) {
                    return Err(ConfigError::field(
                        at(&format!("groups[{k}]")),
                        format!("no identity is in group `{n}`"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Listener addresses, parsed (valid after `validate`).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().filter_map(|l| l.parse().ok()).collect()
    }
}

fn check_name(name: &str, field: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::field(
            field,
            format!("`{name}` must be 1-63 characters of letters, digits, '-', '_', '.', '@'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$\
        WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
        WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";

    fn base() -> String {
        format!(
            r#"
listen: ["127.0.0.1:0"]
connections:
  - name: app
    target: {{ host: 127.0.0.1, port: 5432, database: app, user: app, password: pw }}
identities:
  - name: agent
    api_key: "{VERIFIER}"
    groups: [bots]
grants:
  - connections: [app]
    groups: [bots]
"#
        )
    }

    /// The README's static configuration parses as it is written there.
    #[test]
    fn readme_static_config_parses() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```yaml\nlisten:")
            .expect("README has the static config");
        let body = &readme[start + "```yaml\n".len()..];
        let body = &body[..body.find("```").unwrap()];
        let cfg = Config::from_yaml(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.connections[0].target.auth, TargetAuth::ScramSha256);
        for spelling in ["scram-sha-256", "scram-sha256"] {
            let y = base().replace(
                "password: pw }",
                &format!("password: pw, auth: {spelling} }}"),
            );
            let cfg = Config::from_yaml(&y).unwrap_or_else(|e| panic!("{spelling}: {e}"));
            assert_eq!(cfg.connections[0].target.auth, TargetAuth::ScramSha256);
        }
    }

    /// `proxy_protocol.trusted` takes addresses and CIDRs; anything else,
    /// or an empty list, is an error naming the entry.
    #[test]
    fn proxy_protocol_trusted_entries_are_checked() {
        let with = |p: &str| format!("{}proxy_protocol: {p}\n", base());
        let cfg = Config::from_yaml(&with(
            "{ trusted: [10.0.0.0/8, 127.0.0.1, \"2001:db8::/32\"], required: true }",
        ))
        .unwrap();
        cfg.validate().unwrap();
        let p = cfg.proxy_protocol.unwrap();
        assert!(p.required);
        let nets = p.trusted_nets().unwrap();
        assert_eq!(nets[1], "127.0.0.1/32".parse::<ipnet::IpNet>().unwrap());
        for (bad, field) in [
            ("{ trusted: [] }", "proxy_protocol.trusted`"),
            (
                "{ trusted: [10.0.0.0/8, 10.0.0.300] }",
                "proxy_protocol.trusted[1]",
            ),
            ("{ trusted: [lb.internal] }", "proxy_protocol.trusted[0]"),
        ] {
            let e = Config::from_yaml(&with(bad))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
        let e = Config::from_yaml(&with("{ trusted: [10.0.0.0/8], require: true }"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy_protocol"), "{e}");
    }

    /// A `client_cert` identity needs the client CA, and a usable match.
    #[test]
    fn client_cert_identities_need_the_client_ca() {
        let with = |tls: &str, cert: &str| {
            format!(
                "{tls}{}",
                base().replace(
                    "identities:\n",
                    &format!("identities:\n  - {{ name: a7, client_cert: {cert} }}\n"),
                )
            )
        };
        let tls = "tls: { cert_file: s.pem, key_file: s.key, client_ca_file: ca.pem }\n";
        let ok = Config::from_yaml(&with(tls, "{ spiffe_id: \"spiffe://corp/agent/7\" }")).unwrap();
        ok.validate().unwrap();
        for (t, cert, field) in [
            ("", "{ subject_cn: a7 }", "identities[0].client_cert`"),
            (tls, "{}", "identities[0].client_cert`"),
            (
                tls,
                "{ spiffe_id: \"https://corp/a\" }",
                "identities[0].client_cert.spiffe_id",
            ),
        ] {
            let e = Config::from_yaml(&with(t, cert))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{cert}: {e}");
        }
    }

    /// A reload applies the policy sections and names the others that
    /// changed (they take a restart).
    #[test]
    fn reloads_apply_the_policy_sections_and_name_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.yaml");
        std::fs::write(&path, format!("workers: 2\n{}", base())).unwrap();
        let running = Config::load(&path).unwrap();
        let edited = format!("workers: 1\nlimits: {{ buffer_bytes: 4096 }}\n{}", base())
            .replace("  - name: agent\n", "  - name: agent2\n");
        std::fs::write(&path, &edited).unwrap();
        let new = Config::load(&path).unwrap();
        let changed = running
            .source
            .as_ref()
            .unwrap()
            .restart_only_changes(new.source.as_ref().unwrap());
        assert_eq!(changed, ["limits", "workers"]);
        let merged = running.with_reloadable(new).unwrap();
        assert_eq!(merged.workers, 2);
        assert_eq!(merged.limits.buffer_bytes, running.limits.buffer_bytes);
        assert_eq!(merged.identities[0].name, "agent2");
    }

    /// Revocation lists revoke client certificates: they need the client CA.
    #[test]
    fn revocation_lists_need_the_client_ca() {
        let cfg = |tls: &str| Config::from_yaml(&format!("{tls}{}", base())).unwrap();
        let ok = cfg("tls: { cert_file: s.pem, key_file: s.key, client_ca_file: ca.pem, client_crl_files: [a.crl] }\n");
        ok.validate().unwrap();
        let tls = ok.tls.unwrap();
        assert_eq!(tls.reload_interval_s, 10);
        assert!(!tls.client_crl_allow_unknown);
        let e = cfg("tls: { cert_file: s.pem, key_file: s.key, client_crl_files: [a.crl] }\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.client_crl_files"), "{e}");
    }

    /// A field error names its path once.
    #[test]
    fn field_errors_name_the_path_once() {
        let y = base().replace("port: 5432", "port: 70000");
        let e = Config::from_yaml(&y).unwrap_err().to_string();
        assert_eq!(e.matches("connections[0].target.port").count(), 1, "{e}");
    }

    /// A node name the control plane's audit store would refuse (every
    /// record, forever) is a config error naming the field.
    #[test]
    fn node_names_the_audit_store_takes() {
        let y = |name: &str| {
            format!(
                "control_plane: {{ urls: [\"http://127.0.0.1:7600\"], node_name: \"{name}\" }}\n"
            )
        };
        for bad in ["dp:1", "dp 1", "", "..", &"x".repeat(129)] {
            let e = Config::from_yaml(&y(bad)).unwrap().validate().unwrap_err();
            assert!(
                e.to_string().contains("control_plane.node_name"),
                "{bad}: {e}"
            );
        }
        for good in ["dp-1", "host.example.com-6432", "a_b"] {
            Config::from_yaml(&y(good))
                .unwrap()
                .validate()
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn valid_config_loads() {
        let cfg = Config::from_yaml(&base()).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.connections[0].target.auth, TargetAuth::Auto);
        assert_eq!(cfg.limits.max_startup_packet_bytes, 10_000);
    }

    #[test]
    fn type_error_names_field() {
        let y = base().replace("port: 5432", "port: lots");
        let err = Config::from_yaml(&y).unwrap_err().to_string();
        assert!(err.contains("connections[0].target.port"), "{err}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let y = base().replace("user: app,", "user: app, pasword: x,");
        let err = Config::from_yaml(&y).unwrap_err().to_string();
        assert!(err.contains("connections[0].target"), "{err}");
        assert!(err.contains("pasword"), "{err}");
    }

    #[test]
    fn bad_reference_names_field() {
        let y = base().replace("connections: [app]", "connections: [nope]");
        let err = Config::from_yaml(&y)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("grants[0].connections[0]"), "{err}");
    }

    #[test]
    fn bad_verifier_names_field() {
        let y = base().replace(VERIFIER, "SCRAM-SHA-256$x");
        let err = Config::from_yaml(&y)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("identities[0].api_key"), "{err}");
    }

    #[test]
    fn audit_section_defaults_and_errors_name_the_field() {
        let cfg = Config::from_yaml(&base()).unwrap();
        assert!(!cfg.audit.is_enabled(false));
        assert!(cfg.audit.is_enabled(true));
        assert_eq!(cfg.audit.when_full, WhenFullChoice::FailClosed);
        assert_eq!(cfg.audit.max_sql_bytes, 4096);
        let y = format!(
            "{}audit: {{ enabled: true, spool_dir: spool, quota_bytes: 65536, when_full: fail_open, fsync: never, ring_bytes: 1048576, max_sql_bytes: 100 }}\n",
            base()
        );
        let mut cfg = Config::from_yaml(&y).unwrap();
        cfg.validate().unwrap();
        cfg.resolve_paths(Path::new("/etc/sluice"));
        assert_eq!(cfg.audit.spool_dir, PathBuf::from("/etc/sluice/spool"));
        assert_eq!(cfg.audit.fsync, FsyncChoice::Never);
        assert!(cfg.audit.is_enabled(false));
        for (bad, field) in [
            ("audit: { when_full: maybe }", "audit.when_full"),
            ("audit: { quota: 5 }", "audit"),
            ("audit: { quota_bytes: 10 }", "audit.quota_bytes"),
            ("audit: { ring_bytes: 1000 }", "audit.ring_bytes"),
            ("audit: { max_sql_bytes: 8 }", "audit.max_sql_bytes"),
            ("audit: { flush_interval_ms: 0 }", "audit.flush_interval_ms"),
        ] {
            let y = format!("{}{bad}\n", base());
            let err = match Config::from_yaml(&y) {
                Err(e) => e.to_string(),
                Ok(c) => c.validate().unwrap_err().to_string(),
            };
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_listen_names_field() {
        let y = base().replace("127.0.0.1:0", "localhost");
        let err = Config::from_yaml(&y)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen[0]"), "{err}");
    }
}
