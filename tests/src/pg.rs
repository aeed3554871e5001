//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, the postmaster
//! started as a child of the test process on a free loopback port, a login
//! role `app_owner` owning database `appdb`. As root, the PostgreSQL
//! programs run as the `postgres` user (they refuse root).
//!
//! [`Pg::shared`] gives one cluster per test binary, started on first use and
//! stopped by PID (SIGINT = fast shutdown, SIGKILL after 20 s, then reaped)
//! by an `atexit` handler; its directory is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{self, is_root};

/// Connection limit of the test clusters: enough for the 1,000-connection
/// scale test plus the harness's own connections.
pub const MAX_CONNECTIONS: u32 = 1200;

pub struct Pg {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// The postmaster's PID (a child of this process).
    pub pid: i32,
    /// Temp dir holding the data dir, the socket, the log.
    pub dir: PathBuf,
    pub data: PathBuf,
    pub bin: PathBuf,
    pub superuser: String,
    pub superuser_password: String,
    /// The role the gateway logs in as (owner of `app_db`).
    pub app_user: String,
    pub app_password: String,
    pub app_db: String,
}

/// Directory holding the PostgreSQL server binaries: `$PG_BIN_DIR`, else the
/// newest `/usr/lib/postgresql/*/bin` (15 on the project's machines).
pub fn pg_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(d);
    }
    let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").exists() {
        return preferred;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .expect("no PostgreSQL server binaries found (set PG_BIN_DIR)")
}

/// A command for PostgreSQL tool `tool`, run as the `postgres` user when we
/// are root (initdb and the server refuse to run as root).
fn pg_tool(bin: &Path, tool: &str) -> Command {
    let mut c = Command::new(bin.join(tool));
    if is_root() {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = postgres_ids();
        c.uid(uid).gid(gid);
        c.env("HOME", "/tmp")
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    c
}

/// uid and gid of the `postgres` system user.
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy
    // the two integers out at once and do not keep the pointer.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "running as root but there is no `postgres` user"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn chown_to_postgres(path: &Path) {
    if is_root() {
        let out = process::run(
            Command::new("chown").arg("-R").arg("postgres:").arg(path),
            None,
            Duration::from_secs(30),
        );
        out.assert_success("chown -R postgres");
    }
}

impl Pg {
    /// The cluster shared by all tests of this binary.
    pub fn shared() -> &'static Pg {
        static PG: OnceLock<Pg> = OnceLock::new();
        PG.get_or_init(Pg::start)
    }

    /// initdb + start a new cluster (stopped at process exit).
    pub fn start() -> Pg {
        let bin = pg_bin_dir();
        let dir = crate::process_tempdir("sluice-pg-");
        // The server runs as postgres and needs to traverse and write here.
        let data = dir.join("data");
        let superuser_password = "super-secret-pw".to_string();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, format!("{superuser_password}\n")).unwrap();
        chown_to_postgres(&dir);
        let init = process::run(
            pg_tool(&bin, "initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "scram-sha-256", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display())),
            None,
            Duration::from_secs(120),
        );
        init.assert_success("initdb");

        // The postmaster runs as our direct child (not daemonized by pg_ctl),
        // so it is stopped by PID and reaped by us. A port can be taken
        // between free_port() and the server's bind; try a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = crate::free_port();
            let log = std::fs::File::create(dir.join("pg.log")).unwrap();
            let mut cmd = pg_tool(&bin, "postgres");
            cmd.arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                .args(["-c", &format!("max_connections={MAX_CONNECTIONS}")])
                .args(["-c", "shared_buffers=128MB", "-c", "logging_collector=off"])
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            // SIGQUIT = immediate shutdown, should this process be killed.
            let mut child = process::spawn_tied(cmd, libc::SIGQUIT).expect("spawn postgres");
            let pid = child.id() as i32;
            crate::register_pg_for_exit(pid, data.clone());
            if wait_ready(&mut child, &data) {
                let pg = Pg {
                    port,
                    pid,
                    dir: dir.clone(),
                    data: data.clone(),
                    bin: bin.clone(),
                    superuser: "postgres".into(),
                    superuser_password: superuser_password.clone(),
                    app_user: "app_owner".into(),
                    app_password: "app-owner-pw".into(),
                    app_db: "appdb".into(),
                };
                pg.setup_roles();
                return pg;
            }
            stop_postmaster(pid);
            crate::unregister_pg(pid);
            last_err = std::fs::read_to_string(dir.join("pg.log")).unwrap_or_default();
        }
        panic!("PostgreSQL did not start:\n--- pg.log ---\n{last_err}");
    }

    fn setup_roles(&self) {
        let out = self.psql_super(
            "postgres",
            &[
                &format!(
                    "CREATE ROLE {} LOGIN PASSWORD '{}'",
                    self.app_user, self.app_password
                ),
                &format!("CREATE DATABASE {} OWNER {}", self.app_db, self.app_user),
            ],
        );
        out.assert_success("create role/database");
    }

    /// Run SQL commands with psql as the superuser on database `db`.
    pub fn psql_super(&self, db: &str, commands: &[&str]) -> process::Output {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", &self.superuser, "-d", db])
            .env("PGPASSWORD", &self.superuser_password)
            .env("PGSSLMODE", "disable");
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        process::run(&mut cmd, None, Duration::from_secs(60))
    }

    /// tokio-postgres config for direct access as `app_owner` to `appdb`
    /// (what the gateway itself uses).
    pub fn direct_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(&self.app_user)
            .password(&self.app_password)
            .dbname(&self.app_db)
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// tokio-postgres config for the superuser on `appdb` (to watch
    /// `pg_stat_activity`).
    pub fn super_config(&self) -> tokio_postgres::Config {
        let mut c = self.direct_config();
        c.user(&self.superuser).password(&self.superuser_password);
        c
    }

    pub async fn direct(&self) -> tokio_postgres::Client {
        crate::connect(&self.direct_config())
            .await
            .expect("direct connection to PostgreSQL")
    }

    pub async fn superuser(&self) -> tokio_postgres::Client {
        crate::connect(&self.super_config())
            .await
            .expect("superuser connection to PostgreSQL")
    }

    /// libpq URL for direct access as `app_owner` (password in `PGPASSWORD`).
    pub fn direct_url(&self) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/{}?sslmode=disable",
            self.app_user, self.port, self.app_db
        )
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pg.log")).unwrap_or_default()
    }
}

/// Wait until the postmaster says it is ready (postmaster.pid status line);
/// false if it exits or takes over 60 s.
fn wait_ready(child: &mut std::process::Child, data: &Path) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().nth(7).map(|l| l.trim() == "ready"))
            .unwrap_or(false);
        if ready {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop a postmaster that is our child: SIGINT (fast shutdown), reap it;
/// SIGKILL if it is still there after 20 s.
pub(crate) fn stop_postmaster(pid: i32) {
    let reaped = |block: bool| -> bool {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, if block { 0 } else { libc::WNOHANG }) };
        r == pid || r == -1
    };
    if reaped(false) {
        return;
    }
    process::signal(pid, libc::SIGINT);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if reaped(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    process::signal(pid, libc::SIGKILL);
    reaped(true);
}
