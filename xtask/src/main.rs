//! Build tasks of the workspace, run as `cargo run -p xtask -- TASK`.
//!
//! `package-docs DIR`: the man pages (one per command and subcommand) and the bash, zsh and
//! fish completions of `csg-agent`, `csgctl` and `csg-consoled`, generated from the clap definitions the
//! binaries parse, so they never drift from the real flags. `scripts/package.sh` runs it and
//! puts the files into the packages; the shipped binaries carry no generator.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use clap_complete::Shell;

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Build tasks of the csg-agent workspace")]
enum Task {
    /// Write man pages (uncompressed) and shell completions of csg-agent, csgctl and csg-consoled into DIR.
    PackageDocs { dir: PathBuf },
}

fn main() -> anyhow::Result<()> {
    match Task::parse() {
        Task::PackageDocs { dir } => package_docs(&dir),
    }
}

fn package_docs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for cmd in [
        csg_agent::cli::command(),
        csg_console::csgctl::command(),
        csg_consoled::cli::command(),
    ] {
        write_docs(cmd, dir)
            .with_context(|| format!("cannot write the docs into {}", dir.display()))?;
    }
    Ok(())
}

/// One program's man pages and completions, named after the program (`csgctl.1`,
/// `csgctl-call.1`, `csgctl.bash`, `_csgctl`, `csgctl.fish`).
fn write_docs(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    clap_mangen::generate_to(cmd.clone(), dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), &name, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_docs_writes_every_file_the_packages_ship() {
        let dir = tempfile::tempdir().unwrap();
        package_docs(dir.path()).unwrap();
        for name in ["csg-agent", "csgctl", "csg-consoled"] {
            for file in [
                format!("{name}.1"),
                format!("{name}.bash"),
                format!("_{name}"),
                format!("{name}.fish"),
            ] {
                let path = dir.path().join(&file);
                let len = std::fs::metadata(&path)
                    .unwrap_or_else(|e| panic!("{file}: {e}"))
                    .len();
                assert!(len > 0, "{file} is empty");
            }
        }
        // One page per subcommand, and no hidden generator among them.
        assert!(dir.path().join("csg-agent-check-config.1").exists());
        assert!(dir.path().join("csgctl-call.1").exists());
        assert!(dir.path().join("csgctl-nfs.1").exists());
        assert!(dir.path().join("csg-consoled-check-config.1").exists());
        assert!(dir.path().join("csg-consoled-token-create.1").exists());
        let consoled = std::fs::read_to_string(dir.path().join("csg-consoled.1")).unwrap();
        assert!(consoled.contains("\\-\\-config"), "{consoled}");
        let agent = std::fs::read_to_string(dir.path().join("csg-agent.1")).unwrap();
        assert!(agent.contains("check\\-config"), "{agent}");
        assert!(!agent.contains("generate"), "{agent}");
    }
}
