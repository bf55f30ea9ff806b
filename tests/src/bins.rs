//! Where the binaries under test are.
//!
//! The e2e crate cannot depend on binaries of other packages, so it looks for them where
//! `cargo build --workspace --bins` puts them: next to the test executable's `deps/` folder,
//! i.e. in the same target profile directory. An environment variable overrides that, so the
//! suite can also run against installed or release binaries.

use std::path::PathBuf;

pub fn agent() -> PathBuf {
    locate("CSG_AGENT_BIN", "csg-agent")
}

pub fn csgctl() -> PathBuf {
    locate("CSGCTL_BIN", "csgctl")
}

pub fn sim() -> PathBuf {
    locate("CSG_SIM_BIN", "csg-sim")
}

/// `mosquitto` is in /usr/sbin on Debian, which is not on every user's PATH.
pub fn mosquitto() -> PathBuf {
    if let Ok(p) = std::env::var("MOSQUITTO_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join("mosquitto");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "mosquitto not found on PATH or in /usr/sbin; install it first: scripts/install-deps.sh \
         (Debian packages mosquitto and mosquitto-clients), or set MOSQUITTO_BIN"
    );
}

fn locate(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not name a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("the test executable knows its own path");
    let mut dir = exe
        .parent()
        .expect("the test executable lives in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join(name);
    if !candidate.is_file() {
        panic!(
            "{name} not found at {}: build them first: cargo build --workspace --bins \
             (or point {env} at the binary)",
            candidate.display()
        );
    }
    candidate
}
