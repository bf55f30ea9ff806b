//! A stand-in for targetcli(8), for the LIO backend's tests: a mock, because this kernel has no
//! configfs (`/sys/kernel/config/target` does not exist), so neither LIO nor the real targetcli
//! can run here.
//!
//! It records every argv, one line per call, and keeps a fake configfs tree the way LIO would
//! (`core/<hba>/<object>/udev_path`, `iscsi/<iqn>/tpgt_1/{enable,attrib,auth,lun,acls,np}`, LUN
//! and mapped-LUN symlinks, ACL `auth` and `info`), so that the agent's read-back works. Like
//! the real one it refuses to create what exists and to delete what does not. `saveconfig`
//! records a listing of the tree. It can be told to fail the next call whose argv contains a
//! given text (exit 1, a message on stderr, nothing changed). Run without arguments it reads
//! one command per line on stdin, as targetcli does, recording each like an argv; it refuses a
//! secret (`password=`) in argv.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct TargetcliStub {
    pub dir: PathBuf,
    /// The fake configfs target root (`iscsi.configfs_root`).
    pub root: PathBuf,
}

const SCRIPT: &str = r#"#!/bin/sh
# Stand-in for targetcli: see tests/src/targetcli_stub.rs.
D=@DIR@
R=@ROOT@
die() { echo "stub targetcli: $*" >&2; exit 1; }
main() {
printf '%s\n' "$*" >> "$D/argv"
if [ -f "$D/fail-on" ]; then
  pat=$(cat "$D/fail-on")
  case "$*" in *"$pat"*) rm -f "$D/fail-on"; die "injected failure on: $pat" ;; esac
fi
get() { k=$1; shift; for a; do case "$a" in "$k"=*) printf '%s' "${a#*=}"; return 0 ;; esac; done; return 1; }
hba() { case "$1" in fileio) echo fileio_0 ;; block) echo iblock_0 ;; *) die "unknown backstore type $1" ;; esac; }
setauth() {
  dir=$1; shift
  for a; do
    case "$a" in
      userid=*) printf '%s\n' "${a#*=}" > "$dir/userid" ;;
      password=*) printf '%s\n' "${a#*=}" > "$dir/password" ;;
      mutual_userid=*) printf '%s\n' "${a#*=}" > "$dir/userid_mutual" ;;
      mutual_password=*) printf '%s\n' "${a#*=}" > "$dir/password_mutual" ;;
      *) die "unknown auth parameter $a" ;;
    esac
  done
}
emptyauth() { mkdir -p "$1"; for f in userid password userid_mutual password_mutual; do echo > "$1/$f"; done; }
p=$1
[ $# -gt 0 ] && shift
case "$p" in
saveconfig)
  [ $# -eq 0 ] || die "saveconfig: unexpected arguments"
  (cd "$R" && find . | sort) > "$D/saved"
  echo "Configuration saved to /etc/target/saveconfig.json"
  ;;
/backstores/fileio|/backstores/block)
  kind=${p#/backstores/}; h="$R/core/$(hba "$kind")"
  name=$(get name "$@") || die "name= is required"
  case "$1" in
  create)
    [ -e "$h/$name" ] && die "Storage object $kind/$name exists"
    if [ "$kind" = fileio ]; then
      dev=$(get file_or_dev "$@") || die "file_or_dev= is required"
      [ -f "$dev" ] || die "$dev does not exist and no size was given"
    else
      dev=$(get dev "$@") || die "dev= is required"
      [ -b "$dev" ] || die "$dev is not a block device"
    fi
    mkdir -p "$h/$name" && printf '%s\n' "$dev" > "$h/$name/udev_path" && echo 1 > "$h/$name/enable"
    ;;
  delete)
    [ -d "$h/$name" ] || die "No storage object named $name"
    rm -rf "$h/$name"
    ;;
  *) die "unexpected: $*" ;;
  esac
  ;;
/iscsi)
  wwn=$(get wwn "$@") || die "wwn= is required"
  t="$R/iscsi/$wwn"
  case "$1" in
  create)
    [ -e "$t" ] && die "This Target already exists in configFS"
    g="$t/tpgt_1"
    mkdir -p "$g/attrib" "$g/lun" "$g/acls" "$g/np/0.0.0.0:3260"
    echo 1 > "$g/enable"
    echo 0 > "$g/attrib/authentication"
    echo 0 > "$g/attrib/generate_node_acls"
    echo 1 > "$g/attrib/demo_mode_write_protect"
    emptyauth "$g/auth"
    ;;
  delete)
    [ -d "$t" ] || die "No such Target in configfs: $wwn"
    rm -rf "$t"
    ;;
  *) die "unexpected: $*" ;;
  esac
  ;;
/iscsi/*/tpg1/acls/*)
  t=${p#/iscsi/}; t=${t%%/tpg1/*}; init=${p##*/acls/}
  g="$R/iscsi/$t/tpgt_1"; acl="$g/acls/$init"
  [ -d "$acl" ] || die "No such path $p"
  case "$1" in
  create)
    m=$(get mapped_lun "$@") || die "mapped_lun= is required"
    l=$(get tpg_lun_or_backstore "$@") || die "tpg_lun_or_backstore= is required"
    wp=$(get write_protect "$@") || wp=0
    [ -d "$g/lun/lun_$l" ] || die "No such LUN: $l"
    [ -e "$acl/lun_$m" ] && die "Mapped LUN $m already exists"
    mkdir "$acl/lun_$m" && echo "$wp" > "$acl/lun_$m/write_protect"
    ln -s "$g/lun/lun_$l" "$acl/lun_$m/9a3f0c2e$m"
    ;;
  set)
    [ "$2" = auth ] || die "unexpected: $*"
    shift 2; setauth "$acl/auth" "$@"
    ;;
  *) die "unexpected: $*" ;;
  esac
  ;;
/iscsi/*/tpg1/acls)
  t=${p#/iscsi/}; t=${t%%/tpg1/*}; g="$R/iscsi/$t/tpgt_1"
  [ -d "$g" ] || die "No such path $p"
  [ "$1" = create ] || die "unexpected: $*"
  init=$(get wwn "$@") || die "wwn= is required"
  [ -e "$g/acls/$init" ] && die "This NodeACL already exists in configFS"
  emptyauth "$g/acls/$init/auth"
  echo "No active iSCSI Session for Initiator Endpoint: $init" > "$g/acls/$init/info"
  ;;
/iscsi/*/tpg1/luns)
  t=${p#/iscsi/}; t=${t%%/tpg1/*}; g="$R/iscsi/$t/tpgt_1"
  [ -d "$g" ] || die "No such path $p"
  [ "$1" = create ] || die "unexpected: $*"
  so=$(get storage_object "$@") || die "storage_object= is required"
  l=$(get lun "$@") || die "lun= is required"
  kind=${so#/backstores/}; name=${kind#*/}; kind=${kind%%/*}
  obj="$R/core/$(hba "$kind")/$name"
  [ -d "$obj" ] || die "Invalid storage object $so"
  [ -e "$g/lun/lun_$l" ] && die "LUN $l already exists"
  mkdir "$g/lun/lun_$l" && ln -s "$obj" "$g/lun/lun_$l/7c1e5a90$l"
  ;;
/iscsi/*/tpg1)
  t=${p#/iscsi/}; t=${t%/tpg1}; g="$R/iscsi/$t/tpgt_1"
  [ -d "$g" ] || die "No such path $p"
  [ "$1" = set ] || die "unexpected: $*"
  case "$2" in
  attribute)
    shift 2
    for a; do
      case "$a" in *=*) printf '%s\n' "${a#*=}" > "$g/attrib/${a%%=*}" ;; *) die "bad attribute $a" ;; esac
    done
    ;;
  auth) shift 2; setauth "$g/auth" "$@" ;;
  *) die "unexpected: $*" ;;
  esac
  ;;
*) die "unexpected: $p $*" ;;
esac
}
# Like targetcli: without arguments it reads one command per line on stdin, reports a failed
# one on stderr and goes on (exit 0). A secret never comes in argv.
if [ $# -gt 0 ]; then
  case "$*" in *password=*) die "a secret in argv: $*" ;; esac
  main "$@"
else
  set -f
  while IFS= read -r line; do
    case "$line" in ""|exit|"set global "*) continue ;; esac
    # shellcheck disable=SC2086
    ( main $line ) || true
  done
fi
"#;

impl TargetcliStub {
    /// A stub under `base` (its own `stub/` folder) with an empty fake configfs at
    /// `base/configfs/target` (as after the target modules are loaded).
    pub fn new(base: &Path) -> TargetcliStub {
        let dir = base.join("stub");
        let root = base.join("configfs").join("target");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(root.join("core")).unwrap();
        std::fs::create_dir_all(root.join("iscsi").join("discovery_auth")).unwrap();
        std::fs::write(root.join("iscsi").join("lio_version"), "stub\n").unwrap();
        let script = SCRIPT
            .replace("@DIR@", &dir.display().to_string())
            .replace("@ROOT@", &root.display().to_string());
        let path = dir.join("targetcli");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TargetcliStub { dir, root }
    }

    pub fn program(&self) -> PathBuf {
        self.dir.join("targetcli")
    }

    /// Every argv so far, one line each (arguments joined by spaces).
    pub fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("argv"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The argvs after the first `n`.
    pub fn argv_since(&self, n: usize) -> Vec<String> {
        self.argv().into_iter().skip(n).collect()
    }

    /// Fails the next call whose argv contains `text`.
    pub fn fail_on(&self, text: &str) {
        std::fs::write(self.dir.join("fail-on"), text).unwrap();
    }

    /// The tree listing the last `saveconfig` recorded.
    pub fn saved(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("saved")).ok()
    }

    /// A target's TPG directory in the fake tree.
    pub fn tpg(&self, iqn: &str) -> PathBuf {
        self.root.join("iscsi").join(iqn).join("tpgt_1")
    }

    /// Every path under the fake tree, sorted (symlinks with their targets).
    pub fn listing(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let ft = e.file_type().unwrap();
                if ft.is_symlink() {
                    let to = std::fs::read_link(&p).unwrap();
                    let to = to.strip_prefix(root).unwrap_or(&to).display().to_string();
                    out.push(format!("{rel} -> {to}"));
                } else if ft.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &p, out);
                } else {
                    let v = std::fs::read_to_string(&p).unwrap_or_default();
                    out.push(format!("{rel} = {}", v.trim()));
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.root, &self.root, &mut v);
        v.sort();
        v
    }
}
