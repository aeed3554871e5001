//! `sluicectl certs`: a CA and the certificates for mTLS between data
//! planes, `sluicectl` and the control plane (rcgen, ECDSA P-256).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::CtlError;

/// Names every control-plane certificate is valid for.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Common names of the client certificates.
pub const NODE_CN: &str = "sluice-node";
pub const ADMIN_CN: &str = "sluice-admin";

/// What `certs` writes.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// Extra names or addresses of the control plane.
    pub hosts: Vec<String>,
    pub days: u32,
    /// Replace an existing CA.
    pub force: bool,
    /// Also issue `node-<name>` certificates (CN `sluice-node:<name>`),
    /// valid only for that node id; with an existing CA in `dir`, issue
    /// only those.
    pub nodes: Vec<String>,
}

fn local(e: impl std::fmt::Display) -> CtlError {
    CtlError::Input(e.to_string())
}

/// Generate and write `ca`, `control-plane`, `node` and `admin` `.pem` and
/// `.key` files (keys mode 0600, the directory 0700 when created); return
/// what to tell the operator.
pub fn write(o: &Options) -> Result<String, CtlError> {
    if o.days == 0 {
        return Err(CtlError::Usage("--days must be at least 1".into()));
    }
    for n in &o.nodes {
        crate::audit::sink::validate_node_id(n)
            .map_err(|e| CtlError::Usage(format!("--node {n}: {e}")))?;
    }
    let have_ca = ["ca.pem", "ca.key"].iter().any(|f| o.dir.join(f).exists());
    if have_ca && !o.force {
        if !o.nodes.is_empty() {
            if let Some(h) = o.hosts.first() {
                return Err(CtlError::Usage(format!(
                    "--host {h}: {} holds a CA, so only --node certificates are issued from it and the control-plane certificate keeps its names; leave --host out, or pass --force to replace the CA (every certificate it signed must then be reissued)",
                    o.dir.display()
                )));
            }
            return issue_nodes(o);
        }
        return Err(CtlError::Input(format!(
            "{} exists; pass --force to replace the CA (every certificate it signed must then be reissued), or --node NAME to issue node certificates from it",
            o.dir.join("ca.pem").display()
        )));
    }
    let validity = Validity::days(o.days);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(local)?;
    let mut ca = validity.params("Sluice CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(local)?;
    let issuer = Issuer {
        cert: &ca_cert,
        key: &ca_key,
    };
    let leaf = |cn: &str, usage: ExtendedKeyUsagePurpose, sans: &[String]| {
        issuer.leaf(&validity, cn, usage, sans)
    };

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for h in &o.hosts {
        if h.parse::<std::net::IpAddr>().is_err() && !valid_dns_name(h) {
            return Err(CtlError::Usage(format!(
                "--host {h}: not a DNS name or IP address"
            )));
        }
        if !sans.contains(h) {
            sans.push(h.clone());
        }
    }
    let server = leaf(
        "sluice-control-plane",
        ExtendedKeyUsagePurpose::ServerAuth,
        &sans,
    )?;
    let node = leaf(NODE_CN, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
    let admin = leaf(ADMIN_CN, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
    let mut named = Vec::new();
    for n in &o.nodes {
        named.push((
            format!("node-{n}"),
            leaf(
                &format!("{NODE_CN}:{n}"),
                ExtendedKeyUsagePurpose::ClientAuth,
                &[],
            )?,
        ));
    }

    // Everything is generated before the first file is touched.
    create_dir(&o.dir)?;
    for (name, (pem, key)) in [
        ("ca".to_string(), (ca_cert.pem(), ca_key.serialize_pem())),
        ("control-plane".into(), server),
        ("node".into(), node),
        ("admin".into(), admin),
    ]
    .into_iter()
    .chain(named)
    {
        write_file(&o.dir.join(format!("{name}.pem")), &pem, 0o644)?;
        write_file(&o.dir.join(format!("{name}.key")), &key, 0o600)?;
    }
    Ok(report(o, &sans, validity.not_after))
}

/// When certificates issued now are valid: from five minutes ago (clock
/// skew) for `days` days.
struct Validity {
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
}

impl Validity {
    fn days(days: u32) -> Validity {
        let now = time::OffsetDateTime::now_utc();
        Validity {
            not_before: now - time::Duration::minutes(5),
            not_after: now + time::Duration::days(i64::from(days)),
        }
    }

    /// Parameters for a certificate with common name `cn`.
    fn params(&self, cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p
    }
}

/// The CA that signs the leaf certificates.
struct Issuer<'a> {
    cert: &'a rcgen::Certificate,
    key: &'a KeyPair,
}

impl Issuer<'_> {
    /// A new key and a certificate for it: common name `cn`, one extended
    /// key usage, the given DNS names and IP addresses. (PEM, key PEM.)
    fn leaf(
        &self,
        validity: &Validity,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
        sans: &[String],
    ) -> Result<(String, String), CtlError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(local)?;
        let mut p = validity.params(cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        for s in sans {
            p.subject_alt_names
                .push(match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(s.clone().try_into().map_err(local)?),
                });
        }
        let cert = p.signed_by(&key, self.cert, self.key).map_err(local)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Issue `node-<name>` certificates from the CA already in `o.dir`.
fn issue_nodes(o: &Options) -> Result<String, CtlError> {
    let read = |f: &str| {
        std::fs::read_to_string(o.dir.join(f))
            .map_err(|e| CtlError::Input(format!("{}: {e}", o.dir.join(f).display())))
    };
    let ca_key =
        KeyPair::from_pem(&read("ca.key")?).map_err(|e| CtlError::Input(format!("ca.key: {e}")))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&read("ca.pem")?)
        .map_err(|e| CtlError::Input(format!("ca.pem: {e}")))?;
    // The issuer as rcgen needs it: the same name and key as ca.pem.
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| CtlError::Input(format!("ca.pem and ca.key do not go together: {e}")))?;
    let validity = Validity::days(o.days);
    let issuer = Issuer {
        cert: &ca_cert,
        key: &ca_key,
    };
    let mut out = Vec::new();
    for n in &o.nodes {
        let cn = format!("{NODE_CN}:{n}");
        let (pem, key) = issuer.leaf(&validity, &cn, ExtendedKeyUsagePurpose::ClientAuth, &[])?;
        out.push((n, pem, key));
    }
    let mut text = format!(
        "issued from {}/ca.pem (valid {} days, until {}):\n",
        o.dir.display(),
        o.days,
        validity.not_after.date()
    );
    for (n, pem, key) in out {
        write_file(&o.dir.join(format!("node-{n}.pem")), &pem, 0o644)?;
        write_file(&o.dir.join(format!("node-{n}.key")), &key, 0o600)?;
        text.push_str(&named_line(n));
    }
    Ok(text)
}

fn named_line(n: &str) -> String {
    format!("  node-{n}.pem node-{n}.key  client certificate valid only as node {n} (clientAuth, CN {NODE_CN}:{n})\n")
}

/// Letters, digits and inner hyphens in dot-separated labels of 1-63
/// characters, at most 253 in all; the first label may be `*`.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            (i == 0 && label == "*")
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        })
}

fn create_dir(dir: &Path) -> Result<(), CtlError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CtlError::Input(format!("{}: {e}", dir.display())))
}

/// Replace `path` with a new file created with `mode` (an existing file's
/// looser mode is not inherited).
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CtlError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| CtlError::Input(format!("{}: {e}", path.display()));
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

fn report(o: &Options, sans: &[String], not_after: time::OffsetDateTime) -> String {
    let d = o.dir.display();
    let host = o.hosts.first().map(String::as_str).unwrap_or("localhost");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!(
        "wrote {d}/ (valid {days} days, until {until}):\n\
         \x20 ca.pem ca.key                        CA; keep ca.key offline, it can sign anything below\n\
         \x20 control-plane.pem control-plane.key  sluice-cp server certificate (serverAuth) for {sans}\n\
         \x20 node.pem node.key                    data-plane client certificate (clientAuth, CN {NODE_CN})\n\
         \x20 admin.pem admin.key                  sluicectl client certificate (clientAuth, CN {ADMIN_CN})\n\
         {named}\
         use:\n\
         \x20 sluice-cp   serves with control-plane.pem/.key and requires client certificates signed by ca.pem\n\
         \x20 sluice-dp   connects with node.pem/.key and trusts ca.pem\n\
         \x20 sluicectl --control-plane https://{host}:7600 --ca {d}/ca.pem --cert {d}/admin.pem --key {d}/admin.key …\n\
         \x20   or export SLUICE_CONTROL_PLANE=https://{host}:7600 SLUICE_CA={d}/ca.pem SLUICE_CERT={d}/admin.pem SLUICE_KEY={d}/admin.key\n",
        days = o.days,
        until = not_after.date(),
        sans = sans.join(", "),
        named = o.nodes.iter().map(|n| named_line(n)).collect::<String>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in [
            "localhost",
            "cp.example.com",
            "*.sluice.internal",
            "a-b.c",
            "x.",
        ] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "bad host",
            "a..b",
            "-a.b",
            "a-.b",
            "a.*",
            "ü.de",
            &"a".repeat(64),
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn bad_host_and_days_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Options {
            dir: dir.path().join("c"),
            hosts: vec!["bad host!".into()],
            days: 30,
            force: false,
            nodes: vec![],
        };
        let e = write(&o).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("bad host!"), "{e}");
        assert!(
            !o.dir.exists(),
            "nothing written before everything is generated"
        );
        o.hosts.clear();
        o.days = 0;
        assert_eq!(write(&o).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn writes_eight_files_and_refuses_to_replace_the_ca() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut o = Options {
            dir: dir.path().join("certs"),
            hosts: vec!["cp.example.com".into(), "10.0.0.9".into(), "::1".into()],
            days: 10,
            force: false,
            nodes: vec![],
        };
        let text = write(&o).unwrap();
        assert!(
            text.contains("localhost, 127.0.0.1, ::1, cp.example.com, 10.0.0.9"),
            "{text}"
        );
        assert!(text.contains("https://cp.example.com:7600"), "{text}");
        for name in ["ca", "control-plane", "node", "admin"] {
            let pem = std::fs::read_to_string(o.dir.join(format!("{name}.pem"))).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
            let key = o.dir.join(format!("{name}.key"));
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}.key");
        }
        let ca = std::fs::read(o.dir.join("ca.pem")).unwrap();
        let e = write(&o).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read(o.dir.join("ca.pem")).unwrap(), ca);
        o.force = true;
        write(&o).unwrap();
        assert_ne!(std::fs::read(o.dir.join("ca.pem")).unwrap(), ca);
    }

    /// With a CA already in the directory only `--node` certificates are
    /// issued: a `--host` there would be dropped without a word (the
    /// control-plane certificate keeps its old names), so it is refused.
    #[test]
    fn host_with_an_existing_ca_is_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Options {
            dir: dir.path().join("pki"),
            hosts: vec!["cp.internal".into()],
            days: 10,
            force: false,
            nodes: vec!["dp-1".into()],
        };
        write(&o).unwrap();
        let server = std::fs::read(o.dir.join("control-plane.pem")).unwrap();
        o.hosts = vec!["cp2.internal".into()];
        o.nodes = vec!["dp-2".into()];
        let e = write(&o).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--host"), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(!o.dir.join("node-dp-2.pem").exists());
        assert_eq!(
            std::fs::read(o.dir.join("control-plane.pem")).unwrap(),
            server
        );
        o.hosts.clear();
        assert!(write(&o).unwrap().contains("node-dp-2.pem"));
    }
}
