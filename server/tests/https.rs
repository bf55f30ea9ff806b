//! HTTPS and SIGHUP of the real `csg-consoled` binary: a throwaway CA made here (rcgen),
//! requests through `curl --cacert`, the certificate swapped on disk and reloaded with SIGHUP
//! while a connection stays open, a bad pair refused, the log filter reloaded.
//!
//! No broker is needed: the API answers whether or not the status ingest is connected (the
//! broker URL points at a closed loopback port; `/readyz` is not asked).

// A test file: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::consoled::{Consoled, Options};
use csg_e2e::broker::free_port;
use csg_e2e::process::{self, CmdOutput};
use csg_e2e::TIMEOUT;
use nix::sys::signal::Signal;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "csg throwaway CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A server certificate for 127.0.0.1 with this common name; (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca, cn: &str) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// Replaces a file as an operator's tooling would: a new file renamed over the old one.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Service {
    c: Consoled,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    port: u16,
}

impl Service {
    fn new(ca: &Ca, cert_pem: &str, key_pem: &str) -> Service {
        let c = Consoled::with(
            &format!("mqtt://127.0.0.1:{}", free_port()),
            Options {
                console_id: Some("https-test".to_owned()),
                ..Options::default()
            },
        );
        let d = c.dir.path();
        let (cert, key, ca_file) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        put(&cert, cert_pem);
        put(&key, key_pem);
        let port = c.port;
        let s = Service {
            c,
            cert,
            key,
            ca: ca_file,
            port,
        };
        s.write_config("info");
        s
    }

    /// The harness's file with HTTPS on and this log filter.
    fn write_config(&self, filter: &str) {
        let text = std::fs::read_to_string(&self.c.config).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("tls_cert_file")
                || line.starts_with("tls_key_file")
                || line == "[log]"
                || line.starts_with("filter =")
            {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line == "[http]" {
                out.push_str(&format!(
                    "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                    self.cert.display(),
                    self.key.display()
                ));
            }
        }
        out.push_str(&format!("[log]\nfilter = \"{filter}\"\n"));
        put(&self.c.config, &out);
    }

    fn command(&self, args: &[&str]) -> CmdOutput {
        self.c.command(args)
    }

    fn start(&mut self) {
        self.c.spawn();
        let up = wait_for(TIMEOUT, || self.curl(&["/healthz"]).code() == Some(0));
        assert!(up, "csg-consoled never answered over HTTPS\n{}", self.log());
    }

    fn log(&self) -> String {
        self.c.log()
    }

    fn hup(&mut self) {
        self.c.signal(Signal::SIGHUP);
    }

    /// `curl -v --cacert ca.pem https://127.0.0.1:PORT{path}`; -v shows the certificate's
    /// subject on stderr.
    fn curl(&self, args: &[&str]) -> CmdOutput {
        let (path, extra) = args.split_first().unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-v", "--fail", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .args(extra)
            .arg(format!("https://127.0.0.1:{}{path}", self.port));
        process::run(cmd, Duration::from_secs(15))
    }

    /// The common name of the certificate a new connection is served.
    fn served_cn(&self) -> String {
        let out = self.curl(&["/healthz"]);
        assert_eq!(out.code(), Some(0), "{}", out.describe());
        out.stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("*  subject: CN="))
            .unwrap_or_else(|| panic!("no subject in curl -v:\n{}", out.stderr))
            .to_owned()
    }
}

fn wait_for(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    common::consoled::wait_for(limit, cond).is_some()
}

/// A TLS connection kept open across the reload (HTTP/1.1 keep-alive), by rustls directly:
/// curl cannot be held between two of its runs.
struct KeptConnection {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl KeptConnection {
    fn open(port: u16, ca_der: &[u8]) -> KeptConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        KeptConnection {
            tls: rustls::StreamOwned::new(conn, tcp),
        }
    }

    /// One GET /healthz on this connection: the status line and body.
    fn healthz(&mut self) -> String {
        self.tls
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.tls.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap();
                if body.len() >= len {
                    return format!("{} {body}", head.lines().next().unwrap());
                }
            }
        }
    }

    fn peer_der(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

#[test]
fn https_serves_the_configured_certificate_and_sighup_swaps_it_without_dropping_connections() {
    let ca = ca();
    let (a_cert, a_key, a_der) = leaf(&ca, "csg-consoled-a");
    let (b_cert, b_key, b_der) = leaf(&ca, "csg-consoled-b");
    let mut s = Service::new(&ca, &a_cert, &a_key);
    s.command(&["check-config"]).assert_code(0);
    s.start();

    // HTTPS with the throwaway CA; the API behind it as over plain HTTP.
    assert_eq!(s.served_cn(), "csg-consoled-a");
    let health = s.curl(&["/healthz"]);
    assert_eq!(health.stdout, r#"{"status":"ok"}"#);
    let anon = s.curl(&["/v1/instances"]);
    assert_ne!(anon.code(), Some(0), "no token must be refused");
    assert!(anon.stderr.contains("401"), "{}", anon.stderr);
    // Over HTTPS the web console's cookies are Secure.
    let signin = s.curl(&["/ui/signin"]);
    assert_eq!(signin.code(), Some(0), "{}", signin.stderr);
    let cookie = signin
        .stderr
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("< set-cookie: csg_signin=")
        })
        .unwrap_or_else(|| panic!("no sign-in cookie:\n{}", signin.stderr));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Without the CA, curl refuses the certificate; plain HTTP gets no answer.
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5"])
        .arg(format!("https://127.0.0.1:{}/healthz", s.port));
    let out = process::run(cmd, Duration::from_secs(10));
    assert_eq!(out.code(), Some(60), "unknown CA: {}", out.describe());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/healthz", s.port));
    let out = process::run(cmd, Duration::from_secs(10));
    assert_ne!(
        out.code(),
        Some(0),
        "plain HTTP answered: {}",
        out.describe()
    );
    // The log filter is "info": the failed handshake above is a debug line, not shown.
    assert!(!s.log().contains("TLS handshake failed"), "{}", s.log());

    // A connection opened before the swap.
    let ca_der = ca.cert.der().to_vec();
    let mut kept = KeptConnection::open(s.port, &ca_der);
    assert!(kept.healthz().starts_with("HTTP/1.1 200"));
    assert_eq!(kept.peer_der(), a_der);

    // New pair on disk, and the log filter to debug; SIGHUP.
    put(&s.cert, &b_cert);
    put(&s.key, &b_key);
    s.write_config("debug");
    s.hup();
    assert!(
        wait_for(TIMEOUT, || s.log().contains("certificate and key reloaded")),
        "no reload logged\n{}",
        s.log()
    );
    assert_eq!(
        s.served_cn(),
        "csg-consoled-b",
        "new connections get the new certificate"
    );
    // The open connection was not dropped and keeps the certificate it was made with.
    assert!(kept.healthz().starts_with("HTTP/1.1 200"));
    assert_eq!(kept.peer_der(), a_der);
    let mut fresh = KeptConnection::open(s.port, &ca_der);
    assert!(fresh.healthz().starts_with("HTTP/1.1 200"));
    assert_eq!(fresh.peer_der(), b_der);
    // The log filter took effect: a plain-HTTP probe now shows its failed handshake.
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/healthz", s.port));
    process::run(cmd, Duration::from_secs(10));
    assert!(
        wait_for(TIMEOUT, || s.log().contains("TLS handshake failed")),
        "log filter not reloaded\n{}",
        s.log()
    );

    // A bad pair: B's certificate with A's key. Refused, logged, B still served.
    put(&s.key, &a_key);
    let check = s.command(&["check-config"]);
    check.assert_code(1);
    assert!(
        check.stderr.contains("does not match the certificate"),
        "{}",
        check.describe()
    );
    s.hup();
    assert!(
        wait_for(TIMEOUT, || s.log().contains("configuration refused")),
        "no refusal logged\n{}",
        s.log()
    );
    assert_eq!(s.served_cn(), "csg-consoled-b", "the old pair must stay");
    assert!(kept.healthz().starts_with("HTTP/1.1 200"));
    // Not a PEM key at all: refused the same way.
    put(&s.key, "not a key\n");
    s.hup();
    assert!(
        wait_for(TIMEOUT, || s.log().matches("configuration refused").count()
            >= 2),
        "second refusal not logged\n{}",
        s.log()
    );
    assert_eq!(s.served_cn(), "csg-consoled-b");

    // SIGTERM with a connection open: exits 0.
    drop(kept);
    drop(fresh);
    s.c.signal(Signal::SIGTERM);
    let status = s.c.wait_exit(TIMEOUT).unwrap();
    assert!(status.success(), "{status:?}\n{}", s.log());
}

#[test]
fn check_config_reports_bad_tls_files() {
    let ca = ca();
    let (a_cert, a_key, _) = leaf(&ca, "a");
    let (_, b_key, _) = leaf(&ca, "b");
    let s = Service::new(&ca, &a_cert, &a_key);
    s.command(&["check-config"]).assert_code(0);

    let cases: [(&str, &str, &str); 4] = [
        ("missing", "", "cannot read"),
        ("garbage", "hello\n", "no CERTIFICATE"),
        ("mismatch", "", "does not match the certificate"),
        ("not a key", "", "not a PEM private key"),
    ];
    for (case, cert_text, want) in cases {
        put(&s.cert, &a_cert);
        put(&s.key, &a_key);
        match case {
            "missing" => std::fs::remove_file(&s.cert).unwrap(),
            "garbage" => put(&s.cert, cert_text),
            "mismatch" => put(&s.key, &b_key),
            _ => put(
                &s.key,
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
        }
        let out = s.command(&["check-config"]);
        out.assert_code(1);
        assert!(
            out.stderr.contains("http.tls_cert_file/tls_key_file") && out.stderr.contains(want),
            "{case}: {}",
            out.describe()
        );
        // No secret key material in the message.
        assert!(!out.stderr.contains("PRIVATE KEY"), "{}", out.describe());
    }

    // One of the two alone, and a bad log filter: both reported at once.
    put(&s.cert, &a_cert);
    let text = std::fs::read_to_string(&s.c.config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("tls_key_file"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(r#"filter = "info""#, r#"filter = "csg=notalevel""#);
    put(&s.c.config, &text);
    let out = s.command(&["check-config"]);
    out.assert_code(1);
    assert!(out.stderr.contains("go together"), "{}", out.describe());
    assert!(out.stderr.contains("log.filter"), "{}", out.describe());
}

#[test]
fn sigterm_ends_the_service_with_exit_0_even_with_a_client_holding_a_request_open() {
    let ca = ca();
    let (cert, key, _) = leaf(&ca, "a");
    let mut s = Service::new(&ca, &cert, &key);
    let text = std::fs::read_to_string(&s.c.config)
        .unwrap()
        .replace("[http]\n", "[http]\nrequest_timeout_ms = 1000\n");
    put(&s.c.config, &text);
    s.start();

    // One connection idle after a full request (keep-alive), one stuck in its headers.
    let ca_der = ca.cert.der().to_vec();
    let mut idle = KeptConnection::open(s.port, &ca_der);
    assert!(idle.healthz().starts_with("HTTP/1.1 200"));
    let mut stuck = KeptConnection::open(s.port, &ca_der);
    stuck
        .tls
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    stuck.tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let t0 = Instant::now();
    s.c.signal(Signal::SIGTERM);
    let status = s.c.wait_exit(TIMEOUT).unwrap();
    let took = t0.elapsed();
    assert!(status.success(), "{status:?}\n{}", s.log());
    // The drain is request_timeout (1 s) and a second; then the store is closed.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "stopped after {took:?}\n{}",
        s.log()
    );
    assert!(s.log().contains("end of the drain"), "{}", s.log());
}
