//! I/O drivers: io_uring by default, epoll when asked for or when the
//! kernel refuses io_uring. The refusal is real: the gateway process runs
//! under a seccomp filter that fails `io_uring_setup` with EPERM, the way a
//! container runtime's default profile does.

use std::os::unix::process::CommandExt;
use std::process::Command;

use sluice_tests::client::within;
use sluice_tests::{ApiKey, Gateway, GatewayConfig, Pg};
use std::time::Duration;

/// x86_64 syscall number of io_uring_setup.
const SYS_IO_URING_SETUP: u32 = 425;

/// Install a seccomp filter in the child that makes io_uring_setup fail
/// with EPERM and allows everything else.
fn refuse_io_uring(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec; only async-signal-safe
    // prctl calls on a filter that lives on this stack frame.
    unsafe {
        cmd.pre_exec(|| {
            let filter = [
                // A = seccomp_data.nr
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == io_uring_setup goto refuse else goto allow
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: SYS_IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn drivers(gw: &Gateway) -> Vec<String> {
    gw.metrics()
        .lines_for("sluice_worker_info")
        .lines()
        .filter_map(|l| l.split("driver=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect()
}

async fn queries_work(gw: &Gateway) {
    let client = gw.agent().await;
    for i in 0..20i32 {
        let row = within(
            Duration::from_secs(10),
            "query",
            client.query_one("select $1::int4 + 1", &[&i]),
        )
        .await
        .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
}

/// What `driver: auto` should pick on this kernel.
fn expected_auto_driver() -> &'static str {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) if v.trim() != "0" => "epoll",
        _ => "io_uring",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_driver_uses_io_uring_where_allowed() {
    let gw =
        Gateway::start_with(&GatewayConfig::standard(Pg::shared(), ApiKey::shared()).workers(2));
    queries_work(&gw).await;
    let want = expected_auto_driver();
    assert_eq!(drivers(&gw), vec![want, want], "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoll_driver_on_request() {
    let cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared())
        .workers(2)
        .driver("epoll");
    let gw = Gateway::start_with(&cfg);
    queries_work(&gw).await;
    assert_eq!(drivers(&gw), vec!["epoll", "epoll"], "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_refused_falls_back_to_epoll() {
    let cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared()).workers(2);
    let gw = Gateway::try_start_customized(&cfg.to_yaml(), refuse_io_uring).unwrap();
    queries_work(&gw).await;
    assert_eq!(drivers(&gw), vec!["epoll", "epoll"], "{}", gw.log());
    assert!(
        gw.log().contains("io_uring is not available"),
        "{}",
        gw.log()
    );
}

#[test]
fn forced_io_uring_refused_is_a_clear_startup_error() {
    let cfg = GatewayConfig::standard(Pg::shared(), ApiKey::shared()).driver("io_uring");
    let err = match Gateway::try_start_customized(&cfg.to_yaml(), refuse_io_uring) {
        Ok(_) => panic!("gateway started although io_uring was refused and required"),
        Err(e) => e,
    };
    assert!(err.contains("io_uring runtime refused"), "{err}");
}

/// The per-worker gauges add up to the process totals, and every worker
/// that holds a connection shows it (an SRE looks here for a hot core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_worker_metrics_add_up_to_the_totals() {
    let gw =
        Gateway::start_with(&GatewayConfig::standard(Pg::shared(), ApiKey::shared()).workers(2));
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(gw.agent().await);
    }
    for (i, c) in clients.iter().enumerate() {
        within(Duration::from_secs(10), "query", c.simple_query("select 1"))
            .await
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
    let m = gw.metrics();
    let workers: Vec<f64> = ["0", "1"]
        .iter()
        .map(|w| m.get("sluice_worker_connections_open", &[("worker", w)]))
        .collect();
    assert_eq!(
        workers.iter().sum::<f64>(),
        m.get("sluice_connections_open", &[]),
        "{}",
        m.lines_for("sluice_")
    );
    assert!(
        workers.iter().sum::<f64>() >= 8.0,
        "{}",
        m.lines_for("sluice_worker")
    );
    assert_eq!(
        m.get("sluice_worker_statements_total", &[]),
        m.get("sluice_statements_total", &[]),
        "{}",
        m.lines_for("sluice_")
    );
    assert!(
        m.get("sluice_statements_total", &[]) >= 8.0,
        "{}",
        m.lines_for("sluice_statements")
    );
    assert!(
        m.has("sluice_worker_statements_total", &[("worker", "1")]),
        "{}",
        m.lines_for("sluice_worker")
    );
}
