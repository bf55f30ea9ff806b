//! Transport security and broker authentication against a real Mosquitto: TLS with
//! certificates made by the test (CA, broker, client, expired client, a CA nobody trusts),
//! mutual TLS, the server-name override, password authentication and Alibaba Cloud MQTT's
//! signature and token modes, with the real agent and csgctl binaries.
//!
//! Refusals must be named in the agent's log and followed by the long
//! `mqtt.auth_failure_backoff_s`, not by the normal quick retries: the tests set the normal
//! back-off to at most 1 s and check that the broker saw a single attempt meanwhile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use csg_e2e::agent::check_config;
use csg_e2e::certs::{Pair, Pki, BROKER_DNS_NAME};
use csg_e2e::csgctl::json_stdout;
use csg_e2e::{
    wait_until, Agent, AgentConfig, AuthSection, Broker, CmdOutput, Csgctl, TlsSection, TIMEOUT,
};
use serde_json::json;

/// How the test broker's listener is set up.
#[derive(Clone, Default)]
struct BrokerSetup {
    /// TLS with this server certificate (signed by the test CA), or plain TCP.
    tls: Option<Pair>,
    /// Ask every client for a certificate from the test CA.
    require_certificate: bool,
    /// `allow_anonymous false` with this password file.
    password_file: Option<PathBuf>,
}

fn start_broker(pki: &Pki, setup: BrokerSetup) -> Broker {
    let ca = pki.ca.clone();
    Broker::start_with(move |port| {
        let mut c = csg_e2e::broker::config(port);
        // Running as root, Mosquitto would drop to its own user and could not read the
        // test's private temp dirs.
        c.push_str("user root\n");
        if let Some(server) = &setup.tls {
            c.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\ntls_version tlsv1.2\nrequire_certificate {}\n",
                ca.display(),
                server.cert.display(),
                server.key.display(),
                setup.require_certificate
            ));
        }
        if let Some(pw) = &setup.password_file {
            c = c.replace("allow_anonymous true", "allow_anonymous false");
            c.push_str(&format!("password_file {}\n", pw.display()));
        }
        c
    })
}

/// An agent config for `url`: normal back-off at most 1 s, the long one `long_s`.
fn agent_config(instance: &str, url: &str, long_s: u64) -> AgentConfig {
    let mut c = AgentConfig::new(instance, url);
    c.reconnect_min_ms = 100;
    c.reconnect_max_ms = 1000;
    c.auth_failure_backoff_s = Some(long_s);
    c
}

/// A TLS broker with this server certificate, no client certificates asked for.
fn tls_broker(pki: &Pki, server: &Pair) -> Broker {
    start_broker(
        pki,
        BrokerSetup {
            tls: Some(server.clone()),
            ..Default::default()
        },
    )
}

/// An agent on the broker's TLS URL trusting `ca`, with the long back-off `long_s`.
fn tls_agent(instance: &str, broker: &Broker, ca: &Path, long_s: u64) -> Agent {
    let mut c = agent_config(instance, &broker.tls_url(), long_s);
    c.tls = tls(ca);
    Agent::spawn(&c)
}

/// `csgctl --ca-file CA call INSTANCE sys.ping`.
fn ping_with_ca(broker: &Broker, ca: &Path, instance: &str) -> CmdOutput {
    ctl(broker, &["--ca-file", &ca.display().to_string()]).run(&["call", instance, "sys.ping"])
}

/// csgctl exited 4 (broker unreachable), saying why with `says`.
fn assert_unreachable(out: &CmdOutput, says: &str) {
    out.assert_code(4);
    assert!(out.stderr.contains(says), "{}", out.describe());
}

/// `[mqtt.tls]` trusting `ca`.
fn tls(ca: &Path) -> Option<TlsSection> {
    Some(TlsSection::ca(ca))
}

/// `[mqtt.tls]` trusting `ca` and presenting `pair` as the client's identity.
fn tls_client(ca: &Path, pair: &Pair) -> Option<TlsSection> {
    Some(TlsSection::ca(ca).client(&pair.cert, &pair.key))
}

fn wait_online(agent: &mut Agent, broker: &Broker) {
    let ok = wait_until(TIMEOUT, || agent.stderr().contains(" online broker="));
    if !ok {
        agent.assert_running("while waiting for it to come online");
        panic!(
            "agent did not come online within {TIMEOUT:?}\n{}\n----- broker log -----\n{}",
            agent.log(),
            broker.log()
        );
    }
}

/// Waits for the agent to log a refusal of `kind`; returns the back-off it chose, in ms.
fn wait_refused(agent: &mut Agent, broker: &Broker, kind: &str) -> u64 {
    let needle = format!("problem=\"{kind}\"");
    if !wait_until(TIMEOUT, || agent.stderr().contains(&needle)) {
        agent.assert_running("while waiting for a refusal");
        panic!(
            "agent did not log {needle} within {TIMEOUT:?}\n{}\n----- broker log -----\n{}",
            agent.log(),
            broker.log()
        );
    }
    let log = agent.stderr();
    let line = log.lines().find(|l| l.contains(&needle)).unwrap();
    assert!(line.contains("ERROR"), "a refusal is an error: {line}");
    let ms = line
        .split("retry_in_ms=")
        .nth(1)
        .and_then(|r| {
            r.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .unwrap_or_else(|| panic!("no retry_in_ms in {line}"));
    assert!(
        !log.contains(" online broker="),
        "the agent must not be online:\n{log}"
    );
    ms
}

/// TCP connections the broker accepted so far (TLS handshakes included, failed or not).
fn connection_attempts(broker: &Broker) -> usize {
    broker
        .log()
        .lines()
        .filter(|l| l.contains("New connection from"))
        .count()
}

/// After a refusal with a long back-off (`long_s` ≥ 20), nothing more reaches the broker
/// for a while, where the normal back-off (≤ 1 s) would have retried several times.
fn assert_backs_off_long(agent: &mut Agent, broker: &Broker, kind: &str, long_s: u64) {
    let ms = wait_refused(agent, broker, kind);
    assert!(
        ms >= long_s * 1000 / 2 && ms <= long_s * 1000,
        "{kind}: back-off {ms} ms is not within [{}, {}] ms",
        long_s * 500,
        long_s * 1000
    );
    let before = connection_attempts(broker);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        connection_attempts(broker),
        before,
        "{kind}: the agent retried during its long back-off\n{}",
        broker.log()
    );
    agent.assert_running("after a refusal");
}

fn ctl(broker: &Broker, args: &[&str]) -> Csgctl {
    Csgctl::new(&broker.tls_url()).with_global(args)
}

fn ping_ok(ctl: &Csgctl, instance: &str) {
    let out = ctl.run(&["call", instance, "sys.ping", "--timeout", "5s"]);
    out.assert_code(0);
    assert_eq!(json_stdout(&out)["pong"], json!(true), "{}", out.describe());
}

#[test]
fn plain_tls_works_for_the_agent_and_csgctl() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, &pki.server);
    let mut agent = tls_agent("gw-tls", &broker, &pki.ca, 300);
    wait_online(&mut agent, &broker);
    let ca = pki.ca.display().to_string();
    ping_ok(&ctl(&broker, &["--ca-file", &ca]), "gw-tls");
    // The same broker reached by a DNS name its certificate lacks (SNI sent), verified
    // against the override.
    let by_name = Csgctl::new(&format!("mqtts://localhost:{}", broker.port())).with_global(&[
        "--ca-file",
        &ca,
        "--server-name",
        BROKER_DNS_NAME,
    ]);
    ping_ok(&by_name, "gw-tls");
}

#[test]
fn an_unknown_ca_is_refused_named_and_backed_off_long() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, &pki.server);
    let mut agent = tls_agent("gw-rogue-ca", &broker, &pki.rogue_ca, 40);
    assert_backs_off_long(&mut agent, &broker, "unknown_ca", 40);
    assert!(agent.stderr().contains("not signed by a trusted CA"));

    let out = ping_with_ca(&broker, &pki.rogue_ca, "gw-rogue-ca");
    assert_unreachable(&out, "not signed by a trusted CA");
}

#[test]
fn an_expired_server_certificate_is_refused_named_and_backed_off_long() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, &pki.server_expired);
    let mut agent = tls_agent("gw-expired-server", &broker, &pki.ca, 40);
    assert_backs_off_long(&mut agent, &broker, "server_cert_expired", 40);

    let out = ping_with_ca(&broker, &pki.ca, "gw-expired-server");
    assert_unreachable(&out, "expired");
}

#[test]
fn a_name_mismatch_is_refused_and_the_server_name_override_fixes_it() {
    let pki = Pki::new();
    // The broker's certificate names only broker.csg.test, and we reach it by IP.
    let broker = tls_broker(&pki, &pki.server_dns_only);
    let mut agent = tls_agent("gw-name", &broker, &pki.ca, 30);
    assert_backs_off_long(&mut agent, &broker, "name_mismatch", 30);

    let mut c = agent_config("gw-name-ok", &broker.tls_url(), 30);
    c.tls = Some(TlsSection::ca(&pki.ca).server_name(BROKER_DNS_NAME));
    let mut fixed = Agent::spawn(&c);
    wait_online(&mut fixed, &broker);

    let ca = pki.ca.display().to_string();
    let out = ctl(&broker, &["--ca-file", &ca]).run(&["call", "gw-name-ok", "sys.ping"]);
    assert_unreachable(&out, "does not match the broker's name");
    ping_ok(
        &ctl(
            &broker,
            &["--ca-file", &ca, "--server-name", BROKER_DNS_NAME],
        ),
        "gw-name-ok",
    );
}

#[test]
fn a_wrong_server_name_override_is_a_mismatch_too() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, &pki.server);
    let mut c = agent_config("gw-wrong-name", &broker.tls_url(), 30);
    c.tls = Some(TlsSection::ca(&pki.ca).server_name("other.csg.test"));
    let mut agent = Agent::spawn(&c);
    wait_refused(&mut agent, &broker, "name_mismatch");
}

#[test]
fn mutual_tls_works_and_refuses_a_missing_or_expired_client_certificate() {
    let pki = Pki::new();
    let broker = start_broker(
        &pki,
        BrokerSetup {
            tls: Some(pki.server.clone()),
            require_certificate: true,
            ..Default::default()
        },
    );
    let mut c = agent_config("gw-mtls", &broker.tls_url(), 30);
    c.tls = tls_client(&pki.ca, &pki.client);
    let mut agent = Agent::spawn(&c);
    wait_online(&mut agent, &broker);

    let mut none = tls_agent("gw-mtls-none", &broker, &pki.ca, 30);
    assert_backs_off_long(&mut none, &broker, "client_cert_refused", 30);

    let mut c = agent_config("gw-mtls-expired", &broker.tls_url(), 30);
    c.tls = tls_client(&pki.ca, &pki.client_expired);
    let mut expired = Agent::spawn(&c);
    wait_refused(&mut expired, &broker, "client_cert_refused");
    assert!(
        expired.stderr().contains("expired"),
        "the refusal should say the certificate expired\n{}",
        expired.log()
    );

    let ca = pki.ca.display().to_string();
    let (cert, key) = (
        pki.client.cert.display().to_string(),
        pki.client.key.display().to_string(),
    );
    ping_ok(
        &ctl(
            &broker,
            &[
                "--ca-file",
                &ca,
                "--client-cert",
                &cert,
                "--client-key",
                &key,
            ],
        ),
        "gw-mtls",
    );
    let out = ctl(&broker, &["--ca-file", &ca]).run(&["call", "gw-mtls", "sys.ping"]);
    assert_unreachable(&out, "refused our client certificate");
}

#[test]
fn rotated_client_certificate_files_are_used_on_the_next_connect_without_a_restart() {
    let pki = Pki::new();
    let broker = start_broker(
        &pki,
        BrokerSetup {
            tls: Some(pki.server.clone()),
            require_certificate: true,
            ..Default::default()
        },
    );
    // The agent's own copies of the files: expired first, replaced while it runs.
    let dir = tempfile::tempdir().unwrap();
    let id = Pair {
        cert: dir.path().join("gw.pem"),
        key: dir.path().join("gw.key"),
    };
    std::fs::copy(&pki.client_expired.cert, &id.cert).unwrap();
    std::fs::copy(&pki.client_expired.key, &id.key).unwrap();
    let mut c = agent_config("gw-rotate", &broker.tls_url(), 2);
    c.tls = tls_client(&pki.ca, &id);
    let mut agent = Agent::spawn(&c);
    wait_refused(&mut agent, &broker, "client_cert_refused");
    // Rotate the way a deployment tool does: write new files, rename them into place.
    for (from, to) in [(&pki.client.cert, &id.cert), (&pki.client.key, &id.key)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    wait_online(&mut agent, &broker);
}

#[test]
fn sighup_after_a_certificate_rotation_starts_a_new_session_at_once() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, &pki.server);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::copy(&pki.ca, &ca).unwrap();
    let mut agent = tls_agent("gw-hup", &broker, &ca, 30);
    wait_online(&mut agent, &broker);
    // Same config text, rotated file: the reload is a change, so a new session uses it.
    let tmp = dir.path().join("ca.new");
    std::fs::copy(&pki.ca, &tmp).unwrap();
    std::fs::rename(&tmp, &ca).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let client_id = agent.config.client_id();
    assert!(
        wait_until(TIMEOUT, || broker.connects_of(&client_id) == 2),
        "no new session after SIGHUP\n{}\n{}",
        agent.log(),
        broker.log()
    );
    assert!(
        agent.stderr().contains("starting a new session"),
        "{}",
        agent.log()
    );
}

fn write_secret(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, format!("{content}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A Mosquitto password file with one user, made by `mosquitto_passwd`.
fn mosquitto_passwords(dir: &Path, user: &str, password: &str) -> PathBuf {
    let file = dir.join("mosquitto.passwd");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&file)
        .args([user, password])
        .output()
        .expect("run mosquitto_passwd (package mosquitto)");
    assert!(out.status.success(), "mosquitto_passwd: {out:?}");
    file
}

/// Base64(HMAC-SHA1(secret, data)) computed by the openssl command, independently of the
/// agent's own implementation.
fn openssl_hmac_sha1_base64(secret: &str, data: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha1", "-hmac", secret, "-binary"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && out.stdout.len() == 20, "{out:?}");
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

#[test]
fn password_authentication_connects_and_a_wrong_password_backs_off_long() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let passwd = mosquitto_passwords(dir.path(), "gateway", "correct horse");
    let broker = start_broker(
        &pki,
        BrokerSetup {
            tls: Some(pki.server.clone()),
            password_file: Some(passwd),
            ..Default::default()
        },
    );
    let good = write_secret(dir.path(), "good", "correct horse");
    let bad = write_secret(dir.path(), "bad", "battery staple");
    let auth = |file: &Path| AuthSection::password("gateway", file);
    let mut c = agent_config("gw-pw", &broker.tls_url(), 30);
    c.tls = tls(&pki.ca);
    c.auth = Some(auth(&good));
    let mut agent = Agent::spawn(&c);
    wait_online(&mut agent, &broker);

    let mut c = agent_config("gw-pw-bad", &broker.tls_url(), 30);
    c.tls = tls(&pki.ca);
    c.auth = Some(auth(&bad));
    let mut wrong = Agent::spawn(&c);
    assert_backs_off_long(&mut wrong, &broker, "not_authorized", 30);
    assert!(
        !wrong.log().contains("battery") && !agent.log().contains("correct horse"),
        "a password reached a log"
    );

    let ca = pki.ca.display().to_string();
    let good_s = good.display().to_string();
    let with = |file: &str| {
        ctl(
            &broker,
            &[
                "--ca-file",
                &ca,
                "--username",
                "gateway",
                "--password-file",
                file,
            ],
        )
    };
    ping_ok(&with(&good_s), "gw-pw");
    let out = with(&bad.display().to_string()).run(&["call", "gw-pw", "sys.ping"]);
    out.assert_code(4);
    assert!(
        !out.stderr.contains("battery") && !out.stdout.contains("battery"),
        "{}",
        out.describe()
    );
}

#[test]
fn alibaba_signature_mode_matches_an_independent_hmac_sha1() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (ak, instance, secret) = ("LTAI5tTestAccessKey", "mqtt-cn-test01", "s3cr3t/AccessKey+");
    let client_id = "GID_csg@@@gw-ali";
    let expected = openssl_hmac_sha1_base64(secret, client_id);
    let user = format!("Signature|{ak}|{instance}");
    let passwd = mosquitto_passwords(dir.path(), &user, &expected);
    let broker = start_broker(
        &pki,
        BrokerSetup {
            tls: Some(pki.server.clone()),
            password_file: Some(passwd),
            ..Default::default()
        },
    );
    let auth = |file: &Path| AuthSection::alibaba_signature(ak, instance, file);
    let good = write_secret(dir.path(), "ak-secret", secret);
    let mut c = agent_config("gw-ali", &broker.tls_url(), 30);
    c.tls = tls(&pki.ca);
    c.auth = Some(auth(&good));
    let mut agent = Agent::spawn(&c);
    wait_online(&mut agent, &broker);
    assert!(
        broker.log().contains(&format!("u'{user}'")),
        "the broker should have seen the Signature username\n{}",
        broker.log()
    );
    for leak in [secret, expected.as_str()] {
        assert!(!agent.log().contains(leak), "a secret reached the log");
    }

    // Same username, wrong secret: the broker refuses, the agent backs off long. (The broker
    // knows one user; Mosquitto refuses another client id with the same credentials only if
    // the password differs, which is what a wrong secret gives.)
    let bad = write_secret(dir.path(), "ak-wrong", "not-the-secret");
    let mut c = agent_config("gw-ali", &broker.tls_url(), 30);
    c.tls = tls(&pki.ca);
    c.auth = Some(auth(&bad));
    drop(agent);
    let mut wrong = Agent::spawn(&c);
    assert_backs_off_long(&mut wrong, &broker, "not_authorized", 30);

    let ca = pki.ca.display().to_string();
    let mut c = agent_config("gw-ali", &broker.tls_url(), 30);
    c.tls = tls(&pki.ca);
    c.auth = Some(auth(&good));
    drop(wrong);
    let mut agent = Agent::spawn(&c);
    wait_online(&mut agent, &broker);
    // csgctl signs its own client id: give it one the broker knows (a console id for which
    // the test computed a password too would work the same way).
    let out = ctl(
        &broker,
        &[
            "--ca-file",
            &ca,
            "--alibaba-access-key-id",
            ak,
            "--alibaba-instance-id",
            instance,
            "--alibaba-secret-file",
            &bad.display().to_string(),
        ],
    )
    .run(&["call", "gw-ali", "sys.ping"]);
    out.assert_code(4);
}

#[test]
fn csgctl_signs_its_own_client_id_in_alibaba_signature_mode() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (ak, instance, secret) = ("AKconsole", "mqtt-cn-test02", "console-secret");
    let console_id = "ops-console";
    let expected = openssl_hmac_sha1_base64(secret, &format!("GID_csg@@@{console_id}"));
    let passwd = mosquitto_passwords(dir.path(), &format!("Signature|{ak}|{instance}"), &expected);
    let broker = start_broker(
        &pki,
        BrokerSetup {
            tls: Some(pki.server.clone()),
            password_file: Some(passwd),
            ..Default::default()
        },
    );
    let secret_file = write_secret(dir.path(), "secret", secret);
    let ca = pki.ca.display().to_string();
    // No agent behind it: connecting is what is checked, so the call times out (exit 3)
    // instead of failing to connect (exit 4).
    let out = ctl(
        &broker,
        &[
            "--ca-file",
            &ca,
            "--console-id",
            console_id,
            "--alibaba-access-key-id",
            ak,
            "--alibaba-instance-id",
            instance,
            "--alibaba-secret-file",
            &secret_file.display().to_string(),
        ],
    )
    .run(&["call", "gw-none", "sys.ping", "--timeout", "1s"]);
    out.assert_code(3);
}

#[test]
fn alibaba_token_mode_sends_the_token_string_as_password() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (ak, instance, token) = ("AKtoken", "mqtt-cn-test03", "RW|LzMT+XLFl5s/YWJ/MlDz4t");
    let passwd = mosquitto_passwords(dir.path(), &format!("Token|{ak}|{instance}"), token);
    let broker = start_broker(
        &pki,
        BrokerSetup {
            tls: Some(pki.server.clone()),
            password_file: Some(passwd),
            ..Default::default()
        },
    );
    let token_file = write_secret(dir.path(), "token", token);
    let mut c = agent_config("gw-token", &broker.tls_url(), 30);
    c.tls = tls(&pki.ca);
    c.auth = Some(AuthSection::alibaba_token(ak, instance, &token_file));
    let mut agent = Agent::spawn(&c);
    wait_online(&mut agent, &broker);
    assert!(!agent.log().contains("LzMT"), "the token reached the log");
}

#[test]
fn check_config_reports_every_missing_tls_and_secret_file_at_once() {
    let mut c = agent_config("gw-files", "mqtts://127.0.0.1:1", 300);
    c.tls = Some(TlsSection {
        client_cert_file: Some("/nonexistent/c.pem".into()),
        ..TlsSection::ca(Path::new("/nonexistent/ca.pem"))
    });
    c.auth = Some(AuthSection::password("gw", Path::new("/nonexistent/pw")));
    let out = check_config(&c.to_toml());
    out.assert_code(2);
    for want in ["both or neither", "/nonexistent/pw"] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.describe());
    }
    c.tls = tls(Path::new("/nonexistent/ca.pem"));
    c.auth = None;
    let out = check_config(&c.to_toml());
    out.assert_code(2);
    assert!(
        out.stderr.contains("/nonexistent/ca.pem"),
        "{}",
        out.describe()
    );
    let mut plain = agent_config("gw-files", "mqtt://127.0.0.1:1", 300);
    plain.tls = Some(TlsSection::default().server_name("broker.example"));
    let out = check_config(&plain.to_toml());
    out.assert_code(2);
    assert!(out.stderr.contains("use mqtts://"), "{}", out.describe());
}
