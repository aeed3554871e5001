//! `sluice-cp`: the Sluice control plane.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use controlplane::server::audit::SinkConfig;
use controlplane::server::{self, ServerConfig, Transport};
use controlplane::store::{EmbeddedStore, EtcdStore, Store};

#[derive(Parser)]
#[command(
    name = "sluice-cp",
    version,
    about = "Sluice control plane: configuration, snapshots to data planes, membership, audit"
)]
struct Cli {
    /// gRPC listener (snapshot stream, admin API, audit ingest and queries).
    #[arg(long, default_value = "127.0.0.1:7600", env = "SLUICE_CP_LISTEN")]
    listen: std::net::SocketAddr,
    /// etcd endpoints (comma-separated). Without it, an embedded store in
    /// --data-dir is used (one machine, one control plane).
    #[arg(long, env = "SLUICE_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix in etcd (several Sluice deployments can share one etcd).
    #[arg(long, default_value = "/sluice/", env = "SLUICE_ETCD_PREFIX")]
    prefix: String,
    /// Directory of the embedded store.
    #[arg(long, default_value = "sluice-cp-data", env = "SLUICE_CP_DATA_DIR")]
    data_dir: PathBuf,
    /// Server certificate (PEM) for mutual TLS.
    #[arg(long, requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA whose certificates data planes and sluicectl must present.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Serve without TLS: loopback listen addresses only.
    #[arg(long, conflicts_with = "tls_cert")]
    plaintext: bool,
    /// Seconds a node stays listed after its control plane stops renewing it.
    #[arg(long, default_value_t = 10)]
    node_ttl: u64,
    /// Seconds without a heartbeat after which a node's stream is closed.
    #[arg(long, default_value_t = 20)]
    node_timeout: u64,
    /// Seconds between JWKS refreshes of identity providers given by URL.
    #[arg(long, default_value_t = 300)]
    jwks_refresh: u64,
    /// Directory of the embedded audit sink (append-only, hash-chained
    /// segment files; one sluice-cp per directory). Default:
    /// <data-dir>/audit with the embedded store, ./sluice-audit with etcd.
    #[arg(long, env = "SLUICE_AUDIT_DIR", value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// Production audit sink: PostgreSQL connection string (`host=… port=…
    /// user=… password=… dbname=…`, no TLS). Used instead of files; every
    /// replica may point at the same database.
    #[arg(
        long,
        env = "SLUICE_AUDIT_POSTGRES",
        value_name = "DSN",
        conflicts_with = "audit_dir",
        hide_env_values = true
    )]
    audit_postgres: Option<String>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let transport = match (&cli.tls_cert, &cli.tls_key, &cli.client_ca, cli.plaintext) {
        (Some(c), Some(k), Some(ca), false) => Transport::MutualTls {
            cert: c.clone(),
            key: k.clone(),
            client_ca: ca.clone(),
        },
        (None, _, _, true) => Transport::Plaintext,
        _ => anyhow::bail!(
            "give --tls-cert, --tls-key and --client-ca (mutual TLS), or --plaintext on a loopback address (see `sluicectl certs`)"
        ),
    };
    let (store, kind): (Arc<dyn Store>, &'static str) = if cli.etcd.is_empty() {
        std::fs::create_dir_all(&cli.data_dir).map_err(|e| {
            anyhow::anyhow!("--data-dir: cannot create {}: {e}", cli.data_dir.display())
        })?;
        let s = EmbeddedStore::open(&cli.data_dir)
            .await
            .map_err(|e| anyhow::anyhow!("--data-dir {}: {e}", cli.data_dir.display()))?;
        tracing::info!(dir = %cli.data_dir.display(), "embedded store");
        (Arc::new(s), "embedded")
    } else {
        // etcd may be down at start: keep trying, as after any outage.
        let mut backoff = Duration::from_millis(100);
        let s = loop {
            match EtcdStore::connect(&cli.etcd, &cli.prefix).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(
                        "etcd {:?} unavailable: {e}; retrying in {backoff:?}",
                        cli.etcd
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!(endpoints = ?cli.etcd, prefix = %cli.prefix, "etcd store");
        (Arc::new(s), "etcd")
    };
    let audit = match (&cli.audit_postgres, &cli.audit_dir) {
        (Some(dsn), _) => SinkConfig::Postgres(dsn.clone()),
        (None, Some(dir)) => SinkConfig::Files(dir.clone()),
        (None, None) if kind == "embedded" => SinkConfig::Files(cli.data_dir.join("audit")),
        (None, None) => SinkConfig::Files(PathBuf::from("sluice-audit")),
    };
    server::serve(
        ServerConfig {
            listen: cli.listen,
            transport,
            node_ttl: Duration::from_secs(cli.node_ttl.max(1)),
            node_timeout: Duration::from_secs(cli.node_timeout.max(1)),
            jwks_refresh: Duration::from_secs(cli.jwks_refresh.max(1)),
            audit,
        },
        store,
        kind,
        wait_for_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sluice-cp")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-cp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-cp: {e:#}");
            ExitCode::FAILURE
        }
    }
}
