//! End-to-end test harness for Sluice.
//!
//! Everything here drives real components: a throwaway PostgreSQL 15 started
//! by [`pg::Pg`], the real `sluice-dp` binary started by [`gateway::Gateway`],
//! and real clients (tokio-postgres, psql, pgbench, raw sockets in [`wire`]).
//! Nothing is mocked. Every instance runs on free loopback ports in its own
//! temporary directory and is stopped by PID:
//!
//! * one PostgreSQL per test binary, started lazily and stopped from an
//!   `atexit` handler when the test process exits;
//! * one `sluice-dp` per [`gateway::Gateway`] value, killed when it drops.
//!
//! Every network read made by the harness has a timeout, so a gateway that
//! hangs makes a test fail instead of hanging the suite.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod cp;
pub mod gateway;
pub mod jwt;
pub mod metrics;
pub mod pg;
pub mod process;
pub mod wire;

pub use client::{connect, connect_tls, db_code, ClientOptions};
pub use gateway::{audit_records, audit_records_in, ApiKey, DevCerts, Gateway, GatewayConfig};
pub use metrics::Metrics;
pub use pg::Pg;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Generous bound for any single network step made by a test (connect, one
/// query, one read). Hitting it means something hung.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The cargo workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    // Ports handed out in this process are remembered so that two calls never
    // return the same port even if nothing has bound the first one yet.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Raise this process's soft open-file limit to its hard limit (children
/// started afterwards, such as `sluice-dp`, inherit it). Returns the new soft
/// limit.
pub fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            panic!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                panic!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    rl.rlim_cur
}

/// Paths removed, and PostgreSQL instances stopped, when the process exits.
pub(crate) struct ExitCleanup {
    pub dirs: Vec<PathBuf>,
    pub postmasters: Vec<(i32, PathBuf)>, // (pid, data dir)
}

pub(crate) static EXIT_CLEANUP: Mutex<ExitCleanup> = Mutex::new(ExitCleanup {
    dirs: Vec::new(),
    postmasters: Vec::new(),
});

/// Register `path` (a directory) to be removed when the test process exits,
/// after any PostgreSQL registered with [`register_pg_for_exit`] is stopped.
pub(crate) fn remove_dir_at_exit(path: PathBuf) {
    install_atexit();
    EXIT_CLEANUP.lock().unwrap().dirs.push(path);
}

pub(crate) fn register_pg_for_exit(pid: i32, data: PathBuf) {
    install_atexit();
    EXIT_CLEANUP.lock().unwrap().postmasters.push((pid, data));
}

pub(crate) fn unregister_pg(pid: i32) {
    EXIT_CLEANUP
        .lock()
        .unwrap()
        .postmasters
        .retain(|(p, _)| *p != pid);
}

fn install_atexit() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: registering a plain `extern "C" fn()` is always sound.
        let rc = unsafe { libc::atexit(run_exit_cleanup) };
        assert_eq!(rc, 0, "atexit registration failed");
    });
}

extern "C" fn run_exit_cleanup() {
    // Never unwind across the C boundary.
    let _ = std::panic::catch_unwind(|| {
        let (dirs, pgs) = match EXIT_CLEANUP.lock() {
            Ok(mut c) => (
                std::mem::take(&mut c.dirs),
                std::mem::take(&mut c.postmasters),
            ),
            Err(p) => {
                let mut c = p.into_inner();
                (
                    std::mem::take(&mut c.dirs),
                    std::mem::take(&mut c.postmasters),
                )
            }
        };
        for (pid, _data) in pgs {
            pg::stop_postmaster(pid);
        }
        for d in dirs {
            let _ = std::fs::remove_dir_all(&d);
        }
    });
}

/// Make a fresh temporary directory that is removed at process exit (for
/// things that live as long as the process, such as the shared PostgreSQL).
pub fn process_tempdir(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
        .keep();
    remove_dir_at_exit(dir.clone());
    dir
}

/// Percent-encode everything but RFC 3986 unreserved characters (for putting
/// a key into a `postgresql://` URL).
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Deterministic pseudo-random bytes (xorshift64*), for test data.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
