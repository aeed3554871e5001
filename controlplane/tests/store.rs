//! One behavioural suite for `controlplane::store`, run against both the
//! embedded store and a real etcd (Debian `etcd-server`, started by this
//! test binary on free loopback ports), plus tests specific to each.
//!
//! Every await that talks to a store is bounded by a timeout.

use std::any::Any;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use controlplane::store::{
    EmbeddedStore, EtcdStore, KeyValue, Revision, Store, StoreError, WatchEvent, WatchEventKind,
    WatchStream, LOG_FILE_NAME,
};
use futures_util::StreamExt;

// ---------------------------------------------------------------- helpers

const STEP: Duration = Duration::from_secs(15);

/// Awaits `f`, failing the test if it takes longer than 15 s.
async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("store call timed out")
}

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10 s"),
    }
}

/// Asserts that no event arrives within `d`.
async fn no_event(w: &mut WatchStream, d: Duration) {
    if let Ok(item) = tokio::time::timeout(d, w.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "/sluice-test/{}-{name}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

type Fixture = (Arc<dyn Store>, Box<dyn Any + Send>);

async fn embedded_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
    (Arc::new(s), Box::new(dir))
}

/// A fresh namespace on the etcd shared by this test binary.
async fn etcd_fixture() -> Fixture {
    let ep = shared_etcd().endpoint.clone();
    let s = t(EtcdStore::connect(&[ep], &unique("suite")))
        .await
        .unwrap();
    (Arc::new(s), Box::new(()))
}

/// An etcd of its own, for tests that count revisions exactly.
async fn etcd_own_fixture() -> Fixture {
    let etcd = EtcdProc::start().await;
    let s = t(EtcdStore::connect(&[etcd.endpoint()], "/sluice/"))
        .await
        .unwrap();
    (Arc::new(s), Box::new(etcd))
}

// ---------------------------------------------------------------- etcd harness

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An etcd process on loopback ports in a temporary data dir. It is killed
/// (SIGKILL) and reaped when dropped, and dies with the thread that started
/// it (PR_SET_PDEATHSIG).
struct EtcdProc {
    child: Option<Child>,
    /// Arguments added to the defaults.
    extra: Vec<String>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdProc {
    async fn start() -> EtcdProc {
        EtcdProc::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> EtcdProc {
        let mut p = EtcdProc {
            child: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        p.spawn();
        p.wait_ready().await;
        p
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        self.child = Some(spawn_etcd(
            self.dir.path(),
            self.client_port,
            self.peer_port,
            &self.extra,
        ));
    }

    async fn wait_ready(&mut self) {
        wait_etcd_ready(&self.endpoint(), self.client_port, self.dir.path()).await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

fn spawn_etcd(dir: &Path, client_port: u16, peer_port: u16, extra: &[String]) -> Child {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .unwrap();
    let mut cmd = Command::new(etcd_bin());
    cmd.arg("--name")
        .arg("t")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("t={peer}")])
        // Faster single-node election and a 1 s minimum lease TTL.
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({e}); install Debian's etcd-server",
            etcd_bin().display()
        )
    })
}

async fn wait_etcd_ready(endpoint: &str, port: u16, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            let probe = async {
                let s = EtcdStore::connect_with_timeout(
                    &[endpoint.to_owned()],
                    "/probe/",
                    Duration::from_secs(1),
                )
                .await?;
                s.revision().await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                return;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
            panic!("etcd at {endpoint} not ready after 20 s; log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The etcd shared by the generic suite. Started from a dedicated thread
/// that lives as long as the process (PR_SET_PDEATHSIG fires when the
/// *thread* that forked exits); killed, reaped and its directory removed by
/// an `atexit` handler.
struct SharedEtcd {
    endpoint: String,
    pid: libc::pid_t,
    dir: PathBuf,
}

static SHARED: OnceLock<SharedEtcd> = OnceLock::new();

extern "C" fn stop_shared_etcd() {
    if let Some(s) = SHARED.get() {
        // SAFETY: plain syscalls on the pid of our own child.
        unsafe {
            libc::kill(s.pid, libc::SIGKILL);
            libc::waitpid(s.pid, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_dir_all(&s.dir);
    }
}

fn shared_etcd() -> &'static SharedEtcd {
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shared-etcd".into())
            .spawn(move || {
                let dir = tempfile::tempdir().unwrap().keep();
                let (cp, pp) = (free_port(), free_port());
                let mut child = spawn_etcd(&dir, cp, pp, &[]);
                let endpoint = format!("http://127.0.0.1:{cp}");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(wait_etcd_ready(&endpoint, cp, &dir));
                let pid = libc::pid_t::try_from(child.id()).unwrap();
                tx.send(SharedEtcd { endpoint, pid, dir }).unwrap();
                // Keep this thread (the etcd's "parent") alive, and reap
                // the etcd should it exit (the atexit handler kills it).
                let _ = child.wait();
            })
            .unwrap();
        let shared = rx.recv().expect("shared etcd failed to start");
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(stop_shared_etcd) };
        shared
    })
}

// ---------------------------------------------------------------- the suite

mod cases {
    use super::*;

    fn keys(kvs: &[KeyValue]) -> Vec<&str> {
        kvs.iter().map(|kv| kv.key.as_str()).collect()
    }

    pub async fn put_get_prefix_ordering(s: &dyn Store) {
        let mut revs = Vec::new();
        for k in ["b/2", "a/1", "b/10", "b/1", "c"] {
            revs.push(t(s.put(k, k.as_bytes().to_vec(), None)).await.unwrap());
        }
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
        let a = t(s.get("a/1")).await.unwrap().unwrap();
        assert_eq!(a.key, "a/1");
        assert_eq!(a.value, b"a/1");
        assert_eq!(a.create_revision, revs[1]);
        assert_eq!(a.mod_revision, revs[1]);
        assert_eq!(a.lease, None);
        assert_eq!(t(s.get("a/2")).await.unwrap(), None);
        assert_eq!(
            t(s.get("b")).await.unwrap(),
            None,
            "no prefix match for get"
        );

        let (b, _) = t(s.get_prefix("b/")).await.unwrap();
        assert_eq!(keys(&b), ["b/1", "b/10", "b/2"]);
        let (all, rev) = t(s.get_prefix("")).await.unwrap();
        assert_eq!(keys(&all), ["a/1", "b/1", "b/10", "b/2", "c"]);
        assert!(rev >= revs[4]);

        // An update keeps create_revision and moves mod_revision.
        let r = t(s.put("a/1", b"new".to_vec(), None)).await.unwrap();
        let a = t(s.get("a/1")).await.unwrap().unwrap();
        assert_eq!((a.create_revision, a.mod_revision), (revs[1], r));
        assert_eq!(a.value, b"new");
    }

    pub async fn revisions_step_by_one(s: &dyn Store) {
        let r0 = t(s.revision()).await.unwrap();
        assert!(r0 >= 1);
        assert_eq!(t(s.put("r/a", b"1".to_vec(), None)).await.unwrap(), r0 + 1);
        assert_eq!(t(s.put("r/b", b"2".to_vec(), None)).await.unwrap(), r0 + 2);
        let (kvs, rev) = t(s.get_prefix("r/")).await.unwrap();
        assert_eq!(kvs.len(), 2);
        assert_eq!(rev, r0 + 2, "get_prefix returns the store revision");
        assert_eq!(t(s.delete("r/a")).await.unwrap(), Some(r0 + 3));
        assert_eq!(t(s.delete("r/a")).await.unwrap(), None);
        assert_eq!(t(s.revision()).await.unwrap(), r0 + 3, "no-op delete");
        t(s.put("r/c", b"3".to_vec(), None)).await.unwrap();
        // Deleting several keys is one change.
        let mut w = t(s.watch_prefix("r/", None)).await.unwrap();
        assert_eq!(t(s.delete_prefix("r/")).await.unwrap(), 2);
        assert_eq!(t(s.revision()).await.unwrap(), r0 + 5);
        let (e1, e2) = (next_event(&mut w).await, next_event(&mut w).await);
        assert_eq!((e1.revision, e2.revision), (r0 + 5, r0 + 5));
        assert_eq!(
            (e1.kind, e2.kind),
            (WatchEventKind::Delete, WatchEventKind::Delete)
        );
        // A failed compare-and-swap changes nothing.
        assert_eq!(
            t(s.txn_put_if_mod_revision("r/a", vec![], 1))
                .await
                .unwrap(),
            None
        );
        assert_eq!(t(s.revision()).await.unwrap(), r0 + 5);
    }

    pub async fn delete_absent(s: &dyn Store) {
        assert_eq!(t(s.delete("nope")).await.unwrap(), None);
        assert_eq!(t(s.delete_prefix("nothing/")).await.unwrap(), 0);
        t(s.put("d/x", b"x".to_vec(), None)).await.unwrap();
        assert!(t(s.delete("d/x")).await.unwrap().is_some());
        assert_eq!(t(s.get("d/x")).await.unwrap(), None);
        assert_eq!(t(s.delete("d/x")).await.unwrap(), None);
    }

    pub async fn compare_and_swap(s: &dyn Store) {
        let r1 = t(s.txn_put_if_mod_revision("cas/k", b"v1".to_vec(), 0))
            .await
            .unwrap()
            .expect("create-only on an absent key succeeds");
        assert_eq!(
            t(s.txn_put_if_mod_revision("cas/k", b"v2".to_vec(), 0))
                .await
                .unwrap(),
            None,
            "create-only on an existing key fails"
        );
        assert_eq!(
            t(s.txn_put_if_mod_revision("cas/k", b"v2".to_vec(), r1 + 100))
                .await
                .unwrap(),
            None,
            "wrong expected revision fails"
        );
        assert_eq!(t(s.get("cas/k")).await.unwrap().unwrap().value, b"v1");
        let r2 = t(s.txn_put_if_mod_revision("cas/k", b"v2".to_vec(), r1))
            .await
            .unwrap()
            .expect("update with the right revision succeeds");
        assert!(r2 > r1);
        let kv = t(s.get("cas/k")).await.unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v2"[..], r2));
        assert_eq!(kv.create_revision, r1);
        assert!(matches!(
            t(s.txn_put_if_mod_revision("cas/k", vec![], -1)).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }

    pub async fn invalid_arguments(s: &dyn Store) {
        assert!(matches!(
            t(s.put("", vec![], None)).await,
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            t(s.watch_prefix("x/", Some(-3))).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }

    pub async fn watch_from_now(s: &dyn Store) {
        t(s.put("w/before", b"0".to_vec(), None)).await.unwrap();
        let mut w = t(s.watch_prefix("w/", None)).await.unwrap();
        let r1 = t(s.put("w/a", b"1".to_vec(), None)).await.unwrap();
        t(s.put("other/x", b"no".to_vec(), None)).await.unwrap();
        let r2 = t(s.put("w/a", b"2".to_vec(), None)).await.unwrap();
        let r3 = t(s.delete("w/a")).await.unwrap().unwrap();

        let e = next_event(&mut w).await;
        assert_eq!(
            (e.kind, e.revision, e.kv.key.as_str()),
            (WatchEventKind::Put, r1, "w/a")
        );
        assert_eq!(
            (e.kv.value.as_slice(), e.kv.create_revision),
            (&b"1"[..], r1)
        );
        let e = next_event(&mut w).await;
        assert_eq!((e.kind, e.revision), (WatchEventKind::Put, r2));
        assert_eq!((e.kv.create_revision, e.kv.mod_revision), (r1, r2));
        let e = next_event(&mut w).await;
        assert_eq!(
            (e.kind, e.revision, e.kv.key.as_str()),
            (WatchEventKind::Delete, r3, "w/a")
        );
        assert_eq!(e.kv.mod_revision, r3);
        no_event(&mut w, Duration::from_millis(200)).await;
    }

    pub async fn watch_replays_history(s: &dyn Store) {
        let r1 = t(s.put("h/1", b"a".to_vec(), None)).await.unwrap();
        let r2 = t(s.put("h/2", b"b".to_vec(), None)).await.unwrap();
        let r3 = t(s.delete("h/1")).await.unwrap().unwrap();

        let mut from2 = t(s.watch_prefix("h/", Some(r2))).await.unwrap();
        let mut from1 = t(s.watch_prefix("h/", Some(r1))).await.unwrap();
        let r4 = t(s.put("h/3", b"c".to_vec(), None)).await.unwrap();

        let seen: Vec<(WatchEventKind, Revision, String)> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                let e = next_event(&mut from2).await;
                v.push((e.kind, e.revision, e.kv.key));
            }
            v
        };
        assert_eq!(
            seen,
            [
                (WatchEventKind::Put, r2, "h/2".to_owned()),
                (WatchEventKind::Delete, r3, "h/1".to_owned()),
                (WatchEventKind::Put, r4, "h/3".to_owned()),
            ]
        );
        let mut revs = Vec::new();
        for _ in 0..4 {
            revs.push(next_event(&mut from1).await.revision);
        }
        assert_eq!(revs, [r1, r2, r3, r4]);
        no_event(&mut from1, Duration::from_millis(200)).await;
    }

    pub async fn concurrent_watchers(s: &dyn Store) {
        let mut a = t(s.watch_prefix("m/", None)).await.unwrap();
        let mut b = t(s.watch_prefix("m/", None)).await.unwrap();
        let mut sub = t(s.watch_prefix("m/x", None)).await.unwrap();
        let mut revs = Vec::new();
        for (i, k) in ["m/a", "m/xy", "m/b", "n/a"].iter().enumerate() {
            revs.push(t(s.put(k, vec![i as u8], None)).await.unwrap());
        }
        for w in [&mut a, &mut b] {
            let mut got = Vec::new();
            for _ in 0..3 {
                let e = next_event(w).await;
                got.push((e.kv.key, e.revision));
            }
            assert_eq!(
                got,
                [
                    ("m/a".to_owned(), revs[0]),
                    ("m/xy".to_owned(), revs[1]),
                    ("m/b".to_owned(), revs[2]),
                ]
            );
        }
        let e = next_event(&mut sub).await;
        assert_eq!((e.kv.key.as_str(), e.revision), ("m/xy", revs[1]));
        // Dropping one watcher does not disturb the other.
        drop(a);
        let r = t(s.put("m/c", vec![], None)).await.unwrap();
        assert_eq!(next_event(&mut b).await.revision, r);
        no_event(&mut sub, Duration::from_millis(200)).await;
    }

    pub async fn lease_expiry_deletes_keys(s: &dyn Store) {
        let lease = t(s.grant_lease(Duration::from_secs(1))).await.unwrap();
        t(s.put("l/a", b"1".to_vec(), Some(lease))).await.unwrap();
        t(s.put("l/b", b"2".to_vec(), Some(lease))).await.unwrap();
        t(s.put("l/plain", b"3".to_vec(), None)).await.unwrap();
        assert_eq!(t(s.get("l/a")).await.unwrap().unwrap().lease, Some(lease));
        let mut w = t(s.watch_prefix("l/", None)).await.unwrap();

        let e1 = next_event(&mut w).await;
        let e2 = next_event(&mut w).await;
        let mut deleted = vec![e1.kv.key.clone(), e2.kv.key.clone()];
        deleted.sort();
        assert_eq!(deleted, ["l/a", "l/b"]);
        assert_eq!(
            (e1.kind, e2.kind),
            (WatchEventKind::Delete, WatchEventKind::Delete)
        );
        assert_eq!(
            e1.revision, e2.revision,
            "one revision for the lease's keys"
        );
        assert_eq!(t(s.get("l/a")).await.unwrap(), None);
        assert!(t(s.get("l/plain")).await.unwrap().is_some());
        assert!(matches!(
            t(s.keep_alive(lease)).await,
            Err(StoreError::LeaseNotFound(id)) if id == lease
        ));
        assert!(matches!(
            t(s.put("l/c", vec![], Some(lease))).await,
            Err(StoreError::LeaseNotFound(_))
        ));
    }

    pub async fn keep_alive_keeps_keys(s: &dyn Store) {
        let lease = t(s.grant_lease(Duration::from_secs(1))).await.unwrap();
        t(s.put("k/a", b"1".to_vec(), Some(lease))).await.unwrap();
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            let ttl = t(s.keep_alive(lease)).await.unwrap();
            assert!(ttl >= Duration::from_secs(1), "{ttl:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            t(s.get("k/a")).await.unwrap().is_some(),
            "kept alive past its TTL"
        );
        // Stop refreshing: it goes.
        let deadline = Instant::now() + Duration::from_secs(8);
        while t(s.get("k/a")).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "lease never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn revoke_deletes_now(s: &dyn Store) {
        let lease = t(s.grant_lease(Duration::from_secs(60))).await.unwrap();
        t(s.put("v/a", b"1".to_vec(), Some(lease))).await.unwrap();
        // Re-put without a lease detaches the key.
        t(s.put("v/b", b"1".to_vec(), Some(lease))).await.unwrap();
        t(s.put("v/b", b"2".to_vec(), None)).await.unwrap();
        let mut w = t(s.watch_prefix("v/", None)).await.unwrap();
        t(s.revoke_lease(lease)).await.unwrap();
        assert_eq!(t(s.get("v/a")).await.unwrap(), None);
        assert!(t(s.get("v/b")).await.unwrap().is_some());
        let e = next_event(&mut w).await;
        assert_eq!((e.kind, e.kv.key.as_str()), (WatchEventKind::Delete, "v/a"));
        assert!(matches!(
            t(s.revoke_lease(lease)).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        assert!(matches!(
            t(s.keep_alive(lease)).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        no_event(&mut w, Duration::from_millis(200)).await;
    }
}

macro_rules! suite {
    ($($case:ident: $etcd_fixture:ident),* $(,)?) => {
        mod embedded_suite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (s, _keep) = embedded_fixture().await;
                    cases::$case(&*s).await;
                }
            )*
        }
        mod etcd_suite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (s, _keep) = $etcd_fixture().await;
                    cases::$case(&*s).await;
                }
            )*
        }
    };
}

suite! {
    put_get_prefix_ordering: etcd_fixture,
    revisions_step_by_one: etcd_own_fixture,
    delete_absent: etcd_fixture,
    compare_and_swap: etcd_fixture,
    invalid_arguments: etcd_fixture,
    watch_from_now: etcd_fixture,
    watch_replays_history: etcd_fixture,
    concurrent_watchers: etcd_fixture,
    lease_expiry_deletes_keys: etcd_fixture,
    keep_alive_keeps_keys: etcd_fixture,
    revoke_deletes_now: etcd_fixture,
}

// ---------------------------------------------------------------- embedded only

mod embedded_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fresh_store_starts_at_revision_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
        assert_eq!(t(s.revision()).await.unwrap(), 1);
        assert_eq!(t(s.put("a", vec![], None)).await.unwrap(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_data_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, r2, r3) = {
            let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
            let r1 = t(s.put("a", b"1".to_vec(), None)).await.unwrap();
            let r2 = t(s.put("b", b"2".to_vec(), None)).await.unwrap();
            t(s.put("a", b"3".to_vec(), None)).await.unwrap();
            let r3 = t(s.delete("b")).await.unwrap().unwrap();
            (r1, r2, r3)
        };
        let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
        assert_eq!(t(s.revision()).await.unwrap(), r3);
        let a = t(s.get("a")).await.unwrap().unwrap();
        assert_eq!((a.value.as_slice(), a.create_revision), (&b"3"[..], r1));
        assert_eq!(t(s.get("b")).await.unwrap(), None);
        // History survives too.
        let mut w = t(s.watch_prefix("", Some(r2))).await.unwrap();
        assert_eq!(next_event(&mut w).await.revision, r2);
        assert_eq!(next_event(&mut w).await.revision, r2 + 1);
        assert_eq!(next_event(&mut w).await.revision, r3);
        assert_eq!(t(s.put("c", vec![], None)).await.unwrap(), r3 + 1);
        assert_eq!(next_event(&mut w).await.revision, r3 + 1);
    }

    fn log_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(LOG_FILE_NAME)).unwrap().len()
    }

    fn append(dir: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE_NAME))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn torn_last_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let rev = {
            let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
            t(s.put("a", b"1".to_vec(), None)).await.unwrap();
            t(s.put("b", b"2".to_vec(), None)).await.unwrap()
        };
        let good = log_len(dir.path());
        // A record header promising 40 bytes, followed by only 5.
        append(dir.path(), &[40, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9, 9]);
        {
            let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
            assert_eq!(log_len(dir.path()), good, "torn tail cut off");
            assert_eq!(t(s.revision()).await.unwrap(), rev);
            assert_eq!(t(s.get("b")).await.unwrap().unwrap().value, b"2");
            assert_eq!(t(s.put("c", b"3".to_vec(), None)).await.unwrap(), rev + 1);
        }
        // A complete last record with a bad checksum is dropped too.
        let mut bytes = std::fs::read(dir.path().join(LOG_FILE_NAME)).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        std::fs::write(dir.path().join(LOG_FILE_NAME), &bytes).unwrap();
        let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
        assert_eq!(t(s.revision()).await.unwrap(), rev);
        assert_eq!(t(s.get("c")).await.unwrap(), None);
        assert_eq!(log_len(dir.path()), good);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
            t(s.put("a", b"1".to_vec(), None)).await.unwrap();
            t(s.put("b", b"2".to_vec(), None)).await.unwrap();
        }
        let mut bytes = std::fs::read(dir.path().join(LOG_FILE_NAME)).unwrap();
        bytes[20] ^= 0xff; // inside the first record's payload
        std::fs::write(dir.path().join(LOG_FILE_NAME), &bytes).unwrap();
        let err = t(EmbeddedStore::open(dir.path())).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    /// A damaged length field in an early record makes that record seem to
    /// run past the end of the file, like a torn tail; cutting the log there
    /// would silently drop every later change (and reuse their revisions).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_length_before_the_end_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
            for k in ["a", "b", "c", "d"] {
                t(s.put(k, k.as_bytes().to_vec(), None)).await.unwrap();
            }
        }
        let path = dir.path().join(LOG_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let first_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let second = 8 + 8 + first_len;
        bytes[second + 3] = 0x7f; // the second record's length, high byte
        std::fs::write(&path, &bytes).unwrap();
        let err = t(EmbeddedStore::open(dir.path())).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("byte offset {second}")), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "log left as it was");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_open_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
        let err = t(EmbeddedStore::open(dir.path())).await.unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("in use by another process"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        drop(s);
        t(EmbeddedStore::open(dir.path()))
            .await
            .expect("open after the first store was dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leased_keys_are_gone_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rev = {
            let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
            let lease = t(s.grant_lease(Duration::from_secs(60))).await.unwrap();
            t(s.put("nodes/1", b"n".to_vec(), Some(lease)))
                .await
                .unwrap();
            t(s.put("nodes/2", b"n".to_vec(), Some(lease)))
                .await
                .unwrap();
            t(s.put("config/x", b"c".to_vec(), None)).await.unwrap()
        };
        let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
        assert_eq!(t(s.get("nodes/1")).await.unwrap(), None);
        assert_eq!(t(s.get("nodes/2")).await.unwrap(), None);
        assert!(t(s.get("config/x")).await.unwrap().is_some());
        assert_eq!(t(s.revision()).await.unwrap(), rev + 1, "one revision");
        let mut w = t(s.watch_prefix("nodes/", Some(rev + 1))).await.unwrap();
        for _ in 0..2 {
            let e = next_event(&mut w).await;
            assert_eq!((e.kind, e.revision), (WatchEventKind::Delete, rev + 1));
        }
        // Stays consistent across a further reopen.
        drop(w);
        drop(s);
        let s = t(EmbeddedStore::open(dir.path())).await.unwrap();
        assert_eq!(t(s.revision()).await.unwrap(), rev + 1);
    }
}

// ---------------------------------------------------------------- etcd only

mod etcd_only {
    use super::*;

    /// With etcd's request limit raised (as the README says to for a
    /// configuration over 1.5 MiB), a value over gRPC's default 4 MiB is
    /// stored; it must also be read back and watched, not refused by the
    /// client as "decoded message length too large" (every read of the
    /// configuration failing: an outage of the control plane).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_value_over_4_mib_is_read_back_and_watched() {
        let etcd = EtcdProc::start_with(&["--max-request-bytes", "33554432"]).await;
        let s = t(EtcdStore::connect(&[etcd.endpoint()], "/sluice/"))
            .await
            .unwrap();
        let big: Vec<u8> = (0..6usize << 20).map(|i| (i % 251) as u8).collect();
        let mut w = t(s.watch_prefix("config/", None)).await.unwrap();
        t(s.put("config/current", big.clone(), None)).await.unwrap();
        let kv = t(s.get("config/current")).await.unwrap().expect("stored");
        assert_eq!(kv.value.len(), big.len());
        assert!(kv.value == big);
        let (all, _) = t(s.get_prefix("config/")).await.unwrap();
        assert_eq!(all.len(), 1);
        let ev = next_event(&mut w).await;
        assert!(ev.kv.value == big, "the watch event carries the value");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixes_are_isolated() {
        let ep = vec![shared_etcd().endpoint.clone()];
        let a = t(EtcdStore::connect(&ep, &unique("iso-a"))).await.unwrap();
        let b = t(EtcdStore::connect(&ep, &unique("iso-b"))).await.unwrap();
        let mut wa = t(a.watch_prefix("", None)).await.unwrap();
        t(b.put("k", b"from-b".to_vec(), None)).await.unwrap();
        let ra = t(a.put("k", b"from-a".to_vec(), None)).await.unwrap();
        assert_eq!(t(a.get("k")).await.unwrap().unwrap().value, b"from-a");
        assert_eq!(t(b.get("k")).await.unwrap().unwrap().value, b"from-b");
        let (all_a, _) = t(a.get_prefix("")).await.unwrap();
        assert_eq!(all_a.len(), 1);
        assert_eq!(all_a[0].key, "k", "prefix is stripped");
        let e = next_event(&mut wa).await;
        assert_eq!(
            (e.kv.key.as_str(), e.revision),
            ("k", ra),
            "b's put not seen"
        );
        assert_eq!(t(a.delete_prefix("")).await.unwrap(), 1);
        assert!(t(b.get("k")).await.unwrap().is_some(), "b untouched");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_fails_when_etcd_dies_and_store_recovers() {
        let mut etcd = EtcdProc::start().await;
        let s = t(EtcdStore::connect_with_timeout(
            &[etcd.endpoint()],
            "/sluice/",
            Duration::from_secs(2),
        ))
        .await
        .unwrap();
        let mut w = t(s.watch_prefix("x/", None)).await.unwrap();
        let r = t(s.put("x/a", b"1".to_vec(), None)).await.unwrap();
        assert_eq!(next_event(&mut w).await.revision, r);

        etcd.kill();
        match tokio::time::timeout(Duration::from_secs(15), w.next()).await {
            Ok(Some(Err(e))) => assert!(e.is_retryable(), "{e}"),
            other => panic!("expected a watch error after etcd died, got {other:?}"),
        }
        // The stream is finished after its error.
        assert!(t(w.next()).await.is_none());
        // Calls fail (bounded by the op timeout) with a retryable error.
        let err = t(s.put("x/b", vec![], None)).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");

        etcd.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        let r2 = loop {
            match t(s.put("x/b", b"2".to_vec(), None)).await {
                Ok(r) => break r,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("store did not recover: {e}"),
            }
        };
        assert!(r2 > r, "same data dir, revisions go on");
        assert_eq!(t(s.get("x/a")).await.unwrap().unwrap().value, b"1");
        // Resume watching where the broken watch left off.
        let mut w = t(s.watch_prefix("x/", Some(r + 1))).await.unwrap();
        let e = next_event(&mut w).await;
        assert_eq!((e.kv.key.as_str(), e.revision), ("x/b", r2));
    }
}
