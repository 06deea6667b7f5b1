//! What a new user reads: `--help` and the docs say things in words a user
//! knows and point only to files that exist in this repository.

use std::path::{Path, PathBuf};

use crate::fixtures::run;

/// The repository's root (this crate is `crates/cli`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether `text` uses `word` as a whole word, in any case.
fn has_word(text: &str, word: &str) -> bool {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w == word)
}

/// The README and every `docs/*.md`, with their paths.
fn docs() -> Vec<(PathBuf, String)> {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn help_lists_the_demo_service_and_uses_no_internal_jargon() {
    let top = run(&["--help"]);
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(text.contains("demo-service"), "{text}");
    for command in [
        "load",
        "serve",
        "deploy",
        "restart",
        "scale",
        "rollback",
        "status",
        "events",
        "trial",
        "upgrade",
        "demo",
        "k8s",
        "demo-service",
        "check",
    ] {
        let help = run(&[command, "--help"]);
        assert!(help.status.success(), "{command}");
        let text = String::from_utf8_lossy(&help.stdout);
        for word in ["seed", "seeds"] {
            assert!(
                !has_word(&text, word),
                "{command} --help says {word}: {text}"
            );
        }
    }
}

#[test]
fn the_docs_point_only_to_files_in_this_repository() {
    for (path, text) in docs() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for word in ["seed", "seeds"] {
            assert!(!has_word(&text, word), "{name} says {word}");
        }
        assert!(
            !text.contains("DESIGN.md"),
            "{name} refers to a design file users do not have"
        );
        // Every relative link, and every path in backticks that starts at
        // the repository's root or leaves the document's folder, names a
        // file of this repository (`OUT/report.json` and such are not).
        let inside = |base: &Path, target: &str| {
            base.join(target)
                .canonicalize()
                .is_ok_and(|f| f.starts_with(root().canonicalize().unwrap()))
        };
        let linked = text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
            .filter(|t| !t.contains("://") && !t.starts_with('#'));
        for target in linked {
            let target = target.split('#').next().unwrap();
            assert!(
                inside(path.parent().unwrap(), target),
                "{name} links to {target}, which is not a file of this repository"
            );
        }
        let quoted = text.split('`').skip(1).step_by(2);
        for target in quoted.filter(|t| !t.contains(' ')) {
            let from_root = ["docs/", "crates/", "examples/", "bench/", "scripts/"]
                .iter()
                .any(|dir| target.starts_with(dir));
            if from_root {
                assert!(
                    inside(&root(), target),
                    "{name} names {target}, which is not in this repository"
                );
            } else if target.starts_with("../") {
                assert!(
                    inside(path.parent().unwrap(), target),
                    "{name} names {target}, which is not in this repository"
                );
            }
        }
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("docs/architecture.md"),
        "README links the architecture"
    );
}
