//! SMB shares as the Samba backend takes them: the registry parameters a share spec stands
//! for, drift between two parameter sets, the snapshot of the registry, the plan of one share
//! change, and the backend trait.

use std::collections::BTreeMap;
use std::future::Future;

use csg_protocol::methods::smb::{GroupName, Password, ShareName, ShareSpec, UserName};

use super::Change;
use crate::exec::ToolError;

/// One share's parameters: lower-case name → value, as the registry holds them.
pub type Params = BTreeMap<String, String>;

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn join<T: std::fmt::Display>(l: &[T]) -> String {
    l.iter()
        .map(std::string::ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The registry parameters for `spec`, in a fixed order. Empty lists and unset options are left
/// out (Samba's defaults apply); `wide links = no` is always set so no symlink inside the share
/// can lead out of it.
pub fn share_params(spec: &ShareSpec) -> Vec<(&'static str, String)> {
    let mut p = vec![("path", spec.path.as_str().to_string())];
    if !spec.comment.is_empty() {
        p.push(("comment", spec.comment.as_str().to_string()));
    }
    p.push(("read only", yes_no(spec.read_only)));
    p.push(("browseable", yes_no(spec.browseable)));
    p.push(("guest ok", yes_no(spec.guest_ok)));
    for (k, l) in [
        ("valid users", &spec.valid_users),
        ("write list", &spec.write_list),
        ("admin users", &spec.admin_users),
    ] {
        if !l.is_empty() {
            p.push((k, join(l)));
        }
    }
    for (k, l) in [
        ("hosts allow", &spec.hosts_allow),
        ("hosts deny", &spec.hosts_deny),
    ] {
        if !l.is_empty() {
            p.push((k, join(l)));
        }
    }
    p.push(("create mask", spec.create_mask.to_string()));
    p.push(("directory mask", spec.directory_mask.to_string()));
    if let Some(u) = &spec.force_user {
        p.push(("force user", u.to_string()));
    }
    if let Some(g) = &spec.force_group {
        p.push(("force group", g.to_string()));
    }
    p.push((
        "access based share enum",
        yes_no(spec.access_based_enumeration),
    ));
    if let Some(e) = spec.encrypt.samba_value() {
        // `smb encrypt` is stored under its canonical name.
        p.push(("server smb encrypt", e.to_string()));
    }
    p.push(("wide links", "no".to_string()));
    p
}

/// The same parameters as a map, to compare with what the registry reports.
pub fn share_param_map(spec: &ShareSpec) -> Params {
    share_params(spec)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Every difference between the parameters the agent wants and those the registry has.
pub fn drift(desired: &Params, actual: Option<&Params>) -> Vec<String> {
    let Some(actual) = actual else {
        return vec!["missing from Samba's registry".to_string()];
    };
    let mut d = Vec::new();
    for (k, want) in desired {
        match actual.get(k) {
            None => d.push(format!("{k}: not set, want {want:?}")),
            Some(have) if have != want => d.push(format!("{k}: {have:?}, want {want:?}")),
            _ => {}
        }
    }
    for (k, have) in actual {
        if !desired.contains_key(k) {
            d.push(format!("{k}: {have:?} is set, want it unset"));
        }
    }
    d
}

/// Every section of the registry config, in order, names as the registry spells them.
pub type Registry = Vec<(String, Params)>;

/// The registry section of share `name`, matched case-insensitively.
pub fn find<'a>(reg: &'a Registry, name: &ShareName) -> Option<&'a (String, Params)> {
    reg.iter().find(|(n, _)| name.same(n))
}

/// One share change, ready to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePlan {
    pub name: ShareName,
    /// The registry section from what the snapshot held to what is wanted; `None` when neither
    /// has it (a delete finishing one Samba already lost: only its sessions are closed).
    pub change: Option<Change<Params>>,
}

impl SharePlan {
    /// From the registry snapshot to `want` (`None`: the share is deleted).
    pub fn new(reg: &Registry, name: &ShareName, want: Option<&ShareSpec>) -> Self {
        let before = find(reg, name).map(|(_, p)| p.clone());
        Self {
            name: name.clone(),
            change: Change::between(before, want.map(share_param_map)),
        }
    }

    pub fn before(&self) -> Option<&Params> {
        self.change.as_ref().and_then(Change::before)
    }

    pub fn after(&self) -> Option<&Params> {
        self.change.as_ref().and_then(Change::after)
    }
}

/// A Samba-like server: registry shares, a passdb, and the Unix accounts behind its users.
pub trait SmbBackend: Send + Sync {
    /// `samba`.
    fn kind(&self) -> &'static str;
    /// Whether smbd answers; `Unavailable` when it does not.
    fn ping(&self) -> impl Future<Output = Result<(), ToolError>> + Send;
    /// Refuses unless the server serves registry shares.
    fn check_registry(&self) -> impl Future<Output = Result<(), ToolError>> + Send;
    /// The registry as it is now.
    fn observe(&self) -> impl Future<Output = Result<Registry, ToolError>> + Send;
    /// Carries out the plan, reloads and reads the share back.
    fn apply(&self, plan: &SharePlan) -> impl Future<Output = Result<(), ToolError>> + Send;
    /// Puts back the section the plan's snapshot held, after a failed `apply`.
    fn undo(&self, plan: &SharePlan) -> impl Future<Output = Result<(), ToolError>> + Send;
    /// Replaces share `name` with exactly `params`, in one registry transaction.
    fn import(
        &self,
        name: &ShareName,
        params: &Params,
    ) -> impl Future<Output = Result<(), ToolError>> + Send;
    fn delete(&self, name: &ShareName) -> impl Future<Output = Result<(), ToolError>> + Send;
    /// Drops the sessions on a deleted share.
    fn close_share(&self, name: &str) -> impl Future<Output = Result<(), ToolError>> + Send;
    fn reload(&self) -> impl Future<Output = Result<(), ToolError>> + Send;
    /// Names in the passdb.
    fn passdb_users(&self) -> impl Future<Output = Result<Vec<String>, ToolError>> + Send;
    /// Adds the user to the passdb or changes its password.
    fn set_password(
        &self,
        user: &UserName,
        pw: &Password,
    ) -> impl Future<Output = Result<(), ToolError>> + Send;
    fn delete_user(&self, user: &UserName) -> impl Future<Output = Result<(), ToolError>> + Send;
    fn unix_uid(
        &self,
        user: &UserName,
    ) -> impl Future<Output = Result<Option<u32>, ToolError>> + Send;
    fn unix_gid(
        &self,
        group: &GroupName,
    ) -> impl Future<Output = Result<Option<u32>, ToolError>> + Send;
    /// A system account with no home and no login shell, for an SMB user.
    fn useradd(&self, user: &UserName) -> impl Future<Output = Result<(), ToolError>> + Send;
    fn userdel(&self, user: &UserName) -> impl Future<Output = Result<(), ToolError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ShareSpec {
        let m = serde_json::json!({"name": name, "path": "/srv/csg/data"});
        let serde_json::Value::Object(m) = m else {
            unreachable!()
        };
        ShareSpec::from_params(m).unwrap()
    }

    #[test]
    fn a_share_plan_goes_from_the_registry_to_the_spec() {
        let data = ShareName::parse("data").unwrap();
        let held = share_param_map(&spec("data"));
        let reg: Registry = vec![("Data".into(), held.clone())];
        // Names match whatever case the registry spells them in.
        assert_eq!(find(&reg, &data).map(|(n, _)| n.as_str()), Some("Data"));
        let p = SharePlan::new(&reg, &data, Some(&spec("data")));
        assert_eq!((p.before(), p.after()), (Some(&held), Some(&held)));
        let p = SharePlan::new(&reg, &data, None);
        assert_eq!(p.change, Some(Change::Delete(held.clone())));
        let p = SharePlan::new(&Registry::new(), &data, Some(&spec("data")));
        assert_eq!(p.change, Some(Change::Create(held)));
        assert_eq!(SharePlan::new(&Registry::new(), &data, None).change, None);
    }
}
