//! The throwaway cluster's PKI, made in-process with `rcgen`: a CA, the API server's
//! serving certificate, client certificates for the admin and the control-plane
//! components, and the ServiceAccount token signing key pair.
//!
//! Everything is X.509 v3 with extensions, because rustls (and so kube-rs) rejects v1
//! certificates with `UnsupportedCertVersion`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{HarnessError, Result};

/// The first address of `10.96.0.0/16`: the `kubernetes` Service's ClusterIP, which
/// in-cluster clients dial and which the serving certificate must therefore name.
pub(crate) const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub(crate) struct CertAndKey {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// The PEM files the components read, after [`Pki::write`].
#[derive(Debug, Clone)]
pub(crate) struct PkiFiles {
    pub(crate) ca_cert: PathBuf,
    pub(crate) serving_cert: PathBuf,
    pub(crate) serving_key: PathBuf,
    pub(crate) sa_private_key: PathBuf,
    pub(crate) sa_public_key: PathBuf,
}

/// All certificates and keys of one cluster.
#[derive(Debug)]
pub(crate) struct Pki {
    pub(crate) ca_cert_pem: String,
    pub(crate) serving: CertAndKey,
    pub(crate) admin: CertAndKey,
    pub(crate) controller_manager: CertAndKey,
    pub(crate) scheduler: CertAndKey,
    pub(crate) sa_private_key_pem: String,
    pub(crate) sa_public_key_pem: String,
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> HarnessError + '_ {
    move |source| HarnessError::Certificate {
        what: what.to_owned(),
        source,
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn leaf_params(common_name: &str, organization: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, organization);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    organization: Option<&str>,
) -> Result<CertAndKey> {
    let key = KeyPair::generate().map_err(cert_err(common_name))?;
    let mut params = leaf_params(common_name, organization);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, issuer)
        .map_err(cert_err(common_name))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Pki {
    /// Makes a new CA and everything signed by it. `advertise_address` is the API
    /// server's advertised (non-loopback) address, named in the serving certificate.
    pub(crate) fn generate(advertise_address: IpAddr) -> Result<Self> {
        let ca_key = KeyPair::generate().map_err(cert_err("the CA key"))?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("deployctl-test-ca", Some("deployctl"));
        ca_params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        ca_params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(cert_err("the CA certificate"))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate().map_err(cert_err("the serving key"))?;
        let mut serving_params = leaf_params("kube-apiserver", None);
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut sans = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(advertise_address),
            SanType::IpAddress(IpAddr::V4(KUBERNETES_SERVICE_IP)),
        ];
        for dns in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            sans.push(SanType::DnsName(
                dns.try_into().map_err(cert_err("a DNS name"))?,
            ));
        }
        serving_params.subject_alt_names = sans;
        let serving_cert = serving_params
            .signed_by(&serving_key, &issuer)
            .map_err(cert_err("the serving certificate"))?;

        let sa_key = KeyPair::generate().map_err(cert_err("the ServiceAccount signing key"))?;

        Ok(Self {
            ca_cert_pem: ca_cert.pem(),
            serving: CertAndKey {
                cert_pem: serving_cert.pem(),
                key_pem: serving_key.serialize_pem(),
            },
            admin: client_cert(&issuer, "deployctl-admin", Some("system:masters"))?,
            // The bootstrap RBAC policy binds these user names to the components' roles,
            // so the components run with their real permissions, not as superusers.
            controller_manager: client_cert(&issuer, "system:kube-controller-manager", None)?,
            scheduler: client_cert(&issuer, "system:kube-scheduler", None)?,
            sa_private_key_pem: sa_key.serialize_pem(),
            sa_public_key_pem: sa_key.public_key_pem(),
        })
    }

    /// Writes the files the components read into `dir` (private keys mode 0600).
    pub(crate) fn write(&self, dir: &Path) -> Result<PkiFiles> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        let files = PkiFiles {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            sa_private_key: dir.join("sa.key"),
            sa_public_key: dir.join("sa.pub"),
        };
        write_file(&files.ca_cert, &self.ca_cert_pem, 0o644)?;
        write_file(&files.serving_cert, &self.serving.cert_pem, 0o644)?;
        write_file(&files.serving_key, &self.serving.key_pem, 0o600)?;
        write_file(&files.sa_private_key, &self.sa_private_key_pem, 0o600)?;
        write_file(&files.sa_public_key, &self.sa_public_key_pem, 0o644)?;
        Ok(files)
    }
}

/// Writes `contents` to `path` with `mode`.
pub(crate) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_pem_and_distinct() {
        let pki = Pki::generate(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).expect("pki");
        for pem in [
            &pki.ca_cert_pem,
            &pki.serving.cert_pem,
            &pki.admin.cert_pem,
            &pki.scheduler.cert_pem,
        ] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        assert!(pki.admin.key_pem.contains("PRIVATE KEY"));
        assert!(pki.sa_public_key_pem.contains("PUBLIC KEY"));
        assert_ne!(pki.admin.cert_pem, pki.controller_manager.cert_pem);
    }

    #[test]
    fn files_are_written_with_private_keys_private() {
        use std::os::unix::fs::PermissionsExt;
        let pki = Pki::generate(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))).expect("pki");
        let dir = tempfile::tempdir().expect("temp dir");
        let files = pki.write(dir.path()).expect("write");
        let mode = std::fs::metadata(&files.serving_key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "serving key mode {mode:o}");
        assert!(files.ca_cert.exists() && files.sa_public_key.exists());
    }
}
