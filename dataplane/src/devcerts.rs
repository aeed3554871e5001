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
