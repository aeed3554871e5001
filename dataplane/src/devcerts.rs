//! `sluice-dp dev-certs`: a throwaway CA and server certificate for local
//! use and tests. Not for production.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// Write `ca.pem`, `ca.key`, `server.pem`, `server.key` into `dir`, and
/// for each of `clients` a client certificate signed by the same CA,
/// `client-<n>.pem`/`client-<n>.key` (n = 1, 2, …): a `spiffe://…` name as
/// its URI SAN (and the last path segment as its common name), anything
/// else as its common name. Returns the client files written.
pub fn write(dir: &Path, hosts: &[String], clients: &[String]) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Sluice development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("localhost"),
    );
    for h in hosts {
        match h.parse::<std::net::IpAddr>() {
            Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
            Err(_) => p
                .subject_alt_names
                .push(SanType::DnsName(h.clone().try_into()?)),
        }
    }
    let cert = p.signed_by(&key, &ca_cert, &ca_key)?;

    write_file(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write_file(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    // An empty revocation list of the new CA (`--revoke` adds to it).
    write_file(&dir.join("ca.crl"), &crl(&ca_cert, &ca_key, 1, &[])?, false)?;
    write_file(&dir.join("server.pem"), &cert.pem(), false)?;
    write_file(&dir.join("server.key"), &key.serialize_pem(), true)?;

    let mut written = Vec::new();
    for (i, name) in clients.iter().enumerate() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let cn = match name.strip_prefix("spiffe://") {
            Some(path) => {
                p.subject_alt_names
                    .push(SanType::URI(name.clone().try_into()?));
                path.rsplit('/').next().unwrap_or(path).to_string()
            }
            None => name.clone(),
        };
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        let stem = format!("client-{}", i + 1);
        write_file(&dir.join(format!("{stem}.pem")), &cert.pem(), false)?;
        write_file(&dir.join(format!("{stem}.key")), &key.serialize_pem(), true)?;
        written.push(format!("{stem}.pem ({name})"));
    }
    Ok(written)
}

/// Add the client certificates `certs` (PEM files this CA issued) to
/// `dir/ca.crl`, a new list numbered one past the one there (if any), which
/// keeps what it revoked. Returns how many the new list revokes.
pub fn revoke(dir: &Path, certs: &[std::path::PathBuf]) -> anyhow::Result<usize> {
    use anyhow::Context;
    use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let ca_pem = read(&dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?).context("ca.key")?;
    // (The CA as rcgen signs with it: its name and key, which is what the
    // list's issuer and signature are made of.)
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)
        .context("ca.pem")?
        .self_signed(&ca_key)?;
    let der = |pem: &str, what: &str| -> anyhow::Result<Vec<u8>> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("{what}: not PEM: {e}"))?;
        Ok(p.contents)
    };
    let ca_der = der(&ca_pem, "ca.pem")?;
    let (_, ca_x509) = X509Certificate::from_der(&ca_der).context("ca.pem")?;
    let mut serials: Vec<Vec<u8>> = Vec::new();
    let mut number = 1u64;
    let crl_path = dir.join("ca.crl");
    if crl_path.exists() {
        let d = der(&read(&crl_path)?, "ca.crl")?;
        let (_, old) = CertificateRevocationList::from_der(&d).context("ca.crl")?;
        number = old
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
            + 1;
        serials.extend(
            old.iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec()),
        );
    }
    for p in certs {
        let d = der(&read(p)?, &p.display().to_string())?;
        let (_, c) = X509Certificate::from_der(&d).with_context(|| p.display().to_string())?;
        anyhow::ensure!(
            c.issuer().as_raw() == ca_x509.subject().as_raw(),
            "{}: not issued by {}/ca.pem",
            p.display(),
            dir.display()
        );
        let s = c.raw_serial().to_vec();
        if !serials.contains(&s) {
            serials.push(s);
        }
    }
    let n = serials.len();
    write_file(&crl_path, &crl(&ca_cert, &ca_key, number, &serials)?, false)?;
    Ok(n)
}

/// A revocation list of `ca` numbered `number`, revoking the certificates
/// with serial numbers `serials` (DER integer contents), next update in a
/// week.
fn crl(
    ca: &rcgen::Certificate,
    key: &KeyPair,
    number: u64,
    serials: &[Vec<u8>],
) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    Ok(rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(7),
        crl_number: number.into(),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(s),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(ca, key)?
    .pem()?)
}

fn write_file(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if private {
        o.mode(0o600);
    }
    std::io::Write::write_all(&mut o.open(path)?, text.as_bytes())?;
    Ok(())
}
