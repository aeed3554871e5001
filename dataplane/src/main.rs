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

fn generate_key() -> String {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .expect("system random source");
    use base64::Engine;
    format!(
        "sk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Apikey { iterations, json }) => {
            let key = generate_key();
            let v = Verifier::generate(key.as_bytes(), iterations.max(1)).to_string();
            if json {
                println!("{}", serde_json::json!({"key": key, "verifier": v}));
            } else {
                println!("key: {key}\nverifier: {v}");
            }
            ExitCode::SUCCESS
        }
        Some(Command::DevCerts { dir, hosts }) => match dataplane::devcerts::write(&dir, &hosts) {
            Ok(()) => {
                println!(
                    "wrote {0}/ca.pem {0}/ca.key {0}/server.pem {0}/server.key",
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice-dp: dev-certs: {e}");
                ExitCode::FAILURE
            }
        },
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
            let Some(path) = cli.config else {
                eprintln!("sluice-dp: --config FILE is required (see --help)");
                return ExitCode::from(2);
            };
            init_logging(&cli.log_format);
            let mut cfg = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice-dp: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            if let Some(w) = cli.workers {
                cfg.workers = w;
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
