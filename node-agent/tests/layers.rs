//! The folders of `node-agent/src` form layers (see the crate's top-level
//! doc): a folder uses only the folders listed for it here, so there is no
//! import cycle between folders and nothing reaches up. Reads the sources
//! (code and tests; comments are skipped) for `crate::<folder>` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each folder (or top-level file) and what it may use besides itself.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "agent",
        &[
            "cni_api",
            "endpoints",
            "routing",
            "overlay",
            "k8s",
            "dataplane",
            "status",
            "logging",
        ],
    ),
    ("ctl", &["k8s", "status", "logging"]),
    (
        "cni_api",
        &["endpoints", "k8s", "dataplane", "status", "logging"],
    ),
    ("endpoints", &["k8s", "dataplane", "status", "logging"]),
    ("routing", &["k8s", "dataplane", "status", "logging"]),
    ("overlay", &["k8s", "dataplane", "status", "logging"]),
    ("k8s", &["dataplane", "status", "logging"]),
    ("dataplane", &["status", "logging"]),
    ("status", &["logging"]),
    ("logging", &[]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The folder names used as `crate::<name>` in `text`, comments aside.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn folders_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a path component");
        let folder = first.strip_suffix(".rs").unwrap_or(first);
        if folder == "bin" || folder == "lib" {
            continue;
        }
        let Some(ok) = allowed.get(folder) else {
            wrong.push(format!(
                "{}: folder {folder:?} has no place in the layers (add it to ALLOWED)",
                rel.display()
            ));
            continue;
        };
        seen.insert(folder);
        let text = std::fs::read_to_string(f).expect("source file");
        for used in uses(&text) {
            if used != folder && allowed.contains_key(used.as_str()) && !ok.contains(&&*used) {
                wrong.push(format!("{}: {folder} uses crate::{used}", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // The check reads the tree it claims to read.
    assert!(seen.contains("agent") && seen.contains("k8s") && seen.contains("dataplane"));
}

#[test]
fn the_reader_finds_crate_paths_and_skips_comments() {
    let got = uses(
        "use crate::k8s::cluster::Cluster; // crate::agent\nlet x = crate::status::health::Health::new();\n/// see crate::routing\n",
    );
    assert_eq!(
        got,
        ["k8s", "status"].into_iter().map(String::from).collect()
    );
}
