//! The node's audit pipeline, assembled: the spool directory (locked), the
//! per-core rings (recovered), the [`Pump`], and the drain thread that runs
//! it every few milliseconds.
//!
//! Startup order matters: [`Audit::open`] recovers everything left by the
//! previous run (ring frames not yet in the spool are moved there, minus
//! duplicates) before any worker starts, so the first batch the shipper
//! sends begins with what the last run did not get acknowledged.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use proto::AuditRecord;

use super::core::CoreInit;
use super::pump::{unix_ms, AuditStats, Pump, SideQueue};
use super::ring::{self, AuditGate, RingConsumer, RingError, RingFile, WhenFull};
use super::spool::{FsyncPolicy, Spool, SpoolConfig};

/// How often the drain thread retries while the spool refuses records.
const REFUSED_INTERVAL: Duration = Duration::from_millis(20);

/// The `audit:` configuration, resolved.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub dir: PathBuf,
    /// Where the core ring files live (may be `dir`).
    pub ring_dir: PathBuf,
    /// Stamped on every record; the control plane keeps one stream per id.
    pub node_id: String,
    pub quota_bytes: u64,
    pub fsync: FsyncPolicy,
    pub ring_bytes: u64,
    pub max_sql_bytes: usize,
    pub when_full: WhenFull,
    /// How often the drain thread moves ring records to the spool (one
    /// append, and with `fsync: batch` one fdatasync, per interval at most).
    pub flush_interval: Duration,
    /// Authentication-failure records per core per second (0: no limit;
    /// see `config::Audit::auth_failures_per_second`).
    pub auth_failures_per_second: u32,
}

/// See the module docs.
pub struct Audit {
    pump: Arc<Mutex<Pump>>,
    stats: Arc<AuditStats>,
    gate: Arc<AuditGate>,
    side: SideQueue,
    /// Woken after each append that stored records (the shipper waits on it).
    pub notify: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    node_id: String,
    flush_interval: Duration,
    spool_dir: PathBuf,
    ring_dir: PathBuf,
    /// Held for the life of the process: one sluice-dp per spool (and ring)
    /// directory.
    _locks: Vec<File>,
}

fn lock_dir(dir: &std::path::Path, field: &str) -> anyhow::Result<File> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("audit.{field}: cannot open {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        anyhow::bail!(
            "audit.{field}: {} is in use by another sluice-dp (each node needs its own directory)",
            dir.display()
        );
    }
    Ok(f)
}

/// Where the ring files go when `audit.ring_dir` is not set: a directory
/// of its own under `/dev/shm` (tmpfs), named after the spool directory's
/// absolute path, so each spool keeps its rings across restarts. Falls back
/// to the spool directory where there is no writable `/dev/shm`.
///
/// Why not the spool directory itself: the rings must survive the process,
/// which a tmpfs file does as well as a disk file does, and a data core
/// writing into a disk-backed shared mapping takes page faults into the
/// file system whenever the kernel has written a page back (ext4
/// `page_mkwrite`, which can wait for the journal): a core must never wait
/// for a disk. Neither kind of ring survives a power loss; the spool does.
pub fn default_ring_dir(spool_dir: &std::path::Path) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let writable = fs::metadata(shm).is_ok_and(|m| m.is_dir())
        // SAFETY: access(2) on a NUL-terminated path literal.
        && unsafe { libc::access(c"/dev/shm".as_ptr(), libc::W_OK) } == 0;
    if !writable {
        return spool_dir.to_path_buf();
    }
    let abs = std::path::absolute(spool_dir).unwrap_or_else(|_| spool_dir.to_path_buf());
    // FNV-1a, 64 bits: stable across builds and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    shm.join(format!("sluice-audit-{h:016x}"))
}

/// Lock the spool directory, and the ring directory when it is another.
fn lock_dirs(dir: &std::path::Path, ring_dir: &std::path::Path) -> anyhow::Result<Vec<File>> {
    let mut locks = vec![lock_dir(dir, "spool_dir")?];
    let same = match (fs::canonicalize(dir), fs::canonicalize(ring_dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => dir == ring_dir,
    };
    if !same {
        locks.push(lock_dir(ring_dir, "ring_dir")?);
    }
    Ok(locks)
}

/// The ring files' core numbers found in `ring_dir`.
fn ring_files(ring_dir: &std::path::Path) -> anyhow::Result<Vec<u32>> {
    let mut cores: Vec<u32> = fs::read_dir(ring_dir)
        .with_context(|| format!("list {}", ring_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(ring::parse_ring_name))
        .collect();
    cores.sort_unstable();
    Ok(cores)
}

/// Open (or create) core `core`'s ring, setting a damaged file aside (and
/// noting its size in `aside`, to report the loss in the trail).
fn open_ring(
    dir: &std::path::Path,
    core: u32,
    capacity: u64,
    aside: &mut Vec<(u32, u64)>,
) -> anyhow::Result<RingFile> {
    let path = ring::ring_path(dir, core);
    match RingFile::open_or_create(&path, core, capacity) {
        Ok(r) => Ok(r),
        Err(e @ RingError::Corrupt { .. }) => {
            let to = path.with_extension(format!("ring.damaged-{}", unix_ms()));
            tracing::error!(ring = %path.display(), aside = %to.display(), "audit ring damaged, set aside (its records are not recovered): {e}");
            let bytes = fs::metadata(&path).map_or(0, |m| m.len());
            fs::rename(&path, &to)
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            aside.push((core, bytes));
            Ok(RingFile::create(&path, core, capacity, 1)?)
        }
        Err(e) => Err(e.into()),
    }
}

impl Audit {
    /// Lock the directory, open the spool, open or create one ring per
    /// core, and recover what the last run left in the rings. Returns the
    /// pipeline and one [`CoreInit`] per core, for the workers.
    pub fn open(s: &AuditSettings, cores: usize) -> anyhow::Result<(Arc<Audit>, Vec<CoreInit>)> {
        fs::create_dir_all(&s.dir)
            .with_context(|| format!("audit.spool_dir: cannot create {}", s.dir.display()))?;
        fs::create_dir_all(&s.ring_dir)
            .with_context(|| format!("audit.ring_dir: cannot create {}", s.ring_dir.display()))?;
        let locks = lock_dirs(&s.dir, &s.ring_dir)?;
        let mut cfg = SpoolConfig::new(&s.dir, &s.node_id);
        cfg.quota_bytes = s.quota_bytes;
        cfg.fsync = s.fsync;
        cfg.segment_bytes = cfg.segment_bytes.min((s.quota_bytes / 4).max(4096));
        let spool =
            Spool::open(cfg).with_context(|| format!("audit spool in {}", s.dir.display()))?;
        let high = spool.core_high_water().clone();

        let existing = ring_files(&s.ring_dir)?;
        let gate = Arc::new(AuditGate::default());
        let stats = Arc::new(AuditStats::new(cores));
        let boot = {
            use ::ring::rand::SecureRandom;
            let mut b = [0u8; 4];
            let _ = ::ring::rand::SystemRandom::new().fill(&mut b);
            u32::from_le_bytes(b)
        };
        let mut consumers: Vec<RingConsumer> = Vec::new();
        let mut inits = Vec::new();
        let mut aside = Vec::new();
        for core in 0..cores as u32 {
            let mut r = open_ring(&s.ring_dir, core, s.ring_bytes, &mut aside)?;
            if r.capacity() != s.ring_bytes {
                if r.depth() == 0 {
                    let next = r.next_seq();
                    let path = r.path().to_path_buf();
                    drop(r);
                    r = RingFile::create(&path, core, s.ring_bytes, next)?;
                } else {
                    tracing::warn!(core, "audit ring keeps its size of {} bytes until it is empty (audit.ring_bytes is {})", r.capacity(), s.ring_bytes);
                }
            }
            r.raise_next_seq(high.get(&core).map_or(1, |h| h + 1));
            let (producer, consumer) = r.split();
            consumers.push(consumer);
            inits.push(CoreInit {
                core,
                producer,
                gate: gate.clone(),
                stats: stats.cores[core as usize].clone(),
                when_full: s.when_full,
                max_sql_bytes: s.max_sql_bytes,
                boot,
                auth_failures_per_second: s.auth_failures_per_second,
            });
        }
        // Rings of cores this run does not have (fewer workers than last
        // time): drained like the others, never written.
        let mut orphans = Vec::new();
        for &core in existing.iter().filter(|&&c| c as usize >= cores) {
            let r = open_ring(&s.ring_dir, core, s.ring_bytes, &mut aside)?;
            orphans.push(r.path().to_path_buf());
            consumers.push(r.into_consumer());
        }

        let mut pump = Pump::new(spool, consumers, gate.clone(), stats.clone());
        pump.set_when_full(s.when_full);
        let now = super::pump::unix_nanos();
        for (core, bytes) in aside {
            pump.note_loss(core, super::pump::loss::RING_SET_ASIDE, 0, bytes, now, now);
        }
        let mut recovered = 0usize;
        loop {
            match pump.step() {
                Ok(0) => break,
                Ok(n) => recovered += n,
                Err(e) => {
                    tracing::error!("audit: could not move every record left in the rings to the spool ({e}); the rest stay in the rings until it can");
                    break;
                }
            }
        }
        if recovered > 0 {
            tracing::info!(
                records = recovered,
                "audit: recovered records left in the core rings by the previous run"
            );
        }
        let sp = pump.spool();
        tracing::info!(dir = %s.dir.display(), ring_dir = %s.ring_dir.display(), node = %s.node_id, last_seq = sp.last_seq(), acked = sp.acked_through(), waiting = sp.pending(), bytes = sp.bytes(), "audit spool open");
        if pump.ring_depth() == 0 {
            for p in orphans {
                let _ = fs::remove_file(p);
            }
        }
        let side = pump.side_queue();
        let audit = Arc::new(Audit {
            pump: Arc::new(Mutex::new(pump)),
            stats,
            gate,
            side,
            notify: Arc::default(),
            stop: Arc::default(),
            thread: Mutex::new(None),
            node_id: s.node_id.clone(),
            flush_interval: s.flush_interval,
            spool_dir: s.dir.clone(),
            ring_dir: s.ring_dir.clone(),
            _locks: locks,
        });
        Ok((audit, inits))
    }

    /// Start the drain thread (`sluice-audit`).
    pub fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let me = self.clone();
        let h = std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || me.drain_loop())
            .context("cannot start the audit thread")?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
        Ok(())
    }

    fn drain_loop(&self) {
        // A fixed cadence: one append (and fdatasync) per interval at most,
        // however busy the cores are. A batch is what arrived meanwhile;
        // the rings hold it (and survive the process) until then.
        loop {
            let started = std::time::Instant::now();
            let stopping = self.stop.load(Relaxed);
            let r = self.pump().step();
            let pause = match r {
                Ok(n) if n > 0 => {
                    self.notify.notify_one();
                    self.flush_interval
                }
                Ok(_) if stopping => return,
                Err(_) if stopping => return,
                Ok(_) => self.flush_interval,
                Err(_) => REFUSED_INTERVAL,
            };
            if stopping {
                continue; // drain to the end before stopping
            }
            if let Some(rest) = pause.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }

    /// Stop the drain thread after a last drain (call once the sessions
    /// are closed).
    ///
    /// With `sessions_closed` (no data core can write any more) and every
    /// ring empty, the ring files are removed too, so a node that goes away
    /// for good leaves nothing in tmpfs; the next start makes new ones.
    pub fn shutdown(&self, sessions_closed: bool) {
        self.stop.store(true, Relaxed);
        let h = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = h {
            let _ = h.join();
        }
        let mut p = self.pump();
        // (Losses noted since the last report, however recent; what the
        // spool does not take goes with this process, so the log says it.)
        p.store_losses(true);
        p.log_unreported_losses();
        if p.ring_depth() > 0 || p.staged() > 0 {
            tracing::warn!(ring_bytes = p.ring_depth(), staged = p.staged(), "audit: records left in the rings (the spool refuses them, or sessions were still open); the next start moves them");
        } else if sessions_closed {
            for path in p.ring_paths() {
                let _ = fs::remove_file(path);
            }
            if self.ring_dir != self.spool_dir {
                let _ = fs::remove_file(self.ring_dir.join("LOCK"));
                let _ = fs::remove_dir(&self.ring_dir);
            }
        }
    }

    /// Queue a record made off the data cores (snapshot applied).
    pub fn push_side(&self, rec: AuditRecord) {
        self.side
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec);
    }

    pub fn pump(&self) -> MutexGuard<'_, Pump> {
        self.pump.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pump_arc(&self) -> Arc<Mutex<Pump>> {
        self.pump.clone()
    }

    pub fn stats(&self) -> &Arc<AuditStats> {
        &self.stats
    }

    pub fn gate(&self) -> &Arc<AuditGate> {
        &self.gate
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// What a stopped node's spool directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Inspection {
    pub last_sequence: u64,
    pub acknowledged_through: u64,
    pub spool_bytes: u64,
    /// Records in the spool not yet acknowledged, by kind name.
    pub spooled_by_kind: std::collections::BTreeMap<String, u64>,
    /// Records still in the core rings (moved to the spool at the next
    /// start), by kind name.
    pub in_rings_by_kind: std::collections::BTreeMap<String, u64>,
    /// QUERY and EXECUTE records in both.
    pub statements: u64,
}

/// Every record of a stopped node's spool directory: the spool's
/// unacknowledged records, then what is still in the rings (in `ring_dir`,
/// or [`default_ring_dir`] when `None`), less what the spool already holds. Locks the
/// directories while it reads, so it refuses to run next to a live node.
pub fn read_dir(
    dir: &std::path::Path,
    ring_dir: Option<&std::path::Path>,
) -> anyhow::Result<(Vec<AuditRecord>, Vec<AuditRecord>)> {
    use prost::Message;
    let default = default_ring_dir(dir);
    let ring_dir = ring_dir.unwrap_or(&default);
    // No ring directory (a clean stop removes it): only the spool to read.
    let rings_there = ring_dir.is_dir();
    let _locks = if rings_there {
        lock_dirs(dir, ring_dir)?
    } else {
        vec![lock_dir(dir, "spool_dir")?]
    };
    let spool = Spool::open(SpoolConfig::new(dir, "inspect"))
        .with_context(|| format!("audit spool in {}", dir.display()))?;
    let spooled = spool.unacked(0, usize::MAX)?;
    let mut high = spool.core_high_water().clone();
    let mut in_rings = Vec::new();
    let cores = if rings_there {
        ring_files(ring_dir)?
    } else {
        Vec::new()
    };
    for core in cores {
        let path = ring::ring_path(ring_dir, core);
        let c = RingFile::open_or_create(&path, core, ring::MIN_RING_BYTES)?.into_consumer();
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        c.read_from(c.committed(), usize::MAX, &mut bytes, &mut frames)?;
        let h = high.entry(c.core()).or_insert(0);
        for f in frames.iter().filter(|f| f.core_seq > *h) {
            in_rings.push(AuditRecord::decode(&bytes[f.start..f.end])?);
        }
    }
    Ok((spooled, in_rings))
}

/// Summarise a stopped node's spool directory (`sluice-dp audit-spool`).
pub fn inspect(
    dir: &std::path::Path,
    ring_dir: Option<&std::path::Path>,
) -> anyhow::Result<Inspection> {
    let (spooled, in_rings) = read_dir(dir, ring_dir)?;
    let mut out = Inspection::default();
    {
        let _lock = lock_dir(dir, "spool_dir")?;
        let spool = Spool::open(SpoolConfig::new(dir, "inspect"))?;
        out.last_sequence = spool.last_seq();
        out.acknowledged_through = spool.acked_through();
        out.spool_bytes = spool.bytes();
    }
    let kind = |r: &AuditRecord| {
        let k = r.metadata.as_ref().map_or(0, |m| m.kind);
        proto::AuditKind::try_from(k).map_or_else(
            |_| format!("KIND_{k}"),
            |k| {
                k.as_str_name()
                    .trim_start_matches("AUDIT_KIND_")
                    .to_string()
            },
        )
    };
    for (recs, map) in [
        (&spooled, &mut out.spooled_by_kind),
        (&in_rings, &mut out.in_rings_by_kind),
    ] {
        for r in recs.iter() {
            *map.entry(kind(r)).or_insert(0) += 1;
            if super::record::is_statement_kind(r.metadata.as_ref().map_or(0, |m| m.kind)) {
                out.statements += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::core::CoreAudit;
    use crate::audit::record::StatementView;
    use proto::AuditKind;

    fn settings(dir: &std::path::Path) -> AuditSettings {
        AuditSettings {
            dir: dir.to_path_buf(),
            ring_dir: dir.to_path_buf(),
            node_id: "n1".into(),
            quota_bytes: 1 << 30,
            fsync: FsyncPolicy::Batch,
            ring_bytes: ring::MIN_RING_BYTES,
            max_sql_bytes: 4096,
            when_full: WhenFull::FailClosed,
            flush_interval: Duration::from_millis(10),
            auth_failures_per_second: 0,
        }
    }

    fn statement(core: &CoreAudit, sql: &str) {
        core.push_statement(
            &[],
            1,
            &StatementView {
                kind: AuditKind::Query as i32,
                sql,
                ..Default::default()
            },
        )
        .unwrap();
    }

    #[test]
    fn records_left_in_rings_are_recovered_at_the_next_open_and_the_dir_is_locked() {
        let d = tempfile::tempdir().unwrap();
        {
            let (audit, inits) = Audit::open(&settings(d.path()), 2).unwrap();
            let err = Audit::open(&settings(d.path()), 2).err().unwrap();
            assert!(err.to_string().contains("in use"), "{err}");
            let cores: Vec<CoreAudit> = inits.into_iter().map(CoreAudit::new).collect();
            statement(&cores[0], "a");
            statement(&cores[1], "b");
            audit.pump().step().unwrap();
            statement(&cores[1], "c");
            // No drain: "c" is only in core 1's ring when this run ends.
        }
        // Fewer cores now: core 1's ring is drained as an orphan.
        let (audit, inits) = Audit::open(&settings(d.path()), 1).unwrap();
        let core = CoreAudit::new(inits.into_iter().next().unwrap());
        statement(&core, "d");
        audit.pump().step().unwrap();
        let recs = audit.pump().unacked(0, 100).unwrap();
        let got: Vec<(String, u32, u64)> = recs
            .iter()
            .map(|r| {
                let m = r.metadata.as_ref().unwrap();
                (
                    r.statement.as_ref().unwrap().sql.clone(),
                    m.core,
                    m.core_seq,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), 0, 1),
                ("b".into(), 1, 1),
                ("c".into(), 1, 2),
                ("d".into(), 0, 2)
            ]
        );
        assert!(
            !ring::ring_path(d.path(), 1).exists(),
            "empty orphan ring removed"
        );
    }

    /// Records a core could not keep are reported under the node's
    /// `when_full`: dropped under `fail_open` (the statements ran), or,
    /// under `fail_closed`, session and authentication-failure records that
    /// found the ring full longer than they could wait (`ring_full`: no
    /// statement ran unaudited).
    #[test]
    fn records_lost_are_reported_under_the_nodes_when_full() {
        for (when_full, reason) in [
            (WhenFull::FailClosed, "ring_full"),
            (WhenFull::FailOpen, "fail_open"),
        ] {
            let d = tempfile::tempdir().unwrap();
            let mut s = settings(d.path());
            s.when_full = when_full;
            let (audit, inits) = Audit::open(&s, 1).unwrap();
            let core = CoreAudit::new(inits.into_iter().next().unwrap());
            core.count_unaudited(2);
            audit.pump().step().unwrap();
            let got = losses(&audit);
            assert_eq!(got, [(reason.to_string(), 2)], "{when_full:?}");
        }
    }

    /// The RECORDS_LOST reports waiting in `audit`'s spool: (reason, records).
    fn losses(audit: &Audit) -> Vec<(String, u64)> {
        audit
            .pump()
            .unacked(0, 10)
            .unwrap()
            .into_iter()
            .filter_map(|r| r.loss)
            .map(|l| (l.reason, l.records))
            .collect()
    }

    /// Authentication-failure records past `auth_failures_per_second`
    /// (bursts of ten seconds' worth) are not written but counted, and
    /// reported in the trail by number; the rate refills with time.
    #[test]
    fn auth_failures_past_the_rate_are_reported_by_number() {
        let d = tempfile::tempdir().unwrap();
        let mut s = settings(d.path());
        s.auth_failures_per_second = 3;
        let (audit, inits) = Audit::open(&s, 1).unwrap();
        let core = CoreAudit::new(inits.into_iter().next().unwrap());
        let t0 = std::time::Instant::now();
        let admitted = (0..40).filter(|_| core.admit_failure(t0)).count();
        assert_eq!(admitted, 30, "a burst of ten seconds' worth");
        assert!(!core.admit_failure(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_millis(1100);
        assert_eq!((0..5).filter(|_| core.admit_failure(later)).count(), 3);
        audit.pump().step().unwrap();
        let got = losses(&audit);
        assert_eq!(got, [("auth_failures_rate_limited".to_string(), 13)]);
        // 0: no limit.
        let d = tempfile::tempdir().unwrap();
        let (_audit, inits) = Audit::open(&settings(d.path()), 1).unwrap();
        let core = CoreAudit::new(inits.into_iter().next().unwrap());
        assert!((0..1000).all(|_| core.admit_failure(t0)));
    }

    #[test]
    fn clean_shutdown_removes_empty_rings_and_keeps_full_ones() {
        let d = tempfile::tempdir().unwrap();
        let mut s = settings(d.path());
        s.ring_dir = d.path().join("rings");
        let (audit, inits) = Audit::open(&s, 1).unwrap();
        audit.start().unwrap();
        let core = CoreAudit::new(inits.into_iter().next().unwrap());
        statement(&core, "a");
        audit.shutdown(true);
        assert!(
            !s.ring_dir.exists(),
            "drained rings and their directory removed"
        );
        assert_eq!(audit.pump().spool().last_seq(), 1);
        drop(core);
        drop(audit);
        // Sessions still open at shutdown: the rings stay.
        let (audit, inits) = Audit::open(&s, 1).unwrap();
        let _core = CoreAudit::new(inits.into_iter().next().unwrap());
        audit.shutdown(false);
        assert!(ring::ring_path(&s.ring_dir, 0).exists());
    }

    #[test]
    fn default_ring_dir_is_per_spool_and_stable() {
        let a = default_ring_dir(std::path::Path::new("/var/lib/sluice/a"));
        let b = default_ring_dir(std::path::Path::new("/var/lib/sluice/b"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            default_ring_dir(std::path::Path::new("/var/lib/sluice/a"))
        );
        if a.starts_with("/dev/shm") {
            assert!(a
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("sluice-audit-"));
        }
    }

    #[test]
    fn a_resized_ring_keeps_its_sequence() {
        let d = tempfile::tempdir().unwrap();
        {
            let (audit, inits) = Audit::open(&settings(d.path()), 1).unwrap();
            let core = CoreAudit::new(inits.into_iter().next().unwrap());
            statement(&core, "a");
            audit.pump().step().unwrap();
        }
        let mut s = settings(d.path());
        s.ring_bytes *= 2;
        let (audit, inits) = Audit::open(&s, 1).unwrap();
        let core = CoreAudit::new(inits.into_iter().next().unwrap());
        statement(&core, "b");
        audit.pump().step().unwrap();
        let seqs: Vec<u64> = audit
            .pump()
            .unacked(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.metadata.as_ref().unwrap().core_seq)
            .collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(
            fs::metadata(ring::ring_path(d.path(), 0)).unwrap().len(),
            ring::RING_HEADER_BYTES as u64 + s.ring_bytes
        );
    }
}
