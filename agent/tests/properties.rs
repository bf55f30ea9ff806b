//! Property tier for the agent-side path check (`storage::paths`): whatever path a console
//! sends, what `Roots::resolve` accepts is the very path that was asked for, reached without
//! any symbolic link, strictly inside a storage root, and of the kind asked for. The tree has
//! symbolic links out of the root and within it, files, directories and a sibling directory
//! outside the root.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use csg_agent::storage::paths::{PathKind, Roots};

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    roots: Roots,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let root = base.join("root");
    let outside = base.join("outside");
    for d in ["vol1/sub", "vol2"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("vol1/disk.img"), b"").unwrap();
    std::fs::write(outside.join("secret.img"), b"").unwrap();
    let link = |to: &Path, at: &str| std::os::unix::fs::symlink(to, root.join(at)).unwrap();
    link(&outside, "escape");
    link(&root.join("vol1"), "alias");
    link(&root.join("vol1/disk.img"), "vol2/disk-link.img");
    link(&outside.join("secret.img"), "vol2/secret.img");
    link(Path::new("/dev/null"), "vol2/null");
    let roots = Roots::new(vec![root.clone()]);
    Tree {
        _dir: dir,
        root,
        outside,
        roots,
    }
}

fn component() -> impl Strategy<Value = String> {
    const REAL: &[&str] = &[
        "vol1",
        "vol2",
        "sub",
        "disk.img",
        "disk-link.img",
        "secret.img",
        "null",
        "escape",
        "alias",
        "new.img",
    ];
    const ODD: &[&str] = &[
        "nodir", "..", ".", "", "-rf", "a b", "%u", "root", "outside", "a\nb",
    ];
    prop_oneof![3 => select(REAL), 1 => select(ODD)].prop_map(String::from)
}

/// No component of `p` (or of any of its ancestors) is a symbolic link.
fn no_symlink_along(p: &Path) -> bool {
    p.ancestors()
        .all(|a| std::fs::symlink_metadata(a).map_or(true, |m| !m.file_type().is_symlink()))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn resolve_only_accepts_clean_paths_inside_a_root(
        from in select(&["root", "base", "abs"][..]),
        comps in vec(component(), 0..5),
        junk in "[ -~\n]{0,40}",
        kind in select(&[
            PathKind::Dir,
            PathKind::BackingFile { devices: false },
            PathKind::BackingFile { devices: true },
        ][..]),
        use_junk in proptest::bool::weighted(0.1),
    ) {
        let t = tree();
        let start = match from {
            "root" => t.root.to_str().unwrap().to_string(),
            "base" => t.root.parent().unwrap().to_str().unwrap().to_string(),
            _ => String::new(),
        };
        let p = if use_junk { junk } else { format!("{start}/{}", comps.join("/")) };
        let r = t.roots.resolve("path", &p, kind);
        if let Ok(sp) = r {
            let got = sp.as_path();
            // Exactly what was asked for, syntax-clean, no symbolic link anywhere along it.
            prop_assert_eq!(got, Path::new(&p));
            prop_assert!(csg_protocol::validate::check_path("path", &p).is_ok());
            prop_assert!(no_symlink_along(got), "{}", p);
            // Strictly inside the root, never outside.
            prop_assert!(got.starts_with(&t.root) && got != t.root, "{}", p);
            prop_assert!(!got.starts_with(&t.outside));
            match kind {
                PathKind::Dir => prop_assert!(sp.exists && got.is_dir()),
                PathKind::BackingFile { devices } => {
                    if sp.exists {
                        prop_assert!(got.is_file() || (devices && sp.is_device));
                    } else {
                        prop_assert!(!got.exists() && got.parent().unwrap().is_dir());
                    }
                }
            }
        }
    }
}
