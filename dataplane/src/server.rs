//! Process assembly: snapshot, listeners, worker threads, control thread.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::admin::{self, AdminState};
use crate::audit::{Audit, AuditSettings, FsyncPolicy, WhenFull};
use crate::cancel::CancelRegistry;
use crate::config::{Config, FsyncChoice, WhenFullChoice};
use crate::metrics::Registry;
use crate::net::{self, Shared};
use crate::snapshot::Snapshot;

/// Raise the soft open-files limit to the hard limit: every session holds
/// two sockets.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            if rl.rlim_cur < rl.rlim_max {
                rl.rlim_cur = rl.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
            return rl.rlim_cur;
        }
    }
    0
}

/// Run the gateway until SIGTERM/SIGINT (drain) or a fatal error.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // SIGHUP reloads (`reload_on_signal`); until its handler is in place,
    // one sent while the node starts must neither end it (the default
    // action) nor be lost (an edit made while it started would never
    // apply): blocked here, in every thread this one starts, it stays
    // pending until `reload_on_signal` has its handler and unblocks it on
    // this (the control) thread. (Ignored too, for any thread that does not
    // block it: a blocked signal is never discarded as ignored.)
    // SAFETY: setting a signal's disposition to ignore.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    sighup_blocked(true);
    let nofile = raise_nofile_limit();
    // With a control plane the node starts empty and not ready; otherwise
    // the file is the configuration.
    let snapshot = match &cfg.control_plane {
        Some(_) => Snapshot::default(),
        None => Snapshot::build(&cfg, 1)?,
    };
    let tls = match &cfg.tls {
        Some(t) => Some(Arc::new(crate::tls::LiveTls::start(t)?)),
        None => None,
    };
    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        cfg.workers
    };
    let addrs = cfg.listen_addrs();
    let listeners = net::bind_listeners(&addrs, workers)
        .with_context(|| format!("cannot listen on {:?}", cfg.listen))?;
    let bound: Vec<_> = listeners[0]
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();

    let proxy = match &cfg.proxy_protocol {
        Some(p) => Some(net::proxy::ProxyPolicy::new(p.trusted_nets()?, p.required)),
        None => None,
    };

    let shared = Arc::new(Shared {
        snapshot: arc_swap::ArcSwap::from_pointee(snapshot),
        cancels: Arc::new(CancelRegistry::new(cfg.node_id)),
        tls_required: cfg.tls.as_ref().is_some_and(|t| t.required),
        tls,
        limits: cfg.limits.clone(),
        node_id: cfg.node_id,
        draining: AtomicBool::new(false),
        snapshot_ready: AtomicBool::new(cfg.control_plane.is_none()),
        rng: ring::rand::SystemRandom::new(),
        proxy,
        config_reloads: Default::default(),
        config_reload_failures: Default::default(),
    });

    // The node's id: membership, audit records, the audit stream.
    let node_id = cfg
        .control_plane
        .as_ref()
        .and_then(|cp| cp.node_name.clone())
        .unwrap_or_else(|| {
            // (`<hostname>-<port>`, in the characters the control plane's
            // audit store takes: a `:` made it refuse every record.)
            let host: String = hostname()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '-'
                    }
                })
                .take(100)
                .collect();
            format!("{host}-{}", bound.first().map_or(0, |a| a.port()))
        });

    // Audit: recover what the last run left, before any worker starts.
    let (audit, mut audit_cores) = if cfg.audit.is_enabled(cfg.control_plane.is_some()) {
        let a = &cfg.audit;
        let settings = AuditSettings {
            dir: a.spool_dir.clone(),
            ring_dir: a
                .ring_dir
                .clone()
                .unwrap_or_else(|| crate::audit::service::default_ring_dir(&a.spool_dir)),
            node_id: node_id.clone(),
            quota_bytes: a.quota_bytes,
            fsync: match a.fsync {
                FsyncChoice::Batch => FsyncPolicy::Batch,
                FsyncChoice::Never => FsyncPolicy::Never,
            },
            ring_bytes: a.ring_bytes,
            max_sql_bytes: a.max_sql_bytes,
            when_full: match a.when_full {
                WhenFullChoice::FailClosed => WhenFull::FailClosed,
                WhenFullChoice::FailOpen => WhenFull::FailOpen,
            },
            flush_interval: Duration::from_millis(a.flush_interval_ms),
            auth_failures_per_second: a.auth_failures_per_second,
        };
        let (audit, inits) = Audit::open(&settings, workers)?;
        audit.start()?;
        if cfg.control_plane.is_none() {
            tracing::warn!(dir = %a.spool_dir.display(), quota_bytes = a.quota_bytes, when_full = ?a.when_full, "audit without a control plane: records are kept in the local spool only, which nothing empties; once it reaches its quota, statements are refused (fail_closed) or run unaudited (fail_open)");
            audit.push_side(snapshot_applied(1));
        }
        (Some(audit), inits.into_iter().map(Some).collect())
    } else {
        (None, Vec::new())
    };
    audit_cores.resize_with(workers, || None);

    // A worker that panics ends the process (after the panic's message):
    // a dead worker would leave its sessions hung and its listener taking
    // connections no one serves, with the node still reporting ready. The
    // audit records the clients saw completed are in the rings already,
    // and a supervisor restarts the node.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("sluice-w"))
        {
            eprintln!("sluice-dp: a data-plane worker panicked; the node stops (restart it)");
            std::process::abort();
        }
    }));
    let (tx, rx) = std::sync::mpsc::channel();
    for (id, ls) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let tx = tx.clone();
        let driver = cfg.driver;
        let core_audit = audit_cores[id].take();
        std::thread::Builder::new()
            .name(format!("sluice-w{id}"))
            .spawn(move || net::run_worker(id, driver, ls, shared, core_audit, tx))
            .context("cannot start worker thread")?;
    }
    drop(tx);
    let mut cores = Vec::with_capacity(workers);
    for _ in 0..workers {
        match rx.recv() {
            Ok(Ok(m)) => cores.push(m),
            Ok(Err(e)) => anyhow::bail!(e),
            Err(_) => anyhow::bail!("a worker thread died while starting"),
        }
    }
    cores.sort_by_key(|c| c.worker);

    let admin_addr: std::net::SocketAddr = cfg.admin_listen.parse().context("admin_listen")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("sluice-control")
        .build()
        .context("cannot start the control thread runtime")?;
    rt.block_on(async move {
        let listener = admin::bind(admin_addr)
            .await
            .with_context(|| format!("admin_listen: cannot listen on {admin_addr}"))?;
        let admin_bound = listener.local_addr()?;
        let state = Arc::new(AdminState {
            registry: Registry { cores },
            shared: shared.clone(),
            started: AtomicBool::new(true),
            control: Default::default(),
            audit: audit.clone(),
        });
        for b in &bound {
            tracing::info!(workers, nofile, "listening for PostgreSQL clients on {b}");
        }
        tracing::info!("admin (metrics, healthz, readyz) on http://{admin_bound}");
        tracing::info!(
            kernel = crate::mask::Kernel::best().name(),
            fastest = crate::mask::Kernel::fastest().name(),
            "masking kernel"
        );
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, st).await {
                tracing::error!("admin server failed: {e}");
            }
        });
        let st = state.clone();
        tokio::spawn(async move { return_freed_memory(st).await });
        if let Some(cp) = cfg.control_plane.clone() {
            let first = bound.first().map(|a| a.to_string()).unwrap_or_default();
            let node = crate::control::NodeInfo {
                id: node_id.clone(),
                address: cp.advertise.clone().unwrap_or(first),
                cores: workers as u32,
            };
            tracing::info!(node = %node.id, urls = ?cp.urls, "waiting for the first snapshot from the control plane");
            let shared = shared.clone();
            let stats = state.control.clone();
            if let Some(a) = &audit {
                tokio::spawn(crate::audit::shipper::run(cp.clone(), a.clone()));
            }
            tokio::spawn(crate::control::run(cp, node, shared, stats, audit.clone()));
        }
        if let (Some(t), Some(a)) = (&shared.tls, &audit) {
            a.push_side(tls_loaded(&t.stats.facts(), "start"));
        }
        tokio::spawn(reload_on_signal(
            shared.clone(),
            cfg.tls.as_ref().map_or(0, |t| t.reload_interval_s),
            audit.clone(),
            // (Static mode: the file is the configuration.)
            cfg.control_plane.is_none().then(|| Arc::new(cfg.clone())),
            state.control.clone(),
        ));
        wait_for_signal().await;
        shared.draining.store(true, Relaxed);
        let deadline = Instant::now() + Duration::from_millis(shared.limits.drain_timeout_ms);
        tracing::info!("draining: not ready, refusing new sessions, waiting for open ones");
        loop {
            let open: i64 = state
                .registry
                .cores
                .iter()
                .map(|c| c.sessions_open.load(Relaxed))
                .sum();
            if open <= 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(open, "drain deadline reached; closing remaining sessions");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = wait_for_signal() => {
                    tracing::warn!("second signal: exiting now");
                    break;
                }
            }
        }
        if let Some(a) = &audit {
            // A last drain of the rings into the spool, then a moment for
            // the control plane to acknowledge it.
            // Connections (handshakes included) all gone: no core can
            // write a record any more.
            let connections: i64 = state
                .registry
                .cores
                .iter()
                .map(|c| c.connections_open.load(Relaxed))
                .sum();
            a.shutdown(connections <= 0);
            if cfg.control_plane.is_some() {
                crate::audit::shipper::wait_acknowledged(a, Duration::from_secs(2)).await;
            }
        }
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

/// SIGHUP: in static mode, apply the configuration file's policy
/// sections again ([`reload_config`]); then, and every `interval_s`
/// seconds (0: SIGHUP only), reload the TLS files if they changed
/// ([`crate::tls::LiveTls::reload`]). (SIGHUP's default action would end
/// the process.)
async fn reload_on_signal(
    shared: Arc<Shared>,
    interval_s: u64,
    audit: Option<Arc<crate::audit::Audit>>,
    config: Option<Arc<Config>>,
    stats: Arc<crate::control::ControlStats>,
) {
    use crate::tls::Reload;
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot handle SIGHUP: {e}");
            return;
        }
    };
    // (This task runs on the thread `run` blocked it on, the control
    // thread's current-thread runtime: one sent while the node started is
    // delivered now, and handled below.)
    sighup_blocked(false);
    let period = (interval_s > 0 && shared.tls.is_some()).then(|| Duration::from_secs(interval_s));
    let mut version = 1;
    let mut applied = match &config {
        Some(c) => {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.policy_digest())
                .await
                .unwrap_or_default()
        }
        None => [0; 32],
    };
    loop {
        let asked = tokio::select! {
            _ = hup.recv() => true,
            _ = async {
                match period {
                    Some(p) => tokio::time::sleep(p).await,
                    None => std::future::pending().await,
                }
            } => false,
        };
        if asked {
            match &config {
                Some(running) => {
                    let next = version + 1;
                    let running = running.clone();
                    // (Reading files, compiling masking profiles: off the
                    // async thread.)
                    let r =
                        tokio::task::spawn_blocking(move || reload_config(&running, next, applied))
                            .await
                            .unwrap_or_else(|e| {
                                Err(anyhow::anyhow!("the reload task failed: {e}"))
                            });
                    match r {
                        Ok((None, restart)) => {
                            tracing::info!(version, "SIGHUP: the configuration's policy sections and the files they name are unchanged: version {version} stays");
                            if !restart.is_empty() {
                                tracing::warn!(sections = ?restart, "SIGHUP: changes to these sections take a restart and were not applied");
                            }
                        }
                        Ok((Some((snap, digest)), restart)) => {
                            version = next;
                            applied = digest;
                            shared.snapshot.store(Arc::new(snap));
                            shared.config_reloads.fetch_add(1, Relaxed);
                            // (What `/snapshot` shows as `applied_unix_us`.)
                            stats
                                .last_applied_unix_us
                                .store(crate::control::unix_us(), Relaxed);
                            if let Some(a) = &audit {
                                a.push_side(snapshot_applied(version));
                            }
                            tracing::info!(version, "SIGHUP: configuration reloaded (connections, identities, jwt_issuers, grants, masking_profiles); open sessions are checked against it at their next statement");
                            if !restart.is_empty() {
                                tracing::warn!(sections = ?restart, "SIGHUP: changes to these sections take a restart and were not applied");
                            }
                        }
                        Err(e) => {
                            shared.config_reload_failures.fetch_add(1, Relaxed);
                            tracing::error!(version, "SIGHUP: configuration not reloaded, version {version} stays in use: {e:#}");
                        }
                    }
                }
                None if shared.tls.is_none() => {
                    tracing::info!("SIGHUP: the configuration comes from the control plane, and there are no TLS files: nothing to reload");
                }
                None => {}
            }
        }
        let Some(tls) = &shared.tls else {
            continue;
        };
        // (Reading and parsing a few small files: off the async thread.)
        let t = tls.clone();
        let Ok(r) = tokio::task::spawn_blocking(move || t.reload()).await else {
            continue;
        };
        match r {
            Reload::Unchanged => {
                if asked {
                    tracing::info!("SIGHUP: the TLS files are unchanged");
                }
            }
            Reload::Loaded(f) => {
                tracing::info!(
                    cert_not_after = f.cert_not_after(),
                    revocation_lists = f.crls(),
                    revoked_certificates = f.revoked(),
                    "TLS files reloaded: new connections use them"
                );
                if let Some(a) = &audit {
                    a.push_side(tls_loaded(&f, if asked { "sighup" } else { "interval" }));
                }
            }
            Reload::Failed { error, news } => {
                if news || asked {
                    tracing::error!(
                        "TLS files not reloaded, the last good ones stay in use: {error}"
                    );
                }
            }
        }
    }
}

/// Block (or unblock) SIGHUP in the calling thread; threads it starts
/// afterwards inherit the mask.
fn sighup_blocked(block: bool) {
    // SAFETY: a sigset_t initialised by sigemptyset, passed by pointer to
    // pthread_sigmask, which changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// The snapshot of the configuration file as it is now (its
/// [`config::RELOADABLE`] sections over `running`), numbered `version`,
/// and the other sections that changed (they take a restart).
/// (The file is checked with the running configuration's other sections,
/// command-line overrides included: a file that starts only with
/// `--workers` reloads. Checked alone, what it would say at a start without
/// them is only logged.)
/// None for the snapshot when the policy is what was applied last
/// (`applied`, a [`Config::policy_digest`]): a SIGHUP sent for the TLS
/// files makes no new version.
#[allow(clippy::type_complexity)]
fn reload_config(
    running: &Config,
    version: u64,
    applied: [u8; 32],
) -> anyhow::Result<(Option<(Snapshot, [u8; 32])>, Vec<String>)> {
    let source = running
        .source
        .as_ref()
        .context("the configuration was not read from a file")?;
    let new = Config::read(&source.path).with_context(|| source.path.display().to_string())?;
    if let Err(e) = new.validate() {
        tracing::warn!("SIGHUP: {} as written would not start the node without the command line's overrides: {e}", source.path.display());
    }
    let restart = new
        .source
        .as_ref()
        .map(|n| source.restart_only_changes(n))
        .unwrap_or_default();
    let merged = running
        .with_reloadable(new)
        .with_context(|| source.path.display().to_string())?;
    let digest = merged.policy_digest();
    if digest == applied {
        return Ok((None, restart));
    }
    Ok((Some((Snapshot::build(&merged, version)?, digest)), restart))
}

/// After a burst of connections closes, hand the freed buffers back to the
/// OS: glibc keeps freed heap memory in its per-thread arenas otherwise, and
/// RSS would stay at the burst's peak. Runs on the control thread, only when
/// the number of open connections has fallen.
async fn return_freed_memory(state: Arc<AdminState>) {
    let mut peak: i64 = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let open: i64 = state
            .registry
            .cores
            .iter()
            .map(|c| c.connections_open.load(Relaxed))
            .sum();
        peak = peak.max(open);
        if peak - open >= 64 {
            // SAFETY: malloc_trim only releases free memory of the allocator.
            unsafe {
                libc::malloc_trim(0);
            }
            peak = open;
        }
    }
}

/// A SNAPSHOT_APPLIED audit record for `version`.
pub fn snapshot_applied(version: u64) -> proto::AuditRecord {
    proto::AuditRecord {
        metadata: Some(proto::AuditMetadata {
            kind: proto::AuditKind::SnapshotApplied as i32,
            time_unix_nanos: crate::audit::pump::unix_nanos(),
            snapshot_version: version as i64,
            ..Default::default()
        }),
        outcome: Some(proto::AuditOutcome {
            decision: proto::Decision::Allow as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A TLS_LOADED audit record of the TLS files described by `f`, loaded
/// because of `trigger`.
pub fn tls_loaded(f: &crate::tls::TlsFacts, trigger: &str) -> proto::AuditRecord {
    proto::AuditRecord {
        metadata: Some(proto::AuditMetadata {
            kind: proto::AuditKind::TlsLoaded as i32,
            time_unix_nanos: crate::audit::pump::unix_nanos(),
            ..Default::default()
        }),
        // (No outcome: a load decides nothing, and counts as no allow.)
        tls: Some(proto::AuditTls {
            trigger: trigger.to_string(),
            ..f.described.clone()
        }),
        ..Default::default()
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload checks the file's policy sections with the running
    /// configuration, command-line overrides included: a file whose
    /// `workers` only the command line makes valid reloads, and its
    /// identities apply.
    #[test]
    fn reloads_check_the_file_with_the_command_lines_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.yaml");
        let file = |identity: &str| {
            format!(
                "workers: 5000\nlisten: [\"127.0.0.1:0\"]\nconnections:\n  - {{ name: app, target: {{ host: 127.0.0.1, port: 5432, database: app, user: app, password: pw }} }}\nidentities:\n  - {{ name: {identity}, api_key: \"{}\" }}\ngrants:\n  - {{ connections: [app], identities: [{identity}] }}\n",
                crate::auth::scram::Verifier::generate(b"k", 16)
            )
        };
        std::fs::write(&path, file("a1")).unwrap();
        assert!(Config::load(&path).is_err(), "workers: 5000 alone");
        let mut running = Config::read(&path).unwrap();
        running.workers = 2; // --workers 2
        running.validate().unwrap();
        std::fs::write(&path, file("a2")).unwrap();
        let first = running.policy_digest();
        let (snap, restart) = reload_config(&running, 2, first).unwrap();
        let (snap, digest) = snap.unwrap();
        assert!(
            snap.identities.contains_key("a2"),
            "{:?}",
            snap.identities.keys()
        );
        assert!(restart.is_empty(), "{restart:?}");
        // The same file again: no new snapshot.
        assert!(reload_config(&running, 3, digest).unwrap().0.is_none());
        // A policy that does not check over the running configuration.
        std::fs::write(
            &path,
            file("a3").replace("connections: [app]", "connections: [nope]"),
        )
        .unwrap();
        let e = reload_config(&running, 3, digest).err().unwrap();
        assert!(format!("{e:#}").contains("grants[0]"), "{e:#}");
    }
}
