//! The real `sluice-dp` binary: config files, starting and stopping the
//! process, its admin HTTP port, and the `apikey` / `dev-certs` subcommands.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::pg::Pg;
use crate::process::{self, sluice_bin};

/// An API key made by `sluice-dp apikey`: the secret the client uses as its
/// password, and the SCRAM verifier that goes into the config.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub key: String,
    pub verifier: String,
}

impl ApiKey {
    /// A fresh key from `sluice-dp apikey --json`.
    pub fn generate() -> ApiKey {
        let out = process::run(
            Command::new(sluice_bin()).args(["apikey", "--json"]),
            None,
            Duration::from_secs(30),
        );
        out.assert_success("sluice-dp apikey --json");
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("apikey --json output is not JSON ({e}): {}", out.stdout));
        let key = v["key"].as_str().expect("apikey JSON has string `key`");
        let verifier = v["verifier"]
            .as_str()
            .expect("apikey JSON has string `verifier`");
        ApiKey {
            key: key.to_string(),
            verifier: verifier.to_string(),
        }
    }

    /// One key per test binary, for the standard identity `agent1`.
    pub fn shared() -> &'static ApiKey {
        static KEY: OnceLock<ApiKey> = OnceLock::new();
        KEY.get_or_init(ApiKey::generate)
    }
}

/// Certificates written by `sluice-dp dev-certs`.
#[derive(Clone, Debug)]
pub struct DevCerts {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    pub ca_key: PathBuf,
    pub server_pem: PathBuf,
    pub server_key: PathBuf,
}

/// The audit records a gateway left in `dir`: spooled, then still in the
/// core rings under `ring_dir` (the gateway stopped).
pub fn audit_records_in(dir: &Path, ring_dir: Option<&Path>) -> Vec<proto::AuditRecord> {
    let (mut spooled, in_rings) = dataplane::audit::service::read_dir(dir, ring_dir)
        .unwrap_or_else(|e| panic!("read audit dir {}: {e:#}", dir.display()));
    spooled.extend(in_rings);
    spooled
}

/// [`audit_records_in`] for a gateway set up by [`GatewayConfig::audit`]
/// (its rings in `dir/rings`).
pub fn audit_records(dir: &Path) -> Vec<proto::AuditRecord> {
    audit_records_in(dir, Some(&dir.join("rings")))
}

impl DevCerts {
    /// Two sets of dev certificates under `dir` (`old`, `new`), and a third
    /// whose server certificate and key files (`dir/server.pem`,
    /// `dir/server.key`) hold the old set's now: a gateway started with it
    /// can be rotated to the new set by [`DevCerts::replace`].
    pub fn rotatable(dir: &Path) -> (DevCerts, DevCerts, DevCerts) {
        let hosts = ["127.0.0.1", "localhost"];
        let old = DevCerts::generate(&dir.join("old"), &hosts);
        let new = DevCerts::generate(&dir.join("new"), &hosts);
        let live = DevCerts {
            server_pem: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            ..old.clone()
        };
        std::fs::copy(&old.server_pem, &live.server_pem).unwrap();
        std::fs::copy(&old.server_key, &live.server_key).unwrap();
        (old, new, live)
    }

    /// Replace `file` with `from`'s contents whole, by a rename, as
    /// rotation tools do (a reload never sees it half-written).
    pub fn replace(file: &Path, from: &Path) {
        let tmp = file.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, file).unwrap();
    }

    /// Run `sluice-dp dev-certs --dir DIR [--host H ...]`.
    pub fn generate(dir: &Path, hosts: &[&str]) -> DevCerts {
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("dev-certs").arg("--dir").arg(dir);
        for h in hosts {
            cmd.args(["--host", h]);
        }
        process::run(&mut cmd, None, Duration::from_secs(60)).assert_success("sluice-dp dev-certs");
        let c = DevCerts {
            dir: dir.to_path_buf(),
            ca_pem: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_pem: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        for p in [&c.ca_pem, &c.ca_key, &c.server_pem, &c.server_key] {
            assert!(p.exists(), "dev-certs did not write {p:?}");
        }
        c
    }

    /// One set per test binary (default hosts: 127.0.0.1 and localhost).
    pub fn shared() -> &'static DevCerts {
        static CERTS: OnceLock<DevCerts> = OnceLock::new();
        CERTS.get_or_init(|| DevCerts::generate(&crate::process_tempdir("sluice-certs-"), &[]))
    }

    pub fn ca_pem_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.ca_pem).expect("read ca.pem")
    }
}

/// YAML text for a value (JSON strings are valid YAML double-quoted scalars).
pub fn y(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn y_list(items: &[&str]) -> String {
    let v: Vec<String> = items.iter().map(|s| y(s)).collect();
    format!("[{}]", v.join(", "))
}

/// Builder for a `sluice-dp` config. `listen` and `admin_listen` are filled
/// in by [`Gateway::start`].
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub workers: usize,
    pub driver: Option<String>,
    pub tls: Option<(PathBuf, PathBuf, bool)>,
    pub limits: Vec<(String, String)>,
    pub connections: Vec<String>,
    pub identities: Vec<String>,
    pub jwt_issuers: Vec<String>,
    pub grants: Vec<String>,
    /// `masking_profiles:` entries: (name, the profile as YAML).
    pub masking_profiles: Vec<(String, String)>,
    /// The `audit:` section as an inline YAML map (`{ enabled: true, ... }`).
    pub audit: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            workers: 2,
            driver: None,
            tls: None,
            // Tests stop gateways with sessions still open; don't wait 30 s.
            limits: vec![("drain_timeout_ms".into(), "500".into())],
            connections: vec![],
            identities: vec![],
            jwt_issuers: vec![],
            grants: vec![],
            masking_profiles: vec![],
            // SLUICE_TEST_AUDIT=1 runs every gateway with audit on (spool
            // in its temp dir), to exercise the relay's audit path.
            audit: std::env::var_os("SLUICE_TEST_AUDIT")
                .filter(|v| v == "1")
                .map(|_| "{ enabled: true, ring_dir: sluice-audit-rings }".to_string()),
        }
    }
}

impl GatewayConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// The usual setup: connection `app` → `appdb` on `pg` as `app_owner`,
    /// identity `agent1` (group `bots`) with `key`, granted `app` via `bots`.
    pub fn standard(pg: &Pg, key: &ApiKey) -> Self {
        Self::new()
            .pg_connection("app", pg)
            .identity_key("agent1", &key.verifier, &["bots"])
            .grant(&["app"], &[], &["bots"])
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn driver(mut self, d: &str) -> Self {
        self.driver = Some(d.to_string());
        self
    }

    pub fn tls(mut self, certs: &DevCerts, required: bool) -> Self {
        self.tls = Some((certs.server_pem.clone(), certs.server_key.clone(), required));
        self
    }

    /// Audit on, spooling to `dir`; `extra` adds keys to the section
    /// (`"quota_bytes: 65536, when_full: fail_open"`).
    pub fn audit(mut self, dir: &Path, extra: &str) -> Self {
        // Rings next to the spool (not the default under /dev/shm), so a
        // test that kills the gateway leaves nothing behind.
        let mut a = format!(
            "{{ enabled: true, spool_dir: {}, ring_dir: {}",
            y(&dir.display().to_string()),
            y(&dir.join("rings").display().to_string())
        );
        if !extra.is_empty() {
            a.push_str(", ");
            a.push_str(extra);
        }
        a.push_str(" }");
        self.audit = Some(a);
        self
    }

    /// Set `limits.<key>: <value>` (replacing an earlier value).
    pub fn limit(mut self, key: &str, value: impl ToString) -> Self {
        self.limits.retain(|(k, _)| k != key);
        self.limits.push((key.to_string(), value.to_string()));
        self
    }

    /// Connection `name` → the test cluster's `appdb` as `app_owner`.
    pub fn pg_connection(self, name: &str, pg: &Pg) -> Self {
        self.connection(
            name,
            "127.0.0.1",
            pg.port,
            &pg.app_db,
            &pg.app_user,
            Some(&pg.app_password),
        )
    }

    pub fn connection(
        mut self,
        name: &str,
        host: &str,
        port: u16,
        database: &str,
        user: &str,
        password: Option<&str>,
    ) -> Self {
        let mut t = format!(
            "host: {}, port: {port}, database: {}, user: {}",
            y(host),
            y(database),
            y(user)
        );
        if let Some(p) = password {
            write!(t, ", password: {}", y(p)).unwrap();
        }
        self.connections
            .push(format!("{{ name: {}, target: {{ {t} }} }}", y(name)));
        self
    }

    pub fn identity_key(mut self, name: &str, verifier: &str, groups: &[&str]) -> Self {
        self.identities.push(format!(
            "{{ name: {}, api_key: {}, groups: {} }}",
            y(name),
            y(verifier),
            y_list(groups)
        ));
        self
    }

    pub fn identity_jwt(mut self, name: &str, issuer: &str, groups: &[&str]) -> Self {
        self.identities.push(format!(
            "{{ name: {}, jwt_issuer: {}, groups: {} }}",
            y(name),
            y(issuer),
            y_list(groups)
        ));
        self
    }

    /// An identity that may log in with either its API key or a JWT.
    pub fn identity_key_and_jwt(mut self, name: &str, verifier: &str, issuer: &str) -> Self {
        self.identities.push(format!(
            "{{ name: {}, api_key: {}, jwt_issuer: {} }}",
            y(name),
            y(verifier),
            y(issuer)
        ));
        self
    }

    pub fn jwt_issuer(
        mut self,
        name: &str,
        issuer_url: &str,
        audience: &[&str],
        jwks_file: &Path,
    ) -> Self {
        self.jwt_issuers.push(format!(
            "{{ name: {}, issuer: {}, audience: {}, jwks_file: {}, identity_claim: sub, leeway_seconds: 5 }}",
            y(name),
            y(issuer_url),
            y_list(audience),
            y(&jwks_file.display().to_string())
        ));
        self
    }

    pub fn grant(mut self, connections: &[&str], identities: &[&str], groups: &[&str]) -> Self {
        self.grants.push(format!(
            "{{ connections: {}, identities: {}, groups: {} }}",
            y_list(connections),
            y_list(identities),
            y_list(groups)
        ));
        self
    }

    /// Connection `name` → the test cluster's `appdb` with
    /// `masking_profile: profile` (a `masking_profiles` name, `default` or
    /// `none`).
    pub fn pg_connection_masked(mut self, name: &str, pg: &Pg, profile: &str) -> Self {
        self = self.pg_connection(name, pg);
        let c = self.connections.pop().expect("connection just added");
        let c = c.strip_suffix(" }").expect("connection is a flow mapping");
        self.connections
            .push(format!("{c}, masking_profile: {} }}", y(profile)));
        self
    }

    /// A named masking profile; `profile` is its YAML (block or flow style,
    /// as written under `masking_profiles.<name>`).
    pub fn masking_profile(mut self, name: &str, profile: &str) -> Self {
        self.masking_profiles
            .push((name.to_string(), profile.to_string()));
        self
    }

    /// A grant whose identities and groups see results unmasked.
    pub fn grant_unmasked(
        mut self,
        connections: &[&str],
        identities: &[&str],
        groups: &[&str],
    ) -> Self {
        self.grants.push(format!(
            "{{ connections: {}, identities: {}, groups: {}, unmasked: true }}",
            y_list(connections),
            y_list(identities),
            y_list(groups)
        ));
        self
    }

    /// The YAML body (without `listen`/`admin_listen`).
    pub fn to_yaml(&self) -> String {
        let mut s = String::new();
        writeln!(s, "workers: {}", self.workers).unwrap();
        if let Some(d) = &self.driver {
            writeln!(s, "driver: {d}").unwrap();
        }
        if let Some((cert, key, required)) = &self.tls {
            writeln!(
                s,
                "tls: {{ cert_file: {}, key_file: {}, required: {required} }}",
                y(&cert.display().to_string()),
                y(&key.display().to_string())
            )
            .unwrap();
        }
        if let Some(a) = &self.audit {
            writeln!(s, "audit: {a}").unwrap();
        }
        if !self.limits.is_empty() {
            writeln!(s, "limits:").unwrap();
            for (k, v) in &self.limits {
                writeln!(s, "  {k}: {v}").unwrap();
            }
        }
        for (section, items) in [
            ("connections", &self.connections),
            ("identities", &self.identities),
            ("jwt_issuers", &self.jwt_issuers),
            ("grants", &self.grants),
        ] {
            if items.is_empty() {
                continue;
            }
            writeln!(s, "{section}:").unwrap();
            for it in items {
                writeln!(s, "  - {it}").unwrap();
            }
        }
        if !self.masking_profiles.is_empty() {
            writeln!(s, "masking_profiles:").unwrap();
            for (name, profile) in &self.masking_profiles {
                writeln!(s, "  {}:", y(name)).unwrap();
                let lines: Vec<&str> = profile.lines().filter(|l| !l.trim().is_empty()).collect();
                // Re-indent under the name, keeping relative indentation.
                let margin = lines
                    .iter()
                    .map(|l| l.len() - l.trim_start().len())
                    .min()
                    .unwrap_or(0);
                for line in lines {
                    writeln!(s, "    {}", &line[margin..]).unwrap();
                }
            }
        }
        s
    }
}

/// A running `sluice-dp --config FILE`. Killed (SIGTERM, then SIGKILL) on
/// drop; its temp dir (config, log) is removed then.
pub struct Gateway {
    child: Mutex<Option<Child>>,
    pid: i32,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Admin HTTP port on 127.0.0.1.
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Gateway {
    /// Start with a [`GatewayConfig`].
    pub fn start_with(cfg: &GatewayConfig) -> Gateway {
        Self::start(&cfg.to_yaml())
    }

    /// Start `sluice-dp` with `yaml` as its config (listen addresses on free
    /// ports are added unless the YAML has its own) and wait until `/readyz`
    /// answers 200. Panics, showing the log, if it exits or is not ready
    /// within 30 s.
    pub fn start(yaml: &str) -> Gateway {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(yaml) {
                Ok(g) => return g,
                Err(e) => {
                    // Retry only a lost race for a port.
                    if !e.contains("in use") {
                        panic!("sluice-dp did not start: {e}");
                    }
                    last = e;
                }
            }
        }
        panic!("sluice-dp did not start: {last}");
    }

    /// Like [`Gateway::start`] but returns the log if the process exits or
    /// does not become ready.
    pub fn try_start(yaml: &str) -> Result<Gateway, String> {
        Self::try_start_customized(yaml, |_| {})
    }

    /// Like [`Gateway::try_start`], letting the caller adjust the command
    /// (environment, `pre_exec` hooks) before it is spawned.
    pub fn try_start_customized(
        yaml: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Result<Gateway, String> {
        Self::spawn(yaml, customize, true)
    }

    /// Start without waiting for readiness (a control-plane node before its
    /// first snapshot); returns once the admin port answers.
    pub fn try_start_unready(yaml: &str) -> Result<Gateway, String> {
        Self::spawn(yaml, |_| {}, false)
    }

    fn spawn(
        yaml: &str,
        customize: impl FnOnce(&mut Command),
        wait_ready: bool,
    ) -> Result<Gateway, String> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-gw-")
            .tempdir()
            .expect("temp dir");
        let port = crate::free_port();
        let admin_port = crate::free_port();
        let mut text = String::new();
        if !yaml.lines().any(|l| l.starts_with("listen:")) {
            writeln!(text, "listen: [\"127.0.0.1:{port}\"]").unwrap();
        }
        if !yaml.lines().any(|l| l.starts_with("admin_listen:")) {
            writeln!(text, "admin_listen: \"127.0.0.1:{admin_port}\"").unwrap();
        }
        text.push_str(yaml);
        let config_path = dir.path().join("sluice.yaml");
        std::fs::write(&config_path, &text).unwrap();
        let log_path = dir.path().join("sluice-dp.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("--config")
            .arg(&config_path)
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        customize(&mut cmd);
        // Killed with the test process even if Drop never runs.
        let child = process::spawn_tied(cmd, libc::SIGKILL)
            .map_err(|e| format!("cannot spawn {:?}: {e}", sluice_bin()))?;
        let gw = Gateway {
            pid: child.id() as i32,
            child: Mutex::new(Some(child)),
            port,
            admin_port,
            dir,
            config_path,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = gw.exit_status() {
                return Err(format!(
                    "sluice-dp exited with {status} during startup\n--- config ---\n{text}\n--- log ---\n{}",
                    gw.log()
                ));
            }
            match gw.http_get("/readyz") {
                Ok((200, _)) => return Ok(gw),
                Ok(_) if !wait_ready => return Ok(gw),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sluice-dp not ready (GET /readyz != 200) within 30 s\n--- config ---\n{text}\n--- log ---\n{}",
                    gw.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Exit status if the process has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut g = self.child.lock().unwrap();
        let child = g.as_mut()?;
        child.try_wait().ok().flatten()
    }

    pub fn is_alive(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Panic (with the log) if the gateway process has exited.
    #[track_caller]
    pub fn assert_alive(&self) {
        if let Some(st) = self.exit_status() {
            panic!("sluice-dp exited ({st})\n--- log ---\n{}", self.log());
        }
    }

    /// Client config for `user`/`password` on connection `db`, no TLS.
    pub fn config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// Client config for the standard identity `agent1` on `app`.
    pub fn agent_config(&self) -> tokio_postgres::Config {
        self.config("agent1", &ApiKey::shared().key, "app")
    }

    /// Connect as `agent1` to `app` (standard config), no TLS.
    pub async fn agent(&self) -> tokio_postgres::Client {
        crate::connect(&self.agent_config())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect through gateway: {}\n--- log ---\n{}",
                    crate::client::err_text(&e),
                    self.log()
                )
            })
    }

    /// libpq URL for `user` with `key` on connection `db` (`extra` is the
    /// query string, e.g. `sslmode=require`).
    pub fn url(&self, user: &str, key: &str, db: &str, extra: &str) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}?{extra}",
            crate::url_encode(user),
            crate::url_encode(key),
            self.port,
            db
        )
    }

    /// GET `path` on the admin port: (status, body). Plain HTTP/1.1 over a
    /// TcpStream with timeouts.
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// Send SIGHUP (reload the configuration and TLS files).
    pub fn hangup(&self) {
        // SAFETY: a signal to this gateway's own process.
        assert_eq!(unsafe { libc::kill(self.pid, libc::SIGHUP) }, 0);
    }

    /// Wait until `done` holds (what the gateway does after a client saw
    /// its answer: an auth failure counted after the TLS alert went out, a
    /// log line after the counter it follows, a reload); panics after 20 s
    /// with the log.
    pub async fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `/metrics` shows the unlabelled `name` at `want` or more.
    pub async fn wait_metric(&self, name: &str, want: f64) {
        self.wait_for(&format!("{name} at {want}"), || {
            self.metrics().get(name, &[]) >= want
        })
        .await
    }

    /// Scrape and parse `/metrics`.
    /// Wait until `sluice_connections_open` is back to 0 (the gateway has
    /// seen every client close); panics after `limit`.
    pub async fn wait_connections_closed(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let open = self.metrics().get("sluice_connections_open", &[]);
            if open == 0.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice_connections_open stuck at {open}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn metrics(&self) -> Metrics {
        match self.http_get("/metrics") {
            Ok((200, body)) => Metrics::parse(&body),
            Ok((code, body)) => panic!("GET /metrics answered {code}: {body}"),
            Err(e) => panic!("GET /metrics failed: {e}\n--- log ---\n{}", self.log()),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL now and reap (a crash). Idempotent.
    pub fn kill(&self) {
        let mut g = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = g.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL. Idempotent.
    pub fn stop(&self) {
        let mut g = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = g.take() {
            if child.try_wait().ok().flatten().is_none() {
                process::signal(self.pid, libc::SIGTERM);
                if process::wait_timeout(&mut child, Duration::from_secs(3)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = {
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(60);
                lines[from..].join("\n")
            };
            eprintln!(
                "--- sluice-dp log tail (port {}, {:?}) ---\n{tail}\n--- end log ---",
                self.port, self.log_path
            );
        }
    }
}

/// Minimal HTTP/1.1 GET with `Connection: close` (handles chunked bodies).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| std::io::Error::other("bad chunk header"))?;
        let size_text = String::from_utf8_lossy(&data[..nl]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err(std::io::Error::other("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}
