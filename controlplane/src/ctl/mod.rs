//! `sluicectl`, the operator CLI of the control plane.
//!
//! Commands: `apply -f`, `get`, `delete`, `nodes`, `version` talk to
//! `sluice-cp`'s `sluice.v1.Admin` service; `audit search`, `audit
//! verify`, `session replay` and `evidence` to its `sluice.v1.AuditQuery`
//! service ([`audit`], [`evidence`]); `certs` writes a CA and mTLS
//! certificates locally. Documents are parsed and checked here
//! ([`crate::resources::parse_documents`]) before anything is sent, so a
//! typo is reported with its file, document and field path without a
//! round trip.
//!
//! Finding the control plane: `--control-plane URL[,URL…]`, else
//! `SLUICE_CONTROL_PLANE`, else `http://127.0.0.1:7600`. URLs are tried in
//! order until one answers. `https://` uses rustls (ring) with `--ca`
//! (`SLUICE_CA`, system roots without it) and, for mTLS, `--cert` and
//! `--key` (`SLUICE_CERT`, `SLUICE_KEY`). Connecting may take 5 s per URL,
//! a request 30 s.
//!
//! Exit codes ([`CtlError::exit_code`]):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the control plane refused the request (any gRPC status other than `UNAVAILABLE` and `DEADLINE_EXCEEDED`: invalid document, not found, failed precondition, …); its message is printed. Also `audit verify` when the chain has findings (listed on stdout) |
//! | 2 | usage or local input error: bad flag, unreadable file, document that does not parse or validate |
//! | 3 | control plane unreachable (every URL failed to connect, broke the connection, or answered `UNAVAILABLE`), timed out, or lost during a change |
//!
//! Errors go to stderr as `sluicectl: error: …`. Output meant for scripts
//! (results, generated API keys, `-o json|yaml`) goes to stdout.
//!
//! The module never logs or prints a connection password: `get` blanks any
//! the server might return.

pub mod audit;
pub mod certs;
pub mod client;
pub mod document;
pub mod evidence;
pub mod table;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use proto::{resource::Spec, Resource};
use tonic::Code;

use client::{ControlPlane, Request, TlsFiles};
use document::{object_name, parse_kind};

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the control plane refused the request (invalid document, not found, failed precondition),
     or `audit verify` found records edited, deleted or out of place
  2  usage or local input error (bad flag, unreadable file, document that does not parse)
  3  control plane unreachable (every URL failed) or timed out";

#[derive(Parser, Debug)]
#[command(
    name = "sluicectl",
    version,
    about = "Operate a Sluice control plane: apply, get and delete configuration, list data-plane nodes, search and verify the audit trail, replay sessions, export evidence, make mTLS certificates",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Control plane URL, or several separated by commas (tried in order).
    #[arg(
        long,
        global = true,
        env = "SLUICE_CONTROL_PLANE",
        default_value = client::DEFAULT_URL,
        value_name = "URL[,URL...]"
    )]
    pub control_plane: String,
    /// CA certificate (PEM) to trust for https:// URLs; system roots when not given.
    #[arg(long, global = true, env = "SLUICE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; needs --key.
    #[arg(long, global = true, env = "SLUICE_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "SLUICE_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or update resources from YAML documents, as one atomic set.
    #[command(after_help = EXIT_CODES)]
    Apply {
        /// A file, a directory (its *.yaml and *.yml files, by name) or - for stdin. Repeatable.
        #[arg(
            short = 'f',
            long = "filename",
            visible_alias = "file",
            required = true,
            value_name = "FILE|DIR|-"
        )]
        files: Vec<String>,
        /// Let the control plane validate the documents without storing them.
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long, value_enum, default_value_t = ApplyFormat::Text)]
        output: ApplyFormat,
    },
    /// Show resources of a kind (or `all`), or one by name.
    #[command(after_help = EXIT_CODES)]
    Get {
        /// connection (connections, conn), identityprovider (idp), apikey (key), group, policy,
        /// maskingprofile (mask), or all.
        #[arg(value_parser = parse_kind_or_all)]
        kind: KindArg,
        name: Option<String>,
        /// yaml is what `apply -f` reads (passwords left out).
        #[arg(short, long, value_enum, default_value_t = GetFormat::Table)]
        output: GetFormat,
    },
    /// Delete one resource.
    #[command(after_help = EXIT_CODES)]
    Delete {
        /// connection (conn), identityprovider (idp), apikey (key), group, policy,
        /// maskingprofile (mask).
        #[arg(value_parser = parse_one_kind)]
        kind: &'static str,
        name: String,
    },
    /// List the data-plane nodes and the snapshot version each runs.
    #[command(after_help = EXIT_CODES)]
    Nodes {
        #[arg(short, long, value_enum, default_value_t = NodesFormat::Table)]
        output: NodesFormat,
    },
    /// Print the versions of sluicectl and of the control plane.
    #[command(after_help = EXIT_CODES)]
    Version,
    /// Search the audit trail and verify its hash chains.
    #[command(after_help = EXIT_CODES)]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Replay a session from the audit trail.
    #[command(after_help = EXIT_CODES)]
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Write evidence.md and evidence.json: audit facts per NIST SP 800-53 control (AU-2, AU-6, AU-9, AC-2, AC-6, SC-8, IR-4).
    #[command(after_help = TIME_HELP)]
    Evidence {
        /// Start of the period (included): RFC 3339, a date, `now`, or a duration ago (7d).
        #[arg(long, value_name = "TIME")]
        from: String,
        /// End of the period (excluded).
        #[arg(long, value_name = "TIME")]
        to: String,
        /// Directory to write the two files into.
        #[arg(long, default_value = ".", value_name = "DIR")]
        out: PathBuf,
        /// Sample record ids per category (at most 50).
        #[arg(long, default_value_t = 5)]
        samples: u32,
    },
    /// Write a CA and certificates for mTLS between data planes, sluicectl and the control plane.
    #[command(after_help = EXIT_CODES)]
    Certs {
        /// Directory to write ca, control-plane, node and admin .pem/.key files into.
        #[arg(long)]
        dir: PathBuf,
        /// Another name or address of the control plane (localhost, 127.0.0.1 and ::1 are always in).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Validity of every certificate, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace an existing CA in --dir.
        #[arg(long)]
        force: bool,
        /// Also write node-NAME.pem/.key, valid only for node id NAME (repeatable).
        /// With a CA already in --dir, only these are issued, from it.
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
    },
}

/// Times on the command line, as `--help` shows them.
pub const TIME_HELP: &str = "\
Times: RFC 3339 (2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00), a date (2024-05-01,
midnight UTC), `now`, or a duration ago (90s, 15m, 1h30m, 7d, 2w).

Exit codes:
  0  success
  1  the control plane refused the request, or `audit verify` found problems
  2  usage or local input error
  3  control plane unreachable or timed out";

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Find audit records (every filter given must match), oldest first.
    #[command(after_help = TIME_HELP)]
    Search {
        /// Identity name.
        #[arg(long)]
        identity: Option<String>,
        /// Connection name.
        #[arg(long)]
        connection: Option<String>,
        /// Session id.
        #[arg(long)]
        session: Option<String>,
        /// session_start, session_end, query, parse, bind, execute, auth_failure, policy_decision, snapshot_applied, records_lost, tls_loaded.
        #[arg(long, value_parser = audit::parse_kind)]
        kind: Option<proto::AuditKind>,
        /// allow, deny, review_required, review_approved, review_denied.
        #[arg(long, value_parser = audit::parse_decision)]
        decision: Option<proto::Decision>,
        /// Data-plane node id.
        #[arg(long)]
        node: Option<String>,
        /// Records at or after this time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Records before this time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Most records shown.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(short, long, value_enum, default_value_t = audit::Format::Table)]
        output: audit::Format,
    },
    /// Walk every node's hash chain (or one node's) and list gaps, edited, deleted and re-linked records with their positions. Exit 1 when anything is found.
    #[command(after_help = TIME_HELP)]
    Verify {
        /// Only this data-plane node's chain.
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long, value_enum, default_value_t = audit::Format::Table)]
        output: audit::Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// A session's records in order, with decisions, rows, timings and masked counts.
    #[command(after_help = EXIT_CODES)]
    Replay {
        /// The session id (from `audit search`).
        id: String,
        /// Also decide each statement under today's configuration and mark where that differs.
        #[arg(long)]
        evaluate: bool,
        #[arg(short, long, value_enum, default_value_t = audit::Format::Table)]
        output: audit::Format,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetFormat {
    Table,
    Yaml,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodesFormat {
    Table,
    Json,
}

/// `get`'s kind: one, or all of them in apply order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindArg {
    All,
    One(&'static str),
}

fn parse_one_kind(s: &str) -> Result<&'static str, String> {
    parse_kind(s).ok_or_else(|| format!("unknown kind; one of {}", document::KIND_HELP))
}

fn parse_kind_or_all(s: &str) -> Result<KindArg, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(KindArg::All);
    }
    parse_one_kind(s).map(KindArg::One)
}

/// Why a command failed; [`CtlError::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags or arguments.
    #[error("{0}")]
    Usage(String),
    /// A local file that cannot be read, or a document that does not parse
    /// or validate.
    #[error("{0}")]
    Input(String),
    /// The control plane answered with an error status.
    #[error("{}", client::refusal_text(.0))]
    Refused(tonic::Status),
    /// No URL could be connected to (or each answered `UNAVAILABLE`).
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    /// A request got no answer in time.
    #[error("control plane timed out: {0}")]
    TimedOut(String),
    /// The connection broke while a change was in flight.
    #[error("connection to the control plane lost: {0}")]
    Interrupted(String),
    /// The command ran and found problems (`audit verify`).
    #[error("{0}")]
    Findings(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::Input(_) => 2,
            CtlError::Refused(s) => exit_code_for(s.code()),
            CtlError::Findings(_) => 1,
            CtlError::Unreachable(_) | CtlError::TimedOut(_) | CtlError::Interrupted(_) => 3,
        }
    }
}

/// The exit code for a gRPC status from the control plane.
pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::Ok => 0,
        Code::Unavailable | Code::DeadlineExceeded => 3,
        _ => 1,
    }
}

/// What a command prints, kept until it has finished.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    fn line(&mut self, s: impl AsRef<str>) {
        self.stdout.push_str(s.as_ref());
        self.stdout.push('\n');
    }
}

/// `sluicectl`'s `main`: parse the command line (clap exits 2 on usage
/// errors), run, print, and map the result to the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = Output::default();
    let result = run(cli, &mut out);
    // A closed stdout (`sluicectl get … | head`) is not worth a second error.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.stdout.as_bytes());
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), out.stderr.as_bytes());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluicectl: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Run one parsed command, appending what it prints to `out`.
pub fn run(cli: Cli, out: &mut Output) -> Result<(), CtlError> {
    let tls = TlsFiles {
        ca: cli.ca,
        cert: cli.cert,
        key: cli.key,
    };
    let connect = || ControlPlane::new(&cli.control_plane, &tls);
    match cli.command {
        Command::Certs {
            dir,
            hosts,
            days,
            force,
            nodes,
        } => {
            let text = certs::write(&certs::Options {
                dir,
                hosts,
                days,
                force,
                nodes,
            })?;
            out.stdout.push_str(&text);
            Ok(())
        }
        Command::Apply {
            files,
            dry_run,
            output,
        } => {
            let resources = load(&files, &mut std::io::stdin().lock())?;
            let cp = connect()?;
            let req = proto::ApplyRequest { resources, dry_run };
            let resp =
                block_on(cp.call(Request::Change, async |mut c| c.apply(req.clone()).await))?;
            render_apply(&resp, dry_run, output, out);
            Ok(())
        }
        Command::Get { kind, name, output } => {
            let kinds: Vec<&str> = match kind {
                KindArg::One(k) => vec![k],
                KindArg::All if name.is_some() => {
                    return Err(CtlError::Usage("get all takes no NAME".into()))
                }
                KindArg::All => proto::KINDS.to_vec(),
            };
            let cp = connect()?;
            let name = name.unwrap_or_default();
            let mut found = Vec::new();
            for kind in &kinds {
                let req = proto::GetRequest {
                    kind: kind.to_string(),
                    name: name.clone(),
                };
                let mut rs =
                    block_on(cp.call(Request::ReadOnly, async |mut c| c.get(req.clone()).await))?
                        .resources;
                if !name.is_empty() && rs.is_empty() {
                    return Err(CtlError::Refused(tonic::Status::not_found(format!(
                        "{} not found",
                        object_name(kind, &name)
                    ))));
                }
                rs.iter_mut().for_each(blank_password);
                found.push((*kind, rs));
            }
            render_get(&found, kind == KindArg::All, output, out);
            Ok(())
        }
        Command::Delete { kind, name } => {
            let cp = connect()?;
            let req = proto::DeleteRequest {
                kind: kind.to_string(),
                name: name.clone(),
            };
            let resp =
                block_on(cp.call(Request::Change, async |mut c| c.delete(req.clone()).await))?;
            let obj = object_name(kind, &name);
            if !resp.deleted {
                return Err(CtlError::Refused(tonic::Status::not_found(format!(
                    "{obj} not found"
                ))));
            }
            out.line(format!("{obj} deleted"));
            Ok(())
        }
        Command::Nodes { output } => {
            let cp = connect()?;
            let resp = block_on(cp.call(Request::ReadOnly, async |mut c| {
                c.list_nodes(proto::ListNodesRequest {}).await
            }))?;
            match output {
                NodesFormat::Table => out.stdout.push_str(&table::nodes(&resp, unix_ms())),
                NodesFormat::Json => out.line(nodes_json(&resp)),
            }
            Ok(())
        }
        Command::Audit {
            command:
                AuditCommand::Search {
                    identity,
                    connection,
                    session,
                    kind,
                    decision,
                    node,
                    since,
                    until,
                    limit,
                    output,
                },
        } => {
            let flags = audit::SearchFlags {
                identity,
                connection,
                session,
                kind,
                decision,
                node,
                since,
                until,
                limit,
            };
            let req = audit::search_request(&flags, audit::now_nanos())?;
            let cp = connect()?;
            let resp = block_on(audit::run_search(&cp, req))?;
            audit::render_search(&resp, output, out);
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { node, output },
        } => {
            let cp = connect()?;
            let resp = block_on(audit::run_verify(&cp, node))?;
            audit::render_verify(&resp, output, out)
        }
        Command::Session {
            command:
                SessionCommand::Replay {
                    id,
                    evaluate,
                    output,
                },
        } => {
            let cp = connect()?;
            let resp = block_on(audit::run_replay(&cp, &id, evaluate))?;
            match output {
                audit::Format::Table => out.stdout.push_str(&audit::replay_text(&id, &resp)),
                audit::Format::Json => out.line(audit::replay_json(&id, &resp)),
            }
            Ok(())
        }
        Command::Evidence {
            from,
            to,
            out: dir,
            samples,
        } => {
            let now = audit::now_nanos();
            let from = audit::parse_time("--from", &from, now)?;
            let to = audit::parse_time("--to", &to, now)?;
            if to <= from {
                return Err(CtlError::Usage(format!(
                    "--to ({}) must be after --from ({})",
                    audit::format_time(to),
                    audit::format_time(from)
                )));
            }
            let cp = connect()?;
            let req = proto::EvidenceRequest {
                from_unix_nanos: from,
                to_unix_nanos: to,
                samples,
            };
            let (md, js, resp) = block_on(evidence::run(&cp, req, &dir))?;
            out.line(format!(
                "wrote {} and {}: {} records, audit chain {}",
                md.display(),
                js.display(),
                resp.records,
                evidence::chain_status(&resp)
            ));
            if resp
                .verification
                .as_ref()
                .is_some_and(|v| !v.findings.is_empty())
            {
                out.stderr.push_str(
                    "warning: the audit chain has findings (see AU-9; `sluicectl audit verify` lists them)\n",
                );
            }
            Ok(())
        }
        Command::Version => {
            out.line(format!("client: sluicectl {}", env!("CARGO_PKG_VERSION")));
            let cp = connect()?;
            let v = block_on(cp.call(Request::ReadOnly, async |mut c| {
                c.version(proto::VersionRequest {}).await
            }))?;
            out.line(format!(
                "server: sluice-cp {}, store {}, snapshot version {}",
                v.build, v.store, v.snapshot_version
            ));
            Ok(())
        }
    }
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T, CtlError>>) -> Result<T, CtlError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Input(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn blank_password(r: &mut Resource) {
    if let Some(Spec::Connection(c)) = &mut r.spec {
        c.password.clear();
    }
}

/// Read and check every document named by `-f` arguments (`stdin` for `-`).
pub fn load(files: &[String], stdin: &mut dyn Read) -> Result<Vec<Resource>, CtlError> {
    let mut resources = Vec::new();
    let mut stdin_read = false;
    for f in files {
        for (source, text) in read_input(f, stdin, &mut stdin_read)? {
            let rs = crate::resources::parse_documents(&text, &source)
                .map_err(|e| CtlError::Input(e.to_string()))?;
            resources.extend(rs);
        }
    }
    if resources.is_empty() {
        return Err(CtlError::Input(format!(
            "no documents in {}",
            files.join(", ")
        )));
    }
    check_set(&resources)?;
    Ok(resources)
}

fn read_input(
    arg: &str,
    stdin: &mut dyn Read,
    stdin_read: &mut bool,
) -> Result<Vec<(String, String)>, CtlError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| CtlError::Input(format!("{}: {e}", p.display())))
    };
    if arg == "-" {
        if std::mem::replace(stdin_read, true) {
            return Err(CtlError::Usage("-f - given twice".into()));
        }
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Input(format!("stdin: {e}")))?;
        return Ok(vec![("stdin".into(), text)]);
    }
    let path = Path::new(arg);
    let meta = std::fs::metadata(path).map_err(|e| CtlError::Input(format!("{arg}: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![(arg.to_string(), read(path)?)]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| CtlError::Input(format!("{arg}: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    if files.is_empty() {
        return Err(CtlError::Input(format!("{arg}: no *.yaml or *.yml files")));
    }
    files.sort();
    files
        .into_iter()
        .map(|p| Ok((p.display().to_string(), read(&p)?)))
        .collect()
}

/// Checks over the documents of one `apply` that need no server: each
/// resource once, and no identity with two API keys. References to
/// resources (a Policy naming a Connection) may point at what the control
/// plane already has, so the control plane checks those.
fn check_set(resources: &[Resource]) -> Result<(), CtlError> {
    let mut seen = std::collections::HashSet::new();
    for r in resources {
        if !seen.insert((r.kind.as_str(), r.name.as_str())) {
            return Err(CtlError::Input(format!(
                "{} {}: given more than once",
                r.kind, r.name
            )));
        }
    }
    // API keys reference nothing, so `validate_set` over them alone is
    // exactly the duplicate-identity check.
    let keys: Vec<Resource> = resources
        .iter()
        .filter(|r| r.kind == "ApiKey")
        .cloned()
        .collect();
    crate::resources::validate_set(&keys).map_err(|e| CtlError::Input(e.to_string()))
}

fn render_apply(resp: &proto::ApplyResponse, dry_run: bool, format: ApplyFormat, out: &mut Output) {
    match format {
        ApplyFormat::Json => {
            let results: Vec<serde_json::Value> = resp
                .results
                .iter()
                .map(|r| {
                    let mut v = serde_json::json!({
                        "kind": r.kind, "name": r.name, "action": r.action,
                    });
                    if !r.api_key.is_empty() {
                        v["apiKey"] = r.api_key.clone().into();
                    }
                    v
                })
                .collect();
            let doc = serde_json::json!({
                "version": resp.version, "dryRun": dry_run, "results": results,
            });
            out.line(serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        ApplyFormat::Text => {
            let suffix = if dry_run { " (dry run)" } else { "" };
            for r in &resp.results {
                out.line(format!(
                    "{} {}{suffix}",
                    object_name(&r.kind, &r.name),
                    r.action
                ));
                if !r.api_key.is_empty() {
                    out.line(format!(
                        "  key: {}  (shown once: it cannot be retrieved again; store it now)",
                        r.api_key
                    ));
                }
            }
        }
    }
}

fn render_get(found: &[(&str, Vec<Resource>)], all: bool, format: GetFormat, out: &mut Output) {
    let everything: Vec<Resource> = found.iter().flat_map(|(_, rs)| rs.clone()).collect();
    match format {
        GetFormat::Yaml => out.stdout.push_str(&document::to_yaml_stream(&everything)),
        GetFormat::Json => out.line(document::to_json_array(&everything)),
        GetFormat::Table => {
            let mut tables = Vec::new();
            for (kind, rs) in found.iter().filter(|(_, rs)| !rs.is_empty()) {
                let mut rs = rs.clone();
                if all {
                    rs.iter_mut()
                        .for_each(|r| r.name = object_name(kind, &r.name));
                }
                tables.push(table::resources(kind, &rs));
            }
            if tables.is_empty() {
                let what = match found {
                    [(kind, _)] => format!("{} resources", kind),
                    _ => "resources".into(),
                };
                out.stderr.push_str(&format!("no {what} found\n"));
            }
            out.stdout.push_str(&tables.join("\n"));
        }
    }
}

fn nodes_json(resp: &proto::ListNodesResponse) -> String {
    let nodes: Vec<serde_json::Value> = resp
        .nodes
        .iter()
        .map(|n| {
            let node = n.node.clone().unwrap_or_default();
            serde_json::json!({
                "id": node.id,
                "address": node.address,
                "cores": node.cores,
                "build": node.build,
                "appliedVersion": n.applied_version,
                "latestVersion": n.latest_version.max(resp.latest_version),
                "lastError": n.last_error,
                "lastHeartbeatUnixMs": n.last_heartbeat_unix_ms,
                "tlsCertNotAfter": node.tls_cert_not_after,
                "crlNextUpdate": node.crl_next_update,
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "latestVersion": resp.latest_version,
        "nodes": nodes,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_grpc_status() {
        assert_eq!(exit_code_for(Code::Ok), 0);
        for c in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Aborted,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
        ] {
            assert_eq!(exit_code_for(c), 1, "{c:?}");
        }
        assert_eq!(exit_code_for(Code::Unavailable), 3);
        assert_eq!(exit_code_for(Code::DeadlineExceeded), 3);
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CtlError::Input("x".into()).exit_code(), 2);
        assert_eq!(CtlError::Unreachable("x".into()).exit_code(), 3);
        assert_eq!(CtlError::TimedOut("x".into()).exit_code(), 3);
        assert_eq!(CtlError::Interrupted("x".into()).exit_code(), 3);
        let e = CtlError::Refused(tonic::Status::failed_precondition(
            "Policy p: spec.connections[0]: no Connection named `billing`",
        ));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "Policy p: spec.connections[0]: no Connection named `billing`"
        );
    }

    #[test]
    fn command_line_parses() {
        let cli = Cli::try_parse_from([
            "sluicectl",
            "get",
            "Conn",
            "orders",
            "-o",
            "yaml",
            "--control-plane",
            "http://a:1,http://b:2",
        ])
        .unwrap();
        assert_eq!(cli.control_plane, "http://a:1,http://b:2");
        assert!(matches!(
            cli.command,
            Command::Get { kind: KindArg::One("Connection"), name: Some(ref n), output: GetFormat::Yaml } if n == "orders"
        ));
        let cli = Cli::try_parse_from(["sluicectl", "get", "ALL"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Get {
                kind: KindArg::All,
                ..
            }
        ));
        let e = Cli::try_parse_from(["sluicectl", "get", "widgets"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("idp"), "{e}");
        assert!(Cli::try_parse_from(["sluicectl", "delete", "all", "x"]).is_err());
        assert!(Cli::try_parse_from(["sluicectl", "apply"]).is_err());
        let cli = Cli::try_parse_from([
            "sluicectl",
            "apply",
            "-f",
            "a.yaml",
            "--file",
            "-",
            "--dry-run",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Apply { ref files, dry_run: true, .. } if files == &["a.yaml", "-"])
        );
    }

    const CONN: &str = "apiVersion: sluice.dev/v1\nkind: Connection\nmetadata: {name: orders}\nspec: {host: db, database: orders, user: gw}\n";

    #[test]
    fn load_reads_files_directories_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("b.yml"), CONN.replace("orders", "billing")).unwrap();
        std::fs::write(d.join("a.yaml"), CONN).unwrap();
        std::fs::write(d.join("notes.txt"), "not yaml").unwrap();
        let stdin = CONN.replace("orders", "stdin-conn");
        let rs = load(
            &[d.display().to_string(), "-".into()],
            &mut stdin.as_bytes(),
        )
        .unwrap();
        let names: Vec<&str> = rs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["orders", "billing", "stdin-conn"]);

        // Errors name the file, document and field.
        std::fs::write(
            d.join("c.yaml"),
            CONN.replace("user: gw", "user: gw, port: x"),
        )
        .unwrap();
        let e = load(&[d.display().to_string()], &mut std::io::empty()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.contains("c.yaml doc 1 (Connection orders): spec.port"),
            "{text}"
        );

        let e = load(
            &[d.join("missing.yaml").display().to_string()],
            &mut std::io::empty(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = load(&["-".into()], &mut std::io::empty()).unwrap_err();
        assert!(e.to_string().contains("no documents"), "{e}");
        let e = load(&["-".into(), "-".into()], &mut "".as_bytes()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn set_checks_need_no_server() {
        let twice = format!("{CONN}---\n{CONN}");
        let e = load(&["-".into()], &mut twice.as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .contains("Connection orders: given more than once"),
            "{e}"
        );
        let keys = "apiVersion: sluice.dev/v1\nkind: ApiKey\nmetadata: {name: k1}\nspec: {identity: a}\n---\napiVersion: sluice.dev/v1\nkind: ApiKey\nmetadata: {name: k2}\nspec: {identity: a}\n";
        let e = load(&["-".into()], &mut keys.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("already has an API key"), "{e}");
        // A reference to a Connection the server may have is not refused here.
        let policy = "apiVersion: sluice.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {connections: [elsewhere], identities: [a]}\n";
        assert_eq!(
            load(&["-".into()], &mut policy.as_bytes()).unwrap().len(),
            1
        );
    }

    #[test]
    fn apply_prints_results_and_keys_once() {
        let resp = proto::ApplyResponse {
            version: 7,
            results: vec![
                proto::ApplyResult {
                    kind: "Connection".into(),
                    name: "orders".into(),
                    action: "unchanged".into(),
                    api_key: String::new(),
                },
                proto::ApplyResult {
                    kind: "ApiKey".into(),
                    name: "agent-1".into(),
                    action: "created".into(),
                    api_key: "sk_abc".into(),
                },
            ],
        };
        let mut out = Output::default();
        render_apply(&resp, false, ApplyFormat::Text, &mut out);
        assert_eq!(
            out.stdout,
            "connection/orders unchanged\napikey/agent-1 created\n  key: sk_abc  (shown once: it cannot be retrieved again; store it now)\n"
        );
        let mut out = Output::default();
        render_apply(&resp, true, ApplyFormat::Json, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["version"], 7);
        assert_eq!(v["dryRun"], true);
        assert_eq!(v["results"][1]["apiKey"], "sk_abc");
        assert!(v["results"][0].get("apiKey").is_none());
    }

    #[test]
    fn get_renders_tables_yaml_and_json() {
        let rs = crate::resources::parse_documents(
            &CONN.replace("user: gw", "user: gw, password: pw"),
            "t",
        )
        .unwrap();
        let mut blanked = rs.clone();
        blanked.iter_mut().for_each(blank_password);

        let mut out = Output::default();
        render_get(
            &[("Connection", blanked.clone())],
            false,
            GetFormat::Yaml,
            &mut out,
        );
        assert!(!out.stdout.contains("password"), "{}", out.stdout);
        let back = crate::resources::parse_documents(&out.stdout, "stdin").unwrap();
        assert_eq!(back, blanked);

        let mut out = Output::default();
        render_get(
            &[("Connection", blanked.clone()), ("Policy", vec![])],
            true,
            GetFormat::Table,
            &mut out,
        );
        assert!(
            out.stdout.contains("\nconnection/orders   db"),
            "{}",
            out.stdout
        );
        assert!(out.stderr.is_empty());

        let mut out = Output::default();
        render_get(&[("Policy", vec![])], false, GetFormat::Table, &mut out);
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr, "no Policy resources found\n");

        let mut out = Output::default();
        render_get(&[("Policy", vec![])], false, GetFormat::Json, &mut out);
        assert_eq!(out.stdout, "[]\n");
    }

    #[test]
    fn nodes_json_has_every_field() {
        let resp = proto::ListNodesResponse {
            latest_version: 5,
            nodes: vec![proto::NodeStatus {
                node: Some(proto::Node {
                    id: "dp-1".into(),
                    address: "a:1".into(),
                    cores: 2,
                    build: "0.1.0".into(),
                    tls_cert_not_after: 1_800_000_000,
                    crl_next_update: 0,
                }),
                applied_version: 4,
                latest_version: 5,
                last_error: "bad snapshot".into(),
                last_heartbeat_unix_ms: 123,
            }],
        };
        let v: serde_json::Value = serde_json::from_str(&nodes_json(&resp)).unwrap();
        assert_eq!(v["latestVersion"], 5);
        assert_eq!(v["nodes"][0]["appliedVersion"], 4);
        assert_eq!(v["nodes"][0]["lastError"], "bad snapshot");
        assert_eq!(v["nodes"][0]["lastHeartbeatUnixMs"], 123);
        assert_eq!(v["nodes"][0]["tlsCertNotAfter"], 1_800_000_000);
        assert_eq!(v["nodes"][0]["crlNextUpdate"], 0);
    }
}
