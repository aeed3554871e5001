//! The monoio drivers: worker threads, listeners, connections.
//!
//! One worker per core, each a monoio runtime (io_uring, or epoll where
//! io_uring is refused) with its own `SO_REUSEPORT` listener per address, so
//! the kernel spreads connections across cores. A worker owns its
//! connections and metrics; it shares only the snapshot pointer and the
//! cancel-key table with the others.

pub mod catalog;
pub mod conn;
pub mod io;
pub mod proxy;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpListener;

use crate::cancel::{BadCancelLimiter, CancelRegistry};
use crate::config::DriverChoice;
use crate::metrics::CoreMetrics;

/// Shared, process-wide state every worker reads.
pub struct Shared {
    pub snapshot: arc_swap::ArcSwap<crate::snapshot::Snapshot>,
    pub cancels: Arc<CancelRegistry>,
    /// The client-facing TLS (None: off), reloaded when its files change.
    pub tls: Option<Arc<crate::tls::LiveTls>>,
    pub tls_required: bool,
    pub limits: crate::config::Limits,
    pub node_id: u8,
    pub draining: std::sync::atomic::AtomicBool,
    /// False until the first snapshot is applied (control-plane mode).
    pub snapshot_ready: std::sync::atomic::AtomicBool,
    pub rng: ring::rand::SystemRandom,
    /// PROXY protocol from the load balancers in front (None: off).
    pub proxy: Option<proxy::ProxyPolicy>,
    /// Static mode: SIGHUP reloads of the configuration file that applied,
    /// and that did not.
    pub config_reloads: std::sync::atomic::AtomicU64,
    pub config_reload_failures: std::sync::atomic::AtomicU64,
}

/// What one worker thread owns.
pub struct Worker {
    pub id: usize,
    pub metrics: Arc<CoreMetrics>,
    pub shared: Arc<Shared>,
    pub bad_cancels: BadCancelLimiter,
    /// This core's audit ring (None: audit is off).
    pub audit: Option<crate::audit::CoreAudit>,
    /// This core's reads of targets' column catalogs (`catalog`).
    pub origins: catalog::OriginsCache,
}

/// Bind one listening socket per (worker, address) with SO_REUSEPORT.
/// Port 0 is resolved by the first bind and reused by the rest.
pub fn bind_listeners(
    addrs: &[SocketAddr],
    workers: usize,
) -> std::io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        let mut actual = *addr;
        for slot in per_worker.iter_mut() {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(actual),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            sock.set_reuse_address(true)?;
            sock.set_reuse_port(true)?;
            sock.set_nonblocking(true)?;
            sock.set_nodelay(true)?;
            sock.bind(&actual.into())?;
            sock.listen(4096)?;
            let l: std::net::TcpListener = sock.into();
            actual = l.local_addr()?;
            slot.push(l);
        }
    }
    Ok(per_worker)
}

/// Start worker `id` on the current thread; never returns while the process
/// runs. `ready` receives the worker's metrics (with its driver) once its
/// listeners are registered, or an error.
pub fn run_worker(
    id: usize,
    driver: DriverChoice,
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    audit: Option<crate::audit::CoreInit>,
    ready: std::sync::mpsc::Sender<Result<Arc<CoreMetrics>, String>>,
) {
    let want_uring = match driver {
        DriverChoice::Epoll => false,
        DriverChoice::IoUring => true,
        DriverChoice::Auto => {
            let ok = monoio::utils::detect_uring();
            if !ok {
                tracing::warn!(
                    worker = id,
                    "io_uring is not available (refused by the kernel or a sandbox); using epoll"
                );
            }
            ok
        }
    };
    let mut uring = None;
    if want_uring {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .uring_builder(uring_flags())
            .attach_thread_pool(Box::new(blocking_pool()))
            .enable_timer()
            .build()
        {
            Ok(rt) => uring = Some(rt),
            Err(e) if driver == DriverChoice::IoUring => {
                let _ = ready.send(Err(format!("worker {id}: io_uring runtime refused: {e}")));
                return;
            }
            Err(e) => tracing::warn!(worker = id, "io_uring refused ({e}); falling back to epoll"),
        }
    }
    let label = if uring.is_some() { "io_uring" } else { "epoll" };
    let metrics = Arc::new(CoreMetrics::new(id, label));
    let worker = Rc::new(Worker {
        id,
        metrics: metrics.clone(),
        shared: shared.clone(),
        bad_cancels: BadCancelLimiter::new(shared.limits.bad_cancels_per_second),
        audit: audit.map(crate::audit::CoreAudit::new),
        origins: catalog::OriginsCache::default(),
    });
    let main = async move {
        let mut ls = Vec::new();
        for l in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => ls.push(l),
                Err(e) => {
                    let _ = ready.send(Err(format!("worker {id}: cannot register listener: {e}")));
                    return;
                }
            }
        }
        tracing::info!(worker = id, driver = label, "worker started");
        let _ = ready.send(Ok(metrics));
        let mut tasks = Vec::new();
        for l in ls {
            let w = worker.clone();
            tasks.push(monoio::spawn(accept_loop(w, l)));
        }
        for t in tasks {
            t.await;
        }
    };
    match uring {
        Some(mut rt) => rt.block_on(main),
        None => run_epoll(main),
    }
}

/// One small pool, shared by all workers, for CPU-heavy work that must not
/// run on a data core (checking a cleartext API key's PBKDF2).
fn blocking_pool() -> monoio::blocking::DefaultThreadPool {
    static POOL: std::sync::OnceLock<monoio::blocking::DefaultThreadPool> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| monoio::blocking::DefaultThreadPool::new(2))
        .clone()
}

/// Ring setup flags: only this thread submits (SINGLE_ISSUER), and
/// completions are handed over when the thread next enters the kernel
/// instead of by interrupting it (COOP_TASKRUN), which saves an IPI per
/// completion on a busy core.
fn uring_flags() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if std::env::var_os("SLUICE_URING_PLAIN").is_none() {
        b.setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer();
    }
    b
}

fn run_epoll<F: std::future::Future<Output = ()>>(main: F) {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .attach_thread_pool(Box::new(blocking_pool()))
        .enable_timer()
        .build()
        .expect("epoll runtime");
    rt.block_on(main)
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                monoio::spawn(conn::serve(worker.clone(), stream, peer));
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                tracing::warn!(worker = worker.id, "accept failed: {e}");
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}
