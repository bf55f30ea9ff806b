//! The LIO backend: the kernel iSCSI target, configured with `targetcli` one-shot commands
//! and persisted with `targetcli saveconfig` (restored at boot by `target.service`).
//!
//! This build has the command builders only: they turn a validated target (the same
//! [`WantTarget`] the tgt backend takes) into the exact `targetcli` argument vectors, and are
//! unit-tested down to those vectors. They are not wired to a runtime backend yet: the test
//! machine has no configfs (`/sys/kernel/config/target`), so nothing could check a runtime
//! backend end to end, and `build` refuses `backend = "lio"` with a clear message.
//!
//! Model differences from tgt, decided here:
//! * LIO has no address ACLs: `networks` cannot be honoured and is refused ([`LioError`]).
//! * Initiators listed → `generate_node_acls=0` and one node ACL per initiator with each LUN
//!   mapped explicitly (`write_protect=1` for read-only LUNs); CHAP is set on every node ACL.
//! * No initiators but CHAP → "demo mode" with TPG-level CHAP (`generate_node_acls=1`,
//!   `authentication=1`): any initiator that knows the secret; read-only LUNs make the whole
//!   TPG write-protected (`demo_mode_write_protect=1`), so mixing is refused.
//! * No initiators and no CHAP → no node ACLs and `generate_node_acls=0`: nobody can log in
//!   (the same as tgt with empty lists).
//! * Backstores are named `csg-<target>-<lun>`; files are `fileio` (the agent creates them
//!   sparse beforehand, so no size is passed), devices are `block`.
//! * `update` is delete + create in one batch (sessions are dropped), then `saveconfig`.

// Not called outside the tests until a runtime LIO backend exists (see above).
#![cfg_attr(not(test), allow(dead_code))]

use csg_protocol::methods::iscsi::TargetName;
use thiserror::Error;

use crate::backends::tgt::WantTarget;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LioError {
    #[error(
        "networks: the lio backend has no address-based access rules; list initiators instead"
    )]
    Networks,
    #[error(
        "luns: without initiators (demo mode) the lio backend can only make all LUNs read-only \
         or none"
    )]
    MixedReadonly,
}

/// One `targetcli` invocation (arguments after the program name).
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd(pub Vec<String>);

impl Cmd {
    fn new(parts: &[&str]) -> Self {
        Cmd(parts.iter().map(|s| s.to_string()).collect())
    }

    /// For logs and errors: `password=` and `mutual_password=` values hidden.
    pub fn redacted(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, _)) if k.ends_with("password") => format!("{k}=<hidden>"),
                _ => a.clone(),
            })
            .collect();
        format!("targetcli {}", parts.join(" "))
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn backstore(name: &TargetName, lun: u16, device: bool) -> (String, String) {
    let so = format!("csg-{name}-{lun}");
    let kind = if device { "block" } else { "fileio" };
    (format!("/backstores/{kind}"), so)
}

fn bool_s(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// The commands that create `t` from nothing, ending with `saveconfig`.
pub fn create(name: &TargetName, t: &WantTarget) -> Result<Vec<Cmd>, LioError> {
    let mut v = create_body(name, t)?;
    v.push(Cmd::new(&["saveconfig"]));
    Ok(v)
}

fn create_body(name: &TargetName, t: &WantTarget) -> Result<Vec<Cmd>, LioError> {
    if !t.networks.is_empty() {
        return Err(LioError::Networks);
    }
    let demo = t.initiators.is_empty() && t.chap.is_some();
    let all_ro = t.luns.iter().all(|l| l.readonly);
    if demo && !all_ro && t.luns.iter().any(|l| l.readonly) {
        return Err(LioError::MixedReadonly);
    }
    let iqn = t.iqn.as_str();
    let tpg = format!("/iscsi/{iqn}/tpg1");
    let mut v = Vec::new();
    for l in &t.luns {
        let (dir, so) = backstore(name, l.lun, l.path.is_device);
        if l.path.is_device {
            v.push(Cmd::new(&[
                &dir,
                "create",
                &format!("name={so}"),
                &format!("dev={}", l.path.as_str()),
            ]));
        } else {
            v.push(Cmd::new(&[
                &dir,
                "create",
                &format!("name={so}"),
                &format!("file_or_dev={}", l.path.as_str()),
                "write_back=false",
            ]));
        }
    }
    v.push(Cmd::new(&["/iscsi", "create", &format!("wwn={iqn}")]));
    for l in &t.luns {
        let (dir, so) = backstore(name, l.lun, l.path.is_device);
        v.push(Cmd::new(&[
            &format!("{tpg}/luns"),
            "create",
            &format!("storage_object={dir}/{so}"),
            &format!("lun={}", l.lun),
            "add_mapped_luns=false",
        ]));
    }
    let auth = bool_s(t.chap.is_some());
    if demo {
        v.push(Cmd::new(&[
            &tpg,
            "set",
            "attribute",
            &format!("authentication={auth}"),
            "generate_node_acls=1",
            "cache_dynamic_acls=1",
            &format!(
                "demo_mode_write_protect={}",
                bool_s(!t.luns.is_empty() && all_ro)
            ),
        ]));
    } else {
        v.push(Cmd::new(&[
            &tpg,
            "set",
            "attribute",
            &format!("authentication={auth}"),
            "generate_node_acls=0",
            "demo_mode_write_protect=1",
        ]));
    }
    let auth_args = |c: &csg_protocol::methods::iscsi::Chap| {
        let mut a = vec![
            "set".to_string(),
            "auth".to_string(),
            format!("userid={}", c.username.as_str()),
            format!("password={}", c.secret.expose()),
        ];
        if let Some((u, s)) = &c.mutual {
            a.push(format!("mutual_userid={}", u.as_str()));
            a.push(format!("mutual_password={}", s.expose()));
        }
        a
    };
    if demo {
        let c = t.chap.as_ref().expect("demo mode has CHAP");
        let mut a = vec![tpg.clone()];
        a.extend(auth_args(c));
        v.push(Cmd(a));
    }
    for i in &t.initiators {
        let acl = format!("{tpg}/acls/{i}");
        v.push(Cmd::new(&[
            &format!("{tpg}/acls"),
            "create",
            &format!("wwn={i}"),
            "add_mapped_luns=false",
        ]));
        for l in &t.luns {
            v.push(Cmd::new(&[
                &acl,
                "create",
                &format!("mapped_lun={}", l.lun),
                &format!("tpg_lun_or_backstore={}", l.lun),
                &format!("write_protect={}", bool_s(l.readonly)),
            ]));
        }
        if let Some(c) = &t.chap {
            let mut a = vec![acl.clone()];
            a.extend(auth_args(c));
            v.push(Cmd(a));
        }
    }
    Ok(v)
}

/// The commands that remove `t` (the target, then its backstores), ending with `saveconfig`.
pub fn delete(name: &TargetName, t: &WantTarget) -> Vec<Cmd> {
    let mut v = delete_body(name, t);
    v.push(Cmd::new(&["saveconfig"]));
    v
}

fn delete_body(name: &TargetName, t: &WantTarget) -> Vec<Cmd> {
    let mut v = vec![Cmd::new(&[
        "/iscsi",
        "delete",
        &format!("wwn={}", t.iqn.as_str()),
    ])];
    for l in &t.luns {
        let (dir, so) = backstore(name, l.lun, l.path.is_device);
        v.push(Cmd::new(&[&dir, "delete", &format!("name={so}")]));
    }
    v
}

/// The commands that turn `prev` into `next`: delete and create again, one `saveconfig`.
pub fn update(
    name: &TargetName,
    prev: &WantTarget,
    next: &WantTarget,
) -> Result<Vec<Cmd>, LioError> {
    let mut v = delete_body(name, prev);
    v.extend(create_body(name, next)?);
    v.push(Cmd::new(&["saveconfig"]));
    Ok(v)
}

/// Whether this host can run LIO at all (configfs with the target core mounted).
pub fn configfs_present() -> bool {
    std::path::Path::new("/sys/kernel/config/target").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::tgt::WantLun;
    use crate::storage::paths::{PathKind, Roots};
    use csg_protocol::methods::iscsi::{Chap, ChapSecret, ChapUser, CidrKey, Iqn};
    use std::collections::BTreeSet;

    fn fixture() -> (tempfile::TempDir, String, WantTarget) {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        for f in ["a.img", "b.img"] {
            std::fs::write(root.join(f), b"").unwrap();
        }
        let roots = Roots::new(vec![root.clone()]);
        let p = |f: &str| {
            roots
                .resolve(
                    "p",
                    root.join(f).to_str().unwrap(),
                    PathKind::BackingFile { devices: false },
                )
                .unwrap()
        };
        let t = WantTarget {
            iqn: Iqn::parse("i", "iqn.2026-11.com.example.csg:vol1").unwrap(),
            luns: vec![
                WantLun {
                    lun: 1,
                    path: p("a.img"),
                    readonly: false,
                },
                WantLun {
                    lun: 2,
                    path: p("b.img"),
                    readonly: true,
                },
            ],
            initiators: [Iqn::parse("i", "iqn.1994-05.com.redhat:c1").unwrap()].into(),
            networks: BTreeSet::new(),
            chap: Some(Chap {
                username: ChapUser::parse("u", "alice").unwrap(),
                secret: ChapSecret::parse("s", "Secret12chars").unwrap(),
                mutual: Some((
                    ChapUser::parse("u", "gw").unwrap(),
                    ChapSecret::parse("s", "Mutual12chars").unwrap(),
                )),
            }),
        };
        (d, root.display().to_string(), t)
    }

    fn lines(v: &[Cmd]) -> Vec<String> {
        v.iter().map(|c| c.0.join(" ")).collect()
    }

    #[test]
    fn create_with_initiators_and_mutual_chap() {
        let (_d, r, t) = fixture();
        let name = TargetName::parse("vol1").unwrap();
        let got = lines(&create(&name, &t).unwrap());
        let tpg = "/iscsi/iqn.2026-11.com.example.csg:vol1/tpg1";
        let acl = format!("{tpg}/acls/iqn.1994-05.com.redhat:c1");
        assert_eq!(
            got,
            vec![
                format!("/backstores/fileio create name=csg-vol1-1 file_or_dev={r}/a.img write_back=false"),
                format!("/backstores/fileio create name=csg-vol1-2 file_or_dev={r}/b.img write_back=false"),
                "/iscsi create wwn=iqn.2026-11.com.example.csg:vol1".to_string(),
                format!("{tpg}/luns create storage_object=/backstores/fileio/csg-vol1-1 lun=1 add_mapped_luns=false"),
                format!("{tpg}/luns create storage_object=/backstores/fileio/csg-vol1-2 lun=2 add_mapped_luns=false"),
                format!("{tpg} set attribute authentication=1 generate_node_acls=0 demo_mode_write_protect=1"),
                format!("{tpg}/acls create wwn=iqn.1994-05.com.redhat:c1 add_mapped_luns=false"),
                format!("{acl} create mapped_lun=1 tpg_lun_or_backstore=1 write_protect=0"),
                format!("{acl} create mapped_lun=2 tpg_lun_or_backstore=2 write_protect=1"),
                format!("{acl} set auth userid=alice password=Secret12chars mutual_userid=gw mutual_password=Mutual12chars"),
                "saveconfig".to_string(),
            ]
        );
        let shown = format!("{:?}", create(&name, &t).unwrap());
        assert!(
            !shown.contains("Secret12") && !shown.contains("Mutual12"),
            "{shown}"
        );
        assert!(shown.contains("password=<hidden> mutual_userid=gw mutual_password=<hidden>"));
    }

    #[test]
    fn demo_mode_chap_delete_update_and_refusals() {
        let (_d, r, mut t) = fixture();
        let name = TargetName::parse("vol1").unwrap();
        let tpg = "/iscsi/iqn.2026-11.com.example.csg:vol1/tpg1";
        // No initiators: TPG-level CHAP; mixing read-only and writable LUNs is refused.
        t.initiators.clear();
        assert_eq!(create(&name, &t), Err(LioError::MixedReadonly));
        t.luns[1].readonly = false;
        t.chap.as_mut().unwrap().mutual = None;
        let got = lines(&create(&name, &t).unwrap());
        assert_eq!(
            got[5..],
            [
                format!("{tpg} set attribute authentication=1 generate_node_acls=1 cache_dynamic_acls=1 demo_mode_write_protect=0"),
                format!("{tpg} set auth userid=alice password=Secret12chars"),
                "saveconfig".to_string(),
            ]
        );
        // Address rules cannot be expressed.
        let mut n = t.clone();
        n.networks.insert(CidrKey(
            csg_protocol::validate::Cidr::parse("10.0.0.0/8").unwrap(),
        ));
        assert_eq!(create(&name, &n), Err(LioError::Networks));
        // delete: target first, then its backstores.
        assert_eq!(
            lines(&delete(&name, &t)),
            vec![
                "/iscsi delete wwn=iqn.2026-11.com.example.csg:vol1",
                "/backstores/fileio delete name=csg-vol1-1",
                "/backstores/fileio delete name=csg-vol1-2",
                "saveconfig",
            ]
        );
        // update: delete then create, one saveconfig at the end.
        let mut next = t.clone();
        next.luns.truncate(1);
        let u = lines(&update(&name, &t, &next).unwrap());
        assert_eq!(u[0], "/iscsi delete wwn=iqn.2026-11.com.example.csg:vol1");
        assert_eq!(
            u[3],
            format!(
                "/backstores/fileio create name=csg-vol1-1 file_or_dev={r}/a.img write_back=false"
            )
        );
        assert_eq!(u.iter().filter(|l| *l == "saveconfig").count(), 1);
        assert_eq!(u.last().unwrap(), "saveconfig");
        // No initiators and no CHAP: nobody gets in.
        let mut closed = t.clone();
        closed.chap = None;
        let c = lines(&create(&name, &closed).unwrap());
        assert!(c.contains(&format!(
            "{tpg} set attribute authentication=0 generate_node_acls=0 demo_mode_write_protect=1"
        )));
        assert!(!c.iter().any(|l| l.contains("/acls")));
    }
}
