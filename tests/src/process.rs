//! Running external programs (psql, pgbench, pg_ctl, sluice-dp subcommands)
//! with a deadline, and sending signals to processes by PID.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// What a finished program printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panic with everything the program said unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Run `cmd` to completion, writing `stdin` (if any) to it, and kill it if it
/// is still running after `timeout`. Panics on timeout: a program that does
/// not finish is a hang, which is a failure.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out_reader = reader_thread(child.stdout.take().unwrap());
    let err_reader = reader_thread(child.stderr.take().unwrap());
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{desc} did not finish within {timeout:?} (killed)\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn reader_thread<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Wait for `child` up to `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(e) => panic!("waiting for child: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Send `sig` to `pid`; false if there is no such process.
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether `pid` names a live (not zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    if !signal(pid, 0) {
        return false;
    }
    // A zombie still answers kill(pid, 0); look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

/// Whether this process runs as root (PostgreSQL tools then run as
/// `postgres` through `runuser`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo build ARGS` in the workspace, which must leave `out`: a no-op
/// when it is up to date. (Without a cargo to run, an `out` already there
/// is used as it is.)
pub fn cargo_build(args: &[&str], out: &std::path::Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .args(args)
        .current_dir(crate::workspace_dir());
    // Not the variables cargo set for this test process (its package's
    // name, version and directory): build scripts that watch them (ring's)
    // would see them change and rebuild, here and in the next outer build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
        {
            cmd.env_remove(&*k);
        }
    }
    match cmd.status() {
        Ok(st) => assert!(st.success(), "cargo build {} failed", args.join(" ")),
        Err(e) if out.exists() => {
            eprintln!("[harness] cannot run cargo ({e}); testing {out:?} as it is")
        }
        Err(e) => panic!("run cargo build: {e}"),
    }
    assert!(out.exists(), "cargo build did not produce {out:?}");
}

/// The `sluice-dp` binary under test: `$SLUICE_BIN_DIR/sluice-dp` if set,
/// else `<target>/debug/sluice-dp`, built (brought up to date) with cargo
/// once per test process: `cargo test -p sluice-tests` does not build it,
/// and one left from before a source change was tested instead of the code
/// at hand.
pub fn sluice_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
            let p = PathBuf::from(dir).join("sluice-dp");
            assert!(p.exists(), "SLUICE_BIN_DIR is set but {p:?} does not exist");
            return p;
        }
        let ws = crate::workspace_dir();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_relative() { ws.join(t) } else { t })
            .unwrap_or_else(|| ws.join("target"));
        let p = target.join("debug").join("sluice-dp");
        cargo_build(&["-p", "dataplane", "--bin", "sluice-dp"], &p);
        p
    })
    .clone()
}

/// Spawn `cmd` so that the child gets `sig` if this test process dies
/// without cleaning up (SIGKILL, a crash): PR_SET_PDEATHSIG on the child.
/// That signal fires when the spawning *thread* exits, so the spawn happens
/// on one helper thread that lives as long as the process.
pub fn spawn_tied(mut cmd: Command, sig: i32) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static OWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes an async-signal-safe system call.
    unsafe {
        cmd.pre_exec(move || {
            // Runs after the uid/gid switch, which would clear the setting.
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let owner = OWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("sluice-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn helper thread");
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    owner
        .lock()
        .unwrap()
        .send((cmd, reply_tx))
        .expect("spawner thread alive");
    reply_rx.recv().expect("spawner thread replied")
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::SystemTime;

    fn newest(dir: &Path) -> SystemTime {
        let mut t = SystemTime::UNIX_EPOCH;
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let at = if m.is_dir() {
                newest(&e.path())
            } else {
                m.modified().unwrap()
            };
            t = t.max(at);
        }
        t
    }

    /// The `sluice-dp` the integration tests start is built from the
    /// sources at hand: one built before a change to them (`cargo test -p
    /// sluice-tests` does not build it) was tested instead, so a test
    /// could pass, or fail, for code no longer there.
    #[test]
    fn the_binary_under_test_is_no_older_than_its_sources() {
        if std::env::var_os("SLUICE_BIN_DIR").is_some() {
            return;
        }
        let bin = super::sluice_bin();
        let built = std::fs::metadata(&bin).unwrap().modified().unwrap();
        let src = newest(&crate::workspace_dir().join("dataplane").join("src"));
        assert!(built >= src, "{bin:?} is older than dataplane/src");
    }
}
