//! Samba: shares in Samba's registry (`net conf`), users in its passdb (`smbpasswd`,
//! `pdbedit`), reloads through `smbcontrol`. Every program gets `-s`/`-c` with the configured
//! smb.conf, so a private smbd can be driven.
//!
//! Why the registry: each value is stored as a registry value, so there is no line-based
//! re-parsing (no newline or section injection through a value), Samba itself checks every
//! parameter name and value, and `net conf import FILE SHARE` replaces one share in one tdb
//! transaction. Changing a share goes through that import (after a `-T` dry run that parses the
//! file) rather than `addshare` + one `setparm` per parameter: a failure half-way through a
//! series of `setparm` calls would leave a half-changed share, while an import either replaces
//! the whole section or changes nothing. `net conf import FILE` without a share name drops the
//! whole registry first: this file never builds such a command (see `import_argv`).
//!
//! This module renders parameters and argument vectors (pure, unit-tested) and runs them; the
//! rules of what may be changed (ownership, idempotence, rollback) live in `families/smb.rs`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csg_protocol::methods::smb::{GroupName, Password, ShareName, UserName};

use crate::config::smb::SmbSettings;
use crate::exec::{self, Program, ToolError};
use crate::model::smb::{drift, Params, Registry, SharePlan, SmbBackend};
use crate::model::Change;

/// Most stderr kept in an error message.
const MAX_STDERR: usize = 2000;

fn bounded(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() <= MAX_STDERR {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_STDERR).collect();
        t.push_str(" …");
        t
    }
}

/// One share in smb.conf format, for `net conf import`. Only validated values reach this (no
/// control characters, no `[`-led names): one line per parameter, nothing else.
pub fn render_section<'a>(
    name: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut s = format!("[{name}]\n");
    for (k, v) in params {
        s.push('\t');
        s.push_str(k);
        s.push_str(" = ");
        s.push_str(v);
        s.push('\n');
    }
    s
}

/// Parses `net conf list` / `net conf showshare` output: `[name]` lines, then `\tkey = value`.
/// Returns the sections in order, names as the registry spells them.
pub fn parse_conf(text: &str) -> Registry {
    let mut out = Registry::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            out.push((name.to_string(), Params::new()));
        } else if let (Some((k, v)), Some(last)) = (t.split_once('='), out.last_mut()) {
            last.1
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

/// `net -s CONF conf import [-T] FILE SHARE`: always with the share name. (Without it, net
/// drops every registry share before importing.)
pub fn import_argv(conf: &Path, file: &Path, share: &ShareName, test: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-s".into(), conf.into(), "conf".into(), "import".into()];
    if test {
        a.push("-T".into());
    }
    a.push(file.into());
    a.push(share.as_str().into());
    a
}

/// What smbpasswd reads on stdin for `-s -a`: the new password twice.
pub fn password_stdin(p: &Password) -> Vec<u8> {
    format!("{0}\n{0}\n", p.expose()).into_bytes()
}

pub struct Samba {
    cfg: SmbSettings,
    timeout: Duration,
    /// Where a share is rendered for `net conf import` (mode 0600, removed afterwards).
    import_file: PathBuf,
}

impl Samba {
    pub fn new(cfg: SmbSettings, timeout: Duration, state_dir: &Path) -> Self {
        Self {
            cfg,
            timeout,
            import_file: state_dir.join(".smb-import.conf.tmp"),
        }
    }

    pub fn conf(&self) -> &Path {
        &self.cfg.smb_conf
    }

    fn program(&self, path: &Path) -> Program {
        Program::new(path, self.timeout)
    }

    fn net(&self) -> Program {
        self.program(&self.cfg.net)
            .arg("-s")
            .arg(&self.cfg.smb_conf)
            .arg("conf")
    }

    /// Runs `p`; a non-zero exit is an error carrying its stderr (bounded).
    async fn run_ok(&self, p: &Program, stdin: Option<&[u8]>) -> Result<String, ToolError> {
        match exec::run_ok(p, stdin).await {
            Ok(o) => Ok(o.stdout),
            Err(ToolError::Failed {
                program,
                status,
                stderr,
            }) => Err(ToolError::Failed {
                program,
                status,
                stderr: bounded(&stderr),
            }),
            Err(e) => Err(e),
        }
    }

    /// The share's registry parameters, `None` if the registry has no such share.
    async fn show(&self, name: &ShareName) -> Result<Option<(String, Params)>, ToolError> {
        Ok(self
            .observe()
            .await?
            .into_iter()
            .find(|(n, _)| name.same(n)))
    }

    fn smbcontrol(&self) -> Program {
        self.program(&self.cfg.smbcontrol)
            .arg("-s")
            .arg(&self.cfg.smb_conf)
            .arg("smbd")
    }

    /// `getent DB NAME`: the entry's third field (uid or gid), `None` when there is none.
    async fn getent(&self, db: &str, name: &str) -> Result<Option<u32>, ToolError> {
        let p = self.program(&self.cfg.getent).arg(db).arg(name);
        let out = exec::run(&p, None).await?;
        match out.status {
            0 => Ok(out
                .stdout
                .lines()
                .next()
                .and_then(|l| l.split(':').nth(2))
                .and_then(|id| id.trim().parse().ok())),
            2 => Ok(None),
            status => Err(ToolError::Failed {
                program: p.display(),
                status,
                stderr: bounded(&out.stderr),
            }),
        }
    }
}

impl SmbBackend for Samba {
    fn kind(&self) -> &'static str {
        "samba"
    }

    /// Whether smbd answers `smbcontrol smbd ping` (it finds smbd through the pid file of the
    /// configured smb.conf).
    async fn ping(&self) -> Result<(), ToolError> {
        let p = self.smbcontrol().arg("ping");
        let detail = match exec::run(&p, None).await {
            Ok(o) if o.status == 0 => return Ok(()),
            Ok(o) => bounded(&format!("{}{}", o.stderr, o.stdout)),
            Err(e @ exec::ExecError::Spawn { .. }) => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        Err(ToolError::Unavailable {
            program: p.display(),
            detail: format!("smbd is not running: {detail}"),
        })
    }

    /// Refuses to go on unless smb.conf enables registry shares (`include = registry`).
    async fn check_registry(&self) -> Result<(), ToolError> {
        let p = self
            .program(&self.cfg.testparm)
            .args(["-s", "--parameter-name=registry shares"])
            .arg(&self.cfg.smb_conf);
        let out = self.run_ok(&p, None).await?;
        if out.trim().eq_ignore_ascii_case("yes") {
            Ok(())
        } else {
            Err(ToolError::Unexpected(format!(
                "{} does not enable registry shares: add `include = registry` at the end of its \
                 [global] section (testparm says registry shares = {:?})",
                self.cfg.smb_conf.display(),
                out.trim()
            )))
        }
    }

    /// Every section of the registry config (`[global]` included when it has one).
    async fn observe(&self) -> Result<Registry, ToolError> {
        let out = self.run_ok(&self.net().arg("list"), None).await?;
        Ok(parse_conf(&out))
    }

    async fn apply(&self, plan: &SharePlan) -> Result<(), ToolError> {
        let name = &plan.name;
        match &plan.change {
            Some(Change::Create(to) | Change::Update { to, .. }) => self.import(name, to).await?,
            Some(Change::Delete(_)) => {
                self.delete(name).await?;
                self.close_share(name.as_str()).await?;
            }
            None => self.close_share(name.as_str()).await?,
        }
        self.reload().await?;
        let actual = self.show(name).await?;
        let d = match (plan.after(), &actual) {
            (Some(want), a) => drift(want, a.as_ref().map(|(_, p)| p)),
            (None, Some(_)) => vec!["still in the registry after delshare".into()],
            (None, None) => vec![],
        };
        if !d.is_empty() {
            return Err(ToolError::Unexpected(format!(
                "read back from the registry differs: {}",
                d.join("; ")
            )));
        }
        Ok(())
    }

    async fn undo(&self, plan: &SharePlan) -> Result<(), ToolError> {
        match plan.before() {
            Some(p) => self.import(&plan.name, p).await?,
            None => {
                if self.show(&plan.name).await?.is_some() {
                    self.delete(&plan.name).await?;
                }
            }
        }
        self.reload().await
    }

    async fn import(&self, name: &ShareName, params: &Params) -> Result<(), ToolError> {
        let text = render_section(
            name.as_str(),
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let file = self.import_file.clone();
        let bytes = text.into_bytes();
        tokio::task::spawn_blocking({
            let file = file.clone();
            move || crate::fsutil::write_atomic(&file, &bytes, 0o600)
        })
        .await
        .map_err(|e| ToolError::Unexpected(e.to_string()))?
        .map_err(|e| ToolError::Unexpected(format!("cannot write {}: {e}", file.display())))?;
        let run = async {
            for test in [true, false] {
                let p = self.program(&self.cfg.net).args(import_argv(
                    &self.cfg.smb_conf,
                    &file,
                    name,
                    test,
                ));
                self.run_ok(&p, None).await?;
            }
            Ok(())
        };
        let r = run.await;
        let _ = std::fs::remove_file(&file);
        r
    }

    async fn delete(&self, name: &ShareName) -> Result<(), ToolError> {
        self.run_ok(&self.net().arg("delshare").arg(name.as_str()), None)
            .await
            .map(|_| ())
    }

    async fn close_share(&self, name: &str) -> Result<(), ToolError> {
        self.run_ok(&self.smbcontrol().arg("close-share").arg(name), None)
            .await
            .map(|_| ())
    }

    async fn reload(&self) -> Result<(), ToolError> {
        self.run_ok(&self.smbcontrol().arg("reload-config"), None)
            .await
            .map(|_| ())
    }

    /// Names in Samba's passdb (`pdbedit -L`: `name:uid:full name`).
    async fn passdb_users(&self) -> Result<Vec<String>, ToolError> {
        let p = self
            .program(&self.cfg.pdbedit)
            .arg("-s")
            .arg(&self.cfg.smb_conf)
            .arg("-L");
        let out = self.run_ok(&p, None).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect())
    }

    /// The password goes on stdin only.
    async fn set_password(&self, user: &UserName, pw: &Password) -> Result<(), ToolError> {
        let p = self
            .program(&self.cfg.smbpasswd)
            .arg("-c")
            .arg(&self.cfg.smb_conf)
            .args(["-s", "-a"])
            .arg(user.as_str());
        let stdin = password_stdin(pw);
        self.run_ok(&p, Some(&stdin)).await.map(|_| ())
    }

    async fn delete_user(&self, user: &UserName) -> Result<(), ToolError> {
        let p = self
            .program(&self.cfg.smbpasswd)
            .arg("-c")
            .arg(&self.cfg.smb_conf)
            .arg("-x")
            .arg(user.as_str());
        self.run_ok(&p, None).await.map(|_| ())
    }

    async fn unix_uid(&self, user: &UserName) -> Result<Option<u32>, ToolError> {
        self.getent("passwd", user.as_str()).await
    }

    async fn unix_gid(&self, g: &GroupName) -> Result<Option<u32>, ToolError> {
        self.getent("group", g.as_str()).await
    }

    /// A system account with no home and no login shell: it exists only so Samba can map the
    /// SMB user to a uid.
    async fn useradd(&self, user: &UserName) -> Result<(), ToolError> {
        let p = self
            .program(&self.cfg.useradd)
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--",
            ])
            .arg(user.as_str());
        self.run_ok(&p, None).await.map(|_| ())
    }

    async fn userdel(&self, user: &UserName) -> Result<(), ToolError> {
        let p = self.program(&self.cfg.userdel).arg("--").arg(user.as_str());
        self.run_ok(&p, None).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::smb::{share_param_map, share_params};
    use csg_protocol::methods::smb::ShareSpec;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> ShareSpec {
        let mut m = json!({"name": "data", "path": "/srv/csg/data"})
            .as_object()
            .unwrap()
            .clone();
        m.extend(extra.as_object().unwrap().clone());
        ShareSpec::from_params(m).unwrap()
    }

    #[test]
    fn renders_defaults_and_keeps_wide_links_off() {
        let s = spec(json!({}));
        let text = render_section(
            s.name.as_str(),
            share_params(&s).iter().map(|(k, v)| (*k, v.as_str())),
        );
        assert_eq!(
            text,
            "[data]\n\
             \tpath = /srv/csg/data\n\
             \tread only = yes\n\
             \tbrowseable = yes\n\
             \tguest ok = no\n\
             \tcreate mask = 0744\n\
             \tdirectory mask = 0755\n\
             \taccess based share enum = no\n\
             \twide links = no\n"
        );
    }

    #[test]
    fn renders_every_option() {
        let s = spec(json!({
            "comment": "Finance; #1",
            "read_only": false,
            "browseable": false,
            "guest_ok": true,
            "valid_users": ["alice", "@staff"],
            "write_list": ["alice"],
            "admin_users": ["@admins"],
            "hosts_allow": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"],
            "hosts_deny": ["0.0.0.0/0"],
            "create_mask": "0640",
            "directory_mask": "750",
            "force_user": "svc",
            "force_group": "staff",
            "access_based_enumeration": true,
            "encrypt": "required"
        }));
        let m = share_param_map(&s);
        let want: Params = [
            ("path", "/srv/csg/data"),
            ("comment", "Finance; #1"),
            ("read only", "no"),
            ("browseable", "no"),
            ("guest ok", "yes"),
            ("valid users", "alice @staff"),
            ("write list", "alice"),
            ("admin users", "@admins"),
            ("hosts allow", "10.0.0.0/8 192.0.2.7 2001:db8::/32"),
            ("hosts deny", "0.0.0.0/0"),
            ("create mask", "0640"),
            ("directory mask", "0750"),
            ("force user", "svc"),
            ("force group", "staff"),
            ("access based share enum", "yes"),
            ("server smb encrypt", "required"),
            ("wide links", "no"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn parses_net_conf_output_and_names_drift() {
        let text = "[global]\n\tworkgroup = X\n\n[Data]\n\tpath = /srv/csg/data\n\
                    \tadmin users = \n\tcomment = a = b\n";
        let p = parse_conf(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].0, "Data");
        assert_eq!(p[1].1["comment"], "a = b");
        assert_eq!(p[1].1["admin users"], "");
        let mut want = Params::new();
        want.insert("path".into(), "/srv/csg/data".into());
        want.insert("comment".into(), "x".into());
        want.insert("read only".into(), "yes".into());
        let d = drift(&want, Some(&p[1].1));
        assert_eq!(
            d,
            vec![
                "comment: \"a = b\", want \"x\"".to_string(),
                "read only: not set, want \"yes\"".to_string(),
                "admin users: \"\" is set, want it unset".to_string(),
            ]
        );
        assert!(drift(&want, Some(&want)).is_empty());
        assert_eq!(drift(&want, None).len(), 1);
    }

    #[test]
    fn import_always_names_the_share() {
        let n = ShareName::parse("data").unwrap();
        let a = import_argv(Path::new("/c/smb.conf"), Path::new("/s/f"), &n, true);
        assert_eq!(
            a,
            ["-s", "/c/smb.conf", "conf", "import", "-T", "/s/f", "data"]
                .map(OsString::from)
                .to_vec()
        );
        let a = import_argv(Path::new("/c/smb.conf"), Path::new("/s/f"), &n, false);
        assert_eq!(a.last().unwrap(), "data");
        assert_eq!(a.len(), 6);
    }

    #[test]
    fn password_goes_twice_on_stdin() {
        let p = Password::parse("Secret123456").unwrap();
        assert_eq!(password_stdin(&p), b"Secret123456\nSecret123456\n");
    }
}
