//! `idle-conns`: open N authenticated PostgreSQL connections, then hold them
//! idle until standard input closes or SIGTERM/SIGINT arrives.
//!
//! Used by `bench/e2e/idle_memory.sh` to measure a gateway's memory per idle
//! client connection. Every connection completes the startup and
//! authentication (SCRAM or whatever the server asks for) up to
//! ReadyForQuery; with `--ping` it also runs one `SELECT 1`, so the session
//! has carried a statement before it goes idle.
//!
//! Usage:
//!   idle-conns [--ca FILE] [--concurrency K] [--ping] N 'CONNSTRING'
//!
//! CONNSTRING is a libpq key/value string or a postgresql:// URL. When it
//! carries no password, `PGPASSWORD` is used (keeps keys out of `ps`).
//! `sslmode=require` encrypts without verifying the server certificate (as
//! libpq does); with `--ca FILE` the chain and name are verified against it.
//!
//! Prints `ready N` on standard output once all N are established, then waits.
//! Connections that the server closes while idle are reported on standard
//! error, and counted in the final `closed-by-server K` line.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio_postgres_rustls::MakeRustlsConnect;

/// An error with its chain of causes, e.g. "error connecting to server: Connection refused".
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

struct Args {
    n: usize,
    conn: String,
    ca: Option<String>,
    concurrency: usize,
    ping: bool,
}

const USAGE: &str = "usage: idle-conns [--ca FILE] [--concurrency K] [--ping] N 'CONNSTRING'";

fn parse_args() -> Result<Args, String> {
    let mut ca = None;
    let mut concurrency = 16usize;
    let mut ping = false;
    let mut positional = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ca" => ca = Some(it.next().ok_or("--ca needs a file")?),
            "--concurrency" => {
                let v = it.next().ok_or("--concurrency needs a number")?;
                concurrency = v
                    .parse()
                    .map_err(|_| format!("--concurrency: not a number: {v}"))?;
                if concurrency == 0 {
                    return Err("--concurrency must be at least 1".into());
                }
            }
            "--ping" => ping = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => positional.push(a),
        }
    }
    if positional.len() != 2 {
        return Err(USAGE.into());
    }
    let n = positional[0]
        .parse()
        .map_err(|_| format!("N: not a number: {}", positional[0]))?;
    Ok(Args {
        n,
        conn: positional.remove(1),
        ca,
        concurrency,
        ping,
    })
}

/// Accepts any server certificate but still checks the handshake signatures:
/// the equivalent of libpq's `sslmode=require`.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(ca: Option<&str>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("reading CA file {path}: {e}"))?
            {
                let cert = cert.map_err(|e| format!("parsing CA file {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("CA file {path}: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

async fn wait_for_release() {
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return "stdin closed",
                Ok(_) => {}
            }
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("idle-conns: cannot watch SIGTERM: {e}");
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    let why = tokio::select! {
        w = stdin_closed => w,
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    eprintln!("idle-conns: releasing connections ({why})");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut config: tokio_postgres::Config = match args.conn.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("idle-conns: bad connection string: {e}");
            return ExitCode::from(2);
        }
    };
    if config.get_password().is_none() {
        if let Ok(pw) = std::env::var("PGPASSWORD") {
            config.password(pw);
        }
    }
    let tls = match tls_config(args.ca.as_deref()) {
        Ok(c) => MakeRustlsConnect::new(c),
        Err(e) => {
            eprintln!("idle-conns: {e}");
            return ExitCode::from(2);
        }
    };

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let closed = Arc::new(AtomicUsize::new(0));
    // Set before we drop our clients, so our own closes are not counted.
    let releasing = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.n);
    for i in 0..args.n {
        let (config, tls, gate) = (config.clone(), tls.clone(), gate.clone());
        let (closed, releasing) = (closed.clone(), releasing.clone());
        let ping = args.ping;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore closed");
            let (client, connection) = config
                .connect(tls)
                .await
                .map_err(|e| format!("connection {i}: connect: {}", describe(&e)))?;
            tokio::spawn(async move {
                let result = connection.await;
                if releasing.load(Ordering::SeqCst) {
                    return;
                }
                if closed.fetch_add(1, Ordering::Relaxed) < 5 {
                    match result {
                        Ok(()) => eprintln!("idle-conns: connection {i} closed by server"),
                        Err(e) => eprintln!("idle-conns: connection {i} ended: {}", describe(&e)),
                    }
                }
            });
            if ping {
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| format!("connection {i}: SELECT 1: {}", describe(&e)))?;
            }
            Ok::<_, String>(client)
        }));
    }
    let mut clients = Vec::with_capacity(args.n);
    let mut first_error = None;
    let mut failures = 0usize;
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(format!("task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!(
            "idle-conns: {failures} of {} connections failed; first error: {e}",
            args.n
        );
        return ExitCode::FAILURE;
    }
    eprintln!(
        "idle-conns: {} connections established in {:.2}s",
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    println!("ready {}", clients.len());

    wait_for_release().await;
    releasing.store(true, Ordering::SeqCst);
    let lost = closed.load(Ordering::Relaxed);
    println!("closed-by-server {lost}");
    drop(clients);
    if lost > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
