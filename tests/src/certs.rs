//! Certificates made by the tests: a CA, a broker certificate, client certificates (one of
//! them expired), and a second CA nobody trusts. Everything is written as PEM into a temp dir
//! that lives as long as the [`Pki`] value.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The DNS name the broker certificate carries besides the IP address 127.0.0.1.
pub const BROKER_DNS_NAME: &str = "broker.csg.test";

/// A certificate and its key on disk.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// The test PKI.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA that signed everything below except `rogue_*`.
    pub ca: PathBuf,
    /// Broker: SAN `broker.csg.test` and IP 127.0.0.1.
    pub server: Pair,
    /// Broker: SAN `broker.csg.test` only (no IP): reached by IP it needs a name override.
    pub server_dns_only: Pair,
    /// Broker: like `server`, but it expired in 2021.
    pub server_expired: Pair,
    /// A valid client certificate.
    pub client: Pair,
    /// A client certificate that expired in 2021.
    pub client_expired: Pair,
    /// A CA that signed nothing here: trusting only it makes every certificate unknown.
    pub rogue_ca: PathBuf,
    /// A client certificate from the rogue CA.
    pub rogue_client: Pair,
}

fn make_ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("self-signed CA");
    Ca { cert, key }
}

fn leaf(
    ca: &Ca,
    cn: &str,
    sans: &[SanType],
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("leaf key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans.to_vec();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    if expired {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("sign leaf");
    (cert, key)
}

fn write_pair(dir: &Path, name: &str, (cert, key): (Certificate, KeyPair)) -> Pair {
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pair.cert, cert.pem()).expect("write cert");
    std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
    // As a deployment would have it (the agent warns about keys others can read).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pair.key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    pair
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = make_ca("csg test CA");
        let rogue = make_ca("csg rogue CA");
        let dns = SanType::DnsName(BROKER_DNS_NAME.try_into().expect("DNS name"));
        let ip = SanType::IpAddress("127.0.0.1".parse().expect("IP"));
        let server_usage = ExtendedKeyUsagePurpose::ServerAuth;
        let client_usage = ExtendedKeyUsagePurpose::ClientAuth;
        let pki = Pki {
            ca: d.join("ca.pem"),
            server: write_pair(
                d,
                "server",
                leaf(
                    &ca,
                    "broker",
                    &[dns.clone(), ip],
                    server_usage.clone(),
                    false,
                ),
            ),
            server_expired: write_pair(
                d,
                "server-expired",
                leaf(
                    &ca,
                    "broker",
                    &[
                        dns.clone(),
                        SanType::IpAddress("127.0.0.1".parse().expect("IP")),
                    ],
                    server_usage.clone(),
                    true,
                ),
            ),
            server_dns_only: write_pair(
                d,
                "server-dns-only",
                leaf(&ca, "broker", &[dns], server_usage, false),
            ),
            client: write_pair(
                d,
                "client",
                leaf(&ca, "gw", &[], client_usage.clone(), false),
            ),
            client_expired: write_pair(
                d,
                "client-expired",
                leaf(&ca, "gw-old", &[], client_usage.clone(), true),
            ),
            rogue_ca: d.join("rogue-ca.pem"),
            rogue_client: write_pair(
                d,
                "rogue-client",
                leaf(&rogue, "intruder", &[], client_usage, false),
            ),
            dir,
        };
        std::fs::write(&pki.ca, ca.cert.pem()).expect("write CA");
        std::fs::write(&pki.rogue_ca, rogue.cert.pem()).expect("write rogue CA");
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
