//! The control plane under test: a real etcd ([`Etcd`]), real `sluice-cp`
//! processes ([`ControlPlane`]) and data-plane nodes subscribed to them
//! ([`Node`]). Configuration is applied through the real gRPC admin API
//! ([`Admin`]) or the real `sluicectl` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::gateway::Gateway;
use crate::process;

/// Path of a workspace binary (`sluice-cp`, `sluicectl`), next to
/// `sluice-dp`; built (brought up to date) with cargo once per test
/// process, as `sluice-dp` is.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let p = process::sluice_bin()
        .parent()
        .expect("binary dir")
        .join(name);
    if std::env::var_os("SLUICE_BIN_DIR").is_none() {
        BUILT.get_or_init(|| process::cargo_build(&["-p", "controlplane", "--bins"], &p));
    }
    assert!(p.exists(), "{p:?} does not exist");
    p
}

/// A running etcd on free loopback ports in its own temp dir; killed on drop.
pub struct Etcd {
    child: Mutex<Option<Child>>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
}

impl Etcd {
    pub fn start() -> Etcd {
        let e = Etcd {
            child: Mutex::new(None),
            dir: tempfile::Builder::new()
                .prefix("sluice-etcd-")
                .tempdir()
                .unwrap(),
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
        };
        e.spawn();
        e
    }

    /// One etcd per test binary, for tests that do not stop it; each test
    /// uses its own key prefix ([`unique_prefix`]). Killed and its directory
    /// removed when the test process exits.
    pub fn shared() -> &'static Etcd {
        SHARED_ETCD.get_or_init(|| {
            let e = Etcd::start();
            // SAFETY: registering a plain `extern "C" fn()` is always sound.
            let rc = unsafe { libc::atexit(stop_shared_etcd) };
            assert_eq!(rc, 0, "atexit registration failed");
            e
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// (Re)start the process on the same ports and data, wait until healthy.
    pub fn spawn(&self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut cmd =
            Command::new(std::env::var_os("ETCD_BIN").unwrap_or_else(|| "/usr/bin/etcd".into()));
        cmd.args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = process::spawn_tied(cmd, libc::SIGKILL)
            .unwrap_or_else(|e| panic!("cannot start etcd ({e}); install Debian's etcd-server"));
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, body)) = crate::gateway::http_get(self.client_port, "/health") {
                if body.contains("true") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd not healthy within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

static SHARED_ETCD: OnceLock<Etcd> = OnceLock::new();

extern "C" fn stop_shared_etcd() {
    // Never unwind across the C boundary.
    let _ = std::panic::catch_unwind(|| {
        if let Some(e) = SHARED_ETCD.get() {
            e.kill();
            let _ = std::fs::remove_dir_all(e.dir.path());
        }
    });
}

/// An etcd key prefix no other test in this process uses.
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/sluice-test-{}-{tag}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which store a control plane uses.
#[derive(Clone)]
pub enum StoreKind {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// etcd at this endpoint, under this prefix.
    Etcd(String, String),
}

/// The store a test runs its control plane on, before a directory or
/// prefix is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store in the control plane's own temp dir.
    Embedded,
    /// The shared etcd ([`Etcd::shared`]) under a fresh prefix.
    Etcd,
}

/// A running `sluice-cp` (plaintext on loopback unless given TLS args).
pub struct ControlPlane {
    child: Mutex<Option<Child>>,
    pub port: u16,
    pub store: StoreKind,
    pub extra: Vec<String>,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

impl ControlPlane {
    /// Start on the embedded store in a fresh directory.
    pub fn embedded() -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cp-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        Self::start_in(dir, StoreKind::Embedded(data), Vec::new())
    }

    /// Start on etcd under `prefix`.
    pub fn etcd(etcd: &Etcd, prefix: &str) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cp-")
            .tempdir()
            .unwrap();
        Self::start_in(
            dir,
            StoreKind::Etcd(etcd.endpoint(), prefix.to_string()),
            Vec::new(),
        )
    }

    /// Start with `store` and extra arguments (TLS flags, TTLs).
    pub fn start_with(store: StoreKind, extra: Vec<String>) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cp-")
            .tempdir()
            .unwrap();
        Self::start_in(dir, store, extra)
    }

    /// A control plane on `backend` with extra arguments, started.
    pub fn on(backend: Backend, extra: Vec<String>) -> ControlPlane {
        let cp = Self::unstarted(backend, extra);
        cp.spawn();
        cp
    }

    /// Like [`ControlPlane::on`] but not started: its port is chosen, and
    /// nothing listens there until [`ControlPlane::spawn`].
    pub fn unstarted(backend: Backend, extra: Vec<String>) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cp-")
            .tempdir()
            .unwrap();
        let store = match backend {
            Backend::Embedded => StoreKind::Embedded(dir.path().join("data")),
            Backend::Etcd => StoreKind::Etcd(Etcd::shared().endpoint(), unique_prefix("cp")),
        };
        Self::prepare(dir, store, extra)
    }

    fn prepare(dir: tempfile::TempDir, store: StoreKind, extra: Vec<String>) -> ControlPlane {
        let log_path = dir.path().join("sluice-cp.log");
        ControlPlane {
            child: Mutex::new(None),
            port: crate::free_port(),
            store,
            extra,
            dir,
            log_path,
        }
    }

    fn start_in(dir: tempfile::TempDir, store: StoreKind, extra: Vec<String>) -> ControlPlane {
        let cp = Self::prepare(dir, store, extra);
        cp.spawn();
        cp
    }

    pub fn url(&self) -> String {
        let tls = self.extra.iter().any(|a| a == "--tls-cert");
        format!(
            "{}://127.0.0.1:{}",
            if tls { "https" } else { "http" },
            self.port
        )
    }

    /// (Re)start the process with the same port, store and arguments; wait
    /// until it accepts connections.
    pub fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(bin("sluice-cp"));
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        match &self.store {
            StoreKind::Embedded(d) => {
                cmd.arg("--data-dir").arg(d);
            }
            StoreKind::Etcd(ep, prefix) => {
                cmd.arg("--etcd").arg(ep).arg("--prefix").arg(prefix);
                // The file audit sink's default is ./sluice-audit with etcd,
                // one process per directory: give each its own.
                let audit_given = self
                    .extra
                    .iter()
                    .any(|a| a == "--audit-dir" || a == "--audit-postgres");
                if !audit_given {
                    cmd.arg("--audit-dir").arg(self.dir.path().join("audit"));
                }
            }
        }
        if !self.extra.iter().any(|a| a == "--tls-cert") {
            cmd.arg("--plaintext");
        }
        cmd.args(&self.extra)
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = process::spawn_tied(cmd, libc::SIGKILL).expect("spawn sluice-cp");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("sluice-cp exited ({st}) at start\n{}", self.log());
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sluice-cp not listening within 20 s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.child.lock().unwrap() = Some(child);
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Run `sluicectl` against this control plane.
    pub fn ctl(&self, args: &[&str], stdin: Option<&[u8]>) -> process::Output {
        let mut cmd = Command::new(bin("sluicectl"));
        cmd.arg("--control-plane").arg(self.url()).args(args);
        process::run(&mut cmd, stdin, Duration::from_secs(60))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "--- sluice-cp log tail (port {}) ---\n{tail}\n--- end ---",
                self.port
            );
        }
    }
}

/// gRPC admin client (the API `sluicectl` uses).
pub struct Admin {
    client: proto::admin_client::AdminClient<tonic::transport::Channel>,
}

impl Admin {
    pub async fn connect(url: &str) -> Admin {
        let ch = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to control plane {url}: {e}"));
        Admin {
            client: proto::admin_client::AdminClient::new(ch),
        }
    }

    /// Connect over TLS, trusting `ca_pem`, presenting `identity` (cert and
    /// key PEM) if given. Errors are returned, not panicked on (a refused
    /// client certificate may only show at the first call).
    pub async fn try_connect_tls(
        url: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Admin, String> {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        let ch = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .tls_config(tls)
            .map_err(|e| format!("TLS config: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("connect to {url}: {e} ({e:?})"))?;
        Ok(Admin {
            client: proto::admin_client::AdminClient::new(ch),
        })
    }

    /// Apply resources as given (no client-side parsing or checks): what
    /// the server itself accepts or refuses.
    pub async fn apply_resources(
        &mut self,
        resources: Vec<proto::Resource>,
    ) -> Result<proto::ApplyResponse, tonic::Status> {
        self.client
            .apply(proto::ApplyRequest {
                resources,
                dry_run: false,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// The control plane's build, store and current snapshot version.
    pub async fn version(&mut self) -> proto::VersionResponse {
        self.client
            .version(proto::VersionRequest {})
            .await
            .expect("version")
            .into_inner()
    }

    /// Apply YAML documents; returns the response or the server's refusal.
    pub async fn try_apply(&mut self, yaml: &str) -> Result<proto::ApplyResponse, tonic::Status> {
        let resources = controlplane::resources::parse_documents(yaml, "test")
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        self.client
            .apply(proto::ApplyRequest {
                resources,
                dry_run: false,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn apply(&mut self, yaml: &str) -> proto::ApplyResponse {
        match self.try_apply(yaml).await {
            Ok(r) => r,
            Err(e) => panic!("apply refused: {} {}", e.code(), e.message()),
        }
    }

    pub async fn delete(&mut self, kind: &str, name: &str) -> Result<i64, tonic::Status> {
        self.client
            .delete(proto::DeleteRequest {
                kind: kind.into(),
                name: name.into(),
            })
            .await
            .map(|r| r.into_inner().version)
    }

    pub async fn nodes(&mut self) -> proto::ListNodesResponse {
        self.client
            .list_nodes(proto::ListNodesRequest {})
            .await
            .expect("list nodes")
            .into_inner()
    }

    pub async fn try_nodes(&mut self) -> Result<proto::ListNodesResponse, tonic::Status> {
        self.client
            .list_nodes(proto::ListNodesRequest {})
            .await
            .map(|r| r.into_inner())
    }

    /// Poll the node list until `ok` holds; panics after `limit` with
    /// `what` and the last list.
    pub async fn wait_nodes(
        &mut self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&proto::ListNodesResponse) -> bool,
    ) -> proto::ListNodesResponse {
        let deadline = Instant::now() + limit;
        loop {
            let l = self.nodes().await;
            if ok(&l) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "node list: {what}: not within {limit:?}: {l:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(
        &mut self,
        kind: &str,
        name: &str,
    ) -> Result<Vec<proto::Resource>, tonic::Status> {
        self.client
            .get(proto::GetRequest {
                kind: kind.into(),
                name: name.into(),
            })
            .await
            .map(|r| r.into_inner().resources)
    }

    /// Wait until `n` nodes are registered and each has applied `version`
    /// or later; panics after `limit` with the node list.
    pub async fn wait_applied(&mut self, n: usize, version: i64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let l = self.nodes().await;
            if l.nodes.len() == n && l.nodes.iter().all(|s| s.applied_version >= version) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not all apply version {version} within {limit:?}: {:#?}",
                l.nodes
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// YAML for a Connection to the test PostgreSQL.
pub fn connection_yaml(name: &str, pg: &crate::Pg) -> String {
    format!(
        "apiVersion: sluice.dev/v1\nkind: Connection\nmetadata: {{name: {name}}}\nspec:\n  host: 127.0.0.1\n  port: {}\n  database: {}\n  user: {}\n  password: {}\n",
        pg.port, pg.app_db, pg.app_user, pg.app_password
    )
}

/// YAML for an ApiKey with a given verifier.
pub fn api_key_yaml(name: &str, identity: &str, verifier: &str, groups: &[&str]) -> String {
    format!(
        "apiVersion: sluice.dev/v1\nkind: ApiKey\nmetadata: {{name: {name}}}\nspec:\n  identity: {identity}\n  verifier: \"{verifier}\"\n  groups: [{}]\n",
        groups.join(", ")
    )
}

/// YAML for a Policy.
pub fn policy_yaml(
    name: &str,
    connections: &[&str],
    identities: &[&str],
    groups: &[&str],
) -> String {
    format!(
        "apiVersion: sluice.dev/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  connections: [{}]\n  identities: [{}]\n  groups: [{}]\n",
        connections.join(", "),
        identities
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", "),
        groups.join(", ")
    )
}

/// Start a data-plane node subscribed to `urls`, named `name`. With
/// `wait_ready` it returns once the node has applied a snapshot.
pub fn node(
    urls: &[String],
    name: &str,
    extra_yaml: &str,
    wait_ready: bool,
) -> Result<Gateway, String> {
    // Rings in the node's temp dir (not /dev/shm) unless the caller
    // configures audit itself.
    let audit = if extra_yaml.lines().any(|l| l.starts_with("audit:")) {
        ""
    } else {
        "audit: { ring_dir: sluice-audit-rings }\n"
    };
    let yaml = format!(
        "control_plane:\n  urls: [{}]\n  node_name: {name}\n  heartbeat_seconds: 1\n{extra_yaml}{}{audit}",
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", "),
        // `extra_yaml` may continue `control_plane:` with indented keys,
        // so the audit line goes last.
        if extra_yaml.is_empty() || extra_yaml.ends_with('\n') {
            ""
        } else {
            "\n"
        }
    );
    if wait_ready {
        Gateway::try_start(&yaml)
    } else {
        Gateway::try_start_unready(&yaml)
    }
}

/// Paths of certificates written by `sluicectl certs`.
pub struct CpCerts {
    pub dir: PathBuf,
}

impl CpCerts {
    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
    pub fn in_dir(dir: &Path) -> CpCerts {
        CpCerts {
            dir: dir.to_path_buf(),
        }
    }

    pub fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"))
    }

    /// A CA and `ca`, `control-plane` (server: localhost, 127.0.0.1, ::1),
    /// `node` and `admin` (client) `.pem`/`.key` files in `dir`: written by
    /// `sluicectl certs --dir DIR` when that binary is built, else made here
    /// with rcgen in the same layout.
    pub fn generate(dir: &Path) -> CpCerts {
        Self::generate_with_nodes(dir, &[])
    }

    /// As [`CpCerts::generate`], plus `node-<name>` certificates valid only
    /// for those node ids (`sluicectl certs --node NAME`).
    pub fn generate_with_nodes(dir: &Path, nodes: &[&str]) -> CpCerts {
        let ctl = process::sluice_bin()
            .parent()
            .expect("binary dir")
            .join("sluicectl");
        if ctl.exists() {
            let mut cmd = Command::new(ctl);
            cmd.arg("certs").arg("--dir").arg(dir);
            for n in nodes {
                cmd.arg("--node").arg(n);
            }
            process::run(&mut cmd, None, Duration::from_secs(60)).assert_success("sluicectl certs");
        } else {
            write_test_pki(dir, nodes);
        }
        let c = CpCerts::in_dir(dir);
        for f in [
            "ca.pem",
            "control-plane.pem",
            "control-plane.key",
            "node.pem",
            "node.key",
            "admin.pem",
            "admin.key",
        ] {
            assert!(dir.join(f).exists(), "certificate file {f} not written");
        }
        c
    }

    /// The node's `control_plane:` TLS fields (YAML, indented for it).
    pub fn node_yaml(&self) -> String {
        self.node_yaml_as("node")
    }

    /// As [`CpCerts::node_yaml`] with the certificate `<cert>.pem/.key`.
    pub fn node_yaml_as(&self, cert: &str) -> String {
        format!(
            "  ca_file: {}\n  cert_file: {}\n  key_file: {}\n",
            crate::gateway::y(&self.path("ca.pem")),
            crate::gateway::y(&self.path(&format!("{cert}.pem"))),
            crate::gateway::y(&self.path(&format!("{cert}.key")))
        )
    }

    /// `sluice-cp` arguments for mutual TLS with these files.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("control-plane.pem"),
            "--tls-key".into(),
            self.path("control-plane.key"),
            "--client-ca".into(),
            self.path("ca.pem"),
        ]
    }
}

/// The rcgen fallback of [`CpCerts::generate`].
fn write_test_pki(dir: &Path, nodes: &[&str]) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "Sluice test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    write("ca.pem", ca_cert.pem());
    write("ca.key", ca_key.serialize_pem());
    let mut leaves: Vec<(String, String, ExtendedKeyUsagePurpose, Vec<String>)> = vec![
        (
            "control-plane".into(),
            "sluice-control-plane".into(),
            ExtendedKeyUsagePurpose::ServerAuth,
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        ),
        (
            "node".into(),
            "sluice-node".into(),
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        ),
        (
            "admin".into(),
            "sluice-admin".into(),
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        ),
    ];
    for n in nodes {
        leaves.push((
            format!("node-{n}"),
            format!("sluice-node:{n}"),
            ExtendedKeyUsagePurpose::ClientAuth,
            vec![],
        ));
    }
    for (name, cn, usage, sans) in leaves {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        write(&format!("{name}.pem"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    }
}
