//! Signed commands end to end: the real agent with `require_signed_commands`, requests signed
//! by hand as a console in another language would sign them, and csgctl's `keygen` and
//! `--sign-key`. The NFS kernel backend with a mock exportfs makes mutations observable: every
//! refused request must leave the exports file as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use csg_e2e::exportfs_stub::ExportfsStub;
use csg_e2e::{now_ms, rpc, unique, Bed, Mark, SecuritySection, StorageSection};
use csg_protocol::jws::{self, ed25519_dalek::Signer as _, ed25519_dalek::SigningKey};
use serde_json::{json, Value};

/// A key pair, its key id, and where its public key was written.
struct Key {
    kid: String,
    sk: SigningKey,
    public_file: PathBuf,
}

impl Key {
    fn new(dir: &Path, kid: &str, seed: u8) -> Key {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let public_file = dir.join(format!("{kid}.pub"));
        std::fs::write(
            &public_file,
            jws::public_key_pem(&sk.verifying_key()).unwrap(),
        )
        .unwrap();
        Key {
            kid: kid.into(),
            sk,
            public_file,
        }
    }
}

/// A gateway that requires signed commands, with NFS on a mock exportfs.
struct World {
    bed: Bed,
    stub: ExportfsStub,
    base: PathBuf,
    admin: Key,
    admin2: Key,
    ro: Key,
    _dir: tempfile::TempDir,
}

fn world(instance: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    for d in ["srv/vol1", "srv/vol2", "srv/vol3", "state", "keys"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let stub = ExportfsStub::new(&base);
    let keys = base.join("keys");
    let admin = Key::new(&keys, "admin-2026a", 1);
    let admin2 = Key::new(&keys, "admin-2026b", 2);
    let ro = Key::new(&keys, "monitoring", 3);
    let bed = Bed::start_with(instance, |c| {
        c.storage = Some(StorageSection::new(&base.join("srv"), &base.join("state")));
        c.nfs = Some(stub.nfs_section());
        c.security = Some(SecuritySection {
            max_command_validity_s: Some(300),
            clock_skew_s: Some(30),
            ..SecuritySection::signed()
                .trust(&admin.kid, &admin.public_file, &["*"])
                .trust(&admin2.kid, &admin2.public_file, &["*"])
                .trust(&ro.kid, &ro.public_file, &["sys.*", "*.get", "*.list"])
        });
    });
    World {
        bed,
        stub,
        base,
        admin,
        admin2,
        ro,
        _dir: dir,
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl World {
    fn aud(&self) -> String {
        self.bed.client_id()
    }

    /// The request JSON, with `deadline_ms` when given.
    fn request(&self, id: &str, method: &str, params: Value, deadline_ms: Option<u64>) -> Vec<u8> {
        let mut r = rpc::request(id, method, params, Some(&self.bed.reply_to));
        if let Some(d) = deadline_ms {
            r["deadline_ms"] = json!(d);
        }
        rpc::bytes(&r)
    }

    /// A JWS signed with `key`, made by hand: header, payload, signature over `h.p`.
    fn sign_with(&self, key: &Key, header: &Value, payload: &[u8]) -> String {
        let input = format!("{}.{}", b64(&rpc::bytes(header)), b64(payload));
        let sig = key.sk.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    fn header(&self, key: &Key) -> Value {
        json!({"alg": "EdDSA", "kid": key.kid, "aud": self.aud()})
    }

    fn signed(&self, key: &Key, id: &str, method: &str, params: Value) -> String {
        let payload = self.request(id, method, params, Some(now_ms() + 60_000));
        self.sign_with(key, &self.header(key), &payload)
    }

    /// Sends raw bytes and returns the reply to `id`.
    fn send(&self, id: &str, bytes: impl Into<Vec<u8>>) -> Value {
        let mark = self.bed.rec.mark();
        self.bed.send_raw(bytes);
        self.bed.reply_since(mark, id)
    }

    fn ok(&self, key: &Key, method: &str, params: Value) -> Value {
        let id = unique("ok");
        let reply = self.send(&id, self.signed(key, &id, method, params));
        rpc::expect_ok(&reply, &id)
    }

    fn refused(&self, id: &str, bytes: impl Into<Vec<u8>>, code: &str) -> String {
        let reply = self.send(id, bytes);
        let err = rpc::expect_err(&reply, Some(id), code);
        assert_eq!(err["retryable"], json!(false), "{reply}");
        err["message"].as_str().unwrap().to_string()
    }

    fn counters(&self) -> Value {
        self.ok(&self.admin, "sys.status", json!({}))["counters"].clone()
    }

    fn export(&self, name: &str) -> Value {
        json!({"name": name, "path": self.base.join("srv").join(name).display().to_string(),
               "clients": [{"match": "10.0.0.0/8", "access": "rw", "squash": "root"}]})
    }

    fn audit_lines(&self) -> Vec<String> {
        self.bed
            .agent
            .log()
            .lines()
            .filter(|l| l.contains("mutation executed"))
            .map(String::from)
            .collect()
    }
}

/// Counter growth between two `sys.status` snapshots, minus the second snapshot's own call.
fn grew(before: &Value, after: &Value, k: &str) -> u64 {
    let own = u64::from(k == "received" || k == "executed");
    after[k].as_u64().unwrap() - before[k].as_u64().unwrap() - own
}

#[test]
fn only_valid_signatures_from_allowed_keys_run_and_refusals_change_nothing() {
    let w = world("gw-signed");
    // A valid signed mutation runs, and writes one audit line naming the key.
    let created = w.ok(&w.admin, "nfs.export.create", w.export("vol1"));
    assert_eq!(created["changed"], json!(true), "{created}");
    let exports = w.stub.file().expect("exports file written");
    assert!(exports.contains("srv/vol1"), "{exports}");
    let before = w.counters();
    let reexports = || {
        w.stub
            .argv()
            .iter()
            .filter(|a| a.starts_with("-ra"))
            .count()
    };
    let argv_before = reexports();

    let aud = w.aud();
    let create2 = |id: &str| {
        w.request(
            id,
            "nfs.export.create",
            w.export("vol2"),
            Some(now_ms() + 60_000),
        )
    };
    let mut refusals = 0u64;
    let mut refuse = |id: &str, bytes: Vec<u8>, code: &str, why: &str| {
        let msg = w.refused(id, bytes, code);
        assert!(
            msg.to_lowercase().contains(&why.to_lowercase()),
            "{id}: {msg:?} should mention {why:?}"
        );
        refusals += u64::from(code == "UNAUTHORIZED");
    };

    // Unsigned.
    refuse("u1", create2("u1"), "UNAUTHORIZED", "signed commands only");
    // Tampered payload: a valid signature over another payload.
    let good = w.sign_with(&w.admin, &w.header(&w.admin), &create2("t1"));
    let p: Vec<&str> = good.split('.').collect();
    let evil = w.request(
        "t1",
        "nfs.export.create",
        w.export("vol3"),
        Some(now_ms() + 60_000),
    );
    refuse(
        "t1",
        format!("{}.{}.{}", p[0], b64(&evil), p[2]).into(),
        "UNAUTHORIZED",
        "signature",
    );
    // Tampered header: another key id (a read-only key's) on the admin key's signature.
    let good = w.sign_with(&w.admin, &w.header(&w.admin), &create2("t2"));
    let p: Vec<&str> = good.split('.').collect();
    let h = json!({"alg": "EdDSA", "kid": w.ro.kid, "aud": aud});
    refuse(
        "t2",
        format!("{}.{}.{}", b64(&rpc::bytes(&h)), p[1], p[2]).into(),
        "UNAUTHORIZED",
        "signature",
    );
    // Tampered header: an added parameter.
    let h = json!({"alg": "EdDSA", "kid": w.admin.kid, "aud": aud, "typ": "JOSE"});
    let good = w.sign_with(&w.admin, &w.header(&w.admin), &create2("t3"));
    let p: Vec<&str> = good.split('.').collect();
    refuse(
        "t3",
        format!("{}.{}.{}", b64(&rpc::bytes(&h)), p[1], p[2]).into(),
        "UNAUTHORIZED",
        "signature",
    );
    // alg none, with an empty signature and with a signature-sized one.
    let none = json!({"alg": "none", "kid": w.admin.kid, "aud": aud});
    refuse(
        "n1",
        format!("{}.{}.", b64(&rpc::bytes(&none)), b64(&create2("n1"))).into(),
        "UNAUTHORIZED",
        "signature",
    );
    let n2 = w.sign_with(&w.admin, &none, &create2("n2"));
    refuse("n2", n2.into(), "UNAUTHORIZED", "alg");
    // HS256 keyed with the public key (algorithm confusion).
    let hs = json!({"alg": "HS256", "kid": w.admin.kid, "aud": aud});
    let hs_input = format!("{}.{}", b64(&rpc::bytes(&hs)), b64(&create2("h1")));
    refuse(
        "h1",
        format!("{hs_input}.{}", b64(&[7u8; 32])).into(),
        "UNAUTHORIZED",
        "",
    );
    // Unknown key id, and a key that is not the one trusted under a known id.
    let stranger = Key::new(&w.base, "stranger", 9);
    refuse(
        "k1",
        w.sign_with(&stranger, &w.header(&stranger), &create2("k1"))
            .into(),
        "UNAUTHORIZED",
        "not a trusted key",
    );
    let forged = json!({"alg": "EdDSA", "kid": w.admin.kid, "aud": aud});
    refuse(
        "k2",
        w.sign_with(&stranger, &forged, &create2("k2")).into(),
        "UNAUTHORIZED",
        "signature",
    );
    // Signed for another gateway, or for none.
    let other = json!({"alg": "EdDSA", "kid": w.admin.kid, "aud": "GID_csg@@@gw-other"});
    refuse(
        "a1",
        w.sign_with(&w.admin, &other, &create2("a1")).into(),
        "UNAUTHORIZED",
        "another gateway",
    );
    let noaud = json!({"alg": "EdDSA", "kid": w.admin.kid});
    refuse(
        "a2",
        w.sign_with(&w.admin, &noaud, &create2("a2")).into(),
        "UNAUTHORIZED",
        "aud",
    );
    // Deadlines: missing, too far ahead (validity 300 s + skew 30 s), passed.
    let hdr = w.header(&w.admin);
    let d = |id: &str, deadline| {
        w.sign_with(
            &w.admin,
            &hdr,
            &w.request(id, "nfs.export.create", w.export("vol2"), deadline),
        )
    };
    refuse("d1", d("d1", None).into(), "UNAUTHORIZED", "deadline_ms");
    refuse(
        "d2",
        d("d2", Some(now_ms() + 400_000)).into(),
        "UNAUTHORIZED",
        "ahead",
    );
    refuse(
        "d3",
        d("d3", Some(now_ms() - 5_000)).into(),
        "EXPIRED",
        "deadline",
    );
    // A read-only key calling a mutation.
    refuse(
        "r1",
        w.signed(&w.ro, "r1", "nfs.export.create", w.export("vol2"))
            .into_bytes(),
        "UNAUTHORIZED",
        "not allowed",
    );
    refuse(
        "r2",
        w.signed(&w.ro, "r2", "nfs.export.delete", json!({"name": "vol1"}))
            .into_bytes(),
        "UNAUTHORIZED",
        "not allowed",
    );

    // Nothing changed on the gateway: the exports file, exportfs never run again, and the
    // desired state still holds vol1 only.
    assert_eq!(w.stub.file().as_deref(), Some(exports.as_str()));
    assert_eq!(reexports(), argv_before, "{:?}", w.stub.argv());
    let after = w.counters();
    assert_eq!(grew(&before, &after, "executed"), 0, "{before} -> {after}");
    assert_eq!(
        grew(&before, &after, "unauthorized"),
        refusals,
        "{before} -> {after}"
    );
    assert_eq!(grew(&before, &after, "expired"), 1, "{before} -> {after}");
    let list = w.ok(&w.ro, "nfs.export.list", json!({}));
    assert!(!list.to_string().contains("vol2"), "{list}");
    assert!(list.to_string().contains("vol1"), "{list}");

    // Key rotation: both admin keys are trusted at once; each runs a mutation.
    w.ok(&w.admin2, "nfs.export.create", w.export("vol2"));
    w.ok(&w.admin, "nfs.export.delete", json!({"name": "vol2"}));
    // The read-only key reads.
    w.ok(&w.ro, "sys.info", json!({}));
    w.ok(&w.ro, "nfs.export.get", json!({"name": "vol1"}));

    // One audit line per executed mutation, with id, method, key and outcome; none for the
    // refused ones or for reads.
    let audit = w.audit_lines();
    assert_eq!(audit.len(), 3, "{audit:#?}");
    for (line, method, key) in [
        (&audit[0], "nfs.export.create", "admin-2026a"),
        (&audit[1], "nfs.export.create", "admin-2026b"),
        (&audit[2], "nfs.export.delete", "admin-2026a"),
    ] {
        for want in [
            format!("method={method}"),
            format!("key={key}"),
            "outcome=".into(),
            "id=".into(),
        ] {
            assert!(line.contains(&want), "{want} missing in {line}");
        }
        assert!(line.contains("ok"), "{line}");
    }
    let log = w.bed.agent.log();
    assert!(log.contains("unauthorized request refused"), "no warn line");
}

#[test]
fn a_replayed_signed_request_gets_the_remembered_reply_and_runs_once() {
    let w = world("gw-replay");
    let id = unique("replay");
    // Valid for 2 s only, so the replay below also comes after its deadline.
    let payload = w.request(
        &id,
        "nfs.export.create",
        w.export("vol1"),
        Some(now_ms() + 2_000),
    );
    let bytes = w.sign_with(&w.admin, &w.header(&w.admin), &payload);
    let mark: Mark = w.bed.rec.mark();
    w.bed.send_raw(bytes.clone());
    let first = w.bed.reply_since(mark, &id);
    rpc::expect_ok(&first, &id);
    let before = w.counters();
    let reexports = || {
        w.stub
            .argv()
            .iter()
            .filter(|a| a.starts_with("-ra"))
            .count()
    };
    let argv_before = reexports();

    // The same signed bytes again, at once and after the deadline: the remembered reply,
    // never a second run, never EXPIRED.
    let again = w.send(&id, bytes.clone());
    assert_eq!(again, first);
    std::thread::sleep(Duration::from_millis(2_500));
    let late = w.send(&id, bytes);
    assert_eq!(late, first);
    let after = w.counters();
    assert_eq!(grew(&before, &after, "executed"), 0, "{before} -> {after}");
    assert_eq!(
        grew(&before, &after, "duplicates"),
        2,
        "{before} -> {after}"
    );
    assert_eq!(reexports(), argv_before);
    assert_eq!(w.audit_lines().len(), 1, "{:#?}", w.audit_lines());
}

#[test]
fn csgctl_keygen_and_sign_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let prefix = base.join("ops");
    let probe = csg_e2e::Csgctl::new("mqtt://127.0.0.1:1");
    let out = probe.run(&["keygen", "--out", prefix.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let kid = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key id:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no key id printed\n{}", out.describe()));
    let key_file = base.join("ops.key");
    let pub_file = base.join("ops.pub");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&pub_file)
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    // No silent overwrite.
    let again = probe.run(&["keygen", "--out", prefix.to_str().unwrap()]);
    assert_eq!(again.code(), Some(2), "{}", again.describe());

    // Two gateways trust the key (under the printed id), one more under another id.
    let security = |kid: &str| Some(SecuritySection::signed().trust(kid, &pub_file, &["sys.*"]));
    let bed = Bed::start_with("gw-ctl-1", |c| c.security = security(&kid));
    let _other = bed.spawn_agent("gw-ctl-2", |c| c.security = security(&kid));
    let _renamed = bed.spawn_agent("gw-ctl-3", |c| c.security = security("ops-2026"));
    let ctl = bed.csgctl();
    let sign = ["--sign-key", key_file.to_str().unwrap()];

    let plain = ctl.run(&["call", "gw-ctl-1", "sys.ping", "--timeout", "5s"]);
    assert_eq!(plain.code(), Some(1), "{}", plain.describe());
    assert!(
        plain.stdout.contains("UNAUTHORIZED") || plain.stderr.contains("UNAUTHORIZED"),
        "{}",
        plain.describe()
    );

    let mut args = sign.to_vec();
    args.extend(["call", "gw-ctl-1", "sys.ping"]);
    let one = ctl.run(&args);
    assert_eq!(one.code(), Some(0), "{}", one.describe());
    // Fan-out: every instance gets its own signed request, each addressed to it.
    let mut args = sign.to_vec();
    args.extend(["call", "gw-ctl-1,gw-ctl-2", "sys.ping", "--json"]);
    let many = ctl.run(&args);
    assert_eq!(many.code(), Some(0), "{}", many.describe());
    // The key id is given explicitly where the gateway knows the key by another name.
    let mut args = sign.to_vec();
    args.extend(["--key-id", "ops-2026", "call", "gw-ctl-3", "sys.ping"]);
    let renamed = ctl.run(&args);
    assert_eq!(renamed.code(), Some(0), "{}", renamed.describe());
    // The key's allow list (sys.*) is enforced for csgctl's storage commands too.
    let mut args = sign.to_vec();
    args.extend(["nfs", "list", "gw-ctl-1", "--timeout", "5s"]);
    let denied = ctl.run(&args);
    assert_eq!(denied.code(), Some(1), "{}", denied.describe());
    assert!(
        denied.stdout.contains("UNAUTHORIZED") || denied.stderr.contains("UNAUTHORIZED"),
        "{}",
        denied.describe()
    );
    // bench signs too.
    let mut args = sign.to_vec();
    args.extend(["bench", "gw-ctl-1", "--count", "20", "--warmup", "5"]);
    let bench = ctl.run(&args);
    assert_eq!(bench.code(), Some(0), "{}", bench.describe());
    // A missing key file is a usage error, before any broker is contacted.
    let bad = ctl.run(&[
        "--sign-key",
        "/nonexistent/key",
        "call",
        "gw-ctl-1",
        "sys.ping",
    ]);
    assert_eq!(bad.code(), Some(2), "{}", bad.describe());
}

#[test]
fn keys_are_rotated_by_a_reload_without_a_restart() {
    let mut w = world("gw-rotate");
    w.ok(&w.admin, "sys.ping", json!({}));
    // Retire the old admin key: its table goes from the config, and SIGHUP re-reads it.
    let mut cfg = w.bed.agent.config.clone();
    let keys = &mut cfg
        .security
        .as_mut()
        .expect("a [security] section")
        .trusted_keys;
    let old = keys.remove(&w.admin.kid);
    assert!(
        old.is_some_and(|k| k.public_key_file == w.admin.public_file),
        "{keys:?}"
    );
    std::fs::write(w.bed.agent.config_path(), cfg.to_toml()).unwrap();
    w.bed.agent.config = cfg;
    w.bed.agent.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        csg_e2e::wait_until(csg_e2e::TIMEOUT, || w
            .bed
            .agent
            .log()
            .contains("signed-command keys")),
        "{}",
        w.bed.agent.log()
    );
    let id = unique("retired");
    let msg = w.refused(
        &id,
        w.signed(&w.admin, &id, "sys.ping", json!({})).into_bytes(),
        "UNAUTHORIZED",
    );
    assert!(msg.contains("not a trusted key"), "{msg}");
    w.ok(&w.admin2, "sys.ping", json!({}));
    // Same session throughout: a key change needs no reconnect.
    assert_eq!(w.bed.broker.connects_of(&w.bed.client_id()), 1);
}
