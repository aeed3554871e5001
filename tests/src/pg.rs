//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start`
//! on a free loopback port, a login role `app_owner` owning database `appdb`.
//!
//! [`Pg::shared`] gives one cluster per test binary, started on first use and
//! stopped (`pg_ctl stop -m fast`, then SIGKILL by PID) by an `atexit`
//! handler; its directory is removed afterwards.

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

/// A command for PostgreSQL tool `tool`, run as `postgres` when we are root
/// (initdb and the server refuse to run as root).
fn pg_tool(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
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

        // A port can be taken between free_port() and the server's bind; try
        // a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = crate::free_port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off \
                 -c max_connections={MAX_CONNECTIONS} -c shared_buffers=128MB",
                dir.display()
            );
            let out = process::run(
                pg_tool(&bin, "pg_ctl")
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(dir.join("pg.log"))
                    .args(["-w", "-t", "60", "-o", &opts, "start"]),
                None,
                Duration::from_secs(90),
            );
            if out.success() {
                crate::register_pg_for_exit(bin.clone(), data.clone());
                let pg = Pg {
                    port,
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
            let log = std::fs::read_to_string(dir.join("pg.log")).unwrap_or_default();
            last_err = format!("{}\n{}\n--- pg.log ---\n{log}", out.stdout, out.stderr);
            stop_cluster(&bin, &data);
        }
        panic!("PostgreSQL did not start:\n{last_err}");
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

/// Stop a cluster: `pg_ctl stop -m fast`, and SIGKILL the postmaster by PID if
/// that does not work.
pub(crate) fn stop_cluster(bin: &Path, data: &Path) {
    let pid = postmaster_pid(data);
    let stopped = std::process::Command::new(if is_root() {
        "runuser".into()
    } else {
        bin.join("pg_ctl")
    })
    .args(if is_root() {
        vec![
            "-u".to_string(),
            "postgres".into(),
            "--".into(),
            bin.join("pg_ctl").display().to_string(),
        ]
    } else {
        vec![]
    })
    .arg("-D")
    .arg(data)
    .args(["-m", "fast", "-w", "-t", "20", "stop"])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .status()
    .map(|s| s.success())
    .unwrap_or(false);
    if !stopped {
        if let Some(pid) = pid {
            process::signal(pid, libc::SIGKILL);
        }
    }
}

fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}
