//! `sluice-cp`: the control-plane server.
//!
//! A tonic server over one [`Store`] and one audit sink: the snapshot
//! stream every data-plane node keeps open ([`snapshots`]), the admin API
//! `sluicectl` calls ([`admin`]), and the audit services ([`audit`]: nodes
//! ship records on `AuditIngest`, `sluicectl audit …` reads them through
//! `AuditQuery`). A background task follows the
//! store's `config/` keys and keeps the current snapshot in a watch channel
//! ([`config`]); node membership lives under `nodes/` with leases
//! ([`nodes`]). Every replica on one etcd computes the same snapshot and
//! version, so nodes can fail over between replicas freely.

pub mod admin;
pub mod audit;
pub mod config;
pub mod jwks;
pub mod nodes;
pub mod peer;
pub mod snapshots;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use crate::store::Store;

/// State shared by the services.
pub struct Shared {
    pub store: Arc<dyn Store>,
    /// "etcd" or "embedded".
    pub store_kind: &'static str,
    pub current: watch::Sender<Option<config::Current>>,
    pub node_ttl: Duration,
    pub node_timeout: Duration,
    /// Bumped on every node request (tests and benchmarks wait on it).
    pub acks: watch::Sender<u64>,
    stream_ids: AtomicU64,
}

impl Shared {
    pub fn new(
        store: Arc<dyn Store>,
        store_kind: &'static str,
        node_ttl: Duration,
        node_timeout: Duration,
    ) -> Arc<Shared> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            << 16;
        Arc::new(Shared {
            store,
            store_kind,
            current: watch::channel(None).0,
            node_ttl,
            node_timeout,
            acks: watch::channel(0).0,
            stream_ids: AtomicU64::new(seed),
        })
    }

    pub fn latest_version(&self) -> i64 {
        self.current.borrow().as_ref().map_or(0, |c| c.version)
    }

    fn next_stream_id(&self) -> u64 {
        self.stream_ids.fetch_add(1, Relaxed)
    }
}

/// Transport security of the gRPC listener.
pub enum Transport {
    /// Loopback only, asked for explicitly.
    Plaintext,
    /// Server certificate plus required client certificates from `client_ca`.
    MutualTls {
        cert: PathBuf,
        key: PathBuf,
        client_ca: PathBuf,
    },
}

pub struct ServerConfig {
    pub listen: SocketAddr,
    pub transport: Transport,
    pub node_ttl: Duration,
    pub node_timeout: Duration,
    pub jwks_refresh: Duration,
    /// Where audit records go.
    pub audit: audit::SinkConfig,
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    cfg: ServerConfig,
    store: Arc<dyn Store>,
    store_kind: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if matches!(cfg.transport, Transport::Plaintext) && !cfg.listen.ip().is_loopback() {
        anyhow::bail!(
            "--plaintext is allowed only on a loopback address, not {}: give --tls-cert, --tls-key and --client-ca",
            cfg.listen
        );
    }
    let sinks = audit::AuditSinks::open(&cfg.audit).await?;
    let shared = Shared::new(store.clone(), store_kind, cfg.node_ttl, cfg.node_timeout);
    tokio::spawn(config::follow(store.clone(), shared.current.clone()));
    tokio::spawn(jwks::refresh_loop(store.clone(), cfg.jwks_refresh));

    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Transport::MutualTls {
        cert,
        key,
        client_ca,
    } = &cfg.transport
    {
        let read = |p: &PathBuf, flag: &str| {
            std::fs::read(p).with_context(|| format!("{flag}: cannot read {}", p.display()))
        };
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                read(cert, "--tls-cert")?,
                read(key, "--tls-key")?,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                client_ca,
                "--client-ca",
            )?));
        builder = builder
            .tls_config(tls)
            .context("TLS configuration (--tls-cert, --tls-key, --client-ca)")?;
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", cfg.listen))?;
    let bound = listener.local_addr()?;
    tracing::info!(
        store = store_kind,
        audit = sinks.kind,
        tls = matches!(cfg.transport, Transport::MutualTls { .. }),
        "sluice-cp listening on {bound}"
    );
    builder
        // Node services for node certificates, operator services for admin
        // certificates (`peer`); a stream's node id is checked against a
        // certificate that names one inside the service.
        .add_service(InterceptedService::new(
            proto::snapshot_service_server::SnapshotServiceServer::new(
                snapshots::SnapshotService {
                    shared: shared.clone(),
                },
            ),
            peer::node_only,
        ))
        .add_service(InterceptedService::new(
            proto::admin_server::AdminServer::new(admin::AdminService {
                shared: shared.clone(),
            })
            // An apply may carry a whole configuration; `apply` itself
            // refuses one over MAX_CONFIG_BYTES, with a clear message.
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES),
            peer::admin_only,
        ))
        .add_service(InterceptedService::new(
            proto::audit_ingest_server::AuditIngestServer::new(audit::IngestService {
                sinks: sinks.clone(),
                store: shared.store.clone(),
                open: Default::default(),
            })
            .max_decoding_message_size(audit::MAX_BATCH_BYTES),
            peer::node_only,
        ))
        .add_service(InterceptedService::new(
            proto::audit_query_server::AuditQueryServer::new(audit::QueryService {
                sinks,
                shared: shared.clone(),
            })
            .max_encoding_message_size(audit::MAX_ANSWER_BYTES),
            peer::admin_only,
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("gRPC server")?;
    Ok(())
}
