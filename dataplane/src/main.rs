//! `sluice-dp`: the Sluice data-plane binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dataplane::auth::scram::{Verifier, DEFAULT_ITERATIONS};
use dataplane::config::Config;

#[derive(Parser)]
#[command(
    name = "sluice-dp",
    version,
    about = "Sluice data plane: identity-aware PostgreSQL gateway"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Static configuration file (YAML).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Worker threads (overrides the config; 0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Subscribe to a control plane for connections, identities and grants
    /// (comma-separated URLs, tried in order; https:// uses mTLS, http:// is
    /// allowed on loopback only). Adds to or overrides `control_plane.urls`.
    #[arg(long, env = "SLUICE_CONTROL_PLANE", value_delimiter = ',')]
    control_plane: Vec<String>,
    /// CA that signed the control plane's certificate.
    #[arg(long, env = "SLUICE_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// This node's client certificate for the control plane (mTLS).
    #[arg(long, env = "SLUICE_CONTROL_PLANE_CERT")]
    control_plane_cert: Option<PathBuf>,
    /// Key of --control-plane-cert.
    #[arg(long, env = "SLUICE_CONTROL_PLANE_KEY")]
    control_plane_key: Option<PathBuf>,
    /// Node id in control-plane membership and the audit trail (default
    /// <hostname>-<first listen port>; 1 to 128 of A-Z a-z 0-9 . _ -).
    #[arg(long, env = "SLUICE_NODE_NAME")]
    node_name: Option<String>,
    /// Client listeners, host:port (overrides `listen`; repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Admin HTTP listener (overrides `admin_listen`).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Audit spool directory (overrides `audit.spool_dir`).
    #[arg(long, env = "SLUICE_AUDIT_DIR")]
    audit_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an API key and its SCRAM-SHA-256 verifier (only the verifier goes in config).
    Apikey {
        #[arg(long, default_value_t = DEFAULT_ITERATIONS)]
        iterations: u32,
        /// Print JSON instead of two lines.
        #[arg(long)]
        json: bool,
    },
    /// Write a throwaway CA and server certificate (ca.pem, server.pem, server.key) for local use.
    DevCerts {
        #[arg(long)]
        dir: PathBuf,
        /// Names and addresses the server certificate is valid for.
        #[arg(long = "host", default_values_t = vec!["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
        /// A client certificate to issue from the same CA (repeatable): a
        /// SPIFFE ID (`spiffe://corp.example/agent/7`, the URI SAN) or a
        /// common name. Written as client-1.pem/.key, client-2…
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Revoke a client certificate this CA issued (repeatable): adds it
        /// to DIR/ca.crl (for `tls.client_crl_files`), keeping the CA and
        /// everything else in DIR as they are.
        #[arg(long = "revoke", conflicts_with_all = ["clients"])]
        revoke: Vec<PathBuf>,
    },
    /// Summarise a stopped node's audit spool directory as JSON: records
    /// waiting in the spool and in the core rings, by kind.
    AuditSpool {
        #[arg(long)]
        dir: PathBuf,
        /// Where the ring files are (`audit.ring_dir`; default: the same
        /// default the node uses for --dir).
        #[arg(long)]
        ring_dir: Option<PathBuf>,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Apikey { iterations, json }) => {
            let key = dataplane::auth::scram::generate_api_key();
            let v = Verifier::generate(key.as_bytes(), iterations.max(1)).to_string();
            if json {
                println!("{}", serde_json::json!({"key": key, "verifier": v}));
            } else {
                println!("key: {key}\nverifier: {v}");
            }
            ExitCode::SUCCESS
        }
        Some(Command::DevCerts { dir, revoke, .. }) if !revoke.is_empty() => {
            match dataplane::devcerts::revoke(&dir, &revoke) {
                Ok(n) => {
                    println!(
                        "wrote {}/ca.crl ({n} revoked; `kill -HUP` a node that has it in tls.client_crl_files, or wait tls.reload_interval_s)",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice-dp: dev-certs --revoke: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::DevCerts {
            dir,
            hosts,
            clients,
            ..
        }) => match dataplane::devcerts::write(&dir, &hosts, &clients) {
            Ok(written) => {
                println!(
                    "wrote {0}/ca.pem {0}/ca.key {0}/ca.crl {0}/server.pem {0}/server.key",
                    dir.display()
                );
                for c in written {
                    println!("wrote {}/{c}", dir.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice-dp: dev-certs: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::AuditSpool { dir, ring_dir }) => {
            match dataplane::audit::service::inspect(&dir, ring_dir.as_deref()) {
                Ok(i) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&i).expect("serializable")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice-dp: audit-spool: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::CheckConfig { config }) => match Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| dataplane::snapshot::Snapshot::build(&c, 0).map_err(Into::into))
        {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice-dp: {}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        None => {
            let mut cfg = match &cli.config {
                Some(path) => match Config::load(path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("sluice-dp: {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                },
                None if !cli.control_plane.is_empty() => {
                    Config::from_yaml("{}").expect("embedded defaults are valid")
                }
                None => {
                    eprintln!("sluice-dp: give --config FILE or --control-plane URL (see --help)");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cli.log_format);
            if let Some(w) = cli.workers {
                cfg.workers = w;
            }
            if !cli.listen.is_empty() {
                cfg.listen = cli.listen;
            }
            if let Some(a) = cli.admin_listen {
                cfg.admin_listen = a;
            }
            if let Some(d) = cli.audit_dir {
                cfg.audit.spool_dir = d;
            }
            // (Whether the control plane comes from the command line or
            // the environment and not from the file: errors say so.)
            let cp_from_cli = (!cli.control_plane.is_empty() && cfg.control_plane.is_none())
                .then(|| cli.control_plane.join(","));
            if !cli.control_plane.is_empty()
                || cli.node_name.is_some()
                || cli.control_plane_ca.is_some()
            {
                let cp = cfg
                    .control_plane
                    .get_or_insert_with(|| dataplane::config::ControlPlane {
                        urls: Vec::new(),
                        ca_file: None,
                        cert_file: None,
                        key_file: None,
                        node_name: None,
                        advertise: None,
                        heartbeat_seconds: 5,
                    });
                if !cli.control_plane.is_empty() {
                    cp.urls = cli.control_plane;
                }
                cp.ca_file = cli.control_plane_ca.or(cp.ca_file.take());
                cp.cert_file = cli.control_plane_cert.or(cp.cert_file.take());
                cp.key_file = cli.control_plane_key.or(cp.key_file.take());
                cp.node_name = cli.node_name.or(cp.node_name.take());
            }
            if let Err(e) = cfg.validate() {
                match cp_from_cli {
                    Some(urls) => eprintln!(
                        "sluice-dp: {e} (the control plane {urls} comes from --control-plane \
                         or SLUICE_CONTROL_PLANE, not the file; unset it to run the file alone)"
                    ),
                    None => eprintln!("sluice-dp: {e}"),
                }
                return ExitCode::FAILURE;
            }
            if let Err(e) = dataplane::mask::Kernel::from_env() {
                eprintln!("sluice-dp: {e}");
                return ExitCode::FAILURE;
            }
            match dataplane::server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice-dp: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// `--help` names the default node name as the code makes it: a `:`
    /// is not a character node names may hold (the control plane's audit
    /// store refuses it), so `<hostname>:<port>` described a name no node
    /// gets.
    #[test]
    fn node_name_help_gives_the_default_the_code_uses() {
        let cmd = Cli::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "node_name")
            .expect("--node-name");
        let help = arg.get_help().expect("help text").to_string();
        assert!(help.contains("<hostname>-<first listen port>"), "{help}");
        assert!(!help.contains("<hostname>:"), "{help}");
    }
}
