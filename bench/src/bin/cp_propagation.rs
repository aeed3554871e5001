//! How long from `Apply` on the control plane until every data-plane node
//! has applied the change.
//!
//! Starts one `sluice-cp` (embedded store, or `--etcd URL`) and N
//! `sluice-dp` nodes subscribed to it on this machine, applies `--changes`
//! configuration changes one after another, and for each takes the time
//! from just before the Apply call to the moment the last node applied
//! that version (each node reports the wall-clock time it swapped the
//! snapshot in, on its `/snapshot` admin endpoint, so polling granularity
//! does not add to the figure). Prints percentiles.
//!
//! ```text
//! cargo build --release -p dataplane -p controlplane -p bench
//! target/release/cp_propagation --nodes 8 --changes 100
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    nodes: usize,
    changes: usize,
    etcd: Option<String>,
    bin_dir: PathBuf,
    workers: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        nodes: 8,
        changes: 100,
        etcd: None,
        bin_dir: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("target/release")),
        workers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--nodes" => a.nodes = v().parse().unwrap_or_else(|_| die("--nodes: a number")),
            "--changes" => a.changes = v().parse().unwrap_or_else(|_| die("--changes: a number")),
            "--workers" => a.workers = v().parse().unwrap_or_else(|_| die("--workers: a number")),
            "--etcd" => a.etcd = Some(v()),
            "--bin-dir" => a.bin_dir = PathBuf::from(v()),
            "-h" | "--help" => {
                println!("cp_propagation [--nodes N] [--changes N] [--workers N] [--etcd URL] [--bin-dir DIR]");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other}")),
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("cp_propagation: {msg}");
    std::process::exit(2)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| die(&format!("no free port: {e}")))
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Children die with this process (PR_SET_PDEATHSIG) and on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, log: &std::path::Path) -> Proc {
    let f = std::fs::File::create(log).unwrap_or_else(|e| die(&format!("{log:?}: {e}")));
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().expect("log"))
        .stderr(f);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Proc(
        cmd.spawn()
            .unwrap_or_else(|e| die(&format!("cannot start {cmd:?}: {e}"))),
    )
}

/// GET http://127.0.0.1:port/path → body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// (version, applied_unix_us) from a node's /snapshot.
fn node_state(port: u16) -> Option<(i64, u64)> {
    let body = http_get(port, "/snapshot")?;
    let json = &body[body.find('{')?..=body.rfind('}')?];
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some((v["version"].as_i64()?, v["applied_unix_us"].as_u64()?))
}

fn resource(kind: &str, name: &str, spec: proto::resource::Spec) -> proto::Resource {
    proto::Resource {
        api_version: proto::API_VERSION.into(),
        kind: kind.into(),
        name: name.into(),
        spec: Some(spec),
        revision: 0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("sluice-cp-bench-")
        .tempdir()
        .unwrap_or_else(|e| die(&format!("temp dir: {e}")));
    let cp_port = free_port();
    let mut cp = Command::new(a.bin_dir.join("sluice-cp"));
    cp.arg("--listen")
        .arg(format!("127.0.0.1:{cp_port}"))
        .arg("--plaintext");
    let store = match &a.etcd {
        Some(ep) => {
            cp.arg("--etcd")
                .arg(ep)
                .arg("--prefix")
                .arg(format!("/sluice-bench-{}/", unix_us()))
                .arg("--audit-dir")
                .arg(dir.path().join("audit"));
            "etcd"
        }
        None => {
            cp.arg("--data-dir").arg(dir.path().join("cp-data"));
            "embedded"
        }
    };
    cp.env("SLUICE_LOG", "warn");
    let _cp = spawn(cp, &dir.path().join("cp.log"));
    let url = format!("http://127.0.0.1:{cp_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => die(&format!("sluice-cp not up: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut admin = proto::admin_client::AdminClient::new(channel);
    use proto::resource::Spec;
    let base = vec![
        resource(
            "Connection",
            "app",
            Spec::Connection(proto::ConnectionSpec {
                host: "127.0.0.1".into(),
                port: 5432,
                database: "app".into(),
                user: "app".into(),
                password: "pw".into(),
                auth: "auto".into(),
                masking_profile: String::new(),
                tls: None,
            }),
        ),
        resource(
            "Policy",
            "bench",
            Spec::Policy(proto::PolicySpec {
                connections: vec!["app".into()],
                identities: vec![],
                groups: vec!["bench".into()],
                unmasked: false,
            }),
        ),
        resource(
            "Group",
            "bench",
            Spec::Group(proto::GroupSpec {
                members: vec!["agent-0".into()],
            }),
        ),
    ];
    admin
        .apply(proto::ApplyRequest {
            resources: base,
            dry_run: false,
        })
        .await
        .unwrap_or_else(|e| die(&format!("apply: {e}")));

    let mut nodes = Vec::new();
    let mut admin_ports = Vec::new();
    for i in 0..a.nodes {
        let port = free_port();
        let admin_port = free_port();
        let mut c = Command::new(a.bin_dir.join("sluice-dp"));
        c.arg("--control-plane")
            .arg(&url)
            .arg("--node-name")
            .arg(format!("bench-{i}"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--workers")
            .arg(a.workers.to_string())
            .env("SLUICE_LOG", "warn");
        nodes.push(spawn(c, &dir.path().join(format!("dp-{i}.log"))));
        admin_ports.push(admin_port);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for &p in &admin_ports {
        while !matches!(node_state(p), Some((v, _)) if v > 0) {
            if Instant::now() > deadline {
                die("nodes did not apply the first snapshot within 30 s (see logs)");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "{} nodes ({} worker(s) each) subscribed to sluice-cp ({store} store); {} changes",
        a.nodes, a.workers, a.changes
    );

    let mut lat_ms = Vec::with_capacity(a.changes);
    let mut apply_ms = Vec::with_capacity(a.changes);
    for i in 1..=a.changes {
        let change = vec![resource(
            "Group",
            "bench",
            Spec::Group(proto::GroupSpec {
                members: vec![format!("agent-{i}")],
            }),
        )];
        let t0 = unix_us();
        let started = Instant::now();
        let version = admin
            .apply(proto::ApplyRequest {
                resources: change,
                dry_run: false,
            })
            .await
            .unwrap_or_else(|e| die(&format!("apply: {e}")))
            .into_inner()
            .version;
        apply_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = 0u64;
        for &p in &admin_ports {
            loop {
                match node_state(p) {
                    Some((v, at)) if v >= version => {
                        last = last.max(at);
                        break;
                    }
                    _ if Instant::now() > deadline => die(&format!(
                        "change {i} (version {version}) not applied everywhere within 10 s"
                    )),
                    _ => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        lat_ms.push(last.saturating_sub(t0) as f64 / 1e3);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lat_ms.sort_by(|x, y| x.total_cmp(y));
    apply_ms.sort_by(|x, y| x.total_cmp(y));
    println!(
        "apply -> all {} nodes applied, {} changes ({store} store): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        a.nodes,
        a.changes,
        percentile(&lat_ms, 50.0),
        percentile(&lat_ms, 90.0),
        percentile(&lat_ms, 99.0),
        lat_ms[lat_ms.len() - 1]
    );
    println!(
        "apply RPC alone: p50 {:.2} ms  p99 {:.2} ms",
        percentile(&apply_ms, 50.0),
        percentile(&apply_ms, 99.0)
    );
    drop(nodes);
}
