//! Stand-in programs for the tests, kept as scripts under `tests/stubs/` and written out
//! executable with their `@NAME@` placeholders filled in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// exportfs(8): see [`crate::exportfs_stub`].
pub const EXPORTFS: &str = include_str!("../stubs/exportfs");
/// targetcli(8): see [`crate::targetcli_stub`].
pub const TARGETCLI: &str = include_str!("../stubs/targetcli");
/// A wrapper that stops one call of a real program: see [`crate::fsfault::Gate`].
pub const GATE: &str = include_str!("../stubs/gate");
/// Samba's net(8) with an import that fails once on demand.
pub const NET_FAIL_IMPORT: &str = include_str!("../stubs/net-fail-import");

/// Writes `template` to `path` with every `@KEY@` replaced by its value, mode 0755. Values
/// are inserted as they are: the callers pass temp-dir paths and plain words.
pub fn write(path: &Path, template: &str, vars: &[(&str, &str)]) {
    let mut text = template.to_owned();
    for (key, value) in vars {
        text = text.replace(&format!("@{key}@"), value);
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A recording stand-in installed as `{base}/stub/{name}`: `@DIR@` in its script is that
/// folder, where the script keeps its files (`argv`: one line per call, the arguments joined
/// by spaces) and where the test leaves it instructions.
pub fn install(base: &Path, name: &str, template: &str, vars: &[(&str, &str)]) -> PathBuf {
    let dir = base.join("stub");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let dir_text = dir.display().to_string();
    let mut all = vec![("DIR", dir_text.as_str())];
    all.extend_from_slice(vars);
    write(&dir.join(name), template, &all);
    dir
}

/// Every argv a stand-in [`install`]ed in `dir` recorded so far, one line each.
pub fn argv(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("argv"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}
